/*
 * writer.h - the artifact writer: a thread that writes queued buffers to
 * a temp file in order, feeds every byte to a sink (the daemon's
 * SHA-256) as it goes, starts writeback early, and at the end makes the
 * file durable with one fsync and one rename.  Internal to libslim.
 */
#ifndef SLIM_WRITER_H
#define SLIM_WRITER_H

#include "passes/slim.h"

struct slim_piece {
    const void *data;
    size_t len;
};

struct slim_writer;

typedef void (*slim_sink_fn)(void *ud, const void *buf, size_t len);

/* Creates path's temp file (same folder) and starts the writer thread.
 * sink may be NULL.  *out is new (slim_writer_finish or _abort frees
 * it). */
int slim_writer_open(const char *path, slim_sink_fn sink, void *sink_ud,
                     struct slim_writer **out, struct slim_error *err);
/* Queues pieces (copied; their bytes are borrowed until written), to be
 * written in order after everything queued before, and then frees each
 * of owned[0..nowned) with slim_aligned_free: pass the buffers the
 * pieces point into.  Steals owned even on failure.  Blocks while a
 * batch is already waiting, which bounds the memory in flight.
 * Returns 0, or the error of an earlier write (SLIM_EIO) or SLIM_ENOMEM. */
int slim_writer_submit(struct slim_writer *wr, const struct slim_piece *pieces, size_t n,
                       void *const *owned, size_t nowned, struct slim_error *err);
/* Bytes queued so far (what the file will hold). */
uint64_t slim_writer_queued(const struct slim_writer *wr);
/* Waits for every batch, fsyncs and closes the file, renames it to the
 * path given to open and fsyncs the folder.  Frees wr; on error the temp
 * file is removed. */
int slim_writer_finish(struct slim_writer *wr, struct slim_error *err);
/* Stops the thread, frees what is queued, removes the temp file, frees
 * wr.  NULL is a no-op. */
void slim_writer_abort(struct slim_writer *wr);

/* A safetensors header for tensors (in order, data offsets following
 * each other from 0) and metadata (object of strings, may be NULL): the
 * 8-byte length, then the JSON padded with spaces to a multiple of 8.
 * *out is new (slim_free). */
int slim_st_header(const struct slim_tensor *tensors, size_t n, json_t *metadata, char **out,
                   size_t *len, struct slim_error *err);

#endif

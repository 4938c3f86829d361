/*
 * blob.h - where the blob store keeps its blobs (--blobs), between
 * blob.c and store.c; storage/ only.  blob.c's opening comment says how
 * each kind works and why a shared dir is safe for concurrent writers.
 */
#ifndef SLIM_BLOB_H
#define SLIM_BLOB_H

#include "passes/slim.h"

struct store;
struct blob_backend;

enum blob_kind {
    BLOB_LOCAL = 0,     /* dir:DATA_DIR/blobs, this daemon's alone */
    BLOB_DIR = 1,       /* dir:PATH, which other daemons may share */
    BLOB_S3 = 2,        /* s3://bucket/prefix, with a local copy in DATA_DIR/cache */
};

/* spec: NULL or "" (the default), "dir:PATH" or "s3://bucket[/prefix]";
 * creates the folders it needs.  SLIM_EINVAL naming a malformed spec or
 * missing S3 settings, SLIM_EIO for a folder that cannot be made or
 * written.  *out is new. */
int blob_backend_new(const char *spec, const char *data_dir, struct blob_backend **out,
                     struct slim_error *err);
void blob_backend_free(struct blob_backend *b);
enum blob_kind blob_backend_kind(const struct blob_backend *b);
/* The folder of ROOT/ab/<sha> (the local copies, for s3; borrowed). */
const char *blob_backend_root(const struct blob_backend *b);
/* "dir:/srv/blobs", "http://host:9000 bucket b prefix p/" (borrowed). */
const char *blob_backend_describe(const struct blob_backend *b);

/* The store's backend (store.c; borrowed). */
struct blob_backend *store_blobs(const struct store *st);

/* 1 when the blob of sha is in the store: its file, or for s3 its local
 * copy or its object (a HEAD).  0 when not, or when that cannot be told
 * (err says why). */
int blob_exists(struct store *st, const char *sha, struct slim_error *err);
/* Removes what this daemon may remove of a blob that no row names: the
 * file (default), nothing (a shared dir), the local copy (s3).  Returns
 * the bytes that freed in the data dir, in allocated blocks. */
uint64_t blob_remove(struct store *st, const char *sha);
/* s3 only (0 otherwise): removes local copies, least recently used
 * first (store_blob_fetch marks a use), until want bytes are freed or
 * none is left; returns the bytes freed.  The bucket keeps the blobs, so
 * a copy removed is fetched again when next needed.  For retention
 * (--max-data-bytes), which removes these before any job. */
uint64_t blob_cache_trim(struct store *st, uint64_t want);

#endif

/*
 * store.h - slimd's persistent state: SQLite (or PostgreSQL) metadata and
 * the blob store.
 *
 * One struct store per data dir.  It owns one database connection
 * (storage/db.h: SQLite in WAL mode, foreign keys on, busy timeout; or
 * PostgreSQL with --store postgresql://...) guarded by a mutex, so every
 * function here may be called from any thread: the HTTP threads and the
 * runner share it.  A single connection behind a mutex was chosen over a
 * connection per thread because every statement here is short (the heavy
 * work happens in the passes, outside the lock) and it keeps the prepared
 * statements in one place.
 *
 * Layout of the data dir:
 *   slimd.db            SQLite database (schema versioned by user_version),
 *                       bearer tokens included (their sha256, never the secret)
 *   blobs/ab/abcdef...  content-addressed files, named by their sha256
 *                       (elsewhere with --blobs: store_open_blobs)
 *   cache/ab/abcdef...  with --blobs s3://..., local copies of blobs
 *   tmp/                uploads and artifacts being written
 *   slimd.lock          flock()ed by the daemon that serves the dir
 *   slimd.db-wal, -shm  SQLite's, kept between runs (store.c says why)
 *
 * Rows returned to callers are JSON objects (new references) shaped as
 * the REST API shows them, so the API layer does not re-map columns.
 * Times are RFC 3339 UTC strings ("2026-11-29T03:39:30Z").
 *
 * Every function returns 0 or a negative enum slim_errno with detail in
 * err: SLIM_ENOTFOUND for a missing id, SLIM_ECONFLICT for a state that
 * forbids the change, SLIM_EIO for SQLite or file-system failures.
 * Messages name files relative to the data dir ("blobs/ab/..."), never
 * by the server's absolute path: they reach API clients.
 *
 * Ownership: models, datasets and jobs record the id of the token that
 * created them ("owner"; NULL when the daemon runs with --auth none).
 * The list functions take an owner: NULL lists every row, a token id
 * only that token's rows (the filter is in the SQL, so paging and
 * totals count only what the caller may see).  Getting one row is not
 * filtered here: the row shows its "owner" and the API decides.
 */
#ifndef SLIM_STORE_H
#define SLIM_STORE_H

#include <stdint.h>
#include <jansson.h>
#include "passes/slim.h"

struct store;

/* Persisted job states: explicit values, grow only at the end. */
enum store_job_state {
    STORE_JOB_QUEUED = 0,
    STORE_JOB_RUNNING = 1,
    STORE_JOB_SUCCEEDED = 2,
    STORE_JOB_FAILED = 3,
    STORE_JOB_CANCELED = 4,
};
const char *store_job_state_name(int state);        /* "queued" */
int store_job_state_parse(const char *name);        /* state, or -1 */

/* Opens (creating if needed) the data dir and its database, and runs the
 * migrations up to the current schema version.  *out is a new store.
 * Before anything else it cleans what a process that died left behind
 * (one data dir serves one daemon): every file in tmp/ (partial uploads
 * and artifacts) and every blob that no model, dataset or job artifact
 * names (a blob committed just before a crash, whose row never came).
 * store_open_sweep says what was cleaned. */
int store_open(const char *data_dir, struct store **out, struct slim_error *err);
/* store_open with the blobs somewhere else (--blobs): NULL or "" for the
 * default (DATA_DIR/blobs), "dir:PATH" (a folder other daemons may share)
 * or "s3://bucket[/prefix]" (SLIMD_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY, AWS_REGION from the environment; local copies
 * in DATA_DIR/cache).  At a shared location the open does not sweep
 * unreferenced blobs, and no blob is ever removed there (blob.c says
 * why): deleting rows frees only the s3 backend's local copies.
 * SLIM_EINVAL naming a malformed spec or a missing setting. */
int store_open_blobs(const char *data_dir, const char *blobs, struct store **out,
                     struct slim_error *err);
/* Opens the database only, for `slimd token`, which may run beside a
 * daemon on the same data dir: creates the data dir and migrates like
 * store_open, but leaves blobs/ and tmp/ alone (store_open empties tmp/,
 * which would destroy a running daemon's uploads).  Only the token
 * functions may be used on it. */
int store_open_meta(const char *data_dir, struct store **out, struct slim_error *err);
/* The same two with the database named by db_spec (`slimd serve
 * --store`): NULL or "" for SQLite in data_dir/slimd.db (store_open's),
 * "sqlite:PATH" for SQLite in the file PATH, "postgresql://..." (or
 * "postgres://...") for a PostgreSQL database that several daemons may
 * share (storage/db.h).  The data dir keeps tmp/, the lock and blobs/
 * either way.  On PostgreSQL, store_open_db's orphan sweep leaves blobs
 * younger than an hour (another daemon may be between a blob's commit
 * and its row), and so does its clearing of unfinished Idempotency-Key
 * claims.  SLIM_EINVAL for a spec of another scheme, SLIM_EIO
 * ("postgresql: cannot connect to ...") when the server cannot be
 * reached. */
int store_open_db(const char *data_dir, const char *db_spec, struct store **out,
                  struct slim_error *err);
int store_open_meta_db(const char *data_dir, const char *db_spec, struct store **out,
                       struct slim_error *err);
/* store_open with both: the database at db_spec (store_open_db's) and
 * the blobs at blobs (store_open_blobs'); NULL or "" for either default. */
int store_open_full(const char *data_dir, const char *db_spec, const char *blobs,
                    struct store **out, struct slim_error *err);
void store_close(struct store *st);
const char *store_data_dir(const struct store *st);

/* One daemon per data dir: creates the data dir if needed and takes an
 * exclusive flock(2) on DIR/slimd.lock, held while *fd_out stays open
 * (the kernel drops it when the process ends, however it ends), with
 * the holder's pid written into the file for the message a second
 * daemon gets: SLIM_ECONFLICT "data dir DIR is in use by another slimd
 * (pid N)".  Call before store_open, whose cleaning of tmp/ would
 * destroy a running daemon's uploads.  `slimd token` (store_open_meta)
 * takes no lock: it may run beside the daemon. */
int store_lock_dir(const char *data_dir, int *fd_out, struct slim_error *err);

/* What store_open cleaned, for the daemon's log. */
struct store_sweep {
    int tmp_removed;            /* files in tmp/ */
    int orphans_removed;        /* unreferenced blobs */
    uint64_t orphan_bytes;
};
void store_open_sweep(const struct store *st, struct store_sweep *out);

/* Room for the database on a full disk: preallocates the write-ahead
 * log (slimd.db-wal, which SQLite keeps between runs) to `bytes` of
 * allocated space, so that recording job outcomes never needs a new
 * block (see store.c).  Call once after store_open.  SLIM_ENOSPACE when
 * the disk has not that much free (the WAL keeps what it had). */
int store_wal_reserve(struct store *st, uint64_t bytes, struct slim_error *err);

/* ---- blobs ---- */

/* A file being written into the blob store; sha256 is computed as bytes
 * are appended, by a thread of the writer beside the writes, so an upload
 * is hashed on its way to disk.  A writer is used by one thread at a time
 * and holds at most 4 MiB of buffers whatever the file's size. */
struct blob_writer;
/* Creates a temp file under tmp/.  *out is a new writer. */
int store_blob_begin(struct store *st, struct blob_writer **out, struct slim_error *err);
/* Appends len bytes of buf (borrowed; not kept after the call): they are
 * in the temp file when this returns, and queued for hashing (this waits
 * when the hashing thread is 4 MiB behind).  SLIM_EIO when the write
 * fails, SLIM_ENOMEM when a buffer or the thread cannot be had,
 * SLIM_EINTERNAL when the digest fails; after an error the writer can
 * only be aborted. */
int store_blob_write(struct blob_writer *bw, const void *buf, size_t len, struct slim_error *err);
uint64_t store_blob_bytes(const struct blob_writer *bw);
/* Path of the temp file, for validation before commit (borrowed). */
const char *store_blob_temp_path(const struct blob_writer *bw);
/* Waits for the hashing thread to catch up, fsyncs the temp file,
 * renames it to blobs/xx/<sha256> (if that blob already exists the temp
 * file is dropped), fsyncs the folder, frees bw, and writes the
 * lowercase hex sha256 (65 bytes with NUL) to sha_out.  Frees bw even on
 * failure (and removes the temp file). */
int store_blob_commit(struct blob_writer *bw, char sha_out[65], struct slim_error *err);
/* Stops and joins the hashing thread, removes the temp file and frees
 * bw; safe after any store_blob_write, failed or not, and on NULL. */
void store_blob_abort(struct blob_writer *bw);
/* Adopts an already written file (e.g. an artifact the pipeline wrote
 * into tmp/) into the blob store: hashes it, fsyncs, renames. */
int store_blob_adopt(struct store *st, const char *tmp_path, char sha_out[65],
                     uint64_t *bytes_out, struct slim_error *err);
/* Adopts a file that its writer already made durable (fsync) and
 * hashed as it wrote it (store_hash_*): renames it into the blob store
 * without reading it again.  Removes tmp_path on failure. */
int store_blob_adopt_hashed(struct store *st, const char *tmp_path, const char sha[65],
                            struct slim_error *err);
/* A SHA-256 being computed over bytes as they pass (e.g. an artifact
 * as the pipeline writes it).  new: *out is new or NULL on failure. */
struct store_hash;
int store_hash_new(struct store_hash **out, struct slim_error *err);
/* Adds bytes; for the pipeline's sink (its void (*)(void *, ...)). */
void store_hash_update(void *h, const void *buf, size_t len);
/* Writes the hex digest into sha_out and frees h. */
int store_hash_final(struct store_hash *h, char sha_out[65], struct slim_error *err);
void store_hash_free(struct store_hash *h);
/* n bytes as 2n lowercase hex digits and a NUL into out (digests,
 * signatures, token secrets). */
void store_hex(const unsigned char *d, size_t n, char *out);
/* SLIM_ENOSPACE, with a message giving both figures, when the data
 * dir's file system has fewer than `need` bytes free for this process
 * (statvfs f_bavail); 0 otherwise (and when it cannot be measured). */
int store_check_free(struct store *st, uint64_t need, struct slim_error *err);
/* Path of a temp file name under tmp/ that nothing else uses (buf >= 4096). */
int store_tmp_path(struct store *st, const char *suffix, char *buf, size_t len);
/* Path of the blob with this sha256 into buf (>= 4096 bytes): its file
 * (DATA_DIR/blobs/ab/<sha>, or PATH/ab/<sha> with --blobs dir:PATH), or
 * with s3 its local copy, DATA_DIR/cache/ab/<sha>, which may not be
 * there yet: store_blob_fetch makes it. */
void store_blob_path(const struct store *st, const char *sha, char *buf, size_t len);
/* Makes path (store_blob_path's) a local file: with s3, when there is no
 * local copy, downloads the object, checks its sha256 against its name
 * and renames it into place; 0 at once otherwise (a missing file is then
 * the caller's to report).  Any thread, no lock held: a download takes
 * as long as the blob is large.  SLIM_EIO "s3: GET http://ENDPOINT/...:
 * ..." when the server cannot be reached or refuses, SLIM_ENOTFOUND when
 * the bucket has no such object, SLIM_ENOSPACE when the disk is full. */
int store_blob_fetch(struct store *st, const char *path, struct slim_error *err);

/* Removes the blob with this sha256 unless a model, a dataset or a job's
 * artifact names it: for an upload whose row could not be inserted after
 * its blob was committed, so that no blob is left that nothing uses. */
void store_blob_drop_unused(struct store *st, const char *sha);

/* ---- models ---- */

/* Inserts a model row for a committed blob.  info is the describe object
 * from slim_model_describe ({format, tensors, params, ...}); borrowed.
 * *row is a new reference to the row as the API shows it:
 * {id, name, format, bytes, sha256, tensors, params, created_at}. */
int store_model_insert(struct store *st, const char *owner, const char *name, const char *sha,
                       uint64_t bytes, json_t *info, json_t **row, struct slim_error *err);
int store_model_get(struct store *st, const char *id, json_t **row, struct slim_error *err);
/* Newest first; *rows is a new array. */
int store_model_list(struct store *st, const char *owner, int limit, int offset, json_t **rows,
                     int *total, struct slim_error *err);
/* store_model_list filtered by name and by sha256 (each NULL: any):
 * {"model": {"name": N}} is the first row of name N (the newest). */
int store_model_find(struct store *st, const char *owner, const char *name, const char *sha,
                     int limit, int offset, json_t **rows, int *total, struct slim_error *err);
/* Deletes the row; SLIM_ECONFLICT while a queued or running job uses it
 * (as its model, or named anywhere in its spec: a distill student).
 * Removes the blob when nothing (model, dataset or artifact) references it
 * any more. */
int store_model_delete(struct store *st, const char *id, struct slim_error *err);

/* ---- datasets ---- */

/* Inserts a dataset row for a committed blob.  info is the describe
 * object (slim_dataset_describe's, plus what the API adds), borrowed;
 * it must have "format".  *row is a new reference to the row as the API
 * shows it: {id, name, format, bytes, sha256, created_at} followed by
 * info's other keys (samples, input_shape, ...). */
int store_dataset_insert(struct store *st, const char *owner, const char *name, const char *sha,
                         uint64_t bytes, json_t *info, json_t **row, struct slim_error *err);
int store_dataset_get(struct store *st, const char *id, json_t **row, struct slim_error *err);
/* Newest first; *rows is a new array. */
int store_dataset_list(struct store *st, const char *owner, int limit, int offset, json_t **rows,
                       int *total, struct slim_error *err);
int store_dataset_find(struct store *st, const char *owner, const char *name, const char *sha,
                       int limit, int offset, json_t **rows, int *total, struct slim_error *err);
/* Deletes the row; SLIM_ECONFLICT while a queued or running job
 * evaluates on it (or names it anywhere in its spec) (jobs of other states keep "dataset": null).  Removes
 * the blob when nothing else references it. */
int store_dataset_delete(struct store *st, const char *id, struct slim_error *err);

/* ---- jobs ---- */

/* Inserts a queued job on model_id, evaluating on dataset_id (NULL:
 * none); both must exist (SLIM_ENOTFOUND naming the one that does not,
 * checked in the same statement as the insert, so a dataset deleted
 * meanwhile cannot be referenced).  spec is the whole validated request
 * body (borrowed; stored as text; its "name" and "labels", which the
 * caller validated, are copied into their columns for the list's
 * filters); mem_bytes the memory it reserves while it runs.  With max_queued > 0, SLIM_EBUSY when that many jobs
 * are queued already.  *row: the job as the API shows it. */
int store_job_insert(struct store *st, const char *owner, const char *model_id,
                     const char *dataset_id, json_t *spec, uint64_t mem_bytes,
                     int64_t max_queued, json_t **row, struct slim_error *err);
/* {id, model, dataset, state, progress, stage, error, error_message,
 *  error_code, attempts, created_at, started_at, finished_at, spec,
 *  artifact: {sha256, bytes} | null, memory_bytes, owner, name, labels: {},
 *  pinned, model_sha256[, warning_count]}.
 *  error is {code, message} (code: the REST code, "INSUFFICIENT_STORAGE";
 *  CANCELED for a canceled job) or null; error_message and error_code
 *  are the same two as flat strings (the older fields).  warning_count:
 *  the report's warnings, once the job has a report. */
int store_job_get(struct store *st, const char *id, json_t **row, struct slim_error *err);
/* Newest first; state < 0 for all.  Rows are store_job_get's with
 * "passes" (the spec's ops, in order) in the place of "spec". */
int store_job_list(struct store *st, const char *owner, int state, int limit, int offset,
                   json_t **rows, int *total, struct slim_error *err);
/* What the job list filters on: every field set must match (NULL, and
 * state -1, match anything).  labels: a JSON object text, {"k": "v"},
 * every pair of which the job's labels must hold. */
struct store_job_filter {
    const char *owner;
    int state;
    const char *name;
    const char *model;
    const char *labels;
};
int store_job_find(struct store *st, const struct store_job_filter *f, int limit, int offset,
                   json_t **rows, int *total, struct slim_error *err);
/* Atomically moves the oldest queued job to running (attempts + 1,
 * started_at now) and returns it, if its memory_bytes fit in mem_left;
 * SLIM_ENOTFOUND when none is queued or the oldest does not fit (jobs
 * start in order: a large one is not overtaken). */
int store_job_claim(struct store *st, uint64_t mem_left, json_t **row, struct slim_error *err);
/* Records progress and stage of a running job (no-op if not running). */
int store_job_progress(struct store *st, const char *id, double progress, const char *stage,
                       struct slim_error *err);
/* Records a running job's training state (JSON text, see slim_run_opts
 * .training; no-op if the job is not running).  It stays with the job
 * after it ends. */
int store_job_training(struct store *st, const char *id, const char *training,
                       struct slim_error *err);
/* running -> succeeded, with the artifact blob and the report (borrowed).
 * When the row does not change (a write that fails, a disk that is
 * full, a cancel that came first: SLIM_ECANCELED) the artifact blob is
 * removed unless something else names it, so no failure leaves an
 * orphan blob. */
int store_job_succeed(struct store *st, const char *id, const char *artifact_sha,
                      uint64_t artifact_bytes, json_t *report, struct slim_error *err);
/* running -> failed with a message and code (an enum slim_errno: the
 * row keeps its REST code, e.g. "IO_ERROR"), or canceled (without
 * either) when a cancel was requested: a cancel answered 200 always ends
 * canceled. */
int store_job_fail(struct store *st, const char *id, int code, const char *message,
                   struct slim_error *err);
/* A running job that could not finish for want of disk space: back to
 * queued with its attempts kept (the claim counted this one), its error
 * and code shown meanwhile; or failed with them once it has used
 * max_attempts; or canceled when a cancel was asked for.  *state is the
 * state it went to. */
int store_job_retry(struct store *st, const char *id, int max_attempts, int code,
                    const char *message, int *state, struct slim_error *err);
/* queued -> canceled at once (returns 0, *was_running = 0); running ->
 * cancel requested (state unchanged, *was_running = 1: the runner stops
 * it and calls store_job_canceled; whatever ends the job afterwards ends
 * it canceled); finished -> SLIM_ECONFLICT, "job ... already succeeded:
 * too late to cancel it" (or failed; "is already canceled"). */
int store_job_cancel(struct store *st, const char *id, int *was_running, struct slim_error *err);
/* running -> canceled. */
int store_job_canceled(struct store *st, const char *id, struct slim_error *err);
/* running -> queued (shutdown interrupted it; attempts not counted). */
int store_job_requeue(struct store *st, const char *id, struct slim_error *err);
/* On start: every job left running is re-queued, or failed when it has
 * used max_attempts (error_code INTERNAL).  *requeued and *failed count
 * them. */
int store_job_recover(struct store *st, int max_attempts, int *requeued, int *failed,
                      struct slim_error *err);
/* ---- schema 9: nodes and leases (several daemons on one database) ----
 *
 * A running job is held by a node (the daemon's --node-id) under a
 * lease (lease_until, by the database's clock).  The node renews the
 * leases of all its jobs in one statement (store_job_heartbeat) a few
 * times a second; a node that dies stops renewing, and once its leases
 * have run out any node's store_job_recover_expired re-queues its jobs
 * (attempts counted, failed after max_attempts, canceled when a cancel
 * was asked for).  Progress, training state and every way out of
 * running (succeed, fail, fail_kept, retry, canceled, requeue) change
 * the row only while this store's node holds it: a node that lost its
 * lease gets SLIM_ECONFLICT ("held by node ... now") and changes nothing.
 * store_job_recover (at start) takes, on PostgreSQL, this node's jobs,
 * those of the id the data dir's previous daemon had (DATA_DIR/node-id:
 * the data dir's lock says that daemon is gone) and the expired ones,
 * never another live node's; on SQLite every running job (one daemon
 * per SQLite database). */
/* Sets the node id that claims and leases name (NULL: none; rows then
 * hold NULL) and the lease in seconds (<= 0: 30); records node in
 * DATA_DIR/node-id (best effort).  Call with the data dir locked, before the
 * runner starts. */
int store_set_node(struct store *st, const char *node, double lease_seconds,
                   struct slim_error *err);
const char *store_node(const struct store *st);
/* Renews the lease of every job this node holds; *held: an object
 * {job id: cancel_requested} of those jobs (new reference), so the
 * runner stops the ones canceled through another node and learns of
 * any it no longer holds. */
int store_job_heartbeat(struct store *st, json_t **held, struct slim_error *err);
/* Re-queues (or fails, or cancels) running jobs whose lease ran out,
 * whatever node held them. */
int store_job_recover_expired(struct store *st, int max_attempts, int *requeued, int *failed,
                              struct slim_error *err);
/* Every running job by node: {node: [job ids, oldest first]} (new
 * reference; "" for rows without one). */
int store_node_jobs(struct store *st, json_t **by_node, struct slim_error *err);
/* 1 on PostgreSQL (other daemons may share the database): store_db_spec
 * is its connection URI, for store_listen. */
int store_is_shared(const struct store *st);
const char *store_db_spec(const struct store *st);
/* The report of a succeeded job; new reference.  SLIM_ECONFLICT while
 * the job has not succeeded. */
int store_job_report(struct store *st, const char *id, json_t **report, struct slim_error *err);
/* Counts per state, for /metrics: counts[state]. */
int store_job_counts(struct store *st, int64_t counts[5], struct slim_error *err);

/* ---- lifecycle (schema 6) ---- */

/* Deletes a job that is not running (queued, or finished): its row and
 * report, and its artifact's blob unless something else names it
 * (*freed, may be NULL: the bytes that freed).  SLIM_ECONFLICT while it
 * runs ("cancel it first"), SLIM_ENOTFOUND for no such job. */
int store_job_delete(struct store *st, const char *id, uint64_t *freed, struct slim_error *err);
/* Sets or clears a job's pin (retention never removes a pinned job);
 * *row: the job, a new reference. */
int store_job_pin(struct store *st, const char *id, int pinned, json_t **row,
                  struct slim_error *err);
/* The data dir's size as du counts it: allocated blocks of every file
 * and folder in it (blobs, database, WAL, temp files). */
uint64_t store_data_bytes(struct store *st);

struct store_retention {
    int retain_days;        /* finished jobs older than this go; 0: kept */
    uint64_t max_bytes;     /* the data dir's limit; 0: none */
    uint64_t headroom;      /* bytes kept free under max_bytes (an artifact on its way) */
};
struct store_retention_result {
    int expired;            /* jobs removed for retain_days */
    int evicted;            /* jobs removed for max_bytes */
    uint64_t freed;         /* bytes of blobs removed */
    uint64_t bytes_before, bytes_after;   /* the data dir, with max_bytes */
    int over;               /* still over max_bytes: nothing left that may go */
};
/* One retention pass: Idempotency-Key records older than 24 h go; with
 * retain_days, every finished job that finished longer ago; with
 * max_bytes, the finished jobs with an artifact, oldest first, until
 * the data dir is under max_bytes - headroom.  Never removed: queued or
 * running jobs, pinned jobs, a model's newest succeeded job, models and
 * datasets.  Blobs go once nothing names them.  Any thread; it takes
 * the lock per batch, so requests go on between. */
int store_retention_sweep(struct store *st, const struct store_retention *cfg,
                          struct store_retention_result *out, struct slim_error *err);

/* Idempotency-Key records: (route, owner, key) -> the request's sha256
 * and, once it succeeded, its status, Location and JSON body. */
struct store_idem {
    int status;             /* 0: none (go on) */
    char location[128];
    json_t *response;       /* new reference when status != 0 */
};
/* Claims key for a request with this sha256: 0 and replay->status 0
 * when the key is new (the caller goes on, then calls finish or
 * release); 0 and a replay (status, location, response) when the same
 * request succeeded with it in the last 24 h; SLIM_EIDEMPOTENCY when
 * the key was used for a different request; SLIM_ECONFLICT while the
 * first request with it is still being processed.  owner NULL: none. */
int store_idem_claim(struct store *st, const char *route, const char *owner, const char *key,
                     const char *request_sha, struct store_idem *replay, struct slim_error *err);
/* Records the claimed key's result (response borrowed). */
int store_idem_finish(struct store *st, const char *route, const char *owner, const char *key,
                      int status, const char *location, json_t *response, struct slim_error *err);
/* Forgets a claim whose request failed: failures are not replayed, so a
 * client retries them with the same key. */
void store_idem_release(struct store *st, const char *route, const char *owner, const char *key);

/* ---- change notices, gate failures, webhooks (ci) ---- */

/* Adds (on = 1) or removes (on = 0) fn as a listener: fn(ud) is called
 * whenever a jobs row is inserted, changed or deleted, by the thread
 * making the change (on PostgreSQL also by the store's thread that hears
 * of other daemons' changes, at their commit), with the store's lock held: it must only note the
 * change (bump a counter, signal a condition), never call the store.
 * At most 4 listeners (SLIM_ENOMEM past that). */
int store_job_listen(struct store *st, void (*fn)(void *ud), void *ud, int on);
/* running -> failed, keeping the artifact blob and the report (borrowed)
 * as store_job_succeed would, with code (an enum slim_errno, e.g.
 * SLIM_EGATE) and message: a job that missed a quality gate stays
 * inspectable.  A cancel that came first wins (SLIM_ECANCELED), and the
 * blob is removed when the row does not change, as there. */
int store_job_fail_kept(struct store *st, const char *id, const char *artifact_sha,
                        uint64_t artifact_bytes, json_t *report, int code, const char *message,
                        struct slim_error *err);
/* Records that job_id's final JSON is to be POSTed to url once it ends
 * (the spec's notify.url, checked by the API). */
int store_webhook_add(struct store *st, const char *job_id, const char *url,
                      struct slim_error *err);
/* Deliveries due at `now` (Unix seconds): jobs that ended, not yet
 * delivered or given up, whose next try is due; at most limit, as
 * [{job_id, url, attempts}] (new).  *next_at: when the earliest one not
 * yet due is (0: none). */
int store_webhook_due(struct store *st, double now, int limit, json_t **rows, double *next_at,
                      struct slim_error *err);
/* One attempt's outcome: state 0 (try again at next_at), 1 delivered,
 * 2 given up; http_status 0 when no response came; error may be NULL. */
int store_webhook_result(struct store *st, const char *job_id, int state, double next_at,
                         int http_status, const char *error, struct slim_error *err);
/* {url, state: pending|delivered|failed, attempts, last_status,
 *  last_error, delivered_at} (new); SLIM_ENOTFOUND without a webhook. */
int store_webhook_get(struct store *st, const char *job_id, json_t **row, struct slim_error *err);

/* ---- bearer tokens (token.c hashes, store.c keeps) ----
 *
 * A token is "slimd_" and 64 hex digits of getrandom(): 256 random
 * bits, shown once when it is made.  The database keeps its SHA-256
 * (hex) and finds a token by that hash, so a copy of slimd.db gives no
 * usable token, and no secret is ever compared byte by byte in C (no
 * timing to measure).  A plain hash, not a slow one (bcrypt, argon2):
 * the secret is random and long, so there is nothing to guess, and
 * every request pays the hash.  Tokens are revoked, never deleted, so
 * the ids that models and jobs record as their owner stay meaningful. */

/* Scopes: persisted as bits, grow only at the end.  admin implies the
 * others. */
enum store_scope {
    STORE_SCOPE_READ = 1,     /* GET */
    STORE_SCOPE_SUBMIT = 2,   /* uploads, jobs, cancel and delete its own */
    STORE_SCOPE_ADMIN = 4,    /* everyone's rows, tokens */
};
#define STORE_SCOPES_ALL 7u
#define STORE_TOKEN_PREFIX "slimd_"
#define STORE_TOKEN_LEN 70     /* the prefix and 64 hex digits */

struct store_token {
    char id[32];               /* "tok_" + 16 hex digits */
    unsigned scopes;           /* enum store_scope bits */
};

/* "read,submit" -> bits; SLIM_EINVAL naming an unknown or empty scope. */
int store_scopes_parse(const char *list, unsigned *scopes, struct slim_error *err);
/* bits -> "read,submit" into buf (>= 24 bytes). */
void store_scopes_format(unsigned scopes, char *buf, size_t len);
/* A new random secret (STORE_TOKEN_LEN characters and a NUL). */
int store_token_secret_new(char secret[STORE_TOKEN_LEN + 1], struct slim_error *err);
/* The lowercase hex SHA-256 of the secret's bytes. */
int store_token_hash(const char *secret, char hash[65], struct slim_error *err);

/* Makes a token: a new secret into secret_out (shown to the caller
 * once; only its hash is stored) and *row, a new reference to
 * {id, name, scopes: [...], created_at, last_used_at: null, revoked}.
 * name: 1 to 200 bytes of UTF-8 (the caller checks more); scopes: a
 * non-empty subset of STORE_SCOPES_ALL. */
int store_token_create(struct store *st, const char *name, unsigned scopes,
                       char secret_out[STORE_TOKEN_LEN + 1], json_t **row,
                       struct slim_error *err);
/* Every token, oldest first, revoked ones too; *rows is a new array. */
int store_token_list(struct store *st, json_t **rows, struct slim_error *err);
/* Revokes: the token stops working at once, for this process and any
 * other on the same database.  SLIM_ENOTFOUND for an unknown id;
 * revoking twice is 0 (*was_revoked, may be NULL, says so). */
int store_token_revoke(struct store *st, const char *id, int *was_revoked,
                       struct slim_error *err);
/* Finds the live token whose secret this is: 0 and *out, or
 * SLIM_EUNAUTH when there is none (malformed, unknown or revoked; the
 * message says which, without echoing the secret).  Records
 * last_used_at, at most once a minute per token (a write per request
 * would cost an fsync each); a failure to record it is ignored. */
int store_token_verify(struct store *st, const char *secret, struct store_token *out,
                       struct slim_error *err);
/* Tokens that are not revoked. */
int store_token_count_live(struct store *st, int64_t *n, struct slim_error *err);

#endif

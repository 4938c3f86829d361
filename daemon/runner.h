/*
 * runner.h - claims queued jobs from SQLite and runs their pipelines.
 *
 * The runner lives on the daemon's libuv loop.  Pipelines run on libuv's
 * thread pool (uv_queue_work), which main() sizes to exactly --workers
 * threads through UV_THREADPOOL_SIZE before the loop starts: slimd uses
 * the pool for nothing else (no uv_fs calls), so a job that runs for
 * minutes can never starve another libuv user, and the pool size is the
 * concurrency cap.  After a pipeline ends, its result is recorded on the
 * loop thread and the next job is claimed.
 *
 * Several daemons may share one PostgreSQL database (--store): the
 * runner then renews its jobs' leases (store_job_heartbeat) every
 * HEARTBEAT_MS while it runs any, stops a job whose cancel came through
 * another node or whose lease it lost, re-queues other nodes' expired
 * jobs every half lease (store_job_recover_expired), and wakes on the
 * database's NOTIFY (storage/listen.h) with a slow poll behind it.
 * On SQLite (one daemon per database) none of that runs: the claim
 * still records the node and a lease, and the start's recovery takes
 * every running job, as before leases.
 */
#ifndef SLIM_RUNNER_H
#define SLIM_RUNNER_H

#include <uv.h>
#include "storage/store.h"

struct runner_config {
    int workers;          /* jobs at once */
    int max_attempts;     /* a job interrupted this often is failed */
    int threads_per_job;  /* BLAS/kernel threads per pipeline */
    uint64_t job_memory;  /* bytes the running jobs may reserve together; 0: no limit */
    int retain_days;      /* --retain-days: finished jobs older go; 0: kept */
    uint64_t max_data_bytes;  /* --max-data-bytes: oldest finished jobs go above it; 0: none */
    int no_claim;         /* --role api: never claims (still recovers expired leases) */
    double lease_seconds; /* --lease-seconds: the store's lease (store_set_node) */
};

struct runner;

/* Creates the runner on loop (which it borrows, like st).  Re-queues
 * jobs a crash left running (see store_job_recover) and claims queued
 * ones; when the disk is too full to record the re-queue, it tries again
 * with backoff and claims nothing until it has.  Call on the loop
 * thread. */
int runner_new(uv_loop_t *loop, struct store *st, const struct runner_config *cfg,
               struct runner **out, struct slim_error *err);
/* Wakes the runner to look for queued jobs.  Any thread. */
void runner_wake(struct runner *r);
/* Asks a running job to stop (it becomes canceled).  Any thread. */
void runner_cancel(struct runner *r, const char *job_id);
/* Stops claiming, asks running jobs to stop, re-queues them, and calls
 * done(ud) on the loop thread once nothing runs and the runner's handles
 * are closed.  The runner is then freed.  Loop thread only. */
void runner_shutdown(struct runner *r, void (*done)(void *ud), void *ud);

#endif

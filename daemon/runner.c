/*
 * runner.c - see runner.h.
 *
 * Each running job has a slot: its id, the paths, the parsed spec, and
 * an atomic stop flag that the pipeline's progress callback reads (1: the
 * user canceled, 2: the daemon is shutting down).  The progress callback
 * runs on the worker thread and only stores progress and stage in the
 * slot (atomics); a timer on the loop writes them to SQLite every 250 ms
 * while jobs run, so a dashboard sees them move and the pipeline never
 * waits for a database commit (an fsync, which during an artifact's
 * writeback can take long).
 *
 * The spec is parsed when the job is claimed, on the loop thread (it is
 * small), so that the job's eval dataset, an id in the spec, is
 * resolved there to its blob's path (slim_run_opts.eval_dataset): the
 * store is no business of the worker.  A job whose spec no longer parses
 * or whose dataset is gone fails at once, as one whose model is gone.
 *
 * A cancel can race a claim: the API marks the row cancel_requested and
 * then looks for the slot.  The runner registers the slot first and
 * re-reads the flag after, so whichever comes second sees the other.
 *
 * A cancel answered 200 always ends the job canceled: the API set
 * cancel_requested in the same store call that found the job running,
 * and every way out of running (succeed, fail, re-queue, recovery)
 * turns into canceled when that flag is set.  It ends within a second:
 * the pipeline and its long kernels poll the stop flag, and a kernel
 * step that cannot stop (the exact SVD's sbdsdc) is left running
 * detached.  Then the worker records the job canceled at once, from its
 * own thread (the store is thread-safe), and only returns, releasing
 * the slot and its memory reservation, when slim_pipeline_settle says the
 * detached step has ended: the next job never shares the machine with
 * a canceled one's leftovers.
 *
 * A job's outcome must reach its row, or the job would stay `running`
 * (issue 9).  When that write fails (the disk is full: SQLite cannot
 * append to its WAL) the slot is kept, marked pending, and the write is
 * retried after each backoff below until it lands (the store keeps room
 * for such writes in its WAL: see store.c).  Only a shutdown gives up on
 * a pending outcome: the row is then still running, and the next start's
 * recovery re-queues it, counting the attempt.  That recovery, when the
 * disk is too full to write it, is retried the same way, and nothing is
 * claimed before it has run.
 *
 * Backoff on storage trouble: a claim whose write fails, an outcome that
 * cannot be recorded, and a job that ran out of disk space (SLIM_ENOSPACE)
 * each double a delay (0.25 s up to 10 s, so that a disk its admin frees
 * is used within seconds) during which nothing is claimed; a job that
 * ends any other way resets it.  A job that ran out of space is
 * re-queued with its attempt counted (store_job_retry) and fails with
 * INSUFFICIENT_STORAGE after max_attempts, so a full disk costs one claim
 * per delay, each visible in the job's attempts, never a claim loop.
 * Rejected: failing such jobs at once (a disk full for a minute would
 * fail the whole queue in a second) and a per-job not-before time (the
 * cause, the disk, is shared by all jobs).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>
#include "api/api.h"
#include "api/metrics.h"
#include "daemon/log.h"
#include "daemon/runner.h"
#include "storage/listen.h"

/* STOP_LOST: the heartbeat found the job no longer this node's (its
 * lease ran out and recovery gave it away): stop, record nothing */
enum { STOP_NONE = 0, STOP_CANCEL = 1, STOP_SHUTDOWN = 2, STOP_LOST = 3 };

/* What after_work records for a job (struct slot.outcome). */
enum outcome { OUT_SUCCEED, OUT_FAIL, OUT_RETRY, OUT_CANCELED, OUT_REQUEUE, OUT_GATE, OUT_LOST };

/* Leases (several daemons on one database): the heartbeat renews them
 * and reads cancels (so one sent to another node lands within a
 * second even without NOTIFY); recovery of expired leases runs every
 * half lease; a node that missed a NOTIFY claims on the slow poll. */
#define HEARTBEAT_MS 300
#define POLL_MS 2000

#define BACKOFF_MIN_MS 250
#define RETENTION_EVERY_MS (60 * 1000)
#define RETENTION_DB_MARGIN (1u << 20)
#define BACKOFF_MAX_MS 10000

struct slot {
    int used;
    uv_work_t work;
    struct runner *r;
    char id[64];
    char in_path[4096];
    char out_path[4096];
    char eval_path[4096];               /* the eval dataset's blob, "" without one */
    char **ref_paths;                   /* the training passes' datasets and students */
    size_t n_refs;
    pthread_mutex_t tlock;              /* guards training (worker writes, tick reads) */
    char *training;                     /* the latest training state, JSON text, or NULL */
    int training_dirty;                 /* not yet written to the row */
    struct slim_spec *spec;             /* parsed at the claim */
    atomic_int stop;
    _Atomic double progress;            /* written by the worker, read by the tick */
    _Atomic(const char *) stage;        /* a static string (an op name, "load", "write") */
    double persisted;                   /* what the tick wrote last */
    const char *persisted_stage;
    int recorded;                       /* the worker already recorded the cancel */
    int rc;
    struct slim_error err;
    int gate_failed;        /* the artifact is kept, but a quality gate was missed (err) */
    json_t *report;
    char sha[65];
    uint64_t bytes;
    uint64_t mem;           /* what this job reserved (memory_bytes) */
    int outcome;            /* enum outcome, once the pipeline has ended */
    int pending;            /* the outcome is not recorded yet: retried on r->retry */
    double started;         /* slim_now() at the claim, for /metrics */
};

struct runner {
    uv_loop_t *loop;
    uv_async_t wake;
    struct store *st;
    struct runner_config cfg;
    uv_timer_t tick;        /* persists running jobs' progress */
    uv_timer_t retry;       /* ends a backoff: records pending outcomes, claims */
    uv_timer_t sweep;       /* retention, every RETENTION_EVERY_MS */
    uv_timer_t heartbeat;   /* renews leases, reads cancels, while jobs run */
    uv_timer_t expire;      /* re-queues expired leases, every half lease */
    uv_timer_t poll;        /* PostgreSQL: the slow claim poll; reopens the listener */
    uv_poll_t listen_poll;  /* PostgreSQL: the listener's socket */
    struct store_listen *listener;
    int closing;            /* handles still closing at shutdown */
    int listen_closing;     /* listen_poll is closing (the listener's connection was lost) */
    uint64_t backoff_ms;    /* current delay; 0 while storage is fine */
    int recovered;          /* store_job_recover has run (a full disk can delay it) */
    struct slot *slots;
    int running;
    uint64_t reserved;      /* memory the running jobs reserved */
    int shutting_down;
    int over_warned;        /* retention could not get under --max-data-bytes */
    pthread_mutex_t lock;   /* guards slot ids against runner_cancel */
    void (*done)(void *);
    void *done_ud;
};

static void claim_more(struct runner *r);
static void on_retry(uv_timer_t *t);

/* Retention (--retain-days, --max-data-bytes; store_retention_sweep):
 * when a job ends, before one starts (keeping room for an artifact the
 * size of its model under --max-data-bytes, so the limit holds while it
 * is written, not only after), and every minute.  It runs on the loop
 * thread: its deletes are short statements, a batch of one transaction
 * each, and what it walks (the data dir) is a few thousand files. */
static void retention(struct runner *r, uint64_t headroom)
{
    struct store_retention cfg = {r->cfg.retain_days, r->cfg.max_data_bytes, headroom};
    struct store_retention_result res;
    struct slim_error err;
    if (!cfg.retain_days && !cfg.max_bytes)
        return;
    if (store_retention_sweep(r->st, &cfg, &res, &err)) {
        log_warn("retention: %s", err.msg);
        return;
    }
    if (res.expired || res.evicted)
        log_info("retention: removed %d job(s) (%d older than %d days, %d for "
                 "--max-data-bytes), freed %llu bytes; data dir %llu bytes",
                 res.expired + res.evicted, res.expired, r->cfg.retain_days, res.evicted,
                 (unsigned long long)res.freed,
                 (unsigned long long)(cfg.max_bytes ? res.bytes_after : store_data_bytes(r->st)));
    /* said once per state change: an operator's problem, not a flood */
    if (res.over && !r->over_warned)
        log_warn("retention: the data dir holds %llu bytes, over --max-data-bytes %llu less "
                 "%llu for the next artifact, and nothing is left that retention may remove "
                 "(models, datasets, pinned jobs, each model's newest job, queued and running "
                 "jobs stay)", (unsigned long long)res.bytes_after,
                 (unsigned long long)r->cfg.max_data_bytes, (unsigned long long)headroom);
    r->over_warned = res.over;
}

static void on_sweep(uv_timer_t *t)
{
    retention(t->data, 0);
}

/* Storage trouble: wait longer before the next claim or retry. */
static void back_off(struct runner *r)
{
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (r->backoff_ms > BACKOFF_MAX_MS)
        r->backoff_ms = BACKOFF_MAX_MS;
    if (!r->shutting_down)
        uv_timer_start(&r->retry, on_retry, r->backoff_ms, 0);
}

/* Worker thread: a user's cancel is recorded the moment the pipeline
 * stops for it, before it releases what it holds (freeing a model of
 * 50,000 tensors took 0.4 s here): whatever the pipeline returns now,
 * the job ends canceled (store_job_succeed refuses it). */
static void record_cancel(struct slot *s)
{
    if (!s->recorded && atomic_load(&s->stop) == STOP_CANCEL &&
        store_job_canceled(s->r->st, s->id, NULL) == 0)
        s->recorded = 1;
}

/* Worker thread.  Progress only grows: two passes that each report
 * their share of one tensor's span must not make it step back. */
static int on_progress(void *ud, double progress, const char *stage)
{
    struct slot *s = ud;
    if (progress >= 0) {
        atomic_store(&s->stage, stage);
        if (progress > atomic_load(&s->progress))
            atomic_store(&s->progress, progress);
    }
    if (atomic_load(&s->stop) == STOP_NONE)
        return 0;
    record_cancel(s);
    return 1;
}

/* Replaces the slot's training state with text (taken; NULL clears it),
 * to be written to the row at the next tick when there is one; any
 * thread. */
static void set_training(struct slot *s, char *text)
{
    pthread_mutex_lock(&s->tlock);
    free(s->training);
    s->training = text;
    s->training_dirty = text != NULL;
    pthread_mutex_unlock(&s->tlock);
}

/* Worker thread: a training pass finished an epoch.  Kept as text in the
 * slot; the tick writes it to the row (the pipeline never waits for the
 * database). */
static void on_training(void *ud, json_t *state)
{
    char *text = json_dumps(state, JSON_COMPACT);
    if (text)
        set_training(ud, text);
}

/* Writes the slot's training state if it changed; any thread. */
static void flush_training(struct runner *r, struct slot *s)
{
    char *text = NULL;
    pthread_mutex_lock(&s->tlock);
    if (s->training_dirty && s->training)
        text = strdup(s->training);
    s->training_dirty = 0;
    pthread_mutex_unlock(&s->tlock);
    if (text)
        store_job_training(r->st, s->id, text, NULL);
    free(text);
}

/* Loop thread: writes the progress or stage that moved since the last
 * tick. */
static void on_tick(uv_timer_t *t)
{
    struct runner *r = t->data;
    for (int i = 0; i < r->cfg.workers; i++) {
        struct slot *s = &r->slots[i];
        double p;
        const char *stage;
        if (!s->used || s->pending)
            continue;
        flush_training(r, s);
        p = atomic_load(&s->progress);
        stage = atomic_load(&s->stage);
        if (p == s->persisted && stage == s->persisted_stage)
            continue;
        s->persisted = p;
        s->persisted_stage = stage;
        store_job_progress(r->st, s->id, p, stage, NULL);
    }
}

static void work_cb(uv_work_t *w)
{
    struct slot *s = w->data;
    struct store_hash *hash = NULL;
    struct slim_run_opts opts = {.progress = on_progress, .progress_ud = s,
                                 .threads = s->r->cfg.threads_per_job,
                                 .sink = store_hash_update,
                                 .eval_dataset = s->eval_path[0] ? s->eval_path : NULL,
                                 .ref_paths = (const char *const *)s->ref_paths,
                                 .training = on_training, .training_ud = s};
    s->rc = store_hash_new(&hash, &s->err);
    /* --blobs s3: the inputs' local copies, downloaded here, off the loop */
    if (!s->rc)
        s->rc = store_blob_fetch(s->r->st, s->in_path, &s->err);
    if (!s->rc && s->eval_path[0])
        s->rc = store_blob_fetch(s->r->st, s->eval_path, &s->err);
    for (size_t i = 0; !s->rc && i < s->n_refs; i++)
        s->rc = store_blob_fetch(s->r->st, s->ref_paths[i], &s->err);
    opts.sink_ud = hash;
    if (!s->rc)
        s->rc = slim_pipeline_run(s->spec, s->in_path, s->out_path, &opts, &s->report, &s->err);
    /* the last epochs' state reaches the row before the outcome does */
    flush_training(s->r, s);
    /* a cancel that came after the pipeline's last look: the artifact is
     * not adopted (after_work removes it) */
    if (s->rc == 0 && atomic_load(&s->stop) == STOP_CANCEL)
        s->rc = slim_error_set(&s->err, SLIM_ECANCELED, "canceled");
    if (s->rc == SLIM_ECANCELED) {
        /* the user sees canceled now; the slot waits for any kernel step
         * the cancel left running (see the top of this file) */
        record_cancel(s);
        slim_pipeline_settle();
    }
    /* the pipeline hashed the artifact as it wrote it and made it
     * durable: it moves into the blob store without a second read */
    if (!s->rc) {
        struct stat st;
        s->bytes = stat(s->out_path, &st) == 0 ? (uint64_t)st.st_size : 0;
        s->rc = store_hash_final(hash, s->sha, &s->err);
        hash = NULL;
        if (!s->rc)
            s->rc = store_blob_adopt_hashed(s->r->st, s->out_path, s->sha, &s->err);
        /* a missed quality gate fails the job, its artifact and report
         * kept for whoever looks into it (after_work records it) */
        if (!s->rc && slim_spec_check_gates(s->spec, s->report, &s->err) == SLIM_EGATE)
            s->gate_failed = 1;
    }
    store_hash_free(hash);
}

static void free_refs(struct slot *s)
{
    for (size_t i = 0; i < s->n_refs; i++)
        slim_free(s->ref_paths[i]);
    slim_free(s->ref_paths);
    s->ref_paths = NULL;
    s->n_refs = 0;
    set_training(s, NULL);
}

static void release_slot(struct runner *r, struct slot *s)
{
    pthread_mutex_lock(&r->lock);
    s->used = 0;
    s->id[0] = 0;
    pthread_mutex_unlock(&r->lock);
    json_decref(s->report);
    s->report = NULL;
    slim_spec_free(s->spec);
    s->spec = NULL;
    free_refs(s);
    r->running--;
    r->reserved -= s->mem;
    s->mem = 0;
    s->pending = 0;
    if (r->running == 0) {
        uv_timer_stop(&r->tick);
        uv_timer_stop(&r->heartbeat);
    }
}

static void on_closed(uv_handle_t *h)
{
    struct runner *r = h->data;
    void (*done)(void *) = r->done;
    void *ud = r->done_ud;
    if (--r->closing > 0)
        return;
    listen_close(r->listener);
    pthread_mutex_destroy(&r->lock);
    for (int i = 0; i < r->cfg.workers; i++)
        pthread_mutex_destroy(&r->slots[i].tlock);
    slim_free(r->slots);
    slim_free(r);
    if (done)
        done(ud);
}

static void maybe_finish(struct runner *r)
{
    uv_handle_t *handles[] = {
        (uv_handle_t *)&r->tick, (uv_handle_t *)&r->retry, (uv_handle_t *)&r->sweep,
        (uv_handle_t *)&r->heartbeat, (uv_handle_t *)&r->expire, (uv_handle_t *)&r->poll,
        (uv_handle_t *)&r->wake,
        r->listener ? (uv_handle_t *)&r->listen_poll : NULL,
    };
    if (!r->shutting_down || r->running != 0 || r->listen_closing ||
        uv_is_closing((uv_handle_t *)&r->tick))
        return;
    r->closing = 0;
    for (size_t i = 0; i < sizeof handles / sizeof handles[0]; i++)
        if (handles[i])
            r->closing++;
    for (size_t i = 0; i < sizeof handles / sizeof handles[0]; i++)
        if (handles[i])
            uv_close(handles[i], on_closed);
}

/* The write found the row no longer running (another process changed
 * it) or gone: there is nothing left to record. */
static int settled(int rc)
{
    return rc == SLIM_ENOTFOUND || rc == SLIM_ECONFLICT;
}

/* Writes s->outcome to the job's row.  0 when the row is no longer
 * running (written, or changed by someone else); -1 when the write
 * failed and must be retried (the caller keeps the slot pending).  A
 * success that cannot be recorded becomes a failure (or, out of space, a
 * retry) with the reason; its artifact was dropped by the store. */
static int record(struct runner *r, struct slot *s)
{
    struct slim_error err;
    int rc = 0, state = -1;

    switch (s->outcome) {
    case OUT_GATE:
        rc = store_job_fail_kept(r->st, s->id, s->sha, s->bytes, s->report, SLIM_EGATE,
                                 s->err.msg, &err);
        if (rc == SLIM_ECANCELED) {
            s->outcome = OUT_CANCELED;
            return record(r, s);
        }
        if (!rc) {
            log_info("job %s failed a quality gate: %s", s->id, s->err.msg);
            api_metrics_job_ended("failed", slim_now() - s->started, SLIM_EGATE, s->report,
                                  s->bytes);
            return 0;
        }
        if (settled(rc))
            break;
        log_error("job %s: cannot record its result: %s", s->id, err.msg);
        s->err = err;
        slim_error_prefix(&s->err, "cannot record the result");
        s->outcome = rc == SLIM_ENOSPACE ? OUT_RETRY : OUT_FAIL;
        return record(r, s);
    case OUT_SUCCEED:
        rc = store_job_succeed(r->st, s->id, s->sha, s->bytes, s->report, &err);
        if (rc == SLIM_ECANCELED) {
            s->outcome = OUT_CANCELED;
            log_info("job %s canceled (as it finished)", s->id);
            return record(r, s);
        }
        if (!rc) {
            log_info("job %s succeeded (artifact %llu bytes, sha256 %.12s)", s->id,
                     (unsigned long long)s->bytes, s->sha);
            api_metrics_job_ended("succeeded", slim_now() - s->started, 0, s->report, s->bytes);
            return 0;
        }
        if (settled(rc))
            break;
        log_error("job %s: cannot record its result: %s", s->id, err.msg);
        s->err = err;
        slim_error_prefix(&s->err, "cannot record the result");
        s->outcome = rc == SLIM_ENOSPACE ? OUT_RETRY : OUT_FAIL;
        return record(r, s);
    case OUT_RETRY:
        rc = store_job_retry(r->st, s->id, r->cfg.max_attempts, s->err.code, s->err.msg, &state,
                             &err);
        if (!rc) {
            log_info("job %s %s: %s", s->id, state == STORE_JOB_QUEUED ? "re-queued (disk full)"
                     : state == STORE_JOB_FAILED ? "failed (disk full, attempts used up)"
                     : "canceled", s->err.msg);
            api_metrics_job_ended(state == STORE_JOB_QUEUED ? "requeued"
                                  : state == STORE_JOB_FAILED ? "failed" : "canceled",
                                  slim_now() - s->started, s->err.code, NULL, 0);
            if (state == STORE_JOB_QUEUED)
                api_metrics_job_requeued("disk_full", 1);
        }
        break;
    case OUT_FAIL:
        if (!(rc = store_job_fail(r->st, s->id, s->err.code, s->err.msg, &err))) {
            log_info("job %s failed: %s", s->id, s->err.msg);
            api_metrics_job_ended("failed", slim_now() - s->started, s->err.code, NULL, 0);
        }
        break;
    case OUT_CANCELED:
        /* the worker may have recorded it the moment the pipeline stopped */
        if (s->recorded || !(rc = store_job_canceled(r->st, s->id, &err))) {
            log_info("job %s canceled", s->id);
            api_metrics_job_ended("canceled", slim_now() - s->started, 0, NULL, 0);
        }
        break;
    case OUT_LOST:
        log_warn("job %s stopped: this node's lease on it ran out and another node holds it "
                 "(or recovery re-queued it)", s->id);
        api_metrics_job_ended("requeued", slim_now() - s->started, 0, NULL, 0);
        return 0;
    case OUT_REQUEUE:
        if (!(rc = store_job_requeue(r->st, s->id, &err))) {
            log_info("job %s re-queued (shutdown)", s->id);
            api_metrics_job_ended("requeued", slim_now() - s->started, 0, NULL, 0);
            api_metrics_job_requeued("shutdown", 1);
        }
        break;
    }
    if (rc && settled(rc)) {
        log_warn("job %s: %s", s->id, err.msg);
        rc = 0;
    }
    if (rc && !s->pending)
        log_error("job %s: cannot record its outcome (%s); retrying with backoff", s->id,
                  err.msg);
    return rc ? -1 : 0;
}

/* The slot's job is over and recorded: free the slot, then claim the
 * next job (or finish the shutdown). */
static void slot_done(struct runner *r, struct slot *s)
{
    release_slot(r, s);
    if (r->shutting_down) {
        maybe_finish(r);
        return;
    }
    retention(r, 0);
    claim_more(r);
}

static void after_work(uv_work_t *w, int status)
{
    struct slot *s = w->data;
    struct runner *r = s->r;
    (void)status;

    if (s->rc == 0 && atomic_load(&s->stop) == STOP_CANCEL) {
        /* canceled while its artifact was being adopted: the row says
         * cancel_requested, so the success would be refused anyway; this
         * spares serialising the report to learn it */
        store_blob_drop_unused(r->st, s->sha);
        s->outcome = OUT_CANCELED;
    } else if (s->rc == 0)
        s->outcome = s->gate_failed ? OUT_GATE : OUT_SUCCEED;
    else if (s->rc == SLIM_ECANCELED && atomic_load(&s->stop) == STOP_SHUTDOWN)
        s->outcome = OUT_REQUEUE;
    else if (s->rc == SLIM_ECANCELED && atomic_load(&s->stop) == STOP_LOST)
        s->outcome = OUT_LOST;
    else if (s->rc == SLIM_ECANCELED)
        s->outcome = OUT_CANCELED;
    else if (s->rc == SLIM_ENOSPACE)
        s->outcome = OUT_RETRY;
    else
        s->outcome = OUT_FAIL;
    unlink(s->out_path);   /* whatever the pipeline left (after success: nothing) */
    if (record(r, s)) {
        /* a shutdown does not wait for the disk: recovery re-queues it */
        if (s->outcome == OUT_REQUEUE || r->shutting_down) {
            log_warn("job %s is left running; the next start re-queues it", s->id);
            slot_done(r, s);
            return;
        }
        s->pending = 1;
        back_off(r);
        return;
    }
    if (s->outcome == OUT_RETRY)
        back_off(r);
    else if (s->outcome != OUT_REQUEUE)
        r->backoff_ms = 0;   /* a job ended on a disk with room: storage is fine */
    slot_done(r, s);
}

/* The backoff ended: record what is pending, then claim again (or wait
 * longer if a write still fails). */
static void on_retry(uv_timer_t *t)
{
    struct runner *r = t->data;
    struct slim_error err;
    int stuck = 0, requeued = 0, failed = 0;
    if (!r->recovered) {
        if (store_job_recover(r->st, r->cfg.max_attempts, &requeued, &failed, &err)) {
            back_off(r);
            return;
        }
        r->recovered = 1;
        log_info("recovered from an unclean stop: %d job(s) re-queued, %d failed", requeued,
                 failed);
        api_metrics_job_requeued("recovery", requeued);
    }
    for (int i = 0; i < r->cfg.workers; i++) {
        struct slot *s = &r->slots[i];
        if (!s->used || !s->pending)
            continue;
        if (record(r, s)) {
            stuck = 1;
            continue;
        }
        if (s->outcome == OUT_RETRY)
            stuck = 1;   /* recorded, but the disk was full: keep backing off */
        release_slot(r, s);
    }
    if (stuck)
        back_off(r);
    else
        claim_more(r);
}

/* Fails a claimed job that cannot start, through its slot (so that a
 * write that fails is retried like any outcome); returns -1. */
static int fail_start(struct runner *r, struct slot *s, int code, const char *why)
{
    slim_spec_free(s->spec);
    s->spec = NULL;
    slim_error_set(&s->err, code, "%s", why);
    s->outcome = OUT_FAIL;
    s->r = r;
    pthread_mutex_lock(&r->lock);
    s->used = 1;
    pthread_mutex_unlock(&r->lock);
    r->running++;
    if (record(r, s)) {
        s->pending = 1;
        back_off(r);
        return -1;
    }
    release_slot(r, s);
    return -1;
}

/* How long the claimed job waited: the wall clock less its created_at
 * (whole seconds, "2026-01-31T12:00:00Z"); 0 when that does not parse. */
static double queue_seconds(json_t *row)
{
    const char *at = json_string_value(json_object_get(row, "created_at"));
    struct timespec now;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!at || !strptime(at, "%Y-%m-%dT%H:%M:%SZ", &tm) || clock_gettime(CLOCK_REALTIME, &now))
        return 0;
    return (double)now.tv_sec + now.tv_nsec / 1e9 - (double)timegm(&tm);
}

/* Loop thread: renews this node's leases; stops the jobs canceled
 * through another node, and those this node no longer holds. */
static void on_heartbeat(uv_timer_t *t)
{
    struct runner *r = t->data;
    struct slim_error err;
    json_t *held;
    if (store_job_heartbeat(r->st, &held, &err)) {
        log_warn("cannot renew the job leases: %s", err.msg);
        return;
    }
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->cfg.workers; i++) {
        struct slot *s = &r->slots[i];
        json_t *cancel;
        int none = STOP_NONE;
        if (!s->used || s->pending || s->recorded)
            continue;
        cancel = json_object_get(held, s->id);
        if (!cancel)
            atomic_compare_exchange_strong(&s->stop, &none, STOP_LOST);
        else if (json_is_true(cancel))
            atomic_compare_exchange_strong(&s->stop, &none, STOP_CANCEL);
    }
    pthread_mutex_unlock(&r->lock);
    json_decref(held);
}

/* Loop thread: other nodes' jobs whose lease ran out go back to the
 * queue (or fail, attempts used up), and this node may claim them. */
static void on_expire(uv_timer_t *t)
{
    struct runner *r = t->data;
    struct slim_error err;
    int requeued = 0, failed = 0;
    if (!r->recovered)
        return;
    if (store_job_recover_expired(r->st, r->cfg.max_attempts, &requeued, &failed, &err)) {
        log_warn("cannot re-queue jobs whose lease ran out: %s", err.msg);
        return;
    }
    if (requeued || failed) {
        log_info("leases ran out: %d job(s) re-queued, %d failed (attempts used up)", requeued,
                 failed);
        api_metrics_job_requeued("lease_expired", requeued);
    }
    claim_more(r);
}

static void on_notify(void *ud, const char *channel, const char *payload)
{
    struct runner *r = ud;
    if (!strcmp(channel, "slimd_cancel"))
        runner_cancel(r, payload);
    else
        claim_more(r);
}

static void on_listen_closed(uv_handle_t *h)
{
    struct runner *r = h->data;
    r->listen_closing = 0;
    maybe_finish(r);
}

static void listen_stop(struct runner *r)
{
    uv_poll_stop(&r->listen_poll);
    r->listen_closing = 1;
    uv_close((uv_handle_t *)&r->listen_poll, on_listen_closed);
    r->listener = NULL;
}

static void on_listen(uv_poll_t *p, int status, int events)
{
    struct runner *r = p->data;
    (void)events;
    if (status < 0 || listen_drain(r->listener, on_notify, r)) {
        struct store_listen *l = r->listener;
        log_warn("lost the database's notifications; polling every %d s until they are back",
                 POLL_MS / 1000);
        listen_stop(r);     /* out of the loop's poll set before its socket closes */
        listen_close(l);
    }
}

/* PostgreSQL: LISTEN on a connection of its own (listen.h). */
static void listen_start(struct runner *r)
{
    struct slim_error err;
    struct store_listen *l;
    if (r->listener || r->shutting_down || r->listen_closing)
        return;
    if (listen_open(store_db_spec(r->st), &l, &err))
        return;
    if (uv_poll_init(r->loop, &r->listen_poll, listen_fd(l))) {
        listen_close(l);
        return;
    }
    r->listen_poll.data = r;
    r->listener = l;
    uv_poll_start(&r->listen_poll, UV_READABLE, on_listen);
}

/* PostgreSQL: the slow poll behind NOTIFY (a notification lost with a
 * connection), and the listener's reconnection. */
static void on_poll(uv_timer_t *t)
{
    struct runner *r = t->data;
    listen_start(r);
    claim_more(r);
}

/* Prepares a claimed job's slot; on error fails the job. */
static int start_job(struct runner *r, struct slot *s, json_t *row)
{
    struct slim_error err;
    json_t *model = NULL, *dataset = NULL, *cancel;
    const char *id = json_string_value(json_object_get(row, "id"));
    const char *model_id = json_string_value(json_object_get(row, "model"));
    const char *ds_id;
    char why[200];

    snprintf(s->id, sizeof s->id, "%s", id);
    s->started = slim_now();
    api_metrics_job_started(queue_seconds(row));
    s->spec = NULL;
    s->mem = 0;
    s->report = NULL;
    s->pending = 0;
    if (!model_id || store_model_get(r->st, model_id, &model, &err))
        return fail_start(r, s, SLIM_ENOTFOUND, "its model was deleted");
    store_blob_path(r->st, json_string_value(json_object_get(model, "sha256")), s->in_path,
                    sizeof s->in_path);
    json_decref(model);
    /* accepted at submission, so this fails only for a spec stored by an
     * older slimd that a newer parser refuses */
    if (slim_spec_parse(json_object_get(row, "spec"), api_spec_top_keys, &s->spec, &err))
        return fail_start(r, s, err.code, err.msg);
    s->eval_path[0] = 0;
    if ((ds_id = slim_spec_eval_dataset(s->spec))) {
        if (store_dataset_get(r->st, ds_id, &dataset, &err)) {
            snprintf(why, sizeof why, "its eval dataset %.64s was deleted", ds_id);
            return fail_start(r, s, SLIM_ENOTFOUND, why);
        }
        store_blob_path(r->st, json_string_value(json_object_get(dataset, "sha256")),
                        s->eval_path, sizeof s->eval_path);
        json_decref(dataset);
    }
    /* the training passes' datasets and student models, like the eval
     * dataset: resolved here, checked again (they may have been deleted
     * since the submission) */
    s->n_refs = slim_spec_n_refs(s->spec);
    if (s->n_refs && !(s->ref_paths = slim_calloc(s->n_refs, sizeof *s->ref_paths)))
        return fail_start(r, s, SLIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < s->n_refs; i++) {
        int kind, labels;
        char field[64];
        const char *ref = slim_spec_ref(s->spec, i, &kind, field, sizeof field, &labels);
        json_t *ref_row = NULL;
        int rc = kind == SLIM_REF_DATASET ? store_dataset_get(r->st, ref, &ref_row, &err)
                                          : store_model_get(r->st, ref, &ref_row, &err);
        if (rc || !(s->ref_paths[i] = slim_malloc(4096))) {
            json_decref(ref_row);
            snprintf(why, sizeof why, "%s: %s %.64s was deleted", field,
                     kind == SLIM_REF_DATASET ? "dataset" : "model", ref);
            free_refs(s);
            return fail_start(r, s, SLIM_ENOTFOUND, why);
        }
        store_blob_path(r->st, json_string_value(json_object_get(ref_row, "sha256")),
                        s->ref_paths[i], 4096);
        json_decref(ref_row);
    }
    store_tmp_path(r->st, ".safetensors", s->out_path, sizeof s->out_path);
    {   /* room under --max-data-bytes for an artifact the model's size,
         * and what the database grows by while the job runs (its report,
         * its progress in the WAL) */
        struct stat sb;
        if (r->cfg.max_data_bytes && stat(s->in_path, &sb) == 0)
            retention(r, (uint64_t)sb.st_size + RETENTION_DB_MARGIN);
    }
    s->mem = (uint64_t)json_integer_value(json_object_get(row, "memory_bytes"));
    r->reserved += s->mem;
    s->report = NULL;
    s->rc = 0;
    s->gate_failed = 0;
    atomic_store(&s->progress, 0.0);
    atomic_store(&s->stage, "load");
    s->persisted = 0;
    s->persisted_stage = NULL;
    s->recorded = 0;
    s->r = r;
    s->work.data = s;
    atomic_store(&s->stop, STOP_NONE);
    pthread_mutex_lock(&r->lock);
    s->used = 1;
    pthread_mutex_unlock(&r->lock);
    /* re-read the cancel flag now that runner_cancel can find the slot */
    if (store_job_get(r->st, id, &row, &err) == 0) {
        cancel = json_object_get(row, "cancel_requested");
        if (json_is_true(cancel))
            atomic_store(&s->stop, STOP_CANCEL);
        json_decref(row);
    }
    r->running++;
    if (!uv_is_active((uv_handle_t *)&r->tick))
        uv_timer_start(&r->tick, on_tick, 250, 250);
    if (store_is_shared(r->st) && !uv_is_active((uv_handle_t *)&r->heartbeat))
        uv_timer_start(&r->heartbeat, on_heartbeat, HEARTBEAT_MS, HEARTBEAT_MS);
    if (s->eval_path[0])
        log_info("job %s running (eval dataset %s)", id, slim_spec_eval_dataset(s->spec));
    else
        log_info("job %s running", id);
    uv_queue_work(r->loop, &s->work, work_cb, after_work);
    return 0;
}

static void claim_more(struct runner *r)
{
    struct slim_error err;
    json_t *row;
    /* during a backoff only its timer claims (on_retry) */
    while (!r->cfg.no_claim && !r->shutting_down && r->recovered && r->running < r->cfg.workers &&
           !uv_is_active((uv_handle_t *)&r->retry)) {
        struct slot *s = NULL;
        for (int i = 0; i < r->cfg.workers && !s; i++)
            if (!r->slots[i].used)
                s = &r->slots[i];
        if (!s)
            return;
        /* jobs start while their reservations fit the budget together;
         * with nothing running the oldest starts whatever it asks (a
         * budget lowered since it was queued must not stall the queue) */
        uint64_t left = UINT64_MAX;
        if (r->cfg.job_memory && r->running)
            left = r->reserved < r->cfg.job_memory ? r->cfg.job_memory - r->reserved : 0;
        int rc = store_job_claim(r->st, left, &row, &err);
        if (rc == SLIM_ENOTFOUND)
            return;
        if (rc) {
            /* nothing was claimed (the claim is one statement, its
             * attempts + 1 included); try again after the backoff */
            back_off(r);
            log_error("cannot claim a job: %s; trying again in %.2f s", err.msg,
                      r->backoff_ms / 1000.0);
            return;
        }
        start_job(r, s, row);
        json_decref(row);
    }
}

static void on_wake(uv_async_t *a)
{
    claim_more(a->data);
}

int runner_new(uv_loop_t *loop, struct store *st, const struct runner_config *cfg,
               struct runner **out, struct slim_error *err)
{
    struct runner *r = slim_calloc(1, sizeof *r);
    int requeued = 0, failed = 0, rc;
    if (!r || !(r->slots = slim_calloc((size_t)cfg->workers, sizeof *r->slots))) {
        slim_free(r);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    r->loop = loop;
    r->st = st;
    r->cfg = *cfg;
    pthread_mutex_init(&r->lock, NULL);
    for (int i = 0; i < cfg->workers; i++)
        pthread_mutex_init(&r->slots[i].tlock, NULL);
    rc = store_job_recover(st, cfg->max_attempts, &requeued, &failed, err);
    if (rc && rc != SLIM_ENOSPACE) {
        pthread_mutex_destroy(&r->lock);
        for (int i = 0; i < cfg->workers; i++)
            pthread_mutex_destroy(&r->slots[i].tlock);
        slim_free(r->slots);
        slim_free(r);
        return rc;
    }
    r->recovered = !rc;
    if (rc)
        log_warn("cannot re-queue the jobs an unclean stop left running (%s): trying again "
                 "with backoff, and claiming nothing until then", err->msg);
    else if (requeued || failed)
        log_info("recovered from an unclean stop: %d job(s) re-queued, %d failed", requeued,
                 failed);
    api_metrics_job_requeued("recovery", requeued);
    uv_async_init(loop, &r->wake, on_wake);
    r->wake.data = r;
    uv_timer_init(loop, &r->tick);
    r->tick.data = r;
    uv_timer_init(loop, &r->retry);
    r->retry.data = r;
    uv_timer_init(loop, &r->sweep);
    r->sweep.data = r;
    uv_timer_init(loop, &r->heartbeat);
    r->heartbeat.data = r;
    uv_timer_init(loop, &r->expire);
    r->expire.data = r;
    uv_timer_init(loop, &r->poll);
    r->poll.data = r;
    /* SQLite has one daemon (the data dir's lock): its start recovers
     * every running job, and a cancel reaches the runner in process, so
     * neither the heartbeat nor the expiry sweep runs there */
    if (store_is_shared(st)) {
        /* every half lease, at least every 5 s and at most 4 times a second */
        double half = (cfg->lease_seconds > 0 ? cfg->lease_seconds : 30) * 500;
        uint64_t ms = half < 250 ? 250 : half > 5000 ? 5000 : (uint64_t)half;
        uv_timer_start(&r->expire, on_expire, ms, ms);
        listen_start(r);
        if (!r->listener)
            log_warn("cannot LISTEN on the database: polling for jobs every %d s",
                     POLL_MS / 1000);
        uv_timer_start(&r->poll, on_poll, POLL_MS, POLL_MS);
    }
    if (cfg->retain_days || cfg->max_data_bytes) {
        retention(r, 0);
        uv_timer_start(&r->sweep, on_sweep, RETENTION_EVERY_MS, RETENTION_EVERY_MS);
    }
    *out = r;
    if (!r->recovered)
        back_off(r);
    claim_more(r);
    return 0;
}

void runner_wake(struct runner *r)
{
    uv_async_send(&r->wake);
}

void runner_cancel(struct runner *r, const char *job_id)
{
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->cfg.workers; i++)
        if (r->slots[i].used && !strcmp(r->slots[i].id, job_id))
            atomic_store(&r->slots[i].stop, STOP_CANCEL);
    pthread_mutex_unlock(&r->lock);
}

void runner_shutdown(struct runner *r, void (*done)(void *ud), void *ud)
{
    r->shutting_down = 1;
    r->done = done;
    r->done_ud = ud;
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->cfg.workers; i++) {
        int none = STOP_NONE; /* a user's cancel stands: that job ends canceled */
        if (r->slots[i].used)
            atomic_compare_exchange_strong(&r->slots[i].stop, &none, STOP_SHUTDOWN);
    }
    pthread_mutex_unlock(&r->lock);
    /* outcomes still pending get one last try; the rows of those that
     * fail stay running, and the next start's recovery re-queues them */
    uv_timer_stop(&r->retry);
    uv_timer_stop(&r->sweep);
    uv_timer_stop(&r->expire);
    uv_timer_stop(&r->poll);
    if (r->listener)
        uv_poll_stop(&r->listen_poll);
    for (int i = 0; i < r->cfg.workers; i++) {
        struct slot *s = &r->slots[i];
        if (!s->used || !s->pending)
            continue;
        if (record(r, s))
            log_warn("job %s is left running; the next start re-queues it", s->id);
        release_slot(r, s);
    }
    maybe_finish(r);
}

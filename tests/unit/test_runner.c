/*
 * test_runner.c - daemon/runner.c on a database whose disk fills up
 * (tests/unit/full_vfs.h) while it claims and records jobs: an outcome
 * that cannot be written is kept and written once there is room (the
 * job never stays `running` for good, its artifact is not orphaned), a
 * claim that cannot be written is retried with backoff, never in a loop
 * (the refused writes are counted), and a recovery that cannot be
 * written at start is retried the same way instead of stopping the
 * daemon.  Each test runs a real libuv loop and real pipelines on a tiny
 * model, and flips the disk from a timer on that loop; timings are the
 * runner's backoff (0.25 s, doubling), so each test takes 1-3 s.
 */
#include <dirent.h>
#include <sys/stat.h>
#include <uv.h>
#include "tests/unit/util.h"
#include "tests/unit/full_vfs.h"
#include "storage/store.h"
#include "daemon/runner.h"

/* One test's world: a store, a runner on its own loop, and a watcher
 * that samples the job every 20 ms. */
struct world {
    uv_loop_t loop;
    uv_timer_t watch, flip;
    struct store *st;
    struct runner *r;
    char job[32];
    double t0;
    double full_until;          /* seconds after t0 at which the disk gets room, */
    long refusals;              /* once it has refused at least this many writes */
    double done_at;             /* when the job reached a final state */
    int running_while_full;     /* samples that saw the job running on the full disk */
    int queued_while_full;
    char final[16];
    json_t *last;               /* the job's last sample (new reference) */
    int closed;
};

static double now_s(void)
{
    return uv_hrtime() / 1e9;
}

static const char *data_dir(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", test_tmp_dir(), name);
    return path;
}

/* A 16 x 16 F32 model, stored as a blob with its row; returns the id. */
static const char *put_model(struct store *st, const char *name)
{
    static char id[32];
    float w[256];
    struct slim_tensor t = {.name = "l0.weight", .dtype = SLIM_DT_F32, .ndim = 2,
                            .shape = {16, 16}, .data = w, .nbytes = sizeof w};
    struct slim_error err;
    json_t *info, *row;
    char file[64], sha[65];
    uint64_t bytes;
    for (int i = 0; i < 256; i++)
        w[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    snprintf(file, sizeof file, "%s.safetensors", name);
    const char *path = test_write_model(file, &t, 1);
    if (slim_model_describe(path, &info, &err) || store_blob_adopt(st, path, sha, &bytes, &err) ||
        store_model_insert(st, NULL, name, sha, bytes, info, &row, &err))
        fail_msg("model: %s", err.msg);
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(row, "id")));
    json_decref(row);
    json_decref(info);
    return id;
}

static void put_job(struct world *w, const char *model)
{
    json_t *spec = json_pack("{s:s, s:[{s:s, s:s}]}", "model", model, "passes", "op",
                             "quantize", "dtype", "int8"), *row;
    struct slim_error err;
    if (store_job_insert(w->st, NULL, model, NULL, spec, 0, 0, &row, &err))
        fail_msg("job insert: %s", err.msg);
    snprintf(w->job, sizeof w->job, "%s", json_string_value(json_object_get(row, "id")));
    json_decref(row);
    json_decref(spec);
}

static void on_closed(uv_handle_t *h)
{
    struct world *w = h->data;
    w->closed++;
}

static void on_runner_done(void *ud)
{
    struct world *w = ud;
    uv_close((uv_handle_t *)&w->watch, on_closed);
    uv_close((uv_handle_t *)&w->flip, on_closed);
}

/* Gives the disk room once full_until has passed and the writes the
 * test is about were refused (on a slow machine, under valgrind, the
 * job may take longer than full_until). */
static void on_flip(uv_timer_t *t)
{
    struct world *w = t->data;
    if (now_s() - w->t0 < w->full_until || atomic_load(&full_refused) < w->refusals)
        return;
    atomic_store(&disk_full, 0);
    uv_timer_stop(t);
}

/* Samples the job; once it is final (or after 8 s) shuts the runner down. */
static void on_watch(uv_timer_t *t)
{
    struct world *w = t->data;
    struct slim_error err;
    json_t *row;
    double at = now_s() - w->t0;
    if (store_job_get(w->st, w->job, &row, &err))
        fail_msg("job get: %s", err.msg);
    const char *state = json_string_value(json_object_get(row, "state"));
    if (atomic_load(&disk_full)) {
        w->running_while_full += !strcmp(state, "running");
        w->queued_while_full += !strcmp(state, "queued");
    }
    json_decref(w->last);
    w->last = row;
    if (strcmp(state, "succeeded") && strcmp(state, "failed") && strcmp(state, "canceled") &&
        at < 30)
        return;
    snprintf(w->final, sizeof w->final, "%s", state);
    w->done_at = at;
    uv_timer_stop(t);
    runner_shutdown(w->r, on_runner_done, w);
}

static void world_open(struct world *w, const char *name)
{
    memset(w, 0, sizeof *w);
    full_vfs_on();
    struct slim_error err;
    if (store_open(data_dir(name), &w->st, &err))
        fail_msg("store_open: %s", err.msg);
    assert_int_equal(uv_loop_init(&w->loop), 0);
}

/* Starts the runner with the disk full (full=1) or not, gives it room
 * full_until seconds later (once it refused `refusals` writes), and runs
 * the loop until the job is final. */
static void world_run(struct world *w, int full, double full_until, long refusals)
{
    struct runner_config cfg = {.workers = 1, .max_attempts = 3, .threads_per_job = 1};
    struct slim_error err;
    uv_timer_init(&w->loop, &w->watch);
    uv_timer_init(&w->loop, &w->flip);
    w->watch.data = w->flip.data = w;
    w->full_until = full_until;
    w->refusals = refusals;
    atomic_store(&disk_full, full);
    w->t0 = now_s();
    if (runner_new(&w->loop, w->st, &cfg, &w->r, &err))
        fail_msg("runner_new: %s", err.msg);
    /* the claim has happened (or failed) inside runner_new; the job's
     * outcome is recorded on this loop, after this line */
    atomic_store(&disk_full, 1);
    uv_timer_start(&w->flip, on_flip, 10, 10);
    uv_timer_start(&w->watch, on_watch, 20, 20);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(w->closed, 2);
}

static void world_close(struct world *w)
{
    json_decref(w->last);
    store_close(w->st);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    full_vfs_off();
}

static long int_field(json_t *row, const char *key)
{
    return (long)json_integer_value(json_object_get(row, key));
}

static int count_blobs(struct store *st)
{
    char path[4096];
    DIR *top, *sub;
    struct dirent *e, *f;
    int n = 0;
    snprintf(path, sizeof path, "%s/blobs", store_data_dir(st));
    assert_non_null(top = opendir(path));
    while ((e = readdir(top))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/blobs/%s", store_data_dir(st), e->d_name);
        assert_non_null(sub = opendir(path));
        while ((f = readdir(sub)))
            n += f->d_name[0] != '.';
        closedir(sub);
    }
    closedir(top);
    return n;
}

static void test_outcome_waits_for_room(void **state)
{
    /* the job is claimed with room, then the disk fills: its success
     * cannot be recorded, so its artifact goes and the job is to be
     * re-queued, which cannot be recorded either until 0.7 s; meanwhile
     * the row says running and the write is retried after 0.25 s and
     * 0.5 s more (not in a loop).  Then it is queued with the attempt
     * counted, claimed again after the next backoff, and succeeds. */
    struct world w;
    (void)state;
    world_open(&w, "outcome");
    const char *m = put_model(w.st, "m");
    put_job(&w, m);
    world_run(&w, 0, 0.7, 3);   /* the success, the re-queue, its first retry */
    assert_string_equal(w.final, "succeeded");
    assert_int_equal(int_field(w.last, "attempts"), 2);
    assert_true(w.running_while_full > 5);      /* it waited, running, while the disk was full */
    assert_true(atomic_load(&full_refused) >= 2);
    assert_true(atomic_load(&full_refused) <= 20);  /* a backoff, not a loop */
    assert_true(w.done_at > 0.9);
    /* the first artifact was dropped, the second kept: model + artifact */
    assert_int_equal(count_blobs(w.st), 2);
    world_close(&w);
}

static void test_claim_backs_off(void **state)
{
    /* the disk is full from the start: the claim is refused, retried
     * at 0.25 s (refused again) and 0.75 s (room since 0.6 s): a few
     * refused writes, one attempt, the job succeeds */
    struct world w;
    (void)state;
    world_open(&w, "claim");
    const char *m = put_model(w.st, "m");
    put_job(&w, m);
    world_run(&w, 1, 0.6, 2);
    assert_string_equal(w.final, "succeeded");
    assert_int_equal(int_field(w.last, "attempts"), 1);
    assert_true(w.queued_while_full > 5);
    assert_int_equal(w.running_while_full, 0);
    assert_true(atomic_load(&full_refused) >= 2);
    assert_true(atomic_load(&full_refused) <= 20);
    assert_true(w.done_at > 0.6);
    world_close(&w);
}

static void test_recovery_waits_for_room(void **state)
{
    /* a job left running by a crash, and a start on a full disk: the
     * runner starts anyway, re-queues the job once there is room, and
     * runs it (the crash's attempt counted: 2) */
    struct world w;
    struct slim_error err;
    json_t *row;
    (void)state;
    world_open(&w, "recover");
    const char *m = put_model(w.st, "m");
    put_job(&w, m);
    if (store_job_claim(w.st, UINT64_MAX, &row, &err))
        fail_msg("claim: %s", err.msg);
    json_decref(row);
    store_close(w.st);   /* the "crash" */
    if (store_open(data_dir("recover"), &w.st, &err))
        fail_msg("store_open: %s", err.msg);
    world_run(&w, 1, 0.6, 2);
    assert_string_equal(w.final, "succeeded");
    assert_int_equal(int_field(w.last, "attempts"), 2);
    assert_true(w.running_while_full > 5);   /* the crash's row, until recovery could write */
    assert_true(atomic_load(&full_refused) <= 20);
    world_close(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outcome_waits_for_room),
        cmocka_unit_test(test_claim_backs_off),
        cmocka_unit_test(test_recovery_waits_for_room),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

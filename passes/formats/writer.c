/*
 * writer.c - see writer.h.
 *
 * The pipeline computes tensor i+1 while this thread writes tensor i:
 * write() into the page cache, the sink (the daemon hashes there, so the
 * artifact is never read back to name it), and sync_file_range(WRITE)
 * every WRITEBACK_STEP bytes so the disk works during the job and the
 * final fsync has little left to do.  Batches are the unit of ownership:
 * a batch's buffers are freed once its bytes are in the file, and one
 * batch at most waits behind the one being written, so memory in flight
 * is bounded by two tensors' outputs (three with the one being built).
 *
 * Rejected: O_DIRECT (alignment rules on every piece, and the page cache
 * is what the daemon serves the artifact from next), io_uring (not worth
 * a dependency for one sequential stream), and mmap'ing the output
 * (page faults per 4 KiB on the write side, the cost this project keeps
 * measuring on its virtual machines).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "passes/formats/writer.h"

#define CHUNK ((size_t)8 << 20)           /* one write() and one sink call */

/* A full disk or quota is SLIM_ENOSPACE (the daemon retries such a job
 * later), whichever call saw it: write, fsync (delayed allocation, NFS)
 * or close; anything else is SLIM_EIO. */
static int io_code(int e)
{
    return e == ENOSPC || e == EDQUOT ? SLIM_ENOSPACE : SLIM_EIO;
}
#define WRITEBACK_STEP ((uint64_t)32 << 20)
#define MAX_WAITING 1            /* batches queued behind the one being written */

struct batch {
    struct slim_piece *pieces;
    size_t n;
    void **owned;
    size_t nowned;
    struct batch *next;
};

struct slim_writer {
    int fd;
    char tmp[PATH_MAX];
    char path[PATH_MAX];
    slim_sink_fn sink;
    void *sink_ud;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct batch *head, *tail;
    int waiting;               /* batches queued, not yet taken */
    int busy;                  /* the thread is writing a batch */
    int closing;
    int err_no;                /* first write error (errno), 0 if none */
    uint64_t queued, written, synced;
};

static void batch_free(struct batch *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->nowned; i++)
        slim_aligned_free(b->owned[i]);
    slim_free(b->owned);
    slim_free(b->pieces);
    slim_free(b);
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0)
            return EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes one batch; returns 0 or an errno. */
static int write_batch(struct slim_writer *wr, const struct batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        const char *p = b->pieces[i].data;
        size_t left = b->pieces[i].len;
        while (left) {
            size_t len = left < CHUNK ? left : CHUNK;
            int e = write_all(wr->fd, p, len);
            if (e)
                return e;
            if (wr->sink)
                wr->sink(wr->sink_ud, p, len);
            wr->written += len;
            p += len;
            left -= len;
            if (wr->written - wr->synced >= WRITEBACK_STEP) {
                /* start writeback of what is complete; best effort (some
                 * file systems do not implement it) */
                (void)sync_file_range(wr->fd, (off_t)wr->synced,
                                      (off_t)(wr->written - wr->synced), SYNC_FILE_RANGE_WRITE);
                wr->synced = wr->written;
            }
        }
    }
    return 0;
}

static void *writer_main(void *arg)
{
    struct slim_writer *wr = arg;
    pthread_mutex_lock(&wr->lock);
    for (;;) {
        struct batch *b;
        while (!wr->head && !wr->closing)
            pthread_cond_wait(&wr->cond, &wr->lock);
        if (!wr->head)
            break;
        b = wr->head;
        wr->head = b->next;
        if (!wr->head)
            wr->tail = NULL;
        wr->waiting--;
        wr->busy = 1;
        int failed = wr->err_no;
        pthread_mutex_unlock(&wr->lock);
        int e = failed ? 0 : write_batch(wr, b);
        batch_free(b);
        pthread_mutex_lock(&wr->lock);
        if (e && !wr->err_no)
            wr->err_no = e;
        wr->busy = 0;
        pthread_cond_broadcast(&wr->cond);
    }
    pthread_mutex_unlock(&wr->lock);
    return NULL;
}

int slim_writer_open(const char *path, slim_sink_fn sink, void *sink_ud,
                     struct slim_writer **out, struct slim_error *err)
{
    struct slim_writer *wr = slim_calloc(1, sizeof *wr);
    *out = NULL;
    if (!wr)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    snprintf(wr->path, sizeof wr->path, "%s", path);
    snprintf(wr->tmp, sizeof wr->tmp, "%s.tmp-XXXXXX", path);
    wr->sink = sink;
    wr->sink_ud = sink_ud;
    wr->fd = mkostemp(wr->tmp, O_CLOEXEC);
    if (wr->fd >= 0)
        (void)fchmod(wr->fd, 0644); /* an artifact, not a secret: mkstemp's 0600 is too tight */
    if (wr->fd < 0) {
        int rc = slim_error_set(err, io_code(errno), "cannot create the artifact's temp file: %s",
                                strerror(errno));
        slim_free(wr);
        return rc;
    }
    pthread_mutex_init(&wr->lock, NULL);
    pthread_cond_init(&wr->cond, NULL);
    if (pthread_create(&wr->thread, NULL, writer_main, wr) != 0) {
        close(wr->fd);
        unlink(wr->tmp);
        pthread_mutex_destroy(&wr->lock);
        pthread_cond_destroy(&wr->cond);
        slim_free(wr);
        return slim_error_set(err, SLIM_ENOMEM, "cannot start the writer thread");
    }
    *out = wr;
    return 0;
}

static int write_error(struct slim_writer *wr, struct slim_error *err)
{
    int e = wr->err_no;
    return slim_error_set(err, io_code(e), "cannot write the artifact: %s", strerror(e));
}

int slim_writer_submit(struct slim_writer *wr, const struct slim_piece *pieces, size_t n,
                       void *const *owned, size_t nowned, struct slim_error *err)
{
    struct batch *b = slim_calloc(1, sizeof *b);
    uint64_t bytes = 0;
    int rc = 0;

    if (b) {
        b->pieces = slim_malloc((n ? n : 1) * sizeof *pieces);
        b->owned = slim_malloc((nowned ? nowned : 1) * sizeof *owned);
    }
    if (!b || !b->pieces || !b->owned) {
        for (size_t i = 0; i < nowned; i++)
            slim_aligned_free(owned[i]);
        if (b) {
            slim_free(b->pieces);
            slim_free(b->owned);
            slim_free(b);
        }
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    /* callers pass NULL with a count of 0 (a piece with nothing to free),
     * and memcpy from NULL is undefined even for 0 bytes */
    if (n)
        memcpy(b->pieces, pieces, n * sizeof *pieces);
    if (nowned)
        memcpy(b->owned, owned, nowned * sizeof *owned);
    b->n = n;
    b->nowned = nowned;
    for (size_t i = 0; i < n; i++)
        bytes += pieces[i].len;
    pthread_mutex_lock(&wr->lock);
    while (wr->waiting >= MAX_WAITING && !wr->err_no)
        pthread_cond_wait(&wr->cond, &wr->lock);
    if (wr->err_no) {
        rc = write_error(wr, err);
    } else {
        if (wr->tail)
            wr->tail->next = b;
        else
            wr->head = b;
        wr->tail = b;
        wr->waiting++;
        wr->queued += bytes;
        b = NULL;
        pthread_cond_broadcast(&wr->cond);
    }
    pthread_mutex_unlock(&wr->lock);
    batch_free(b);
    return rc;
}

uint64_t slim_writer_queued(const struct slim_writer *wr)
{
    return wr->queued;
}

/* Ends the thread after it wrote (or, with drop, freed) what is queued. */
static void stop_thread(struct slim_writer *wr, int drop)
{
    pthread_mutex_lock(&wr->lock);
    if (drop && !wr->err_no)
        wr->err_no = ECANCELED;
    wr->closing = 1;
    pthread_cond_broadcast(&wr->cond);
    pthread_mutex_unlock(&wr->lock);
    pthread_join(wr->thread, NULL);
    pthread_mutex_destroy(&wr->lock);
    pthread_cond_destroy(&wr->cond);
}

static int fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd, rc;
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)((slash - path) ? slash - path : 1), path);
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

int slim_writer_finish(struct slim_writer *wr, struct slim_error *err)
{
    int rc = 0;
    stop_thread(wr, 0);
    if (wr->err_no)
        rc = write_error(wr, err);
    else if (fsync(wr->fd) != 0)
        rc = slim_error_set(err, io_code(errno), "cannot fsync the artifact: %s",
                            strerror(errno));
    if (close(wr->fd) != 0 && !rc)
        rc = slim_error_set(err, io_code(errno), "cannot close the artifact: %s",
                            strerror(errno));
    if (!rc && rename(wr->tmp, wr->path) != 0)
        rc = slim_error_set(err, SLIM_EIO, "cannot rename the artifact into place: %s",
                            strerror(errno));
    if (rc)
        unlink(wr->tmp);
    else
        fsync_parent(wr->path);
    slim_free(wr);
    return rc;
}

void slim_writer_abort(struct slim_writer *wr)
{
    if (!wr)
        return;
    stop_thread(wr, 1);
    close(wr->fd);
    unlink(wr->tmp);
    slim_free(wr);
}

int slim_st_header(const struct slim_tensor *tensors, size_t n, json_t *metadata, char **out,
                   size_t *len, struct slim_error *err)
{
    json_t *hdr = json_object(), *ent;
    char *text = NULL, *buf;
    uint64_t off = 0, hlen;
    size_t tlen;
    int rc = 0;

    *out = NULL;
    if (!hdr)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if (metadata && json_object_size(metadata))
        json_object_set(hdr, "__metadata__", metadata);
    for (size_t i = 0; i < n; i++) {
        const struct slim_tensor *t = &tensors[i];
        ent = json_pack("{s:s, s:o, s:[I, I]}", "dtype", slim_dtype_name(t->dtype), "shape",
                        slim_shape_json(t), "data_offsets", (json_int_t)off,
                        (json_int_t)(off + t->nbytes));
        if (!ent || json_object_set_new(hdr, t->name, ent)) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory building the header");
            goto out;
        }
        off += t->nbytes;
    }
    if (json_object_size(hdr) != n + (json_object_get(hdr, "__metadata__") ? 1 : 0)) {
        rc = slim_error_set(err, SLIM_EINTERNAL, "two artifact tensors share a name");
        goto out;
    }
    text = json_dumps(hdr, JSON_COMPACT);
    if (!text) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory building the header");
        goto out;
    }
    tlen = strlen(text);
    hlen = (tlen + 7) & ~(uint64_t)7;
    buf = slim_malloc(8 + hlen);
    if (!buf) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory building the header");
        goto out;
    }
    for (int i = 0; i < 8; i++)
        buf[i] = (char)(hlen >> (8 * i));
    memcpy(buf + 8, text, tlen);
    memset(buf + 8 + tlen, ' ', hlen - tlen);
    *out = buf;
    *len = 8 + hlen;
out:
    free(text);
    json_decref(hdr);
    return rc;
}

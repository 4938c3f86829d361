/*
 * blob.c - the content-addressed blob store: data_dir/blobs/ab/<sha256>,
 * or a shared dir or an S3 bucket (--blobs; below).
 *
 * Uploads stream into a mkstemp() file under tmp/ and are hashed on the
 * way (OpenSSL's EVP SHA-256, with the CPU's SHA instructions), so a file
 * is never held in memory nor read twice.  Commit is the durable-rename
 * dance: fsync the file, rename it to its hash name, fsync the folder
 * (and blobs/ when the fan-out folder is new).  A blob that already
 * exists is not replaced (the name is the content): the temp file is
 * dropped.  Every error path removes the temp file.
 *
 * Hashing runs beside the writes (issue 8): SHA-256 costs as much as
 * receiving and writing together.  The caller's thread write()s each
 * piece from its own buffer (so the temp file holds every accepted byte
 * for validation before commit) and copies it into a ring of SLOTS x
 * SLOT_SIZE (4 MiB, whatever the upload's size); a hashing thread of the
 * writer, started with the first full slot, hashes full slots in order,
 * and a writer that gets 4 MiB ahead waits.  Commit drains and joins the
 * thread; abort and every error path stop and join it (writer_free).
 * Rejected: one hashing thread for all uploads (they would share a
 * core), the libuv pool (busy with jobs for minutes), the thread
 * pread()ing the file back (the same copy, on the slower side), hashing
 * MHD's buffer in place while the connection waits (no overlap with
 * recv), and a tree hash (it would change every blob id).
 *
 * Every WRITEBACK_STEP bytes, sync_file_range(SYNC_FILE_RANGE_WRITE)
 * starts writeback of what was just written, so the final fsync waits
 * for the last few MiB, not the whole file (0.57 s -> 0.01 s for 1 GiB
 * here).  It is a hint: its errors are left to that fsync.
 *
 * Where blobs live (--blobs, struct blob_backend below):
 *   dir:DATA_DIR/blobs (the default)   blobs/ab/<sha>, temp files in tmp/;
 *   dir:PATH    PATH/ab/<sha>, a folder several daemons may share (NFS,
 *               CephFS), uploads streamed into PATH/.incoming;
 *   s3://bucket/prefix   objects PREFIX<sha> (s3.c), and a local copy in
 *               DATA_DIR/cache/ab/<sha> for the passes to mmap and the API
 *               to sendfile.
 * The temp file is always on the file system of the blob's final name,
 * so the last step is one atomic name operation.  The default keeps
 * rename() (rejected there: link()+unlink(), no gain).
 *
 * A shared dir: why concurrent writers, on one host or several, are
 * safe.  (1) Every writer has its own temp file (mkostemp: O_EXCL, which
 * NFSv3+ and CephFS honour across clients).  (2) A blob's name appears
 * only by link(temp, name) of a whole, fsynced file, and link() is atomic
 * on POSIX file systems, NFS and CephFS included (the server makes it):
 * a reader finds no name or the whole file, never a torn one.  (3) link()
 * never replaces: when two writers of the same bytes race, one link
 * makes the name and the other gets EEXIST and drops its temp file; the
 * name is the content's sha256, so what is there is what it wrote.
 * rename() would replace the first file with the second, and a daemon on
 * another NFS client that has the first open (a job mmapping it, an
 * artifact being served) would get ESTALE; with link() the inode it
 * holds stays the blob.  An NFS link() whose reply was lost is retried
 * by the client and answered EEXIST: the same case as a race, and right
 * for the same reason.  (4) The folder is fsynced after, so a row is
 * durable only after the name it points to.  tests/integration/
 * test_blobs.py runs two daemons uploading the same bytes at once.
 *
 * s3: a blob is committed as on one node (into DATA_DIR/cache, the same
 * file system as tmp/), then sent unless a HEAD finds it; the commit
 * fails (and the upload is refused) when the bucket does not take it.
 * Two nodes sending the same blob at once PUT the same bytes under the
 * same key: S3 keeps one whole object either way (a PUT is atomic, and
 * a multipart upload appears only when completed).  A local copy is
 * fetched into tmp/, checked against its name's sha256, then renamed
 * into cache/: a copy is whole and right, or absent.  A copy may go at
 * any time (blob_cache_trim): a job that mapped it or a download that
 * sends it keeps its open file.
 *
 * Removing blobs is store.c's job, under the store's lock: only the
 * database knows whether a blob is still used.  At a shared location
 * (dir:PATH other than the default, s3) it does not: each daemon's rows
 * are in its own store, so slimd never removes a blob there (deleting
 * the rows frees nothing at the shared location; the s3 backend's local
 * copy does go).  README "Blobs on shared storage" says so.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <openssl/evp.h>
#include "storage/blob.h"
#include "storage/s3.h"
#include "storage/store.h"

#define CHUNK (1u << 20)
#define SLOT_SIZE (1u << 20)
#define SLOTS 4
#define WRITEBACK_STEP (16u << 20)

struct blob_backend {
    enum blob_kind kind;
    char root[3200];        /* ROOT/ab/<sha>: DATA_DIR/blobs, PATH, DATA_DIR/cache */
    char incoming[3300];    /* temp files: DATA_DIR/tmp or PATH/.incoming */
    char spec[4200];        /* what --blobs said, for messages */
    struct s3 *s3;
};

/* Removes files in dir older than a day: temp files of a daemon that died
 * mid-upload.  A shared .incoming may hold another daemon's upload in
 * progress, so only what is old goes (an upload writes at least every
 * --conn-timeout seconds, and each write moves the file's mtime). */
static void purge_stale(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    struct stat sb;
    time_t now = time(NULL);
    if (!d)
        return;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISREG(sb.st_mode) && now - sb.st_mtime > 86400)
            unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
}

static int make_dir(const char *path, struct slim_error *err)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n >= sizeof buf)
        return slim_error_set(err, SLIM_EINVAL, "--blobs: path too long");
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0750) && errno != EEXIST)
                return slim_error_set(err, SLIM_EIO, "--blobs: cannot create %s: %s", buf,
                                      strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0750) && errno != EEXIST)
        return slim_error_set(err, SLIM_EIO, "--blobs: cannot create %s: %s", buf,
                              strerror(errno));
    return 0;
}

int blob_backend_new(const char *spec, const char *data_dir, struct blob_backend **out,
                     struct slim_error *err)
{
    struct blob_backend *b = slim_calloc(1, sizeof *b);
    char def[3100], a[4096], c[4096];
    int rc = 0;

    *out = NULL;
    if (strlen(data_dir) > 3000)
        return slim_error_set(err, SLIM_EINVAL, "data dir path too long");
    if (!b)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    snprintf(def, sizeof def, "%s/blobs", data_dir);
    snprintf(b->spec, sizeof b->spec, "%s", spec && *spec ? spec : "dir:DATA_DIR/blobs");
    if (!spec || !*spec) {
        b->kind = BLOB_LOCAL;
    } else if (!strncmp(spec, "dir:", 4)) {
        const char *path = spec + 4;
        if (!*path || strlen(path) > 3000) {
            slim_free(b);
            return slim_error_set(err, SLIM_EINVAL, "--blobs %s: expected dir:PATH", spec);
        }
        if ((rc = make_dir(path, err))) {
            slim_free(b);
            return rc;
        }
        /* the default folder named by its path is the default */
        b->kind = realpath(path, a) && realpath(def, c) && !strcmp(a, c) ? BLOB_LOCAL
                                                                            : BLOB_DIR;
        if (b->kind == BLOB_DIR) {
            snprintf(b->root, sizeof b->root, "%s", path);
            snprintf(b->incoming, sizeof b->incoming, "%s/.incoming", path);
        }
    } else if (!strncmp(spec, "s3:", 3)) {
        b->kind = BLOB_S3;
        if ((rc = s3_new(spec, &b->s3, err))) {
            slim_free(b);
            return rc;
        }
        snprintf(b->root, sizeof b->root, "%s/cache", data_dir);
        snprintf(b->incoming, sizeof b->incoming, "%s/tmp", data_dir);
        snprintf(b->spec, sizeof b->spec, "%s", s3_describe(b->s3));
    } else {
        slim_free(b);
        return slim_error_set(err, SLIM_EINVAL, "--blobs %s: expected dir:PATH or "
                              "s3://BUCKET[/PREFIX]", spec);
    }
    if (b->kind == BLOB_LOCAL) {
        snprintf(b->root, sizeof b->root, "%s", def);
        snprintf(b->incoming, sizeof b->incoming, "%s/tmp", data_dir);
    }
    if (b->kind != BLOB_LOCAL && !(rc = make_dir(b->root, err)) && b->kind == BLOB_DIR &&
        !(rc = make_dir(b->incoming, err))) {
        purge_stale(b->incoming);
        if (access(b->incoming, W_OK))
            rc = slim_error_set(err, SLIM_EIO, "--blobs %s: cannot write into %s: %s", spec,
                                b->incoming, strerror(errno));
    }
    if (rc) {
        blob_backend_free(b);
        return rc;
    }
    *out = b;
    return 0;
}

void blob_backend_free(struct blob_backend *b)
{
    if (!b)
        return;
    s3_free(b->s3);
    slim_free(b);
}

enum blob_kind blob_backend_kind(const struct blob_backend *b)
{
    return b->kind;
}

const char *blob_backend_root(const struct blob_backend *b)
{
    return b->root;
}

const char *blob_backend_describe(const struct blob_backend *b)
{
    return b->spec;
}

/* The ring: slot k (counting from 0 over the whole upload) lives in
 * slot[k % SLOTS].  The writer fills slot number `filled`, the thread
 * hashes slot number `hashed`; filled - hashed is how many wait, at most
 * SLOTS.  lock guards filled, hashed, len[], stop and failed; a slot's
 * bytes belong to the writer until it is counted in filled, then to the
 * thread until it is counted in hashed. */
struct blob_writer {
    struct store *st;
    EVP_MD_CTX *md;
    int fd;
    uint64_t bytes;
    uint64_t written_back;          /* offset up to which writeback was started */
    char path[4096];

    pthread_mutex_t lock;
    pthread_cond_t work;            /* the thread waits for a slot to hash */
    pthread_cond_t space;           /* the writer waits for a free slot */
    pthread_t thread;
    int started;                    /* thread is running and must be joined */
    unsigned char *slot[SLOTS];     /* allocated when first filled */
    size_t len[SLOTS];
    size_t fill;                    /* bytes in the slot being filled */
    uint64_t filled, hashed;
    int stop;                       /* the thread exits as soon as it sees it */
    int failed;                     /* EVP_DigestUpdate failed in the thread */
};

/* A full disk (or quota) is SLIM_ENOSPACE, the API's 507.  The message
 * names path relative to the data dir ("blobs/ab/..."): it reaches API
 * clients (an upload's error, a job's), who have no business knowing
 * where the server keeps its files. */
static int io_error(const struct store *st, struct slim_error *err, const char *what,
                    const char *path)
{
    int e = errno, code = e == ENOSPC || e == EDQUOT ? SLIM_ENOSPACE : SLIM_EIO;
    const char *dir = store_data_dir(st), *shown = path, *slash = strrchr(path, '/');
    size_t n = strlen(dir);
    if (!strncmp(path, dir, n) && (path[n] == '/' || !path[n]))
        shown = path[n] ? path + n + 1 : "the data dir";
    else if (slash && slash[1])   /* not under the data dir: its file name only */
        shown = slash + 1;
    return slim_error_set(err, code, "cannot %s %s: %s", what, shown, strerror(e));
}

int store_check_free(struct store *st, uint64_t need, struct slim_error *err)
{
    struct statvfs v;
    uint64_t avail;
    if (!need || statvfs(store_data_dir(st), &v) != 0)
        return 0;
    avail = (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
    if (avail >= need)
        return 0;
    return slim_error_set(err, SLIM_ENOSPACE,
                          "the data dir has %llu MiB free, less than the %llu MiB this needs "
                          "(--min-free-bytes and the request's size)",
                          (unsigned long long)(avail >> 20),
                          (unsigned long long)((need + (1u << 20) - 1) >> 20));
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

void store_hex(const unsigned char *d, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * n] = 0;
}

static int digest_final(EVP_MD_CTX *md, char sha_out[65], struct slim_error *err)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_DigestFinal_ex(md, d, &n) || n != 32)
        return slim_error_set(err, SLIM_EINTERNAL, "sha256: digest failed");
    store_hex(d, 32, sha_out);
    return 0;
}

/* Copies the closed file src into a new temp file of dir (the blob
 * location's file system), fsynced; its path into out.  For an artifact
 * written in the data dir's tmp/ going to a shared dir elsewhere. */
static int copy_into(struct store *st, const char *src, const char *dir, char *out, size_t cap,
                     struct slim_error *err)
{
    unsigned char *buf = slim_malloc(CHUNK);
    int in = -1, fd = -1, rc = 0;
    ssize_t n;
    snprintf(out, cap, "%s/adopt-XXXXXX", dir);
    if (!buf) {
        out[0] = 0;
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    if ((in = open(src, O_RDONLY | O_CLOEXEC)) < 0) {
        out[0] = 0;
        rc = io_error(st, err, "open", src);
        goto out;
    }
    if ((fd = mkostemp(out, O_CLOEXEC)) < 0) {
        rc = io_error(st, err, "create a temp file in", dir);
        out[0] = 0;
        goto out;
    }
    while ((n = read(in, buf, CHUNK)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = io_error(st, err, "read", src);
            goto out;
        }
        for (ssize_t off = 0, w; off < n; off += w)
            if ((w = write(fd, buf + off, (size_t)(n - off))) < 0) {
                if (errno == EINTR) {
                    w = 0;
                    continue;
                }
                rc = io_error(st, err, "write", out);
                goto out;
            }
    }
    if (fsync(fd))
        rc = io_error(st, err, "fsync", out);
out:
    if (fd >= 0 && close(fd) && !rc)
        rc = io_error(st, err, "close", out);
    if (in >= 0)
        close(in);
    if (rc && out[0])
        unlink(out);
    slim_free(buf);
    return rc;
}

/* Gives the closed, fsynced file tmp the name dst, which it never
 * replaces (blob.c's opening comment, point 3), and removes tmp.  A tmp
 * on another file system is first copied next to dst. */
static int link_blob(struct store *st, const char *tmp, const char *dst, struct slim_error *err)
{
    struct blob_backend *b = store_blobs(st);
    char copy[4096];
    int rc;
    if (link(tmp, dst) == 0 || errno == EEXIST) {
        unlink(tmp);
        return 0;
    }
    if (errno != EXDEV)
        return io_error(st, err, "link into", dst);
    if ((rc = copy_into(st, tmp, b->incoming, copy, sizeof copy, err)))
        return rc;
    if (link(copy, dst) && errno != EEXIST)
        rc = io_error(st, err, "link into", dst);
    unlink(copy);
    if (!rc)
        unlink(tmp);
    return rc;
}

/* Moves the fsynced, closed file tmp to ROOT/xx/<sha> and makes the
 * name durable, or drops tmp when that blob already exists; for s3 it
 * then sends the blob unless the bucket has it.  On error the caller
 * removes tmp (still there, or already gone). */
static int install(struct store *st, const char *tmp, const char *sha, struct slim_error *err)
{
    struct blob_backend *b = store_blobs(st);
    char dir[4096], dst[4096];
    int exists = 0, rc = 0;
    struct stat sb;
    snprintf(dir, sizeof dir, "%s/%.2s", b->root, sha);
    store_blob_path(st, sha, dst, sizeof dst);
    if (mkdir(dir, 0750) && errno != EEXIST)
        return io_error(st, err, "create", dir);
    /* The folders are fsynced whether this call made the blob or found
     * it: a blob found may be one another upload renamed a moment ago and
     * has not yet fsynced its folder, and our row must not become durable
     * before the name it points to.  The root too, for a fan-out folder
     * another thread has just made.  Two directory fsyncs are cheap next
     * to the file's. */
    if (b->kind == BLOB_DIR) {
        if ((rc = link_blob(st, tmp, dst, err)))
            return rc;
    } else if (access(dst, F_OK) == 0) {
        unlink(tmp);
    } else if (rename(tmp, dst)) {
        return io_error(st, err, "rename into", dst);
    }
    if (fsync_dir(dir))
        return io_error(st, err, "fsync", dir);
    if (fsync_dir(b->root))
        return io_error(st, err, "fsync", b->root);
    if (b->kind != BLOB_S3)
        return 0;
    /* the local copy is in place; the blob counts as stored once the
     * bucket has it */
    if (stat(dst, &sb))
        return io_error(st, err, "stat", dst);
    if ((rc = s3_head(b->s3, sha, &exists, NULL, err)) || exists)
        return rc;
    return s3_put_file(b->s3, sha, dst, (uint64_t)sb.st_size, err);
}

/* The hashing thread: hashes slots in order until stopped, or until
 * there are none left once the writer has stopped filling (stop). */
static void *hash_main(void *arg)
{
    struct blob_writer *bw = arg;
    pthread_mutex_lock(&bw->lock);
    for (;;) {
        while (bw->hashed == bw->filled && !bw->stop)
            pthread_cond_wait(&bw->work, &bw->lock);
        if (bw->hashed == bw->filled || bw->failed)
            break;
        unsigned i = (unsigned)(bw->hashed % SLOTS);
        size_t n = bw->len[i];
        pthread_mutex_unlock(&bw->lock);
        int ok = EVP_DigestUpdate(bw->md, bw->slot[i], n);
        pthread_mutex_lock(&bw->lock);
        if (!ok)
            bw->failed = 1;
        else
            bw->hashed++;
        pthread_cond_signal(&bw->space);
    }
    pthread_mutex_unlock(&bw->lock);
    return NULL;
}

/* Stops the thread and waits for it.  With drain, it first hashes every
 * slot it was given (commit); without, it drops them (abort).  Called by
 * the writer's thread only; safe when the thread never started. */
static void hasher_stop(struct blob_writer *bw, int drain)
{
    if (!bw->started)
        return;
    pthread_mutex_lock(&bw->lock);
    bw->stop = 1;
    if (!drain)
        bw->failed = 1;
    pthread_cond_signal(&bw->work);
    pthread_mutex_unlock(&bw->lock);
    pthread_join(bw->thread, NULL);
    bw->started = 0;
}

/* Hands the full slot to the thread, starting it the first time. */
static int publish(struct blob_writer *bw, struct slim_error *err)
{
    unsigned i = (unsigned)(bw->filled % SLOTS);
    int rc;
    if (!bw->started) {
        bw->len[i] = bw->fill;
        bw->filled++;
        bw->fill = 0;
        if ((rc = pthread_create(&bw->thread, NULL, hash_main, bw))) {
            bw->failed = 1;
            return slim_error_set(err, SLIM_ENOMEM, "cannot start the hashing thread: %s",
                                  strerror(rc));
        }
        bw->started = 1;
        return 0;
    }
    pthread_mutex_lock(&bw->lock);
    bw->len[i] = bw->fill;
    bw->filled++;
    pthread_cond_signal(&bw->work);
    pthread_mutex_unlock(&bw->lock);
    bw->fill = 0;
    return 0;
}

/* Makes slot number `filled` ready to fill: allocated, and no longer
 * being hashed (waits for the thread when the ring is full). */
static int claim_slot(struct blob_writer *bw, struct slim_error *err)
{
    unsigned i = (unsigned)(bw->filled % SLOTS);
    int failed;
    if (bw->started) {
        pthread_mutex_lock(&bw->lock);
        while (bw->filled - bw->hashed >= SLOTS && !bw->failed)
            pthread_cond_wait(&bw->space, &bw->lock);
        failed = bw->failed;
        pthread_mutex_unlock(&bw->lock);
    } else {
        failed = bw->failed;
    }
    if (failed)
        return slim_error_set(err, SLIM_EINTERNAL, "sha256: digest update failed");
    if (!bw->slot[i] && !(bw->slot[i] = slim_malloc(SLOT_SIZE)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    return 0;
}

static void writer_free(struct blob_writer *bw)
{
    hasher_stop(bw, 0);
    if (bw->fd >= 0)
        close(bw->fd);
    for (int i = 0; i < SLOTS; i++)
        slim_free(bw->slot[i]);
    EVP_MD_CTX_free(bw->md);
    pthread_cond_destroy(&bw->space);
    pthread_cond_destroy(&bw->work);
    pthread_mutex_destroy(&bw->lock);
    slim_free(bw);
}

int store_blob_begin(struct store *st, struct blob_writer **out, struct slim_error *err)
{
    struct blob_writer *bw = slim_calloc(1, sizeof *bw);
    if (!bw)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    bw->st = st;
    bw->fd = -1;
    /* on Linux these cannot fail for default attributes */
    pthread_mutex_init(&bw->lock, NULL);
    pthread_cond_init(&bw->work, NULL);
    pthread_cond_init(&bw->space, NULL);
    if (snprintf(bw->path, sizeof bw->path, "%s/upload-XXXXXX", store_blobs(st)->incoming) >=
        (int)sizeof bw->path) {
        writer_free(bw);
        return slim_error_set(err, SLIM_EINVAL, "data dir path too long");
    }
    if (!(bw->md = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(bw->md, EVP_sha256(), NULL)) {
        writer_free(bw);
        return slim_error_set(err, SLIM_ENOMEM, "sha256: cannot start a digest");
    }
    if ((bw->fd = mkostemp(bw->path, O_CLOEXEC)) < 0) {
        int rc = io_error(st, err, "create a temp file in", store_blobs(st)->incoming);
        writer_free(bw);
        return rc;
    }
    *out = bw;
    return 0;
}

int store_blob_write(struct blob_writer *bw, const void *buf, size_t len, struct slim_error *err)
{
    const char *p = buf;
    size_t left = len;
    int rc;
    while (left) {
        ssize_t n = write(bw->fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return io_error(bw->st, err, "write", bw->path);
        p += n;
        left -= (size_t)n;
    }
    bw->bytes += len;
    if (bw->bytes - bw->written_back >= WRITEBACK_STEP) {
        (void)sync_file_range(bw->fd, (off_t)bw->written_back,
                              (off_t)(bw->bytes - bw->written_back), SYNC_FILE_RANGE_WRITE);
        bw->written_back = bw->bytes;
    }
    p = buf;
    left = len;
    while (left) {
        size_t n;
        if (bw->fill == 0 && (rc = claim_slot(bw, err)))
            return rc;
        n = SLOT_SIZE - bw->fill < left ? SLOT_SIZE - bw->fill : left;
        memcpy(bw->slot[bw->filled % SLOTS] + bw->fill, p, n);
        bw->fill += n;
        p += n;
        left -= n;
        if (bw->fill == SLOT_SIZE && (rc = publish(bw, err)))
            return rc;
    }
    return 0;
}

uint64_t store_blob_bytes(const struct blob_writer *bw)
{
    return bw->bytes;
}

const char *store_blob_temp_path(const struct blob_writer *bw)
{
    return bw->path;
}

/* Waits for the thread to hash every full slot, then hashes the slot
 * being filled here. */
static int hash_rest(struct blob_writer *bw, struct slim_error *err)
{
    hasher_stop(bw, 1);
    if (bw->failed || (bw->fill && !EVP_DigestUpdate(bw->md, bw->slot[bw->filled % SLOTS],
                                                     bw->fill)))
        return slim_error_set(err, SLIM_EINTERNAL, "sha256: digest update failed");
    return 0;
}

int store_blob_commit(struct blob_writer *bw, char sha_out[65], struct slim_error *err)
{
    int rc = hash_rest(bw, err);
    if (!rc)
        rc = digest_final(bw->md, sha_out, err);
    if (!rc && fsync(bw->fd))
        rc = io_error(bw->st, err, "fsync", bw->path);
    if (close(bw->fd) && !rc)
        rc = io_error(bw->st, err, "close", bw->path);
    bw->fd = -1;
    if (!rc)
        rc = install(bw->st, bw->path, sha_out, err);
    if (rc)
        unlink(bw->path);
    writer_free(bw);
    return rc;
}

void store_blob_abort(struct blob_writer *bw)
{
    if (!bw)
        return;
    unlink(bw->path);
    writer_free(bw);
}

/* Removes tmp_path on failure as well. */
int store_blob_adopt(struct store *st, const char *tmp_path, char sha_out[65],
                     uint64_t *bytes_out, struct slim_error *err)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *buf = slim_malloc(CHUNK);
    uint64_t total = 0;
    int fd = -1, rc = 0;
    ssize_t n;

    if (!md || !buf || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    if ((fd = open(tmp_path, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = io_error(st, err, "open", tmp_path);
        goto out;
    }
    while ((n = read(fd, buf, CHUNK)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = io_error(st, err, "read", tmp_path);
            goto out;
        }
        if (!EVP_DigestUpdate(md, buf, (size_t)n)) {
            rc = slim_error_set(err, SLIM_EINTERNAL, "sha256: digest update failed");
            goto out;
        }
        total += (uint64_t)n;
    }
    /* fsync through a read-only descriptor is fine on Linux; the
     * pipeline may already have synced, this makes adopt safe alone */
    if (fsync(fd)) {
        rc = io_error(st, err, "fsync", tmp_path);
        goto out;
    }
    if ((rc = digest_final(md, sha_out, err)))
        goto out;
    close(fd);
    fd = -1;
    if (!(rc = install(st, tmp_path, sha_out, err)) && bytes_out)
        *bytes_out = total;
out:
    if (fd >= 0)
        close(fd);
    if (rc)
        unlink(tmp_path);
    EVP_MD_CTX_free(md);
    slim_free(buf);
    return rc;
}

/* pid + a process-wide counter makes the name unique among live
 * processes; the random part guards against a recycled pid finding a
 * stale file (tmp/ is also emptied at store_open). */
int store_tmp_path(struct store *st, const char *suffix, char *buf, size_t len)
{
    static atomic_uint counter;
    uint32_t r = 0;
    int n;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = 0;
    n = snprintf(buf, len, "%s/tmp/%ld-%u-%08x%s", store_data_dir(st), (long)getpid(),
                 atomic_fetch_add(&counter, 1), (unsigned)r, suffix ? suffix : "");
    if (n < 0 || (size_t)n >= len) {
        if (len)
            buf[0] = 0;
        return SLIM_EINVAL;
    }
    return 0;
}

/* Writes "" when sha is not 64 lowercase hex digits, so that a bad id
 * can never name a path outside blobs/. */
void store_blob_path(const struct store *st, const char *sha, char *buf, size_t len)
{
    size_t i = 0;
    while (sha && i < 64 && ((sha[i] >= '0' && sha[i] <= '9') || (sha[i] >= 'a' && sha[i] <= 'f')))
        i++;
    if (i != 64 || sha[64] ||
        snprintf(buf, len, "%s/%.2s/%s", store_blobs(st)->root, sha, sha) >= (int)len)
        buf[0] = 0;
}

/* The sha a blob path ends with, or NULL. */
static const char *path_sha(const char *path)
{
    const char *slash = strrchr(path, '/'), *name = slash ? slash + 1 : path;
    return strlen(name) == 64 && strspn(name, "0123456789abcdef") == 64 ? name : NULL;
}

static void sha_sink(void *ud, const void *buf, size_t len)
{
    (void)EVP_DigestUpdate(ud, buf, len);
}

/* Downloads the object into a temp file of the data dir, checks its
 * sha256 against its name, and renames it to path. */
static int fetch(struct store *st, const char *sha, const char *path, struct slim_error *err)
{
    struct blob_backend *b = store_blobs(st);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    char tmp[4096], got[65], dir[4096];
    int fd = -1, rc;

    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(md);
        return slim_error_set(err, SLIM_ENOMEM, "sha256: cannot start a digest");
    }
    if ((rc = store_tmp_path(st, ".fetch", tmp, sizeof tmp)))
        rc = slim_error_set(err, SLIM_EINVAL, "data dir path too long");
    else if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640)) < 0)
        rc = io_error(st, err, "create", tmp);
    if (!rc)
        rc = s3_get(b->s3, sha, 0, 0, fd, sha_sink, md, err);
    if (!rc && !(rc = digest_final(md, got, err)) && strcmp(got, sha))
        rc = slim_error_set(err, SLIM_EIO, "s3: the object of blob %.16s has sha256 %.16s: "
                            "it is not that blob (%s)", sha, got, b->spec);
    if (!rc && fsync(fd))
        rc = io_error(st, err, "fsync", tmp);
    if (fd >= 0 && close(fd) && !rc)
        rc = io_error(st, err, "close", tmp);
    snprintf(dir, sizeof dir, "%s/%.2s", b->root, sha);
    if (!rc && mkdir(dir, 0750) && errno != EEXIST)
        rc = io_error(st, err, "create", dir);
    /* two fetches of one blob: both whole and verified, either name wins */
    if (!rc && rename(tmp, path))
        rc = io_error(st, err, "rename into", path);
    if (!rc && fsync_dir(dir))
        rc = io_error(st, err, "fsync", dir);
    if (rc && fd >= 0)
        unlink(tmp);
    EVP_MD_CTX_free(md);
    return rc;
}

int store_blob_fetch(struct store *st, const char *path, struct slim_error *err)
{
    struct blob_backend *b = store_blobs(st);
    const char *sha = path_sha(path);
    if (b->kind != BLOB_S3 || !sha)
        return 0;
    /* a copy's mtime is when it was last used: blob_cache_trim's order */
    if (utimensat(AT_FDCWD, path, NULL, 0) == 0 || errno != ENOENT)
        return 0;
    return fetch(st, sha, path, err);
}

struct cached {
    struct timespec used;
    uint64_t blocks;
    char name[68];      /* "ab/<sha>" */
};

static int by_use(const void *x, const void *y)
{
    const struct cached *a = x, *b = y;
    if (a->used.tv_sec != b->used.tv_sec)
        return a->used.tv_sec < b->used.tv_sec ? -1 : 1;
    return a->used.tv_nsec < b->used.tv_nsec ? -1 : a->used.tv_nsec > b->used.tv_nsec;
}

uint64_t blob_cache_trim(struct store *st, uint64_t want)
{
    struct blob_backend *b = store_blobs(st);
    struct cached *all = NULL, *grown;
    size_t n = 0, cap = 0;
    uint64_t freed = 0;
    char path[4096];
    DIR *top, *sub;
    struct dirent *e, *f;
    struct stat sb;

    if (b->kind != BLOB_S3 || !want || !(top = opendir(b->root)))
        return 0;
    while ((e = readdir(top))) {
        if (strlen(e->d_name) != 2 || strspn(e->d_name, "0123456789abcdef") != 2)
            continue;
        snprintf(path, sizeof path, "%s/%s", b->root, e->d_name);
        if (!(sub = opendir(path)))
            continue;
        while ((f = readdir(sub))) {
            if (strlen(f->d_name) != 64 || fstatat(dirfd(sub), f->d_name, &sb, 0))
                continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 256;
                if (!(grown = slim_realloc(all, cap * sizeof *all)))
                    break;
                all = grown;
            }
            all[n].used = sb.st_mtim;
            all[n].blocks = (uint64_t)sb.st_blocks * 512;
            snprintf(all[n].name, sizeof all[n].name, "%s/%s", e->d_name, f->d_name);
            n++;
        }
        closedir(sub);
    }
    closedir(top);
    if (n)
        qsort(all, n, sizeof *all, by_use);
    /* a copy that a job has mapped or a download is sending stays
     * readable through its open file: unlink frees it when they end */
    for (size_t i = 0; i < n && freed < want; i++) {
        snprintf(path, sizeof path, "%s/%s", b->root, all[i].name);
        if (unlink(path) == 0)
            freed += all[i].blocks;
    }
    slim_free(all);
    return freed;
}

int blob_exists(struct store *st, const char *sha, struct slim_error *err)
{
    struct blob_backend *b = store_blobs(st);
    char path[4096];
    int exists = 0;
    store_blob_path(st, sha, path, sizeof path);
    if (!path[0])
        return 0;
    if (access(path, F_OK) == 0)
        return 1;
    if (b->kind != BLOB_S3 || s3_head(b->s3, sha, &exists, NULL, err))
        return 0;
    return exists;
}

uint64_t blob_remove(struct store *st, const char *sha)
{
    char path[4096];
    struct stat sb;
    if (store_blobs(st)->kind == BLOB_DIR)
        return 0;
    store_blob_path(st, sha, path, sizeof path);
    if (path[0] && stat(path, &sb) == 0 && unlink(path) == 0)
        return (uint64_t)sb.st_blocks * 512;
    return 0;
}

int store_blob_adopt_hashed(struct store *st, const char *tmp_path, const char sha[65],
                            struct slim_error *err)
{
    int rc = install(st, tmp_path, sha, err);
    if (rc)
        unlink(tmp_path);
    return rc;
}

struct store_hash {
    EVP_MD_CTX *md;
};

int store_hash_new(struct store_hash **out, struct slim_error *err)
{
    struct store_hash *h = slim_calloc(1, sizeof *h);
    *out = NULL;
    if (!h || !(h->md = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(h->md, EVP_sha256(), NULL)) {
        store_hash_free(h);
        return slim_error_set(err, SLIM_ENOMEM, "sha256: cannot start a digest");
    }
    *out = h;
    return 0;
}

void store_hash_update(void *h, const void *buf, size_t len)
{
    struct store_hash *sh = h;
    /* EVP_DigestUpdate cannot fail for SHA-256 on a valid context */
    (void)EVP_DigestUpdate(sh->md, buf, len);
}

int store_hash_final(struct store_hash *h, char sha_out[65], struct slim_error *err)
{
    int rc = digest_final(h->md, sha_out, err);
    store_hash_free(h);
    return rc;
}

void store_hash_free(struct store_hash *h)
{
    if (!h)
        return;
    EVP_MD_CTX_free(h->md);
    slim_free(h);
}

/*
 * blob.c - the content-addressed blob store: data_dir/blobs/ab/<sha256>.
 *
 * Uploads are streamed into a mkstemp() file under tmp/ and hashed as
 * they arrive (OpenSSL's EVP SHA-256, which uses the CPU's SHA
 * instructions), so a file is never held in memory nor read twice.
 * Commit is the usual durable-rename dance: fsync the file, rename it to
 * its hash name, fsync the folder (and blobs/ when the two-hex-digit
 * fan-out folder is new).  Because the name is the content, a blob that
 * already exists is not replaced: the temp file is dropped (dedup).
 * Every error path removes the temp file.
 *
 * tmp/ lives in the data dir, not in /tmp, so rename() never crosses a
 * file system.  Rejected: hashing after the upload (a second full read)
 * and link()+unlink() instead of rename() (no gain: a blob's content is
 * fixed by its name, so overwriting would be harmless, just wasted work).
 *
 * Removing blobs is store.c's job (store_model_delete), under the store's
 * lock, because only the database knows whether a blob is still used.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>
#include "storage/store.h"

#define CHUNK (1u << 20)

struct blob_writer {
    struct store *st;
    EVP_MD_CTX *md;
    int fd;
    uint64_t bytes;
    char path[4096];
};

static int io_error(struct slim_error *err, const char *what, const char *path)
{
    return slim_error_set(err, SLIM_EIO, "cannot %s %s: %s", what, path, strerror(errno));
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

static void to_hex(const unsigned char md[32], char out[65])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = 0;
}

static int digest_final(EVP_MD_CTX *md, char sha_out[65], struct slim_error *err)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_DigestFinal_ex(md, d, &n) || n != 32)
        return slim_error_set(err, SLIM_EINTERNAL, "sha256: digest failed");
    to_hex(d, sha_out);
    return 0;
}

/* Moves the fsynced, closed file tmp to blobs/xx/<sha> and makes the
 * rename durable, or drops tmp when that blob already exists.  On error
 * the caller removes tmp. */
static int install(struct store *st, const char *tmp, const char *sha, struct slim_error *err)
{
    char dir[4096], dst[4096];
    snprintf(dir, sizeof dir, "%s/blobs/%.2s", store_data_dir(st), sha);
    store_blob_path(st, sha, dst, sizeof dst);
    if (mkdir(dir, 0750) == 0) {
        char blobs[4096];
        snprintf(blobs, sizeof blobs, "%s/blobs", store_data_dir(st));
        if (fsync_dir(blobs))
            return io_error(err, "fsync", blobs);
    } else if (errno != EEXIST) {
        return io_error(err, "create", dir);
    }
    if (access(dst, F_OK) == 0) {
        unlink(tmp);
        return 0;
    }
    if (rename(tmp, dst))
        return io_error(err, "rename into", dst);
    if (fsync_dir(dir))
        return io_error(err, "fsync", dir);
    return 0;
}

static void writer_free(struct blob_writer *bw)
{
    if (bw->fd >= 0)
        close(bw->fd);
    EVP_MD_CTX_free(bw->md);
    slim_free(bw);
}

int store_blob_begin(struct store *st, struct blob_writer **out, struct slim_error *err)
{
    struct blob_writer *bw = slim_calloc(1, sizeof *bw);
    if (!bw)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    bw->st = st;
    bw->fd = -1;
    if (snprintf(bw->path, sizeof bw->path, "%s/tmp/upload-XXXXXX", store_data_dir(st)) >=
        (int)sizeof bw->path) {
        slim_free(bw);
        return slim_error_set(err, SLIM_EINVAL, "data dir path too long");
    }
    if (!(bw->md = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(bw->md, EVP_sha256(), NULL)) {
        writer_free(bw);
        return slim_error_set(err, SLIM_ENOMEM, "sha256: cannot start a digest");
    }
    if ((bw->fd = mkostemp(bw->path, O_CLOEXEC)) < 0) {
        int rc = io_error(err, "create a temp file in", store_data_dir(st));
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
    while (left) {
        ssize_t n = write(bw->fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return io_error(err, "write", bw->path);
        p += n;
        left -= (size_t)n;
    }
    if (!EVP_DigestUpdate(bw->md, buf, len))
        return slim_error_set(err, SLIM_EINTERNAL, "sha256: digest update failed");
    bw->bytes += len;
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

int store_blob_commit(struct blob_writer *bw, char sha_out[65], struct slim_error *err)
{
    int rc = digest_final(bw->md, sha_out, err);
    if (!rc && fsync(bw->fd))
        rc = io_error(err, "fsync", bw->path);
    if (close(bw->fd) && !rc)
        rc = io_error(err, "close", bw->path);
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
        rc = io_error(err, "open", tmp_path);
        goto out;
    }
    while ((n = read(fd, buf, CHUNK)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = io_error(err, "read", tmp_path);
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
        rc = io_error(err, "fsync", tmp_path);
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
        snprintf(buf, len, "%s/blobs/%.2s/%s", store_data_dir(st), sha, sha) >= (int)len)
        buf[0] = 0;
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

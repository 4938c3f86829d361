/*
 * s3.c - the S3 client behind `--blobs s3://bucket/prefix` (s3.h).
 *
 * Requests go through libcurl (already slimd's for webhooks), one easy
 * handle per request: blob transfers are few and large, so a handle's
 * set-up is noise, and no handle or connection is shared between
 * threads.  Each request is signed with AWS Signature Version 4 (the
 * canonical request, string to sign and HMAC-SHA256 key chain of
 * https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html)
 * over host, x-amz-content-sha256 and x-amz-date.  The payload hash is
 * real, never UNSIGNED-PAYLOAD: a blob's name is its sha256, which is
 * the PUT's payload hash as it stands, so the server checks the bytes it
 * stores against the name slimd gave them; a multipart upload's parts are
 * each hashed (read once more) before they go.
 *
 * URLs are path-style (ENDPOINT/BUCKET/KEY), which every S3-compatible
 * server accepts and which needs no DNS name per bucket.  Blobs over
 * part_bytes go as a multipart upload of part_bytes parts (S3 refuses
 * single PUTs over 5 GiB, and a failed 10 GiB PUT would start over);
 * the upload is aborted when a part fails, so the server keeps no
 * half-made object.  Rejected: libs3 (one more dependency for four
 * requests, and its own threading and XML parser), virtual-host-style
 * URLs (DNS per bucket), streaming SigV4 chunk signatures (more code
 * than hashing a part twice).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include "storage/s3.h"
#include "storage/store.h"

#define EMPTY_SHA "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define BODY_CAP (64u << 10)     /* error and XML answers kept for parsing */
#define MIN_PART (5ull << 20)    /* S3's smallest part but the last */

struct s3 {
    char *endpoint;     /* "http://127.0.0.1:9000", no trailing slash */
    char *host;         /* "127.0.0.1:9000": the Host header, signed */
    char *bucket, *prefix;   /* prefix: "" or "a/b/" (ends with '/') */
    char *key_id, *secret, *region;
    uint64_t part_bytes;
    char describe[512];
};

static char *dup_or_null(const char *s, size_t n)
{
    char *d = slim_malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

int s3_new(const char *url, struct s3 **out, struct slim_error *err)
{
    const char *ep = getenv("SLIMD_S3_ENDPOINT"), *id = getenv("AWS_ACCESS_KEY_ID");
    const char *secret = getenv("AWS_SECRET_ACCESS_KEY"), *region = getenv("AWS_REGION");
    const char *parts = getenv("SLIMD_S3_PART_BYTES"), *b, *slash, *h;
    struct s3 *s;
    size_t n;

    *out = NULL;
    if (strncmp(url, "s3://", 5) || !url[5] || url[5] == '/')
        return slim_error_set(err, SLIM_EINVAL, "--blobs %s: expected s3://BUCKET[/PREFIX]", url);
    if (!ep || (strncmp(ep, "http://", 7) && strncmp(ep, "https://", 8)))
        return slim_error_set(err, SLIM_EINVAL, "--blobs %s needs SLIMD_S3_ENDPOINT, the S3 "
                              "server as http(s)://HOST[:PORT]", url);
    if (!id || !*id || !secret || !*secret)
        return slim_error_set(err, SLIM_EINVAL, "--blobs %s needs AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY in the environment", url);
    if (!(s = slim_calloc(1, sizeof *s)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    s->part_bytes = 64ull << 20;
    if (parts) {
        char *end;
        unsigned long long v = strtoull(parts, &end, 10);
        if (*end || v < MIN_PART) {
            slim_free(s);
            return slim_error_set(err, SLIM_EINVAL, "SLIMD_S3_PART_BYTES '%s': expected a "
                                  "number of bytes, at least 5242880", parts);
        }
        s->part_bytes = v;
    }
    b = url + 5;
    slash = strchr(b, '/');
    n = strlen(ep);
    while (n && ep[n - 1] == '/')
        n--;
    h = strstr(ep, "://") + 3;
    s->endpoint = dup_or_null(ep, n);
    s->host = dup_or_null(h, strcspn(h, "/"));
    s->bucket = dup_or_null(b, slash ? (size_t)(slash - b) : strlen(b));
    if (slash) {
        /* "a//b/" -> "a/b/": S3 keys keep every slash, slimd's do not */
        size_t len = strlen(slash);
        if ((s->prefix = slim_malloc(len + 2))) {
            size_t k = 0;
            for (const char *p = slash; *p; p++)
                if (*p != '/' || (k && s->prefix[k - 1] != '/'))
                    s->prefix[k++] = *p;
            if (k && s->prefix[k - 1] != '/')
                s->prefix[k++] = '/';
            s->prefix[k] = 0;
        }
    } else {
        s->prefix = dup_or_null("", 0);
    }
    s->key_id = dup_or_null(id, strlen(id));
    s->secret = dup_or_null(secret, strlen(secret));
    s->region = dup_or_null(region && *region ? region : "us-east-1",
                            strlen(region && *region ? region : "us-east-1"));
    if (!s->endpoint || !s->host || !s->bucket || !s->prefix || !s->key_id || !s->secret ||
        !s->region) {
        s3_free(s);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    if (!*s->host || strspn(s->bucket, "abcdefghijklmnopqrstuvwxyz0123456789.-") !=
                         strlen(s->bucket)) {
        s3_free(s);
        return slim_error_set(err, SLIM_EINVAL, "--blobs %s: a bucket name is lowercase "
                              "letters, digits, '.' and '-'", url);
    }
    snprintf(s->describe, sizeof s->describe, "%s bucket %s%s%s", s->endpoint, s->bucket,
             *s->prefix ? " prefix " : "", s->prefix);
    curl_global_init(CURL_GLOBAL_DEFAULT);   /* reference counted; this is start-up */
    *out = s;
    return 0;
}

void s3_free(struct s3 *s)
{
    if (!s)
        return;
    slim_free(s->endpoint);
    slim_free(s->host);
    slim_free(s->bucket);
    slim_free(s->prefix);
    slim_free(s->key_id);
    if (s->secret)
        memset(s->secret, 0, strlen(s->secret));
    slim_free(s->secret);
    slim_free(s->region);
    slim_free(s);
}

const char *s3_describe(const struct s3 *s)
{
    return s->describe;
}

/* ---- signing ---- */

static void sha256_hex(const void *buf, size_t len, char out[65])
{
    unsigned char d[32];
    SHA256(buf, len, d);
    store_hex(d, 32, out);
}

static void hmac(const void *key, size_t klen, const char *msg, unsigned char out[32])
{
    unsigned int n = 32;
    HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, strlen(msg), out, &n);
}

/* RFC 3986 percent-encoding of everything but the unreserved characters
 * (and '/' when keep_slash), as SigV4's canonical URI and query want. */
static void uri_encode(const char *in, int keep_slash, char *out, size_t cap)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && k + 4 < cap; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~' || (keep_slash && *p == '/')) {
            out[k++] = (char)*p;
        } else {
            out[k++] = '%';
            out[k++] = digits[*p >> 4];
            out[k++] = digits[*p & 15];
        }
    }
    out[k] = 0;
}

/* The Authorization header for one request.  path: the encoded path
 * ("/bucket/prefix/sha"); query: the canonical query ("" or sorted,
 * encoded "a=b&c=d"). */
static void sign(const struct s3 *s, const char *method, const char *path, const char *query,
                 const char *payload_sha, const char *amz_date, char *auth, size_t cap)
{
    char *canon, scope[128], canon_sha[65], to_sign[512], sig[65];
    unsigned char k[32], k2[32];
    char date[9], secret_key[300];
    size_t len;

    memcpy(date, amz_date, 8);
    date[8] = 0;
    len = strlen(method) + strlen(path) + strlen(query) + strlen(s->host) + 400;
    if (!(canon = slim_malloc(len))) {
        auth[0] = 0;
        return;
    }
    snprintf(canon, len, "%s\n%s\n%s\nhost:%s\nx-amz-content-sha256:%s\nx-amz-date:%s\n\n"
             "host;x-amz-content-sha256;x-amz-date\n%s", method, path, query, s->host,
             payload_sha, amz_date, payload_sha);
    sha256_hex(canon, strlen(canon), canon_sha);
    slim_free(canon);
    snprintf(scope, sizeof scope, "%s/%s/s3/aws4_request", date, s->region);
    snprintf(to_sign, sizeof to_sign, "AWS4-HMAC-SHA256\n%s\n%s\n%s", amz_date, scope, canon_sha);
    snprintf(secret_key, sizeof secret_key, "AWS4%s", s->secret);
    hmac(secret_key, strlen(secret_key), date, k);
    memset(secret_key, 0, sizeof secret_key);
    hmac(k, 32, s->region, k2);
    hmac(k2, 32, "s3", k);
    hmac(k, 32, "aws4_request", k2);
    hmac(k2, 32, to_sign, k);
    store_hex(k, 32, sig);
    snprintf(auth, cap, "Authorization: AWS4-HMAC-SHA256 Credential=%s/%s, "
             "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=%s", s->key_id,
             scope, sig);
}

/* ---- one request ---- */

struct req {
    /* the body sent: bytes [off, off + len) of fd, or mem */
    int in_fd;
    uint64_t in_off, in_left;
    const char *mem;
    size_t mem_len;
    /* the body received: to out_fd (a 2xx GET), else kept in body */
    int out_fd;
    int out_errno;
    void (*sink)(void *ud, const void *buf, size_t len);
    void *ud;
    long status;        /* known once the headers are in */
    char body[BODY_CAP + 1];
    size_t body_len;
    char etag[200];
    uint64_t length;    /* Content-Length of the answer */
};

static size_t on_read(char *buf, size_t size, size_t nitems, void *ud)
{
    struct req *r = ud;
    size_t want = size * nitems;
    ssize_t n;
    if (want > r->in_left)
        want = (size_t)r->in_left;
    if (!want)
        return 0;
    do
        n = pread(r->in_fd, buf, want, (off_t)r->in_off);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return CURL_READFUNC_ABORT;
    r->in_off += (uint64_t)n;
    r->in_left -= (uint64_t)n;
    return (size_t)n;
}

static size_t on_write(char *buf, size_t size, size_t nitems, void *ud)
{
    struct req *r = ud;
    size_t n = size * nitems, left = n;
    const char *p = buf;
    if (r->out_fd >= 0 && r->status >= 200 && r->status < 300) {
        while (left) {
            ssize_t w = write(r->out_fd, p, left);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                r->out_errno = errno;
                return 0;       /* curl stops: CURLE_WRITE_ERROR */
            }
            p += w;
            left -= (size_t)w;
        }
        if (r->sink)
            r->sink(r->ud, buf, n);
        return n;
    }
    if (r->body_len < BODY_CAP) {
        size_t k = n < BODY_CAP - r->body_len ? n : BODY_CAP - r->body_len;
        memcpy(r->body + r->body_len, buf, k);
        r->body_len += k;
        r->body[r->body_len] = 0;
    }
    return n;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
    struct req *r = ud;
    size_t n = size * nitems;
    if (n > 9 && !strncmp(buf, "HTTP/", 5)) {
        const char *sp = memchr(buf, ' ', n);
        r->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    } else if (n > 5 && !strncasecmp(buf, "etag:", 5)) {
        size_t k = n - 5;
        const char *p = buf + 5;
        while (k && (*p == ' ' || *p == '\t'))
            p++, k--;
        while (k && (p[k - 1] == '\r' || p[k - 1] == '\n' || p[k - 1] == ' '))
            k--;
        if (k < sizeof r->etag) {
            memcpy(r->etag, p, k);
            r->etag[k] = 0;
        }
    } else if (n > 15 && !strncasecmp(buf, "content-length:", 15)) {
        r->length = strtoull(buf + 15, NULL, 10);
    }
    return n;
}

/* The text of <tag> in xml into out ("" when absent). */
static void xml_text(const char *xml, const char *tag, char *out, size_t cap)
{
    char open[64], close[64];
    const char *a, *b;
    out[0] = 0;
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    if (!(a = strstr(xml, open)) || !(b = strstr(a, close)))
        return;
    a += strlen(open);
    snprintf(out, cap, "%.*s", (int)(b - a), a);
}

/* One signed request.  key: the object's key; query: canonical (sorted,
 * encoded).  The body is r's in_fd range or mem; payload_sha its sha256.
 * Returns 0 with r->status set whatever it is, or SLIM_EIO when no
 * answer came (connect, send, receive, local write failed). */
static int perform(struct s3 *s, const char *method, const char *key, const char *query,
                   const char *payload_sha, struct req *r, struct slim_error *err)
{
    char path[2048], enc[1600], url[4096], auth[512], date_h[64], sha_h[128], host_h[300];
    char amz_date[17], errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL, *h;
    time_t now = time(NULL);
    struct tm tm;
    CURL *c;
    CURLcode cc;
    int rc = 0;

    gmtime_r(&now, &tm);
    strftime(amz_date, sizeof amz_date, "%Y%m%dT%H%M%SZ", &tm);
    uri_encode(key, 1, enc, sizeof enc);
    snprintf(path, sizeof path, "/%s/%s", s->bucket, enc);
    snprintf(url, sizeof url, "%s%s%s%s", s->endpoint, path, *query ? "?" : "", query);
    sign(s, method, path, query, payload_sha, amz_date, auth, sizeof auth);
    snprintf(date_h, sizeof date_h, "x-amz-date: %s", amz_date);
    snprintf(sha_h, sizeof sha_h, "x-amz-content-sha256: %s", payload_sha);
    snprintf(host_h, sizeof host_h, "Host: %s", s->host);
    if (!auth[0] || !(c = curl_easy_init()))
        return slim_error_set(err, SLIM_ENOMEM, "s3: out of memory");
    const char *lines[] = {auth, date_h, sha_h, host_h, "Expect:", NULL};
    for (int i = 0; lines[i]; i++) {
        if (!(h = curl_slist_append(headers, lines[i]))) {
            curl_slist_free_all(headers);
            curl_easy_cleanup(c);
            return slim_error_set(err, SLIM_ENOMEM, "s3: out of memory");
        }
        headers = h;
    }
    r->status = 0;
    r->body_len = 0;
    r->body[0] = 0;
    r->etag[0] = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    /* a transfer may take long; one that stalls for a minute is dead */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "slimd/" SLIMD_VERSION);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    if (!strcmp(method, "HEAD")) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (!strcmp(method, "PUT")) {
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, r);
        curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->in_left);
    } else if (!strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->mem ? r->mem : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->mem_len);
    } else if (strcmp(method, "GET")) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    }
    if (r->out_fd >= 0 && r->in_left == 0 && !strcmp(method, "GET") && r->length) {
        char range[64];   /* length is the range asked for, on the way in */
        snprintf(range, sizeof range, "%llu-%llu", (unsigned long long)r->in_off,
                 (unsigned long long)(r->in_off + r->length - 1));
        curl_easy_setopt(c, CURLOPT_RANGE, range);
    } else if (r->out_fd >= 0 && r->in_left == 0 && !strcmp(method, "GET") && r->in_off) {
        char range[64];
        snprintf(range, sizeof range, "%llu-", (unsigned long long)r->in_off);
        curl_easy_setopt(c, CURLOPT_RANGE, range);
    }
    r->length = 0;
    cc = curl_easy_perform(c);
    if (cc == CURLE_WRITE_ERROR && r->out_errno)
        rc = slim_error_set(err, r->out_errno == ENOSPC || r->out_errno == EDQUOT
                                 ? SLIM_ENOSPACE : SLIM_EIO,
                            "s3: GET %s: cannot write the local copy: %s", url,
                            strerror(r->out_errno));
    else if (cc != CURLE_OK)
        rc = slim_error_set(err, SLIM_EIO, "s3: %s %s: %s", method, url,
                            errbuf[0] ? errbuf : curl_easy_strerror(cc));
    else
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    return rc;
}

/* SLIM_EIO for an answer that is not 2xx: "s3: PUT URL: HTTP 403
 * SignatureDoesNotMatch (message)". */
static int status_error(struct s3 *s, const char *method, const char *key, const struct req *r,
                        struct slim_error *err)
{
    char code[64], msg[120];
    xml_text(r->body, "Code", code, sizeof code);
    xml_text(r->body, "Message", msg, sizeof msg);
    return slim_error_set(err, r->status == 404 ? SLIM_ENOTFOUND : SLIM_EIO,
                          "s3: %s %s/%s/%s: HTTP %ld%s%s%s%s%s", method, s->endpoint, s->bucket,
                          key, r->status, code[0] ? " " : "", code, msg[0] ? " (" : "", msg,
                          msg[0] ? ")" : "");
}

static struct req *req_new(struct slim_error *err)
{
    struct req *r = slim_calloc(1, sizeof *r);
    if (!r) {
        slim_error_set(err, SLIM_ENOMEM, "s3: out of memory");
        return NULL;
    }
    r->in_fd = r->out_fd = -1;
    return r;
}

static void object_key(const struct s3 *s, const char *sha, char *key, size_t cap)
{
    snprintf(key, cap, "%s%s", s->prefix, sha);
}

int s3_head(struct s3 *s, const char *sha, int *exists, uint64_t *bytes, struct slim_error *err)
{
    struct req *r = req_new(err);
    char key[1200];
    int rc;
    if (!r)
        return SLIM_ENOMEM;
    object_key(s, sha, key, sizeof key);
    rc = perform(s, "HEAD", key, "", EMPTY_SHA, r, err);
    *exists = 0;
    if (!rc && r->status == 200) {
        *exists = 1;
        if (bytes)
            *bytes = r->length;
    } else if (!rc && r->status != 404) {
        rc = status_error(s, "HEAD", key, r, err);
    }
    slim_free(r);
    return rc;
}

/* sha256 of bytes [off, off + len) of fd. */
static int hash_range(int fd, uint64_t off, uint64_t len, char out[65], struct slim_error *err)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *buf = slim_malloc(1u << 20), d[32];
    unsigned int n = 0;
    int rc = 0;
    if (!md || !buf || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        rc = slim_error_set(err, SLIM_ENOMEM, "s3: out of memory");
        goto out;
    }
    while (len) {
        size_t want = len < (1u << 20) ? (size_t)len : (1u << 20);
        ssize_t got = pread(fd, buf, want, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            rc = slim_error_set(err, SLIM_EIO, "s3: cannot read the blob to send: %s",
                                got ? strerror(errno) : "it is shorter than it was");
            goto out;
        }
        EVP_DigestUpdate(md, buf, (size_t)got);
        off += (uint64_t)got;
        len -= (uint64_t)got;
    }
    EVP_DigestFinal_ex(md, d, &n);
    store_hex(d, 32, out);
out:
    EVP_MD_CTX_free(md);
    slim_free(buf);
    return rc;
}

static int put_multipart(struct s3 *s, const char *key, int fd, uint64_t bytes, struct req *r,
                         struct slim_error *err)
{
    char upload_id[512], enc_id[1600], query[1800], part_sha[65];
    uint64_t nparts = (bytes + s->part_bytes - 1) / s->part_bytes;
    size_t cap = 128 + nparts * 300, len = 0;
    char *xml = slim_malloc(cap);
    int rc;

    if (!xml)
        return slim_error_set(err, SLIM_ENOMEM, "s3: out of memory");
    r->mem = NULL;
    r->mem_len = 0;
    if ((rc = perform(s, "POST", key, "uploads=", EMPTY_SHA, r, err)))
        goto out;
    if (r->status != 200) {
        rc = status_error(s, "POST (start a multipart upload)", key, r, err);
        goto out;
    }
    xml_text(r->body, "UploadId", upload_id, sizeof upload_id);
    if (!upload_id[0]) {
        rc = slim_error_set(err, SLIM_EIO, "s3: POST %s/%s/%s?uploads: no UploadId in the "
                            "answer", s->endpoint, s->bucket, key);
        goto out;
    }
    uri_encode(upload_id, 0, enc_id, sizeof enc_id);
    len = (size_t)snprintf(xml, cap, "<CompleteMultipartUpload>");
    for (uint64_t i = 0; i < nparts && !rc; i++) {
        uint64_t off = i * s->part_bytes;
        uint64_t n = bytes - off < s->part_bytes ? bytes - off : s->part_bytes;
        if ((rc = hash_range(fd, off, n, part_sha, err)))
            break;
        snprintf(query, sizeof query, "partNumber=%llu&uploadId=%s", (unsigned long long)i + 1,
                 enc_id);
        r->in_fd = fd;
        r->in_off = off;
        r->in_left = n;
        if ((rc = perform(s, "PUT", key, query, part_sha, r, err)))
            break;
        if (r->status != 200 || !r->etag[0]) {
            rc = status_error(s, "PUT (a part)", key, r, err);
            break;
        }
        len += (size_t)snprintf(xml + len, cap - len,
                                "<Part><PartNumber>%llu</PartNumber><ETag>%s</ETag></Part>",
                                (unsigned long long)i + 1, r->etag);
    }
    r->in_fd = -1;
    r->in_left = 0;
    if (!rc) {
        char body_sha[65];
        len += (size_t)snprintf(xml + len, cap - len, "</CompleteMultipartUpload>");
        sha256_hex(xml, len, body_sha);
        snprintf(query, sizeof query, "uploadId=%s", enc_id);
        r->mem = xml;
        r->mem_len = len;
        rc = perform(s, "POST", key, query, body_sha, r, err);
        /* S3 may answer 200 and an <Error> body for a complete that failed */
        if (!rc && (r->status != 200 || strstr(r->body, "<Error>")))
            rc = status_error(s, "POST (complete a multipart upload)", key, r, err);
        r->mem = NULL;
        r->mem_len = 0;
    }
    if (rc) {   /* the server drops the parts it has; its answer does not matter */
        struct slim_error ignored;
        snprintf(query, sizeof query, "uploadId=%s", enc_id);
        perform(s, "DELETE", key, query, EMPTY_SHA, r, &ignored);
    }
out:
    slim_free(xml);
    return rc;
}

int s3_put_file(struct s3 *s, const char *sha, const char *path, uint64_t bytes,
                struct slim_error *err)
{
    struct req *r = req_new(err);
    char key[1200];
    int fd, rc;
    if (!r)
        return SLIM_ENOMEM;
    object_key(s, sha, key, sizeof key);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = slim_error_set(err, SLIM_EIO, "s3: cannot open the blob to send: %s",
                            strerror(errno));
        goto out;
    }
    if (bytes > s->part_bytes) {
        rc = put_multipart(s, key, fd, bytes, r, err);
    } else {
        r->in_fd = fd;
        r->in_off = 0;
        r->in_left = bytes;
        rc = perform(s, "PUT", key, "", sha, r, err);
        if (!rc && r->status != 200)
            rc = status_error(s, "PUT", key, r, err);
    }
    close(fd);
out:
    slim_free(r);
    return rc;
}

int s3_get(struct s3 *s, const char *sha, uint64_t offset, uint64_t len, int fd,
           void (*sink)(void *ud, const void *buf, size_t len), void *ud,
           struct slim_error *err)
{
    struct req *r = req_new(err);
    char key[1200];
    int rc;
    if (!r)
        return SLIM_ENOMEM;
    object_key(s, sha, key, sizeof key);
    r->out_fd = fd;
    r->sink = sink;
    r->ud = ud;
    r->in_off = offset;     /* the range asked for (perform's convention) */
    r->length = len;
    rc = perform(s, "GET", key, "", EMPTY_SHA, r, err);
    if (!rc && r->status != 200 && r->status != 206)
        rc = status_error(s, "GET", key, r, err);
    else if (!rc && (offset || len) && r->status != 206)
        rc = slim_error_set(err, SLIM_EIO, "s3: GET %s/%s/%s: asked for a range, got the "
                            "whole object (HTTP 200)", s->endpoint, s->bucket, key);
    slim_free(r);
    return rc;
}

int s3_delete(struct s3 *s, const char *sha, struct slim_error *err)
{
    struct req *r = req_new(err);
    char key[1200];
    int rc;
    if (!r)
        return SLIM_ENOMEM;
    object_key(s, sha, key, sizeof key);
    rc = perform(s, "DELETE", key, "", EMPTY_SHA, r, err);
    if (!rc && r->status != 204 && r->status != 200 && r->status != 404)
        rc = status_error(s, "DELETE", key, r, err);
    slim_free(r);
    return rc;
}

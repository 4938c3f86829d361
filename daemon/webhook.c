/*
 * webhook.c - see webhook.h.
 *
 * The loop: ask the store for due deliveries (jobs that ended, whose
 * next try is due), POST each, record the outcome, then sleep until the
 * next one is due, a job changes (the store's listener signals: a job
 * that ends is sent within moments), or 5 s pass.  A 2xx answer is a
 * delivery; anything else (no answer within 10 s, a refused connection,
 * a 500, a 404) is retried after 1, 2, 4 ... s (at most 300 s between
 * tries), 10 attempts in all (about 9 minutes), then given up; the job's
 * JSON shows where it stands (notify.state, attempts, last_error).
 * Redirects are not followed, and only http and https are spoken, also
 * past a URL that the API checked (CURLOPT_PROTOCOLS_STR).
 *
 * Signing: with a secret the receiver can check that slimd sent the
 * body and when: X-Slimd-Timestamp is Unix seconds, X-Slimd-Signature
 * "sha256=" and the hex HMAC-SHA256 of "<timestamp>.<body>" under the
 * secret.  The timestamp is signed with the body so that an old
 * delivery replayed later is told apart (Stripe's and Slack's scheme;
 * rejected: signing the body alone, which a replay passes).
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>
#include <openssl/hmac.h>
#include <openssl/evp.h>
#include "daemon/log.h"
#include "daemon/webhook.h"
#include "storage/store.h"

#define MAX_ATTEMPTS 10
#define BACKOFF_BASE 1.0
#define BACKOFF_MAX 300.0
#define IDLE_SECONDS 5.0
#define BATCH 16

struct webhook {
    struct store *st;
    char *secret;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;       /* CLOCK_MONOTONIC */
    uint64_t gen;              /* job changes seen by the listener */
    int stop;
};

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_jobs_changed(void *ud)
{
    struct webhook *wh = ud;
    pthread_mutex_lock(&wh->lock);
    wh->gen++;
    pthread_cond_signal(&wh->cond);
    pthread_mutex_unlock(&wh->lock);
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/* curl's progress callback: a stop abandons the attempt under way. */
static int abandon(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    struct webhook *wh = ud;
    int stop;
    (void)a; (void)b; (void)c; (void)d;
    pthread_mutex_lock(&wh->lock);
    stop = wh->stop;
    pthread_mutex_unlock(&wh->lock);
    return stop;
}

/* "sha256=" and the hex HMAC of "<ts>.<body>"; out >= 72 bytes. */
static int sign(const char *secret, const char *ts, const char *body, size_t len, char *out)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    size_t tl = strlen(ts);
    char *msg = malloc(tl + 1 + len);
    if (!msg)
        return -1;
    memcpy(msg, ts, tl);
    msg[tl] = '.';
    memcpy(msg + tl + 1, body, len);
    if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)msg, tl + 1 + len, mac,
              &n) || n != 32) {
        free(msg);
        return -1;
    }
    free(msg);
    strcpy(out, "sha256=");
    store_hex(mac, n, out + 7);
    return 0;
}

/* One attempt: 0 delivered; else *status (0: no answer) and why. */
static int post(struct webhook *wh, const char *job_id, const char *url, long attempt,
                const char *body, size_t len, long *status, char *why, size_t why_len)
{
    char hdr[5][160], ts[32], sig[80], errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    CURL *c = curl_easy_init();
    CURLcode cc;
    int rc = -1;

    *status = 0;
    if (!c) {
        snprintf(why, why_len, "cannot start an HTTP client (out of memory)");
        return -1;
    }
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
    snprintf(hdr[0], sizeof hdr[0], "X-Slimd-Event: job.finished");
    snprintf(hdr[1], sizeof hdr[1], "X-Slimd-Job: %s", job_id);
    snprintf(hdr[2], sizeof hdr[2], "X-Slimd-Delivery: %s/%ld", job_id, attempt);
    snprintf(hdr[3], sizeof hdr[3], "X-Slimd-Timestamp: %s", ts);
    headers = curl_slist_append(headers, "Content-Type: application/json");
    for (int i = 0; i < 4; i++)
        headers = curl_slist_append(headers, hdr[i]);
    if (wh->secret && !sign(wh->secret, ts, body, len, sig)) {
        snprintf(hdr[4], sizeof hdr[4], "X-Slimd-Signature: %s", sig);
        headers = curl_slist_append(headers, hdr[4]);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "slimd/" SLIMD_VERSION);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, abandon);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, wh);
    cc = curl_easy_perform(c);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
        if (*status >= 200 && *status < 300)
            rc = 0;
        else
            snprintf(why, why_len, "the receiver answered HTTP %ld", *status);
    } else {
        snprintf(why, why_len, "%s", errbuf[0] ? errbuf : curl_easy_strerror(cc));
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    return rc;
}

/* Sends one due delivery and records its outcome. */
static void deliver(struct webhook *wh, const char *job_id, const char *url, long attempts)
{
    struct slim_error err;
    json_t *row = NULL;
    char why[256] = "", *body = NULL;
    long status = 0;
    int state;
    double next_at = 0;

    if (store_job_get(wh->st, job_id, &row, &err)) {
        store_webhook_result(wh->st, job_id, 2, 0, 0, err.msg, NULL);
        return;
    }
    body = json_dumps(row, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(row);
    if (!body) {
        log_error("webhook for job %s: out of memory", job_id);
        return;   /* still due: tried again on the next round */
    }
    if (!post(wh, job_id, url, attempts + 1, body, strlen(body), &status, why, sizeof why)) {
        state = 1;
        log_info("webhook for job %s delivered to %s (HTTP %ld, attempt %ld)", job_id, url, status,
                 attempts + 1);
    } else if (attempts + 1 >= MAX_ATTEMPTS) {
        state = 2;
        log_warn("webhook for job %s to %s: %s; giving up after %d attempts", job_id, url, why,
                 MAX_ATTEMPTS);
    } else {
        double delay = BACKOFF_BASE * pow(2.0, (double)attempts);
        state = 0;
        next_at = wall_now() + (delay < BACKOFF_MAX ? delay : BACKOFF_MAX);
        log_warn("webhook for job %s to %s: %s; trying again in %.0f s (attempt %ld of %d)",
                 job_id, url, why, next_at - wall_now(), attempts + 1, MAX_ATTEMPTS);
    }
    free(body);
    pthread_mutex_lock(&wh->lock);
    int stopping = wh->stop;
    pthread_mutex_unlock(&wh->lock);
    if (stopping && state != 1)
        return;   /* abandoned by the stop: not counted, sent after the restart */
    if (store_webhook_result(wh->st, job_id, state, next_at, (int)status, state == 1 ? NULL : why,
                             &err))
        log_error("webhook for job %s: cannot record the attempt: %s", job_id, err.msg);
}

static void *sender_main(void *arg)
{
    struct webhook *wh = arg;
    struct slim_error err;
    uint64_t seen = 0;
    pthread_mutex_lock(&wh->lock);
    while (!wh->stop) {
        json_t *rows = NULL, *r;
        double next_at = 0, wait;
        size_t i, n = 0;
        seen = wh->gen;
        pthread_mutex_unlock(&wh->lock);
        if (store_webhook_due(wh->st, wall_now(), BATCH, &rows, &next_at, &err))
            log_error("webhooks: %s", err.msg);
        json_array_foreach(rows, i, r) {
            deliver(wh, json_string_value(json_object_get(r, "job_id")),
                    json_string_value(json_object_get(r, "url")),
                    (long)json_integer_value(json_object_get(r, "attempts")));
            n++;
            pthread_mutex_lock(&wh->lock);
            int stop = wh->stop;
            pthread_mutex_unlock(&wh->lock);
            if (stop)
                break;
        }
        json_decref(rows);
        pthread_mutex_lock(&wh->lock);
        if (n > 0 || wh->stop)
            continue;   /* more may be due now, and a retry's next_at is to be read */
        wait = IDLE_SECONDS;
        if (next_at > 0 && next_at - wall_now() < wait)
            wait = next_at - wall_now();
        if (wait > 0 && wh->gen == seen) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            double until = (double)ts.tv_sec + ts.tv_nsec / 1e9 + wait;
            ts.tv_sec = (time_t)until;
            ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
            pthread_cond_timedwait(&wh->cond, &wh->lock, &ts);
        }
    }
    pthread_mutex_unlock(&wh->lock);
    return NULL;
}

int webhook_start(struct store *st, const char *secret, struct webhook **out,
                  struct slim_error *err)
{
    struct webhook *wh = slim_calloc(1, sizeof *wh);
    pthread_condattr_t ca;
    if (!wh)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        slim_free(wh);
        return slim_error_set(err, SLIM_EINTERNAL, "cannot initialise libcurl");
    }
    wh->st = st;
    if (secret && secret[0] && !(wh->secret = slim_strdup(secret))) {
        slim_free(wh);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&wh->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&wh->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (store_job_listen(st, on_jobs_changed, wh, 1) ||
        pthread_create(&wh->thread, NULL, sender_main, wh)) {
        store_job_listen(st, on_jobs_changed, wh, 0);
        pthread_cond_destroy(&wh->cond);
        pthread_mutex_destroy(&wh->lock);
        slim_free(wh->secret);
        slim_free(wh);
        return slim_error_set(err, SLIM_EINTERNAL, "cannot start the webhook sender");
    }
    *out = wh;
    return 0;
}

void webhook_stop(struct webhook *wh)
{
    if (!wh)
        return;
    pthread_mutex_lock(&wh->lock);
    wh->stop = 1;
    pthread_cond_signal(&wh->cond);
    pthread_mutex_unlock(&wh->lock);
    pthread_join(wh->thread, NULL);
    store_job_listen(wh->st, on_jobs_changed, wh, 0);
    pthread_cond_destroy(&wh->cond);
    pthread_mutex_destroy(&wh->lock);
    if (wh->secret)
        explicit_bzero(wh->secret, strlen(wh->secret));
    slim_free(wh->secret);
    slim_free(wh);
}

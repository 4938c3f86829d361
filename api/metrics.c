/*
 * metrics.c - see metrics.h.
 *
 * A family is a name, a type, up to three label names and, for a
 * histogram, its bucket bounds; its series (one per set of label
 * values) are a list made as values first appear, under one mutex.  The
 * label sets are small and bounded (see metrics.h), so a linear search
 * costs less than the request it counts.  Families whose labels are
 * known in advance (failures by every code of SLIM_ERRNO_MAP, job
 * outcomes) have their series made at the first use, at zero, so a
 * dashboard's query finds them before the first failure.
 *
 * The text format: "# HELP" and "# TYPE" once per family, then its
 * samples; a histogram's _bucket series are cumulative and end with
 * le="+Inf", followed by _sum and _count.  Label values are escaped
 * (backslash, double quote, newline), help text likewise (backslash,
 * newline).
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "api/metrics.h"
#include "passes/slim.h"

enum fam_type { FAM_COUNTER, FAM_GAUGE, FAM_HISTOGRAM };

#define MAX_LABELS 3
#define MAX_BUCKETS 16

struct series {
    struct series *next;
    char *label[MAX_LABELS];
    double value;                   /* counter, gauge */
    uint64_t bucket[MAX_BUCKETS];   /* histogram: per bucket, not cumulative */
    uint64_t count;
    double sum;
};

struct family {
    const char *name;
    const char *help;
    enum fam_type type;
    int nlabels;
    const char *label[MAX_LABELS];
    int nbounds;
    double bound[MAX_BUCKETS];
    struct series *head, **tail;
};

#define DURATION_BUCKETS 14, {0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200}

static struct family http_requests = {
    "slimd_http_requests_total", "HTTP requests by route template, method and status code.",
    FAM_COUNTER, 3, {"route", "method", "code"}, 0, {0}, NULL, NULL};
static struct family http_duration = {
    "slimd_http_request_duration_seconds",
    "Time from a request's arrival to its response's end, by route template and method.",
    FAM_HISTOGRAM, 2, {"route", "method"},
    14, {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}, NULL, NULL};
static struct family upload_bytes = {
    "slimd_upload_bytes_total", "Bytes of upload bodies received (models and datasets).",
    FAM_COUNTER, 0, {0}, 0, {0}, NULL, NULL};
static struct family download_bytes = {
    "slimd_download_bytes_total",
    "Bytes of files served, by kind (model, dataset, artifact, other), counted when the "
    "response is queued; a range counts its length.",
    FAM_COUNTER, 1, {"kind"}, 0, {0}, NULL, NULL};
static struct family artifact_bytes = {
    "slimd_artifact_bytes_total", "Bytes of artifacts written by jobs that succeeded.",
    FAM_COUNTER, 0, {0}, 0, {0}, NULL, NULL};
static struct family job_duration = {
    "slimd_job_duration_seconds",
    "Time from a job's claim to its end, by outcome (succeeded, failed, canceled, requeued).",
    FAM_HISTOGRAM, 1, {"outcome"}, DURATION_BUCKETS, NULL, NULL};
static struct family pass_duration = {
    "slimd_pass_duration_seconds",
    "Time each pass of a job took, by pass op (from the report of jobs that succeeded).",
    FAM_HISTOGRAM, 1, {"op"}, DURATION_BUCKETS, NULL, NULL};
static struct family queue_wait = {
    "slimd_job_queue_wait_seconds",
    "Time from a job's submission to its claim by a worker (submission times are whole "
    "seconds).",
    FAM_HISTOGRAM, 0, {0},
    12, {0.5, 1, 2, 5, 15, 30, 60, 300, 900, 3600, 14400, 86400}, NULL, NULL};
static struct family ratio = {
    "slimd_compression_ratio", "Bytes before over bytes after, of each job that succeeded.",
    FAM_HISTOGRAM, 0, {0}, 11, {1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32}, NULL, NULL};
static struct family failed = {
    "slimd_jobs_failed_total", "Jobs that ended failed, by error code.",
    FAM_COUNTER, 1, {"code"}, 0, {0}, NULL, NULL};
static struct family requeued = {
    "slimd_jobs_requeued_total",
    "Jobs put back in the queue, by reason (shutdown, disk_full, recovery after an unclean "
    "stop, lease_expired: another node's lease ran out).",
    FAM_COUNTER, 1, {"reason"}, 0, {0}, NULL, NULL};

static struct family *const families[] = {
    &http_requests, &http_duration, &upload_bytes, &download_bytes, &artifact_bytes,
    &job_duration, &pass_duration, &queue_wait, &ratio, &failed, &requeued,
};
#define N_FAMILIES (sizeof families / sizeof families[0])

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int seeded;

/* The series of f with these label values, made (at zero) when new;
 * NULL when out of memory.  Called with lock held. */
static struct series *find(struct family *f, const char *const *values)
{
    struct series *s;
    for (s = f->head; s; s = s->next) {
        int i = 0;
        while (i < f->nlabels && !strcmp(s->label[i], values[i]))
            i++;
        if (i == f->nlabels)
            return s;
    }
    s = slim_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    for (int i = 0; i < f->nlabels; i++)
        if (!(s->label[i] = slim_strdup(values[i]))) {
            while (i--)
                slim_free(s->label[i]);
            slim_free(s);
            return NULL;
        }
    if (!f->tail)
        f->tail = &f->head;
    *f->tail = s;
    f->tail = &s->next;
    return s;
}

/* Series known in advance, at zero.  Called with lock held. */
static void seed(void)
{
    static const char *const codes[] = {
#define SLIM_X(name, val, code, status, msg) code,
        SLIM_ERRNO_MAP(SLIM_X)
#undef SLIM_X
    };
    static const char *const outcomes[] = {"succeeded", "failed", "canceled", "requeued"};
    static const char *const reasons[] = {"shutdown", "disk_full", "recovery", "lease_expired"};
    static const char *const kinds[] = {"model", "dataset", "artifact"};
    if (seeded)
        return;
    seeded = 1;
    for (size_t i = 1; i < sizeof codes / sizeof codes[0]; i++)   /* [0] is OK */
        find(&failed, &codes[i]);
    for (size_t i = 0; i < sizeof outcomes / sizeof outcomes[0]; i++)
        find(&job_duration, &outcomes[i]);
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        find(&requeued, &reasons[i]);
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        find(&download_bytes, &kinds[i]);
    find(&upload_bytes, NULL);
    find(&artifact_bytes, NULL);
    find(&queue_wait, NULL);
    find(&ratio, NULL);
}

static void add(struct family *f, const char *const *values, double v)
{
    pthread_mutex_lock(&lock);
    seed();
    struct series *s = find(f, values);
    if (s)
        s->value += v;
    pthread_mutex_unlock(&lock);
}

static void observe(struct family *f, const char *const *values, double v)
{
    pthread_mutex_lock(&lock);
    seed();
    struct series *s = find(f, values);
    if (s) {
        int b = 0;
        while (b < f->nbounds && v > f->bound[b])
            b++;
        if (b < f->nbounds)
            s->bucket[b]++;
        s->count++;
        s->sum += v;
    }
    pthread_mutex_unlock(&lock);
}

void api_metrics_http(const char *route, const char *method, int status, double seconds)
{
    char code[16];
    snprintf(code, sizeof code, "%d", status);
    add(&http_requests, (const char *const[]){route, method, code}, 1);
    observe(&http_duration, (const char *const[]){route, method}, seconds);
}

void api_metrics_upload_bytes(uint64_t n)
{
    add(&upload_bytes, NULL, (double)n);
}

void api_metrics_download_bytes(const char *kind, uint64_t n)
{
    add(&download_bytes, &kind, (double)n);
}

void api_metrics_job_started(double queue_seconds)
{
    observe(&queue_wait, NULL, queue_seconds > 0 ? queue_seconds : 0);
}

void api_metrics_job_ended(const char *outcome, double seconds, int code, json_t *report,
                           uint64_t artifact)
{
    size_t i;
    json_t *p;
    observe(&job_duration, &outcome, seconds > 0 ? seconds : 0);
    if (!strcmp(outcome, "failed")) {
        const char *c = slim_errcode(code);
        add(&failed, &c, 1);
    }
    if (strcmp(outcome, "succeeded"))
        return;
    add(&artifact_bytes, NULL, (double)artifact);
    json_array_foreach(json_object_get(report, "passes"), i, p) {
        const char *op = json_string_value(json_object_get(p, "op"));
        json_t *sec = json_object_get(p, "seconds");
        if (op && json_is_number(sec))
            observe(&pass_duration, &op, json_number_value(sec));
    }
    json_t *r = json_object_get(json_object_get(report, "totals"), "ratio");
    if (json_is_number(r) && json_number_value(r) > 0)
        observe(&ratio, NULL, json_number_value(r));
}

void api_metrics_job_requeued(const char *reason, int n)
{
    if (n > 0)
        add(&requeued, &reason, n);
}

/* ---- the text format ---- */

static void put_escaped(FILE *f, const char *s, int quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\\\", f);
        else if (*s == '\n')
            fputs("\\n", f);
        else if (*s == '"' && quote)
            fputs("\\\"", f);
        else
            fputc(*s, f);
    }
}

/* Writes name{labels,extra} ; extra is a pre-formatted label or NULL. */
static void put_name(FILE *f, const struct family *fam, const char *suffix,
                     const struct series *s, const char *extra)
{
    int any = 0;
    fprintf(f, "%s%s", fam->name, suffix);
    for (int i = 0; i < fam->nlabels; i++) {
        fprintf(f, "%s%s=\"", any ? "," : "{", fam->label[i]);
        put_escaped(f, s->label[i], 1);
        fputc('"', f);
        any = 1;
    }
    if (extra) {
        fprintf(f, "%s%s", any ? "," : "{", extra);
        any = 1;
    }
    if (any)
        fputc('}', f);
}

static void put_header(FILE *f, const char *name, const char *help, const char *type)
{
    fprintf(f, "# HELP %s ", name);
    put_escaped(f, help, 0);
    fprintf(f, "\n# TYPE %s %s\n", name, type);
}

void api_metrics_write(FILE *f)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    char le[48];
    pthread_mutex_lock(&lock);
    seed();
    for (size_t k = 0; k < N_FAMILIES; k++) {
        const struct family *fam = families[k];
        put_header(f, fam->name, fam->help, types[fam->type]);
        for (const struct series *s = fam->head; s; s = s->next) {
            if (fam->type != FAM_HISTOGRAM) {
                put_name(f, fam, "", s, NULL);
                fprintf(f, " %.17g\n", s->value);
                continue;
            }
            uint64_t cum = 0;
            for (int b = 0; b < fam->nbounds; b++) {
                cum += s->bucket[b];
                snprintf(le, sizeof le, "le=\"%g\"", fam->bound[b]);
                put_name(f, fam, "_bucket", s, le);
                fprintf(f, " %llu\n", (unsigned long long)cum);
            }
            put_name(f, fam, "_bucket", s, "le=\"+Inf\"");
            fprintf(f, " %llu\n", (unsigned long long)s->count);
            put_name(f, fam, "_sum", s, NULL);
            fprintf(f, " %.17g\n", s->sum);
            put_name(f, fam, "_count", s, NULL);
            fprintf(f, " %llu\n", (unsigned long long)s->count);
        }
    }
    pthread_mutex_unlock(&lock);
}

/* ---- read at scrape time ---- */

/* The allocated bytes of the files under the directory fd (closed
 * here), to a depth of 8; symlinks are not followed. */
static uint64_t dir_bytes(int fd, int depth)
{
    DIR *d = fdopendir(fd);
    struct dirent *e;
    uint64_t n = 0;
    if (!d) {
        close(fd);
        return 0;
    }
    while ((e = readdir(d))) {
        struct stat st;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW))
            continue;
        n += (uint64_t)st.st_blocks * 512u;
        if (S_ISDIR(st.st_mode) && depth < 8) {
            int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
            if (sub >= 0)
                n += dir_bytes(sub, depth + 1);
        }
    }
    closedir(d);
    return n;
}

void api_metrics_write_data_dir(FILE *f, const char *dir)
{
    int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (fd < 0)
        return;
    put_header(f, "slimd_data_dir_bytes",
               "Bytes the files of the data dir (database, blobs, temporary files) take on disk.",
               "gauge");
    fprintf(f, "slimd_data_dir_bytes %llu\n", (unsigned long long)dir_bytes(fd, 0));
}

/* Reads a small file under /proc whole; NUL-terminated; 0 or -1. */
static int read_proc(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;
    if (fd < 0)
        return -1;
    n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    return 0;
}

void api_metrics_write_process(FILE *f)
{
    char buf[4096], *p;
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    unsigned long long utime, stime, start, vsize;
    struct timespec real, boot;
    long long rss;
    struct rlimit rl;
    DIR *d;

    /* /proc/self/stat: the fields after the command's closing paren
     * start at the 3rd (state); utime is the 14th, stime the 15th,
     * starttime the 22nd, vsize the 23rd, rss the 24th */
    if (tick > 0 && read_proc("/proc/self/stat", buf, sizeof buf) == 0 &&
        (p = strrchr(buf, ')')) &&
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d "
                      "%*d %*d %llu %llu %lld", &utime, &stime, &start, &vsize, &rss) == 5) {
        put_header(f, "process_cpu_seconds_total", "Total user and system CPU time spent in "
                   "seconds.", "counter");
        fprintf(f, "process_cpu_seconds_total %.17g\n", (double)(utime + stime) / (double)tick);
        put_header(f, "process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge");
        fprintf(f, "process_virtual_memory_bytes %llu\n", vsize);
        put_header(f, "process_resident_memory_bytes", "Resident memory size in bytes.",
                   "gauge");
        fprintf(f, "process_resident_memory_bytes %lld\n", rss * (long long)page);
        /* the boot time from the clocks, not /proc/stat's btime: the unit's
         * ProcSubset=pid hides /proc/stat */
        if (clock_gettime(CLOCK_REALTIME, &real) == 0 &&
            clock_gettime(CLOCK_BOOTTIME, &boot) == 0) {
            double booted = (double)real.tv_sec + real.tv_nsec / 1e9 -
                            ((double)boot.tv_sec + boot.tv_nsec / 1e9);
            put_header(f, "process_start_time_seconds", "Start time of the process since unix "
                       "epoch in seconds.", "gauge");
            fprintf(f, "process_start_time_seconds %.17g\n",
                    booted + (double)start / (double)tick);
        }
    }
    if ((d = opendir("/proc/self/fd"))) {
        long n = 0;
        struct dirent *e;
        while ((e = readdir(d)))
            n += e->d_name[0] != '.';
        closedir(d);
        put_header(f, "process_open_fds", "Number of open file descriptors.", "gauge");
        fprintf(f, "process_open_fds %ld\n", n - 1);   /* less opendir's own */
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        put_header(f, "process_max_fds", "Maximum number of open file descriptors.", "gauge");
        if (rl.rlim_cur == RLIM_INFINITY)
            fputs("process_max_fds +Inf\n", f);
        else
            fprintf(f, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
}

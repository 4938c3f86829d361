/*
 * cli.c - the subcommands.  `serve` wires the pieces together: the store
 * on the data dir, the runner on a libuv loop, the HTTP server, and the
 * signals that stop them in order (stop accepting, stop or re-queue the
 * running jobs, close the store, exit 0).  Every flag also reads an
 * environment variable (SLIMD_LISTEN, ...) so a systemd unit or a
 * container sets them without a wrapper script; a flag beats the
 * variable.
 *
 * Security settings are checked before anything listens: --auth none is
 * refused (exit 2) unless the listen address is loopback, and --auth
 * token on any other address is refused (exit 1) while the data dir has
 * no live token, with the command that makes one: a daemon that anyone
 * on the network could use, or that nobody could, is a mistake to stop
 * at once.  --auth defaults to none on a loopback address (the
 * README's first command works without a token) and token elsewhere.
 */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>
#include "api/api.h"
#include "daemon/cli.h"
#include "daemon/log.h"
#include "daemon/runner.h"
#include "daemon/webhook.h"

void slimd_usage(FILE *f)
{
    fprintf(f,
            "usage: slimd serve [--listen ADDR:PORT] [--data-dir DIR] [--workers N]\n"
            "                   [--store sqlite:PATH|postgresql://...]\n"
            "                   [--max-upload-bytes N] [--job-memory-mb N] [--max-queued N]\n"
            "                   [--min-free-bytes N] [--max-conns N] [--max-conns-per-ip N]\n"
            "                   [--conn-timeout S] [--db-reserve-bytes N] [--auth token|none]\n"
            "                   [--allowed-host NAME] [--retain-days N] [--max-data-bytes N]\n"
            "                   [--cors-origin ORIGIN] [--tls-cert FILE --tls-key FILE]\n"
            "                   [--blobs dir:PATH|s3://BUCKET/PREFIX] [--store SPEC]\n"
            "                   [--role api|worker|all] [--node-id NAME] [--lease-seconds N]\n"
            "       slimd token create --scope read,submit,admin --name NAME [--data-dir DIR]\n"
            "                          [--store SPEC]\n"
            "       slimd token list [--json] [--data-dir DIR] [--store SPEC]\n"
            "       slimd token revoke ID [--data-dir DIR] [--store SPEC]\n"
            "       slimd scheduled [--dir DIR] [--server URL]\n"
            "       slimd compress MODEL --spec SPEC.json -o OUTDIR [--threads N]\n"
            "       slimd submit [MODEL_FILE_OR_ID] --spec SPEC [--server URL] [--wait] [-o OUT]\n"
            "                    [--report FILE] [--model-name NAME] [--name JOBNAME]\n"
            "                    [--label KEY=VALUE]... [--token-file FILE] [--cacert FILE]\n"
            "                    [--timeout S]\n"
            "       slimd infer MODEL.onnx INPUT.safetensors OUTPUT.safetensors\n"
            "       slimd eval MODEL.onnx DATA.safetensors [--batch N] [--repeat R] [--threads N]\n"
            "       slimd decode ARTIFACT -o OUT\n"
            "       slimd --help | --version\n"
            "\n"
            "serve     runs the REST API and the job runner.\n"
            "  --listen ADDR:PORT       where to listen (SLIMD_LISTEN; default 127.0.0.1:8420;\n"
            "                           IPv6 as [::1]:8420)\n"
            "  --data-dir DIR           models, jobs and artifacts (SLIMD_DATA_DIR; default ./data)\n"
            "  --blobs dir:PATH         where model, dataset and artifact files go (SLIMD_BLOBS;\n"
            "  --blobs s3://BUCKET/PFX  default dir:DATA_DIR/blobs).  dir:PATH may be shared by\n"
            "                           daemons on several machines (NFS, CephFS); s3 reads\n"
            "                           SLIMD_S3_ENDPOINT (http(s)://HOST:PORT, path-style),\n"
            "                           AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION\n"
            "                           (default us-east-1) and keeps local copies in\n"
            "                           DATA_DIR/cache.  slimd never removes a blob at a\n"
            "                           location other daemons may use: deleted models, jobs\n"
            "                           and retention free no space there (README)\n"
            "  --store SPEC             the database: sqlite:PATH (a file), or postgresql://USER@\n"
            "                           HOST:PORT/DB, which several daemons may share, each with\n"
            "                           its own data dir (SLIMD_STORE; default sqlite in the data\n"
            "                           dir, DIR/slimd.db)\n"
            "  --role api|worker|all    what this node does (SLIMD_ROLE; default all): api takes\n"
            "                           requests and never claims jobs; worker claims and runs\n"
            "                           jobs and answers every request but uploads (403);\n"
            "                           all does both\n"
            "  --node-id NAME           this node's name in running jobs' \"node\" (SLIMD_NODE_ID;\n"
            "                           default HOSTNAME:PORT); unique among the nodes\n"
            "  --lease-seconds N        a running job's lease, renewed 3 times a second; a job\n"
            "                           whose node stops renewing is re-queued by another once it\n"
            "                           runs out (SLIMD_LEASE_SECONDS; default 30)\n"
            "  --workers N              jobs run at once (SLIMD_WORKERS; default 1)\n"
            "  --max-upload-bytes N     largest upload accepted (SLIMD_MAX_UPLOAD_BYTES;\n"
            "                           default 17179869184, 16 GiB)\n"
            "  --job-memory-mb N        memory the running jobs may use together; a job reserves\n"
            "                           its limits.memory_mb or the estimate of its largest\n"
            "                           tensor, and waits until its reservation fits\n"
            "                           (SLIMD_JOB_MEMORY_MB; default 3/4 of physical memory)\n"
            "  --max-queued N           queued jobs before POST /v1/jobs answers 429 with\n"
            "                           Retry-After (SLIMD_MAX_QUEUED; default 1000; 0: no limit)\n"
            "  --min-free-bytes N       free space the data dir keeps: an upload (and its size)\n"
            "                           or a job (and its model's size) that would eat into it\n"
            "                           is 507 (SLIMD_MIN_FREE_BYTES; default 268435456)\n"
            "  --max-conns N            connections served at once; more wait to be accepted\n"
            "                           (SLIMD_MAX_CONNS; default 1024, at most what the open\n"
            "                           file limit allows)\n"
            "  --max-conns-per-ip N     connections at once from one address; more are closed\n"
            "                           as they come (SLIMD_MAX_CONNS_PER_IP; default 64; 0: none)\n"
            "  --conn-timeout S         a connection that sends no whole request (line and\n"
            "                           headers) within S seconds of opening or of its last\n"
            "                           response, or stays silent S seconds, is closed\n"
            "                           (SLIMD_CONN_TIMEOUT; default 30; 0: never)\n"
            "  --db-reserve-bytes N     disk space kept allocated for the database's write-ahead\n"
            "                           log, so that job outcomes are recorded on a full disk\n"
            "                           (SLIMD_DB_RESERVE_BYTES; default 8388608; 0: none)\n"
            "  --retain-days N          finished jobs are deleted with their artifacts N days\n"
            "                           after they finished; pinned jobs and each model's\n"
            "                           newest succeeded job stay (SLIMD_RETAIN_DAYS; default 0:\n"
            "                           kept)\n"
            "  --max-data-bytes N       when the data dir (as du counts it) holds more, the\n"
            "                           oldest finished jobs go with their artifacts, with the\n"
            "                           same exceptions; models and datasets stay\n"
            "                           (SLIMD_MAX_DATA_BYTES; default 0: no limit)\n"
            "  --auth token|none        token: every request but /v1/health and / needs\n"
            "                           'Authorization: Bearer TOKEN' (slimd token create);\n"
            "                           none: only on a loopback address (SLIMD_AUTH; default\n"
            "                           none on a loopback address, token elsewhere)\n"
            "  --allowed-host NAME      a Host name clients may use besides the listen address\n"
            "                           and localhost; repeatable; '*' for any (SLIMD_ALLOWED_HOSTS,\n"
            "                           comma-separated)\n"
            "  --cors-origin ORIGIN     a web origin (https://ci.example.com) whose pages may call\n"
            "                           the API; repeatable (SLIMD_CORS_ORIGINS, comma-separated)\n"
            "  --tls-cert FILE          serve HTTPS with this PEM certificate (chain) and\n"
            "  --tls-key FILE           its PEM private key (SLIMD_TLS_CERT, SLIMD_TLS_KEY)\n"
            "  --webhook-secret-file F  sign job webhooks (a spec's notify.url) with the secret\n"
            "                           in F: X-Slimd-Signature: sha256=HMAC(secret,\n"
            "                           \"<X-Slimd-Timestamp>.<body>\") (SLIMD_WEBHOOK_SECRET_FILE,\n"
            "                           or the secret itself in SLIMD_WEBHOOK_SECRET)\n"
            "token     makes, lists and revokes bearer tokens in the data dir's database\n"
            "          (a running daemon sees the change at once).  create prints the\n"
            "          token on stdout, once: only its hash is stored.  Scopes: read (GET),\n"
            "          submit (uploads, jobs, cancel and delete its own), admin (everything,\n"
            "          everyone's, tokens).\n"
            "  --data-dir DIR           (SLIMD_DATA_DIR; default ./data)\n"
            "  --store SPEC             the daemon's database, as for serve (SLIMD_STORE)\n"
            "scheduled runs every DIR/*.json (default /etc/slimd/scheduled.d): a model name,\n"
            "          a job spec and an output path, each through slimd submit --wait;\n"
            "          exits with the worst exit status (slimd-scheduled.timer runs it;\n"
            "          see slimd(8)).\n"
            "compress  runs a job spec over a model without a server and writes the\n"
            "          artifact and report.json into OUTDIR.  MODEL is a .safetensors file,\n"
            "          a sharded checkpoint's model.safetensors.index.json (the shards are\n"
            "          read beside it and written into OUTDIR under the same names, with a\n"
            "          new index), or a tar of such a checkpoint (written as OUTDIR/NAME.slim.tar).\n"
            "  --threads N              threads for the kernels (default: every core)\n"
            "          Exit status: 0 ok, 2 the command line, the spec or the model cannot be\n"
            "          used, 3 compressing failed, 4 a quality gate was missed, 1 else.\n"
            "submit    sends a job to a slimd server, waits, downloads; `slimd submit --help`.\n"
            "infer     runs an ONNX model with slimd's engine on the tensor 'input' of a\n"
            "          safetensors file (first dim = batch) and writes the model's first\n"
            "          output as the F32 tensor 'output' of OUTPUT.safetensors.\n"
            "eval      runs an ONNX model over every sample of DATA's 'input' in batches and\n"
            "          prints JSON: samples, accuracy (top-1, when DATA has integer 'labels'),\n"
            "          seconds (the best whole-set time of R runs), samples_per_second, batch.\n"
            "  --batch N                samples per run (default 256)\n"
            "  --repeat R               whole-set runs; the best time is printed (default 1)\n"
            "  --threads N              BLAS threads (default: every core)\n"
            "decode    turns any slimd artifact (safetensors, ONNX, the daemon's tar, the\n"
            "          entropy-coded container) back into plain weights: a safetensors\n"
            "          file of dense F32 tensors, or a plain .onnx with float initializers.\n"
            "          Exit 2 for input that is not a slimd artifact or is malformed.\n");
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (!s || !*s || *s == '-')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* "127.0.0.1:8420", "[::1]:8420", ":8420" (all IPv4 interfaces). */
static int parse_listen(const char *s, char *host, size_t hlen, uint16_t *port)
{
    const char *colon;
    uint64_t p;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        snprintf(host, hlen, "%.*s", (int)(close - s - 1), s + 1);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        snprintf(host, hlen, "%.*s", (int)(colon - s), s);
        if (!host[0])
            snprintf(host, hlen, "0.0.0.0");
    }
    if (parse_u64(colon + 1, 0, 65535, &p))
        return -1;
    *port = (uint16_t)p;
    return 0;
}

struct serve_state {
    uv_loop_t *loop;
    uv_signal_t sigint, sigterm;
    struct runner *runner;
    struct api_server *api;
    int stopping;
};

static void hook_wake(void *ud)
{
    runner_wake(((struct serve_state *)ud)->runner);
}

static void hook_cancel(void *ud, const char *id)
{
    runner_cancel(((struct serve_state *)ud)->runner, id);
}

static void runner_done(void *ud)
{
    struct serve_state *s = ud;
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct serve_state *s = h->data;
    if (s->stopping) {
        log_warn("second signal: exiting at once; running jobs are re-queued on next start");
        _exit(1);
    }
    s->stopping = 1;
    log_info("%s: no longer accepting requests; stopping running jobs",
             signum == SIGINT ? "SIGINT" : "SIGTERM");
    api_server_stop(s->api);
    s->api = NULL;
    runner_shutdown(s->runner, runner_done, s);
}

/* Each connection may hold two descriptors (its socket, and a file it
 * downloads or an upload's temp file); the store, the jobs and
 * libmicrohttpd keep FD_RESERVE more.  The soft limit on open files is
 * raised to the hard one first (1024 by default, 524288 hard under
 * systemd); what still does not fit lowers max_conns, with a warning,
 * rather than letting accept() fail with EMFILE later. */
#define FD_RESERVE 64
static unsigned fit_connections(unsigned want)
{
    struct rlimit rl;
    rlim_t fit;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return want;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t old = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl))
            rl.rlim_cur = old;
    }
    if (rl.rlim_cur == RLIM_INFINITY)
        return want;
    fit = rl.rlim_cur > 2 * FD_RESERVE ? (rl.rlim_cur - FD_RESERVE) / 2 : FD_RESERVE / 2;
    if ((rlim_t)want <= fit)
        return want;
    log_warn("--max-conns %u needs more open files than RLIMIT_NOFILE (%llu) allows: serving "
             "%llu connections at once", want, (unsigned long long)rl.rlim_cur,
             (unsigned long long)fit);
    return (unsigned)fit;
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

/* A repeatable flag's values, NULL-terminated: up to MAX_LIST, each a
 * copy (the environment's comma-separated form is split here). */
#define MAX_LIST 16
struct str_list {
    char *v[MAX_LIST + 1];
    int n;
};

static int list_add(struct str_list *l, const char *what, const char *value)
{
    if (!*value || l->n == MAX_LIST || !(l->v[l->n] = slim_strdup(value))) {
        fprintf(stderr, "slimd serve: %s '%s': expected at most %d non-empty values\n", what,
                value, MAX_LIST);
        return -1;
    }
    l->n++;
    return 0;
}

static int list_add_env(struct str_list *l, const char *what, const char *var)
{
    const char *v = getenv(var);
    char buf[4096], *save = NULL;
    if (!v || !*v)
        return 0;
    snprintf(buf, sizeof buf, "%s", v);
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (list_add(l, what, t))
            return -1;
    return 0;
}

static void list_release(struct str_list *l)
{
    for (int i = 0; i < l->n; i++)
        slim_free(l->v[i]);
    l->n = 0;
}

/* --webhook-secret-file: the file's text without its trailing newline
 * (new), at most 4 KiB and not empty; NULL after saying why. */
static char *read_secret(const char *path)
{
    FILE *f = fopen(path, "rb");
    char buf[4097];
    size_t n;
    if (!f) {
        fprintf(stderr, "slimd serve: --webhook-secret-file %s: %s\n", path, strerror(errno));
        return NULL;
    }
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = 0;
    if (!n || n >= sizeof buf - 1) {
        fprintf(stderr, "slimd serve: --webhook-secret-file %s: expected a secret of 1 to 4095 "
                "bytes\n", path);
        return NULL;
    }
    char *s = slim_strdup(buf);
    explicit_bzero(buf, sizeof buf);
    return s;
}

/* A whole PEM file into memory (NUL-terminated, new): the key and
 * certificate go to libmicrohttpd as text.  At most 1 MiB. */
static char *read_pem(const char *flag, const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0;
    if (!f) {
        fprintf(stderr, "slimd serve: %s %s: %s\n", flag, path, strerror(errno));
        return NULL;
    }
    buf = slim_malloc((1u << 20) + 1);
    if (buf)
        n = fread(buf, 1, 1u << 20, f);
    if (!buf || ferror(f) || !feof(f) || n == 0 || !strstr(buf, "-----BEGIN ")) {
        if (buf)
            buf[n] = 0;
        fprintf(stderr, "slimd serve: %s %s: expected a PEM file (up to 1 MiB)\n", flag, path);
        slim_free(buf);
        fclose(f);
        return NULL;
    }
    buf[n] = 0;
    fclose(f);
    return buf;
}

int slimd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"data-dir", required_argument, NULL, 'd'},
        {"workers", required_argument, NULL, 'w'},
        {"max-upload-bytes", required_argument, NULL, 'm'},
        {"job-memory-mb", required_argument, NULL, 'j'},
        {"max-queued", required_argument, NULL, 'q'},
        {"min-free-bytes", required_argument, NULL, 'f'},
        {"auth", required_argument, NULL, 'a'},
        {"allowed-host", required_argument, NULL, 'H'},
        {"cors-origin", required_argument, NULL, 'C'},
        {"tls-cert", required_argument, NULL, 'c'},
        {"tls-key", required_argument, NULL, 'k'},
        {"max-conns", required_argument, NULL, 'M'},
        {"max-conns-per-ip", required_argument, NULL, 'I'},
        {"conn-timeout", required_argument, NULL, 'T'},
        {"db-reserve-bytes", required_argument, NULL, 'r'},
        {"retain-days", required_argument, NULL, 'R'},
        {"max-data-bytes", required_argument, NULL, 'B'},
        {"webhook-secret-file", required_argument, NULL, 'W'},
        {"blobs", required_argument, NULL, 'b'},
        {"store", required_argument, NULL, 'S'},
        {"role", required_argument, NULL, 'O'},
        {"node-id", required_argument, NULL, 'N'},
        {"lease-seconds", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *listen = env_or("SLIMD_LISTEN", "127.0.0.1:8420");
    const char *auth_s = env_or("SLIMD_AUTH", NULL);
    const char *tls_cert_path = env_or("SLIMD_TLS_CERT", NULL);
    const char *tls_key_path = env_or("SLIMD_TLS_KEY", NULL);
    const char *webhook_secret_path = env_or("SLIMD_WEBHOOK_SECRET_FILE", NULL);
    char *webhook_secret = NULL;
    struct webhook *webhook = NULL;
    struct str_list hosts = {.n = 0}, origins = {.n = 0}, hosts_flag = {.n = 0},
                    origins_flag = {.n = 0};
    char *tls_cert = NULL, *tls_key = NULL;
    int64_t live_tokens = 0;
    int rc = 2, loopback, lock_fd = -1;
    const char *data_dir = env_or("SLIMD_DATA_DIR", "data");
    const char *blobs = env_or("SLIMD_BLOBS", NULL);
    const char *store_spec = env_or("SLIMD_STORE", NULL);
    const char *role = env_or("SLIMD_ROLE", "all");
    const char *node_id = env_or("SLIMD_NODE_ID", NULL);
    const char *lease_s = env_or("SLIMD_LEASE_SECONDS", "30");
    uint64_t lease;
    char node_buf[320];
    const char *workers_s = env_or("SLIMD_WORKERS", "1");
    const char *max_up_s = env_or("SLIMD_MAX_UPLOAD_BYTES", "17179869184");
    const char *job_mem_s = env_or("SLIMD_JOB_MEMORY_MB", NULL);
    const char *max_queued_s = env_or("SLIMD_MAX_QUEUED", "1000");
    const char *min_free_s = env_or("SLIMD_MIN_FREE_BYTES", "268435456");
    const char *max_conns_s = env_or("SLIMD_MAX_CONNS", "1024");
    const char *per_ip_s = env_or("SLIMD_MAX_CONNS_PER_IP", "64");
    const char *conn_timeout_s = env_or("SLIMD_CONN_TIMEOUT", "30");
    /* 8 MiB: twice the WAL that SQLite's checkpoints every 1000 pages
     * leave (so with the database able to grow the WAL never needs a
     * new block), and some 2,000 pages of job state changes when it
     * cannot; nothing next to a disk that models are stored on */
    const char *reserve_s = env_or("SLIMD_DB_RESERVE_BYTES", "8388608");
    const char *retain_s = env_or("SLIMD_RETAIN_DAYS", "0");
    const char *max_data_s = env_or("SLIMD_MAX_DATA_BYTES", "0");
    uint64_t retain_days, max_data;
    struct store_sweep sweep;
    struct serve_state s;
    struct store *st = NULL;
    struct slim_error err;
    struct api_config acfg;
    struct api_hooks hooks;
    struct runner_config rcfg;
    uint64_t workers, max_up, job_mem_mb, max_queued, min_free, max_conns, per_ip, conn_timeout, reserve;
    char host[256], env[32];
    long ncpu;
    int c;

    memset(&acfg, 0, sizeof acfg);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'l': listen = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'b': blobs = optarg; break;
        case 'S': store_spec = optarg; break;
        case 'O': role = optarg; break;
        case 'N': node_id = optarg; break;
        case 'L': lease_s = optarg; break;
        case 'w': workers_s = optarg; break;
        case 'm': max_up_s = optarg; break;
        case 'j': job_mem_s = optarg; break;
        case 'q': max_queued_s = optarg; break;
        case 'f': min_free_s = optarg; break;
        case 'r': reserve_s = optarg; break;
        case 'R': retain_s = optarg; break;
        case 'B': max_data_s = optarg; break;
        case 'W': webhook_secret_path = optarg; break;
        case 'M': max_conns_s = optarg; break;
        case 'I': per_ip_s = optarg; break;
        case 'T': conn_timeout_s = optarg; break;
        case 'a': auth_s = optarg; break;
        case 'H':
            if (list_add(&hosts_flag, "--allowed-host", optarg))
                goto out;
            break;
        case 'C':
            if (list_add(&origins_flag, "--cors-origin", optarg))
                goto out;
            break;
        case 'c': tls_cert_path = optarg; break;
        case 'k': tls_key_path = optarg; break;
        case 'h': slimd_usage(stdout); rc = 0; goto out;
        default: slimd_usage(stderr); goto out;
        }
    }
    /* a flag replaces its variable, as for every other setting */
    if ((!hosts_flag.n && list_add_env(&hosts, "SLIMD_ALLOWED_HOSTS", "SLIMD_ALLOWED_HOSTS")) ||
        (!origins_flag.n && list_add_env(&origins, "SLIMD_CORS_ORIGINS", "SLIMD_CORS_ORIGINS")))
        goto out;
    if (optind < argc) {
        fprintf(stderr, "slimd serve: unexpected argument '%s'\n", argv[optind]);
        goto out;
    }
    if (store_spec && strncmp(store_spec, "sqlite:", 7) && strncmp(store_spec, "postgresql://", 13) &&
        strncmp(store_spec, "postgres://", 11)) {
        fprintf(stderr, "slimd serve: --store '%.64s': expected sqlite:PATH or "
                "postgresql://USER@HOST:PORT/DB\n", store_spec);
        goto out;
    }
    if (store_spec && !strcmp(store_spec, "sqlite:")) {
        fprintf(stderr, "slimd serve: --store sqlite: needs a PATH (sqlite:/var/lib/slimd/slimd.db)\n");
        goto out;
    }
    if (parse_listen(listen, host, sizeof host, &acfg.port)) {
        fprintf(stderr, "slimd serve: --listen '%s': expected ADDR:PORT, e.g. 127.0.0.1:8420\n",
                listen);
        goto out;
    }
    loopback = api_host_is_loopback(host);
    if (!auth_s)
        acfg.auth = loopback ? API_AUTH_NONE : API_AUTH_TOKEN;
    else if (!strcmp(auth_s, "token"))
        acfg.auth = API_AUTH_TOKEN;
    else if (!strcmp(auth_s, "none"))
        acfg.auth = API_AUTH_NONE;
    else {
        fprintf(stderr, "slimd serve: --auth '%s': expected token or none\n", auth_s);
        goto out;
    }
    if (acfg.auth == API_AUTH_NONE && !loopback) {
        fprintf(stderr, "slimd serve: --auth none is only allowed on a loopback address "
                "(127.0.0.1, ::1), and %s can be reached from other machines: use --auth "
                "token (make a token with `slimd token create --scope read,submit --name NAME "
                "--data-dir %s`), or listen on 127.0.0.1\n", host, data_dir);
        goto out;
    }
    for (const char *const *o = (const char *const *)(origins_flag.n ? origins_flag.v
                                                                      : origins.v); *o; o++)
        if (strncmp(*o, "http://", 7) && strncmp(*o, "https://", 8)) {
            fprintf(stderr, "slimd serve: --cors-origin '%s': expected an origin such as "
                    "https://ci.example.com\n", *o);
            goto out;
        }
    if (!tls_cert_path != !tls_key_path) {
        fprintf(stderr, "slimd serve: --tls-cert and --tls-key go together\n");
        goto out;
    }
    if (tls_cert_path && (!(tls_cert = read_pem("--tls-cert", tls_cert_path)) ||
                          !(tls_key = read_pem("--tls-key", tls_key_path))))
        goto out;
    acfg.allowed_hosts = (const char *const *)(hosts_flag.n ? hosts_flag.v
                                                            : hosts.n ? hosts.v : NULL);
    acfg.cors_origins = (const char *const *)(origins_flag.n ? origins_flag.v
                                                             : origins.n ? origins.v : NULL);
    acfg.tls_cert = tls_cert;
    acfg.tls_key = tls_key;
    if (parse_u64(workers_s, 1, 64, &workers)) {
        fprintf(stderr, "slimd serve: --workers '%s': expected an integer from 1 to 64\n",
                workers_s);
        goto out;
    }
    if (parse_u64(max_up_s, 1, UINT64_MAX / 2, &max_up)) {
        fprintf(stderr, "slimd serve: --max-upload-bytes '%s': expected a positive integer\n",
                max_up_s);
        goto out;
    }
    if (job_mem_s) {
        if (parse_u64(job_mem_s, 1, (uint64_t)1 << 30, &job_mem_mb)) {
            fprintf(stderr, "slimd serve: --job-memory-mb '%s': expected a positive integer "
                    "(MiB)\n", job_mem_s);
            goto out;
        }
    } else {
        /* three quarters of the machine: what is left serves the page
         * cache that uploads and downloads go through */
        long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
        job_mem_mb = pages > 0 && psize > 0 ? ((uint64_t)pages * (uint64_t)psize / 4 * 3) >> 20
                                            : 0;
    }
    if (parse_u64(max_queued_s, 0, 1u << 30, &max_queued)) {
        fprintf(stderr, "slimd serve: --max-queued '%s': expected an integer (0: no limit)\n",
                max_queued_s);
        goto out;
    }
    acfg.host = host;
    acfg.max_upload = max_up;
    acfg.max_queued = (int64_t)max_queued;
    if (parse_u64(min_free_s, 0, UINT64_MAX / 4, &min_free)) {
        fprintf(stderr, "slimd serve: --min-free-bytes '%s': expected an integer\n", min_free_s);
        goto out;
    }
    acfg.min_free = min_free;
    if (parse_u64(reserve_s, 0, (uint64_t)1 << 40, &reserve)) {
        fprintf(stderr, "slimd serve: --db-reserve-bytes '%s': expected an integer (0: none)\n",
                reserve_s);
        goto out;
    }
    acfg.job_memory = job_mem_mb << 20;
    if (parse_u64(max_conns_s, 1, 1u << 20, &max_conns)) {
        fprintf(stderr, "slimd serve: --max-conns '%s': expected a positive integer\n",
                max_conns_s);
        goto out;
    }
    if (parse_u64(per_ip_s, 0, 1u << 20, &per_ip)) {
        fprintf(stderr, "slimd serve: --max-conns-per-ip '%s': expected an integer (0: no "
                "limit)\n", per_ip_s);
        goto out;
    }
    if (parse_u64(conn_timeout_s, 0, 86400, &conn_timeout)) {
        fprintf(stderr, "slimd serve: --conn-timeout '%s': expected seconds from 0 (never) to "
                "86400\n", conn_timeout_s);
        goto out;
    }
    acfg.max_conns = fit_connections((unsigned)max_conns);
    acfg.max_conns_per_ip = (unsigned)per_ip;
    acfg.conn_timeout = (unsigned)conn_timeout;

    /* libuv reads this when its pool first starts; see runner.h. */
    snprintf(env, sizeof env, "%d", (int)workers);
    setenv("UV_THREADPOOL_SIZE", env, 1);
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    rcfg.workers = (int)workers;
    rcfg.max_attempts = 3;
    rcfg.threads_per_job = ncpu > (long)workers ? (int)(ncpu / (long)workers) : 1;
    rcfg.job_memory = acfg.job_memory;
    if (parse_u64(retain_s, 0, 100000, &retain_days)) {
        fprintf(stderr, "slimd serve: --retain-days '%s': expected a number of days (0: keep "
                "jobs)\n", retain_s);
        goto out;
    }
    if (parse_u64(max_data_s, 0, UINT64_MAX / 2, &max_data)) {
        fprintf(stderr, "slimd serve: --max-data-bytes '%s': expected an integer (0: no "
                "limit)\n", max_data_s);
        goto out;
    }
    if (strcmp(role, "api") && strcmp(role, "worker") && strcmp(role, "all")) {
        fprintf(stderr, "slimd serve: --role '%s': expected api, worker or all\n", role);
        goto out;
    }
    if (parse_u64(lease_s, 1, 86400, &lease)) {
        fprintf(stderr, "slimd serve: --lease-seconds '%s': expected seconds from 1 to "
                "86400\n", lease_s);
        goto out;
    }
    /* it goes into /metrics' labels and logs as it is */
    if (node_id && (!*node_id || strlen(node_id) > 200 ||
                    strspn(node_id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                           "0123456789._:@-") != strlen(node_id))) {
        fprintf(stderr, "slimd serve: --node-id '%s': expected 1 to 200 letters, digits or "
                "._:@-\n", node_id);
        goto out;
    }
    if (!node_id) {   /* hostname:port: two daemons cannot listen on one port of a host */
        char hn[256];
        if (gethostname(hn, sizeof hn))
            snprintf(hn, sizeof hn, "localhost");
        hn[sizeof hn - 1] = 0;
        if (acfg.port)
            snprintf(node_buf, sizeof node_buf, "%s:%u", hn, (unsigned)acfg.port);
        else
            snprintf(node_buf, sizeof node_buf, "%s:pid%ld", hn, (long)getpid());
        node_id = node_buf;
    }
    rcfg.no_claim = !strcmp(role, "api");
    rcfg.lease_seconds = (double)lease;
    acfg.node = node_id;
    acfg.role = role;
    rcfg.retain_days = (int)retain_days;
    rcfg.max_data_bytes = max_data;
    /* BLAS threads are process-wide in OpenBLAS: cap them so that
     * --workers concurrent jobs together use the cores once. */
    openblas_set_num_threads(rcfg.threads_per_job);
    signal(SIGPIPE, SIG_IGN);

    memset(&s, 0, sizeof s);
    s.loop = uv_default_loop();
    rc = 1;
    if (store_lock_dir(data_dir, &lock_fd, &err)) {
        log_error("%s", err.msg);
        goto out;
    }
    if (store_open_full(data_dir, store_spec, blobs, &st, &err)) {
        log_error("cannot open data dir %s: %s%s", data_dir, err.msg,
                  err.code == SLIM_ENOSPACE ? " (its disk is full: free some space)" : "");
        goto out;
    }
    if (blobs && *blobs)
        log_info("blobs: %s", blobs);
    store_open_sweep(st, &sweep);
    if (sweep.tmp_removed || sweep.orphans_removed)
        log_info("cleaned up after an unclean stop: %d temp file(s), %d unreferenced blob(s) "
                 "(%llu bytes)", sweep.tmp_removed, sweep.orphans_removed,
                 (unsigned long long)sweep.orphan_bytes);
    if (store_set_node(st, node_id, (double)lease, &err)) {
        log_error("%s", err.msg);
        goto out;
    }
    if (rcfg.no_claim && !store_is_shared(st))
        log_warn("--role api on a SQLite database, which no other daemon shares: jobs queued "
                 "here will not run (use --store postgresql://... and start workers)");
    if (store_wal_reserve(st, reserve, &err))
        log_warn("%s; job outcomes may not be recorded while the disk is full", err.msg);
    if (acfg.auth == API_AUTH_TOKEN && store_token_count_live(st, &live_tokens, &err)) {
        log_error("cannot read the tokens: %s", err.msg);
        goto out;
    }
    if (acfg.auth == API_AUTH_TOKEN && !live_tokens && !loopback) {
        log_error("refusing to listen on %s with --auth token and no token: nobody could use "
                  "this daemon.  Make one first: slimd token create --scope read,submit,admin "
                  "--name admin --data-dir %s", host, data_dir);
        goto out;
    }
    if (acfg.auth == API_AUTH_TOKEN && !live_tokens)
        log_warn("--auth token and no token yet: every request but /v1/health is 401 until "
                 "one is made (slimd token create --data-dir %s ...)", data_dir);
    if (acfg.auth == API_AUTH_TOKEN && !loopback && !tls_cert)
        log_warn("tokens will cross the network in clear text: use --tls-cert and --tls-key, "
                 "or a TLS proxy in front");
    if (webhook_secret_path && !(webhook_secret = read_secret(webhook_secret_path)))
        goto out;
    if (!webhook_secret && env_or("SLIMD_WEBHOOK_SECRET", NULL) &&
        !(webhook_secret = slim_strdup(env_or("SLIMD_WEBHOOK_SECRET", NULL))))
        goto out;
    if (webhook_start(st, webhook_secret, &webhook, &err)) {
        log_error("%s", err.msg);
        goto out;
    }
    if (runner_new(s.loop, st, &rcfg, &s.runner, &err)) {
        log_error("cannot start the runner: %s", err.msg);
        goto out;
    }
    hooks.wake = hook_wake;
    hooks.cancel = hook_cancel;
    hooks.ud = &s;
    if (api_server_start(st, &acfg, &hooks, &s.api, &err)) {
        log_error("%s", err.msg);
        runner_shutdown(s.runner, NULL, NULL);
        uv_run(s.loop, UV_RUN_DEFAULT);
        goto out;
    }
    uv_signal_init(s.loop, &s.sigint);
    uv_signal_init(s.loop, &s.sigterm);
    s.sigint.data = s.sigterm.data = &s;
    uv_signal_start(&s.sigint, on_signal, SIGINT);
    uv_signal_start(&s.sigterm, on_signal, SIGTERM);
    log_info("slimd %s listening on %s://%s%s%s:%u (data dir %s, %d worker(s), %d thread(s) "
             "per job, %llu MiB for jobs, auth %s; node %s, role %s, lease %llu s)", SLIMD_VERSION, tls_cert ? "https" : "http",
             strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "",
             api_server_port(s.api), data_dir, rcfg.workers, rcfg.threads_per_job,
             (unsigned long long)(rcfg.job_memory >> 20),
             acfg.auth == API_AUTH_TOKEN ? "token" : "none (loopback)", node_id, role,
             (unsigned long long)lease);
    uv_run(s.loop, UV_RUN_DEFAULT);
    uv_loop_close(s.loop);
    log_info("stopped");
    rc = 0;
out:
    webhook_stop(webhook);   /* before the store it reads */
    if (webhook_secret)
        explicit_bzero(webhook_secret, strlen(webhook_secret));
    slim_free(webhook_secret);
    store_close(st);
    if (lock_fd >= 0)
        close(lock_fd);
    list_release(&hosts);
    list_release(&hosts_flag);
    list_release(&origins);
    list_release(&origins_flag);
    if (tls_key)
        explicit_bzero(tls_key, strlen(tls_key));
    slim_free(tls_key);
    slim_free(tls_cert);
    return rc;
}

/* Where the artifact goes: OUTDIR/<stem>.slim.safetensors for one file
 * (.slim.onnx for ONNX, with .slim.onnx.data beside it when the model
 * keeps its weights in external data),
 * OUTDIR/<stem>.slim.tar for a tar of shards, and OUTDIR itself for a
 * sharded checkpoint in a folder (the shards keep their names, next to a
 * new index). */
static void artifact_name(const char *model, const char *outdir, char *buf, size_t len)
{
    static const char *const exts[] = {".safetensors", ".tar", ".onnx", NULL};
    int kind = slim_pipeline_output_kind(model);
    char copy[4096], *base;
    size_t n;
    if (kind == 1) {
        snprintf(buf, len, "%s", outdir);
        return;
    }
    snprintf(copy, sizeof copy, "%s", model);
    base = basename(copy);
    n = strlen(base);
    for (int i = 0; exts[i]; i++) {
        size_t e = strlen(exts[i]);
        if (n > e && !strcmp(base + n - e, exts[i]))
            base[n - e] = 0;
    }
    snprintf(buf, len, "%s/%s.slim.%s", outdir, base,
             kind == 2 ? "tar" : kind == 3 ? "onnx" : "safetensors");
}

/* The exit status for an error of the pipeline (enum slimd_exit): what
 * was given to it (spec, model, dataset) is bad, a gate was missed, or
 * the compression itself failed.  GATE_FAILED is found by its name, the
 * same code the server reports in a job's error.code. */
static int compress_exit(int code)
{
    if (!strcmp(slim_errcode(code), "GATE_FAILED"))
        return SLIMD_EXIT_GATE_FAILED;
    switch (code) {
    case SLIM_EINVAL:
    case SLIM_ESPEC:
    case SLIM_EFORMAT:
    case SLIM_EMEDIA:
    case SLIM_ENOTFOUND:
    case SLIM_EDATASET:
    case SLIM_EUNSUPPORTED:
    case SLIM_EBUDGET:
        return SLIMD_EXIT_BAD_INPUT;
    default:
        return SLIMD_EXIT_JOB_FAILED;
    }
}

/* A training pass's epoch, on stderr: offline there is no job to poll. */
static void cli_training(void *ud, json_t *st)
{
    json_t *loss = json_object_get(st, "loss"), *acc = json_object_get(st, "val_accuracy");
    long long *last = ud, at = json_integer_value(json_object_get(st, "pass")) * 100000 +
                                json_integer_value(json_object_get(st, "epoch"));
    /* each epoch once: a pass also reports its last epoch when it ends */
    if (json_integer_value(json_object_get(st, "epoch")) == 0 || at == *last)
        return;
    *last = at;
    fprintf(stderr, "passes[%lld] %s: epoch %lld/%lld loss %.4f",
            (long long)json_integer_value(json_object_get(st, "pass")),
            json_string_value(json_object_get(st, "op")),
            (long long)json_integer_value(json_object_get(st, "epoch")),
            (long long)json_integer_value(json_object_get(st, "epochs")),
            json_is_number(loss) ? json_number_value(loss) : NAN);
    if (json_is_number(acc))
        fprintf(stderr, " held-out accuracy %.4f", json_number_value(acc));
    fputc('\n', stderr);
}

int slimd_compress(int argc, char **argv)
{
    static const struct option opts[] = {
        {"spec", required_argument, NULL, 's'},
        {"output", required_argument, NULL, 'o'},
        {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *spec_path = NULL, *outdir = NULL, *model = NULL;
    struct slim_spec *spec = NULL;
    struct slim_error err;
    struct slim_run_opts ropts = {.threads = 0};
    json_error_t jerr;
    json_t *sj = NULL, *report = NULL, *totals;
    const char **refs = NULL;
    size_t n_refs = 0;
    long long last_epoch = -1;
    char out[4096], rpath[4096];
    uint64_t threads = 0;
    int c, gate, rc = 1;

    optind = 1;
    while ((c = getopt_long(argc, argv, "s:o:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 's': spec_path = optarg; break;
        case 'o': outdir = optarg; break;
        case 't':
            if (parse_u64(optarg, 1, 256, &threads)) {
                fprintf(stderr, "slimd compress: --threads '%s': expected 1 to 256\n", optarg);
                return 2;
            }
            break;
        case 'h': slimd_usage(stdout); return 0;
        default: slimd_usage(stderr); return 2;
        }
    }
    if (optind + 1 != argc || !spec_path || !outdir) {
        fprintf(stderr, "usage: slimd compress MODEL --spec SPEC.json -o OUTDIR\n");
        return 2;
    }
    model = argv[optind];
    sj = json_load_file(spec_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!sj) {
        if (jerr.line < 0)
            fprintf(stderr, "slimd compress: %s\n", jerr.text);
        else
            fprintf(stderr, "slimd compress: %s: %s (line %d)\n", spec_path, jerr.text, jerr.line);
        return SLIMD_EXIT_BAD_INPUT;
    }
    rc = SLIMD_EXIT_BAD_INPUT;
    if (slim_spec_parse(sj, (const char *const[]){"model", NULL}, &spec, &err)) {
        fprintf(stderr, "slimd compress: %s: %s\n", spec_path, err.msg);
        goto out;
    }
    {
        FILE *mf = fopen(model, "rb");
        if (!mf) {
            fprintf(stderr, "slimd compress: %s: %s\n", model, strerror(errno));
            goto out;
        }
        fclose(mf);
    }
    rc = SLIMD_EXIT_FAILURE;
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "slimd compress: cannot create %s: %s\n", outdir, strerror(errno));
        goto out;
    }
    if (threads) {
        ropts.threads = (int)threads;
        openblas_set_num_threads((int)threads);
    }
    /* offline, "eval": {"dataset": ...} names the dataset file itself,
     * and so do the training passes' "dataset" and "student" */
    ropts.eval_dataset = slim_spec_eval_dataset(spec);
    n_refs = slim_spec_n_refs(spec);
    if (n_refs && !(refs = slim_calloc(n_refs, sizeof *refs))) {
        fprintf(stderr, "slimd compress: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < n_refs; i++) {
        int kind, labels;
        char field[64];
        refs[i] = slim_spec_ref(spec, i, &kind, field, sizeof field, &labels);
        if (access(refs[i], R_OK) != 0) {
            fprintf(stderr, "slimd compress: %s: %s '%s': %s\n", spec_path, field, refs[i],
                    strerror(errno));
            goto out;
        }
    }
    ropts.ref_paths = refs;
    ropts.training = cli_training;
    ropts.training_ud = &last_epoch;
    artifact_name(model, outdir, out, sizeof out);
    if (slim_spec_container(spec, model)) {
        /* the entropy container of an ONNX model is one safetensors file */
        char *dot = strrchr(out, '.');
        if (dot)
            snprintf(dot, sizeof out - (size_t)(dot - out), ".safetensors");
    }
    if ((c = slim_pipeline_run(spec, model, out, &ropts, &report, &err))) {
        fprintf(stderr, "slimd compress: %s: %s%s%s\n", model, slim_errcode(c),
                err.msg[0] ? ": " : "", err.msg);
        rc = compress_exit(c);
        goto out;
    }
    /* the spec's gates, as the runner checks them: a miss keeps the
     * artifact and the report (with its "gates" results) to look at */
    gate = slim_spec_check_gates(spec, report, &err);
    snprintf(rpath, sizeof rpath, "%s/report.json", outdir);
    if (json_dump_file(report, rpath, JSON_INDENT(2) | JSON_REAL_PRECISION(9)) != 0) {
        fprintf(stderr, "slimd compress: cannot write %s\n", rpath);
        goto out;
    }
    if (gate) {
        fprintf(stderr, "slimd compress: %s: %s: %s (artifact %s and report %s kept)\n", model,
                slim_errcode(gate), err.msg, out, rpath);
        rc = compress_exit(gate);
        goto out;
    }
    totals = json_object_get(report, "totals");
    printf("%s: %lld -> %lld bytes (ratio %.2f); report in %s\n", out,
           (long long)json_integer_value(json_object_get(totals, "bytes_before")),
           (long long)json_integer_value(json_object_get(totals, "bytes_after")),
           json_number_value(json_object_get(totals, "ratio")), rpath);
    rc = 0;
out:
    json_decref(report);
    json_decref(sj);
    slim_free(refs);
    slim_spec_free(spec);
    return rc;
}

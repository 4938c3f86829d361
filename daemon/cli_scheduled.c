/*
 * cli_scheduled.c - `slimd scheduled`: runs the scheduled jobs of a
 * config folder (default /etc/slimd/scheduled.d), one `slimd submit
 * --wait` each; slimd-scheduled.service runs it from its timer.
 *
 * A scheduled job is a JSON file, *.json (other names are ignored, so
 * example.json.sample stays inert), run in name order:
 *
 *   {"model_name": "resnet50",                  the newest model of that name
 *    "spec": {"passes": [...], ...},             the job spec, less its model
 *    "output": "/var/lib/slimd-exports/r50.safetensors",
 *    "server": "http://127.0.0.1:8420",          optional
 *    "name": "nightly-r50",                      optional: the job's name (default
 *                                                the file's stem)
 *    "labels": {"team": "vision"},               optional
 *    "token_file": "/etc/slimd/timer.token",     optional
 *    "timeout": 3600}                            optional, seconds
 *
 * Naming the model by name, not id, is what makes the timer useful: a
 * newer upload of that name is what the next run compresses.  The spec
 * goes to submit through a temporary file; submit waits for the job,
 * downloads the artifact to "output" and exits 0 ok, 2 bad spec or
 * model, 3 job failed, 4 gate failed, 5 server unreachable (1 other).
 * Each job's outcome is logged on stderr (the journal, under systemd);
 * the exit status is the largest of the jobs' (0 when every job
 * succeeded), so the unit fails, and says so, when any job did.  A config
 * that does not parse counts as 2 and the others still run.
 *
 * The server: "server", else --server, else SLIMD_SERVER, else the
 * daemon's own SLIMD_LISTEN (the unit reads /etc/default/slimd like the
 * daemon): a wildcard address becomes loopback, and SLIMD_TLS_CERT
 * makes it https.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <jansson.h>
#include "daemon/cli.h"

extern char **environ;

#define DEFAULT_DIR "/etc/slimd/scheduled.d"

static void scheduled_usage(FILE *f)
{
    fprintf(f, "usage: slimd scheduled [--dir DIR] [--server URL] [--slimd PATH]\n"
               "Runs every DIR/*.json (default " DEFAULT_DIR ") through\n"
               "`slimd submit --model-name NAME --spec SPEC --wait -o OUTPUT`; see slimd(8).\n");
}

/* The server URL from SLIMD_LISTEN (ADDR:PORT, [V6]:PORT, :PORT). */
static void server_from_listen(char *out, size_t len)
{
    const char *l = getenv("SLIMD_LISTEN");
    const char *scheme = getenv("SLIMD_TLS_CERT") && *getenv("SLIMD_TLS_CERT") ? "https"
                                                                                : "http";
    const char *colon;
    if (!l || !*l)
        l = "127.0.0.1:8420";
    colon = strrchr(l, ':');
    if (!colon) {
        snprintf(out, len, "%s://127.0.0.1:8420", scheme);
        return;
    }
    if (!strncmp(l, "[::]:", 5)) {
        snprintf(out, len, "%s://[::1]%s", scheme, colon);
        return;
    }
    if (colon == l || !strncmp(l, "0.0.0.0:", 8))
        snprintf(out, len, "%s://127.0.0.1%s", scheme, colon);
    else
        snprintf(out, len, "%s://%s", scheme, l);
}

static const char *exit_meaning(int rc)
{
    switch (rc) {
    case 0: return "succeeded";
    case 2: return "bad spec or model";
    case 3: return "the job failed or was canceled";
    case 4: return "the job failed a quality gate";
    case 5: return "the server could not be reached";
    default: return "failed";
    }
}

/* Checks a config; on error writes why into why and returns -1. */
static int check_config(json_t *cfg, char *why, size_t len)
{
    static const char *const known[] = {"model_name", "spec", "output", "server", "name",
                                        "labels", "token_file", "timeout", NULL};
    const char *key;
    json_t *v;
    if (!json_is_object(cfg))
        return snprintf(why, len, "expected a JSON object"), -1;
    json_object_foreach(cfg, key, v) {
        int i = 0;
        while (known[i] && strcmp(known[i], key))
            i++;
        if (!known[i])
            return snprintf(why, len, "unknown key '%s' (expected model_name, spec, output, "
                            "server, name, labels, token_file, timeout)", key), -1;
    }
    v = json_object_get(cfg, "model_name");
    if (!json_is_string(v) || !json_string_length(v))
        return snprintf(why, len, "model_name: expected the name of a model on the server"),
               -1;
    if (!json_is_object(json_object_get(cfg, "spec")))
        return snprintf(why, len, "spec: expected a job spec object ({\"passes\": [...]})"), -1;
    v = json_object_get(cfg, "output");
    if (!json_is_string(v) || json_string_value(v)[0] != '/')
        return snprintf(why, len, "output: expected an absolute path for the artifact"), -1;
    if ((v = json_object_get(cfg, "server")) && !json_is_string(v))
        return snprintf(why, len, "server: expected a URL string"), -1;
    if ((v = json_object_get(cfg, "name")) && !json_is_string(v))
        return snprintf(why, len, "name: expected a string"), -1;
    if ((v = json_object_get(cfg, "token_file")) && !json_is_string(v))
        return snprintf(why, len, "token_file: expected a path"), -1;
    if ((v = json_object_get(cfg, "timeout")) && (!json_is_integer(v) ||
                                                  json_integer_value(v) <= 0))
        return snprintf(why, len, "timeout: expected a positive number of seconds"), -1;
    if ((v = json_object_get(cfg, "labels"))) {
        json_t *x;
        if (!json_is_object(v))
            return snprintf(why, len, "labels: expected an object of strings"), -1;
        json_object_foreach(v, key, x)
            if (!json_is_string(x))
                return snprintf(why, len, "labels.%s: expected a string", key), -1;
    }
    return 0;
}

/* Runs one config through slimd submit; returns submit's exit status. */
static int run_one(const char *slimd, const char *dir, const char *file, const char *server_opt)
{
    char path[4096], why[300], spec_path[4096], server[512], stem[256], timeout[32];
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *argv[64], *labels[32];
    int argc = 0, nlabels = 0, rc, status, fd;
    json_error_t jerr;
    json_t *cfg, *v;
    const char *key;
    pid_t pid;

    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(stem, sizeof stem, "%.*s", (int)(strlen(file) - 5), file);
    cfg = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!cfg) {
        fprintf(stderr, "slimd scheduled: %s: line %d: %s\n", path, jerr.line, jerr.text);
        return 2;
    }
    if (check_config(cfg, why, sizeof why)) {
        fprintf(stderr, "slimd scheduled: %s: %s\n", path, why);
        json_decref(cfg);
        return 2;
    }
    snprintf(spec_path, sizeof spec_path, "%s/slimd-scheduled-XXXXXX", tmp);
    fd = mkstemp(spec_path);
    if (fd < 0 || json_dumpfd(json_object_get(cfg, "spec"), fd, JSON_COMPACT) || close(fd)) {
        fprintf(stderr, "slimd scheduled: %s: cannot write the spec to %s: %s\n", path,
                spec_path, strerror(errno));
        if (fd >= 0)
            unlink(spec_path);
        json_decref(cfg);
        return 1;
    }
    if ((v = json_object_get(cfg, "server")))
        snprintf(server, sizeof server, "%s", json_string_value(v));
    else if (server_opt)
        snprintf(server, sizeof server, "%s", server_opt);
    else if (getenv("SLIMD_SERVER") && *getenv("SLIMD_SERVER"))
        snprintf(server, sizeof server, "%s", getenv("SLIMD_SERVER"));
    else
        server_from_listen(server, sizeof server);

    argv[argc++] = "slimd";
    argv[argc++] = "submit";
    argv[argc++] = "--model-name";
    argv[argc++] = (char *)json_string_value(json_object_get(cfg, "model_name"));
    argv[argc++] = "--spec";
    argv[argc++] = spec_path;
    argv[argc++] = "--server";
    argv[argc++] = server;
    argv[argc++] = "--wait";
    argv[argc++] = "-o";
    argv[argc++] = (char *)json_string_value(json_object_get(cfg, "output"));
    argv[argc++] = "--name";
    argv[argc++] = (v = json_object_get(cfg, "name")) ? (char *)json_string_value(v) : stem;
    if ((v = json_object_get(cfg, "token_file"))) {
        argv[argc++] = "--token-file";
        argv[argc++] = (char *)json_string_value(v);
    }
    if ((v = json_object_get(cfg, "timeout"))) {
        snprintf(timeout, sizeof timeout, "%lld", (long long)json_integer_value(v));
        argv[argc++] = "--timeout";
        argv[argc++] = timeout;
    }
    json_object_foreach(json_object_get(cfg, "labels"), key, v) {
        if (nlabels == 20)
            break;
        if (asprintf(&labels[nlabels], "%s=%s", key, json_string_value(v)) < 0)
            break;
        argv[argc++] = "--label";
        argv[argc++] = labels[nlabels++];
    }
    argv[argc] = NULL;

    fprintf(stderr, "slimd scheduled: %s: model '%s' on %s -> %s\n", file, argv[3], server,
            argv[10]);
    rc = posix_spawn(&pid, slimd, NULL, NULL, argv, environ);
    if (rc) {
        fprintf(stderr, "slimd scheduled: %s: cannot run %s: %s\n", file, slimd, strerror(rc));
        rc = 1;
    } else {
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        rc = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        fprintf(stderr, "slimd scheduled: %s: %s (slimd submit exit %d)\n", file,
                exit_meaning(rc), rc);
    }
    unlink(spec_path);
    while (nlabels)
        free(labels[--nlabels]);
    json_decref(cfg);
    return rc;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int is_config(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return e->d_name[0] != '.' && n > 5 && !strcmp(e->d_name + n - 5, ".json");
}

int slimd_scheduled(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"server", required_argument, NULL, 's'},
        {"slimd", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = DEFAULT_DIR, *server = NULL, *slimd = "/proc/self/exe";
    struct dirent **list = NULL;
    int c, n, worst = 0, failed = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 's': server = optarg; break;
        case 'b': slimd = optarg; break;
        case 'h': scheduled_usage(stdout); return 0;
        default: scheduled_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "slimd scheduled: unexpected argument '%s'\n", argv[optind]);
        scheduled_usage(stderr);
        return 2;
    }
    n = scandir(dir, &list, is_config, by_name);
    if (n < 0) {
        fprintf(stderr, "slimd scheduled: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    if (n == 0)
        fprintf(stderr, "slimd scheduled: no *.json in %s: nothing to do\n", dir);
    for (int i = 0; i < n; i++) {
        int rc = run_one(slimd, dir, list[i]->d_name, server);
        if (rc) {
            failed++;
            if (rc > worst)
                worst = rc;
        }
        free(list[i]);
    }
    free(list);
    if (n)
        fprintf(stderr, "slimd scheduled: %d job(s), %d failed\n", n, failed);
    return worst;
}

/*
 * cli_token.c - `slimd token create|list|revoke`: bearer tokens, made
 * on the data dir's database directly, so an operator can make the first
 * token before the daemon ever starts (a daemon on a non-loopback
 * address refuses to start without one), and can revoke a token without
 * any token at hand.  Whoever can write the data dir owns the daemon
 * anyway.
 *
 * The database is opened with store_open_meta: a running daemon may use
 * the same data dir, and store_open would empty its tmp/ (its uploads in
 * progress).  SQLite's WAL and busy timeout let the two processes share
 * the file; the daemon reads tokens from the database on every request,
 * so a new or revoked token counts at once.
 *
 * create prints the token alone on stdout (TOKEN=$(slimd token create
 * ...) works) and what it made on stderr; the token is shown this once.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "api/api.h"
#include "daemon/cli.h"
#include "storage/store.h"

static void token_usage(FILE *f)
{
    fprintf(f, "usage: slimd token create --scope read,submit,admin --name NAME [--data-dir DIR]\n"
               "                          [--store SPEC]\n"
               "       slimd token list [--json] [--data-dir DIR] [--store SPEC]\n"
               "       slimd token revoke ID [--data-dir DIR] [--store SPEC]\n"
               "--store: the daemon's database, sqlite:PATH or postgresql://... (SLIMD_STORE;\n"
               "default DIR/slimd.db)\n");
}

/* --store (SLIMD_STORE): NULL for the data dir's SQLite database */
static const char *store_spec;

static int open_meta(const char *dir, struct store **st)
{
    struct slim_error err;
    if (store_open_meta_db(dir, store_spec, st, &err)) {
        fprintf(stderr, "slimd token: data dir %s: %s\n", dir, err.msg);
        return -1;
    }
    return 0;
}

static int token_create(const char *dir, const char *scope, const char *name)
{
    char secret[STORE_TOKEN_LEN + 1], have[24];
    struct store *st = NULL;
    struct slim_error err;
    json_t *row = NULL;
    unsigned scopes;
    int rc = 1;

    if (!scope || !name) {
        fprintf(stderr, "slimd token create: --scope and --name are required\n");
        return 2;
    }
    if (store_scopes_parse(scope, &scopes, &err)) {
        fprintf(stderr, "slimd token create: --%s\n", err.msg);
        return 2;
    }
    if (!api_valid_name(name)) {
        fprintf(stderr, "slimd token create: --name: expected 1 to 200 bytes of UTF-8 text "
                "without control characters\n");
        return 2;
    }
    if (open_meta(dir, &st))
        return 1;
    if (store_token_create(st, name, scopes, secret, &row, &err)) {
        fprintf(stderr, "slimd token create: %s\n", err.msg);
        goto out;
    }
    store_scopes_format(scopes, have, sizeof have);
    printf("%s\n", secret);
    fflush(stdout);
    fprintf(stderr, "token %s (%s, scopes %s) created in %s; the token above is shown only "
            "this once: send it as 'Authorization: Bearer TOKEN'\n",
            json_string_value(json_object_get(row, "id")), name, have, dir);
    explicit_bzero(secret, sizeof secret);
    rc = 0;
out:
    json_decref(row);
    store_close(st);
    return rc;
}

static int token_list(const char *dir, int as_json)
{
    struct store *st = NULL;
    struct slim_error err;
    json_t *rows = NULL, *t;
    size_t i;
    int rc = 1;

    if (open_meta(dir, &st))
        return 1;
    if (store_token_list(st, &rows, &err)) {
        fprintf(stderr, "slimd token list: %s\n", err.msg);
        goto out;
    }
    if (as_json) {
        json_t *wrap = json_pack("{s:O}", "tokens", rows);
        if (!wrap || json_dumpf(wrap, stdout, JSON_INDENT(2)) != 0) {
            json_decref(wrap);
            fprintf(stderr, "slimd token list: out of memory\n");
            goto out;
        }
        putchar('\n');
        json_decref(wrap);
        rc = 0;
        goto out;
    }
    printf("%-20s  %-20s  %-17s  %-20s  %-20s  %s\n", "ID", "NAME", "SCOPES", "CREATED",
           "LAST USED", "REVOKED");
    json_array_foreach(rows, i, t) {
        char scopes[24] = "";
        json_t *s;
        size_t j;
        json_array_foreach(json_object_get(t, "scopes"), j, s)
            snprintf(scopes + strlen(scopes), sizeof scopes - strlen(scopes), "%s%s",
                     j ? "," : "", json_string_value(s));
        printf("%-20s  %-20s  %-17s  %-20s  %-20s  %s\n",
               json_string_value(json_object_get(t, "id")),
               json_string_value(json_object_get(t, "name")), scopes,
               json_string_value(json_object_get(t, "created_at")),
               json_is_string(json_object_get(t, "last_used_at"))
                   ? json_string_value(json_object_get(t, "last_used_at")) : "-",
               json_is_true(json_object_get(t, "revoked")) ? "yes" : "no");
    }
    rc = 0;
out:
    json_decref(rows);
    store_close(st);
    return rc;
}

static int token_revoke(const char *dir, const char *id)
{
    struct store *st = NULL;
    struct slim_error err;
    int was = 0, rc = 1;

    if (open_meta(dir, &st))
        return 1;
    if (store_token_revoke(st, id, &was, &err)) {
        fprintf(stderr, "slimd token revoke: %s\n", err.msg);
        goto out;
    }
    fprintf(stderr, was ? "token %s was already revoked\n" : "token %s revoked\n", id);
    rc = 0;
out:
    store_close(st);
    return rc;
}

int slimd_token(int argc, char **argv)
{
    static const struct option opts[] = {
        {"scope", required_argument, NULL, 's'},
        {"name", required_argument, NULL, 'n'},
        {"data-dir", required_argument, NULL, 'd'},
        {"json", no_argument, NULL, 'j'},
        {"store", required_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = getenv("SLIMD_DATA_DIR") && *getenv("SLIMD_DATA_DIR")
                          ? getenv("SLIMD_DATA_DIR") : "data";
    const char *scope = NULL, *name = NULL, *cmd;
    int c, as_json = 0;

    store_spec = getenv("SLIMD_STORE") && *getenv("SLIMD_STORE") ? getenv("SLIMD_STORE") : NULL;

    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        token_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    cmd = argv[1];
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': scope = optarg; break;
        case 'n': name = optarg; break;
        case 'd': dir = optarg; break;
        case 'S': store_spec = optarg; break;
        case 'j': as_json = 1; break;
        case 'h': token_usage(stdout); return 0;
        default: token_usage(stderr); return 2;
        }
    }
    /* getopt saw argv + 1: its optind counts from the subcommand */
    if (!strcmp(cmd, "create") && optind == argc - 1)
        return token_create(dir, scope, name);
    if (!strcmp(cmd, "list") && optind == argc - 1)
        return token_list(dir, as_json);
    if (!strcmp(cmd, "revoke") && optind == argc - 2)
        return token_revoke(dir, argv[1 + optind]);
    fprintf(stderr, "slimd token: unknown command or wrong arguments\n");
    token_usage(stderr);
    return 2;
}

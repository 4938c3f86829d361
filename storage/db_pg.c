/*
 * db_pg.c - db.h on PostgreSQL (libpq), for `slimd serve --store
 * postgresql://...`: several daemons share one database.
 *
 * One connection, used by one thread at a time (store.c's mutex), in
 * libpq's blocking mode: a statement is sent when it is first stepped
 * and its whole result comes back then (PQexecPrepared); db_step walks
 * the rows.  store.c's statements return at most a page of rows (1,000),
 * so fetching a result whole costs what SQLite's row by row did, and it
 * keeps the connection free between steps (no portal left open while a
 * caller converts rows).  Rejected: single-row mode (a statement would
 * hold the connection until its last row was read, and every early
 * return in store.c would have to drain it).
 *
 * SQL comes in SQLite's placeholder syntax (?N); prepare rewrites it to
 * $N once.  Persistent statements are named server-side prepared
 * statements ("s1", "s2", ...), prepared at db_prepare (so an SQL error
 * shows at open, as with SQLite) and again after a reconnect (each
 * statement remembers the connection generation it was prepared on).
 * Values travel as text (binary for blobs), and the server infers their
 * types from the SQL, except for parameters the SQL never names, which
 * are declared text.
 *
 * A connection that drops (a server restart, a network cut) fails the
 * statement that found it, with a message that says so, and PQreset
 * reconnects at once, so the next request works; a transaction open at
 * the drop is lost with it (the server rolled it back).  Rejected: retry
 * the statement after the reconnect: a write whose reply was lost may
 * have committed, and re-running it (a job claim) could apply it twice.
 */
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libpq-fe.h>
#include "storage/db_driver.h"

#define BOOLOID 16
#define TEXTOID 25

struct pg_db {
    struct db base;
    PGconn *conn;
    unsigned gen;               /* bumped at each reconnect */
    unsigned next_name;         /* of named prepared statements */
    int64_t changes;
    int code;                   /* enum slim_errno of the last error */
    char msg[512];
    void (*hook)(void *ud, const char *table);
    void *hook_ud;
};

struct pg_stmt {
    struct db_stmt base;
    char *sql;                  /* with $N placeholders */
    char name[24];              /* "" unless persistent */
    unsigned gen;               /* connection generation it was prepared on */
    int multi;                  /* several commands: the simple query protocol */
    int readonly;
    char table[64];             /* the table it writes ("" none), for the hook */
    int nparams;
    Oid *types;
    char **vals;
    int *lens, *fmts;
    PGresult *res;
    int row, nrows;
    int failed;                 /* the last step failed (db_reset's DB_ERROR) */
};

#define PG(db) ((struct pg_db *)(db))
#define ST(s) ((struct pg_stmt *)(s))

static const struct db_ops pg_ops;

static int set_error(struct pg_db *db, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_error(struct pg_db *db, int code, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(db->msg, sizeof db->msg, "postgresql: ");
    va_start(ap, fmt);
    vsnprintf(db->msg + n, sizeof db->msg - (size_t)n, fmt, ap);
    va_end(ap);
    /* libpq's messages end in a newline */
    for (size_t len = strlen(db->msg); len && isspace((unsigned char)db->msg[len - 1]); len--)
        db->msg[len - 1] = 0;
    db->code = code;
    return DB_ERROR;
}

/* SQLSTATE -> enum slim_errno */
static int map_state(const char *state)
{
    if (!state)
        return SLIM_EIO;
    if (!strcmp(state, "53100"))   /* disk_full */
        return SLIM_ENOSPACE;
    if (!strcmp(state, "53200"))   /* out_of_memory */
        return SLIM_ENOMEM;
    if (!strcmp(state, "23505"))   /* unique_violation */
        return SLIM_ECONFLICT;
    return SLIM_EIO;
}

/* Settings each session needs, at connect and after a reconnect:
 * notices (CREATE TABLE IF NOT EXISTS's "already exists, skipping")
 * are not printed on the daemon's stderr. */
static void silent(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static int session_init(struct pg_db *db)
{
    PGresult *r;
    PQsetNoticeProcessor(db->conn, silent, NULL);
    r = PQexec(db->conn, "SET client_min_messages = warning; SET TIME ZONE 'UTC'");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        set_error(db, SLIM_EIO, "%s", PQerrorMessage(db->conn));
        PQclear(r);
        return DB_ERROR;
    }
    PQclear(r);
    return DB_OK;
}

/* A connection that is not usable is reset; DB_ERROR when it cannot be. */
static int ensure_conn(struct pg_db *db)
{
    if (PQstatus(db->conn) == CONNECTION_OK)
        return DB_OK;
    PQreset(db->conn);
    db->gen++;
    if (PQstatus(db->conn) != CONNECTION_OK)
        return set_error(db, SLIM_EIO, "cannot reconnect to the server: %s",
                         PQerrorMessage(db->conn));
    return session_init(db);
}

/* The error of result r (NULL: the connection's). */
static int result_error(struct pg_db *db, PGresult *r)
{
    const char *primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (PQstatus(db->conn) != CONNECTION_OK) {
        set_error(db, SLIM_EIO, "the connection to the server was lost (%s); it is re-established "
                  "for the next request", primary ? primary : PQerrorMessage(db->conn));
        PQreset(db->conn);   /* now, so the next request finds it working */
        db->gen++;
        if (PQstatus(db->conn) == CONNECTION_OK)
            session_init(db);
        db->code = SLIM_EIO;
        return DB_ERROR;
    }
    return set_error(db, map_state(r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL), "%s",
                     primary ? primary : PQerrorMessage(db->conn));
}

static void pg_close(struct db *db)
{
    PQfinish(PG(db)->conn);
    slim_free(db);
}

/* ---- preparing ---- */

/* The word at *p (an SQL keyword or name), lowercased into out; advances
 * *p past it and the blanks after it. */
static void word(const char **p, char *out, size_t len)
{
    size_t n = 0;
    while (**p == ' ' || **p == '\t' || **p == '\n')
        (*p)++;
    while (isalnum((unsigned char)**p) || **p == '_') {
        if (n + 1 < len)
            out[n++] = (char)tolower((unsigned char)**p);
        (*p)++;
    }
    out[n] = 0;
    while (**p == ' ' || **p == '\t' || **p == '\n')
        (*p)++;
}

/* readonly, and the table an INSERT INTO / UPDATE / DELETE FROM writes */
static void classify(struct pg_stmt *s, const char *sql)
{
    char w[64];
    word(&sql, w, sizeof w);
    s->readonly = !strcmp(w, "select") || !strcmp(w, "with") || !strcmp(w, "begin") ||
                  !strcmp(w, "commit") || !strcmp(w, "rollback");
    if (!strcmp(w, "insert") || !strcmp(w, "delete"))
        word(&sql, w, sizeof w);   /* INTO, FROM */
    else if (strcmp(w, "update"))
        return;
    word(&sql, s->table, sizeof s->table);
}

/* ?N and ? -> $N outside quoted text ('...', "...", $$...$$); *used gets
 * a new array of which parameters appear (1-based, [0] unused), *n the
 * highest.  NULL when out of memory. */
static char *rewrite(const char *sql, int *n, unsigned char **used, int *multi)
{
    size_t len = strlen(sql);
    char *out = slim_malloc(len * 2 + 1), *o = out;   /* "?" -> "$NN" at worst doubles */
    unsigned char *u = slim_calloc(len + 2, 1);
    int next = 0, max = 0;
    const char *p = sql;
    *multi = 0;
    if (!out || !u) {
        slim_free(out);
        slim_free(u);
        return NULL;
    }
    while (*p) {
        if (*p == '\'' || *p == '"') {
            char q = *p;
            *o++ = *p++;
            while (*p && *p != q)
                *o++ = *p++;
            if (*p)
                *o++ = *p++;
        } else if (p[0] == '$' && p[1] == '$') {
            const char *end = strstr(p + 2, "$$");
            size_t k = end ? (size_t)(end + 2 - p) : strlen(p);
            memcpy(o, p, k);
            o += k;
            p += k;
        } else if (*p == '?') {
            int i;
            p++;
            if (isdigit((unsigned char)*p)) {
                i = (int)strtol(p, (char **)&p, 10);
            } else {
                i = ++next;
            }
            if (i < 1 || (size_t)i > len) {
                slim_free(out);
                slim_free(u);
                return NULL;
            }
            u[i] = 1;
            if (i > max)
                max = i;
            o += sprintf(o, "$%d", i);
        } else {
            if (*p == ';') {   /* several commands, unless it only ends the SQL */
                const char *q = p + 1;
                while (*q == ' ' || *q == '\n' || *q == '\t')
                    q++;
                if (*q)
                    *multi = 1;
            }
            *o++ = *p++;
        }
    }
    *o = 0;
    *n = max;
    *used = u;
    return out;
}

static int prepare_named(struct pg_db *db, struct pg_stmt *s)
{
    PGresult *r;
    if (ensure_conn(db))
        return DB_ERROR;
    r = PQprepare(db->conn, s->name, s->sql, s->nparams, s->types);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        result_error(db, r);
        PQclear(r);
        return DB_ERROR;
    }
    PQclear(r);
    s->gen = db->gen;
    return DB_OK;
}

static void free_stmt(struct pg_stmt *s)
{
    PQclear(s->res);
    for (int i = 0; s->vals && i < s->nparams; i++)
        slim_free(s->vals[i]);
    slim_free(s->vals);
    slim_free(s->lens);
    slim_free(s->fmts);
    slim_free(s->types);
    slim_free(s->sql);
    slim_free(s);
}

static int pg_prepare(struct db *dbh, const char *sql, int persistent, struct db_stmt **out)
{
    struct pg_db *db = PG(dbh);
    struct pg_stmt *s = slim_calloc(1, sizeof *s);
    unsigned char *used = NULL;
    int n = 0;

    if (!s || !(s->sql = rewrite(sql, &n, &used, &s->multi))) {
        slim_free(s);
        return set_error(db, SLIM_ENOMEM, "out of memory preparing a statement");
    }
    s->base.db = dbh;
    s->nparams = n;
    classify(s, sql);
    if (n && (!(s->types = slim_calloc((size_t)n, sizeof *s->types)) ||
              !(s->vals = slim_calloc((size_t)n, sizeof *s->vals)) ||
              !(s->lens = slim_calloc((size_t)n, sizeof *s->lens)) ||
              !(s->fmts = slim_calloc((size_t)n, sizeof *s->fmts)))) {
        slim_free(used);
        free_stmt(s);
        return set_error(db, SLIM_ENOMEM, "out of memory preparing a statement");
    }
    /* a parameter the SQL does not name has no type to infer: text */
    for (int i = 0; i < n; i++)
        s->types[i] = used[i + 1] ? 0 : TEXTOID;
    slim_free(used);
    if (s->multi && n) {
        free_stmt(s);
        return set_error(db, SLIM_EINTERNAL, "several commands with parameters cannot be sent");
    }
    if (persistent && !s->multi) {
        snprintf(s->name, sizeof s->name, "s%u", ++db->next_name);
        if (prepare_named(db, s)) {
            free_stmt(s);
            return DB_ERROR;
        }
    }
    *out = &s->base;
    return DB_OK;
}

/* ---- binding ---- */

static int set_param(struct pg_stmt *s, int i, const char *v, size_t len, int binary)
{
    struct pg_db *db = PG(s->base.db);
    char *copy = NULL;
    if (i < 1 || i > s->nparams)
        return set_error(db, SLIM_EIO, "parameter %d out of range (the statement has %d)", i,
                         s->nparams);
    if (v) {
        if (!(copy = slim_malloc(len + 1)))
            return set_error(db, SLIM_ENOMEM, "out of memory binding a value");
        memcpy(copy, v, len);
        copy[len] = 0;
    }
    slim_free(s->vals[i - 1]);
    s->vals[i - 1] = copy;
    s->lens[i - 1] = (int)len;
    s->fmts[i - 1] = binary;
    return DB_OK;
}

static int pg_bind_text(struct db_stmt *s, int i, const char *v)
{
    return set_param(ST(s), i, v, strlen(v), 0);
}

static int pg_bind_blob(struct db_stmt *s, int i, const void *v, int len)
{
    return set_param(ST(s), i, v ? v : "", len > 0 ? (size_t)len : 0, 1);
}

static int pg_bind_int64(struct db_stmt *s, int i, int64_t v)
{
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
    return set_param(ST(s), i, buf, (size_t)n, 0);
}

static int pg_bind_double(struct db_stmt *s, int i, double v)
{
    char buf[40];
    int n = snprintf(buf, sizeof buf, "%.17g", v);
    return set_param(ST(s), i, buf, (size_t)n, 0);
}

static int pg_bind_null(struct db_stmt *s, int i)
{
    return set_param(ST(s), i, NULL, 0, 0);
}

/* ---- running ---- */

static int pg_step(struct db_stmt *sh)
{
    struct pg_stmt *s = ST(sh);
    struct pg_db *db = PG(sh->db);
    PGresult *r;
    ExecStatusType status;

    if (s->res) {   /* the next row of a result fetched already */
        if (s->row + 1 < s->nrows) {
            s->row++;
            return DB_ROW;
        }
        s->row = s->nrows;
        return DB_DONE;
    }
    s->failed = 1;
    if (ensure_conn(db))
        return DB_ERROR;
    if (s->multi)
        r = PQexec(db->conn, s->sql);
    else if (s->name[0]) {
        if (s->gen != db->gen && prepare_named(db, s))
            return DB_ERROR;
        r = PQexecPrepared(db->conn, s->name, s->nparams, (const char *const *)s->vals, s->lens,
                           s->fmts, 0);
    } else {
        r = PQexecParams(db->conn, s->sql, s->nparams, s->types, (const char *const *)s->vals,
                         s->lens, s->fmts, 0);
    }
    status = PQresultStatus(r);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
        result_error(db, r);
        PQclear(r);
        /* several commands that began a transaction and failed in it
         * (BEGIN; SELECT pg_advisory_xact_lock(..)): nothing is open,
         * as after a failed BEGIN on SQLite */
        if (s->multi && PQtransactionStatus(db->conn) == PQTRANS_INERROR) {
            PGresult *rb = PQexec(db->conn, "ROLLBACK");
            PQclear(rb);
        }
        return DB_ERROR;
    }
    s->failed = 0;
    if (!s->readonly && PQcmdTuples(r)[0]) {
        db->changes = strtoll(PQcmdTuples(r), NULL, 10);
        if (db->changes > 0 && s->table[0] && db->hook)
            db->hook(db->hook_ud, s->table);
    }
    s->res = r;
    /* several commands: their rows are dropped, as db_exec's */
    s->nrows = status == PGRES_TUPLES_OK && !s->multi ? PQntuples(r) : 0;
    s->row = 0;
    return s->nrows > 0 ? DB_ROW : DB_DONE;
}

static int in_row(struct pg_stmt *s, int col)
{
    return s->res && s->row < s->nrows && col >= 0 && col < PQnfields(s->res);
}

static const char *pg_column_text(struct db_stmt *sh, int col)
{
    struct pg_stmt *s = ST(sh);
    if (!in_row(s, col) || PQgetisnull(s->res, s->row, col))
        return NULL;
    return PQgetvalue(s->res, s->row, col);
}

static int64_t pg_column_int64(struct db_stmt *sh, int col)
{
    const char *v = pg_column_text(sh, col);
    if (!v)
        return 0;
    if (PQftype(ST(sh)->res, col) == BOOLOID)
        return v[0] == 't';
    return strtoll(v, NULL, 10);
}

static double pg_column_double(struct db_stmt *sh, int col)
{
    const char *v = pg_column_text(sh, col);
    return v ? strtod(v, NULL) : 0;
}

static int pg_column_is_null(struct db_stmt *sh, int col)
{
    return pg_column_text(sh, col) == NULL;
}

static int pg_reset(struct db_stmt *sh)
{
    struct pg_stmt *s = ST(sh);
    int failed = s->failed;
    PQclear(s->res);
    s->res = NULL;
    s->row = s->nrows = 0;
    s->failed = 0;
    return failed ? DB_ERROR : DB_OK;
}

static void pg_clear_bindings(struct db_stmt *sh)
{
    struct pg_stmt *s = ST(sh);
    for (int i = 0; i < s->nparams; i++) {
        slim_free(s->vals[i]);
        s->vals[i] = NULL;
        s->lens[i] = s->fmts[i] = 0;
    }
}

static int pg_stmt_readonly(struct db_stmt *sh)
{
    return ST(sh)->readonly;
}

static void pg_finalize(struct db_stmt *sh)
{
    struct pg_stmt *s = ST(sh);
    struct pg_db *db = PG(sh->db);
    /* a named statement of this connection goes with it; on a connection
     * that was reset since, it is gone already */
    if (s->name[0] && s->gen == db->gen && PQstatus(db->conn) == CONNECTION_OK) {
        char sql[48];
        snprintf(sql, sizeof sql, "DEALLOCATE %s", s->name);
        PQclear(PQexec(db->conn, sql));
    }
    free_stmt(s);
}

static int64_t pg_changes(struct db *db)
{
    return PG(db)->changes;
}

static int pg_exec(struct db *dbh, const char *sql)
{
    struct pg_db *db = PG(dbh);
    PGresult *r;
    ExecStatusType status;
    if (ensure_conn(db))
        return DB_ERROR;
    r = PQexec(db->conn, sql);
    status = PQresultStatus(r);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
        result_error(db, r);
        PQclear(r);
        return DB_ERROR;
    }
    PQclear(r);
    return DB_OK;
}

static const char *pg_errmsg(struct db *db)
{
    return PG(db)->msg[0] ? PG(db)->msg : "postgresql: no error";
}

static int pg_errcode(struct db *db)
{
    return PG(db)->code ? PG(db)->code : SLIM_EIO;
}

static void pg_update_hook(struct db *db, void (*fn)(void *ud, const char *table), void *ud)
{
    PG(db)->hook = fn;
    PG(db)->hook_ud = ud;
}

static void pg_checkpoint(struct db *db)
{
    (void)db;
}

static int pg_listen(struct db *db, const char *channel)
{
    char sql[96];
    snprintf(sql, sizeof sql, "LISTEN %s", channel);
    return pg_exec(db, sql);
}

/* Consumes what the server sent: 1 when notifications came, 0 when none,
 * -1 when the connection failed (then reset). */
static int take_notices(struct pg_db *db)
{
    PGnotify *n;
    int got = 0;
    if (!PQconsumeInput(db->conn)) {
        result_error(db, NULL);
        return -1;
    }
    while ((n = PQnotifies(db->conn))) {
        got = 1;
        PQfreemem(n);
    }
    return got;
}

static int pg_wait_notify(struct db *dbh, int timeout_ms)
{
    struct pg_db *db = PG(dbh);
    struct pollfd p;
    int got, rc;
    if (PQstatus(db->conn) != CONNECTION_OK) {
        ensure_conn(db);
        return -1;
    }
    if ((got = take_notices(db)))
        return got;
    p.fd = PQsocket(db->conn);
    p.events = POLLIN;
    p.revents = 0;
    if ((rc = poll(&p, 1, timeout_ms)) <= 0)
        return rc < 0 && errno != EINTR ? -1 : 0;
    return take_notices(db);
}

static const struct db_ops pg_ops = {
    pg_close, pg_prepare, pg_bind_text, pg_bind_blob, pg_bind_int64, pg_bind_double,
    pg_bind_null, pg_step, pg_column_text, pg_column_int64, pg_column_double, pg_column_is_null,
    pg_reset, pg_clear_bindings, pg_stmt_readonly, pg_finalize, pg_changes, pg_exec, pg_errmsg,
    pg_errcode, pg_update_hook, pg_checkpoint, pg_listen, pg_wait_notify,
};

/* The URI without its password, for messages: "postgresql://u@h/db". */
static void redact(const char *uri, char *out, size_t len)
{
    const char *at = strchr(uri, '@'), *scheme = strstr(uri, "://");
    const char *colon = scheme ? strchr(scheme + 3, ':') : NULL;
    if (at && colon && colon < at)
        snprintf(out, len, "%.*s:***%s", (int)(colon - uri), uri, at);
    else
        snprintf(out, len, "%s", uri);
}

int db_pg_open(const char *uri, struct db **out, struct slim_error *err)
{
    /* the URI's own settings win over these defaults (they come after) */
    static const char *const keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *vals[] = {"slimd", "10", uri, NULL};
    struct pg_db *db = slim_calloc(1, sizeof *db);
    char shown[256];

    redact(uri, shown, sizeof shown);
    if (!db)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory opening %s", shown);
    db->base.ops = &pg_ops;
    db->base.dialect = DB_POSTGRESQL;
    db->conn = PQconnectdbParams(keys, vals, 1);
    if (!db->conn) {
        slim_free(db);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory opening %s", shown);
    }
    if (PQstatus(db->conn) != CONNECTION_OK || session_init(db)) {
        char msg[256];
        size_t n;
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(db->conn));
        for (n = strlen(msg); n && isspace((unsigned char)msg[n - 1]); n--)
            msg[n - 1] = 0;
        PQfinish(db->conn);
        slim_free(db);
        return slim_error_set(err, SLIM_EIO, "postgresql: cannot connect to %s: %s", shown, msg);
    }
    *out = &db->base;
    return 0;
}

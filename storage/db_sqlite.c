/*
 * db_sqlite.c - db.h on SQLite: each call is the sqlite3 call of the same
 * name, so store.c on SQLite behaves as it did when it called SQLite
 * itself.  The connection is configured here, at open, as store.c did
 * (store.c's opening comment says why each setting):
 * SQLITE_OPEN_FULLMUTEX, extended result codes, a 5 s busy timeout, a
 * persistent WAL (SQLITE_FCNTL_PERSIST_WAL), foreign keys on,
 * synchronous=FULL, journal_mode=WAL.
 */
#include <errno.h>
#include <string.h>
#include <sqlite3.h>
#include "storage/db_driver.h"

struct sq_db {
    struct db base;
    sqlite3 *h;
    void (*hook)(void *ud, const char *table);
    void *hook_ud;
    int oom;            /* the last call failed for want of our own memory */
};

struct sq_stmt {
    struct db_stmt base;
    sqlite3_stmt *s;
};

#define H(db) (((struct sq_db *)(db))->h)
#define S(st) (((struct sq_stmt *)(st))->s)

static const struct db_ops sq_ops;

static void sq_close(struct db *db)
{
    sqlite3_close(H(db));
    slim_free(db);
}

static int sq_prepare(struct db *db, const char *sql, int persistent, struct db_stmt **out)
{
    struct sq_stmt *st = slim_calloc(1, sizeof *st);
    int rc;
    ((struct sq_db *)db)->oom = !st;
    if (!st)
        return DB_ERROR;
    rc = persistent ? sqlite3_prepare_v3(H(db), sql, -1, SQLITE_PREPARE_PERSISTENT, &st->s, NULL)
                    : sqlite3_prepare_v2(H(db), sql, -1, &st->s, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(st->s);
        slim_free(st);
        return DB_ERROR;
    }
    st->base.db = db;
    *out = &st->base;
    return DB_OK;
}

static int sq_rc(int rc)
{
    return rc == SQLITE_OK ? DB_OK : DB_ERROR;
}

static int sq_bind_text(struct db_stmt *s, int i, const char *v)
{
    return sq_rc(sqlite3_bind_text(S(s), i, v, -1, SQLITE_STATIC));
}

static int sq_bind_blob(struct db_stmt *s, int i, const void *v, int len)
{
    return sq_rc(sqlite3_bind_blob(S(s), i, v, len, SQLITE_STATIC));
}

static int sq_bind_int64(struct db_stmt *s, int i, int64_t v)
{
    return sq_rc(sqlite3_bind_int64(S(s), i, v));
}

static int sq_bind_double(struct db_stmt *s, int i, double v)
{
    return sq_rc(sqlite3_bind_double(S(s), i, v));
}

static int sq_bind_null(struct db_stmt *s, int i)
{
    return sq_rc(sqlite3_bind_null(S(s), i));
}

static int sq_step(struct db_stmt *s)
{
    ((struct sq_db *)s->db)->oom = 0;
    int rc = sqlite3_step(S(s));
    return rc == SQLITE_ROW ? DB_ROW : rc == SQLITE_DONE ? DB_DONE : DB_ERROR;
}

static const char *sq_column_text(struct db_stmt *s, int col)
{
    return (const char *)sqlite3_column_text(S(s), col);
}

static int64_t sq_column_int64(struct db_stmt *s, int col)
{
    return sqlite3_column_int64(S(s), col);
}

static double sq_column_double(struct db_stmt *s, int col)
{
    return sqlite3_column_double(S(s), col);
}

static int sq_column_is_null(struct db_stmt *s, int col)
{
    return sqlite3_column_type(S(s), col) == SQLITE_NULL;
}

static int sq_reset(struct db_stmt *s)
{
    return sq_rc(sqlite3_reset(S(s)));
}

static void sq_clear_bindings(struct db_stmt *s)
{
    sqlite3_clear_bindings(S(s));
}

static int sq_stmt_readonly(struct db_stmt *s)
{
    return sqlite3_stmt_readonly(S(s));
}

static void sq_finalize(struct db_stmt *s)
{
    sqlite3_finalize(S(s));
    slim_free(s);
}

static int64_t sq_changes(struct db *db)
{
    return sqlite3_changes(H(db));
}

static int sq_exec(struct db *db, const char *sql)
{
    return sq_rc(sqlite3_exec(H(db), sql, NULL, NULL, NULL));
}

static const char *sq_errmsg(struct db *db)
{
    if (((struct sq_db *)db)->oom)
        return "out of memory";
    return sqlite3_errmsg(H(db));
}

/* A full disk is SLIM_ENOSPACE whether SQLite says SQLITE_FULL (a write)
 * or an I/O error whose errno is ENOSPC (the -shm file, an fsync). */
static int sq_errcode(struct db *db)
{
    int c = sqlite3_errcode(H(db)) & 0xff, e = sqlite3_system_errno(H(db));
    if (c == SQLITE_NOMEM || ((struct sq_db *)db)->oom)
        return SLIM_ENOMEM;
    if (c == SQLITE_FULL ||
        ((c == SQLITE_IOERR || c == SQLITE_CANTOPEN) && (e == ENOSPC || e == EDQUOT)))
        return SLIM_ENOSPACE;
    return SLIM_EIO;
}

static void on_update(void *ud, int op, const char *dbname, const char *table, sqlite3_int64 rowid)
{
    struct sq_db *db = ud;
    (void)op;
    (void)dbname;
    (void)rowid;
    if (db->hook)
        db->hook(db->hook_ud, table);
}

static void sq_update_hook(struct db *db, void (*fn)(void *ud, const char *table), void *ud)
{
    struct sq_db *d = (struct sq_db *)db;
    d->hook = fn;
    d->hook_ud = ud;
    sqlite3_update_hook(d->h, fn ? on_update : NULL, fn ? d : NULL);
}

/* The persisted WAL still holds the frames of the last run (all in the
 * database file after the checkpoint at close, but recovery does not
 * know it): a checkpoint lets the first write start the WAL over in the
 * space it has, instead of appending, which a full disk refuses. */
static void sq_checkpoint(struct db *db)
{
    sqlite3_wal_checkpoint_v2(H(db), NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

/* no notices between processes: each has its own update hook */
static int sq_listen(struct db *db, const char *channel)
{
    (void)db;
    (void)channel;
    return DB_ERROR;
}

static int sq_wait_notify(struct db *db, int timeout_ms)
{
    (void)db;
    (void)timeout_ms;
    return -1;
}

static const struct db_ops sq_ops = {
    sq_close, sq_prepare, sq_bind_text, sq_bind_blob, sq_bind_int64, sq_bind_double,
    sq_bind_null, sq_step, sq_column_text, sq_column_int64, sq_column_double, sq_column_is_null,
    sq_reset, sq_clear_bindings, sq_stmt_readonly, sq_finalize, sq_changes, sq_exec, sq_errmsg,
    sq_errcode, sq_update_hook, sq_checkpoint, sq_listen, sq_wait_notify,
};

static int open_error(struct sq_db *db, struct slim_error *err, const char *what, const char *path)
{
    return slim_error_set(err, sq_errcode(&db->base), "%s %s: %s", what, path,
                          sqlite3_errmsg(db->h));
}

int db_sqlite_open(const char *path, struct db **out, struct slim_error *err)
{
    struct sq_db *db = slim_calloc(1, sizeof *db);
    sqlite3_stmt *s = NULL;
    const char *mode = NULL;
    int rc, persist = 1;

    if (!db)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory opening %s", path);
    db->base.ops = &sq_ops;
    db->base.dialect = DB_SQLITE;
    if (sqlite3_open_v2(path, &db->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                        SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
        rc = db->h ? open_error(db, err, "cannot open", path)
                   : slim_error_set(err, SLIM_ENOMEM, "out of memory opening %s", path);
        goto fail;
    }
    sqlite3_extended_result_codes(db->h, 1);
    /* only matters when another process (a second slimd, the sqlite3
     * shell) holds the database: our own threads queue on store.c's lock */
    sqlite3_busy_timeout(db->h, 5000);
    /* Persistent WAL: the -wal and -shm files stay (allocated) when the
     * last connection closes, instead of being deleted and created again
     * at the next open, which on a full disk fails ("disk I/O error":
     * slimd could not start).  The WAL keeps the size it grew to (no
     * journal_size_limit: that would truncate it to 0 at close), a few
     * MiB with the default checkpoints, and is reused from its start
     * after each checkpoint, so writes need no new space either. */
    sqlite3_file_control(db->h, "main", SQLITE_FCNTL_PERSIST_WAL, &persist);
    if (sqlite3_exec(db->h, "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL", NULL, NULL,
                     NULL)) {
        rc = open_error(db, err, "cannot configure", path);
        goto fail;
    }
    if (sqlite3_prepare_v2(db->h, "PRAGMA journal_mode = WAL", -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        mode = (const char *)sqlite3_column_text(s, 0);
    rc = mode && !strcmp(mode, "wal") ? 0
         : slim_error_set(err, sq_errcode(&db->base), "cannot switch %s to WAL: %s", path,
                          sqlite3_errmsg(db->h));
    sqlite3_finalize(s);
    if (rc)
        goto fail;
    *out = &db->base;
    return 0;
fail:
    sqlite3_close(db->h);
    slim_free(db);
    return rc;
}

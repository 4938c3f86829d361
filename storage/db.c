/*
 * db.c - db.h's entry points: opens the driver a spec names and passes
 * every call to it (db_driver.h).  Nothing here knows a dialect.
 */
#include <string.h>
#include "storage/db_driver.h"

int db_spec_is_pg(const char *spec)
{
    return spec && (!strncmp(spec, "postgresql://", 13) || !strncmp(spec, "postgres://", 11));
}

int db_open(const char *spec, struct db **out, struct slim_error *err)
{
    *out = NULL;
    if (spec && !strncmp(spec, "sqlite:", 7) && spec[7])
        return db_sqlite_open(spec + 7, out, err);
    if (db_spec_is_pg(spec))
        return db_pg_open(spec, out, err);
    return slim_error_set(err, SLIM_EINVAL, "store: expected sqlite:PATH or postgresql://..., "
                          "not '%.64s'", spec ? spec : "");
}

void db_close(struct db *db)
{
    if (db)
        db->ops->close(db);
}

enum db_dialect db_dialect(const struct db *db)
{
    return db->dialect;
}

const char *db_dialect_name(const struct db *db)
{
    return db->dialect == DB_POSTGRESQL ? "postgresql" : "sqlite";
}

int db_prepare(struct db *db, const char *sql, int persistent, struct db_stmt **out)
{
    *out = NULL;
    return db->ops->prepare(db, sql, persistent, out);
}

int db_bind_text(struct db_stmt *s, int i, const char *v)
{
    return v ? s->db->ops->bind_text(s, i, v) : s->db->ops->bind_null(s, i);
}

int db_bind_blob(struct db_stmt *s, int i, const void *v, int len)
{
    return s->db->ops->bind_blob(s, i, v, len);
}

int db_bind_int(struct db_stmt *s, int i, int v)
{
    return s->db->ops->bind_int64(s, i, v);
}

int db_bind_int64(struct db_stmt *s, int i, int64_t v)
{
    return s->db->ops->bind_int64(s, i, v);
}

int db_bind_double(struct db_stmt *s, int i, double v)
{
    return s->db->ops->bind_double(s, i, v);
}

int db_bind_null(struct db_stmt *s, int i)
{
    return s->db->ops->bind_null(s, i);
}

int db_step(struct db_stmt *s)
{
    return s->db->ops->step(s);
}

const char *db_column_text(struct db_stmt *s, int col)
{
    return s->db->ops->column_text(s, col);
}

int db_column_int(struct db_stmt *s, int col)
{
    return (int)s->db->ops->column_int64(s, col);
}

int64_t db_column_int64(struct db_stmt *s, int col)
{
    return s->db->ops->column_int64(s, col);
}

double db_column_double(struct db_stmt *s, int col)
{
    return s->db->ops->column_double(s, col);
}

int db_column_is_null(struct db_stmt *s, int col)
{
    return s->db->ops->column_is_null(s, col);
}

int db_reset(struct db_stmt *s)
{
    return s->db->ops->reset(s);
}

void db_clear_bindings(struct db_stmt *s)
{
    s->db->ops->clear_bindings(s);
}

int db_stmt_readonly(struct db_stmt *s)
{
    return s->db->ops->stmt_readonly(s);
}

void db_finalize(struct db_stmt *s)
{
    if (s)
        s->db->ops->finalize(s);
}

int64_t db_changes(struct db *db)
{
    return db->ops->changes(db);
}

int db_exec(struct db *db, const char *sql)
{
    return db->ops->exec(db, sql);
}

const char *db_errmsg(struct db *db)
{
    return db->ops->errmsg(db);
}

int db_errcode(struct db *db)
{
    return db->ops->errcode(db);
}

void db_update_hook(struct db *db, void (*fn)(void *ud, const char *table), void *ud)
{
    db->ops->update_hook(db, fn, ud);
}

void db_checkpoint(struct db *db)
{
    db->ops->checkpoint(db);
}

int db_listen(struct db *db, const char *channel)
{
    return db->ops->listen(db, channel);
}

int db_wait_notify(struct db *db, int timeout_ms)
{
    return db->ops->wait_notify(db, timeout_ms);
}

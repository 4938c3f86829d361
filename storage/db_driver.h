/*
 * db_driver.h - what a driver of db.h implements (db_sqlite.c, db_pg.c);
 * private to storage/.  A driver's connection starts with struct db and
 * its statements with struct db_stmt; db.c dispatches through ops.
 */
#ifndef SLIM_DB_DRIVER_H
#define SLIM_DB_DRIVER_H

#include "storage/db.h"

struct db_ops {
    void (*close)(struct db *db);
    int (*prepare)(struct db *db, const char *sql, int persistent, struct db_stmt **out);
    int (*bind_text)(struct db_stmt *s, int i, const char *v);
    int (*bind_blob)(struct db_stmt *s, int i, const void *v, int len);
    int (*bind_int64)(struct db_stmt *s, int i, int64_t v);
    int (*bind_double)(struct db_stmt *s, int i, double v);
    int (*bind_null)(struct db_stmt *s, int i);
    int (*step)(struct db_stmt *s);
    const char *(*column_text)(struct db_stmt *s, int col);
    int64_t (*column_int64)(struct db_stmt *s, int col);
    double (*column_double)(struct db_stmt *s, int col);
    int (*column_is_null)(struct db_stmt *s, int col);
    int (*reset)(struct db_stmt *s);
    void (*clear_bindings)(struct db_stmt *s);
    int (*stmt_readonly)(struct db_stmt *s);
    void (*finalize)(struct db_stmt *s);
    int64_t (*changes)(struct db *db);
    int (*exec)(struct db *db, const char *sql);
    const char *(*errmsg)(struct db *db);
    int (*errcode)(struct db *db);
    void (*update_hook)(struct db *db, void (*fn)(void *ud, const char *table), void *ud);
    void (*checkpoint)(struct db *db);
    int (*listen)(struct db *db, const char *channel);
    int (*wait_notify)(struct db *db, int timeout_ms);
};

struct db {
    const struct db_ops *ops;
    enum db_dialect dialect;
};

struct db_stmt {
    struct db *db;
};

int db_sqlite_open(const char *path, struct db **out, struct slim_error *err);
int db_pg_open(const char *uri, struct db **out, struct slim_error *err);

#endif

/*
 * db.h - the thin database driver under store.c: SQLite or PostgreSQL.
 *
 * The calls mirror the sqlite3 calls store.c made, one to one, with a
 * db_ prefix (sqlite3_prepare_v3 -> db_prepare, sqlite3_step -> db_step,
 * sqlite3_column_text -> db_column_text, ...), so code written against
 * SQLite converts by name.  store.c keeps its SQL; the few statements
 * that differ between the dialects are chosen with db_dialect() where
 * they are written.  Two drivers implement it: db_sqlite.c (a thin
 * wrapper, SQLite's own behaviour) and db_pg.c (libpq).
 *
 * What the PostgreSQL driver does so that store.c need not know:
 *   - placeholders: "?N" and "?" in the SQL become "$N" (outside quoted
 *     text); a parameter the SQL never names (the counts bind ?1 and ?2
 *     they do not use) is declared text, so the server accepts it;
 *   - binds are copied (text, or binary for blobs) and sent as text;
 *     results are fetched whole when the statement is first stepped, and
 *     db_step walks them; booleans read as 0/1 through db_column_int;
 *   - a statement prepared "persistent" is a named server-side prepared
 *     statement, prepared again after a reconnect; others are sent once;
 *   - SQL of several commands (no parameters) goes by the simple query
 *     protocol: store.c's "BEGIN; SELECT pg_advisory_xact_lock(..)";
 *   - the update hook (sqlite3_update_hook) is called after a statement
 *     that inserted, updated or deleted rows of a table (INSERT INTO t,
 *     UPDATE t, DELETE FROM t), once per statement, with t's name; other
 *     processes' changes come through LISTEN/NOTIFY (db_listen,
 *     db_wait_notify) on a connection of their own;
 *   - a dropped connection fails the statement that found it (SLIM_EIO,
 *     "postgresql: the connection to the server was lost ...") and is
 *     re-established (PQreset) for the next one;
 *   - errors: db_errcode() is an enum slim_errno: SLIM_ENOSPACE (disk
 *     full, SQLSTATE 53100), SLIM_ENOMEM (53200), SLIM_ECONFLICT (unique
 *     violation, 23505), SLIM_EIO otherwise; db_errmsg() starts with
 *     "postgresql: " and gives the server's message.
 * The SQLite driver maps SQLITE_FULL and ENOSPC/EDQUOT under an I/O
 * error to SLIM_ENOSPACE, SQLITE_NOMEM to SLIM_ENOMEM, the rest to
 * SLIM_EIO (what store.c did before this layer), and its messages are
 * SQLite's own.
 *
 * Threads: a struct db is one connection; the caller serializes every
 * call on it (store.c holds its mutex), as with one sqlite3 handle.
 *
 * Adding a schema migration (store.c migrations[] and migrations_pg[]):
 * append one entry to BOTH arrays, at the same index, each in its own
 * dialect (the counts are checked at compile time).  Both only grow:
 * never edit or reorder an entry that shipped.  SQLite runs each step in
 * BEGIN IMMEDIATE with its PRAGMA user_version bump; PostgreSQL runs all
 * pending steps in one transaction holding pg_advisory_xact_lock(
 * STORE_PG_LOCK) and records the version in the one-row table
 * schema_version, so two daemons starting together migrate once.  The
 * dialects differ in types (SQLite INTEGER -> BIGINT, REAL -> DOUBLE
 * PRECISION: SQLite's are 64-bit; TEXT stays TEXT, JSON too, so rows
 * read back the same), in rowid (PostgreSQL tables that are listed in
 * insertion order get a "rowid BIGSERIAL" column of their own) and in
 * functions (strftime -> to_char, json_extract -> ->/->>, instr ->
 * strpos); write the PostgreSQL step with those, and test it under
 * SLIMD_TEST_STORE=postgresql (make check-pg).
 */
#ifndef SLIM_DB_H
#define SLIM_DB_H

#include <stdint.h>
#include "passes/slim.h"

struct db;
struct db_stmt;

enum db_dialect {
    DB_SQLITE = 0,
    DB_POSTGRESQL = 1,
};

/* db_step's results (and db_prepare's, db_exec's, db_reset's 0) */
#define DB_OK 0
#define DB_ERROR 1
#define DB_ROW 100
#define DB_DONE 101

/* 1 when spec names a PostgreSQL database ("postgresql://..." or
 * "postgres://..."). */
int db_spec_is_pg(const char *spec);

/* Opens spec: "sqlite:PATH" (the database file; SQLite in WAL mode,
 * foreign keys, synchronous=FULL, persistent WAL, 5 s busy timeout), or
 * a PostgreSQL connection URI.  *out is a new connection; on failure
 * err says why (SLIM_EIO, SLIM_ENOMEM, SLIM_EINVAL for an unknown
 * scheme) and *out is NULL. */
int db_open(const char *spec, struct db **out, struct slim_error *err);
/* Closes the connection; every statement must be finalized first.  NULL
 * is a no-op. */
void db_close(struct db *db);
enum db_dialect db_dialect(const struct db *db);
/* "sqlite" or "postgresql": for messages. */
const char *db_dialect_name(const struct db *db);

/* Prepares sql (one statement, or several without parameters) into *out.
 * persistent: kept for the connection's life (SQLITE_PREPARE_PERSISTENT;
 * a named prepared statement on PostgreSQL).  DB_OK, or DB_ERROR with
 * db_errmsg/db_errcode set and *out NULL. */
int db_prepare(struct db *db, const char *sql, int persistent, struct db_stmt **out);
/* Parameters are numbered from 1.  Text and blobs are borrowed until the
 * statement is reset (SQLITE_STATIC; the PostgreSQL driver copies).
 * DB_OK or DB_ERROR (db_errmsg says why). */
int db_bind_text(struct db_stmt *s, int i, const char *v);
int db_bind_blob(struct db_stmt *s, int i, const void *v, int len);
int db_bind_int(struct db_stmt *s, int i, int v);
int db_bind_int64(struct db_stmt *s, int i, int64_t v);
int db_bind_double(struct db_stmt *s, int i, double v);
int db_bind_null(struct db_stmt *s, int i);
/* DB_ROW (a row is ready for db_column_*), DB_DONE, or DB_ERROR. */
int db_step(struct db_stmt *s);
/* The current row's columns, from 0.  Text is valid until the next
 * step or reset; NULL for SQL NULL. */
const char *db_column_text(struct db_stmt *s, int col);
int db_column_int(struct db_stmt *s, int col);
int64_t db_column_int64(struct db_stmt *s, int col);
double db_column_double(struct db_stmt *s, int col);
int db_column_is_null(struct db_stmt *s, int col);
/* Ready to step again (bindings kept).  DB_OK, or DB_ERROR when the
 * last step failed (SQLite's sqlite3_reset contract). */
int db_reset(struct db_stmt *s);
/* Every parameter back to NULL. */
void db_clear_bindings(struct db_stmt *s);
/* 1 when the statement writes nothing (a SELECT). */
int db_stmt_readonly(struct db_stmt *s);
/* NULL is a no-op. */
void db_finalize(struct db_stmt *s);
/* Rows changed by the last INSERT, UPDATE or DELETE that completed. */
int64_t db_changes(struct db *db);
/* Runs sql (one or more statements, no parameters, rows discarded).
 * DB_OK or DB_ERROR. */
int db_exec(struct db *db, const char *sql);
/* The last error: its message (never NULL) and its enum slim_errno. */
const char *db_errmsg(struct db *db);
int db_errcode(struct db *db);
/* fn(ud, table) after a row of table was inserted, updated or deleted
 * (SQLite: per row, before the commit; PostgreSQL: per statement that
 * changed rows).  fn NULL removes it. */
void db_update_hook(struct db *db, void (*fn)(void *ud, const char *table), void *ud);
/* SQLite: a passive WAL checkpoint (harmless when it fails); PostgreSQL:
 * nothing. */
void db_checkpoint(struct db *db);
/* Change notices between processes (PostgreSQL's LISTEN/NOTIFY): makes
 * the connection listen on channel (an SQL name, ours: not input).
 * DB_OK, or DB_ERROR (SQLite has none: DB_ERROR). */
int db_listen(struct db *db, const char *channel);
/* Waits up to timeout_ms for a notification on a channel the connection
 * listens on, and consumes every one that came: 1 when any did, 0 when
 * none, -1 when the connection failed (it is reset: listen again, and
 * count notices as missed).  SQLite: -1. */
int db_wait_notify(struct db *db, int timeout_ms);

#endif

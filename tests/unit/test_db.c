/*
 * test_db.c - storage/db.h, the driver layer under store.c, on SQLite
 * and (when SLIMD_TEST_PG_URI names a database, as
 * tests/integration/test_pgstore.py arranges with a private server) on
 * PostgreSQL: the same calls give the same rows, counts and hook calls
 * on both; the PostgreSQL driver's own work is checked too: ?N and ?
 * placeholders (reused, out of order, one the SQL never names),
 * booleans, several commands in one statement, its error values
 * (unique violation SLIM_ECONFLICT, messages naming "postgresql") and a
 * connection that drops (the statement that finds it fails clearly, the
 * next one works, prepared statements included).
 */
#include "tests/unit/util.h"
#include "storage/db.h"

static int hook_calls;
static char hook_table[64];

static void on_change(void *ud, const char *table)
{
    (void)ud;
    hook_calls++;
    snprintf(hook_table, sizeof hook_table, "%s", table);
}

static struct db *open_or_fail(const char *spec)
{
    struct db *db = NULL;
    struct slim_error err;
    if (db_open(spec, &db, &err))
        fail_msg("db_open %s: %s", spec, err.msg);
    return db;
}

static void exec_ok(struct db *db, const char *sql)
{
    if (db_exec(db, sql))
        fail_msg("%s: %s", sql, db_errmsg(db));
}

/* What store.c does with either dialect. */
static void common(struct db *db)
{
    struct db_stmt *s, *ins;
    int pg = db_dialect(db) == DB_POSTGRESQL;

    exec_ok(db, "DROP TABLE IF EXISTS t");
    exec_ok(db, pg ? "CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT, x DOUBLE PRECISION, s TEXT)"
                   : "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, x REAL, s TEXT)");
    db_update_hook(db, on_change, NULL);
    hook_calls = 0;
    assert_int_equal(db_prepare(db, "INSERT INTO t (id, n, x, s) VALUES (?1, ?2, ?3, ?4)", 1,
                                &ins), DB_OK);
    for (int i = 0; i < 3; i++) {
        char id[8];
        snprintf(id, sizeof id, "r%d", i);
        assert_int_equal(db_bind_text(ins, 1, id), DB_OK);
        assert_int_equal(db_bind_int64(ins, 2, (int64_t)i << 40), DB_OK);
        assert_int_equal(db_bind_double(ins, 3, 0.1 * i), DB_OK);
        assert_int_equal(i == 1 ? db_bind_null(ins, 4) : db_bind_text(ins, 4, "it's \"q\""),
                         DB_OK);
        assert_int_equal(db_step(ins), DB_DONE);
        assert_int_equal(db_changes(db), 1);
        assert_int_equal(db_reset(ins), DB_OK);
        db_clear_bindings(ins);
    }
    assert_int_equal(hook_calls, 3);
    assert_string_equal(hook_table, "t");
    assert_false(db_stmt_readonly(ins));
    db_finalize(ins);

    /* ?2 used twice, ?1 once, after it */
    assert_int_equal(db_prepare(db, "SELECT id, n, x, s FROM t WHERE n >= ?2 AND id != ?1"
                                " AND n < ?2 + 1099511627776 * 5 ORDER BY id", 1, &s), DB_OK);
    assert_true(db_stmt_readonly(s));
    db_bind_text(s, 1, "r2");
    db_bind_int64(s, 2, 0);
    assert_int_equal(db_step(s), DB_ROW);
    assert_string_equal(db_column_text(s, 0), "r0");
    assert_string_equal(db_column_text(s, 3), "it's \"q\"");
    assert_int_equal(db_step(s), DB_ROW);
    assert_string_equal(db_column_text(s, 0), "r1");
    assert_true(db_column_int64(s, 1) == (int64_t)1 << 40);
    assert_true(db_column_double(s, 2) > 0.0999 && db_column_double(s, 2) < 0.1001);
    assert_true(db_column_is_null(s, 3));
    assert_null(db_column_text(s, 3));
    assert_int_equal(db_step(s), DB_DONE);
    assert_int_equal(db_reset(s), DB_OK);
    /* stepped again with the same bindings */
    assert_int_equal(db_step(s), DB_ROW);
    db_reset(s);
    db_finalize(s);

    /* an UPDATE's count, the hook once per statement (PostgreSQL) or row */
    hook_calls = 0;
    assert_int_equal(db_prepare(db, "UPDATE t SET s = ?2 WHERE n >= ?1", 0, &s), DB_OK);
    db_bind_int(s, 1, 0);
    db_bind_text(s, 2, "u");
    assert_int_equal(db_step(s), DB_DONE);
    assert_int_equal(db_changes(db), 3);
    assert_int_equal(hook_calls, pg ? 1 : 3);
    db_finalize(s);

    /* a unique violation: SLIM_ECONFLICT on PostgreSQL, SLIM_EIO on
     * SQLite (what store.c always said there) */
    assert_int_equal(db_prepare(db, "INSERT INTO t (id) VALUES (?1)", 0, &s), DB_OK);
    db_bind_text(s, 1, "r0");
    assert_int_equal(db_step(s), DB_ERROR);
    assert_int_equal(db_errcode(db), pg ? SLIM_ECONFLICT : SLIM_EIO);
    if (pg)
        assert_non_null(strstr(db_errmsg(db), "postgresql: "));
    assert_int_equal(db_reset(s), DB_ERROR);
    db_finalize(s);

    /* a transaction rolled back leaves nothing */
    exec_ok(db, "BEGIN");
    exec_ok(db, "DELETE FROM t");
    exec_ok(db, "ROLLBACK");
    assert_int_equal(db_prepare(db, "SELECT count(*) FROM t", 0, &s), DB_OK);
    assert_int_equal(db_step(s), DB_ROW);
    assert_int_equal(db_column_int(s, 0), 3);
    db_finalize(s);
    db_update_hook(db, NULL, NULL);
}

static void test_sqlite(void **state)
{
    char spec[512];
    struct db *db;
    (void)state;
    snprintf(spec, sizeof spec, "sqlite:%s/t.db", test_tmp_dir());
    db = open_or_fail(spec);
    assert_int_equal(db_dialect(db), DB_SQLITE);
    assert_string_equal(db_dialect_name(db), "sqlite");
    common(db);
    db_close(db);
}

static void test_bad_specs(void **state)
{
    struct db *db = (struct db *)1;
    struct slim_error err;
    (void)state;
    assert_int_equal(db_open("mysql://x", &db, &err), SLIM_EINVAL);
    assert_null(db);
    assert_non_null(strstr(err.msg, "sqlite:PATH or postgresql://"));
    assert_int_equal(db_open("sqlite:", &db, &err), SLIM_EINVAL);
    assert_true(db_spec_is_pg("postgres://h/d") && db_spec_is_pg("postgresql://h/d"));
    assert_false(db_spec_is_pg("sqlite:/x"));
    /* nothing listens on port 1: a clear error, the password not shown */
    assert_int_equal(db_open("postgresql://u:secret@127.0.0.1:1/d?connect_timeout=5", &db, &err),
                     SLIM_EIO);
    assert_non_null(strstr(err.msg, "postgresql: cannot connect to"));
    assert_null(strstr(err.msg, "secret"));
}

static const char *pg_uri(void)
{
    const char *u = getenv("SLIMD_TEST_PG_URI");
    return u && *u ? u : NULL;
}

static void test_pg(void **state)
{
    struct db *db;
    struct db_stmt *s;
    (void)state;
    db = open_or_fail(pg_uri());
    assert_int_equal(db_dialect(db), DB_POSTGRESQL);
    common(db);

    /* bare ? numbered in order; ?1 never named: declared text */
    assert_int_equal(db_prepare(db, "SELECT ? || 'x', ? + 1, 1 = 1", 1, &s), DB_OK);
    assert_int_equal(db_bind_text(s, 1, "a"), DB_OK);
    assert_int_equal(db_bind_int(s, 2, 41), DB_OK);
    assert_int_equal(db_bind_int(s, 3, 1), DB_ERROR);   /* only two parameters */
    assert_int_equal(db_step(s), DB_ROW);
    assert_string_equal(db_column_text(s, 0), "ax");
    assert_int_equal(db_column_int(s, 1), 42);
    assert_int_equal(db_column_int(s, 2), 1);          /* a boolean reads 1 */
    db_finalize(s);
    assert_int_equal(db_prepare(db, "SELECT count(*) FROM t WHERE n >= ?2", 1, &s), DB_OK);
    db_bind_text(s, 1, "unused");
    db_bind_int(s, 2, 0);
    assert_int_equal(db_step(s), DB_ROW);
    assert_int_equal(db_column_int(s, 0), 3);
    db_finalize(s);
    /* a '?' in quoted text is text */
    assert_int_equal(db_prepare(db, "SELECT '?1' || ?1", 0, &s), DB_OK);
    db_bind_text(s, 1, "!");
    assert_int_equal(db_step(s), DB_ROW);
    assert_string_equal(db_column_text(s, 0), "?1!");
    db_finalize(s);
    /* several commands: DB_DONE, a transaction left open */
    assert_int_equal(db_prepare(db, "BEGIN; SELECT pg_advisory_xact_lock(42)", 1, &s), DB_OK);
    assert_int_equal(db_step(s), DB_DONE);
    db_finalize(s);
    exec_ok(db, "COMMIT");
    db_close(db);
}

/* A connection the server drops: the statement that finds it fails with
 * a message that says so; the next works, a prepared one included. */
static void test_pg_reconnect(void **state)
{
    struct db *db, *other;
    struct db_stmt *pid, *kill, *q;
    int backend;
    (void)state;
    db = open_or_fail(pg_uri());
    other = open_or_fail(pg_uri());
    assert_int_equal(db_prepare(db, "SELECT pg_backend_pid()", 1, &pid), DB_OK);
    assert_int_equal(db_prepare(db, "SELECT ?1::int + 1", 1, &q), DB_OK);
    assert_int_equal(db_step(pid), DB_ROW);
    backend = db_column_int(pid, 0);
    db_reset(pid);
    assert_int_equal(db_prepare(other, "SELECT pg_terminate_backend(?1)", 0, &kill), DB_OK);
    db_bind_int(kill, 1, backend);
    assert_int_equal(db_step(kill), DB_ROW);
    assert_int_equal(db_column_int(kill, 0), 1);
    db_finalize(kill);
    usleep(200 * 1000);   /* the backend goes */
    db_bind_int(q, 1, 1);
    assert_int_equal(db_step(q), DB_ERROR);
    assert_int_equal(db_errcode(db), SLIM_EIO);
    assert_non_null(strstr(db_errmsg(db), "postgresql: the connection to the server was lost"));
    db_reset(q);
    assert_int_equal(db_step(q), DB_ROW);
    assert_int_equal(db_column_int(q, 0), 2);
    db_reset(q);
    assert_int_equal(db_step(pid), DB_ROW);
    assert_int_not_equal(db_column_int(pid, 0), backend);
    db_finalize(pid);
    db_finalize(q);
    db_close(other);
    db_close(db);
}

/* The PostgreSQL cases run only with a database to run on (cmocka's
 * skip() reads as a failure to automake's TAP driver): they are then
 * left out of the plan, and test_pgstore.py checks that all 4 ran. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sqlite),
        cmocka_unit_test(test_bad_specs),
        cmocka_unit_test(test_pg),
        cmocka_unit_test(test_pg_reconnect),
    };
    return _cmocka_run_group_tests("tests", tests, pg_uri() ? 4 : 2, NULL, NULL);
}

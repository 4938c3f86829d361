/*
 * test_storage.c - storage/: the database (open, migrate from every
 * earlier schema, reopen), model and dataset rows, the blob store
 * (hashing, dedup, no temp file left behind, blobs shared by models,
 * datasets and artifacts), the job queue's state machine, crash
 * recovery, model and dataset deletion against jobs that use them,
 * concurrent claims from two connections, bearer tokens (hashing,
 * verification, revocation, the secret never stored) and the owner
 * filter of the lists.  Each test works in its own
 * data dir under the program's temp dir.
 */
#include <dirent.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sqlite3.h>
#include "tests/unit/util.h"
#include "tests/unit/full_vfs.h"
#include "storage/store.h"

#define SHA_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* A fresh data dir path (not created: store_open must do that). */
static const char *data_dir(const char *name)
{
    static char path[4][512];
    static int slot;
    char *p = path[slot++ & 3];
    snprintf(p, 512, "%s/%s/nested", test_tmp_dir(), name);
    return p;
}

static struct store *open_store(const char *dir)
{
    struct store *st = NULL;
    struct slim_error err;
    if (store_open(dir, &st, &err))
        fail_msg("store_open %s: %s", dir, err.msg);
    return st;
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    assert_non_null(d);
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static int tmp_files(struct store *st)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tmp", store_data_dir(st));
    return count_files(path);
}

static int blob_exists(struct store *st, const char *sha)
{
    char path[4096];
    store_blob_path(st, sha, path, sizeof path);
    return path[0] && access(path, F_OK) == 0;
}

/* Commits a blob holding text; returns its sha in a rotating buffer. */
static const char *put_blob(struct store *st, const char *text)
{
    static char sha[4][65];
    static int slot;
    char *s = sha[slot++ & 3];
    struct blob_writer *bw;
    struct slim_error err;
    if (store_blob_begin(st, &bw, &err) || store_blob_write(bw, text, strlen(text), &err) ||
        store_blob_commit(bw, s, &err))
        fail_msg("blob: %s", err.msg);
    return s;
}

/* Inserts a model row over a blob of text; returns its id (static). */
static const char *put_model(struct store *st, const char *name, const char *text)
{
    static char id[4][32];
    static int slot;
    char *p = id[slot++ & 3];
    const char *sha = put_blob(st, text);
    json_t *info = json_pack("{s:s, s:i, s:i}", "format", "safetensors", "tensors", 3,
                             "params", 1000), *row;
    struct slim_error err;
    if (store_model_insert(st, NULL, name, sha, strlen(text), info, &row, &err))
        fail_msg("model insert: %s", err.msg);
    snprintf(p, 32, "%s", json_string_value(json_object_get(row, "id")));
    json_decref(row);
    json_decref(info);
    return p;
}

/* Inserts a queued job on model; returns its id (static). */
static const char *put_job(struct store *st, const char *model)
{
    static char id[8][32];
    static int slot;
    char *p = id[slot++ & 7];
    json_t *spec = json_pack("{s:s, s:[{s:s, s:s}]}", "model", model, "passes", "op",
                             "quantize", "dtype", "int8"), *row;
    struct slim_error err;
    if (store_job_insert(st, NULL, model, NULL, spec, 0, 0, &row, &err))
        fail_msg("job insert: %s", err.msg);
    snprintf(p, 32, "%s", json_string_value(json_object_get(row, "id")));
    json_decref(row);
    json_decref(spec);
    return p;
}

static json_t *get_job(struct store *st, const char *id)
{
    struct slim_error err;
    json_t *row;
    if (store_job_get(st, id, &row, &err))
        fail_msg("job get %s: %s", id, err.msg);
    return row;
}

static const char *sfield(json_t *row, const char *key)
{
    return json_string_value(json_object_get(row, key));
}

static void assert_rfc3339(const char *t)
{
    assert_non_null(t);
    assert_int_equal(strlen(t), 20);
    assert_true(t[4] == '-' && t[7] == '-' && t[10] == 'T' && t[13] == ':' && t[19] == 'Z');
}

static void assert_id(const char *id, const char *prefix)
{
    size_t n = strlen(prefix);
    assert_non_null(id);
    assert_memory_equal(id, prefix, n);
    assert_int_equal(strlen(id), n + 16);
    assert_int_equal(strspn(id + n, "0123456789abcdef"), 16);
}

/* Claims one job and checks it is the one expected. */
static void claim_expect(struct store *st, const char *id)
{
    struct slim_error err;
    json_t *row;
    if (store_job_claim(st, UINT64_MAX, &row, &err))
        fail_msg("claim: %s", err.msg);
    assert_string_equal(sfield(row, "id"), id);
    assert_string_equal(sfield(row, "state"), "running");
    json_decref(row);
}

/* The schema version store.c migrates to. */
#define LATEST 9   /* schema version after every migration */

/* The schema as earlier slimd versions left it, frozen here as they
 * shipped (store.c's migrations[0] and [1]), so a migration is tested
 * from what a real old database holds. */
static const char *const schema_v1 =
    "CREATE TABLE models ("
    "  id TEXT PRIMARY KEY,"
    "  kind TEXT NOT NULL CHECK (kind IN ('model', 'dataset')),"
    "  name TEXT NOT NULL,"
    "  format TEXT NOT NULL,"
    "  bytes INTEGER NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  info TEXT NOT NULL,"
    "  created_at TEXT NOT NULL);"
    "CREATE INDEX models_sha256 ON models(sha256);"
    "CREATE TABLE jobs ("
    "  id TEXT PRIMARY KEY,"
    "  seq INTEGER NOT NULL UNIQUE,"
    "  model_id TEXT REFERENCES models(id) ON DELETE SET NULL,"
    "  state INTEGER NOT NULL DEFAULT 0,"
    "  progress REAL NOT NULL DEFAULT 0,"
    "  stage TEXT,"
    "  error TEXT,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0,"
    "  spec TEXT NOT NULL,"
    "  report TEXT,"
    "  artifact_sha TEXT,"
    "  artifact_bytes INTEGER,"
    "  created_at TEXT NOT NULL,"
    "  started_at TEXT,"
    "  finished_at TEXT);"
    "CREATE INDEX jobs_state ON jobs(state, seq);"
    "CREATE INDEX jobs_model ON jobs(model_id);"
    "CREATE INDEX jobs_artifact ON jobs(artifact_sha);";
static const char *const schema_v2 = "ALTER TABLE jobs ADD COLUMN mem_bytes INTEGER NOT NULL DEFAULT 0;";
static const char *const schema_v3 =
    "CREATE TABLE datasets ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  format TEXT NOT NULL,"
    "  bytes INTEGER NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  info TEXT NOT NULL,"
    "  created_at TEXT NOT NULL);"
    "CREATE INDEX datasets_sha256 ON datasets(sha256);"
    "INSERT INTO datasets (id, name, format, bytes, sha256, info, created_at)"
    "  SELECT id, name, format, bytes, sha256, info, created_at FROM models"
    "  WHERE kind = 'dataset' ORDER BY rowid;"
    "DELETE FROM models WHERE kind = 'dataset';"
    "ALTER TABLE jobs ADD COLUMN dataset_id TEXT REFERENCES datasets(id) ON DELETE SET NULL;"
    "CREATE INDEX jobs_dataset ON jobs(dataset_id);";

/* Creates dir (and its parent) holding a database at `version` (1 to 3)
 * with the rows that rows_sql inserts. */
static void make_old_db(const char *dir, int version, const char *rows_sql)
{
    char path[4096], bump[40];
    sqlite3 *db;
    snprintf(path, sizeof path, "%s", dir);
    *strrchr(path, '/') = 0;
    mkdir(path, 0750);
    mkdir(dir, 0750);
    snprintf(path, sizeof path, "%s/slimd.db", dir);
    snprintf(bump, sizeof bump, "PRAGMA user_version = %d", version);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, schema_v1, NULL, NULL, NULL), SQLITE_OK);
    if (version >= 2)
        assert_int_equal(sqlite3_exec(db, schema_v2, NULL, NULL, NULL), SQLITE_OK);
    if (version >= 3)
        assert_int_equal(sqlite3_exec(db, schema_v3, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, rows_sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, bump, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static int schema_version(const char *dir)
{
    char path[4096];
    sqlite3 *db;
    sqlite3_stmt *s;
    int v;
    snprintf(path, sizeof path, "%s/slimd.db", dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    v = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

static void test_open_migrate_reopen(void **state)
{
    (void)state;
    const char *dir = data_dir("reopen");
    struct store *st = open_store(dir);
    char path[4096];
    struct stat sb;
    sqlite3 *db;
    sqlite3_stmt *s;
    json_t *row;
    struct slim_error err;
    const char *id;

    snprintf(path, sizeof path, "%s/blobs", dir);
    assert_int_equal(stat(path, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    snprintf(path, sizeof path, "%s/tmp", dir);
    assert_int_equal(stat(path, &sb), 0);
    assert_string_equal(store_data_dir(st), dir);
    id = put_model(st, "kept", "weights");
    store_close(st);

    /* a leftover temp file from a "crash" is purged at open */
    snprintf(path, sizeof path, "%s/tmp/upload-stale", dir);
    fclose(fopen(path, "w"));
    st = open_store(dir);
    assert_int_equal(tmp_files(st), 0);
    assert_int_equal(store_model_get(st, id, &row, &err), 0);
    assert_string_equal(sfield(row, "name"), "kept");
    json_decref(row);
    store_close(st);

    snprintf(path, sizeof path, "%s/slimd.db", dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), LATEST);
    sqlite3_finalize(s);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    /* a schema from a newer slimd is refused, not silently used */
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    st = NULL;
    assert_int_equal(store_open(dir, &st, &err), SLIM_EIO);
    assert_non_null(strstr(err.msg, "version 99"));
    assert_null(st);
}

static void test_models(void **state)
{
    (void)state;
    struct store *st = open_store(data_dir("models"));
    struct slim_error err;
    json_t *info = json_pack("{s:s, s:i, s:i, s:{}}", "format", "safetensors", "tensors", 7,
                             "params", 123456, "dtypes"), *row, *rows;
    const char *sha = put_blob(st, "abc"), *a, *b, *c;
    int total;

    assert_int_equal(store_model_insert(st, NULL, "tiny", sha, 3, info, &row, &err), 0);
    assert_id(sfield(row, "id"), "mdl_");
    assert_string_equal(sfield(row, "name"), "tiny");
    assert_string_equal(sfield(row, "kind"), "model");
    assert_string_equal(sfield(row, "format"), "safetensors");
    assert_string_equal(sfield(row, "sha256"), SHA_ABC);
    assert_int_equal(json_integer_value(json_object_get(row, "bytes")), 3);
    assert_int_equal(json_integer_value(json_object_get(row, "tensors")), 7);
    assert_int_equal(json_integer_value(json_object_get(row, "params")), 123456);
    assert_rfc3339(sfield(row, "created_at"));
    a = json_string_value(json_object_get(row, "id"));

    json_t *got;
    assert_int_equal(store_model_get(st, a, &got, &err), 0);
    assert_true(json_equal(got, row));
    json_decref(got);
    json_decref(row);

    /* the blob must be committed first */
    assert_int_equal(store_model_insert(st, NULL, "x", SHA_EMPTY, 0, info, &row, &err), SLIM_EIO);
    /* a name that is not UTF-8 would break the JSON */
    assert_int_equal(store_model_insert(st, NULL, "\xff\xfe", sha, 3, info, &row, &err), SLIM_EINVAL);
    json_decref(info);

    a = put_model(st, "first", "1");
    b = put_model(st, "second", "2");
    c = put_model(st, "third", "3");
    assert_int_equal(store_model_list(st, NULL, 2, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 4);
    assert_int_equal(json_array_size(rows), 2);
    assert_string_equal(sfield(json_array_get(rows, 0), "id"), c);
    assert_string_equal(sfield(json_array_get(rows, 1), "id"), b);
    json_decref(rows);
    assert_int_equal(store_model_list(st, NULL, 2, 2, &rows, &total, &err), 0);
    assert_int_equal(json_array_size(rows), 2);
    assert_string_equal(sfield(json_array_get(rows, 0), "id"), a);
    assert_string_equal(sfield(json_array_get(rows, 1), "name"), "tiny");
    json_decref(rows);

    /* a "kind" in the describe object no longer makes a dataset */
    info = json_pack("{s:s, s:s}", "kind", "dataset", "format", "safetensors");
    assert_int_equal(store_model_insert(st, NULL, "evalset", sha, 3, info, &row, &err), 0);
    json_decref(info);
    assert_id(sfield(row, "id"), "mdl_");
    assert_string_equal(sfield(row, "kind"), "model");
    assert_int_equal(store_model_delete(st, sfield(row, "id"), &err), 0);
    json_decref(row);

    assert_int_equal(store_model_delete(st, b, &err), 0);
    assert_int_equal(store_model_get(st, b, &row, &err), SLIM_ENOTFOUND);
    assert_int_equal(err.code, SLIM_ENOTFOUND);
    assert_non_null(strstr(err.msg, b));
    assert_int_equal(store_model_delete(st, b, &err), SLIM_ENOTFOUND);
    assert_int_equal(store_model_list(st, NULL, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 3);
    assert_int_equal(json_array_size(rows), 3);
    json_decref(rows);
    store_close(st);
}

static void test_migrate_from_v1(void **state)
{
    /* a version-1 database (before jobs.mem_bytes) with a queued job
     * migrates to the latest, and the job reads back reserving nothing
     * and evaluating on nothing */
    (void)state;
    const char *dir = data_dir("v1");
    struct slim_error err;
    struct store *st;
    json_t *row;
    make_old_db(dir, 1,
                "INSERT INTO models VALUES ('mdl_00000000000000a1', 'model', 'old', 'safetensors',"
                " 3, '" SHA_ABC "', '{\"format\":\"safetensors\",\"tensors\":1,\"params\":1}',"
                " '2026-01-01T00:00:00Z');"
                "INSERT INTO jobs (id, seq, model_id, spec, created_at) VALUES"
                " ('job_00000000000000a1', 1, 'mdl_00000000000000a1',"
                " '{\"model\":\"mdl_00000000000000a1\",\"passes\":[]}', '2026-01-01T00:00:00Z');");
    st = open_store(dir);
    assert_int_equal(schema_version(dir), LATEST);
    row = get_job(st, "job_00000000000000a1");
    assert_string_equal(sfield(row, "state"), "queued");
    assert_string_equal(sfield(row, "model"), "mdl_00000000000000a1");
    assert_int_equal(json_integer_value(json_object_get(row, "memory_bytes")), 0);
    assert_true(json_is_null(json_object_get(row, "dataset")));
    json_decref(row);
    assert_int_equal(store_model_get(st, "mdl_00000000000000a1", &row, &err), 0);
    assert_string_equal(sfield(row, "name"), "old");
    json_decref(row);
    claim_expect(st, "job_00000000000000a1");
    store_close(st);
}

static void test_migrate_from_v2(void **state)
{
    /* version 2 -> 3: a dataset row the models table held (kind
     * 'dataset') moves to the datasets table with its id, the models
     * keep theirs, jobs keep their memory and gain "dataset": null, and
     * the migrated dataset can be a job's from then on */
    (void)state;
    const char *dir = data_dir("v2");
    struct slim_error err;
    struct store *st;
    json_t *row, *rows, *spec;
    int total;
    make_old_db(dir, 2,
                "INSERT INTO models VALUES ('mdl_00000000000000b2', 'model', 'm', 'safetensors',"
                " 3, '" SHA_ABC "', '{\"format\":\"safetensors\",\"tensors\":1,\"params\":1}',"
                " '2026-01-01T00:00:00Z');"
                "INSERT INTO models VALUES ('ds_00000000000000b2', 'dataset', 'evalset',"
                " 'safetensors', 3, '" SHA_ABC "', '{\"format\":\"safetensors\",\"samples\":3}',"
                " '2026-01-02T00:00:00Z');"
                "INSERT INTO jobs (id, seq, model_id, spec, created_at, mem_bytes) VALUES"
                " ('job_00000000000000b2', 1, 'mdl_00000000000000b2',"
                " '{\"model\":\"mdl_00000000000000b2\",\"passes\":[]}', '2026-01-01T00:00:00Z', 7);");
    st = open_store(dir);
    assert_int_equal(schema_version(dir), LATEST);
    row = get_job(st, "job_00000000000000b2");
    assert_int_equal(json_integer_value(json_object_get(row, "memory_bytes")), 7);
    assert_true(json_is_null(json_object_get(row, "dataset")));
    json_decref(row);
    assert_int_equal(store_model_list(st, NULL, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 1);
    assert_string_equal(sfield(json_array_get(rows, 0), "id"), "mdl_00000000000000b2");
    json_decref(rows);
    assert_int_equal(store_model_get(st, "ds_00000000000000b2", &row, &err), SLIM_ENOTFOUND);
    assert_int_equal(store_dataset_list(st, NULL, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 1);
    row = json_array_get(rows, 0);
    assert_string_equal(sfield(row, "id"), "ds_00000000000000b2");
    assert_string_equal(sfield(row, "name"), "evalset");
    assert_string_equal(sfield(row, "sha256"), SHA_ABC);
    assert_string_equal(sfield(row, "created_at"), "2026-01-02T00:00:00Z");
    assert_int_equal(json_integer_value(json_object_get(row, "samples")), 3);
    json_decref(rows);
    spec = json_object();
    assert_int_equal(store_job_insert(st, NULL, "mdl_00000000000000b2", "ds_00000000000000b2", spec, 0,
                                      0, &row, &err), 0);
    assert_string_equal(sfield(row, "dataset"), "ds_00000000000000b2");
    json_decref(row);
    json_decref(spec);
    assert_int_equal(store_dataset_delete(st, "ds_00000000000000b2", &err), SLIM_ECONFLICT);
    store_close(st);
    /* reopening migrates nothing more */
    st = open_store(dir);
    assert_int_equal(schema_version(dir), LATEST);
    store_close(st);
}

static void test_migrate_from_v3(void **state)
{
    /* version 3 -> 4: tokens arrive (none yet), and every model,
     * dataset and job made before them has no owner: an admin (owner
     * filter NULL) lists them, a token's filter does not, and rows made
     * from then on can name their token */
    (void)state;
    const char *dir = data_dir("v3");
    char secret[STORE_TOKEN_LEN + 1];
    struct slim_error err;
    struct store *st;
    json_t *row, *rows, *spec;
    int64_t live = -1;
    int total;
    make_old_db(dir, 3,
                "INSERT INTO models VALUES ('mdl_00000000000000c3', 'model', 'm', 'safetensors',"
                " 3, '" SHA_ABC "', '{\"format\":\"safetensors\",\"tensors\":1,\"params\":1}',"
                " '2026-01-01T00:00:00Z');"
                "INSERT INTO datasets VALUES ('ds_00000000000000c3', 'd', 'safetensors', 3,"
                " '" SHA_ABC "', '{\"format\":\"safetensors\",\"samples\":3}',"
                " '2026-01-02T00:00:00Z');"
                "INSERT INTO jobs (id, seq, model_id, spec, created_at, mem_bytes, dataset_id)"
                " VALUES ('job_00000000000000c3', 1, 'mdl_00000000000000c3',"
                " '{\"model\":\"mdl_00000000000000c3\",\"passes\":[]}', '2026-01-01T00:00:00Z',"
                " 5, 'ds_00000000000000c3');");
    st = open_store(dir);
    assert_int_equal(schema_version(dir), LATEST);
    assert_int_equal(store_token_count_live(st, &live, &err), 0);
    assert_int_equal(live, 0);
    row = get_job(st, "job_00000000000000c3");
    assert_true(json_is_null(json_object_get(row, "owner")));
    assert_string_equal(sfield(row, "dataset"), "ds_00000000000000c3");
    assert_int_equal(json_integer_value(json_object_get(row, "memory_bytes")), 5);
    json_decref(row);
    assert_int_equal(store_model_get(st, "mdl_00000000000000c3", &row, &err), 0);
    assert_true(json_is_null(json_object_get(row, "owner")));
    json_decref(row);
    assert_int_equal(store_dataset_get(st, "ds_00000000000000c3", &row, &err), 0);
    assert_true(json_is_null(json_object_get(row, "owner")));
    json_decref(row);
    assert_int_equal(store_model_list(st, NULL, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 1);
    json_decref(rows);
    assert_int_equal(store_job_list(st, "tok_00000000000000c3", -1, 10, 0, &rows, &total, &err),
                     0);
    assert_int_equal(total, 0);
    assert_int_equal(json_array_size(rows), 0);
    json_decref(rows);
    /* a token made after the migration owns what it makes */
    assert_int_equal(store_token_create(st, "ci", STORE_SCOPE_SUBMIT, secret, &row, &err), 0);
    char tok[32];
    snprintf(tok, sizeof tok, "%s", sfield(row, "id"));
    json_decref(row);
    spec = json_object();
    assert_int_equal(store_job_insert(st, tok, "mdl_00000000000000c3", NULL, spec, 0, 0, &row,
                                      &err), 0);
    assert_string_equal(sfield(row, "owner"), tok);
    json_decref(row);
    json_decref(spec);
    assert_int_equal(store_job_list(st, tok, -1, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 1);
    json_decref(rows);
    store_close(st);
    /* reopening migrates nothing more */
    st = open_store(dir);
    assert_int_equal(schema_version(dir), LATEST);
    store_close(st);
}

/* Inserts a dataset row over a blob of text; returns its id (static). */
static const char *put_dataset(struct store *st, const char *name, const char *text)
{
    static char id[4][32];
    static int slot;
    char *p = id[slot++ & 3];
    const char *sha = put_blob(st, text);
    json_t *info = json_pack("{s:s, s:i, s:[i], s:s, s:b, s:i}", "format", "safetensors",
                             "samples", 3, "input_shape", 4, "input_dtype", "F32", "labels", 1,
                             "classes", 2), *row;
    struct slim_error err;
    if (store_dataset_insert(st, NULL, name, sha, strlen(text), info, &row, &err))
        fail_msg("dataset insert: %s", err.msg);
    snprintf(p, 32, "%s", json_string_value(json_object_get(row, "id")));
    json_decref(row);
    json_decref(info);
    return p;
}

static void test_datasets(void **state)
{
    (void)state;
    struct store *st = open_store(data_dir("datasets"));
    struct slim_error err;
    json_t *info = json_pack("{s:s, s:i, s:[i, i], s:s, s:b, s:i, s:s, s:i, s:s}",
                             "format", "safetensors", "samples", 3, "input_shape", 2, 2,
                             "input_dtype", "F32", "labels", 1, "classes", 10, "source", "idx",
                             "bytes", 999, "id", "ds_forged"), *row, *got, *rows;
    const char *sha = put_blob(st, "abc"), *a, *b, *c;
    char id[32];
    int total;

    assert_int_equal(store_dataset_insert(st, NULL, "digits", sha, 3, info, &row, &err), 0);
    assert_id(sfield(row, "id"), "ds_");
    assert_string_equal(sfield(row, "name"), "digits");
    assert_string_equal(sfield(row, "format"), "safetensors");
    assert_string_equal(sfield(row, "sha256"), SHA_ABC);
    assert_rfc3339(sfield(row, "created_at"));
    /* the columns win over keys of info with their names */
    assert_int_equal(json_integer_value(json_object_get(row, "bytes")), 3);
    assert_int_equal(json_integer_value(json_object_get(row, "samples")), 3);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(row, "input_shape"), 1)), 2);
    assert_true(json_is_true(json_object_get(row, "labels")));
    assert_int_equal(json_integer_value(json_object_get(row, "classes")), 10);
    assert_string_equal(sfield(row, "source"), "idx");
    snprintf(id, sizeof id, "%s", sfield(row, "id"));
    assert_int_equal(store_dataset_get(st, id, &got, &err), 0);
    assert_true(json_equal(got, row));
    json_decref(got);
    json_decref(row);

    /* the blob must be committed first; names are UTF-8; info has a format */
    assert_int_equal(store_dataset_insert(st, NULL, "x", SHA_EMPTY, 0, info, &row, &err), SLIM_EIO);
    assert_int_equal(store_dataset_insert(st, NULL, "\xff\xfe", sha, 3, info, &row, &err), SLIM_EINVAL);
    json_decref(info);
    info = json_object();
    assert_int_equal(store_dataset_insert(st, NULL, "x", sha, 3, info, &row, &err), SLIM_EINVAL);
    json_decref(info);

    /* newest first, paginated; models and datasets do not mix */
    a = put_dataset(st, "first", "1");
    b = put_dataset(st, "second", "2");
    c = put_dataset(st, "third", "3");
    assert_int_equal(store_dataset_list(st, NULL, 2, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 4);
    assert_int_equal(json_array_size(rows), 2);
    assert_string_equal(sfield(json_array_get(rows, 0), "id"), c);
    assert_string_equal(sfield(json_array_get(rows, 1), "id"), b);
    json_decref(rows);
    assert_int_equal(store_dataset_list(st, NULL, 2, 2, &rows, &total, &err), 0);
    assert_int_equal(json_array_size(rows), 2);
    assert_string_equal(sfield(json_array_get(rows, 0), "id"), a);
    assert_string_equal(sfield(json_array_get(rows, 1), "id"), id);
    json_decref(rows);
    assert_int_equal(store_model_list(st, NULL, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 0);
    json_decref(rows);
    assert_int_equal(store_model_get(st, a, &row, &err), SLIM_ENOTFOUND);
    const char *m = put_model(st, "m", "model");
    assert_int_equal(store_dataset_get(st, m, &row, &err), SLIM_ENOTFOUND);
    assert_int_equal(store_dataset_delete(st, m, &err), SLIM_ENOTFOUND);
    /* nor can a dataset be a job's model */
    info = json_object();
    assert_int_equal(store_job_insert(st, NULL, a, NULL, info, 0, 0, &row, &err), SLIM_ENOTFOUND);
    json_decref(info);

    assert_int_equal(store_dataset_delete(st, b, &err), 0);
    assert_int_equal(store_dataset_get(st, b, &row, &err), SLIM_ENOTFOUND);
    {
        char want[96];
        snprintf(want, sizeof want, "dataset %s does not exist", b);
        assert_string_equal(err.msg, want);
    }
    assert_int_equal(store_dataset_delete(st, b, &err), SLIM_ENOTFOUND);
    assert_int_equal(store_dataset_list(st, NULL, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 3);
    json_decref(rows);
    store_close(st);
}

static void test_dataset_blobs_shared(void **state)
{
    /* one blob under a model, a dataset and an artifact: it goes with
     * the last of them, in any order; an upload whose row never came
     * drops its blob unless something else names it */
    (void)state;
    struct store *st = open_store(data_dir("dsblobs"));
    struct slim_error err;
    const char *same = "same bytes", *m, *d, *j, *sha = put_blob(st, same);
    char msha[65];
    json_t *rep;

    snprintf(msha, sizeof msha, "%s", sha);
    m = put_model(st, "m", same);
    d = put_dataset(st, "d", same);
    assert_int_equal(store_dataset_delete(st, d, &err), 0);
    assert_true(blob_exists(st, msha));
    d = put_dataset(st, "d", same);
    assert_int_equal(store_model_delete(st, m, &err), 0);
    assert_true(blob_exists(st, msha));
    assert_int_equal(store_dataset_delete(st, d, &err), 0);
    assert_false(blob_exists(st, msha));

    /* an artifact with the dataset's bytes keeps the blob */
    m = put_model(st, "m2", "other model");
    d = put_dataset(st, "d2", same);
    j = put_job(st, m);
    claim_expect(st, j);
    rep = json_object();
    assert_int_equal(store_job_succeed(st, j, msha, 10, rep, &err), 0);
    json_decref(rep);
    assert_int_equal(store_dataset_delete(st, d, &err), 0);
    assert_true(blob_exists(st, msha));

    /* store_blob_drop_unused */
    sha = put_blob(st, "orphan");
    snprintf(msha, sizeof msha, "%s", sha);
    store_blob_drop_unused(st, msha);
    assert_false(blob_exists(st, msha));
    d = put_dataset(st, "kept", "kept bytes");
    sha = put_blob(st, "kept bytes");
    store_blob_drop_unused(st, sha);
    assert_true(blob_exists(st, sha));
    store_close(st);
}

static void test_dataset_delete_and_jobs(void **state)
{
    (void)state;
    struct store *st = open_store(data_dir("dsdelete"));
    struct slim_error err;
    const char *m = put_model(st, "m", "the model");
    char d[32], dsha[65], want[200];
    json_t *spec = json_pack("{s:s, s:[{s:s, s:s}], s:{s:s}}", "model", m, "passes", "op",
                             "quantize", "dtype", "int8", "eval", "dataset", "ds_x"), *row;
    const char *j0 = put_job(st, m);
    char jd[32];
    int total;

    snprintf(d, sizeof d, "%s", put_dataset(st, "evalset", "dataset bytes"));
    assert_int_equal(store_dataset_get(st, d, &row, &err), 0);
    snprintf(dsha, sizeof dsha, "%s", sfield(row, "sha256"));
    json_decref(row);
    row = get_job(st, j0);
    assert_true(json_is_null(json_object_get(row, "dataset")));
    json_decref(row);

    /* a missing dataset inserts nothing and is named; a missing model first */
    assert_int_equal(store_job_insert(st, NULL, m, "ds_0000000000000000", spec, 0, 0, &row, &err),
                     SLIM_ENOTFOUND);
    assert_string_equal(err.msg, "dataset ds_0000000000000000 does not exist");
    assert_int_equal(store_job_insert(st, NULL, "mdl_0000000000000000", "ds_0000000000000000", spec,
                                      0, 0, &row, &err), SLIM_ENOTFOUND);
    assert_non_null(strstr(err.msg, "model mdl_0000000000000000"));
    assert_int_equal(store_job_list(st, NULL, -1, 10, 0, &row, &total, &err), 0);
    assert_int_equal(total, 1);
    json_decref(row);
    /* a full queue is still told apart */
    assert_int_equal(store_job_insert(st, NULL, m, d, spec, 0, 1, &row, &err), SLIM_EBUSY);

    assert_int_equal(store_job_insert(st, NULL, m, d, spec, 0, 0, &row, &err), 0);
    assert_string_equal(sfield(row, "dataset"), d);
    snprintf(jd, sizeof jd, "%s", sfield(row, "id"));
    json_decref(row);

    assert_int_equal(store_dataset_delete(st, d, &err), SLIM_ECONFLICT);
    snprintf(want, sizeof want, "dataset %s is used by job %s (queued); cancel it or wait", d, jd);
    assert_string_equal(err.msg, want);
    claim_expect(st, j0);
    claim_expect(st, jd);
    assert_int_equal(store_dataset_delete(st, d, &err), SLIM_ECONFLICT);
    assert_non_null(strstr(err.msg, "(running)"));
    assert_true(blob_exists(st, dsha));
    assert_int_equal(store_job_fail(st, jd, SLIM_EIO, "boom", &err), 0);

    /* finished: the dataset goes, the job keeps its spec and shows null */
    assert_int_equal(store_dataset_delete(st, d, &err), 0);
    assert_false(blob_exists(st, dsha));
    row = get_job(st, jd);
    assert_true(json_is_null(json_object_get(row, "dataset")));
    assert_string_equal(sfield(row, "model"), m);
    assert_non_null(json_object_get(json_object_get(row, "spec"), "eval"));
    json_decref(row);
    json_decref(spec);
    store_close(st);
}

static void test_blob_sha_and_dedup(void **state)
{
    (void)state;
    struct store *st = open_store(data_dir("blobs"));
    struct blob_writer *bw;
    struct slim_error err;
    char sha[65], sha2[65], path[4096], tmp[4096], buf[8];
    uint64_t bytes = 0;
    FILE *f;

    assert_int_equal(store_blob_begin(st, &bw, &err), 0);
    assert_int_equal(tmp_files(st), 1);
    assert_non_null(strstr(store_blob_temp_path(bw), "/tmp/"));
    assert_int_equal(store_blob_write(bw, "a", 1, &err), 0);
    assert_int_equal(store_blob_write(bw, "bc", 2, &err), 0);
    assert_int_equal(store_blob_bytes(bw), 3);
    assert_int_equal(store_blob_commit(bw, sha, &err), 0);
    assert_string_equal(sha, SHA_ABC);
    assert_int_equal(tmp_files(st), 0);
    store_blob_path(st, sha, path, sizeof path);
    assert_non_null(strstr(path, "/blobs/ba/" SHA_ABC));
    f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(buf, 1, sizeof buf, f), 3);
    assert_memory_equal(buf, "abc", 3);
    fclose(f);

    /* same content again: same name, one file, no temp left */
    assert_int_equal(store_blob_begin(st, &bw, &err), 0);
    assert_int_equal(store_blob_write(bw, "abc", 3, &err), 0);
    assert_int_equal(store_blob_commit(bw, sha2, &err), 0);
    assert_string_equal(sha2, SHA_ABC);
    snprintf(tmp, sizeof tmp, "%s/blobs/ba", store_data_dir(st));
    assert_int_equal(count_files(tmp), 1);
    assert_int_equal(tmp_files(st), 0);

    /* empty blob */
    assert_int_equal(store_blob_begin(st, &bw, &err), 0);
    assert_int_equal(store_blob_commit(bw, sha, &err), 0);
    assert_string_equal(sha, SHA_EMPTY);

    /* abort leaves nothing */
    assert_int_equal(store_blob_begin(st, &bw, &err), 0);
    assert_int_equal(store_blob_write(bw, "discard me", 10, &err), 0);
    store_blob_abort(bw);
    assert_int_equal(tmp_files(st), 0);

    /* adopt a file written into tmp/, larger than one 1 MiB read */
    assert_int_equal(store_tmp_path(st, ".safetensors", tmp, sizeof tmp), 0);
    assert_int_equal(store_tmp_path(st, ".safetensors", path, sizeof path), 0);
    assert_string_not_equal(tmp, path);
    assert_non_null(strstr(tmp, ".safetensors"));
    f = fopen(tmp, "wb");
    for (int i = 0; i < 1500000; i++)
        fputc("abc"[i % 3], f);
    fclose(f);
    assert_int_equal(store_blob_adopt(st, tmp, sha, &bytes, &err), 0);
    assert_int_equal(bytes, 1500000);
    /* python3 -c 'import hashlib; print(hashlib.sha256(b"abc" * 500000).hexdigest())' */
    assert_string_equal(sha, "206c8387a6fd09a951f4945cb98bd65ae2b9a59d4069f70e00a9d9acd7c86515");
    assert_true(blob_exists(st, sha));
    assert_int_equal(tmp_files(st), 0);

    /* adopting a missing file fails cleanly */
    assert_int_equal(store_blob_adopt(st, tmp, sha, &bytes, &err), SLIM_EIO);

    /* a bad sha names no path */
    store_blob_path(st, "../../etc/passwd", path, sizeof path);
    assert_string_equal(path, "");
    store_close(st);
}

/* Pseudo-random bytes, so that a slot handed over twice or out of order
 * changes the hash. */
static void fill_pattern(unsigned char *buf, size_t n, uint32_t seed)
{
    uint32_t x = seed | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (unsigned char)x;
    }
}

/* Streams n bytes through a writer in uneven pieces and checks its sha
 * against store_blob_adopt of the same bytes (which hashes by reading
 * the file, without the ring). */
static void ring_case(struct store *st, size_t n, size_t step)
{
    unsigned char *data = malloc(n ? n : 1);
    struct blob_writer *bw;
    struct slim_error err;
    char sha[65], want[65], tmp[4096];
    uint64_t bytes;
    size_t off = 0, piece = 1;
    FILE *f;

    assert_non_null(data);
    fill_pattern(data, n, (uint32_t)n);
    assert_int_equal(store_blob_begin(st, &bw, &err), 0);
    while (off < n) {
        size_t k = piece < n - off ? piece : n - off;
        assert_int_equal(store_blob_write(bw, data + off, k, &err), 0);
        off += k;
        piece = piece * 3 + step;   /* 1, 3+step, ...: crosses slot edges at odd offsets */
    }
    assert_int_equal(store_blob_bytes(bw), n);
    assert_int_equal(store_blob_commit(bw, sha, &err), 0);

    assert_int_equal(store_tmp_path(st, ".ref", tmp, sizeof tmp), 0);
    f = fopen(tmp, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
    assert_int_equal(store_blob_adopt(st, tmp, want, &bytes, &err), 0);
    assert_string_equal(sha, want);
    assert_int_equal(tmp_files(st), 0);
    free(data);
}

/* The hashing thread and its ring of 1 MiB slots: sizes around the slot
 * and ring edges hash as a plain read does; abort and allocation failure
 * in the middle leave no temp file, no thread and no leak. */
static void test_blob_ring(void **state)
{
    (void)state;
    long before = slim_alloc_live();
    struct store *st = open_store(data_dir("ring"));
    const size_t mib = 1u << 20;
    const size_t sizes[] = {mib - 1, mib, mib + 1, 4 * mib, 4 * mib + 7, 9 * mib + 12345};
    unsigned char *chunk = malloc(3 * mib);
    struct blob_writer *bw;
    struct slim_error err;

    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        ring_case(st, sizes[i], 4093);
        ring_case(st, sizes[i], 65536 + i);
    }

    /* abort with the thread running and the ring full */
    assert_non_null(chunk);
    fill_pattern(chunk, 3 * mib, 7);
    assert_int_equal(store_blob_begin(st, &bw, &err), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(store_blob_write(bw, chunk, 3 * mib, &err), 0);
    store_blob_abort(bw);
    assert_int_equal(tmp_files(st), 0);

    /* the second slot cannot be allocated: the write fails, abort cleans up */
    assert_int_equal(store_blob_begin(st, &bw, &err), 0);
    assert_int_equal(store_blob_write(bw, chunk, mib, &err), 0);
    slim_alloc_fail_after(0);
    assert_int_equal(store_blob_write(bw, chunk, mib, &err), SLIM_ENOMEM);
    slim_alloc_fail_after(-1);
    store_blob_abort(bw);
    assert_int_equal(tmp_files(st), 0);

    free(chunk);
    store_close(st);
    assert_int_equal(slim_alloc_live(), before);
}

/* Schema 9: a claim names the node and its lease; the heartbeat renews
 * this node's leases and reports cancels; only the holder ends a job;
 * recovery of expired leases leaves live ones alone. */
static void test_leases(void **state)
{
    (void)state;
    struct store *st = open_store(data_dir("leases"));
    struct slim_error err;
    const char *m = put_model(st, "m", "model bytes");
    const char *j1 = put_job(st, m);
    json_t *row, *held;
    int was_running, requeued = -1, failed = -1, state_after;

    assert_int_equal(store_set_node(st, "node-a", 1, &err), 0);
    assert_string_equal(store_node(st), "node-a");
    assert_int_equal(store_job_claim(st, UINT64_MAX, &row, &err), 0);
    assert_string_equal(sfield(row, "id"), j1);
    assert_string_equal(sfield(row, "node"), "node-a");
    json_decref(row);
    /* the heartbeat names it, not canceled; then canceled */
    assert_int_equal(store_job_heartbeat(st, &held, &err), 0);
    assert_int_equal(json_object_size(held), 1);
    assert_true(json_is_false(json_object_get(held, j1)));
    json_decref(held);
    assert_int_equal(store_job_cancel(st, j1, &was_running, &err), 0);
    assert_int_equal(was_running, 1);
    assert_int_equal(store_job_heartbeat(st, &held, &err), 0);
    assert_true(json_is_true(json_object_get(held, j1)));
    json_decref(held);
    /* another node: its heartbeat holds nothing, and it cannot end the job */
    assert_int_equal(store_set_node(st, "node-b", 1, &err), 0);
    assert_int_equal(store_job_heartbeat(st, &held, &err), 0);
    assert_int_equal(json_object_size(held), 0);
    json_decref(held);
    assert_int_equal(store_job_canceled(st, j1, &err), SLIM_ECONFLICT);
    assert_non_null(strstr(err.msg, "held by node node-a"));
    assert_int_equal(store_job_fail(st, j1, SLIM_EIO, "x", &err), SLIM_ECONFLICT);
    assert_int_equal(store_job_retry(st, j1, 3, SLIM_ENOSPACE, "x", &state_after, &err),
                     SLIM_ECONFLICT);
    row = get_job(st, j1);
    assert_string_equal(sfield(row, "state"), "running");
    json_decref(row);
    /* its lease is live: recovery leaves it; once it ran out, it goes
     * (canceled, since a cancel was asked for) */
    assert_int_equal(store_job_recover_expired(st, 3, &requeued, &failed, &err), 0);
    assert_int_equal(requeued + failed, 0);
    row = get_job(st, j1);
    assert_string_equal(sfield(row, "state"), "running");
    json_decref(row);
    usleep(1100 * 1000);
    assert_int_equal(store_job_recover_expired(st, 3, &requeued, &failed, &err), 0);
    row = get_job(st, j1);
    assert_string_equal(sfield(row, "state"), "canceled");
    json_decref(row);

    /* an expired job without a cancel is re-queued, its attempt counted,
     * and the next claim (another node's) makes it attempt 2 */
    const char *j2 = put_job(st, m);
    assert_int_equal(store_set_node(st, "node-a", 1, &err), 0);
    assert_int_equal(store_job_claim(st, UINT64_MAX, &row, &err), 0);
    assert_string_equal(sfield(row, "id"), j2);
    json_decref(row);
    usleep(1100 * 1000);
    assert_int_equal(store_set_node(st, "node-b", 1, &err), 0);
    assert_int_equal(store_job_recover_expired(st, 3, &requeued, &failed, &err), 0);
    assert_int_equal(requeued, 1);
    row = get_job(st, j2);
    assert_string_equal(sfield(row, "state"), "queued");
    assert_true(json_is_null(json_object_get(row, "node")));
    json_decref(row);
    assert_int_equal(store_job_claim(st, UINT64_MAX, &row, &err), 0);
    assert_string_equal(sfield(row, "node"), "node-b");
    assert_int_equal(json_integer_value(json_object_get(row, "attempts")), 2);
    json_decref(row);
    /* node-a, back, may not record over node-b's claim */
    assert_int_equal(store_set_node(st, "node-a", 1, &err), 0);
    assert_int_equal(store_job_requeue(st, j2, &err), SLIM_ECONFLICT);
    assert_int_equal(store_set_node(st, "node-b", 1, &err), 0);
    assert_int_equal(store_job_fail(st, j2, SLIM_EIO, "disk", &err), 0);
    store_close(st);
}

static void test_job_lifecycle(void **state)
{
    (void)state;
    struct store *st = open_store(data_dir("jobs"));
    struct slim_error err;
    const char *m = put_model(st, "m", "model bytes");
    const char *j1 = put_job(st, m), *j2 = put_job(st, m), *j3 = put_job(st, m);
    const char *art = put_blob(st, "artifact bytes");
    json_t *row, *rows, *rep;
    int64_t counts[5];
    int was_running = -1, total;

    row = get_job(st, j1);
    assert_id(sfield(row, "id"), "job_");
    assert_string_equal(sfield(row, "model"), m);
    assert_string_equal(sfield(row, "state"), "queued");
    assert_true(json_is_null(json_object_get(row, "stage")));
    assert_true(json_is_null(json_object_get(row, "error")));
    assert_true(json_is_null(json_object_get(row, "started_at")));
    assert_true(json_is_null(json_object_get(row, "finished_at")));
    assert_true(json_is_null(json_object_get(row, "artifact")));
    assert_true(json_is_false(json_object_get(row, "cancel_requested")));
    assert_int_equal(json_integer_value(json_object_get(row, "attempts")), 0);
    assert_rfc3339(sfield(row, "created_at"));
    assert_string_equal(sfield(json_object_get(row, "spec"), "model"), m);
    assert_string_equal(sfield(json_array_get(json_object_get(json_object_get(row, "spec"),
                                                              "passes"), 0), "dtype"), "int8");
    json_decref(row);

    /* unknown model */
    rep = json_object();
    assert_int_equal(store_job_insert(st, NULL, "mdl_0000000000000000", NULL, rep, 0, 0, &row, &err),
                     SLIM_ENOTFOUND);
    json_decref(rep);
    assert_non_null(strstr(err.msg, "mdl_0000000000000000"));

    /* report and progress before running */
    assert_int_equal(store_job_report(st, j1, &rep, &err), SLIM_ECONFLICT);
    assert_non_null(strstr(err.msg, "queued"));
    assert_int_equal(store_job_progress(st, j1, 0.5, "load", &err), 0);
    row = get_job(st, j1);
    assert_true(json_real_value(json_object_get(row, "progress")) == 0.0);
    json_decref(row);

    /* oldest first */
    assert_int_equal(store_job_claim(st, UINT64_MAX, &row, &err), 0);
    assert_string_equal(sfield(row, "id"), j1);
    assert_string_equal(sfield(row, "state"), "running");
    assert_int_equal(json_integer_value(json_object_get(row, "attempts")), 1);
    assert_rfc3339(sfield(row, "started_at"));
    assert_non_null(json_object_get(json_object_get(row, "spec"), "passes"));
    json_decref(row);

    assert_int_equal(store_job_progress(st, j1, 0.25, "quantize", &err), 0);
    assert_int_equal(store_job_progress(st, j1, 7.0, NULL, &err), 0); /* clamped, stage kept */
    row = get_job(st, j1);
    assert_true(json_real_value(json_object_get(row, "progress")) == 1.0);
    assert_string_equal(sfield(row, "stage"), "quantize");
    json_decref(row);
    assert_int_equal(store_job_report(st, j1, &rep, &err), SLIM_ECONFLICT);
    assert_non_null(strstr(err.msg, "running"));

    rep = json_pack("{s:{s:i}}", "totals", "bytes_after", 14);
    assert_int_equal(store_job_succeed(st, j1, art, 14, rep, &err), 0);
    assert_int_equal(store_job_succeed(st, j1, art, 14, rep, &err), SLIM_ECONFLICT);
    json_decref(rep);
    row = get_job(st, j1);
    assert_string_equal(sfield(row, "state"), "succeeded");
    assert_true(json_is_null(json_object_get(row, "stage")));
    assert_rfc3339(sfield(row, "finished_at"));
    assert_string_equal(sfield(json_object_get(row, "artifact"), "sha256"), art);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(row, "artifact"), "bytes")),
                     14);
    json_decref(row);
    assert_int_equal(store_job_report(st, j1, &rep, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(rep, "totals"),
                                                        "bytes_after")), 14);
    json_decref(rep);
    assert_int_equal(store_job_report(st, "job_nope", &rep, &err), SLIM_ENOTFOUND);

    /* finished jobs cannot be canceled: too late, and the message says so */
    assert_int_equal(store_job_cancel(st, j1, &was_running, &err), SLIM_ECONFLICT);
    assert_non_null(strstr(err.msg, "already succeeded: too late to cancel it"));
    assert_int_equal(store_job_cancel(st, "job_nope", &was_running, &err), SLIM_ENOTFOUND);

    /* j2 running then failed */
    claim_expect(st, j2);
    assert_int_equal(store_job_progress(st, j2, 0.25, "prune", &err), 0);
    assert_int_equal(store_job_fail(st, j2, SLIM_ENUMERIC, "passes[0]: boom", &err), 0);
    row = get_job(st, j2);
    assert_string_equal(sfield(row, "state"), "failed");
    assert_string_equal(sfield(row, "stage"), "prune");   /* where it failed */
    assert_string_equal(sfield(row, "error_message"), "passes[0]: boom");
    assert_string_equal(sfield(row, "error_code"), "NUMERIC_ERROR");
    json_decref(row);
    assert_int_equal(store_job_fail(st, j2, SLIM_EIO, "again", &err), SLIM_ECONFLICT);
    assert_int_equal(store_job_report(st, j2, &rep, &err), SLIM_ECONFLICT);
    assert_non_null(strstr(err.msg, "failed"));

    /* cancel queued: done at once */
    assert_int_equal(store_job_cancel(st, j3, &was_running, &err), 0);
    assert_int_equal(was_running, 0);
    row = get_job(st, j3);
    assert_string_equal(sfield(row, "state"), "canceled");
    assert_rfc3339(sfield(row, "finished_at"));
    json_decref(row);
    assert_int_equal(store_job_claim(st, UINT64_MAX, &row, &err), SLIM_ENOTFOUND);

    /* cancel running: requested, the runner finishes it */
    const char *j4 = put_job(st, m);
    claim_expect(st, j4);
    assert_int_equal(store_job_cancel(st, j4, &was_running, &err), 0);
    assert_int_equal(was_running, 1);
    row = get_job(st, j4);
    assert_string_equal(sfield(row, "state"), "running");
    assert_true(json_is_true(json_object_get(row, "cancel_requested")));
    json_decref(row);
    assert_int_equal(store_job_canceled(st, j4, &err), 0);
    row = get_job(st, j4);
    assert_string_equal(sfield(row, "state"), "canceled");
    json_decref(row);
    assert_int_equal(store_job_canceled(st, j4, &err), SLIM_ECONFLICT);
    assert_int_equal(store_job_cancel(st, j4, &was_running, &err), SLIM_ECONFLICT);
    assert_non_null(strstr(err.msg, "is already canceled"));


    /* requeue does not count the attempt */
    const char *j5 = put_job(st, m);
    claim_expect(st, j5);
    assert_int_equal(store_job_requeue(st, j5, &err), 0);
    row = get_job(st, j5);
    assert_string_equal(sfield(row, "state"), "queued");
    assert_int_equal(json_integer_value(json_object_get(row, "attempts")), 0);
    assert_true(json_is_null(json_object_get(row, "started_at")));
    json_decref(row);

    /* list newest first, filtered, and counts */
    assert_int_equal(store_job_list(st, NULL, -1, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 5);
    assert_int_equal(json_array_size(rows), 5);
    assert_string_equal(sfield(json_array_get(rows, 0), "id"), j5);
    assert_string_equal(sfield(json_array_get(rows, 4), "id"), j1);
    json_decref(rows);
    assert_int_equal(store_job_list(st, NULL, STORE_JOB_CANCELED, 1, 1, &rows, &total, &err), 0);
    assert_int_equal(total, 2);
    assert_int_equal(json_array_size(rows), 1);
    assert_string_equal(sfield(json_array_get(rows, 0), "id"), j3);
    json_decref(rows);
    assert_int_equal(store_job_counts(st, counts, &err), 0);
    assert_int_equal(counts[STORE_JOB_QUEUED], 1);
    assert_int_equal(counts[STORE_JOB_RUNNING], 0);
    assert_int_equal(counts[STORE_JOB_SUCCEEDED], 1);
    assert_int_equal(counts[STORE_JOB_FAILED], 1);
    assert_int_equal(counts[STORE_JOB_CANCELED], 2);

    assert_string_equal(store_job_state_name(STORE_JOB_SUCCEEDED), "succeeded");
    assert_int_equal(store_job_state_parse("canceled"), STORE_JOB_CANCELED);
    assert_int_equal(store_job_state_parse("cancelled"), -1);

    /* a cancel answered while running wins over whatever ends the job:
     * a success is refused (the runner then records canceled), and a
     * failure becomes canceled, without its message */
    assert_int_equal(store_job_cancel(st, j5, &was_running, &err), 0);
    const char *j6 = put_job(st, m), *j7 = put_job(st, m);
    claim_expect(st, j6);
    assert_int_equal(store_job_cancel(st, j6, &was_running, &err), 0);
    rep = json_object();
    assert_int_equal(store_job_succeed(st, j6, art, 14, rep, &err), SLIM_ECANCELED);
    json_decref(rep);
    row = get_job(st, j6);
    assert_string_equal(sfield(row, "state"), "running");
    json_decref(row);
    assert_int_equal(store_job_canceled(st, j6, &err), 0);
    claim_expect(st, j7);
    assert_int_equal(store_job_cancel(st, j7, &was_running, &err), 0);
    assert_int_equal(store_job_fail(st, j7, SLIM_EIO, "disk full", &err), 0);
    row = get_job(st, j7);
    assert_string_equal(sfield(row, "state"), "canceled");
    assert_true(json_is_null(json_object_get(row, "error_message")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(row, "error"), "code")),
                        "CANCELED");
    json_decref(row);
    assert_int_equal(store_job_cancel(st, j7, &was_running, &err), SLIM_ECONFLICT);
    store_close(st);
}

static void test_recover(void **state)
{
    (void)state;
    const char *dir = data_dir("recover");
    struct store *st = open_store(dir);
    struct slim_error err;
    const char *m = put_model(st, "m", "recover model");
    const char *j = put_job(st, m), *other = put_job(st, m), *doomed;
    int requeued = -1, failed = -1, was_running;
    json_t *row;

    /* three crashes while j runs; the third exhausts max_attempts 3 */
    for (int attempt = 1; attempt <= 3; attempt++) {
        claim_expect(st, j);
        store_close(st); /* "crash" */
        st = open_store(dir);
        assert_int_equal(store_job_recover(st, 3, &requeued, &failed, &err), 0);
        row = get_job(st, j);
        if (attempt < 3) {
            assert_int_equal(requeued, 1);
            assert_int_equal(failed, 0);
            assert_string_equal(sfield(row, "state"), "queued");
            assert_int_equal(json_integer_value(json_object_get(row, "attempts")), attempt);
            assert_true(json_is_null(json_object_get(row, "stage")));
        } else {
            assert_int_equal(requeued, 0);
            assert_int_equal(failed, 1);
            assert_string_equal(sfield(row, "state"), "failed");
            assert_string_equal(sfield(row, "error_message"),
                                "interrupted 3 times (daemon restarts); giving up");
            assert_string_equal(sfield(row, "error_code"), "INTERNAL");
            assert_rfc3339(sfield(row, "finished_at"));
        }
        json_decref(row);
    }
    /* the queued job was never touched */
    row = get_job(st, other);
    assert_string_equal(sfield(row, "state"), "queued");
    assert_int_equal(json_integer_value(json_object_get(row, "attempts")), 0);
    json_decref(row);

    /* a running job whose cancel was asked for ends canceled, not re-run */
    claim_expect(st, other);
    assert_int_equal(store_job_cancel(st, other, &was_running, &err), 0);
    doomed = put_job(st, m);
    claim_expect(st, doomed);
    assert_int_equal(store_job_recover(st, 1, &requeued, &failed, &err), 0);
    assert_int_equal(requeued, 0);
    assert_int_equal(failed, 1);
    row = get_job(st, other);
    assert_string_equal(sfield(row, "state"), "canceled");
    json_decref(row);
    row = get_job(st, doomed);
    assert_string_equal(sfield(row, "error_message"), "interrupted once (daemon restarts); giving up");
    json_decref(row);

    /* nothing running: nothing to do */
    assert_int_equal(store_job_recover(st, 3, &requeued, &failed, &err), 0);
    assert_int_equal(requeued + failed, 0);
    store_close(st);
}

static void test_model_delete_and_jobs(void **state)
{
    (void)state;
    struct store *st = open_store(data_dir("delete"));
    struct slim_error err;
    const char *m = put_model(st, "m", "delete me"), *j, *art;
    char msha[65], m2[32];
    json_t *row, *rep;

    assert_int_equal(store_model_get(st, m, &row, &err), 0);
    snprintf(msha, sizeof msha, "%s", sfield(row, "sha256"));
    json_decref(row);

    j = put_job(st, m);
    assert_int_equal(store_model_delete(st, m, &err), SLIM_ECONFLICT);
    assert_non_null(strstr(err.msg, j));
    assert_non_null(strstr(err.msg, "(queued)"));
    claim_expect(st, j);
    assert_int_equal(store_model_delete(st, m, &err), SLIM_ECONFLICT);
    {
        char want[160];
        snprintf(want, sizeof want, "model %s is used by job %s (running); cancel it or wait",
                 m, j);
        assert_string_equal(err.msg, want);
    }
    assert_true(blob_exists(st, msha));

    art = put_blob(st, "compressed");
    rep = json_pack("{s:i}", "ratio", 4);
    assert_int_equal(store_job_succeed(st, j, art, 10, rep, &err), 0);
    json_decref(rep);

    /* a second model on the same bytes keeps the blob alive */
    snprintf(m2, sizeof m2, "%s", put_model(st, "twin", "delete me"));
    assert_int_equal(store_model_delete(st, m, &err), 0);
    assert_true(blob_exists(st, msha));
    assert_int_equal(store_model_delete(st, m2, &err), 0);
    assert_false(blob_exists(st, msha));

    /* the finished job, its report and its artifact survive */
    row = get_job(st, j);
    assert_string_equal(sfield(row, "state"), "succeeded");
    assert_true(json_is_null(json_object_get(row, "model")));
    assert_string_equal(sfield(json_object_get(row, "spec"), "model"), m);
    json_decref(row);
    assert_int_equal(store_job_report(st, j, &rep, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(rep, "ratio")), 4);
    json_decref(rep);
    assert_true(blob_exists(st, art));

    /* a model whose bytes equal an artifact keeps that blob when deleted */
    snprintf(m2, sizeof m2, "%s", put_model(st, "same as artifact", "compressed"));
    assert_int_equal(store_model_delete(st, m2, &err), 0);
    assert_true(blob_exists(st, art));
    store_close(st);
}

struct claimer {
    struct store *st;
    char ids[200][32];
    int n;
    int errors;
};

static void *claim_loop(void *arg)
{
    struct claimer *c = arg;
    struct slim_error err;
    json_t *row;
    int rc;
    while ((rc = store_job_claim(c->st, UINT64_MAX, &row, &err)) != SLIM_ENOTFOUND) {
        if (rc) {
            c->errors++;
            continue;
        }
        snprintf(c->ids[c->n++], 32, "%s", sfield(row, "id"));
        json_decref(row);
    }
    return NULL;
}

static int cmp_ids(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Four threads over two connections (two stores on one data dir), so
 * the claim's atomicity is SQLite's and not only our mutex's. */
static void test_concurrent_claim(void **state)
{
    (void)state;
    enum { JOBS = 200, THREADS = 4 };
    const char *dir = data_dir("claim");
    struct store *a = open_store(dir), *b = open_store(dir);
    const char *m = put_model(a, "m", "claim model");
    static struct claimer c[THREADS];
    static char all[JOBS][32];
    pthread_t t[THREADS];
    int n = 0;

    for (int i = 0; i < JOBS; i++)
        put_job(i & 1 ? a : b, m);
    for (int i = 0; i < THREADS; i++) {
        c[i].st = i & 1 ? a : b;
        c[i].n = c[i].errors = 0;
        assert_int_equal(pthread_create(&t[i], NULL, claim_loop, &c[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(c[i].errors, 0);
        for (int k = 0; k < c[i].n; k++)
            memcpy(all[n++], c[i].ids[k], 32);
    }
    assert_int_equal(n, JOBS);
    qsort(all, JOBS, 32, cmp_ids);
    for (int i = 1; i < JOBS; i++)
        assert_string_not_equal(all[i - 1], all[i]);
    store_close(a);
    store_close(b);
}

/* Every allocation that goes through slim_malloc fails in turn: each
 * call reports SLIM_ENOMEM, leaks nothing and leaves no temp file. */
static void test_claim_within_memory(void **state)
{
    /* the head of the queue starts only when its reservation fits what
     * is left, and is not overtaken by a smaller job behind it */
    (void)state;
    struct store *st = open_store(data_dir("mem"));
    struct slim_error err;
    const char *m = put_model(st, "m", "model bytes");
    json_t *spec = json_pack("{s:s, s:[{s:s, s:s}]}", "model", m, "passes", "op", "quantize",
                             "dtype", "int8"), *big, *small, *row;
    assert_int_equal(store_job_insert(st, NULL, m, NULL, spec, 600, 0, &big, &err), 0);
    assert_int_equal(store_job_insert(st, NULL, m, NULL, spec, 100, 0, &small, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(big, "memory_bytes")), 600);
    assert_int_equal(store_job_claim(st, 500, &row, &err), SLIM_ENOTFOUND);
    assert_int_equal(store_job_claim(st, 600, &row, &err), 0);
    assert_string_equal(sfield(row, "id"), sfield(big, "id"));
    json_decref(row);
    /* a queue cap: with one job queued and a cap of 1, the next is
     * EBUSY; a missing model is still ENOTFOUND */
    assert_int_equal(store_job_insert(st, NULL, m, NULL, spec, 0, 1, &row, &err), SLIM_EBUSY);
    assert_non_null(strstr(err.msg, "--max-queued"));
    assert_int_equal(store_job_insert(st, NULL, "mdl_0000000000000000", NULL, spec, 0, 1, &row, &err),
                     SLIM_ENOTFOUND);
    assert_int_equal(store_job_claim(st, 99, &row, &err), SLIM_ENOTFOUND);
    assert_int_equal(store_job_claim(st, 100, &row, &err), 0);
    assert_string_equal(sfield(row, "id"), sfield(small, "id"));
    json_decref(row);
    json_decref(big);
    json_decref(small);
    json_decref(spec);
    store_close(st);
}

/* ---- a disk that fills up (tests/unit/full_vfs.h) ---- */

static void test_full_disk_acknowledges_nothing(void **state)
{
    /* a commit that fails must fail the call: no job or model is
     * returned as stored (202/201) and then found missing, and the claim
     * of a job whose running state did not commit starts nothing */
    (void)state;
    full_vfs_on();

    struct store *st = open_store(data_dir("full"));
    struct slim_error err;
    const char *m = put_model(st, "m", "model bytes"), *queued = put_job(st, m);
    json_t *spec = json_pack("{s:s, s:[{s:s, s:s}]}", "model", m, "passes", "op", "quantize",
                             "dtype", "int8"), *row = (json_t *)1, *info;
    int total = -1;

    disk_full = 1;
    assert_int_equal(store_job_insert(st, NULL, m, NULL, spec, 0, 0, &row, &err), SLIM_ENOSPACE);
    assert_null(row);
    row = (json_t *)1;
    assert_int_equal(store_job_claim(st, UINT64_MAX, &row, &err), SLIM_ENOSPACE);
    assert_null(row);
    info = json_pack("{s:s, s:i, s:i}", "format", "safetensors", "tensors", 1, "params", 1);
    assert_int_equal(store_model_insert(st, NULL, "n", SHA_ABC, 3, info, &row, &err) != 0, 1);
    disk_full = 0;

    /* nothing of that exists; the queued job is still queued, once */
    assert_int_equal(store_job_list(st, NULL, -1, 100, 0, &row, &total, &err), 0);
    assert_int_equal(total, 1);
    json_decref(row);
    row = get_job(st, queued);
    assert_string_equal(sfield(row, "state"), "queued");
    assert_int_equal(json_integer_value(json_object_get(row, "attempts")), 0);
    json_decref(row);
    claim_expect(st, queued);
    json_decref(info);
    json_decref(spec);
    store_close(st);
    full_vfs_off();
}

static int file_exists(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static void test_full_disk_drops_the_artifact(void **state)
{
    /* a job whose success cannot be recorded must not leave its
     * artifact as an orphan blob, unless something else names it; the
     * job is still running and can be failed once there is room, with
     * the code of what went wrong */
    (void)state;
    full_vfs_on();
    struct store *st = open_store(data_dir("full-art"));
    struct slim_error err;
    const char *m = put_model(st, "m", "the model's bytes"), *j = put_job(st, m);
    const char *k = put_job(st, m), *art, *shared;
    json_t *rep = json_pack("{s:[]}", "tensors"), *row;

    claim_expect(st, j);
    art = put_blob(st, "an artifact of j");
    disk_full = 1;
    assert_int_equal(store_job_succeed(st, j, art, 16, rep, &err), SLIM_ENOSPACE);
    disk_full = 0;
    assert_false(blob_exists(st, art));
    row = get_job(st, j);
    assert_string_equal(sfield(row, "state"), "running");
    assert_true(json_is_null(json_object_get(row, "artifact")));
    json_decref(row);
    assert_int_equal(store_job_fail(st, j, SLIM_ENOSPACE, "cannot record the result", &err), 0);
    row = get_job(st, j);
    assert_string_equal(sfield(row, "state"), "failed");
    assert_string_equal(sfield(row, "error_code"), "INSUFFICIENT_STORAGE");
    json_decref(row);

    /* an artifact with the model's bytes shares its blob: it stays */
    claim_expect(st, k);
    shared = put_blob(st, "the model's bytes");
    disk_full = 1;
    assert_int_equal(store_job_succeed(st, k, shared, 17, rep, &err), SLIM_ENOSPACE);
    disk_full = 0;
    assert_true(blob_exists(st, shared));
    json_decref(rep);
    store_close(st);
    full_vfs_off();
}

static void test_retry_counts_attempts(void **state)
{
    /* a job that ran out of disk space goes back to the queue with the
     * attempt counted and the reason shown, and fails once it has used
     * max_attempts; a cancel asked for meanwhile wins */
    (void)state;
    struct store *st = open_store(data_dir("retry"));
    struct slim_error err;
    const char *m = put_model(st, "m", "retry model"), *j = put_job(st, m), *c;
    const char *why = "cannot write the artifact: No space left on device";
    int st_out = -1, was_running;
    json_t *row;

    for (int attempt = 1; attempt <= 3; attempt++) {
        claim_expect(st, j);
        row = get_job(st, j);
        assert_int_equal(json_integer_value(json_object_get(row, "attempts")), attempt);
        assert_true(json_is_null(json_object_get(row, "error")));   /* the claim clears it */
        json_decref(row);
        assert_int_equal(store_job_retry(st, j, 3, SLIM_ENOSPACE, why, &st_out, &err), 0);
        row = get_job(st, j);
        assert_int_equal(json_integer_value(json_object_get(row, "attempts")), attempt);
        assert_string_equal(sfield(row, "error_message"), why);
        assert_string_equal(sfield(row, "error_code"), "INSUFFICIENT_STORAGE");
        if (attempt < 3) {
            assert_int_equal(st_out, STORE_JOB_QUEUED);
            assert_string_equal(sfield(row, "state"), "queued");
            assert_true(json_is_null(json_object_get(row, "started_at")));
            assert_true(json_is_null(json_object_get(row, "finished_at")));
        } else {
            assert_int_equal(st_out, STORE_JOB_FAILED);
            assert_string_equal(sfield(row, "state"), "failed");
            assert_rfc3339(sfield(row, "finished_at"));
        }
        json_decref(row);
    }
    assert_int_equal(store_job_retry(st, j, 3, SLIM_ENOSPACE, why, &st_out, &err),
                     SLIM_ECONFLICT);
    assert_int_equal(store_job_retry(st, "job_nope", 3, SLIM_ENOSPACE, why, &st_out, &err),
                     SLIM_ENOTFOUND);

    c = put_job(st, m);
    claim_expect(st, c);
    assert_int_equal(store_job_cancel(st, c, &was_running, &err), 0);
    assert_int_equal(store_job_retry(st, c, 3, SLIM_ENOSPACE, why, &st_out, &err), 0);
    assert_int_equal(st_out, STORE_JOB_CANCELED);
    row = get_job(st, c);
    assert_string_equal(sfield(row, "state"), "canceled");
    assert_true(json_is_null(json_object_get(row, "error_message")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(row, "error"), "code")),
                        "CANCELED");
    json_decref(row);
    store_close(st);
}

static void test_wal_kept_and_reserved(void **state)
{
    /* the WAL and its index stay between runs (a start on a full disk
     * creates no file), the WAL keeps the space reserved for it, and
     * the rows in it are all there after the reopen */
    (void)state;
    const char *dir = data_dir("wal");
    struct store *st = open_store(dir);
    struct slim_error err;
    char path[4096];
    struct stat sb;
    json_t *row;
    const char *m;

    snprintf(path, sizeof path, "%s/slimd.db-wal", dir);
    assert_int_equal(store_wal_reserve(st, 1 << 20, &err), 0);
    assert_int_equal(stat(path, &sb), 0);
    assert_true((uint64_t)sb.st_blocks * 512 >= (1u << 20));
    assert_true(sb.st_size >= (1 << 20));
    m = put_model(st, "m", "kept in the WAL");
    put_job(st, m);
    store_close(st);
    assert_true(file_exists(dir, "slimd.db-wal"));
    assert_true(file_exists(dir, "slimd.db-shm"));
    assert_int_equal(stat(path, &sb), 0);
    assert_true((uint64_t)sb.st_blocks * 512 >= (1u << 20));

    st = open_store(dir);
    assert_int_equal(store_model_get(st, m, &row, &err), 0);
    assert_string_equal(sfield(row, "name"), "m");
    json_decref(row);
    assert_int_equal(store_wal_reserve(st, 1 << 20, &err), 0);   /* already there */
    assert_int_equal(store_wal_reserve(st, 0, &err), 0);
    put_job(st, m);
    store_close(st);
}

static void test_sweep_orphans(void **state)
{
    /* a blob that nothing names (a crash between commit and insert) and
     * temp files go at open; named blobs and files that are not blobs
     * stay */
    (void)state;
    const char *dir = data_dir("sweep");
    struct store *st = open_store(dir);
    struct store_sweep sweep;
    struct slim_error err;
    const char *m = put_model(st, "m", "sweep model"), *j = put_job(st, m), *art, *orphan;
    char path[4096], keep_art[65], keep_orphan[65];
    json_t *rep = json_pack("{s:[]}", "tensors");

    claim_expect(st, j);
    art = put_blob(st, "sweep artifact");
    snprintf(keep_art, sizeof keep_art, "%s", art);
    assert_int_equal(store_job_succeed(st, j, keep_art, 14, rep, &err), 0);
    orphan = put_blob(st, "no row names me");
    snprintf(keep_orphan, sizeof keep_orphan, "%s", orphan);
    snprintf(path, sizeof path, "%s/blobs/%.2s/README", dir, keep_art);
    fclose(fopen(path, "w"));
    snprintf(path, sizeof path, "%s/tmp/upload-crashed", dir);
    fclose(fopen(path, "w"));
    store_close(st);

    st = open_store(dir);
    store_open_sweep(st, &sweep);
    assert_int_equal(sweep.tmp_removed, 1);
    assert_int_equal(sweep.orphans_removed, 1);
    assert_int_equal(sweep.orphan_bytes, strlen("no row names me"));
    assert_false(blob_exists(st, keep_orphan));
    assert_true(blob_exists(st, keep_art));
    json_t *row;
    assert_int_equal(store_model_get(st, m, &row, &err), 0);
    assert_true(blob_exists(st, sfield(row, "sha256")));
    json_decref(row);
    snprintf(path, sizeof path, "%s/blobs/%.2s/README", dir, keep_art);
    assert_int_equal(access(path, F_OK), 0);
    store_close(st);
    st = open_store(dir);   /* nothing left to do */
    store_open_sweep(st, &sweep);
    assert_int_equal(sweep.tmp_removed + sweep.orphans_removed, 0);
    json_decref(rep);
    store_close(st);
}

static void test_shared_blob_dir(void **state)
{
    /* --blobs dir:PATH for two stores (two daemons): the same bytes from
     * both make one blob at PATH, nothing in their data dirs; a store
     * without rows naming it does not remove it, nor does a reopen's
     * sweep (it may be another daemon's, between commit and insert); an
     * artifact adopted from the data dir's tmp/ lands at PATH; nothing
     * is left in PATH/.incoming */
    (void)state;
    const char *a_dir = data_dir("shared-a");
    char b_dir[1024], shared[1024], spec[1100], path[4096], sha[65], sha2[65], tmp[4096];
    struct store *a, *b;
    struct store_sweep sweep;
    struct slim_error err;
    const char *m;
    uint64_t bytes = 0;
    FILE *f;

    snprintf(b_dir, sizeof b_dir, "%s", data_dir("shared-b"));
    snprintf(shared, sizeof shared, "%s", data_dir("shared-blobs"));
    snprintf(spec, sizeof spec, "dir:%s", shared);
    assert_int_equal(store_open_blobs(a_dir, spec, &a, &err), 0);
    assert_int_equal(store_open_blobs(b_dir, spec, &b, &err), 0);
    m = put_model(a, "m", "shared bytes");
    snprintf(sha, sizeof sha, "%s", put_blob(b, "shared bytes"));
    snprintf(path, sizeof path, "%s/%.2s/%s", shared, sha, sha);
    assert_int_equal(access(path, F_OK), 0);
    assert_true(blob_exists(a, sha) && blob_exists(b, sha));
    snprintf(path, sizeof path, "%s/blobs", a_dir);
    assert_int_equal(count_files(path), 0);
    store_blob_drop_unused(b, sha);       /* b has no row: it is a's */
    assert_true(blob_exists(a, sha));
    snprintf(sha2, sizeof sha2, "%s", put_blob(b, "committed, no row yet"));
    store_close(b);
    assert_int_equal(store_open_blobs(b_dir, spec, &b, &err), 0);
    store_open_sweep(b, &sweep);
    assert_int_equal(sweep.orphans_removed, 0);
    assert_true(blob_exists(b, sha2));
    /* an artifact written in a's tmp/ */
    assert_int_equal(store_tmp_path(a, ".safetensors", tmp, sizeof tmp), 0);
    assert_non_null(f = fopen(tmp, "w"));
    fputs("artifact bytes", f);
    fclose(f);
    assert_int_equal(store_blob_adopt(a, tmp, sha2, &bytes, &err), 0);
    assert_int_equal(bytes, strlen("artifact bytes"));
    assert_int_equal(access(tmp, F_OK), -1);
    snprintf(path, sizeof path, "%s/%.2s/%s", shared, sha2, sha2);
    assert_int_equal(access(path, F_OK), 0);
    snprintf(path, sizeof path, "%s/.incoming", shared);
    assert_int_equal(count_files(path), 0);
    /* deleting a's model frees nothing at the shared location */
    assert_int_equal(store_model_delete(a, m, &err), 0);
    assert_true(blob_exists(b, sha));
    store_close(a);
    store_close(b);
}

static void test_blob_specs(void **state)
{
    /* malformed --blobs and missing S3 settings are SLIM_EINVAL naming
     * them; an unreachable S3 endpoint opens (nothing is asked of it)
     * and a commit then fails SLIM_EIO naming s3 and the endpoint, with
     * no temp file left */
    (void)state;
    const char *dir = data_dir("specs");
    struct store *st = NULL;
    struct blob_writer *bw;
    struct slim_error err;
    char sha[65];

    assert_int_equal(store_open_blobs(dir, "nfs:/x", &st, &err), SLIM_EINVAL);
    assert_non_null(strstr(err.msg, "dir:PATH or s3://"));
    unsetenv("SLIMD_S3_ENDPOINT");
    assert_int_equal(store_open_blobs(dir, "s3://bucket/p", &st, &err), SLIM_EINVAL);
    assert_non_null(strstr(err.msg, "SLIMD_S3_ENDPOINT"));
    setenv("SLIMD_S3_ENDPOINT", "http://127.0.0.1:1", 1);
    unsetenv("AWS_ACCESS_KEY_ID");
    assert_int_equal(store_open_blobs(dir, "s3://bucket/p", &st, &err), SLIM_EINVAL);
    assert_non_null(strstr(err.msg, "AWS_ACCESS_KEY_ID"));
    setenv("AWS_ACCESS_KEY_ID", "id", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "secret", 1);
    assert_int_equal(store_open_blobs(dir, "s3://Bad_Bucket", &st, &err), SLIM_EINVAL);
    assert_int_equal(store_open_blobs(dir, "s3://bucket/p", &st, &err), 0);
    assert_int_equal(store_blob_begin(st, &bw, &err), 0);
    assert_int_equal(store_blob_write(bw, "abc", 3, &err), 0);
    assert_int_equal(store_blob_commit(bw, sha, &err), SLIM_EIO);
    assert_non_null(strstr(err.msg, "s3: "));
    assert_non_null(strstr(err.msg, "127.0.0.1:1"));
    assert_int_equal(tmp_files(st), 0);
    store_close(st);
    unsetenv("SLIMD_S3_ENDPOINT");
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
}

static void test_token_hash_and_scopes(void **state)
{
    /* the hash is SHA-256 of the secret's bytes (FIPS 180-2's "abc"
     * vector), secrets are "slimd_" + 64 hex digits and never repeat,
     * and scope lists parse strictly both ways */
    (void)state;
    char hash[65], a[STORE_TOKEN_LEN + 1], b[STORE_TOKEN_LEN + 1], buf[24];
    struct slim_error err;
    unsigned bits = 99;

    assert_int_equal(store_token_hash("abc", hash, &err), 0);
    assert_string_equal(hash, SHA_ABC);
    assert_int_equal(store_token_hash("", hash, &err), 0);
    assert_string_equal(hash, SHA_EMPTY);
    assert_int_equal(store_token_secret_new(a, &err), 0);
    assert_int_equal(store_token_secret_new(b, &err), 0);
    assert_int_equal(strlen(a), STORE_TOKEN_LEN);
    assert_memory_equal(a, "slimd_", 6);
    assert_int_equal(strspn(a + 6, "0123456789abcdef"), 64);
    assert_string_not_equal(a, b);

    assert_int_equal(store_scopes_parse("read,submit", &bits, &err), 0);
    assert_int_equal(bits, STORE_SCOPE_READ | STORE_SCOPE_SUBMIT);
    assert_int_equal(store_scopes_parse("admin", &bits, &err), 0);
    assert_int_equal(bits, STORE_SCOPE_ADMIN);
    assert_int_equal(store_scopes_parse("submit,submit", &bits, &err), 0);
    assert_int_equal(bits, STORE_SCOPE_SUBMIT);
    const char *bad[] = {"", "READ", "read,", ",read", "read,,submit", "reads", "read submit"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bits = 99;
        assert_int_equal(store_scopes_parse(bad[i], &bits, &err), SLIM_EINVAL);
        assert_int_equal(bits, 0);
    }
    assert_non_null(strstr(err.msg, "read submit"));
    store_scopes_format(STORE_SCOPES_ALL, buf, sizeof buf);
    assert_string_equal(buf, "read,submit,admin");
    store_scopes_format(STORE_SCOPE_SUBMIT, buf, sizeof buf);
    assert_string_equal(buf, "submit");
    store_scopes_format(0, buf, sizeof buf);
    assert_string_equal(buf, "");
}

/* The whole database file (and its WAL) as bytes contain needle. */
static int db_holds(const char *dir, const char *needle)
{
    static const char *const files[] = {"slimd.db", "slimd.db-wal"};
    int found = 0;
    for (int i = 0; i < 2 && !found; i++) {
        char path[4096], *buf;
        FILE *f;
        long n;
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (!(f = fopen(path, "rb")))
            continue;
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        rewind(f);
        buf = malloc((size_t)n + 1);
        assert_non_null(buf);
        assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
        fclose(f);
        found = memmem(buf, (size_t)n, needle, strlen(needle)) != NULL;
        free(buf);
    }
    return found;
}

static void test_tokens(void **state)
{
    /* create shows the secret once and stores only its hash; verify
     * finds the token by it (and records last_used_at), refuses a
     * malformed, unknown or revoked one; revoke is idempotent; a second
     * connection (the CLI beside a daemon) sees a revocation at once;
     * store_open_meta leaves tmp/ alone */
    (void)state;
    const char *dir = data_dir("tokens");
    char secret[STORE_TOKEN_LEN + 1], other[STORE_TOKEN_LEN + 1], hash[65], id[32], path[4096];
    struct store *st = open_store(dir), *cli = NULL;
    struct store_token tok;
    struct slim_error err;
    json_t *row, *rows;
    int64_t live;
    int was = -1;

    assert_int_equal(store_token_create(st, "", STORE_SCOPE_READ, secret, &row, &err),
                     SLIM_EINVAL);
    assert_int_equal(store_token_create(st, "x", 0, secret, &row, &err), SLIM_EINVAL);
    assert_int_equal(store_token_create(st, "x", 8, secret, &row, &err), SLIM_EINVAL);
    assert_int_equal(store_token_create(st, "\xff\xfe", 1, secret, &row, &err), SLIM_EINVAL);

    assert_int_equal(store_token_create(st, "ci", STORE_SCOPE_READ | STORE_SCOPE_SUBMIT, secret,
                                        &row, &err), 0);
    assert_id(sfield(row, "id"), "tok_");
    snprintf(id, sizeof id, "%s", sfield(row, "id"));
    assert_string_equal(sfield(row, "name"), "ci");
    assert_int_equal(json_array_size(json_object_get(row, "scopes")), 2);
    assert_string_equal(json_string_value(json_array_get(json_object_get(row, "scopes"), 0)),
                        "read");
    assert_string_equal(json_string_value(json_array_get(json_object_get(row, "scopes"), 1)),
                        "submit");
    assert_rfc3339(sfield(row, "created_at"));
    assert_true(json_is_null(json_object_get(row, "last_used_at")));
    assert_true(json_is_false(json_object_get(row, "revoked")));
    assert_null(json_object_get(row, "token"));
    assert_null(json_object_get(row, "hash"));
    json_decref(row);
    assert_int_equal(strlen(secret), STORE_TOKEN_LEN);

    /* the database holds the hash, never the secret */
    assert_int_equal(store_token_hash(secret, hash, &err), 0);
    assert_true(db_holds(dir, hash));
    assert_false(db_holds(dir, secret));
    assert_false(db_holds(dir, secret + 6));

    memset(&tok, 0x55, sizeof tok);
    assert_int_equal(store_token_verify(st, secret, &tok, &err), 0);
    assert_string_equal(tok.id, id);
    assert_int_equal(tok.scopes, STORE_SCOPE_READ | STORE_SCOPE_SUBMIT);
    assert_int_equal(store_token_list(st, &rows, &err), 0);
    assert_int_equal(json_array_size(rows), 1);
    assert_rfc3339(sfield(json_array_get(rows, 0), "last_used_at"));
    json_decref(rows);

    /* a secret of the right shape that is not ours; malformed ones */
    snprintf(other, sizeof other, "%s", secret);
    other[STORE_TOKEN_LEN - 1] = other[STORE_TOKEN_LEN - 1] == '0' ? '1' : '0';
    assert_int_equal(store_token_verify(st, other, &tok, &err), SLIM_EUNAUTH);
    assert_non_null(strstr(err.msg, "not one of"));
    assert_null(strstr(err.msg, other));
    assert_string_equal(tok.id, "");
    const char *bad[] = {"", "slimd_", "Bearer x", "slimd_ABCDEF", secret + 1};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(store_token_verify(st, bad[i], &tok, &err), SLIM_EUNAUTH);
        assert_non_null(strstr(err.msg, "malformed"));
    }
    char upper[STORE_TOKEN_LEN + 1];
    snprintf(upper, sizeof upper, "slimd_%s", secret + 6);
    for (char *c = upper + 6; *c; c++)
        if (*c >= 'a' && *c <= 'f')
            *c = (char)(*c - 'a' + 'A');
    assert_int_equal(store_token_verify(st, upper, &tok, &err) == 0, strcmp(upper, secret) == 0);

    /* a second connection on the same database, as `slimd token` is */
    snprintf(path, sizeof path, "%s/tmp/upload-in-progress", dir);
    fclose(fopen(path, "w"));
    assert_int_equal(store_open_meta(dir, &cli, &err), 0);
    assert_int_equal(access(path, F_OK), 0);     /* the daemon's upload survives */
    assert_int_equal(store_token_count_live(cli, &live, &err), 0);
    assert_int_equal(live, 1);
    assert_int_equal(store_token_revoke(cli, id, &was, &err), 0);
    assert_int_equal(was, 0);
    assert_int_equal(store_token_revoke(cli, id, &was, &err), 0);
    assert_int_equal(was, 1);
    assert_int_equal(store_token_revoke(cli, "tok_0000000000000000", &was, &err),
                     SLIM_ENOTFOUND);
    store_close(cli);
    assert_int_equal(store_token_verify(st, secret, &tok, &err), SLIM_EUNAUTH);
    assert_non_null(strstr(err.msg, "revoked"));
    assert_int_equal(store_token_count_live(st, &live, &err), 0);
    assert_int_equal(live, 0);
    assert_int_equal(store_token_list(st, &rows, &err), 0);
    assert_true(json_is_true(json_object_get(json_array_get(rows, 0), "revoked")));
    json_decref(rows);
    store_close(st);
}

static void test_owner_filters(void **state)
{
    /* rows record their owner; a token's lists (and totals) hold only
     * its rows, NULL (admin, --auth none) holds every row */
    (void)state;
    struct store *st = open_store(data_dir("owners"));
    char secret[STORE_TOKEN_LEN + 1], a[32], b[32];
    json_t *info, *row, *rows, *spec;
    struct slim_error err;
    const char *m0 = put_model(st, "nobody's", "w0");
    int total;

    assert_int_equal(store_token_create(st, "a", STORE_SCOPE_SUBMIT, secret, &row, &err), 0);
    snprintf(a, sizeof a, "%s", sfield(row, "id"));
    json_decref(row);
    assert_int_equal(store_token_create(st, "b", STORE_SCOPE_SUBMIT, secret, &row, &err), 0);
    snprintf(b, sizeof b, "%s", sfield(row, "id"));
    json_decref(row);

    info = json_pack("{s:s, s:i, s:i}", "format", "safetensors", "tensors", 1, "params", 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(store_model_insert(st, a, "a's", put_blob(st, "wa"), 2, info, &row, &err),
                         0);
        assert_string_equal(sfield(row, "owner"), a);
        json_decref(row);
    }
    assert_int_equal(store_model_insert(st, b, "b's", put_blob(st, "wb"), 2, info, &row, &err), 0);
    json_decref(row);
    assert_int_equal(store_dataset_insert(st, b, "b's", put_blob(st, "db"), 2, info, &row, &err),
                     0);
    assert_string_equal(sfield(row, "owner"), b);
    json_decref(row);
    json_decref(info);

    assert_int_equal(store_model_list(st, a, 2, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 3);
    assert_int_equal(json_array_size(rows), 2);   /* paged within a's rows */
    assert_string_equal(sfield(json_array_get(rows, 0), "owner"), a);
    json_decref(rows);
    assert_int_equal(store_model_list(st, a, 10, 2, &rows, &total, &err), 0);
    assert_int_equal(json_array_size(rows), 1);
    json_decref(rows);
    assert_int_equal(store_model_list(st, b, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 1);
    assert_string_equal(sfield(json_array_get(rows, 0), "name"), "b's");
    json_decref(rows);
    assert_int_equal(store_model_list(st, NULL, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 5);
    json_decref(rows);
    assert_int_equal(store_dataset_list(st, a, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 0);
    json_decref(rows);
    assert_int_equal(store_dataset_list(st, b, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 1);
    json_decref(rows);

    claim_expect(st, put_job(st, m0));   /* nobody's, running */
    spec = json_object();
    for (int i = 0; i < 2; i++) {
        assert_int_equal(store_job_insert(st, a, m0, NULL, spec, 0, 0, &row, &err), 0);
        json_decref(row);
    }
    assert_int_equal(store_job_insert(st, b, m0, NULL, spec, 0, 0, &row, &err), 0);
    json_decref(row);
    json_decref(spec);
    assert_int_equal(store_job_list(st, NULL, STORE_JOB_RUNNING, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 1);
    json_decref(rows);
    assert_int_equal(store_job_list(st, a, -1, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 2);
    json_decref(rows);
    assert_int_equal(store_job_list(st, a, STORE_JOB_QUEUED, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 2);
    json_decref(rows);
    assert_int_equal(store_job_list(st, b, STORE_JOB_RUNNING, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 0);
    json_decref(rows);
    assert_int_equal(store_job_list(st, NULL, -1, 10, 0, &rows, &total, &err), 0);
    assert_int_equal(total, 4);
    json_decref(rows);
    store_close(st);
}

static void test_error_paths_are_relative(void **state)
{
    /* an I/O error's message (which clients see, as an upload's or a
     * job's error) names the file inside the data dir, not where the
     * server keeps it: the fan-out folder blobs/ba is made a plain file,
     * so the commit of "abc" (sha ba78...) cannot rename into it */
    (void)state;
    const char *dir = data_dir("relative");
    struct store *st = open_store(dir);
    struct blob_writer *bw;
    struct slim_error err;
    char path[4096], sha[65];

    snprintf(path, sizeof path, "%s/blobs/ba", dir);
    fclose(fopen(path, "w"));
    assert_int_equal(store_blob_begin(st, &bw, &err), 0);
    assert_int_equal(store_blob_write(bw, "abc", 3, &err), 0);
    assert_int_not_equal(store_blob_commit(bw, sha, &err), 0);
    assert_non_null(strstr(err.msg, "blobs/ba/" SHA_ABC));
    assert_null(strstr(err.msg, test_tmp_dir()));
    assert_null(strstr(err.msg, dir));
    assert_int_equal(tmp_files(st), 0);
    store_close(st);
}

static void test_alloc_failures(void **state)
{
    const char *dir = data_dir("nomem");
    long before = slim_alloc_live();
    struct store *st = NULL;
    struct blob_writer *bw;
    struct slim_error err;
    char tmp[4096], sha[65];
    uint64_t bytes;
    int rc = -1;
    (void)state;

    /* every allocation of the open fails in turn (one per statement:
     * storage/db_sqlite.c wraps each) */
    for (long n = 0; rc && n < 200; n++) {
        slim_alloc_fail_after(n);
        rc = store_open(dir, &st, &err);
        slim_alloc_fail_after(-1);
        assert_true(rc == 0 || rc == SLIM_ENOMEM);
        if (rc)
            assert_int_equal(slim_alloc_live(), before);
    }
    assert_int_equal(rc, 0);
    slim_alloc_fail_after(0);
    assert_int_equal(store_blob_begin(st, &bw, &err), SLIM_ENOMEM);
    slim_alloc_fail_after(-1);
    assert_int_equal(store_tmp_path(st, ".out", tmp, sizeof tmp), 0);
    fclose(fopen(tmp, "w"));
    slim_alloc_fail_after(0);
    assert_int_equal(store_blob_adopt(st, tmp, sha, &bytes, &err), SLIM_ENOMEM);
    slim_alloc_fail_after(-1);
    assert_int_equal(tmp_files(st), 0);
    store_close(st);
    assert_int_equal(slim_alloc_live(), before);
}

static void test_no_leaks_in_wrappers(void **state)
{
    (void)state;
    long before = slim_alloc_live();
    struct store *st = open_store(data_dir("leaks"));
    struct blob_writer *bw;
    struct slim_error err;
    put_job(st, put_model(st, "m", "leak check"));
    assert_int_equal(store_blob_begin(st, &bw, &err), 0);
    store_blob_abort(bw);
    store_close(st);
    assert_int_equal(slim_alloc_live(), before);
}

/* Schema 6: one daemon per data dir, job delete and pin, retention's
 * protections and Idempotency-Key records. */
static void succeed_with(struct store *st, const char *id, const char *text)
{
    struct slim_error err;
    json_t *rep = json_pack("{s:s}", "note", text);
    claim_expect(st, id);
    if (store_job_succeed(st, id, put_blob(st, text), strlen(text), rep, &err))
        fail_msg("succeed %s: %s", id, err.msg);
    json_decref(rep);
}

static void age_job(const char *dir, const char *id, int days)
{
    char path[4096], sql[512];
    sqlite3 *db;
    snprintf(path, sizeof path, "%s/slimd.db", dir);
    snprintf(sql, sizeof sql, "UPDATE jobs SET finished_at = strftime('%%Y-%%m-%%dT%%H:%%M:%%SZ',"
             " 'now', '-%d days') WHERE id = '%s'", days, id);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void test_lifecycle(void **state)
{
    (void)state;
    const char *dir = data_dir("lifecycle");
    struct store *st = open_store(dir);
    struct store_retention_result res;
    struct store_retention cfg = {0, 0, 0};
    struct store_idem replay;
    struct slim_error err;
    char j[6][32], art[6][65];
    json_t *row;
    uint64_t freed = 99;
    int fd = -1, fd2 = -1;

    /* the lock: a second holder is refused, naming the first's pid */
    assert_int_equal(store_lock_dir(dir, &fd, &err), 0);
    assert_int_equal(store_lock_dir(dir, &fd2, &err), SLIM_ECONFLICT);
    assert_non_null(strstr(err.msg, "in use by another slimd (pid "));
    assert_int_equal(fd2, -1);
    close(fd);
    assert_int_equal(store_lock_dir(dir, &fd2, &err), 0);   /* released with its fd */
    close(fd2);

    const char *m = put_model(st, "m", "lifecycle model");
    for (int i = 0; i < 6; i++)
        snprintf(j[i], 32, "%s", put_job(st, m));
    for (int i = 0; i < 4; i++) {
        char text[32];
        snprintf(text, sizeof text, "artifact %d", i);
        succeed_with(st, j[i], text);
        row = get_job(st, j[i]);
        snprintf(art[i], 65, "%s", sfield(json_object_get(row, "artifact"), "sha256"));
        assert_int_equal(strlen(sfield(row, "model_sha256")), 64);
        assert_true(json_is_false(json_object_get(row, "pinned")));
        json_decref(row);
    }
    claim_expect(st, j[4]);            /* j4 runs, j5 stays queued */
    assert_int_equal(store_job_delete(st, j[4], NULL, &err), SLIM_ECONFLICT);
    assert_non_null(strstr(err.msg, "cancel it first"));
    assert_int_equal(store_job_delete(st, "job_0000000000000000", NULL, &err), SLIM_ENOTFOUND);

    /* pins; retention by age: j0..j2 finished 3 days ago, j1 pinned, j3
     * is the model's newest success, j4 runs, j5 is queued */
    assert_int_equal(store_job_pin(st, j[1], 1, &row, &err), 0);
    assert_true(json_is_true(json_object_get(row, "pinned")));
    json_decref(row);
    for (int i = 0; i < 3; i++)
        age_job(dir, j[i], 3);
    cfg.retain_days = 5;
    assert_int_equal(store_retention_sweep(st, &cfg, &res, &err), 0);
    assert_int_equal(res.expired, 0);
    cfg.retain_days = 2;
    assert_int_equal(store_retention_sweep(st, &cfg, &res, &err), 0);
    assert_int_equal(res.expired, 2);
    assert_true(res.freed > 0);
    assert_int_equal(store_job_get(st, j[0], &row, &err), SLIM_ENOTFOUND);
    assert_int_equal(store_job_get(st, j[2], &row, &err), SLIM_ENOTFOUND);
    assert_false(blob_exists(st, art[0]) || blob_exists(st, art[2]));
    json_decref(get_job(st, j[1]));   /* pinned */
    json_decref(get_job(st, j[3]));   /* the model's newest success */
    json_decref(get_job(st, j[4]));   /* running */
    json_decref(get_job(st, j[5]));   /* queued */
    assert_true(blob_exists(st, art[1]) && blob_exists(st, art[3]));
    /* by size: nothing left that may go (j1 pinned, j3 newest) */
    cfg.retain_days = 0;
    cfg.max_bytes = 1;
    assert_int_equal(store_retention_sweep(st, &cfg, &res, &err), 0);
    assert_int_equal(res.evicted, 0);
    assert_int_equal(res.over, 1);
    assert_true(res.bytes_after > 0 && res.bytes_after == store_data_bytes(st));
    assert_int_equal(store_job_pin(st, j[1], 0, &row, &err), 0);
    json_decref(row);
    assert_int_equal(store_retention_sweep(st, &cfg, &res, &err), 0);
    assert_int_equal(res.evicted, 1);           /* j1, now unpinned */
    assert_false(blob_exists(st, art[1]));
    assert_true(blob_exists(st, art[3]));

    /* delete: a queued job goes (never claimed), a finished one with its blob */
    assert_int_equal(store_job_delete(st, j[5], &freed, &err), 0);
    assert_int_equal(freed, 0);
    assert_int_equal(store_job_claim(st, UINT64_MAX, &row, &err), SLIM_ENOTFOUND);
    assert_int_equal(store_job_delete(st, j[3], &freed, &err), 0);
    assert_true(freed > 0);
    assert_false(blob_exists(st, art[3]));

    /* Idempotency-Key: new, in progress, replayed, other request, released */
    assert_int_equal(store_idem_claim(st, "POST /v1/jobs", NULL, "k1", SHA_ABC, &replay, &err), 0);
    assert_int_equal(replay.status, 0);
    assert_int_equal(store_idem_claim(st, "POST /v1/jobs", NULL, "k1", SHA_ABC, &replay, &err),
                     SLIM_ECONFLICT);
    row = json_pack("{s:s}", "id", "job_x");
    assert_int_equal(store_idem_finish(st, "POST /v1/jobs", NULL, "k1", 202, "/v1/jobs/job_x",
                                       row, &err), 0);
    json_decref(row);
    assert_int_equal(store_idem_claim(st, "POST /v1/jobs", NULL, "k1", SHA_ABC, &replay, &err), 0);
    assert_int_equal(replay.status, 202);
    assert_string_equal(replay.location, "/v1/jobs/job_x");
    assert_string_equal(sfield(replay.response, "id"), "job_x");
    json_decref(replay.response);
    assert_int_equal(store_idem_claim(st, "POST /v1/jobs", NULL, "k1", SHA_EMPTY, &replay, &err),
                     SLIM_EIDEMPOTENCY);
    assert_int_equal(slim_http_status(SLIM_EIDEMPOTENCY), 422);
    /* another token, another route: another key */
    assert_int_equal(store_idem_claim(st, "POST /v1/jobs", "tok_1", "k1", SHA_EMPTY, &replay,
                                      &err), 0);
    assert_int_equal(store_idem_claim(st, "POST /v1/models", NULL, "k1", SHA_EMPTY, &replay,
                                      &err), 0);
    store_idem_release(st, "POST /v1/models", NULL, "k1");
    assert_int_equal(store_idem_claim(st, "POST /v1/models", NULL, "k1", SHA_ABC, &replay, &err),
                     0);
    /* a claim left pending by a process that died is forgotten at open */
    store_close(st);
    st = open_store(dir);
    assert_int_equal(store_idem_claim(st, "POST /v1/models", NULL, "k1", SHA_EMPTY, &replay,
                                      &err), 0);
    assert_int_equal(store_idem_claim(st, "POST /v1/jobs", NULL, "k1", SHA_ABC, &replay, &err), 0);
    assert_int_equal(replay.status, 202);     /* a finished one is kept */
    json_decref(replay.response);
    store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_migrate_reopen),
        cmocka_unit_test(test_models),
        cmocka_unit_test(test_migrate_from_v1),
        cmocka_unit_test(test_migrate_from_v2),
        cmocka_unit_test(test_migrate_from_v3),
        cmocka_unit_test(test_token_hash_and_scopes),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_owner_filters),
        cmocka_unit_test(test_error_paths_are_relative),
        cmocka_unit_test(test_datasets),
        cmocka_unit_test(test_dataset_blobs_shared),
        cmocka_unit_test(test_dataset_delete_and_jobs),
        cmocka_unit_test(test_blob_sha_and_dedup),
        cmocka_unit_test(test_blob_ring),
        cmocka_unit_test(test_job_lifecycle),
        cmocka_unit_test(test_leases),
        cmocka_unit_test(test_recover),
        cmocka_unit_test(test_model_delete_and_jobs),
        cmocka_unit_test(test_concurrent_claim),
        cmocka_unit_test(test_claim_within_memory),
        cmocka_unit_test(test_full_disk_acknowledges_nothing),
        cmocka_unit_test(test_full_disk_drops_the_artifact),
        cmocka_unit_test(test_retry_counts_attempts),
        cmocka_unit_test(test_wal_kept_and_reserved),
        cmocka_unit_test(test_sweep_orphans),
        cmocka_unit_test(test_shared_blob_dir),
        cmocka_unit_test(test_blob_specs),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_no_leaks_in_wrappers),
        cmocka_unit_test(test_lifecycle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * store.c - slimd's metadata in SQLite (or PostgreSQL): schema,
 * migrations, models, datasets and the job queue (blob files are
 * blob.c's).
 *
 * The database is reached through storage/db.h, whose calls are
 * SQLite's one to one; everything below is written for SQLite, and
 * PostgreSQL (--store postgresql://...) runs the same code, with its own
 * SQL where the dialects differ (sql_pg[], migrations_pg[], and the
 * st->pg switches at the few ad-hoc statements) and without what only
 * SQLite's file needs (the WAL's reserve).  Rejected: an ORM-like layer
 * building SQL for both (more code than the two dozen statements it
 * would replace, and every statement harder to read).
 *
 * One connection (SQLITE_OPEN_FULLMUTEX) and our own mutex around every
 * public function: the mutex is what makes the reused prepared statements,
 * db_errmsg() and read-then-write sequences safe across the HTTP
 * threads and the runner.  All SQL is static text prepared once at open
 * (SQLITE_PREPARE_PERSISTENT); every value is bound.  On PostgreSQL, the
 * same: one connection behind the mutex (each statement is a round trip
 * to the server, a fraction of a millisecond on a LAN, held under the
 * lock: fine for the few statements a request makes), and BEGIN
 * IMMEDIATE's one writer at a time is an advisory lock
 * (Q_BEGIN_IMMEDIATE), so the read-then-write sequences below hold
 * across daemons too.
 *
 * WAL with synchronous=FULL, not NORMAL: NORMAL may lose the last commits
 * on power loss, and a job acknowledged with 202 must survive (DESIGN.md);
 * one WAL fsync per commit is small next to the fsyncs every blob pays.
 * A busy timeout of 5 s covers another process holding the database.
 * Every write's result is checked to its end, the commit included (see
 * one_row and finish); a disk that is full (SQLITE_FULL, or ENOSPC under
 * an I/O error) is SLIM_ENOSPACE, the API's 507.
 *
 * A full disk must not stop slimd from recording what it did (a job
 * that failed must not stay `running`) nor from starting.  Both need
 * SQLite to write, and SQLite writes into its WAL, so the WAL is what
 * holds the space: it is persistent (SQLITE_FCNTL_PERSIST_WAL: the -wal
 * and -shm files are not deleted at close, so a start needs no new
 * file), checkpointed at open (so the first write starts it over in the
 * space it has), and preallocated (store_wal_reserve, fallocate) to a
 * few MiB.  With one connection every checkpoint completes, the WAL
 * restarts from its beginning long before its end, and a write needs no
 * new block; when the disk is so full that the database file cannot
 * grow for a checkpoint, the WAL still takes a few thousand pages of
 * state changes in the space it owns.  Rejected: a separate reserve file
 * unlinked on SQLITE_FULL (tried first: uploads and artifacts in flight
 * took the freed space before SQLite's retry could), and
 * locking_mode=EXCLUSIVE (no -shm, but no sqlite3 shell beside slimd).
 * Migrations: migrations[] only grows; each step runs in BEGIN IMMEDIATE
 * with its PRAGMA user_version bump, so two processes cannot both migrate.
 *
 * jobs.model_id is ON DELETE SET NULL: deleting a model only finished jobs
 * use keeps their rows, reports and artifacts (the row shows "model": null,
 * the spec still names the id).  Rejected: CASCADE (loses artifacts users
 * may still fetch) and refusing forever (a model could never go away).
 *
 * Datasets have their own table (schema 3; models.kind, which was to tell
 * them apart in one table, is 'model' on every row since).  A dataset's
 * row stores what slim_dataset_describe said as JSON (info) and shows
 * it beside its columns, so storage knows nothing of the fields.  A job
 * that evaluates on a dataset names it in jobs.dataset_id, filled at
 * submission in the same INSERT that checks the dataset exists; while
 * such a job is queued or running the dataset cannot be deleted (409),
 * and once it has finished the delete sets the column NULL, as for
 * models.  Blobs are shared by content: models, datasets and artifacts
 * may name the same sha256, and a blob goes when the last of them does.
 *
 * Tokens (schema 4) are rows of id, name, scope bits, the secret's
 * SHA-256 (token.c) and times; they are revoked, never deleted, so the
 * owner column that models, datasets and jobs gained with them always
 * names a row.  The list statements filter by owner with
 * "?N IS NULL OR owner = ?N" (NULL: every row): one statement for both
 * cases, at the cost of a scan in rowid order that an index on owner
 * would spare a token with few rows among many; the lists are paged and
 * the tables hold thousands of rows, not millions.
 *
 * A blob is committed (fsync, rename, fsync of its folder) before its row
 * is inserted, so a crash in between leaves a blob that nothing names;
 * store_open removes those (sweep_blobs), as it empties tmp/.  Removing
 * them at open, when nothing is being uploaded, was chosen over a
 * periodic sweep that would race uploads between commit and insert.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "storage/blob.h"
#include "storage/db.h"
#include "storage/store.h"

#define NOW "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')"
/* Unix seconds with a fraction, by the database's clock (every node
 * reads the same clock for leases): schema 9's lease_until and
 * heartbeat_at */
#define EPOCH "((julianday('now') - 2440587.5) * 86400.0)"
/* A running job recovery may take (bound as ?2 all, ?3 this node, ?4
 * the node id the data dir's last daemon had): all of them (SQLite at
 * start: one daemon per database), this node's (at its start nothing it
 * held still runs; nor anything its data dir's previous daemon held,
 * under another id, as on another port: the data dir's lock says that
 * one is gone), or any whose lease ran out (its node stopped renewing:
 * it died or lost the database) */
#define RECOVERABLE " state = 1 AND (?2 <> 0 OR node = ?3 OR node = ?4 OR lease_until IS NULL" \
    " OR lease_until < " EPOCH ")"
/* A model's info keeps its safetensors __metadata__ (up to 1 MiB) for
 * whoever needs it, but no reply shows it: SQLite drops it before the
 * row is parsed, so a list of such models costs what a list of small
 * ones does. */
#define MODEL_COLS "id, kind, name, format, bytes, sha256, json_remove(info, '$.metadata'), " \
    "created_at, owner, " DUPLICATES("models")
/* Other rows of the same owner holding the same bytes (one blob): the
 * API's "duplicates".  Counted among the owner's rows only, so that a
 * token learns nothing of another token's uploads. */
#define DUPLICATES(t) "(SELECT count(*) FROM " t " d WHERE d.sha256 = " t ".sha256" \
    " AND d.id != " t ".id AND d.owner IS " t ".owner)"
#define DATASET_COLS "id, name, format, bytes, sha256, info, created_at, owner, " \
    DUPLICATES("datasets")
#define JOB_COLS                                                                   \
    "id, model_id, state, progress, stage, error, attempts, cancel_requested, "    \
    "created_at, started_at, finished_at, spec, artifact_sha, artifact_bytes, mem_bytes, "  \
    "dataset_id, owner, error_code, " JOB_V6_COLS ", warning_count, training, node"
/* Schema 6: the job's name, labels (a JSON object), pin, and the sha256
 * of its model as it was at submission (kept when the model goes). */
#define JOB_V6_COLS "name, labels, pinned, model_sha256"
/* A list row shows its spec's ops, not the spec: a page of 1,000 jobs
 * stays small whatever their specs hold (SQLite reads the ops out, so
 * the specs are never parsed into JSON objects here either). */
#define JOB_LIST_COLS                                                              \
    "id, model_id, state, progress, stage, error, attempts, cancel_requested, "    \
    "created_at, started_at, finished_at, (SELECT json_group_array(json_extract(p.value, '$.op'))" \
    " FROM json_each(jobs.spec, '$.passes') AS p), artifact_sha, artifact_bytes, mem_bytes, "  \
    "dataset_id, owner, error_code, " JOB_V6_COLS ", warning_count, training, node"
#define TOKEN_COLS "id, name, scopes, created_at, last_used_at, revoked"
/* ?N: an owner's token id, or NULL for every row */
#define OWNED(n) " (?" #n " IS NULL OR owner = ?" #n ")"
/* The lists of uploads: ?1 limit, ?2 offset, ?3 owner, ?4 a name and ?5
 * a sha256 (NULL: any).  The counts bind the same numbers (?1 and ?2
 * unused), so one binding serves both. */
#define NAMED " (?4 IS NULL OR name = ?4) AND (?5 IS NULL OR sha256 = ?5)"
#define ORDER_PAGE " ORDER BY rowid DESC LIMIT ?1 OFFSET ?2"
/* The job lists' filters: ?3 owner, ?4 state (-1: any), ?5 name, ?6 model
 * id, ?7 labels as a JSON object every pair of which the job's labels
 * must hold (NULL: any); ?1 and ?2 as above. */
#define JOB_FILTER OWNED(3) " AND (?4 < 0 OR state = ?4) AND (?5 IS NULL OR name = ?5)" \
    " AND (?6 IS NULL OR model_id = ?6) AND (?7 IS NULL OR NOT EXISTS (SELECT 1 FROM" \
    " json_each(?7) f WHERE labels IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(jobs.labels) l" \
    " WHERE l.key = f.key AND l.value = f.value)))"
/* j is its model's newest succeeded job: retention keeps it */
#define LAST_OF_MODEL " (j.state = 2 AND j.model_id IS NOT NULL AND j.seq = (SELECT max(k.seq)" \
    " FROM jobs k WHERE k.model_id = j.model_id AND k.state = 2))"
/* The spec names id ?N as a JSON string anywhere (a distill pass's
 * student or dataset): ids are unique random strings, so a match is a
 * reference. */
#define SPEC_NAMES(n) "instr(spec, '\"' || ?" #n " || '\"') > 0"

/* Append only: entry i takes the schema from version i to i + 1. */
static const char *const migrations[] = {
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
    "CREATE INDEX jobs_artifact ON jobs(artifact_sha);",
    /* 2: the memory a job reserves while it runs (its limits.memory_mb,
     * or the pipeline's estimate), for the runner's --job-memory-mb */
    "ALTER TABLE jobs ADD COLUMN mem_bytes INTEGER NOT NULL DEFAULT 0;",
    /* 3: datasets in a table of their own (rows the models table held
     * as kind 'dataset' move over, ids kept), and the dataset a job
     * evaluates on */
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
    "CREATE INDEX jobs_dataset ON jobs(dataset_id);",
    /* 4: bearer tokens (the secret's sha256, never the secret; scopes
     * as bits), and the token that created each model, dataset and job
     * (NULL for rows made with --auth none or before tokens existed) */
    "CREATE TABLE tokens ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  scopes INTEGER NOT NULL CHECK (scopes > 0),"
    "  hash TEXT NOT NULL UNIQUE,"
    "  created_at TEXT NOT NULL,"
    "  last_used_at TEXT,"
    "  revoked INTEGER NOT NULL DEFAULT 0);"
    "ALTER TABLE models ADD COLUMN owner TEXT REFERENCES tokens(id);"
    "ALTER TABLE datasets ADD COLUMN owner TEXT REFERENCES tokens(id);"
    "ALTER TABLE jobs ADD COLUMN owner TEXT REFERENCES tokens(id);",
    /* 5: a failed job's REST error code beside its message */
    "ALTER TABLE jobs ADD COLUMN error_code TEXT;",
    /* 6 (lifecycle): a job's name and labels (copied out of its spec,
     * for the list's filters), its pin (retention leaves it), the
     * sha256 of its model at submission; model names indexed for
     * {"model": {"name": ...}}; Idempotency-Key records (api/idem.c) */
    "ALTER TABLE jobs ADD COLUMN name TEXT;"
    "ALTER TABLE jobs ADD COLUMN labels TEXT;"
    "ALTER TABLE jobs ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN model_sha256 TEXT;"
    "UPDATE jobs SET model_sha256 = (SELECT sha256 FROM models WHERE id = jobs.model_id);"
    "CREATE INDEX jobs_name ON jobs(name);"
    "CREATE INDEX jobs_finished ON jobs(state, finished_at);"
    "CREATE INDEX models_name ON models(name);"
    "CREATE TABLE idempotency ("
    "  route TEXT NOT NULL,"
    "  owner TEXT NOT NULL,"
    "  key TEXT NOT NULL,"
    "  request_sha256 TEXT NOT NULL,"
    "  status INTEGER NOT NULL DEFAULT 0,"
    "  location TEXT,"
    "  response TEXT,"
    "  created_at TEXT NOT NULL,"
    "  PRIMARY KEY (route, owner, key));",
    /* 7: webhook deliveries (a finished job's notify.url: state 0 to
     * send, 1 delivered, 2 given up; next_at in Unix seconds), so a
     * restart resumes them; and a report's count of warnings */
    "CREATE TABLE webhooks ("
    "  job_id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,"
    "  url TEXT NOT NULL,"
    "  state INTEGER NOT NULL DEFAULT 0,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  next_at REAL NOT NULL DEFAULT 0,"
    "  last_status INTEGER,"
    "  last_error TEXT,"
    "  delivered_at TEXT);"
    "CREATE INDEX webhooks_due ON webhooks(state, next_at);"
    "ALTER TABLE jobs ADD COLUMN warning_count INTEGER;",
    /* 8 (train-passes): a training pass's state while and after it
     * runs, JSON (GET /v1/jobs/{id} "training") */
    "ALTER TABLE jobs ADD COLUMN training TEXT;",
    /* 9 (queue): the node that holds a running job, its lease (Unix
     * seconds; renewed by the node's heartbeat, recovery takes a job
     * whose lease ran out) and when the node last renewed it */
    "ALTER TABLE jobs ADD COLUMN node TEXT;"
    "ALTER TABLE jobs ADD COLUMN lease_until REAL;"
    "ALTER TABLE jobs ADD COLUMN heartbeat_at REAL;"
    "CREATE INDEX jobs_node ON jobs(node) WHERE state = 1;",
};

enum q {
    Q_BEGIN, Q_BEGIN_IMMEDIATE, Q_COMMIT, Q_ROLLBACK,
    Q_MODEL_INSERT, Q_MODEL_GET, Q_MODEL_LIST, Q_MODEL_COUNT, Q_MODEL_USER, Q_MODEL_DELETE,
    Q_SHA_REFS,
    Q_DS_INSERT, Q_DS_GET, Q_DS_LIST, Q_DS_COUNT, Q_DS_USER, Q_DS_DELETE,
    Q_JOB_INSERT, Q_JOB_GET, Q_JOB_LIST, Q_JOB_COUNT,
    Q_JOB_CLAIM, Q_JOB_PROGRESS, Q_JOB_TRAINING, Q_JOB_SUCCEED, Q_JOB_FAIL, Q_JOB_CANCEL_QUEUED,
    Q_JOB_CANCEL_RUNNING, Q_JOB_CANCELED, Q_JOB_REQUEUE, Q_JOB_REPORT, Q_JOB_COUNTS,
    Q_RECOVER_CANCELED, Q_RECOVER_FAIL, Q_RECOVER_REQUEUE, Q_JOB_RETRY,
    Q_TOKEN_INSERT, Q_TOKEN_LIST, Q_TOKEN_FIND, Q_TOKEN_TOUCH, Q_TOKEN_REVOKE, Q_TOKEN_GET,
    Q_TOKEN_COUNT_LIVE,
    Q_JOB_DELETE, Q_JOB_PIN, Q_RET_EXPIRED, Q_RET_OLDEST, Q_IDEM_EXPIRE, Q_IDEM_GET,
    Q_IDEM_INSERT, Q_IDEM_FINISH, Q_IDEM_RELEASE, Q_IDEM_PENDING,
    Q_JOB_HEARTBEAT, Q_JOB_HOLDER, Q_NOTIFY, Q_NODE_JOBS,
    Q_COUNT
};

static const char *const sql[Q_COUNT] = {
    [Q_BEGIN] = "BEGIN",
    [Q_BEGIN_IMMEDIATE] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
    [Q_MODEL_INSERT] = "INSERT INTO models (id, kind, name, format, bytes, sha256, info, owner,"
                       " created_at) VALUES (?1, 'model', ?2, ?3, ?4, ?5, ?6, ?7, " NOW ")"
                       " RETURNING " MODEL_COLS,
    [Q_MODEL_GET] = "SELECT " MODEL_COLS " FROM models WHERE id = ?1",
    [Q_MODEL_LIST] = "SELECT " MODEL_COLS " FROM models WHERE kind = 'model' AND" OWNED(3)
                     " AND" NAMED ORDER_PAGE,
    [Q_MODEL_COUNT] = "SELECT count(*) FROM models WHERE kind = 'model' AND" OWNED(3)
                      " AND" NAMED,
    [Q_MODEL_USER] = "SELECT id, state FROM jobs WHERE state IN (0, 1) AND (model_id = ?1"
                     " OR " SPEC_NAMES(1) ") ORDER BY seq LIMIT 1",
    [Q_MODEL_DELETE] = "DELETE FROM models WHERE id = ?1",
    [Q_SHA_REFS] = "SELECT (SELECT count(*) FROM models WHERE sha256 = ?1)"
                   " + (SELECT count(*) FROM datasets WHERE sha256 = ?1)"
                   " + (SELECT count(*) FROM jobs WHERE artifact_sha = ?1)",
    [Q_DS_INSERT] = "INSERT INTO datasets (id, name, format, bytes, sha256, info, owner,"
                    " created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, " NOW ")"
                    " RETURNING " DATASET_COLS,
    [Q_DS_GET] = "SELECT " DATASET_COLS " FROM datasets WHERE id = ?1",
    [Q_DS_LIST] = "SELECT " DATASET_COLS " FROM datasets WHERE" OWNED(3) " AND" NAMED ORDER_PAGE,
    [Q_DS_COUNT] = "SELECT count(*) FROM datasets WHERE" OWNED(3) " AND" NAMED,
    [Q_DS_USER] = "SELECT id, state FROM jobs WHERE state IN (0, 1) AND (dataset_id = ?1"
                  " OR " SPEC_NAMES(1) ") ORDER BY seq LIMIT 1",
    [Q_DS_DELETE] = "DELETE FROM datasets WHERE id = ?1",
    /* selecting from models makes a missing (or non-'model') id insert
     * nothing, and so does a dataset (?6, when not NULL) that is missing */
    [Q_JOB_INSERT] = "INSERT INTO jobs (id, seq, model_id, dataset_id, spec, mem_bytes, owner,"
                     " created_at, name, labels, model_sha256) SELECT ?1,"
                     " (SELECT coalesce(max(seq), 0) + 1 FROM jobs), id,"
                     " ?6, ?3, ?4, ?7, " NOW ", json_extract(?3, '$.name'),"
                     " json_extract(?3, '$.labels'), sha256 FROM models"
                     " WHERE id = ?2 AND kind = 'model'"
                     " AND (?6 IS NULL OR EXISTS (SELECT 1 FROM datasets WHERE id = ?6))"
                     " AND (SELECT count(*) FROM jobs WHERE state = 0) < ?5 RETURNING " JOB_COLS,
    [Q_JOB_GET] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?1",
    [Q_JOB_LIST] = "SELECT " JOB_LIST_COLS " FROM jobs WHERE" JOB_FILTER
                   " ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
    [Q_JOB_COUNT] = "SELECT count(*) FROM jobs WHERE" JOB_FILTER,
    [Q_JOB_CLAIM] = "UPDATE jobs SET state = 1, attempts = attempts + 1, started_at = " NOW ","
                    " finished_at = NULL, progress = 0, stage = 'load', error = NULL,"
                    " error_code = NULL, node = ?2, lease_until = " EPOCH " + ?3,"
                    " heartbeat_at = " EPOCH
                    " WHERE id = (SELECT id FROM jobs WHERE state = 0 ORDER BY seq LIMIT 1)"
                    " AND mem_bytes <= ?1 RETURNING " JOB_COLS,
    /* progress, training and every way out of running name the node
     * (the last ?N): a node whose lease ran out, and whose job another
     * node has claimed since, changes nothing */
    [Q_JOB_PROGRESS] = "UPDATE jobs SET progress = ?2, stage = coalesce(?3, stage)"
                       " WHERE id = ?1 AND state = 1 AND node IS ?4",
    [Q_JOB_TRAINING] = "UPDATE jobs SET training = ?2 WHERE id = ?1 AND state = 1 AND node IS ?3",
    [Q_JOB_SUCCEED] = "UPDATE jobs SET state = 2, progress = 1, stage = NULL, finished_at = " NOW ","
                      " artifact_sha = ?2, artifact_bytes = ?3, report = ?4,"
                      " warning_count = json_array_length(?4, '$.warnings')"
                      " WHERE id = ?1 AND state = 1 AND cancel_requested = 0 AND node IS ?5",
    /* a cancel answered 200 wins over a failure that came after it; a
     * failed job keeps the stage it failed in (its page says where) */
    [Q_JOB_FAIL] = "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 4 ELSE 3 END,"
                   " stage = CASE WHEN cancel_requested THEN NULL ELSE stage END,"
                   " finished_at = " NOW ","
                   " error = CASE WHEN cancel_requested THEN NULL ELSE ?2 END,"
                   " error_code = CASE WHEN cancel_requested THEN NULL ELSE ?3 END"
                   " WHERE id = ?1 AND state = 1 AND node IS ?4",
    [Q_JOB_CANCEL_QUEUED] = "UPDATE jobs SET state = 4, cancel_requested = 1, finished_at = " NOW
                            " WHERE id = ?1 AND state = 0",
    [Q_JOB_CANCEL_RUNNING] = "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 AND state = 1",
    [Q_JOB_CANCELED] = "UPDATE jobs SET state = 4, stage = NULL, finished_at = " NOW
                       " WHERE id = ?1 AND state = 1 AND node IS ?2",
    /* a cancel asked for while running still wins over the re-queue */
    [Q_JOB_REQUEUE] = "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 4 ELSE 0 END,"
                      " finished_at = CASE WHEN cancel_requested THEN " NOW " END,"
                      " attempts = max(attempts - 1, 0), started_at = NULL, progress = 0,"
                      " stage = NULL, node = CASE WHEN cancel_requested THEN node END,"
                      " lease_until = NULL WHERE id = ?1 AND state = 1 AND node IS ?2",
    [Q_JOB_REPORT] = "SELECT state, report FROM jobs WHERE id = ?1",
    [Q_JOB_COUNTS] = "SELECT state, count(*) FROM jobs GROUP BY state",
    [Q_RECOVER_CANCELED] = "UPDATE jobs SET state = 4, stage = NULL, lease_until = NULL,"
                           " finished_at = " NOW " WHERE" RECOVERABLE " AND cancel_requested",
    [Q_RECOVER_FAIL] = "UPDATE jobs SET state = 3, stage = NULL, lease_until = NULL,"
                       " finished_at = " NOW ","
                       " error = 'interrupted ' || CASE attempts WHEN 1 THEN 'once'"
                       " ELSE attempts || ' times' END || ' (daemon restarts); giving up',"
                       " error_code = 'INTERNAL' WHERE" RECOVERABLE " AND attempts >= ?1",
    [Q_RECOVER_REQUEUE] = "UPDATE jobs SET state = 0, started_at = NULL, progress = 0, stage = NULL,"
                          " node = NULL, lease_until = NULL WHERE" RECOVERABLE,
    [Q_TOKEN_INSERT] = "INSERT INTO tokens (id, name, scopes, hash, created_at)"
                       " VALUES (?1, ?2, ?3, ?4, " NOW ") RETURNING " TOKEN_COLS,
    [Q_TOKEN_LIST] = "SELECT " TOKEN_COLS " FROM tokens ORDER BY rowid",
    /* the last column: whether last_used_at is a minute old (or unset) */
    [Q_TOKEN_FIND] = "SELECT id, scopes, revoked, last_used_at IS NULL OR last_used_at <"
                     " strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-60 seconds') FROM tokens"
                     " WHERE hash = ?1",
    [Q_TOKEN_TOUCH] = "UPDATE tokens SET last_used_at = " NOW " WHERE id = ?1",
    [Q_TOKEN_REVOKE] = "UPDATE tokens SET revoked = 1 WHERE id = ?1 AND revoked = 0",
    [Q_TOKEN_GET] = "SELECT " TOKEN_COLS " FROM tokens WHERE id = ?1",
    [Q_TOKEN_COUNT_LIVE] = "SELECT count(*) FROM tokens WHERE revoked = 0",
    /* attempts is not given back (unlike Q_JOB_REQUEUE): the claim
     * counted this attempt, and max_attempts (?2) bounds the retries;
     * the error stays on the queued row, so users see why it waits */
    [Q_JOB_RETRY] = "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 4"
                    " WHEN attempts >= ?2 THEN 3 ELSE 0 END,"
                    " finished_at = CASE WHEN cancel_requested OR attempts >= ?2 THEN " NOW " END,"
                    " started_at = CASE WHEN cancel_requested OR attempts >= ?2 THEN started_at END,"
                    " error = CASE WHEN cancel_requested THEN NULL ELSE ?3 END,"
                    " error_code = CASE WHEN cancel_requested THEN NULL ELSE ?4 END,"
                    " progress = 0, stage = NULL,"
                    " node = CASE WHEN cancel_requested OR attempts >= ?2 THEN node END,"
                    " lease_until = NULL WHERE id = ?1 AND state = 1 AND node IS ?5"
                    " RETURNING " JOB_COLS,
    /* ---- schema 6: lifecycle ---- */
    /* a running job is not deleted (cancel it first); a queued one may
     * be: the claim and this are single statements, one of them wins */
    [Q_JOB_DELETE] = "DELETE FROM jobs WHERE id = ?1 AND state != 1 RETURNING artifact_sha",
    [Q_JOB_PIN] = "UPDATE jobs SET pinned = ?2 WHERE id = ?1 RETURNING " JOB_COLS,
    /* retention's candidates: finished, not pinned, not a model's newest
     * succeeded job; --retain-days takes those finished before ?1 ("-N
     * days"), --max-data-bytes the oldest that hold an artifact */
    [Q_RET_EXPIRED] = "SELECT id FROM jobs j WHERE state IN (2, 3, 4) AND pinned = 0 AND"
                      " finished_at < strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ?1) AND NOT"
                      LAST_OF_MODEL " ORDER BY seq LIMIT 100",
    [Q_RET_OLDEST] = "SELECT id FROM jobs j WHERE state IN (2, 3, 4) AND pinned = 0 AND"
                     " artifact_sha IS NOT NULL AND NOT" LAST_OF_MODEL
                     " ORDER BY finished_at, seq LIMIT 1",
    [Q_IDEM_EXPIRE] = "DELETE FROM idempotency WHERE created_at <"
                      " strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-1 day')",
    [Q_IDEM_GET] = "SELECT request_sha256, status, location, response FROM idempotency"
                   " WHERE route = ?1 AND owner = ?2 AND key = ?3",
    [Q_IDEM_INSERT] = "INSERT INTO idempotency (route, owner, key, request_sha256, created_at)"
                      " VALUES (?1, ?2, ?3, ?4, " NOW ")",
    [Q_IDEM_FINISH] = "UPDATE idempotency SET status = ?4, location = ?5, response = ?6"
                      " WHERE route = ?1 AND owner = ?2 AND key = ?3",
    /* at open: no request of a process that died is still being processed */
    [Q_IDEM_PENDING] = "DELETE FROM idempotency WHERE status = 0",
    [Q_IDEM_RELEASE] = "DELETE FROM idempotency WHERE route = ?1 AND owner = ?2 AND key = ?3"
                       " AND status = 0",
    /* ---- schema 9: leases ---- */
    /* one statement renews every job the node (?1) holds for ?2 s */
    [Q_JOB_HEARTBEAT] = "UPDATE jobs SET lease_until = " EPOCH " + ?2, heartbeat_at = " EPOCH
                        " WHERE state = 1 AND node IS ?1 RETURNING id, cancel_requested",
    [Q_JOB_HOLDER] = "SELECT state, node FROM jobs WHERE id = ?1",
    /* PostgreSQL's pg_notify (sql_pg); SQLite wakes in process */
    [Q_NOTIFY] = "SELECT ?1, ?2",
    [Q_NODE_JOBS] = "SELECT coalesce(node, ''), id FROM jobs WHERE state = 1 ORDER BY node, seq",
};

/* ---- PostgreSQL (--store postgresql://...) ----
 *
 * The same schema, version for version (db.h says how to add a step):
 * SQLite's INTEGER is BIGINT here and REAL is DOUBLE PRECISION (SQLite's
 * are 64-bit: next_at holds Unix seconds), TEXT and JSON-as-TEXT stay,
 * so rows read back the same; the tables listed in insertion order
 * (models, datasets, tokens) get a rowid BIGSERIAL column, so
 * "ORDER BY rowid" reads as in SQLite; jobs.seq is a BIGSERIAL, where
 * SQLite's insert computes max(seq) + 1 (two daemons inserting at once
 * would compute the same). */
static const char *const migrations_pg[] = {
    "CREATE TABLE models ("
    "  rowid BIGSERIAL,"
    "  id TEXT PRIMARY KEY,"
    "  kind TEXT NOT NULL CHECK (kind IN ('model', 'dataset')),"
    "  name TEXT NOT NULL,"
    "  format TEXT NOT NULL,"
    "  bytes BIGINT NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  info TEXT NOT NULL,"
    "  created_at TEXT NOT NULL);"
    "CREATE INDEX models_sha256 ON models(sha256);"
    "CREATE TABLE jobs ("
    "  id TEXT PRIMARY KEY,"
    "  seq BIGSERIAL UNIQUE,"
    "  model_id TEXT REFERENCES models(id) ON DELETE SET NULL,"
    "  state BIGINT NOT NULL DEFAULT 0,"
    "  progress DOUBLE PRECISION NOT NULL DEFAULT 0,"
    "  stage TEXT,"
    "  error TEXT,"
    "  attempts BIGINT NOT NULL DEFAULT 0,"
    "  cancel_requested BIGINT NOT NULL DEFAULT 0,"
    "  spec TEXT NOT NULL,"
    "  report TEXT,"
    "  artifact_sha TEXT,"
    "  artifact_bytes BIGINT,"
    "  created_at TEXT NOT NULL,"
    "  started_at TEXT,"
    "  finished_at TEXT);"
    "CREATE INDEX jobs_state ON jobs(state, seq);"
    "CREATE INDEX jobs_model ON jobs(model_id);"
    "CREATE INDEX jobs_artifact ON jobs(artifact_sha);"
    /* SQLite's update hook for the other daemons on the database: a
     * notice on channel slimd_jobs at the commit of any change of a jobs
     * row (one per transaction: PostgreSQL folds equal notices) */
    "CREATE FUNCTION slimd_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS"
    "  $$BEGIN PERFORM pg_notify('slimd_jobs', ''); RETURN NULL; END$$;"
    "CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OR DELETE ON jobs"
    "  FOR EACH ROW EXECUTE FUNCTION slimd_jobs_notify();",
    "ALTER TABLE jobs ADD COLUMN mem_bytes BIGINT NOT NULL DEFAULT 0;",
    "CREATE TABLE datasets ("
    "  rowid BIGSERIAL,"
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  format TEXT NOT NULL,"
    "  bytes BIGINT NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  info TEXT NOT NULL,"
    "  created_at TEXT NOT NULL);"
    "CREATE INDEX datasets_sha256 ON datasets(sha256);"
    "INSERT INTO datasets (id, name, format, bytes, sha256, info, created_at)"
    "  SELECT id, name, format, bytes, sha256, info, created_at FROM models"
    "  WHERE kind = 'dataset' ORDER BY rowid;"
    "DELETE FROM models WHERE kind = 'dataset';"
    "ALTER TABLE jobs ADD COLUMN dataset_id TEXT REFERENCES datasets(id) ON DELETE SET NULL;"
    "CREATE INDEX jobs_dataset ON jobs(dataset_id);",
    "CREATE TABLE tokens ("
    "  rowid BIGSERIAL,"
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  scopes BIGINT NOT NULL CHECK (scopes > 0),"
    "  hash TEXT NOT NULL UNIQUE,"
    "  created_at TEXT NOT NULL,"
    "  last_used_at TEXT,"
    "  revoked BIGINT NOT NULL DEFAULT 0);"
    "ALTER TABLE models ADD COLUMN owner TEXT REFERENCES tokens(id);"
    "ALTER TABLE datasets ADD COLUMN owner TEXT REFERENCES tokens(id);"
    "ALTER TABLE jobs ADD COLUMN owner TEXT REFERENCES tokens(id);",
    "ALTER TABLE jobs ADD COLUMN error_code TEXT;",
    "ALTER TABLE jobs ADD COLUMN name TEXT;"
    "ALTER TABLE jobs ADD COLUMN labels TEXT;"
    "ALTER TABLE jobs ADD COLUMN pinned BIGINT NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN model_sha256 TEXT;"
    "UPDATE jobs SET model_sha256 = (SELECT sha256 FROM models WHERE id = jobs.model_id);"
    "CREATE INDEX jobs_name ON jobs(name);"
    "CREATE INDEX jobs_finished ON jobs(state, finished_at);"
    "CREATE INDEX models_name ON models(name);"
    "CREATE TABLE idempotency ("
    "  route TEXT NOT NULL,"
    "  owner TEXT NOT NULL,"
    "  key TEXT NOT NULL,"
    "  request_sha256 TEXT NOT NULL,"
    "  status BIGINT NOT NULL DEFAULT 0,"
    "  location TEXT,"
    "  response TEXT,"
    "  created_at TEXT NOT NULL,"
    "  PRIMARY KEY (route, owner, key));",
    "CREATE TABLE webhooks ("
    "  job_id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,"
    "  url TEXT NOT NULL,"
    "  state BIGINT NOT NULL DEFAULT 0,"
    "  attempts BIGINT NOT NULL DEFAULT 0,"
    "  next_at DOUBLE PRECISION NOT NULL DEFAULT 0,"
    "  last_status BIGINT,"
    "  last_error TEXT,"
    "  delivered_at TEXT);"
    "CREATE INDEX webhooks_due ON webhooks(state, next_at);"
    "ALTER TABLE jobs ADD COLUMN warning_count BIGINT;",
    "ALTER TABLE jobs ADD COLUMN training TEXT;",
    "ALTER TABLE jobs ADD COLUMN node TEXT;"
    "ALTER TABLE jobs ADD COLUMN lease_until DOUBLE PRECISION;"
    "ALTER TABLE jobs ADD COLUMN heartbeat_at DOUBLE PRECISION;"
    "CREATE INDEX jobs_node ON jobs(node) WHERE state = 1;",
};
_Static_assert(sizeof migrations_pg / sizeof migrations_pg[0] ==
               sizeof migrations / sizeof migrations[0],
               "every migration has its PostgreSQL form (storage/db.h)");

/* pg_advisory_xact_lock keys: the schema migration, and the write
 * transactions (Q_BEGIN_IMMEDIATE: BEGIN IMMEDIATE's one writer at a
 * time, across every daemon on the database) */
#define STORE_PG_MIGRATE_LOCK "7305849271800001"
#define STORE_PG_WRITE_LOCK "7305849271800002"
/* store_open's orphan sweep, on PostgreSQL, leaves blobs younger than
 * this (seconds): see sweep_blobs */
#define PG_ORPHAN_AGE 3600

/* OWNED and NAMED: a parameter's first use gives its type (a bare
 * "$3 IS NULL" has none) */
#define PG_OWNED(n) " (?" #n "::text IS NULL OR owner = ?" #n ")"
#define PG_NAMED " (?4::text IS NULL OR name = ?4) AND (?5::text IS NULL OR sha256 = ?5)"
/* strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ...) */
#define PG_TIME(t) "to_char((" t ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
#define PG_NOW PG_TIME("statement_timestamp()")
#define PG_EPOCH "extract(epoch FROM clock_timestamp())::double precision"
#define PG_RECOVERABLE " state = 1 AND (?2::bigint <> 0 OR node = ?3::text" \
    " OR node = ?4::text OR lease_until IS NULL OR lease_until < " PG_EPOCH ")"
#define PG_DUPLICATES(t) "(SELECT count(*) FROM " t " d WHERE d.sha256 = " t ".sha256" \
    " AND d.id != " t ".id AND d.owner IS NOT DISTINCT FROM " t ".owner)"
/* info whole: model_row drops its metadata (drop_metadata says why) */
#define PG_MODEL_COLS "id, kind, name, format, bytes, sha256, info, created_at, owner, " \
    PG_DUPLICATES("models")
#define PG_DATASET_COLS "id, name, format, bytes, sha256, info, created_at, owner, " \
    PG_DUPLICATES("datasets")
#define PG_JOB_LIST_COLS                                                              \
    "id, model_id, state, progress, stage, error, attempts, cancel_requested, "    \
    "created_at, started_at, finished_at, (SELECT coalesce(json_agg(p.value -> 'op'"  \
    " ORDER BY p.ord), '[]') FROM json_array_elements(CASE WHEN json_typeof(jobs.spec::json"  \
    " -> 'passes') = 'array' THEN jobs.spec::json -> 'passes' END) WITH ORDINALITY AS"    \
    " p(value, ord)), artifact_sha, artifact_bytes, mem_bytes, "  \
    "dataset_id, owner, error_code, " JOB_V6_COLS ", warning_count, training, node"
#define PG_JOB_FILTER PG_OWNED(3) " AND (?4 < 0 OR state = ?4) AND (?5::text IS NULL OR" \
    " name = ?5) AND (?6::text IS NULL OR model_id = ?6) AND (?7::text IS NULL OR NOT EXISTS (SELECT 1 FROM" \
    " json_each_text(?7::text::json) f WHERE labels IS NULL OR NOT EXISTS (SELECT 1 FROM" \
    " json_each_text(jobs.labels::json) l WHERE l.key = f.key AND l.value = f.value)))"
#define PG_SPEC_NAMES(n) "strpos(spec, '\"' || ?" #n "::text || '\"') > 0"
/* json_array_length(?N, '$.warnings'): NULL without the key, 0 when it
 * is not an array */
#define PG_WARNINGS(n) "(SELECT CASE WHEN w IS NULL THEN NULL WHEN json_typeof(w) = 'array'" \
    " THEN json_array_length(w) ELSE 0 END FROM (SELECT ?" #n "::text::json -> 'warnings' AS w) x)"

/* The statements whose SQL differs on PostgreSQL (NULL: sql[]'s). */
static const char *const sql_pg[Q_COUNT] = {
    /* the list and its count read one snapshot */
    [Q_BEGIN] = "BEGIN ISOLATION LEVEL REPEATABLE READ",
    /* one writing transaction at a time, as SQLite's BEGIN IMMEDIATE */
    [Q_BEGIN_IMMEDIATE] = "BEGIN; SELECT pg_advisory_xact_lock(" STORE_PG_WRITE_LOCK ")",
    [Q_MODEL_INSERT] = "INSERT INTO models (id, kind, name, format, bytes, sha256, info, owner,"
                       " created_at) VALUES (?1, 'model', ?2, ?3, ?4, ?5, ?6, ?7, " PG_NOW ")"
                       " RETURNING " PG_MODEL_COLS,
    [Q_MODEL_GET] = "SELECT " PG_MODEL_COLS " FROM models WHERE id = ?1",
    [Q_MODEL_LIST] = "SELECT " PG_MODEL_COLS " FROM models WHERE kind = 'model' AND" PG_OWNED(3)
                     " AND" PG_NAMED ORDER_PAGE,
    [Q_MODEL_COUNT] = "SELECT count(*) FROM models WHERE kind = 'model' AND" PG_OWNED(3)
                      " AND" PG_NAMED,
    [Q_MODEL_USER] = "SELECT id, state FROM jobs WHERE state IN (0, 1) AND (model_id = ?1"
                     " OR " PG_SPEC_NAMES(1) ") ORDER BY seq LIMIT 1",
    [Q_DS_INSERT] = "INSERT INTO datasets (id, name, format, bytes, sha256, info, owner,"
                    " created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, " PG_NOW ")"
                    " RETURNING " PG_DATASET_COLS,
    [Q_DS_GET] = "SELECT " PG_DATASET_COLS " FROM datasets WHERE id = ?1",
    [Q_DS_LIST] = "SELECT " PG_DATASET_COLS " FROM datasets WHERE" PG_OWNED(3) " AND" PG_NAMED
                  ORDER_PAGE,
    [Q_DS_COUNT] = "SELECT count(*) FROM datasets WHERE" PG_OWNED(3) " AND" PG_NAMED,
    [Q_DS_USER] = "SELECT id, state FROM jobs WHERE state IN (0, 1) AND (dataset_id = ?1"
                  " OR " PG_SPEC_NAMES(1) ") ORDER BY seq LIMIT 1",
    [Q_JOB_INSERT] = "INSERT INTO jobs (id, model_id, dataset_id, spec, mem_bytes, owner,"
                     " created_at, name, labels, model_sha256) SELECT ?1::text, id, ?6::text,"
                     " ?3::text, ?4::bigint, ?7::text, " PG_NOW ", ?3::text::json ->> 'name',"
                     " CASE WHEN json_typeof(?3::text::json -> 'labels') = 'object'"
                     " THEN (?3::text::json -> 'labels')::text END, sha256 FROM models"
                     " WHERE id = ?2 AND kind = 'model'"
                     " AND (?6 IS NULL OR EXISTS (SELECT 1 FROM datasets WHERE id = ?6))"
                     " AND (SELECT count(*) FROM jobs WHERE state = 0) < ?5::bigint"
                     " RETURNING " JOB_COLS,
    [Q_JOB_LIST] = "SELECT " PG_JOB_LIST_COLS " FROM jobs WHERE" PG_JOB_FILTER
                   " ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
    [Q_JOB_COUNT] = "SELECT count(*) FROM jobs WHERE" PG_JOB_FILTER,
    /* state = 0 again outside the subquery: another daemon's claim of
     * the same row, committed while this one waited for its lock, makes
     * this one change nothing (PostgreSQL re-checks only the outer WHERE) */
    [Q_JOB_CLAIM] = "UPDATE jobs SET state = 1, attempts = attempts + 1, started_at = " PG_NOW ","
                    " finished_at = NULL, progress = 0, stage = 'load', error = NULL,"
                    " error_code = NULL, node = ?2::text,"
                    " lease_until = " PG_EPOCH " + ?3::double precision,"
                    " heartbeat_at = " PG_EPOCH
                    " WHERE id = (SELECT id FROM jobs WHERE state = 0 ORDER BY seq LIMIT 1"
                    " FOR UPDATE SKIP LOCKED)"
                    " AND state = 0 AND mem_bytes <= ?1 RETURNING " JOB_COLS,
    [Q_JOB_PROGRESS] = "UPDATE jobs SET progress = ?2, stage = coalesce(?3, stage)"
                       " WHERE id = ?1 AND state = 1 AND node IS NOT DISTINCT FROM ?4::text",
    [Q_JOB_TRAINING] = "UPDATE jobs SET training = ?2 WHERE id = ?1 AND state = 1"
                       " AND node IS NOT DISTINCT FROM ?3::text",
    [Q_JOB_SUCCEED] = "UPDATE jobs SET state = 2, progress = 1, stage = NULL, finished_at = "
                      PG_NOW ", artifact_sha = ?2, artifact_bytes = ?3, report = ?4::text,"
                      " warning_count = " PG_WARNINGS(4)
                      " WHERE id = ?1 AND state = 1 AND cancel_requested = 0"
                      " AND node IS NOT DISTINCT FROM ?5::text",
    [Q_JOB_FAIL] = "UPDATE jobs SET state = CASE WHEN cancel_requested <> 0 THEN 4 ELSE 3 END,"
                   " stage = CASE WHEN cancel_requested <> 0 THEN NULL ELSE stage END,"
                   " finished_at = " PG_NOW ","
                   " error = CASE WHEN cancel_requested <> 0 THEN NULL ELSE ?2 END,"
                   " error_code = CASE WHEN cancel_requested <> 0 THEN NULL ELSE ?3 END"
                   " WHERE id = ?1 AND state = 1 AND node IS NOT DISTINCT FROM ?4::text",
    [Q_JOB_CANCEL_QUEUED] = "UPDATE jobs SET state = 4, cancel_requested = 1, finished_at = "
                            PG_NOW " WHERE id = ?1 AND state = 0",
    [Q_JOB_CANCELED] = "UPDATE jobs SET state = 4, stage = NULL, finished_at = " PG_NOW
                       " WHERE id = ?1 AND state = 1 AND node IS NOT DISTINCT FROM ?2::text",
    [Q_JOB_REQUEUE] = "UPDATE jobs SET state = CASE WHEN cancel_requested <> 0 THEN 4 ELSE 0 END,"
                      " finished_at = CASE WHEN cancel_requested <> 0 THEN " PG_NOW " END,"
                      " attempts = greatest(attempts - 1, 0), started_at = NULL, progress = 0,"
                      " stage = NULL, node = CASE WHEN cancel_requested <> 0 THEN node END,"
                      " lease_until = NULL WHERE id = ?1 AND state = 1"
                      " AND node IS NOT DISTINCT FROM ?2::text",
    [Q_RECOVER_CANCELED] = "UPDATE jobs SET state = 4, stage = NULL, lease_until = NULL,"
                           " finished_at = " PG_NOW " WHERE" PG_RECOVERABLE
                           " AND cancel_requested <> 0",
    [Q_RECOVER_FAIL] = "UPDATE jobs SET state = 3, stage = NULL, lease_until = NULL,"
                       " finished_at = " PG_NOW ","
                       " error = 'interrupted ' || CASE attempts WHEN 1 THEN 'once'"
                       " ELSE attempts || ' times' END || ' (daemon restarts); giving up',"
                       " error_code = 'INTERNAL' WHERE" PG_RECOVERABLE " AND attempts >= ?1",
    [Q_RECOVER_REQUEUE] = "UPDATE jobs SET state = 0, started_at = NULL, progress = 0, stage = NULL,"
                          " node = NULL, lease_until = NULL WHERE" PG_RECOVERABLE,
    [Q_TOKEN_INSERT] = "INSERT INTO tokens (id, name, scopes, hash, created_at)"
                       " VALUES (?1, ?2, ?3, ?4, " PG_NOW ") RETURNING " TOKEN_COLS,
    [Q_TOKEN_FIND] = "SELECT id, scopes, revoked, last_used_at IS NULL OR last_used_at <"
                     " " PG_TIME("statement_timestamp() - interval '60 seconds'") " FROM tokens"
                     " WHERE hash = ?1",
    [Q_TOKEN_TOUCH] = "UPDATE tokens SET last_used_at = " PG_NOW " WHERE id = ?1",
    [Q_JOB_RETRY] = "UPDATE jobs SET state = CASE WHEN cancel_requested <> 0 THEN 4"
                    " WHEN attempts >= ?2 THEN 3 ELSE 0 END,"
                    " finished_at = CASE WHEN cancel_requested <> 0 OR attempts >= ?2 THEN "
                    PG_NOW " END,"
                    " started_at = CASE WHEN cancel_requested <> 0 OR attempts >= ?2"
                    " THEN started_at END,"
                    " error = CASE WHEN cancel_requested <> 0 THEN NULL ELSE ?3 END,"
                    " error_code = CASE WHEN cancel_requested <> 0 THEN NULL ELSE ?4 END,"
                    " progress = 0, stage = NULL,"
                    " node = CASE WHEN cancel_requested <> 0 OR attempts >= ?2 THEN node END,"
                    " lease_until = NULL WHERE id = ?1 AND state = 1"
                    " AND node IS NOT DISTINCT FROM ?5::text RETURNING " JOB_COLS,
    [Q_RET_EXPIRED] = "SELECT id FROM jobs j WHERE state IN (2, 3, 4) AND pinned = 0 AND"
                      " finished_at < " PG_TIME("statement_timestamp() + ?1::interval")
                      " AND NOT" LAST_OF_MODEL " ORDER BY seq LIMIT 100",
    [Q_IDEM_EXPIRE] = "DELETE FROM idempotency WHERE created_at < "
                      PG_TIME("statement_timestamp() - interval '1 day'"),
    [Q_IDEM_INSERT] = "INSERT INTO idempotency (route, owner, key, request_sha256, created_at)"
                      " VALUES (?1, ?2, ?3, ?4, " PG_NOW ")",
    /* at open: only claims an hour old, as other daemons on the database
     * may be processing theirs now; one of a daemon that died answers
     * 409 "still being processed" until then */
    [Q_IDEM_PENDING] = "DELETE FROM idempotency WHERE status = 0 AND created_at < "
                       PG_TIME("statement_timestamp() - interval '1 hour'"),
    [Q_JOB_HEARTBEAT] = "UPDATE jobs SET lease_until = " PG_EPOCH " + ?2::double precision,"
                        " heartbeat_at = " PG_EPOCH " WHERE state = 1"
                        " AND node IS NOT DISTINCT FROM ?1::text RETURNING id, cancel_requested",
    [Q_NOTIFY] = "SELECT pg_notify(?1::text, ?2::text)",
};

#define STORE_LISTENERS 4

struct store {
    pthread_mutex_t lock;
    /* PostgreSQL: the thread that tells the listeners of other daemons'
     * job changes (notices), on a connection of its own */
    struct db *notify_db;
    pthread_t notify_thread;
    int notify_started, notify_stop;
    /* store_job_listen's: called (under lock) when a jobs row changes */
    struct { void (*fn)(void *ud); void *ud; } listen[STORE_LISTENERS];
    struct db *db;
    int pg;                         /* db_dialect(db) == DB_POSTGRESQL */
    struct db_stmt *q[Q_COUNT];
    char *dir;
    char *db_spec;                  /* --store; NULL: sqlite in dir */
    char *db_path;                  /* SQLite's database file; NULL on PostgreSQL */
    struct blob_backend *blobs;     /* where blob files live (blob.h) */
    char *node;                     /* store_set_node: the node id jobs are claimed for */
    char *prev_node;                /* the id of the data dir's previous daemon, if other */
    double lease;                   /* and the seconds of a lease */
    struct store_sweep sweep;       /* what store_open cleaned */
};

static const char *const state_names[] = {"queued", "running", "succeeded", "failed", "canceled"};

const char *store_job_state_name(int state)
{
    return state >= 0 && state < 5 ? state_names[state] : "unknown";
}

int store_job_state_parse(const char *name)
{
    for (int i = 0; name && i < 5; i++)
        if (!strcmp(name, state_names[i]))
            return i;
    return -1;
}

const char *store_data_dir(const struct store *st)
{
    return st->dir;
}

struct blob_backend *store_blobs(const struct store *st)
{
    return st->blobs;
}

/* ---- statement helpers (caller holds st->lock) ---- */

static int run(struct store *st, enum q i, int *changes, struct slim_error *err,
               const char *types, ...);

/* PostgreSQL: NOTIFY channel (store_listen's; "slimd_jobs": a job was
 * queued, "slimd_cancel": payload's cancel was asked for), so idle nodes
 * wake without polling.  Best effort: the nodes' slow poll and heartbeat
 * catch what a lost notification misses.  SQLite: nothing (its one
 * daemon wakes in process). */
static void notify(struct store *st, const char *channel, const char *payload)
{
    if (st->pg)
        run(st, Q_NOTIFY, NULL, NULL, "ss", channel, payload);
}

/* Sets err from the connection's last error, prefixed with what failed. */
static int db_error(struct store *st, struct slim_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int db_error(struct store *st, struct slim_error *err, const char *fmt, ...)
{
    char what[96];
    int code = db_errcode(st->db);   /* a full disk is SLIM_ENOSPACE (db.h) */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return slim_error_set(err, code, "%s: %s", what, db_errmsg(st->db));
}

/* Ends a statement's use: resets it (releasing its read snapshot) and
 * drops the bindings, which point at the caller's strings. */
static void done(struct db_stmt *s)
{
    db_reset(s);
    db_clear_bindings(s);
}

/* Binds the values of ap to s's parameters 1.. by types: 's' text (NULL
 * binds NULL; borrowed until s is reset or finalized), 'i' int, 'I'
 * int64, 'd' double.  DB_OK or DB_ERROR. */
static int bind_values(struct db_stmt *s, const char *types, va_list ap)
{
    int rc = DB_OK;
    for (int k = 0; types[k] && rc == DB_OK; k++) {
        switch (types[k]) {
        case 's': rc = db_bind_text(s, k + 1, va_arg(ap, const char *)); break;
        case 'i': rc = db_bind_int(s, k + 1, va_arg(ap, int)); break;
        case 'I': rc = db_bind_int64(s, k + 1, va_arg(ap, int64_t)); break;
        case 'd': rc = db_bind_double(s, k + 1, va_arg(ap, double)); break;
        }
    }
    return rc;
}

static int bindv(struct store *st, enum q i, struct db_stmt **out, struct slim_error *err,
                 const char *types, va_list ap)
{
    struct db_stmt *s = st->q[i];
    int rc = bind_values(s, types, ap);
    if (rc != DB_OK) {
        rc = slim_error_set(err, db_errcode(st->db) == SLIM_ENOMEM ? SLIM_ENOMEM : SLIM_EIO,
                            "cannot bind a value: %s", db_errmsg(st->db));
        done(s);
        return rc;
    }
    *out = s;
    return 0;
}

static int prep(struct store *st, enum q i, struct db_stmt **out, struct slim_error *err,
                const char *types, ...)
{
    va_list ap;
    int rc;
    va_start(ap, types);
    rc = bindv(st, i, out, err, types, ap);
    va_end(ap);
    return rc;
}

/* Runs a statement that returns no rows; *changes (may be NULL) gets
 * the number of rows it changed. */
static int run(struct store *st, enum q i, int *changes, struct slim_error *err,
               const char *types, ...)
{
    struct db_stmt *s = NULL;
    va_list ap;
    int rc;
    va_start(ap, types);
    rc = bindv(st, i, &s, err, types, ap);
    va_end(ap);
    if (rc)
        return rc;
    /* the message names no SQL: it reaches users (a job's error, a 500) */
    if (db_step(s) != DB_DONE)
        rc = db_error(st, err, "%s", i == Q_BEGIN ? "cannot read the database"
                                                  : "cannot update the database");
    else if (changes)
        *changes = db_changes(st->db);
    done(s);
    return rc;
}

/* Ends a transaction: COMMIT when rc is 0, else ROLLBACK.  Returns rc,
 * or the COMMIT's error. */
static int finish(struct store *st, int rc, struct slim_error *err)
{
    if (rc == 0)
        rc = run(st, Q_COMMIT, NULL, err, "");
    if (rc)
        run(st, Q_ROLLBACK, NULL, NULL, "");
    return rc;
}

static const char *col_text(struct db_stmt *s, int col)
{
    return db_column_text(s, col);
}

/* A JSON text column as a value (new reference), or NULL. */
static json_t *col_json(struct db_stmt *s, int col)
{
    const char *t = col_text(s, col);
    return t ? json_loads(t, JSON_DECODE_ANY, NULL) : NULL;
}

static const char *const onnx_keys[] = {"opset", "ir_version", "producer", "inputs", "outputs",
                                        "op_types", "nodes", "external_data", "external_files",
                                        "onnx_file", NULL};

static const char *blanks(const char *p)
{
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
        p++;
    return p;
}

/* Just past the JSON value (string, number, literal, object or array)
 * that starts at p (after blanks), or NULL when the text ends first. */
static const char *json_value_end(const char *p)
{
    int depth = 0;
    p = blanks(p);
    if (*p != '"' && *p != '{' && *p != '[') {   /* a number or a literal */
        while (*p && *p != ',' && *p != '}' && *p != ']' && *p != ':' && *blanks(p) == *p)
            p++;
        return *p ? p : NULL;
    }
    for (;; p++) {
        switch (*p) {
        case 0:
            return NULL;
        case '"':
            for (p++; *p != '"'; p++)
                if (!*p || (*p == '\\' && !*++p))
                    return NULL;
            break;
        case '{': case '[': depth++; break;
        case '}': case ']': depth--; break;
        }
        if (depth == 0)
            return p + 1;
    }
}

/* info's JSON text without its top-level "metadata" member: a new
 * string (slim_free), or NULL when it has none (or is not an object).
 * PostgreSQL's rows carry a model's info whole (its JSON functions take
 * ~30 ms to parse a MiB of metadata, where SQLite's json_remove drops it
 * in the query), and a list must not parse what it does not show: this
 * finds the member with a scan of the bytes, no parse. */
static char *drop_metadata(const char *t)
{
    const char *p, *member, *key, *end;
    char *out;
    if (!t || !strstr(t, "\"metadata\""))
        return NULL;
    if (*(p = blanks(t)) != '{')
        return NULL;
    for (p++;;) {
        member = p;   /* just past '{' or ',' */
        key = blanks(p);
        if (*key != '"' || !(end = json_value_end(key)))
            return NULL;
        int is_meta = end - key == 10 && !strncmp(key, "\"metadata\"", 10);
        if (*(end = blanks(end)) != ':' || !(end = json_value_end(end + 1)))
            return NULL;
        end = blanks(end);
        if (is_meta) {   /* drop the member and one comma beside it */
            const char *cut = member, *resume = end;
            if (*end == ',')
                resume = end + 1;
            else if (cut[-1] == ',')
                cut--;
            size_t head = (size_t)(cut - t), tail = strlen(resume);
            if (!(out = slim_malloc(head + tail + 1)))
                return NULL;
            memcpy(out, t, head);
            memcpy(out + head, resume, tail + 1);
            return out;
        }
        if (*end != ',')
            return NULL;
        p = end + 1;
    }
}

static json_t *model_row(struct db_stmt *s)
{
    char *slim = drop_metadata(col_text(s, 6));
    json_t *info = slim ? json_loads(slim, JSON_DECODE_ANY, NULL) : col_json(s, 6), *row;
    slim_free(slim);
    row = json_pack("{s:s?, s:s?, s:s?, s:s?, s:I, s:s?, s:O?, s:O?, s:s?, s:s?}",
                    "id", col_text(s, 0), "kind", col_text(s, 1), "name", col_text(s, 2),
                    "format", col_text(s, 3), "bytes", (json_int_t)db_column_int64(s, 4),
                    "sha256", col_text(s, 5), "tensors", json_object_get(info, "tensors"),
                    "params", json_object_get(info, "params"), "created_at", col_text(s, 7),
                    "owner", col_text(s, 8));
    if (row) {   /* schema 6: same bytes, one blob */
        json_object_set_new(row, "duplicates", json_integer(db_column_int64(s, 9)));
        json_object_set_new(row, "shared_blob", json_boolean(db_column_int64(s, 9) > 0));
    }
    if (row && json_object_get(info, "shards"))   /* a sharded checkpoint: its shard files */
        json_object_set(row, "shards", json_object_get(info, "shards"));
    /* an ONNX model: its graph's outline (all small: no per-tensor list) */
    for (size_t i = 0; row && onnx_keys[i]; i++)
        if (json_object_get(info, onnx_keys[i]))
            json_object_set(row, onnx_keys[i], json_object_get(info, onnx_keys[i]));
    json_decref(info);
    return row;
}

static json_t *job_row(struct db_stmt *s)
{
    json_t *artifact = NULL, *row, *labels = col_json(s, 19);
    if (!db_column_is_null(s, 12))
        artifact = json_pack("{s:s?, s:I}", "sha256", col_text(s, 12), "bytes",
                             (json_int_t)db_column_int64(s, 13));
    json_t *error = NULL;
    int state = db_column_int(s, 2);
    /* "error": {code, message}, the envelope's shape; error_message and
     * error_code keep the flat fields older clients read.  A canceled
     * job stores neither: its code is CANCELED. */
    if (col_text(s, 5))
        error = json_pack("{s:s, s:s}", "code", col_text(s, 17) ? col_text(s, 17) : "INTERNAL",
                          "message", col_text(s, 5));
    else if (state == STORE_JOB_CANCELED)
        error = json_pack("{s:s, s:s}", "code", slim_errcode(SLIM_ECANCELED), "message",
                          "canceled by request");
    row = json_pack("{s:s?, s:s?, s:s?, s:s, s:f, s:s?, s:o?, s:s?, s:s?, s:I, s:b, s:s?, s:s?, s:s?,"
                     " s:o?, s:o?, s:I, s:s?}",
                     "id", col_text(s, 0), "model", col_text(s, 1), "dataset", col_text(s, 15),
                     "state", store_job_state_name(state),
                     "progress", db_column_double(s, 3), "stage", col_text(s, 4),
                     "error", error ? error : json_null(), "error_message", col_text(s, 5),
                     "error_code", error ? json_string_value(json_object_get(error, "code")) : NULL,
                     "attempts", (json_int_t)db_column_int64(s, 6),
                     "cancel_requested", db_column_int(s, 7) != 0,
                     "created_at", col_text(s, 8), "started_at", col_text(s, 9),
                     "finished_at", col_text(s, 10), "spec", col_json(s, 11),
                     "artifact", artifact, "memory_bytes",
                     (json_int_t)db_column_int64(s, 14), "owner", col_text(s, 16));
    /* schema 6 (JOB_V6_COLS) */
    if (row && json_object_set_new(row, "name", col_text(s, 18) ? json_string(col_text(s, 18))
                                                                : json_null()) == 0 &&
        json_object_set_new(row, "labels", json_is_object(labels) ? json_incref(labels)
                                                                   : json_object()) == 0 &&
        json_object_set_new(row, "pinned", json_boolean(db_column_int(s, 20))) == 0)
        json_object_set_new(row, "model_sha256", col_text(s, 21) ? json_string(col_text(s, 21))
                                                                 : json_null());
    json_decref(labels);
    /* the report's warnings, once it has one (0 is shown: none) */
    if (row && !db_column_is_null(s, 22))
        json_object_set_new(row, "warning_count", json_integer(db_column_int64(s, 22)));
    /* a training pass's progress: {"epoch", "epochs", "loss", "val_accuracy",
     * "history"} (absent for jobs without one) */
    if (row && !db_column_is_null(s, 23))
        json_object_set_new(row, "training", col_json(s, 23));
    /* schema 9: the node that holds it (running) or last ran it */
    if (row)
        json_object_set_new(row, "node", col_text(s, 24) ? json_string(col_text(s, 24))
                                                         : json_null());
    return row;
}

/* A list row (JOB_LIST_COLS): the job with "passes", its spec's ops in
 * order, in the place of "spec". */
static json_t *job_summary_row(struct db_stmt *s)
{
    json_t *row = job_row(s), *ops;
    if (!row)
        return NULL;
    ops = json_object_get(row, "spec");
    json_object_set_new(row, "passes", json_is_array(ops) ? json_incref(ops) : json_array());
    json_object_del(row, "spec");
    return row;
}

/* Steps s for one row and converts it with to_json into *row; a missing
 * row is SLIM_ENOTFOUND with "<what> <id> does not exist".  For a write
 * (INSERT/UPDATE ... RETURNING) the row comes before the statement ends,
 * and the statement's implicit COMMIT, the step that can fail when the
 * disk is full, only comes with the next step: s is stepped to its end
 * and a failure there drops the row and is returned, so no caller ever
 * acknowledges a write that did not commit. */
static int one_row(struct store *st, struct db_stmt *s, json_t *(*to_json)(struct db_stmt *),
                   json_t **row, const char *what, const char *id, struct slim_error *err)
{
    int rc = db_step(s);
    *row = NULL;
    if (rc == DB_ROW)
        rc = (*row = to_json(s)) ? 0 : slim_error_set(err, SLIM_ENOMEM, "out of memory");
    else if (rc == DB_DONE)
        rc = slim_error_set(err, SLIM_ENOTFOUND, "%s %.64s does not exist", what, id);
    else
        rc = db_error(st, err, "cannot read %s %.64s", what, id);
    if (*row && !db_stmt_readonly(s)) {
        int end;
        while ((end = db_step(s)) == DB_ROW)
            ;
        if (end != DB_DONE || db_reset(s) != DB_OK) {
            json_decref(*row);
            *row = NULL;
            rc = db_error(st, err, "cannot write %s %.64s", what, id);
        }
    }
    done(s);
    return rc;
}

/* Fills rows from a list statement and total from a count statement. */
static int list_rows(struct store *st, struct db_stmt *list, struct db_stmt *count,
                     json_t *(*to_json)(struct db_stmt *), json_t **rows, int *total,
                     struct slim_error *err)
{
    json_t *arr = json_array();
    int rc = 0, step;
    if (!arr)
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
    while (!rc && (step = db_step(list)) == DB_ROW)
        if (json_array_append_new(arr, to_json(list)))
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if (!rc && step != DB_DONE)
        rc = db_error(st, err, "cannot list rows");
    if (!rc && db_step(count) != DB_ROW)
        rc = db_error(st, err, "cannot count rows");
    if (!rc)
        *total = db_column_int(count, 0);
    done(list);
    done(count);
    if (rc)
        json_decref(arr);
    else
        *rows = arr;
    return rc;
}

/* "prefix" + 16 random lowercase hex characters. */
static int new_id(char *buf, size_t len, const char *prefix, struct slim_error *err)
{
    unsigned char r[8];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0 && errno != EINTR)
            return slim_error_set(err, SLIM_EIO, "getrandom: %s", strerror(errno));
        if (n > 0)
            got += (size_t)n;
    }
    snprintf(buf, len, "%s%02x%02x%02x%02x%02x%02x%02x%02x", prefix, r[0], r[1], r[2], r[3],
             r[4], r[5], r[6], r[7]);
    return 0;
}

/* ---- open / close ---- */

/* mkdir -p path (0750 for what it creates); path must be a folder. */
static int mkdir_p(const char *path, struct slim_error *err)
{
    char buf[4096];
    struct stat sb;
    if (!*path || snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return slim_error_set(err, SLIM_EINVAL, "data dir: expected a path of 1 to 4095 bytes");
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p)
            continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, 0750) && errno != EEXIST)
            return slim_error_set(err, SLIM_EIO, "cannot create %s: %s", buf, strerror(errno));
        *p = c;
        if (!c)
            break;
    }
    if (stat(buf, &sb) || !S_ISDIR(sb.st_mode))
        return slim_error_set(err, SLIM_EIO, "%s is not a folder", buf);
    return 0;
}

/* Empties tmp/: whatever is there is a partial upload or artifact of a
 * process that died (one data dir serves one daemon).  Returns how many
 * files went. */
static int purge_tmp(const char *tmp)
{
    DIR *d = opendir(tmp);
    struct dirent *e;
    int n = 0;
    if (!d)
        return 0;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            unlinkat(dirfd(d), e->d_name, 0) == 0)
            n++;
    closedir(d);
    return n;
}

/* 1 when name is 64 lowercase hex digits starting with the two of dir. */
static int blob_name(const char *dir, const char *name)
{
    size_t n = strspn(name, "0123456789abcdef");
    return n == 64 && !name[64] && name[0] == dir[0] && name[1] == dir[1];
}

/* Removes every blob that no row names: blobs/xx/<sha> committed by a
 * process that died before it inserted the row (an upload between commit
 * and insert, an artifact between adopt and succeed, a delete between
 * its commit and the unlink).  Runs at open, before any request, so no
 * upload is between its commit and its insert.  A file whose name is
 * not a blob's is left alone: slimd never makes one, so it is not ours
 * to remove.  A blob whose reference count cannot be read is kept. */
static void sweep_blobs(struct store *st)
{
    const char *root = blob_backend_root(st->blobs);
    char path[4096];
    DIR *top, *sub;
    struct dirent *e, *f;
    struct db_stmt *s;
    struct stat sb;

    /* a shared dir's blobs may be another daemon's, between its commit
     * and its insert (s3's are local copies, this daemon's alone) */
    if (blob_backend_kind(st->blobs) == BLOB_DIR)
        return;
    snprintf(path, sizeof path, "%s", root);
    if (!(top = opendir(path)))
        return;
    while ((e = readdir(top))) {
        if (strlen(e->d_name) != 2 || strspn(e->d_name, "0123456789abcdef") != 2)
            continue;
        snprintf(path, sizeof path, "%s/%s", root, e->d_name);
        if (!(sub = opendir(path)))
            continue;
        while ((f = readdir(sub))) {
            int unused;
            if (!blob_name(e->d_name, f->d_name))
                continue;
            /* PostgreSQL: other daemons share the database and may be
             * between a blob's commit and its row's insert right now; a
             * blob younger than an hour is theirs to finish (an upload
             * or a job's artifact takes seconds from commit to row), an
             * older one without a row is an orphan (see PG_ORPHAN_AGE) */
            if (st->pg && (fstatat(dirfd(sub), f->d_name, &sb, 0) ||
                           sb.st_mtime > time(NULL) - PG_ORPHAN_AGE))
                continue;
            if (prep(st, Q_SHA_REFS, &s, NULL, "s", f->d_name))
                continue;
            unused = db_step(s) == DB_ROW && db_column_int(s, 0) == 0;
            done(s);
            if (unused && fstatat(dirfd(sub), f->d_name, &sb, 0) == 0 &&
                unlinkat(dirfd(sub), f->d_name, 0) == 0) {
                st->sweep.orphans_removed++;
                st->sweep.orphan_bytes += (uint64_t)sb.st_size;
            }
        }
        closedir(sub);
    }
    closedir(top);
}

/* ---- room for the database (store.h) ---- */

int store_wal_reserve(struct store *st, uint64_t bytes, struct slim_error *err)
{
    char path[4096];
    struct stat sb;
    int fd, rc = 0;
    if (!bytes)
        return 0;
    /* PostgreSQL keeps its own files, on its own disk */
    if (!bytes || !st->db_path)
        return 0;
    snprintf(path, sizeof path, "%s-wal", st->db_path);
    pthread_mutex_lock(&st->lock);
    /* SQLite made the file when it first read in WAL mode (open_db);
     * without it there is nothing to grow */
    if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0) {
        rc = slim_error_set(err, SLIM_EIO, "cannot open the database's WAL: %s", strerror(errno));
        goto out;
    }
    /* allocates blocks where there are none, past the end or in holes;
     * never touches bytes already written, so frames stay as they are */
    if ((fstat(fd, &sb) || (uint64_t)sb.st_blocks * 512 < bytes) &&
        (rc = posix_fallocate(fd, 0, (off_t)bytes)))
        rc = slim_error_set(err, rc == ENOSPC || rc == EDQUOT ? SLIM_ENOSPACE : SLIM_EIO,
                            "cannot preallocate %llu MiB for the database's WAL: %s",
                            (unsigned long long)(bytes >> 20), strerror(rc));
    close(fd);
out:
    pthread_mutex_unlock(&st->lock);
    return rc;
}

void store_open_sweep(const struct store *st, struct store_sweep *out)
{
    *out = st->sweep;
}

/* The driver's update hook (the writer holds st->lock): a jobs row was
 * inserted, updated or deleted; tells the listeners (store_job_listen).
 * It fires before the commit: a listener that reads the row takes
 * st->lock, so it sees the committed change.  On PostgreSQL it fires
 * per statement of this process (db.h); changes that other daemons
 * sharing the database make are not seen here. */
static void on_row_change(void *ud, const char *table)
{
    struct store *st = ud;
    if (strcmp(table, "jobs"))
        return;
    for (int i = 0; i < STORE_LISTENERS; i++)
        if (st->listen[i].fn)
            st->listen[i].fn(st->listen[i].ud);
}

static void tell_listeners(struct store *st)
{
    pthread_mutex_lock(&st->lock);
    on_row_change(st, "jobs");
    pthread_mutex_unlock(&st->lock);
}

/* PostgreSQL: the changes other daemons make to jobs rows come as
 * notices on channel slimd_jobs (the trigger of migrations_pg[0]); this
 * thread waits for them on its own connection and tells the listeners,
 * as the update hook does for this daemon's changes (which notify it a
 * second time: a listener only notes that something changed).  A lost
 * connection is made again a second later, and the listeners are told
 * then, for what may have changed meanwhile. */
static void *notify_main(void *arg)
{
    struct store *st = arg;
    int listening = 0;
    while (!__atomic_load_n(&st->notify_stop, __ATOMIC_ACQUIRE)) {
        int got;
        if (!listening && db_listen(st->notify_db, "slimd_jobs")) {
            for (int i = 0; i < 10 && !__atomic_load_n(&st->notify_stop, __ATOMIC_ACQUIRE); i++)
                usleep(100 * 1000);
            continue;
        }
        if (!listening) {
            listening = 1;
            tell_listeners(st);
        }
        /* a short wait: store_close stops the thread within it */
        got = db_wait_notify(st->notify_db, 200);
        if (got < 0)
            listening = 0;
        else if (got > 0)
            tell_listeners(st);
    }
    return NULL;
}

static int start_notify(struct store *st, struct slim_error *err)
{
    int rc = db_open(st->db_spec, &st->notify_db, err);
    if (!rc && db_listen(st->notify_db, "slimd_jobs"))
        rc = slim_error_set(err, SLIM_EIO, "cannot listen for job changes: %s",
                            db_errmsg(st->notify_db));
    if (!rc && (rc = pthread_create(&st->notify_thread, NULL, notify_main, st)))
        rc = slim_error_set(err, SLIM_ENOMEM, "cannot start the job notice thread: %s",
                            strerror(rc));
    st->notify_started = !rc;
    return rc;
}

static int migrate_sqlite(struct store *st, struct slim_error *err)
{
    const int latest = (int)(sizeof migrations / sizeof migrations[0]);
    struct db_stmt *s = NULL;
    char bump[48];
    for (;;) {
        int version = -1;
        if (db_exec(st->db, "BEGIN IMMEDIATE"))
            return db_error(st, err, "cannot start the schema migration");
        if (db_prepare(st->db, "PRAGMA user_version", 0, &s) == DB_OK && db_step(s) == DB_ROW)
            version = db_column_int(s, 0);
        db_finalize(s);
        if (version < 0 || version >= latest) {
            int rc = 0;
            if (version < 0)
                rc = db_error(st, err, "cannot read the schema version");
            else if (version > latest)
                rc = slim_error_set(err, SLIM_EIO, "database schema version %d is newer than "
                                    "this slimd knows (%d): upgrade slimd", version, latest);
            db_exec(st->db, rc ? "ROLLBACK" : "COMMIT");
            return rc;
        }
        /* PRAGMA takes no bound parameters; the number is ours, not input */
        snprintf(bump, sizeof bump, "PRAGMA user_version = %d", version + 1);
        if (db_exec(st->db, migrations[version]) || db_exec(st->db, bump) ||
            db_exec(st->db, "COMMIT")) {
            int rc = db_error(st, err, "schema migration to version %d failed", version + 1);
            db_exec(st->db, "ROLLBACK");
            return rc;
        }
    }
}

/* PostgreSQL: every pending step and the version bump in one
 * transaction, under an advisory lock that a second daemon starting at
 * the same time waits for (it then finds the schema current).  The
 * version is the one row of schema_version (db.h). */
static int migrate_pg(struct store *st, struct slim_error *err)
{
    const int latest = (int)(sizeof migrations_pg / sizeof migrations_pg[0]);
    struct db_stmt *s = NULL;
    char bump[64];
    int version = -1, rc = 0;

    if (db_exec(st->db, "BEGIN; SELECT pg_advisory_xact_lock(" STORE_PG_MIGRATE_LOCK ");"
                " CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")) {
        rc = db_error(st, err, "cannot start the schema migration");
        goto out;
    }
    if (db_prepare(st->db, "SELECT version FROM schema_version", 0, &s) == DB_OK) {
        int step = db_step(s);
        version = step == DB_ROW ? db_column_int(s, 0) : step == DB_DONE ? 0 : -1;
    }
    db_finalize(s);
    if (version < 0) {
        rc = db_error(st, err, "cannot read the schema version");
        goto out;
    }
    if (version > latest) {
        rc = slim_error_set(err, SLIM_EIO, "database schema version %d is newer than this slimd "
                            "knows (%d): upgrade slimd", version, latest);
        goto out;
    }
    for (int v = version; v < latest; v++)
        if (db_exec(st->db, migrations_pg[v])) {
            rc = db_error(st, err, "schema migration to version %d failed", v + 1);
            goto out;
        }
    /* the number is ours, not input */
    snprintf(bump, sizeof bump, version ? "UPDATE schema_version SET version = %d"
                                        : "INSERT INTO schema_version VALUES (%d)", latest);
    if (version < latest && db_exec(st->db, bump))
        rc = db_error(st, err, "schema migration to version %d failed", latest);
out:
    if (!rc && db_exec(st->db, "COMMIT"))
        rc = db_error(st, err, "schema migration to version %d failed", latest);
    if (rc)
        db_exec(st->db, "ROLLBACK");
    return rc;
}

/* Opens the database st->db_spec names (NULL: sqlite in the data dir),
 * migrates it and prepares every statement of sql[] (or its PostgreSQL
 * form, sql_pg[], where the dialects differ). */
static int open_db(struct store *st, struct slim_error *err)
{
    char spec[4200];
    int rc;

    if (st->db_spec && *st->db_spec)
        snprintf(spec, sizeof spec, "%s", st->db_spec);
    else
        snprintf(spec, sizeof spec, "sqlite:%s/slimd.db", st->dir);
    if (!db_spec_is_pg(spec) && strncmp(spec, "sqlite:", 7))
        return slim_error_set(err, SLIM_EINVAL, "--store: expected sqlite:PATH or "
                              "postgresql://..., not '%.64s'", spec);
    if (!db_spec_is_pg(spec) && !(st->db_path = slim_strdup(spec + 7)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if ((rc = db_open(spec, &st->db, err)))
        return rc;
    st->pg = db_dialect(st->db) == DB_POSTGRESQL;
    if ((rc = st->pg ? migrate_pg(st, err) : migrate_sqlite(st, err)))
        return rc;
    /* Its failure is harmless: writes then append to the WAL as usual. */
    db_checkpoint(st->db);
    for (int i = 0; i < Q_COUNT; i++)
        if (db_prepare(st->db, st->pg && sql_pg[i] ? sql_pg[i] : sql[i], 1, &st->q[i]))
            return db_error(st, err, "cannot prepare statement %d", i);
    db_update_hook(st->db, on_row_change, st);
    return 0;
}

static struct store *store_new(const char *data_dir, const char *db_spec)
{
    struct store *st = slim_calloc(1, sizeof *st);
    if (!st)
        return NULL;
    pthread_mutex_init(&st->lock, NULL);
    if (!(st->dir = slim_strdup(data_dir)) ||
        (db_spec && *db_spec && !(st->db_spec = slim_strdup(db_spec)))) {
        store_close(st);
        return NULL;
    }
    return st;
}

int store_open(const char *data_dir, struct store **out, struct slim_error *err)
{
    return store_open_full(data_dir, NULL, NULL, out, err);
}

int store_open_db(const char *data_dir, const char *db_spec, struct store **out,
                  struct slim_error *err)
{
    return store_open_full(data_dir, db_spec, NULL, out, err);
}

int store_open_blobs(const char *data_dir, const char *blobs, struct store **out,
                     struct slim_error *err)
{
    return store_open_full(data_dir, NULL, blobs, out, err);
}

int store_open_full(const char *data_dir, const char *db_spec, const char *blobs,
                    struct store **out, struct slim_error *err)
{
    struct store *st = store_new(data_dir, db_spec);
    char sub[4096];
    int rc;

    if (!st)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    rc = mkdir_p(data_dir, err);
    if (!rc)
        rc = blob_backend_new(blobs, data_dir, &st->blobs, err);
    snprintf(sub, sizeof sub, "%s/blobs", data_dir);
    if (!rc)
        rc = mkdir_p(sub, err);
    snprintf(sub, sizeof sub, "%s/tmp", data_dir);
    if (!rc && !(rc = mkdir_p(sub, err)))
        st->sweep.tmp_removed = purge_tmp(sub);
    if (!rc) {
        /* blobs/ and tmp/ may be new: their names must be durable before
         * a blob renamed into blobs/ is (blob.c fsyncs only below) */
        int fd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || fsync(fd))
            rc = slim_error_set(err, SLIM_EIO, "cannot fsync the data dir: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    if (!rc)
        rc = open_db(st, err);
    if (!rc && st->pg)
        rc = start_notify(st, err);
    if (!rc)
        sweep_blobs(st);
    if (!rc)
        run(st, Q_IDEM_PENDING, NULL, NULL, "");
    if (rc) {
        store_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

int store_open_meta(const char *data_dir, struct store **out, struct slim_error *err)
{
    return store_open_meta_db(data_dir, NULL, out, err);
}

int store_open_meta_db(const char *data_dir, const char *db_spec, struct store **out,
                       struct slim_error *err)
{
    struct store *st = store_new(data_dir, db_spec);
    int rc;

    if (!st)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    rc = mkdir_p(data_dir, err);
    if (!rc)
        rc = blob_backend_new(NULL, data_dir, &st->blobs, err);
    if (!rc)
        rc = open_db(st, err);
    if (rc) {
        store_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

int store_lock_dir(const char *data_dir, int *fd_out, struct slim_error *err)
{
    char path[4096], pid[32] = "";
    int fd, rc;
    ssize_t n;

    *fd_out = -1;
    if ((rc = mkdir_p(data_dir, err)))
        return rc;
    if (snprintf(path, sizeof path, "%s/slimd.lock", data_dir) >= (int)sizeof path)
        return slim_error_set(err, SLIM_EINVAL, "data dir: path too long");
    if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640)) < 0)
        return slim_error_set(err, SLIM_EIO, "cannot open %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        int e = errno;
        n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        close(fd);
        if (e == EWOULDBLOCK)
            return slim_error_set(err, SLIM_ECONFLICT, "data dir %s is in use by another slimd "
                                  "(pid %s): one data dir serves one daemon", data_dir,
                                  pid[0] ? pid : "unknown");
        return slim_error_set(err, SLIM_EIO, "cannot lock %s: %s", path, strerror(e));
    }
    /* for the message above; the lock, not this text, is what counts */
    snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0)
        n = pwrite(fd, pid, strlen(pid), 0);
    *fd_out = fd;
    return 0;
}

void store_close(struct store *st)
{
    if (!st)
        return;
    if (st->notify_started) {
        __atomic_store_n(&st->notify_stop, 1, __ATOMIC_RELEASE);
        pthread_join(st->notify_thread, NULL);
    }
    db_close(st->notify_db);
    for (int i = 0; i < Q_COUNT; i++)
        db_finalize(st->q[i]);
    db_close(st->db);
    pthread_mutex_destroy(&st->lock);
    blob_backend_free(st->blobs);
    slim_free(st->dir);
    slim_free(st->db_spec);
    slim_free(st->db_path);
    slim_free(st->node);
    slim_free(st->prev_node);
    slim_free(st);
}

/* ---- models ---- */

/* Called with the lock held, so that a concurrent store_model_delete
 * either sees our row or has already removed the file we then miss. */
static int blob_present(struct store *st, const char *sha, struct slim_error *err)
{
    struct slim_error why = {0};
    if (!sha || !blob_exists(st, sha, &why))
        return slim_error_set(err, SLIM_EIO, "blob %.64s is not in the blob store%s%s",
                              sha ? sha : "(null)", why.msg[0] ? ": " : "", why.msg);
    return 0;
}

/* The two kinds of uploaded rows, models and datasets: the same
 * columns, statements and messages, their own table. */
struct upload_kind {
    const char *what;        /* "model": in messages */
    const char *prefix;      /* of new ids */
    enum q insert, get, list, count, user, del;
    json_t *(*to_json)(struct db_stmt *);
    int sha_col;             /* column of sha256 in get's row */
};

static json_t *dataset_row(struct db_stmt *s);

static const struct upload_kind model_kind = {
    "model", "mdl_", Q_MODEL_INSERT, Q_MODEL_GET, Q_MODEL_LIST, Q_MODEL_COUNT, Q_MODEL_USER,
    Q_MODEL_DELETE, model_row, 5,
};
static const struct upload_kind dataset_kind = {
    "dataset", "ds_", Q_DS_INSERT, Q_DS_GET, Q_DS_LIST, Q_DS_COUNT, Q_DS_USER, Q_DS_DELETE,
    dataset_row, 4,
};

/* Columns first, then what the describe object adds (a key of info never
 * hides a column). */
static json_t *dataset_row(struct db_stmt *s)
{
    json_t *info = col_json(s, 5);
    json_t *row = json_pack("{s:s?, s:s?, s:s?, s:I, s:s?, s:s?, s:s?}", "id", col_text(s, 0),
                            "name", col_text(s, 1), "format", col_text(s, 2),
                            "bytes", (json_int_t)db_column_int64(s, 3),
                            "sha256", col_text(s, 4), "created_at", col_text(s, 6),
                            "owner", col_text(s, 7));
    if (row) {
        json_object_set_new(row, "duplicates", json_integer(db_column_int64(s, 8)));
        json_object_set_new(row, "shared_blob", json_boolean(db_column_int64(s, 8) > 0));
    }
    if (row && json_is_object(info) && json_object_update_missing(row, info)) {
        json_decref(row);
        row = NULL;
    }
    json_decref(info);
    return row;
}

static int upload_insert(struct store *st, const struct upload_kind *k, const char *owner,
                         const char *name, const char *sha, uint64_t bytes, json_t *info,
                         json_t **row, struct slim_error *err)
{
    const char *format = json_string_value(json_object_get(info, "format"));
    json_t *utf8 = name ? json_string(name) : NULL;   /* NULL unless valid UTF-8 */
    struct db_stmt *s;
    char id[32], *text;
    int rc;

    json_decref(utf8);
    if (!utf8)
        return slim_error_set(err, SLIM_EINVAL, "name: expected a UTF-8 string");
    if (!format)
        return slim_error_set(err, SLIM_EINVAL, "%s info has no format", k->what);
    if ((rc = new_id(id, sizeof id, k->prefix, err)))
        return rc;
    /* in the describe object's order, which a dataset's row shows */
    if (!(text = json_dumps(info, JSON_COMPACT)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    pthread_mutex_lock(&st->lock);
    rc = blob_present(st, sha, err);
    if (!rc)
        rc = prep(st, k->insert, &s, err, "sssIsss", id, name, format, (int64_t)bytes, sha, text,
                  owner);
    if (!rc)
        rc = one_row(st, s, k->to_json, row, k->what, id, err);
    pthread_mutex_unlock(&st->lock);
    free(text); /* json_dumps memory goes back with free(), as jansson says */
    return rc;
}

static int upload_get(struct store *st, const struct upload_kind *k, const char *id,
                      json_t **row, struct slim_error *err)
{
    struct db_stmt *s;
    int rc;
    pthread_mutex_lock(&st->lock);
    rc = prep(st, k->get, &s, err, "s", id);
    if (!rc)
        rc = one_row(st, s, k->to_json, row, k->what, id, err);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

static int upload_list(struct store *st, const struct upload_kind *k, const char *owner,
                       const char *name, const char *sha, int limit, int offset, json_t **rows,
                       int *total, struct slim_error *err)
{
    struct db_stmt *list, *count;
    int rc;
    pthread_mutex_lock(&st->lock);
    /* one read transaction, so total and rows come from one snapshot */
    rc = run(st, Q_BEGIN, NULL, err, "");
    if (!rc) {
        rc = prep(st, k->list, &list, err, "iisss", limit, offset, owner, name, sha);
        if (!rc && !(rc = prep(st, k->count, &count, err, "iisss", limit, offset, owner, name,
                               sha)))
            rc = list_rows(st, list, count, k->to_json, rows, total, err);
        rc = finish(st, rc, err);
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* Removes the blob file once no model or dataset row or job artifact names
 * it, and returns the bytes that freed (0 when it stays or is missing).
 * Called with the lock held, after the row is gone. */
static uint64_t drop_blob_if_unused(struct store *st, const char *sha)
{
    struct db_stmt *s;
    int unused = 0;
    if (!sha || prep(st, Q_SHA_REFS, &s, NULL, "s", sha))
        return 0;
    unused = db_step(s) == DB_ROW && db_column_int(s, 0) == 0;
    done(s);
    /* what it freed, in allocated blocks (what du counts); at a shared
     * location nothing (blob.c's opening comment says why) */
    return unused ? blob_remove(st, sha) : 0;
}

void store_blob_drop_unused(struct store *st, const char *sha)
{
    pthread_mutex_lock(&st->lock);
    drop_blob_if_unused(st, sha);
    pthread_mutex_unlock(&st->lock);
}

/* In one write transaction: the row exists, no queued or running job
 * uses it, delete.  The blob goes after the commit, still in the lock. */
static int upload_delete(struct store *st, const struct upload_kind *k, const char *id,
                         struct slim_error *err)
{
    struct db_stmt *s;
    char sha[65] = "";
    int rc;

    pthread_mutex_lock(&st->lock);
    if ((rc = run(st, Q_BEGIN_IMMEDIATE, NULL, err, "")))
        goto out;
    if ((rc = prep(st, k->get, &s, err, "s", id)))
        goto end;
    rc = db_step(s);
    if (rc == DB_ROW) {
        snprintf(sha, sizeof sha, "%s", col_text(s, k->sha_col) ? col_text(s, k->sha_col) : "");
        rc = 0;
    } else if (rc == DB_DONE)
        rc = slim_error_set(err, SLIM_ENOTFOUND, "%s %.64s does not exist", k->what, id);
    else
        rc = db_error(st, err, "cannot read %s %.64s", k->what, id);
    done(s);
    if (rc || (rc = prep(st, k->user, &s, err, "s", id)))
        goto end;
    rc = db_step(s);
    if (rc == DB_ROW)
        rc = slim_error_set(err, SLIM_ECONFLICT, "%s %.64s is used by job %s (%s); "
                            "cancel it or wait", k->what, id, col_text(s, 0),
                            store_job_state_name(db_column_int(s, 1)));
    else
        rc = rc == DB_DONE ? 0 : db_error(st, err, "cannot read jobs");
    done(s);
    if (!rc)
        rc = run(st, k->del, NULL, err, "s", id);
end:
    if (!(rc = finish(st, rc, err)))
        drop_blob_if_unused(st, sha);
out:
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_model_insert(struct store *st, const char *owner, const char *name, const char *sha,
                       uint64_t bytes, json_t *info, json_t **row, struct slim_error *err)
{
    return upload_insert(st, &model_kind, owner, name, sha, bytes, info, row, err);
}

int store_model_get(struct store *st, const char *id, json_t **row, struct slim_error *err)
{
    return upload_get(st, &model_kind, id, row, err);
}

int store_model_list(struct store *st, const char *owner, int limit, int offset, json_t **rows,
                     int *total, struct slim_error *err)
{
    return upload_list(st, &model_kind, owner, NULL, NULL, limit, offset, rows, total, err);
}

int store_model_find(struct store *st, const char *owner, const char *name, const char *sha,
                     int limit, int offset, json_t **rows, int *total, struct slim_error *err)
{
    return upload_list(st, &model_kind, owner, name, sha, limit, offset, rows, total, err);
}

int store_model_delete(struct store *st, const char *id, struct slim_error *err)
{
    return upload_delete(st, &model_kind, id, err);
}

/* ---- datasets ---- */

int store_dataset_insert(struct store *st, const char *owner, const char *name, const char *sha,
                         uint64_t bytes, json_t *info, json_t **row, struct slim_error *err)
{
    return upload_insert(st, &dataset_kind, owner, name, sha, bytes, info, row, err);
}

int store_dataset_get(struct store *st, const char *id, json_t **row, struct slim_error *err)
{
    return upload_get(st, &dataset_kind, id, row, err);
}

int store_dataset_list(struct store *st, const char *owner, int limit, int offset, json_t **rows,
                       int *total, struct slim_error *err)
{
    return upload_list(st, &dataset_kind, owner, NULL, NULL, limit, offset, rows, total, err);
}

int store_dataset_find(struct store *st, const char *owner, const char *name, const char *sha,
                       int limit, int offset, json_t **rows, int *total, struct slim_error *err)
{
    return upload_list(st, &dataset_kind, owner, name, sha, limit, offset, rows, total, err);
}

int store_dataset_delete(struct store *st, const char *id, struct slim_error *err)
{
    return upload_delete(st, &dataset_kind, id, err);
}

/* ---- jobs ---- */

/* 1 when statement i (a get by id) finds a row for id.  Lock held. */
static int row_exists(struct store *st, enum q i, const char *id)
{
    struct db_stmt *s;
    int found;
    if (prep(st, i, &s, NULL, "s", id))
        return 0;
    found = db_step(s) == DB_ROW;
    done(s);
    return found;
}

int store_job_insert(struct store *st, const char *owner, const char *model_id,
                     const char *dataset_id, json_t *spec, uint64_t mem_bytes,
                     int64_t max_queued, json_t **row, struct slim_error *err)
{
    struct db_stmt *s;
    char id[32], *text;
    int rc;

    if (!model_id)
        return slim_error_set(err, SLIM_EINVAL, "model: required");
    if ((rc = new_id(id, sizeof id, "job_", err)))
        return rc;
    if (!(text = json_dumps(spec, JSON_COMPACT)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    pthread_mutex_lock(&st->lock);
    rc = prep(st, Q_JOB_INSERT, &s, err, "sssIIss", id, model_id, text, (int64_t)mem_bytes,
              max_queued > 0 ? max_queued : INT64_MAX, dataset_id, owner);
    if (!rc) /* no row: the model or the dataset does not exist, or the queue is full */
        rc = one_row(st, s, job_row, row, "model", model_id, err);
    if (rc == SLIM_ENOTFOUND && row_exists(st, Q_MODEL_GET, model_id)) {
        if (dataset_id && !row_exists(st, Q_DS_GET, dataset_id))
            rc = slim_error_set(err, SLIM_ENOTFOUND, "dataset %.64s does not exist", dataset_id);
        else if (max_queued > 0)
            rc = slim_error_set(err, SLIM_EBUSY, "the queue holds %lld jobs already (the "
                                "daemon's --max-queued): try again later",
                                (long long)max_queued);
    }
    if (!rc)
        notify(st, "slimd_jobs", "");
    pthread_mutex_unlock(&st->lock);
    free(text);
    return rc;
}

int store_job_get(struct store *st, const char *id, json_t **row, struct slim_error *err)
{
    struct db_stmt *s;
    int rc;
    pthread_mutex_lock(&st->lock);
    rc = prep(st, Q_JOB_GET, &s, err, "s", id);
    if (!rc)
        rc = one_row(st, s, job_row, row, "job", id, err);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_job_list(struct store *st, const char *owner, int state, int limit, int offset,
                   json_t **rows, int *total, struct slim_error *err)
{
    struct store_job_filter f = {.owner = owner, .state = state};
    return store_job_find(st, &f, limit, offset, rows, total, err);
}

int store_job_find(struct store *st, const struct store_job_filter *f, int limit, int offset,
                   json_t **rows, int *total, struct slim_error *err)
{
    struct db_stmt *list, *count;
    int rc;
    pthread_mutex_lock(&st->lock);
    rc = run(st, Q_BEGIN, NULL, err, "");
    if (!rc) {
        rc = prep(st, Q_JOB_LIST, &list, err, "iisisss", limit, offset, f->owner, f->state,
                  f->name, f->model, f->labels);
        if (!rc)
            rc = prep(st, Q_JOB_COUNT, &count, err, "iisisss", limit, offset, f->owner,
                      f->state, f->name, f->model, f->labels);
        if (!rc)
            rc = list_rows(st, list, count, job_summary_row, rows, total, err);
        rc = finish(st, rc, err);
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* The claim is one UPDATE ... RETURNING: atomic even against another
 * process on the same database, not only against our threads.  On
 * PostgreSQL its subquery takes the oldest queued row FOR UPDATE SKIP
 * LOCKED, so nodes claiming at once take different rows instead of
 * queueing behind one lock (graphile-worker's, river's pattern); on
 * SQLite the database has one writer at a time anyway. */
int store_job_claim(struct store *st, uint64_t mem_left, json_t **row, struct slim_error *err)
{
    struct db_stmt *s;
    int rc;
    pthread_mutex_lock(&st->lock);
    rc = prep(st, Q_JOB_CLAIM, &s, err, "Isd",
              (int64_t)(mem_left > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : mem_left),
              st->node, st->lease);
    if (!rc) {
        rc = one_row(st, s, job_row, row, "job", "claim", err);
        if (rc == SLIM_ENOTFOUND)
            rc = slim_error_set(err, SLIM_ENOTFOUND, "no queued job fits");
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* After a job UPDATE that changed nothing: SLIM_ENOTFOUND, or
 * SLIM_ECONFLICT naming the state the job is in instead. */
/* The job's state in *state; SLIM_ENOTFOUND when there is no such job. */
static int job_state(struct store *st, const char *id, int *state, struct slim_error *err)
{
    struct db_stmt *s;
    int rc = prep(st, Q_JOB_REPORT, &s, err, "s", id);
    if (rc)
        return rc;
    rc = db_step(s);
    if (rc == DB_ROW) {
        *state = db_column_int(s, 0);
        rc = 0;
    } else if (rc == DB_DONE) {
        rc = slim_error_set(err, SLIM_ENOTFOUND, "job %.64s does not exist", id);
    } else {
        rc = db_error(st, err, "cannot read job %.64s", id);
    }
    done(s);
    return rc;
}

static int job_not_in(struct store *st, const char *id, const char *want, struct slim_error *err)
{
    struct db_stmt *s;
    const char *holder;
    int state, rc = job_state(st, id, &state, err);
    /* running, but held by another node: this node's lease ran out and
     * the job was claimed again (the other node's outcome counts) */
    if (!rc && state == STORE_JOB_RUNNING && !prep(st, Q_JOB_HOLDER, &s, NULL, "s", id)) {
        if (db_step(s) == DB_ROW) {
            holder = col_text(s, 1);
            if ((holder || st->node) && (!holder || !st->node || strcmp(holder, st->node)))
                rc = slim_error_set(err, SLIM_ECONFLICT, "job %.64s is held by node %s now "
                                    "(this node's lease on it ran out)", id,
                                    holder ? holder : "(none)");
        }
        done(s);
        if (rc)
            return rc;
    }
    if (!rc)
        rc = slim_error_set(err, SLIM_ECONFLICT, "job %.64s is %s, not %s", id,
                            store_job_state_name(state), want);
    return rc;
}

int store_job_progress(struct store *st, const char *id, double progress, const char *stage,
                       struct slim_error *err)
{
    int rc;
    if (!(progress >= 0)) /* NaN too */
        progress = 0;
    if (progress > 1)
        progress = 1;
    pthread_mutex_lock(&st->lock);
    rc = run(st, Q_JOB_PROGRESS, NULL, err, "sdss", id, progress, stage, st->node);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_job_training(struct store *st, const char *id, const char *training,
                       struct slim_error *err)
{
    int rc;
    pthread_mutex_lock(&st->lock);
    rc = run(st, Q_JOB_TRAINING, NULL, err, "sss", id, training, st->node);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* The end of an update that recorded a job's artifact (rc its result, n
 * the rows it changed), lock held.  A cancel that was acknowledged while
 * the job ran wins, even over a job that finished meanwhile: the caller
 * ends it canceled (SLIM_ECANCELED), and the artifact it made is
 * dropped.  When no row names the artifact (the update failed or changed
 * nothing) it goes now rather than stay an orphan until the next start. */
static int ended_with_artifact(struct store *st, const char *id, const char *artifact_sha, int rc,
                               int n, struct slim_error *err)
{
    if (!rc && !n) {
        rc = job_not_in(st, id, "running", err);
        if (rc == SLIM_ECONFLICT && strstr(err->msg, "is running"))
            rc = slim_error_set(err, SLIM_ECANCELED, "job %.64s was canceled", id);
    }
    if (rc)
        drop_blob_if_unused(st, artifact_sha);
    return rc;
}

/* The artifact blob must already be committed (store_blob_adopt). */
int store_job_succeed(struct store *st, const char *id, const char *artifact_sha,
                      uint64_t artifact_bytes, json_t *report, struct slim_error *err)
{
    char *text = json_dumps(report, JSON_COMPACT);
    int rc, n = 0;
    if (!text)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory serializing the report");
    pthread_mutex_lock(&st->lock);
    rc = blob_present(st, artifact_sha, err);
    if (!rc)
        rc = run(st, Q_JOB_SUCCEED, &n, err, "ssIss", id, artifact_sha, (int64_t)artifact_bytes,
                 text, st->node);
    rc = ended_with_artifact(st, id, artifact_sha, rc, n, err);
    pthread_mutex_unlock(&st->lock);
    free(text);
    return rc;
}

/* Runs a one-job state change bound to (id[, text]); when it changes no
 * row the job was not in the state `want`. */
static int job_change(struct store *st, enum q i, const char *id, const char *text,
                      const char *want, struct slim_error *err)
{
    int rc, n = 0;
    pthread_mutex_lock(&st->lock);
    rc = text ? run(st, i, &n, err, "sss", id, text, st->node)
              : run(st, i, &n, err, "ss", id, st->node);
    if (!rc && !n)
        rc = job_not_in(st, id, want, err);
    if (!rc && i == Q_JOB_REQUEUE)
        notify(st, "slimd_jobs", "");
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_job_fail(struct store *st, const char *id, int code, const char *message,
                   struct slim_error *err)
{
    int rc, n = 0;
    pthread_mutex_lock(&st->lock);
    rc = run(st, Q_JOB_FAIL, &n, err, "ssss", id, message ? message : "failed",
             slim_errcode(code ? code : SLIM_EINTERNAL), st->node);
    if (!rc && !n)
        rc = job_not_in(st, id, "running", err);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_job_retry(struct store *st, const char *id, int max_attempts, int code,
                    const char *message, int *state, struct slim_error *err)
{
    struct db_stmt *s;
    json_t *row = NULL;
    int rc;
    *state = -1;
    pthread_mutex_lock(&st->lock);
    rc = prep(st, Q_JOB_RETRY, &s, err, "sisss", id, max_attempts < 1 ? 1 : max_attempts,
              message ? message : "no space left", slim_errcode(code ? code : SLIM_ENOSPACE),
              st->node);
    if (!rc)
        rc = one_row(st, s, job_row, &row, "job", id, err);
    if (rc == SLIM_ENOTFOUND)   /* no row changed: not running, or gone */
        rc = job_not_in(st, id, "running", err);
    if (!rc)
        *state = store_job_state_parse(json_string_value(json_object_get(row, "state")));
    if (!rc && *state == STORE_JOB_QUEUED)
        notify(st, "slimd_jobs", "");
    pthread_mutex_unlock(&st->lock);
    json_decref(row);
    return rc;
}

int store_job_canceled(struct store *st, const char *id, struct slim_error *err)
{
    return job_change(st, Q_JOB_CANCELED, id, NULL, "running", err);
}

/* A cancel requested while the job ran turns the re-queue into canceled. */
int store_job_requeue(struct store *st, const char *id, struct slim_error *err)
{
    return job_change(st, Q_JOB_REQUEUE, id, NULL, "running", err);
}

int store_job_cancel(struct store *st, const char *id, int *was_running, struct slim_error *err)
{
    int rc, n = 0, state;
    *was_running = 0;
    pthread_mutex_lock(&st->lock);
    rc = run(st, Q_JOB_CANCEL_QUEUED, &n, err, "s", id);
    if (!rc && !n && !(rc = run(st, Q_JOB_CANCEL_RUNNING, &n, err, "s", id)))
        *was_running = n > 0;
    /* the node running it may be another: it hears at once (its
     * heartbeat reads the flag too, within a fraction of a second) */
    if (!rc && *was_running)
        notify(st, "slimd_cancel", id);
    if (!rc && !n && !(rc = job_state(st, id, &state, err)))
        /* it finished first: the cancel comes too late, and says so */
        rc = state == STORE_JOB_CANCELED
                 ? slim_error_set(err, SLIM_ECONFLICT, "job %.64s is already canceled", id)
                 : slim_error_set(err, SLIM_ECONFLICT, "job %.64s already %s: too late to "
                                  "cancel it", id, store_job_state_name(state));
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* A running job whose cancel was requested before the stop ends
 * canceled (counted in neither *requeued nor *failed); max_attempts < 1
 * counts as 1. */
static int recover(struct store *st, int all, const char *node, const char *prev,
                   int max_attempts, int *requeued, int *failed, struct slim_error *err)
{
    int rc;
    *requeued = *failed = 0;
    if (max_attempts < 1)
        max_attempts = 1;
    pthread_mutex_lock(&st->lock);
    if (!(rc = run(st, Q_BEGIN_IMMEDIATE, NULL, err, ""))) {
        rc = run(st, Q_RECOVER_CANCELED, NULL, err, "iiss", max_attempts, all, node, prev);
        if (!rc)
            rc = run(st, Q_RECOVER_FAIL, failed, err, "iiss", max_attempts, all, node, prev);
        if (!rc)
            rc = run(st, Q_RECOVER_REQUEUE, requeued, err, "iiss", max_attempts, all, node, prev);
        if ((rc = finish(st, rc, err)))
            *requeued = *failed = 0;
    }
    if (!rc && *requeued)
        notify(st, "slimd_jobs", "");
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* At start: on SQLite every running job (one daemon per database: the
 * data dir's lock); on PostgreSQL this node's and those whose lease ran
 * out, never another live node's. */
int store_job_recover(struct store *st, int max_attempts, int *requeued, int *failed,
                      struct slim_error *err)
{
    return recover(st, !st->pg, st->node, st->prev_node, max_attempts, requeued, failed, err);
}

int store_job_recover_expired(struct store *st, int max_attempts, int *requeued, int *failed,
                              struct slim_error *err)
{
    return recover(st, 0, NULL, NULL, max_attempts, requeued, failed, err);
}

/* DATA_DIR/node-id: the node id of the last daemon on this data dir
 * (one line), so that one restarted under another id (the default
 * HOSTNAME:PORT, on another port) still recovers its predecessor's jobs
 * at once.  Read into *prev (NULL when missing or the same as node),
 * then replaced by node (temp file and rename).  Only SLIM_ENOMEM. */
static int node_file(struct store *st, const char *node, char **prev, struct slim_error *err)
{
    char path[4096], tmp[4200], buf[256] = "";
    FILE *f;
    *prev = NULL;
    snprintf(path, sizeof path, "%s/node-id", st->dir);
    if ((f = fopen(path, "re"))) {
        if (fgets(buf, sizeof buf, f))
            buf[strcspn(buf, "\n")] = 0;
        fclose(f);
    }
    if (buf[0] && (!node || strcmp(buf, node)) && !(*prev = slim_strdup(buf)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if (!node || (buf[0] && !strcmp(buf, node)))
        return 0;
    /* best effort: a full disk must not stop the start (it costs only
     * the quick recovery of the next start under another id) */
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if ((f = fopen(tmp, "we"))) {
        int bad = fprintf(f, "%s\n", node) < 0 || fflush(f) || fsync(fileno(f));
        if (fclose(f) || bad || rename(tmp, path))
            unlink(tmp);
    }
    return 0;
}

int store_set_node(struct store *st, const char *node, double lease_seconds,
                   struct slim_error *err)
{
    char *copy = node ? slim_strdup(node) : NULL, *prev = NULL;
    int rc;
    if (node && !copy)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if ((rc = node_file(st, node, &prev, err))) {
        slim_free(copy);
        return rc;
    }
    pthread_mutex_lock(&st->lock);
    slim_free(st->node);
    slim_free(st->prev_node);
    st->node = copy;
    st->prev_node = prev;
    st->lease = lease_seconds > 0 ? lease_seconds : 30;
    pthread_mutex_unlock(&st->lock);
    return 0;
}

const char *store_node(const struct store *st)
{
    return st->node;
}

int store_is_shared(const struct store *st)
{
    return st->pg;
}

const char *store_db_spec(const struct store *st)
{
    return st->db_spec;
}

int store_job_heartbeat(struct store *st, json_t **held, struct slim_error *err)
{
    struct db_stmt *s;
    json_t *out = json_object();
    int rc;
    *held = NULL;
    if (!out)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    pthread_mutex_lock(&st->lock);
    rc = prep(st, Q_JOB_HEARTBEAT, &s, err, "sd", st->node, st->lease);
    if (!rc) {
        while ((rc = db_step(s)) == DB_ROW)
            json_object_set_new(out, col_text(s, 0) ? col_text(s, 0) : "",
                                json_boolean(db_column_int(s, 1) != 0));
        /* the statement's commit comes with its last step (see one_row) */
        rc = rc == DB_DONE ? 0 : db_error(st, err, "cannot renew the leases");
        done(s);
    }
    pthread_mutex_unlock(&st->lock);
    if (rc)
        json_decref(out);
    else
        *held = out;
    return rc;
}

int store_node_jobs(struct store *st, json_t **by_node, struct slim_error *err)
{
    struct db_stmt *s;
    json_t *out = json_object();
    int rc;
    *by_node = NULL;
    if (!out)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    pthread_mutex_lock(&st->lock);
    rc = prep(st, Q_NODE_JOBS, &s, err, "");
    if (!rc) {
        while ((rc = db_step(s)) == DB_ROW) {
            const char *node = col_text(s, 0) ? col_text(s, 0) : "";
            json_t *ids = json_object_get(out, node);
            if (!ids)
                json_object_set_new(out, node, ids = json_array());
            json_array_append_new(ids, json_string(col_text(s, 1) ? col_text(s, 1) : ""));
        }
        rc = rc == DB_DONE ? 0 : db_error(st, err, "cannot list the running jobs");
        done(s);
    }
    pthread_mutex_unlock(&st->lock);
    if (rc)
        json_decref(out);
    else
        *by_node = out;
    return rc;
}

int store_job_report(struct store *st, const char *id, json_t **report, struct slim_error *err)
{
    struct db_stmt *s;
    int rc, state;
    pthread_mutex_lock(&st->lock);
    if ((rc = prep(st, Q_JOB_REPORT, &s, err, "s", id)))
        goto out;
    rc = db_step(s);
    state = rc == DB_ROW ? db_column_int(s, 0) : -1;
    /* a job failed by a quality gate keeps its report */
    if (rc == DB_ROW && state != STORE_JOB_SUCCEEDED &&
        !(state == STORE_JOB_FAILED && !db_column_is_null(s, 1)))
        rc = slim_error_set(err, SLIM_ECONFLICT,
                            "job %.64s is %s: its report exists once it has succeeded", id,
                            store_job_state_name(state));
    else if (rc == DB_ROW)
        rc = (*report = col_json(s, 1)) ? 0
             : slim_error_set(err, SLIM_EIO, "job %.64s: its stored report is unreadable", id);
    else if (rc == DB_DONE)
        rc = slim_error_set(err, SLIM_ENOTFOUND, "job %.64s does not exist", id);
    else
        rc = db_error(st, err, "cannot read job %.64s", id);
    done(s);
out:
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_job_counts(struct store *st, int64_t counts[5], struct slim_error *err)
{
    struct db_stmt *s;
    int rc;
    memset(counts, 0, 5 * sizeof counts[0]);
    pthread_mutex_lock(&st->lock);
    if (!(rc = prep(st, Q_JOB_COUNTS, &s, err, ""))) {
        while ((rc = db_step(s)) == DB_ROW) {
            int state = db_column_int(s, 0);
            if (state >= 0 && state < 5)
                counts[state] = db_column_int64(s, 1);
        }
        rc = rc == DB_DONE ? 0 : db_error(st, err, "cannot count jobs");
        done(s);
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* ---- tokens ---- */

static json_t *token_row(struct db_stmt *s)
{
    unsigned bits = (unsigned)db_column_int(s, 2);
    json_t *scopes = json_array();
    char name[24];
    for (unsigned bit = 1; scopes && bit <= STORE_SCOPES_ALL; bit <<= 1) {
        store_scopes_format(bits & bit, name, sizeof name);   /* token.c's names */
        if (name[0])
            json_array_append_new(scopes, json_string(name));
    }
    return json_pack("{s:s?, s:s?, s:o?, s:s?, s:s?, s:b}", "id", col_text(s, 0),
                     "name", col_text(s, 1), "scopes", scopes, "created_at", col_text(s, 3),
                     "last_used_at", col_text(s, 4), "revoked", db_column_int(s, 5) != 0);
}

int store_token_create(struct store *st, const char *name, unsigned scopes,
                       char secret_out[STORE_TOKEN_LEN + 1], json_t **row,
                       struct slim_error *err)
{
    json_t *utf8 = name ? json_string(name) : NULL;   /* NULL unless valid UTF-8 */
    char id[32], hash[65];
    struct db_stmt *s;
    int rc;

    json_decref(utf8);
    *row = NULL;
    if (!utf8 || !name[0] || strlen(name) > 200)
        return slim_error_set(err, SLIM_EINVAL, "name: expected 1 to 200 bytes of UTF-8 text");
    if (!scopes || (scopes & ~STORE_SCOPES_ALL))
        return slim_error_set(err, SLIM_EINVAL, "scopes: expected one or more of read, submit, "
                              "admin");
    if ((rc = new_id(id, sizeof id, "tok_", err)) ||
        (rc = store_token_secret_new(secret_out, err)) ||
        (rc = store_token_hash(secret_out, hash, err)))
        goto out;
    pthread_mutex_lock(&st->lock);
    rc = prep(st, Q_TOKEN_INSERT, &s, err, "ssis", id, name, (int)scopes, hash);
    if (!rc)
        rc = one_row(st, s, token_row, row, "token", id, err);
    pthread_mutex_unlock(&st->lock);
out:
    if (rc)   /* a secret that was not stored must not be shown */
        explicit_bzero(secret_out, STORE_TOKEN_LEN + 1);
    return rc;
}

int store_token_list(struct store *st, json_t **rows, struct slim_error *err)
{
    json_t *arr = json_array();
    struct db_stmt *s;
    int rc, step = DB_DONE;
    if (!arr)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    pthread_mutex_lock(&st->lock);
    if (!(rc = prep(st, Q_TOKEN_LIST, &s, err, ""))) {
        while (!rc && (step = db_step(s)) == DB_ROW)
            if (json_array_append_new(arr, token_row(s)))
                rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        if (!rc && step != DB_DONE)
            rc = db_error(st, err, "cannot list tokens");
        done(s);
    }
    pthread_mutex_unlock(&st->lock);
    if (rc)
        json_decref(arr);
    else
        *rows = arr;
    return rc;
}

int store_token_revoke(struct store *st, const char *id, int *was_revoked,
                       struct slim_error *err)
{
    int rc, n = 0;
    if (was_revoked)
        *was_revoked = 0;
    pthread_mutex_lock(&st->lock);
    rc = run(st, Q_TOKEN_REVOKE, &n, err, "s", id);
    if (!rc && !n) {
        if (!row_exists(st, Q_TOKEN_GET, id))
            rc = slim_error_set(err, SLIM_ENOTFOUND, "token %.64s does not exist", id);
        else if (was_revoked)
            *was_revoked = 1;
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_token_verify(struct store *st, const char *secret, struct store_token *out,
                       struct slim_error *err)
{
    size_t pre = strlen(STORE_TOKEN_PREFIX);
    char hash[65];
    struct db_stmt *s;
    int rc, step, touch = 0;

    memset(out, 0, sizeof *out);
    /* the shape first: a malformed secret costs no hash and no query */
    if (strlen(secret) != STORE_TOKEN_LEN || strncmp(secret, STORE_TOKEN_PREFIX, pre) ||
        strspn(secret + pre, "0123456789abcdef") != STORE_TOKEN_LEN - pre)
        return slim_error_set(err, SLIM_EUNAUTH, "the bearer token is malformed: expected "
                              STORE_TOKEN_PREFIX " and 64 hex digits");
    if ((rc = store_token_hash(secret, hash, err)))
        return rc;
    pthread_mutex_lock(&st->lock);
    if ((rc = prep(st, Q_TOKEN_FIND, &s, err, "s", hash)))
        goto out;
    step = db_step(s);
    if (step == DB_ROW && db_column_int(s, 2)) {
        rc = slim_error_set(err, SLIM_EUNAUTH, "the bearer token %s was revoked", col_text(s, 0));
    } else if (step == DB_ROW) {
        snprintf(out->id, sizeof out->id, "%s", col_text(s, 0) ? col_text(s, 0) : "");
        out->scopes = (unsigned)db_column_int(s, 1) & STORE_SCOPES_ALL;
        touch = db_column_int(s, 3);
    } else if (step == DB_DONE) {
        rc = slim_error_set(err, SLIM_EUNAUTH, "the bearer token is not one of this daemon's");
    } else {
        rc = db_error(st, err, "cannot read tokens");
    }
    done(s);
    if (!rc && touch)   /* best effort: a full disk must not lock everyone out */
        run(st, Q_TOKEN_TOUCH, NULL, NULL, "s", out->id);
out:
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_token_count_live(struct store *st, int64_t *n, struct slim_error *err)
{
    struct db_stmt *s;
    int rc;
    *n = 0;
    pthread_mutex_lock(&st->lock);
    if (!(rc = prep(st, Q_TOKEN_COUNT_LIVE, &s, err, ""))) {
        if (db_step(s) == DB_ROW)
            *n = db_column_int64(s, 0);
        else
            rc = db_error(st, err, "cannot count tokens");
        done(s);
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* ---- lifecycle (schema 6): delete, pin, retention, idempotency ----
 *
 * A job goes with its artifact (the blob, once nothing else names it:
 * two jobs that made the same bytes, or a model uploaded from an
 * artifact, share it) and its report (a column of the row).  Retention
 * deletes whole jobs, the oldest first: a job kept without its artifact
 * was rejected, since the row and report are what a user would look
 * for and cost next to nothing, but an artifact-less "succeeded" job
 * would answer its artifact URL with an error forever.  It never
 * touches a queued or running job, nor a model or dataset (what such
 * jobs need), only finished jobs and blobs nothing names any more.
 */

/* Deletes job id if it is not running; *sha gets its artifact's sha256
 * ("" without one).  Lock held. */
static int delete_job(struct store *st, const char *id, char sha[65], struct slim_error *err)
{
    struct db_stmt *s;
    int rc, step, state, none = 0;
    sha[0] = 0;
    if ((rc = prep(st, Q_JOB_DELETE, &s, err, "s", id)))
        return rc;
    step = db_step(s);
    if (step == DB_ROW) {
        snprintf(sha, 65, "%s", col_text(s, 0) ? col_text(s, 0) : "");
        while ((step = db_step(s)) == DB_ROW)
            ;
        if (step != DB_DONE || db_reset(s) != DB_OK)
            rc = db_error(st, err, "cannot delete job %.64s", id);
    } else if (step == DB_DONE) {
        none = 1;   /* nothing deleted: running, or no such job */
    } else {
        rc = db_error(st, err, "cannot delete job %.64s", id);
    }
    done(s);
    if (none && !(rc = job_state(st, id, &state, err)))
        rc = slim_error_set(err, SLIM_ECONFLICT, "job %.64s is running: cancel it first (POST "
                            "/v1/jobs/%.64s/cancel), then delete it", id, id);
    return rc;
}

int store_job_delete(struct store *st, const char *id, uint64_t *freed, struct slim_error *err)
{
    char sha[65];
    uint64_t n = 0;
    int rc;
    pthread_mutex_lock(&st->lock);
    rc = delete_job(st, id, sha, err);
    if (!rc && sha[0])
        n = drop_blob_if_unused(st, sha);
    pthread_mutex_unlock(&st->lock);
    if (freed)
        *freed = n;
    return rc;
}

int store_job_pin(struct store *st, const char *id, int pinned, json_t **row,
                  struct slim_error *err)
{
    struct db_stmt *s;
    int rc;
    pthread_mutex_lock(&st->lock);
    rc = prep(st, Q_JOB_PIN, &s, err, "si", id, pinned ? 1 : 0);
    if (!rc)
        rc = one_row(st, s, job_row, row, "job", id, err);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* du's figure for the data dir: allocated blocks of every file and
 * folder in it, not following links.  nftw has no context pointer: the
 * sum is thread-local. */
static __thread uint64_t du_sum;

static int du_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)path;
    (void)flag;
    (void)ftw;
    du_sum += (uint64_t)sb->st_blocks * 512;
    return 0;
}

uint64_t store_data_bytes(struct store *st)
{
    du_sum = 0;
    /* a file removed during the walk is skipped, not an error */
    (void)nftw(st->dir, du_one, 16, FTW_PHYS);
    return du_sum;
}

/* The ids statement i selects (bound to arg, may be NULL), at most
 * 100, into ids.  Lock held. */
static int select_ids(struct store *st, enum q i, const char *arg, char ids[][32], int *n,
                      struct slim_error *err)
{
    struct db_stmt *s;
    int rc, step = DB_DONE;
    *n = 0;
    if ((rc = arg ? prep(st, i, &s, err, "s", arg) : prep(st, i, &s, err, "")))
        return rc;
    while (*n < 100 && (step = db_step(s)) == DB_ROW)
        snprintf(ids[(*n)++], 32, "%s", col_text(s, 0) ? col_text(s, 0) : "");
    if (*n < 100 && step != DB_DONE)
        rc = db_error(st, err, "cannot read jobs");
    done(s);
    return rc;
}

int store_retention_sweep(struct store *st, const struct store_retention *cfg,
                          struct store_retention_result *out, struct slim_error *err)
{
    char ids[100][32], sha[65], age[32];
    uint64_t bytes, target;
    int rc = 0, n = 0;

    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&st->lock);
    rc = run(st, Q_IDEM_EXPIRE, NULL, err, "");
    pthread_mutex_unlock(&st->lock);
    /* --retain-days: every candidate finished before the cut, in batches
     * of one transaction each (one fsync per 100 jobs) */
    snprintf(age, sizeof age, "-%d days", cfg->retain_days);
    while (!rc && cfg->retain_days > 0) {
        uint64_t freed = 0;
        pthread_mutex_lock(&st->lock);
        if (!(rc = run(st, Q_BEGIN_IMMEDIATE, NULL, err, ""))) {
            rc = select_ids(st, Q_RET_EXPIRED, age, ids, &n, err);
            char (*shas)[65] = n ? slim_calloc((size_t)n, 65) : NULL;
            if (!rc && n && !shas)
                rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            for (int k = 0; !rc && k < n; k++)
                rc = delete_job(st, ids[k], shas[k], err);
            if (!(rc = finish(st, rc, err)))
                for (int k = 0; k < n; k++)
                    freed += shas[k][0] ? drop_blob_if_unused(st, shas[k]) : 0;
            slim_free(shas);
        }
        pthread_mutex_unlock(&st->lock);
        if (!rc) {
            out->expired += n;
            out->freed += freed;
        }
        if (n < 100)
            break;
    }
    if (rc || !cfg->max_bytes)
        return rc;
    /* --max-data-bytes: the oldest finished job with an artifact, one at
     * a time, until the data dir (as du counts it) is under the limit
     * less the headroom the caller keeps for an artifact on its way */
    target = cfg->max_bytes > cfg->headroom ? cfg->max_bytes - cfg->headroom : 0;
    out->bytes_before = bytes = store_data_bytes(st);
    if (bytes > target) {   /* --blobs s3: local copies go before any job */
        uint64_t freed = blob_cache_trim(st, bytes - target);
        out->freed += freed;
        bytes = bytes > freed ? bytes - freed : 0;
    }
    while (bytes > target) {
        pthread_mutex_lock(&st->lock);
        rc = select_ids(st, Q_RET_OLDEST, NULL, ids, &n, err);
        if (!rc && n && !(rc = delete_job(st, ids[0], sha, err))) {
            uint64_t freed = sha[0] ? drop_blob_if_unused(st, sha) : 0;
            out->evicted++;
            out->freed += freed;
            bytes = bytes > freed ? bytes - freed : 0;
        }
        pthread_mutex_unlock(&st->lock);
        if (rc == SLIM_ECONFLICT) {   /* it started running meanwhile? not a finished job */
            rc = 0;
            break;
        }
        if (rc || !n) {
            out->over = !rc;   /* nothing left that retention may remove */
            break;
        }
    }
    out->bytes_after = store_data_bytes(st);
    if (out->bytes_after > target && !rc)
        out->over = 1;
    return rc;
}

int store_idem_claim(struct store *st, const char *route, const char *owner, const char *key,
                     const char *request_sha, struct store_idem *replay, struct slim_error *err)
{
    struct db_stmt *s;
    int rc, step;
    memset(replay, 0, sizeof *replay);
    owner = owner ? owner : "";
    pthread_mutex_lock(&st->lock);
    if ((rc = run(st, Q_BEGIN_IMMEDIATE, NULL, err, "")))
        goto out;
    /* a record older than 24 h is forgotten: the key is new again */
    if ((rc = run(st, Q_IDEM_EXPIRE, NULL, err, "")) ||
        (rc = prep(st, Q_IDEM_GET, &s, err, "sss", route, owner, key)))
        goto end;
    step = db_step(s);
    if (step == DB_ROW) {
        if (strcmp(col_text(s, 0) ? col_text(s, 0) : "", request_sha))
            rc = slim_error_set(err, SLIM_EIDEMPOTENCY, "Idempotency-Key '%.64s' was used in "
                                "the last 24 h for a different request: use a new key for "
                                "a new request", key);
        else if (db_column_int(s, 1) == 0)
            rc = slim_error_set(err, SLIM_ECONFLICT, "a request with Idempotency-Key '%.64s' "
                                "is still being processed: retry once it has finished", key);
        else {
            replay->status = db_column_int(s, 1);
            snprintf(replay->location, sizeof replay->location, "%s",
                     col_text(s, 2) ? col_text(s, 2) : "");
            if (!(replay->response = col_json(s, 3)))
                rc = slim_error_set(err, SLIM_EIO, "the stored response of Idempotency-Key "
                                    "'%.64s' is unreadable", key);
        }
    } else if (step != DB_DONE) {
        rc = db_error(st, err, "cannot read idempotency keys");
    }
    done(s);
    if (!rc && step == DB_DONE)
        rc = run(st, Q_IDEM_INSERT, NULL, err, "ssss", route, owner, key, request_sha);
end:
    rc = finish(st, rc, err);
    if (rc) {
        json_decref(replay->response);
        replay->response = NULL;
    }
out:
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_idem_finish(struct store *st, const char *route, const char *owner, const char *key,
                      int status, const char *location, json_t *response, struct slim_error *err)
{
    char *text = json_dumps(response, JSON_COMPACT);
    int rc;
    if (!text)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    pthread_mutex_lock(&st->lock);
    rc = run(st, Q_IDEM_FINISH, NULL, err, "sssiss", route, owner ? owner : "", key, status,
             location, text);
    pthread_mutex_unlock(&st->lock);
    free(text);
    return rc;
}

void store_idem_release(struct store *st, const char *route, const char *owner, const char *key)
{
    pthread_mutex_lock(&st->lock);
    run(st, Q_IDEM_RELEASE, NULL, NULL, "sss", route, owner ? owner : "", key);
    pthread_mutex_unlock(&st->lock);
}

/* ---- job listeners, gate failures and webhook deliveries (ci) ----
 *
 * These statements are prepared when used (db_prepare under the
 * lock), not kept in sql[]: each runs at most a few times a second. */

int store_job_listen(struct store *st, void (*fn)(void *ud), void *ud, int on)
{
    int rc = SLIM_ENOMEM;
    pthread_mutex_lock(&st->lock);
    for (int i = 0; i < STORE_LISTENERS; i++) {
        if (on && !st->listen[i].fn) {
            st->listen[i].fn = fn;
            st->listen[i].ud = ud;
            rc = 0;
            break;
        }
        if (!on && st->listen[i].fn == fn && st->listen[i].ud == ud) {
            st->listen[i].fn = NULL;
            st->listen[i].ud = NULL;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return on ? rc : 0;
}

/* Prepares sql and binds types as bindv does ('s', 'i', 'I', 'd'). */
static int adhoc(struct store *st, const char *text, struct db_stmt **out, struct slim_error *err,
                 const char *types, ...)
{
    struct db_stmt *s = NULL;
    va_list ap;
    int rc;
    if (db_prepare(st->db, text, 0, &s) != DB_OK)
        return db_error(st, err, "cannot prepare a statement");
    va_start(ap, types);
    rc = bind_values(s, types, ap);
    va_end(ap);
    if (rc != DB_OK) {
        rc = slim_error_set(err, SLIM_EIO, "cannot bind a value: %s", db_errmsg(st->db));
        db_finalize(s);
        return rc;
    }
    *out = s;
    return 0;
}

int store_job_fail_kept(struct store *st, const char *id, const char *artifact_sha,
                        uint64_t artifact_bytes, json_t *report, int code, const char *message,
                        struct slim_error *err)
{
    char *text = json_dumps(report, JSON_COMPACT);
    struct db_stmt *s = NULL;
    int rc, n = 0;
    if (!text)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory serializing the report");
    pthread_mutex_lock(&st->lock);
    rc = blob_present(st, artifact_sha, err);
    if (!rc)
        rc = adhoc(st, st->pg ?
                   "UPDATE jobs SET state = 3, progress = 1, stage = NULL, finished_at = " PG_NOW
                   ", artifact_sha = ?2, artifact_bytes = ?3, report = ?4::text, error = ?5,"
                   " error_code = ?6, warning_count = " PG_WARNINGS(4)
                   " WHERE id = ?1 AND state = 1 AND cancel_requested = 0"
                   " AND node IS NOT DISTINCT FROM ?7::text" :
                   "UPDATE jobs SET state = 3, progress = 1, stage = NULL, finished_at = " NOW
                   ", artifact_sha = ?2, artifact_bytes = ?3, report = ?4, error = ?5,"
                   " error_code = ?6, warning_count = json_array_length(?4, '$.warnings')"
                   " WHERE id = ?1 AND state = 1 AND cancel_requested = 0 AND node IS ?7", &s,
                   err, "ssIssss", id, artifact_sha, (int64_t)artifact_bytes, text, message,
                   slim_errcode(code), st->node);
    if (!rc) {
        if (db_step(s) != DB_DONE)
            rc = db_error(st, err, "cannot update the database");
        else
            n = db_changes(st->db);
        db_finalize(s);
    }
    rc = ended_with_artifact(st, id, artifact_sha, rc, n, err);
    pthread_mutex_unlock(&st->lock);
    free(text);
    return rc;
}

/* Runs a prepared ad-hoc statement that returns no rows. */
static int adhoc_run(struct store *st, struct db_stmt *s, struct slim_error *err)
{
    int rc = 0;
    if (db_step(s) != DB_DONE)
        rc = db_error(st, err, "cannot update the database");
    db_finalize(s);
    return rc;
}

int store_webhook_add(struct store *st, const char *job_id, const char *url,
                      struct slim_error *err)
{
    struct db_stmt *s;
    int rc;
    pthread_mutex_lock(&st->lock);
    /* OR REPLACE: a new row, its defaults and all */
    if (!(rc = adhoc(st, st->pg ? "INSERT INTO webhooks (job_id, url) VALUES (?1, ?2)"
                     " ON CONFLICT (job_id) DO UPDATE SET url = excluded.url, state = 0,"
                     " attempts = 0, next_at = 0, last_status = NULL, last_error = NULL,"
                     " delivered_at = NULL"
                     : "INSERT OR REPLACE INTO webhooks (job_id, url) VALUES (?1, ?2)", &s, err,
                     "ss", job_id, url)))
        rc = adhoc_run(st, s, err);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_webhook_due(struct store *st, double now, int limit, json_t **rows, double *next_at,
                      struct slim_error *err)
{
    struct db_stmt *s = NULL;
    int rc, step = DB_DONE;
    *rows = json_array();
    *next_at = 0;
    if (!*rows)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    pthread_mutex_lock(&st->lock);
    rc = adhoc(st, "SELECT w.job_id, w.url, w.attempts, w.next_at FROM webhooks w"
               " JOIN jobs j ON j.id = w.job_id WHERE w.state = 0 AND j.state IN (2, 3, 4)"
               " ORDER BY w.next_at LIMIT ?1", &s, err, "i", limit);
    while (!rc && (step = db_step(s)) == DB_ROW) {
        double at = db_column_double(s, 3);
        if (at > now) {   /* the earliest one not yet due: when to look again */
            *next_at = at;
            break;
        }
        json_array_append_new(*rows, json_pack("{s:s, s:s, s:I}", "job_id", col_text(s, 0),
                                               "url", col_text(s, 1), "attempts",
                                               (json_int_t)db_column_int64(s, 2)));
    }
    if (s) {
        if (!rc && step != DB_ROW && step != DB_DONE)
            rc = db_error(st, err, "cannot read webhooks");
        db_finalize(s);
    }
    pthread_mutex_unlock(&st->lock);
    if (rc) {
        json_decref(*rows);
        *rows = NULL;
    }
    return rc;
}

int store_webhook_result(struct store *st, const char *job_id, int state, double next_at,
                         int http_status, const char *error, struct slim_error *err)
{
    struct db_stmt *s;
    int rc;
    pthread_mutex_lock(&st->lock);
    if (!(rc = adhoc(st, st->pg ?
                     "UPDATE webhooks SET state = ?2::bigint, attempts = attempts + 1,"
                     " next_at = ?3, last_status = ?4, last_error = ?5, delivered_at ="
                     " CASE WHEN ?2::bigint = 1 THEN " PG_NOW " END WHERE job_id = ?1" :
                     "UPDATE webhooks SET state = ?2, attempts = attempts + 1, next_at = ?3,"
                     " last_status = ?4, last_error = ?5, delivered_at = CASE WHEN ?2 = 1 THEN "
                     NOW " END WHERE job_id = ?1", &s, err, "sidis", job_id, state, next_at,
                     http_status, error)))
        rc = adhoc_run(st, s, err);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_webhook_get(struct store *st, const char *job_id, json_t **row, struct slim_error *err)
{
    static const char *const names[] = {"pending", "delivered", "failed"};
    struct db_stmt *s;
    int rc, step;
    *row = NULL;
    pthread_mutex_lock(&st->lock);
    if (!(rc = adhoc(st, "SELECT url, state, attempts, last_status, last_error, delivered_at"
                     " FROM webhooks WHERE job_id = ?1", &s, err, "s", job_id))) {
        step = db_step(s);
        if (step == DB_ROW) {
            int state = db_column_int(s, 1);
            *row = json_pack("{s:s?, s:s, s:I, s:o, s:s?, s:s?}", "url", col_text(s, 0),
                             "state", names[state >= 0 && state < 3 ? state : 0], "attempts",
                             (json_int_t)db_column_int64(s, 2), "last_status",
                             db_column_is_null(s, 3)
                                 ? json_null() : json_integer(db_column_int(s, 3)),
                             "last_error", col_text(s, 4), "delivered_at", col_text(s, 5));
        } else if (step == DB_DONE) {
            rc = SLIM_ENOTFOUND;
        } else {
            rc = db_error(st, err, "cannot read webhooks");
        }
        db_finalize(s);
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

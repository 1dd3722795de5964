-- A job database written by main at 19f8a18, before the schema had versions
-- (user_version 0): one done, one failed and one queued job, a waiting file and a hook call.
-- Made with that commit's JobQueue and dumped with sqlite3's iterdump; see test_schema.py.
BEGIN TRANSACTION;
CREATE TABLE hook_calls (
    id          INTEGER PRIMARY KEY,
    job         INTEGER NOT NULL,
    event       TEXT    NOT NULL,
    environment TEXT    NOT NULL,  -- JSON: what the hook learns (paths and figures, no text)
    created     REAL    NOT NULL
);
INSERT INTO "hook_calls" VALUES(1,2,'failed','{"TRANSCRIBED_ERROR": "not audio"}',1700000015.0);
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY,
    state        TEXT    NOT NULL,
    relpath      BLOB    NOT NULL,  -- path below the inbox as raw bytes: names need not be UTF-8
    work_name    TEXT    NOT NULL UNIQUE,
    sha256       TEXT,
    size         INTEGER,
    duplicate_of INTEGER REFERENCES jobs(id),
    attempts     INTEGER NOT NULL DEFAULT 0,
    not_before   REAL    NOT NULL DEFAULT 0,
    error        TEXT,
    outputs      TEXT,
    disposed_to  BLOB,  -- bytes, like relpath
    disposal_failures INTEGER NOT NULL DEFAULT 0,
    failure_kind TEXT,  -- failed jobs: unreadable | gave_up | kills_daemon (for metrics)
    started      REAL,  -- the current or last attempt began (wall clock)
    finished     REAL,  -- the transcript was published, or the job failed
    audio_seconds      REAL,  -- published: the recording's length
    processing_seconds REAL,  -- published: wall time from start to published transcript
    progress_seconds   REAL,  -- running: audio transcribed so far
    expected_seconds   REAL,  -- running: length the file's header claims (for an ETA only)
    language     TEXT,  -- published: the transcript's main language (ISO code), for `jobs list`
    created      REAL    NOT NULL,
    updated      REAL    NOT NULL
, request TEXT, transient_failures INTEGER NOT NULL DEFAULT 0, incomplete TEXT, disposal_started REAL, progress_at REAL, mtime_ns INTEGER, ctime_ns INTEGER, versions INTEGER NOT NULL DEFAULT 0, disposal TEXT, retry_started REAL, failure_reason TEXT);
INSERT INTO "jobs" VALUES(1,'done',X'7465616D2F646F6E652E776176','bbbbbbbb-done.wav','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',1000,NULL,1,0.0,NULL,'["team/done.txt", "team/done.json"]',X'2F7372762F617263686976652F7465616D2F646F6E652E776176',0,NULL,1700000007.0,1700000008.0,61.5,12.0,0.0,NULL,'en',1700000001.0,1700000011.0,'model=x',0,NULL,NULL,1700000007.0,1,2,0,'move',NULL,NULL);
INSERT INTO "jobs" VALUES(2,'failed',X'7465616D2F6661696C65642E776176','cccccccc-failed.wav','cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc',1000,NULL,1,1700000004.0,'not audio',NULL,NULL,0,'unreadable',1700000012.0,1700000014.0,NULL,NULL,0.0,NULL,NULL,1700000003.0,1700000013.0,NULL,0,NULL,NULL,1700000012.0,1,2,0,NULL,NULL,NULL);
INSERT INTO "jobs" VALUES(3,'queued',X'7465616D2F7175657565642E776176','aaaaaaaa-queued.wav','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',1000,NULL,0,1700000006.0,NULL,NULL,NULL,0,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,1700000005.0,1700000006.0,NULL,0,NULL,NULL,NULL,1,2,0,NULL,NULL,NULL);
CREATE TABLE retried (
    job     INTEGER PRIMARY KEY,
    relpath BLOB NOT NULL,
    sha256  TEXT,
    at      REAL NOT NULL
);
CREATE TABLE waiting (
    relpath BLOB PRIMARY KEY,
    reason  TEXT NOT NULL,
    since   REAL NOT NULL
);
INSERT INTO "waiting" VALUES(X'7465616D2F7374696C6C2D77726974696E672E776176','incomplete',1700000000.0);
CREATE INDEX jobs_by_state ON jobs(state, id);
CREATE INDEX jobs_by_sha ON jobs(sha256);
CREATE INDEX jobs_by_finished ON jobs(finished);
COMMIT;

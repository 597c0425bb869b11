//! The embedded store of `cks serve`: one SQLite file holding the webhook queue (with its
//! dead letters), the idempotency records and the identity map, behind the same ports the
//! Lambdas use with SQS and DynamoDB. It lives in the CLI crate so that SQLite (a C library)
//! never reaches the Lambda bootstraps.
//!
//! Durability: the file runs in WAL mode with `synchronous=FULL`, and every port call is one
//! transaction, so what a call reported as done survives a `kill -9` or a power cut.

pub mod cursor;
pub mod idempotency;
pub mod identity;
pub mod queue;

use rusqlite::{Connection, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a call waits for another connection's write lock (a second `cks` on the same
/// file, say `cks` inspecting it) before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Tables, created when missing. Times are integers: milliseconds since the epoch for the
/// queue, nanoseconds for the records (the ports' `OffsetDateTime`s round-trip exactly).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    group_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt_handle TEXT UNIQUE,
    delayed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_group ON messages (group_id, seq);
CREATE TABLE IF NOT EXISTS dedup (
    dedup_id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    code TEXT NOT NULL,
    dead_lettered_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    status TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    steps_done TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    lease_expires_at_ns INTEGER,
    summary TEXT,
    last_error TEXT,
    expires_at_ns INTEGER NOT NULL,
    holder TEXT,
    event TEXT,
    received_at_ns INTEGER,
    envelope TEXT
);
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    expires_at_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS customers (
    key TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    contact_id INTEGER,
    clocks TEXT NOT NULL,
    state TEXT,
    lease_holder TEXT,
    lease_until_ns INTEGER
);
";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the directory {path} for the local database: {source}; choose another path with --db")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the local database {path}: {source}; check the path and its permissions, or choose another with --db")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// One SQLite file shared by the adapters. Calls run on the blocking pool, one at a time
/// (SQLite has a single writer anyway).
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating when missing) the file at `path` and its tables.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DbError::Directory {
                path: dir.to_owned(),
                source,
            })?;
        }
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(SCHEMA)?;
            add_missing_columns(&conn)?;
            Ok(conn)
        };
        let conn = open().map_err(|source| DbError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` in one immediate (write-locking) transaction on the blocking pool and
    /// commits it when `work` returns `Ok`.
    pub async fn write<T, F>(&self, work: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let joined = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok::<T, rusqlite::Error>(value)
        })
        .await;
        match joined {
            Ok(result) => result.map_err(|e| format!("SQLite: {e}")),
            Err(e) => Err(format!("SQLite call did not finish: {e}")),
        }
    }
}

/// Columns added since the first release, for files made before them (`CREATE TABLE IF NOT
/// EXISTS` leaves an existing table as it was). Each is nullable, so old rows read as before.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("customers", "state", "TEXT"),
    ("customers", "lease_holder", "TEXT"),
    ("customers", "lease_until_ns", "INTEGER"),
    ("idempotency", "event", "TEXT"),
    ("idempotency", "received_at_ns", "INTEGER"),
    ("idempotency", "envelope", "TEXT"),
];

fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, kind) in ADDED_COLUMNS {
        let present: bool = conn.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |row| row.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
pub(crate) fn temp_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(&dir.path().join("nested/local.sqlite3")).expect("open");
    (dir, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::idempotency::{IdempotencyKey, IdempotencyStore, RecordStatus};

    /// A file from before records kept their delivery opens, gains the columns, and still
    /// reads its records (without a delivery).
    #[tokio::test]
    async fn an_older_file_gains_the_new_columns_and_keeps_its_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.sqlite3");
        Connection::open(&path)
            .and_then(|conn| {
                conn.execute_batch(
                    "CREATE TABLE idempotency (key TEXT PRIMARY KEY, site TEXT NOT NULL,
                     webhook_id TEXT NOT NULL, status TEXT NOT NULL, payload_hash TEXT NOT NULL,
                     steps_done TEXT NOT NULL, attempts INTEGER NOT NULL,
                     lease_expires_at_ns INTEGER, summary TEXT, last_error TEXT,
                     expires_at_ns INTEGER NOT NULL, holder TEXT);
                     INSERT INTO idempotency VALUES ('acme#1', 'acme', '1', 'COMPLETED', 'h',
                     '[\"0:goal:chargify/signup\"]', 1, NULL, 'ok', NULL, 0, NULL);",
                )
            })
            .expect("an old file");
        let store = idempotency::SqliteIdempotencyStore::new(Db::open(&path).expect("opens"));
        let record = store
            .get(&IdempotencyKey::new("acme", "1"))
            .await
            .expect("reads")
            .expect("the old record");
        assert_eq!(record.status, RecordStatus::Completed);
        assert_eq!(record.steps_done.len(), 1);
        assert_eq!(record.received, None);
        // Opening it again finds the columns there and adds nothing.
        Db::open(&path).expect("opens again");
    }
}

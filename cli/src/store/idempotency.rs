//! Idempotency records in SQLite, with the semantics of the in-memory and DynamoDB adapters
//! (see `shared::idempotency`): each call is one immediate transaction that reads the row,
//! decides exactly as the in-memory adapter does, and writes it back.

use super::Db;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};
use shared::idempotency::{
    decide_begin, later, live_lease, new_token, Begin, BeginRequest, Deleted, IdempotencyKey,
    IdempotencyRecord, IdempotencyStore, Lease, Received, RecordStatus, StoreError,
};
use std::collections::BTreeSet;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Clone)]
pub struct SqliteIdempotencyStore {
    db: Db,
}

fn to_ns(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn from_ns(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A row and its lease holder.
struct Stored {
    record: IdempotencyRecord,
    holder: Option<String>,
}

const COLUMNS: &str = "site, webhook_id, status, payload_hash, steps_done, attempts, \
     lease_expires_at_ns, summary, last_error, expires_at_ns, holder, \
     event, received_at_ns, envelope";

fn read(row: &Row<'_>) -> rusqlite::Result<(Stored, String, String)> {
    let steps: String = row.get(4)?;
    let status: String = row.get(2)?;
    Ok((
        Stored {
            record: IdempotencyRecord {
                key: IdempotencyKey::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                status: RecordStatus::InProgress,
                payload_hash: row.get(3)?,
                steps_done: BTreeSet::new(),
                attempts: row.get(5)?,
                lease_expires_at: row.get::<_, Option<i64>>(6)?.map(from_ns),
                summary: row.get(7)?,
                last_error: row.get(8)?,
                expires_at: from_ns(row.get(9)?),
                received: match (
                    row.get::<_, Option<String>>(11)?,
                    row.get::<_, Option<i64>>(12)?,
                    row.get::<_, Option<String>>(13)?,
                ) {
                    (Some(event), Some(at), Some(envelope)) => Some(Received {
                        event,
                        received_at: from_ns(at),
                        envelope,
                    }),
                    _ => None,
                },
            },
            holder: row.get(10)?,
        },
        status,
        steps,
    ))
}

/// The stored row for `key`, or `Corrupt` naming what is wrong with it.
fn load(
    tx: &rusqlite::Transaction<'_>,
    key: &IdempotencyKey,
) -> rusqlite::Result<Result<Option<Stored>, StoreError>> {
    let raw = tx
        .query_row(
            &format!("SELECT {COLUMNS} FROM idempotency WHERE key = ?1"),
            params![key.storage_key()],
            read,
        )
        .optional()?;
    let Some((mut stored, status, steps)) = raw else {
        return Ok(Ok(None));
    };
    let Some(status) = RecordStatus::parse(&status) else {
        return Ok(Err(StoreError::Corrupt {
            detail: format!("status {status:?}"),
        }));
    };
    let Ok(steps) = serde_json::from_str::<BTreeSet<String>>(&steps) else {
        return Ok(Err(StoreError::Corrupt {
            detail: "steps_done is not a JSON list of names".into(),
        }));
    };
    stored.record.status = status;
    stored.record.steps_done = steps;
    Ok(Ok(Some(stored)))
}

fn save(tx: &rusqlite::Transaction<'_>, stored: &Stored) -> rusqlite::Result<()> {
    let r = &stored.record;
    let steps = serde_json::to_string(&r.steps_done).unwrap_or_else(|_| "[]".into());
    tx.execute(
        &format!("INSERT OR REPLACE INTO idempotency (key, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
        params![
            r.key.storage_key(),
            r.key.site,
            r.key.webhook_id,
            r.status.as_str(),
            r.payload_hash,
            steps,
            r.attempts,
            r.lease_expires_at.map(to_ns),
            r.summary,
            r.last_error,
            to_ns(r.expires_at),
            stored.holder,
            r.received.as_ref().map(|d| d.event.as_str()),
            r.received.as_ref().map(|d| to_ns(d.received_at)),
            r.received.as_ref().map(|d| d.envelope.as_str()),
        ],
    )?;
    Ok(())
}

impl SqliteIdempotencyStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Loads the record held by `lease`, lets `change` edit it, and saves it; `LeaseLost`
    /// when the lease is no longer this attempt's.
    async fn with_held(
        &self,
        lease: &Lease,
        require_in_progress: bool,
        change: impl FnOnce(&mut Stored) + Send + 'static,
    ) -> Result<(), StoreError> {
        let key = lease.key.clone();
        let token = lease.token.clone();
        self.db
            .write(move |tx| {
                let stored = match load(tx, &key)? {
                    Ok(Some(stored)) => stored,
                    Ok(None) => return Ok(Err(StoreError::LeaseLost)),
                    Err(e) => return Ok(Err(e)),
                };
                let held = stored.holder.as_deref() == Some(token.as_str())
                    && (!require_in_progress || stored.record.status == RecordStatus::InProgress);
                if !held {
                    return Ok(Err(StoreError::LeaseLost));
                }
                let mut stored = stored;
                change(&mut stored);
                save(tx, &stored)?;
                Ok(Ok(()))
            })
            .await
            .map_err(|detail| StoreError::Unavailable { detail })?
    }
}

#[async_trait]
impl IdempotencyStore for SqliteIdempotencyStore {
    async fn begin(
        &self,
        key: &IdempotencyKey,
        payload_hash: &str,
        received: &Received,
        now: OffsetDateTime,
        lease_for: Duration,
        record_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let key = key.clone();
        let payload_hash = payload_hash.to_owned();
        let received = received.clone();
        self.db
            .write(move |tx| {
                let token = new_token();
                let existing = match load(tx, &key)? {
                    Ok(existing) => existing,
                    Err(e) => return Ok(Err(e)),
                };
                let request = BeginRequest {
                    key: &key,
                    payload_hash: &payload_hash,
                    received: &received,
                    now,
                    lease_for,
                    record_ttl,
                };
                let (answer, write) =
                    decide_begin(existing.as_ref().map(|s| &s.record), &request, &token);
                if let Some(record) = write {
                    save(
                        tx,
                        &Stored {
                            record,
                            holder: Some(token),
                        },
                    )?;
                }
                Ok(Ok(answer))
            })
            .await
            .map_err(|detail| StoreError::Unavailable { detail })?
    }

    async fn record_step(&self, lease: &Lease, step: &str) -> Result<(), StoreError> {
        let step = step.to_owned();
        self.with_held(lease, true, move |stored| {
            stored.record.steps_done.insert(step);
        })
        .await
    }

    async fn complete(
        &self,
        lease: &Lease,
        summary: &str,
        final_step: Option<&str>,
        now: OffsetDateTime,
        record_ttl: Duration,
    ) -> Result<(), StoreError> {
        let summary = summary.to_owned();
        let final_step = final_step.map(str::to_owned);
        self.with_held(lease, false, move |stored| {
            let record = &mut stored.record;
            record.status = RecordStatus::Completed;
            record.summary = Some(summary);
            record.lease_expires_at = None;
            record.expires_at = later(now, record_ttl);
            if let Some(step) = final_step {
                record.steps_done.insert(step);
            }
            stored.holder = None;
        })
        .await
    }

    async fn release(&self, lease: &Lease, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.with_held(lease, false, move |stored| {
            let record = &mut stored.record;
            record.status = RecordStatus::Failed;
            record.last_error = Some(error);
            // An expiry in the past, never none: the next attempt may begin at once.
            record.lease_expires_at = Some(OffsetDateTime::UNIX_EPOCH);
            stored.holder = None;
        })
        .await
    }

    async fn get(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = key.clone();
        self.db
            .write(move |tx| Ok(load(tx, &key)?.map(|s| s.map(|s| s.record))))
            .await
            .map_err(|detail| StoreError::Unavailable { detail })?
    }

    async fn mark_seen(
        &self,
        key: &IdempotencyKey,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = key.storage_key();
        let until = to_ns(later(now, ttl));
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT OR REPLACE INTO seen (key, expires_at_ns) VALUES (?1, ?2)",
                    params![key, until],
                )
            })
            .await
            .map_err(|detail| StoreError::Unavailable { detail })?;
        Ok(())
    }

    async fn seen(&self, key: &IdempotencyKey, now: OffsetDateTime) -> Result<bool, StoreError> {
        let key = key.storage_key();
        let now = to_ns(now);
        self.db
            .write(move |tx| {
                tx.query_row(
                    "SELECT COUNT(*) > 0 FROM seen WHERE key = ?1 AND expires_at_ns > ?2",
                    params![key, now],
                    |r| r.get::<_, bool>(0),
                )
            })
            .await
            .map_err(|detail| StoreError::Unavailable { detail })
    }

    async fn reopen(&self, key: &IdempotencyKey, note: &str) -> Result<bool, StoreError> {
        let key = key.clone();
        let note = note.to_owned();
        self.db
            .write(move |tx| {
                let mut stored = match load(tx, &key)? {
                    Ok(Some(stored)) if stored.record.status == RecordStatus::Completed => stored,
                    Ok(_) => return Ok(Ok(false)),
                    Err(e) => return Ok(Err(e)),
                };
                let record = &mut stored.record;
                record.status = RecordStatus::Failed;
                record.last_error = Some(note);
                record.lease_expires_at = Some(OffsetDateTime::UNIX_EPOCH);
                save(tx, &stored)?;
                Ok(Ok(true))
            })
            .await
            .map_err(|detail| StoreError::Unavailable { detail })?
    }

    async fn delete(
        &self,
        key: &IdempotencyKey,
        now: OffsetDateTime,
    ) -> Result<Deleted, StoreError> {
        let key = key.clone();
        self.db
            .write(move |tx| {
                let record = match load(tx, &key)? {
                    Ok(Some(stored)) => stored.record,
                    Ok(None) => return Ok(Ok(Deleted::Absent)),
                    Err(e) => return Ok(Err(e)),
                };
                if let Some(until) = live_lease(&record, now) {
                    return Ok(Ok(Deleted::Leased { until }));
                }
                tx.execute(
                    "DELETE FROM idempotency WHERE key = ?1",
                    params![key.storage_key()],
                )?;
                Ok(Ok(Deleted::Removed))
            })
            .await
            .map_err(|detail| StoreError::Unavailable { detail })?
    }
}

impl SqliteIdempotencyStore {
    /// Every record in the file (operator commands: `cks forget --local`). A row that does
    /// not read as a record is returned as its problem, so one bad row hides no other.
    pub async fn all(&self) -> Result<Vec<Result<IdempotencyRecord, StoreError>>, StoreError> {
        self.db
            .write(|tx| {
                let keys: Vec<String> = tx
                    .prepare("SELECT key FROM idempotency ORDER BY key")?
                    .query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut records = Vec::with_capacity(keys.len());
                for text in keys {
                    let Some(key) = IdempotencyKey::from_storage_key(&text) else {
                        records.push(Err(StoreError::Corrupt {
                            detail: format!("record key {text:?} has no '#'"),
                        }));
                        continue;
                    };
                    records.push(match load(tx, &key)? {
                        Ok(Some(stored)) => Ok(stored.record),
                        Ok(None) => continue,
                        Err(e) => Err(e),
                    });
                }
                Ok(records)
            })
            .await
            .map_err(|detail| StoreError::Unavailable { detail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_db;
    use shared::idempotency::contract;

    /// The contract every adapter keeps, then what a restart sees: the records survive a
    /// reopen of the file.
    #[tokio::test]
    async fn keeps_the_idempotency_contract_across_a_reopen() {
        let (dir, db) = temp_db();
        let store = SqliteIdempotencyStore::new(db);
        let key = IdempotencyKey::new("acme", "1");
        contract::lease_lifecycle(&store, &key).await;
        contract::release_and_retake(&store, &IdempotencyKey::new("acme", "2")).await;
        contract::reopen_for_a_forced_replay(&store, &IdempotencyKey::new("acme", "3")).await;
        contract::seen_markers(&store, &IdempotencyKey::new("acme", "4")).await;
        contract::delete_for_forget(&store, &IdempotencyKey::new("acme", "5")).await;

        let reopened = SqliteIdempotencyStore::new(
            Db::open(&dir.path().join("nested/local.sqlite3")).expect("reopen"),
        );
        let now = OffsetDateTime::now_utc();
        let ttl = Duration::from_secs(35 * 24 * 3600);
        assert_eq!(
            reopened
                .begin(
                    &key,
                    "h",
                    &contract::small(now),
                    now,
                    Duration::from_secs(60),
                    ttl
                )
                .await
                .expect("begin"),
            Begin::AlreadyCompleted {
                summary: Some("ok".into()),
                same_payload: true
            }
        );
        let record = reopened.get(&key).await.expect("get").expect("record");
        assert_eq!(record.steps_done.len(), 2);
        assert_eq!(record.status, RecordStatus::Completed);
    }
}

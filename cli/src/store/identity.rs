//! The identity map in SQLite: one row per Chargify customer with the Keap contact id, the
//! customer's state (`CustomerState` JSON) and its lease; the same contract as the in-memory
//! and DynamoDB adapters (`shared::identity::contract`). Rows written before the state
//! existed keep their subscription clocks in `clocks` (JSON: subscription id → nanoseconds)
//! and are read as a state with those clocks.

use super::Db;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use shared::idempotency::{later, StoreError};
use shared::identity::{may_take, CustomerKey, CustomerState, CustomerStore, LeaseHolder, Locked};
use shared::keap::ContactId;
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Clone)]
pub struct SqliteCustomerStore {
    db: Db,
}

impl SqliteCustomerStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

struct Row {
    contact_id: Option<ContactId>,
    clocks: String,
    state: Option<String>,
    lease: Option<LeaseHolder>,
}

fn nanos(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn load(tx: &rusqlite::Transaction<'_>, key: &CustomerKey) -> rusqlite::Result<Option<Row>> {
    tx.query_row(
        "SELECT contact_id, clocks, state, lease_holder, lease_until_ns FROM customers WHERE key = ?1",
        params![key.storage_key()],
        |r| {
            let holder: Option<String> = r.get(3)?;
            let until: Option<i64> = r.get(4)?;
            Ok(Row {
                contact_id: r.get(0)?,
                clocks: r.get(1)?,
                state: r.get(2)?,
                lease: match (holder, until) {
                    (Some(holder), Some(ns)) => Some(LeaseHolder {
                        holder,
                        until: OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
                            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    }),
                    _ => None,
                },
            })
        },
    )
    .optional()
}

fn decode(row: &Row) -> Result<CustomerState, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { detail };
    if let Some(text) = &row.state {
        return CustomerState::from_json(row.contact_id, text).map_err(|e| corrupt(e.to_string()));
    }
    let clocks: BTreeMap<String, i64> = serde_json::from_str(&row.clocks)
        .map_err(|e| corrupt(format!("subscription clocks: {e}")))?;
    let mut state = CustomerState {
        contact_id: row.contact_id,
        ..CustomerState::default()
    };
    for (subscription, ns) in clocks {
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
            .map_err(|e| corrupt(format!("subscription clock: {e}")))?;
        state.note_subscription(&subscription, at);
    }
    Ok(state)
}

/// Writes the whole row: its state, and the lease as given.
fn store(
    tx: &rusqlite::Transaction<'_>,
    key: &CustomerKey,
    state: &CustomerState,
    lease: Option<&LeaseHolder>,
) -> rusqlite::Result<usize> {
    // `clocks` keeps the subscription clocks for readers of the older layout.
    let clocks: BTreeMap<&str, i64> = state
        .subscriptions
        .iter()
        .map(|(s, at)| (s.as_str(), nanos(*at)))
        .collect();
    tx.execute(
        "INSERT OR REPLACE INTO customers
         (key, site, customer_id, contact_id, clocks, state, lease_holder, lease_until_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            key.storage_key(),
            key.site,
            key.customer_id,
            state.contact_id,
            serde_json::to_string(&clocks).unwrap_or_else(|_| "{}".into()),
            state.to_json(),
            lease.map(|l| l.holder.clone()),
            lease.map(|l| nanos(l.until)),
        ],
    )
}

fn unavailable(detail: String) -> StoreError {
    StoreError::Unavailable { detail }
}

#[async_trait]
impl CustomerStore for SqliteCustomerStore {
    async fn get(&self, key: &CustomerKey) -> Result<Option<CustomerState>, StoreError> {
        let key = key.clone();
        let row = self
            .db
            .write(move |tx| load(tx, &key))
            .await
            .map_err(unavailable)?;
        row.as_ref().map(decode).transpose()
    }

    async fn lock(
        &self,
        key: &CustomerKey,
        holder: &str,
        now: OffsetDateTime,
        lease_for: Duration,
    ) -> Result<Locked, StoreError> {
        let (key, holder) = (key.clone(), holder.to_owned());
        self.db
            .write(move |tx| {
                let row = load(tx, &key)?;
                let state = match row.as_ref().map(decode).transpose() {
                    Ok(state) => state.unwrap_or_default(),
                    Err(e) => return Ok(Err(e)),
                };
                if let Err(until) = may_take(row.and_then(|r| r.lease).as_ref(), &holder, now) {
                    return Ok(Ok(Locked::Busy { until }));
                }
                let lease = LeaseHolder {
                    holder,
                    until: later(now, lease_for),
                };
                store(tx, &key, &state, Some(&lease))?;
                Ok(Ok(Locked::Held(state)))
            })
            .await
            .map_err(unavailable)?
    }

    async fn save(
        &self,
        key: &CustomerKey,
        holder: &str,
        state: &CustomerState,
        release: bool,
    ) -> Result<(), StoreError> {
        let (key, holder, state) = (key.clone(), holder.to_owned(), state.clone());
        self.db
            .write(move |tx| {
                let lease = load(tx, &key)?.and_then(|r| r.lease);
                let Some(lease) = lease.filter(|l| l.holder == holder) else {
                    return Ok(Err(StoreError::LeaseLost));
                };
                store(tx, &key, &state, (!release).then_some(&lease))?;
                Ok(Ok(()))
            })
            .await
            .map_err(unavailable)?
    }

    async fn unlock(&self, key: &CustomerKey, holder: &str) -> Result<(), StoreError> {
        let (key, holder) = (key.clone(), holder.to_owned());
        self.db
            .write(move |tx| {
                tx.execute(
                    "UPDATE customers SET lease_holder = NULL, lease_until_ns = NULL
                     WHERE key = ?1 AND lease_holder = ?2",
                    params![key.storage_key(), holder],
                )
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn forget(&self, key: &CustomerKey) -> Result<bool, StoreError> {
        let key = key.clone();
        let deleted = self
            .db
            .write(move |tx| {
                tx.execute(
                    "DELETE FROM customers WHERE key = ?1",
                    params![key.storage_key()],
                )
            })
            .await
            .map_err(unavailable)?;
        Ok(deleted > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_db;
    use shared::identity::contract;

    /// The contract every adapter keeps, then what a restart sees.
    #[tokio::test]
    async fn keeps_the_customer_store_contract_across_a_reopen() {
        let (dir, db) = temp_db();
        let key = CustomerKey::new("acme", "43");
        let before = {
            let store = SqliteCustomerStore::new(db);
            contract::one_holder_at_a_time(&store, &CustomerKey::new("acme", "42")).await;
            contract::state_round_trips(&store, &key).await;
            store.get(&key).await.expect("get")
        };
        assert!(before.is_some());
        let reopened = SqliteCustomerStore::new(
            crate::store::Db::open(&dir.path().join("nested/local.sqlite3")).expect("reopen"),
        );
        assert_eq!(reopened.get(&key).await.expect("get"), before);
    }

    /// A row of the layout before the state column reads as a state with its clocks.
    #[tokio::test]
    async fn a_row_from_before_the_state_reads_its_subscription_clocks() {
        let (_dir, db) = temp_db();
        db.write(|tx| {
            tx.execute(
                "INSERT INTO customers (key, site, customer_id, contact_id, clocks)
                 VALUES ('acme#7', 'acme', '7', 1007, '{\"14\": 1790000000000000000}')",
                [],
            )
        })
        .await
        .expect("insert");
        let state = SqliteCustomerStore::new(db)
            .get(&CustomerKey::new("acme", "7"))
            .await
            .expect("get")
            .expect("row");
        assert_eq!(state.contact_id, Some(1007));
        let at = OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("time");
        assert!(state.has_applied("14", at));
    }
}

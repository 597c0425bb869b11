//! The identity map in SQLite: one row per Chargify customer with the Keap contact id and
//! the subscription clocks (JSON: subscription id → `updated_at` in nanoseconds), the same
//! facts and rules as the in-memory and DynamoDB adapters.

use super::Db;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use shared::idempotency::StoreError;
use shared::identity::{ClockUpdate, CustomerKey, CustomerRecord, CustomerStore};
use shared::keap::ContactId;
use std::collections::BTreeMap;
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

type Row = (Option<ContactId>, String);

fn load(tx: &rusqlite::Transaction<'_>, key: &CustomerKey) -> rusqlite::Result<Option<Row>> {
    tx.query_row(
        "SELECT contact_id, clocks FROM customers WHERE key = ?1",
        params![key.storage_key()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

fn decode((contact_id, clocks): Row) -> Result<CustomerRecord, StoreError> {
    let clocks: BTreeMap<String, i64> =
        serde_json::from_str(&clocks).map_err(|e| StoreError::Corrupt {
            detail: format!("subscription clocks: {e}"),
        })?;
    let mut record = CustomerRecord {
        contact_id,
        ..CustomerRecord::default()
    };
    for (subscription, ns) in clocks {
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).map_err(|e| {
            StoreError::Corrupt {
                detail: format!("subscription clock: {e}"),
            }
        })?;
        record.subscription_clocks.insert(subscription, at);
    }
    Ok(record)
}

fn encode(record: &CustomerRecord) -> String {
    let clocks: BTreeMap<&str, i64> = record
        .subscription_clocks
        .iter()
        .map(|(s, at)| {
            let ns = i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX);
            (s.as_str(), ns)
        })
        .collect();
    serde_json::to_string(&clocks).unwrap_or_else(|_| "{}".into())
}

#[async_trait]
impl CustomerStore for SqliteCustomerStore {
    async fn get(&self, key: &CustomerKey) -> Result<Option<CustomerRecord>, StoreError> {
        let key = key.clone();
        let row = self
            .db
            .write(move |tx| load(tx, &key))
            .await
            .map_err(|detail| StoreError::Unavailable { detail })?;
        row.map(decode).transpose()
    }

    async fn save(
        &self,
        key: &CustomerKey,
        contact_id: ContactId,
        clock: Option<(&str, OffsetDateTime)>,
    ) -> Result<ClockUpdate, StoreError> {
        let key = key.clone();
        let clock = clock.map(|(s, at)| (s.to_owned(), at));
        self.db
            .write(move |tx| {
                let mut record = match load(tx, &key)?.map(decode).transpose() {
                    Ok(record) => record.unwrap_or_default(),
                    Err(e) => return Ok(Err(e)),
                };
                record.contact_id = Some(contact_id);
                let update = match &clock {
                    None => ClockUpdate::Unchanged,
                    Some((subscription, at)) if record.is_stale(subscription, *at) => {
                        ClockUpdate::Stale
                    }
                    Some((subscription, at)) => {
                        record.subscription_clocks.insert(subscription.clone(), *at);
                        ClockUpdate::Advanced
                    }
                };
                tx.execute(
                    "INSERT OR REPLACE INTO customers (key, site, customer_id, contact_id, clocks)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        key.storage_key(),
                        key.site,
                        key.customer_id,
                        contact_id,
                        encode(&record)
                    ],
                )?;
                Ok(Ok(update))
            })
            .await
            .map_err(|detail| StoreError::Unavailable { detail })?
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
        let key = CustomerKey::new("acme", "42");
        let before = {
            let store = SqliteCustomerStore::new(db);
            contract::clock_only_moves_forward(&store, &key, &CustomerKey::new("acme", "43")).await;
            store.get(&key).await.expect("get")
        };
        let reopened = SqliteCustomerStore::new(
            crate::store::Db::open(&dir.path().join("nested/local.sqlite3")).expect("reopen"),
        );
        assert_eq!(reopened.get(&key).await.expect("get"), before);
    }
}

//! In-memory identity map for unit tests and dry runs; the DynamoDB adapter has the same
//! semantics and is tested against moto.

use super::{ClockUpdate, CustomerKey, CustomerRecord, CustomerStore};
use crate::idempotency::StoreError;
use crate::keap::ContactId;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use time::OffsetDateTime;

#[derive(Debug, Default)]
pub struct InMemoryCustomerStore {
    records: Mutex<BTreeMap<CustomerKey, CustomerRecord>>,
    writes: AtomicU64,
}

impl InMemoryCustomerStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl CustomerStore for InMemoryCustomerStore {
    async fn get(&self, key: &CustomerKey) -> Result<Option<CustomerRecord>, StoreError> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        Ok(records.get(key).cloned())
    }

    async fn save(
        &self,
        key: &CustomerKey,
        contact_id: ContactId,
        clock: Option<(&str, OffsetDateTime)>,
    ) -> Result<ClockUpdate, StoreError> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let record = records.entry(key.clone()).or_default();
        record.contact_id = Some(contact_id);
        self.writes.fetch_add(1, Ordering::Relaxed);
        let Some((subscription, at)) = clock else {
            return Ok(ClockUpdate::Unchanged);
        };
        if record.is_stale(subscription, at) {
            return Ok(ClockUpdate::Stale);
        }
        record
            .subscription_clocks
            .insert(subscription.to_owned(), at);
        Ok(ClockUpdate::Advanced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_clock_only_moves_forward() {
        let store = InMemoryCustomerStore::new();
        let key = CustomerKey::new("acme", "42");
        let t1 = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
        let t2 = t1 + time::Duration::hours(1);
        assert_eq!(
            store.save(&key, 7, Some(("s1", t2))).await,
            Ok(ClockUpdate::Advanced)
        );
        assert_eq!(
            store.save(&key, 7, Some(("s1", t1))).await,
            Ok(ClockUpdate::Stale)
        );
        assert_eq!(
            store.save(&key, 7, Some(("s1", t2))).await,
            Ok(ClockUpdate::Advanced)
        );
        let record = store.get(&key).await.unwrap().expect("record");
        assert!(record.is_stale("s1", t1));
        assert!(!record.is_stale("s1", t2));
        assert!(!record.is_stale("s2", t1));
        assert_eq!(record.contact_id, Some(7));
    }
}

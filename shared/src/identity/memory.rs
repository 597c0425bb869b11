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
    use crate::identity::contract;

    #[tokio::test]
    async fn keeps_the_customer_store_contract() {
        let store = InMemoryCustomerStore::new();
        contract::clock_only_moves_forward(
            &store,
            &CustomerKey::new("acme", "42"),
            &CustomerKey::new("acme", "43"),
        )
        .await;
    }
}

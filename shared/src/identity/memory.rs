//! In-memory identity map and name locks, for unit tests and dry runs; the DynamoDB and
//! SQLite adapters keep the same contract ([`super::contract`]).

use super::{may_take, CustomerKey, CustomerState, CustomerStore, LeaseHolder, Locked, NameLocks};
use crate::idempotency::{later, StoreError};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use time::OffsetDateTime;

type Entry = (CustomerState, Option<LeaseHolder>);

#[derive(Debug, Default)]
pub struct InMemoryCustomerStore {
    records: Mutex<BTreeMap<CustomerKey, Entry>>,
    writes: AtomicU64,
}

impl InMemoryCustomerStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes made so far (locks and saves count; a read does not).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Test support: the time passing after a crash, so every live lease has expired.
    pub fn expire_leases(&self) {
        for (_, lease) in self.records().values_mut() {
            if let Some(lease) = lease {
                lease.until = OffsetDateTime::UNIX_EPOCH;
            }
        }
    }

    /// Every customer's state, for tests that compare end states.
    pub fn all(&self) -> BTreeMap<CustomerKey, CustomerState> {
        self.records()
            .iter()
            .map(|(k, (state, _))| (k.clone(), state.clone()))
            .collect()
    }

    fn records(&self) -> MutexGuard<'_, BTreeMap<CustomerKey, Entry>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl CustomerStore for InMemoryCustomerStore {
    async fn get(&self, key: &CustomerKey) -> Result<Option<CustomerState>, StoreError> {
        Ok(self.records().get(key).map(|(state, _)| state.clone()))
    }

    async fn lock(
        &self,
        key: &CustomerKey,
        holder: &str,
        now: OffsetDateTime,
        lease_for: Duration,
    ) -> Result<Locked, StoreError> {
        let mut records = self.records();
        let entry = records.entry(key.clone()).or_default();
        if let Err(until) = may_take(entry.1.as_ref(), holder, now) {
            return Ok(Locked::Busy { until });
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        entry.1 = Some(LeaseHolder {
            holder: holder.to_owned(),
            until: later(now, lease_for),
        });
        Ok(Locked::Held(entry.0.clone()))
    }

    async fn save(
        &self,
        key: &CustomerKey,
        holder: &str,
        state: &CustomerState,
        release: bool,
    ) -> Result<(), StoreError> {
        let mut records = self.records();
        let Some(entry) = records.get_mut(key) else {
            return Err(StoreError::LeaseLost);
        };
        if entry.1.as_ref().is_none_or(|l| l.holder != holder) {
            return Err(StoreError::LeaseLost);
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        entry.0 = state.clone();
        if release {
            entry.1 = None;
        }
        Ok(())
    }

    async fn unlock(&self, key: &CustomerKey, holder: &str) -> Result<(), StoreError> {
        if let Some(entry) = self.records().get_mut(key) {
            if entry.1.as_ref().is_some_and(|l| l.holder == holder) {
                entry.1 = None;
            }
        }
        Ok(())
    }

    async fn forget(&self, key: &CustomerKey) -> Result<bool, StoreError> {
        Ok(self.records().remove(key).is_some())
    }
}

#[derive(Debug, Default)]
pub struct InMemoryNameLocks {
    locks: Mutex<BTreeMap<String, LeaseHolder>>,
}

impl InMemoryNameLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Test support: the time passing after a crash, so every lock has expired.
    pub fn expire_leases(&self) {
        for lease in self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values_mut()
        {
            lease.until = OffsetDateTime::UNIX_EPOCH;
        }
    }
}

#[async_trait]
impl NameLocks for InMemoryNameLocks {
    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        lease_for: Duration,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(until) = may_take(locks.get(name), holder, now) {
            return Ok(Some(until));
        }
        locks.insert(
            name.to_owned(),
            LeaseHolder {
                holder: holder.to_owned(),
                until: later(now, lease_for),
            },
        );
        Ok(None)
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.get(name).is_some_and(|l| l.holder == holder) {
            locks.remove(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::contract;

    #[tokio::test]
    async fn keeps_the_customer_store_contract() {
        let store = InMemoryCustomerStore::new();
        contract::one_holder_at_a_time(&store, &CustomerKey::new("acme", "42")).await;
        contract::state_round_trips(&store, &CustomerKey::new("acme", "43")).await;
        contract::name_locks(&InMemoryNameLocks::new(), "Billing: Active").await;
    }
}

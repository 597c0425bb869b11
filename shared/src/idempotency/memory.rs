//! In-memory idempotency records: unit tests and the embedded local mode's dry runs. Same
//! semantics as the DynamoDB adapter, which the integration tests check against moto.

use super::{
    decide_begin, later, live_lease, new_token, Begin, BeginRequest, Deleted, IdempotencyKey,
    IdempotencyRecord, IdempotencyStore, Lease, Received, RecordStatus, StoreError,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, Default)]
pub struct InMemoryIdempotencyStore {
    records: Mutex<BTreeMap<IdempotencyKey, (IdempotencyRecord, Option<String>)>>,
    /// Seen markers and their expiry.
    seen: Mutex<BTreeMap<IdempotencyKey, OffsetDateTime>>,
    writes: std::sync::atomic::AtomicU64,
}

impl InMemoryIdempotencyStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes made so far (for the write-count benchmark and tests).
    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Test support: the time passing after a crash, so every live lease has expired.
    pub fn expire_leases(&self) {
        for (record, _) in self.lock().values_mut() {
            if record.status == RecordStatus::InProgress {
                record.lease_expires_at = Some(OffsetDateTime::UNIX_EPOCH);
            }
        }
    }

    /// Test support: the records expire (their TTL passed); the seen markers stay.
    pub fn expire_records(&self) {
        self.lock().clear();
    }

    /// Every record, for tests that compare what was done.
    pub fn records(&self) -> Vec<IdempotencyRecord> {
        self.lock().values().map(|(r, _)| r.clone()).collect()
    }

    fn write(&self) {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<IdempotencyKey, (IdempotencyRecord, Option<String>)>>
    {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl IdempotencyStore for InMemoryIdempotencyStore {
    async fn begin(
        &self,
        key: &IdempotencyKey,
        payload_hash: &str,
        received: &Received,
        now: OffsetDateTime,
        lease_for: Duration,
        record_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let mut records = self.lock();
        let token = new_token();
        let request = BeginRequest {
            key,
            payload_hash,
            received,
            now,
            lease_for,
            record_ttl,
        };
        let (answer, write) =
            decide_begin(records.get(key).map(|(record, _)| record), &request, &token);
        if let Some(record) = write {
            records.insert(key.clone(), (record, Some(token)));
            self.write();
        }
        Ok(answer)
    }

    async fn record_step(&self, lease: &Lease, step: &str) -> Result<(), StoreError> {
        let mut records = self.lock();
        match records.get_mut(&lease.key) {
            Some((record, Some(holder)))
                if *holder == lease.token && record.status == RecordStatus::InProgress =>
            {
                record.steps_done.insert(step.to_owned());
                self.write();
                Ok(())
            }
            _ => Err(StoreError::LeaseLost),
        }
    }

    async fn complete(
        &self,
        lease: &Lease,
        summary: &str,
        final_step: Option<&str>,
        now: OffsetDateTime,
        record_ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut records = self.lock();
        match records.get_mut(&lease.key) {
            Some((record, holder)) if holder.as_deref() == Some(lease.token.as_str()) => {
                record.status = RecordStatus::Completed;
                record.summary = Some(summary.to_owned());
                record.lease_expires_at = None;
                record.expires_at = later(now, record_ttl);
                if let Some(step) = final_step {
                    record.steps_done.insert(step.to_owned());
                }
                *holder = None;
                self.write();
                Ok(())
            }
            _ => Err(StoreError::LeaseLost),
        }
    }

    async fn release(&self, lease: &Lease, error: &str) -> Result<(), StoreError> {
        let mut records = self.lock();
        match records.get_mut(&lease.key) {
            Some((record, holder)) if holder.as_deref() == Some(lease.token.as_str()) => {
                record.status = RecordStatus::Failed;
                record.last_error = Some(error.to_owned());
                // An expiry in the past, never none: the next attempt may begin at once.
                record.lease_expires_at = Some(OffsetDateTime::UNIX_EPOCH);
                *holder = None;
                self.write();
                Ok(())
            }
            _ => Err(StoreError::LeaseLost),
        }
    }

    async fn get(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self.lock().get(key).map(|(r, _)| r.clone()))
    }

    async fn mark_seen(
        &self,
        key: &IdempotencyKey,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), later(now, ttl));
        self.write();
        Ok(())
    }

    async fn seen(&self, key: &IdempotencyKey, now: OffsetDateTime) -> Result<bool, StoreError> {
        Ok(self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|until| *until > now))
    }

    async fn reopen(&self, key: &IdempotencyKey, note: &str) -> Result<bool, StoreError> {
        let mut records = self.lock();
        match records.get_mut(key) {
            Some((record, _)) if record.status == RecordStatus::Completed => {
                record.status = RecordStatus::Failed;
                record.last_error = Some(note.to_owned());
                record.lease_expires_at = Some(OffsetDateTime::UNIX_EPOCH);
                self.write();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete(
        &self,
        key: &IdempotencyKey,
        now: OffsetDateTime,
    ) -> Result<Deleted, StoreError> {
        let mut records = self.lock();
        let Some((record, _)) = records.get(key) else {
            return Ok(Deleted::Absent);
        };
        if let Some(until) = live_lease(record, now) {
            return Ok(Deleted::Leased { until });
        }
        records.remove(key);
        self.write();
        Ok(Deleted::Removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::contract;

    #[tokio::test]
    async fn keeps_the_idempotency_contract() {
        let store = InMemoryIdempotencyStore::new();
        contract::lease_lifecycle(&store, &IdempotencyKey::new("acme", "1")).await;
        contract::release_and_retake(&store, &IdempotencyKey::new("acme", "2")).await;
        contract::reopen_for_a_forced_replay(&store, &IdempotencyKey::new("acme", "3")).await;
        contract::seen_markers(&store, &IdempotencyKey::new("acme", "4")).await;
        contract::delete_for_forget(&store, &IdempotencyKey::new("acme", "5")).await;
    }
}

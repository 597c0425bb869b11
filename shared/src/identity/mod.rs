//! The identity map: per Chargify (site, customer id), the Keap contact kept in step and the
//! [`CustomerState`] that makes Keap converge (each value's Chargify version, and a mirror of
//! what Keap holds; see `crate::converge`).
//!
//! The first event of a customer upserts the Keap contact by email and stores the mapping;
//! later events update that contact by id, so a `customer_update` with a new email never
//! creates a second contact.
//!
//! **One worker per customer.** A worker folds webhooks over the state it read and then writes
//! Keap; two doing that at once for one contact could interleave their Keap calls, so the
//! older value lands last. SQS FIFO already serialises a customer's message group; the lease
//! here holds when it cannot (a record whose invocation outlived its visibility, a webhook
//! with no customer id queued in another group, a backfill and the processor at once). It is
//! taken with the read ([`CustomerStore::lock`] returns the state) and given back with the
//! write ([`CustomerStore::save`]), so it costs no extra call; it always expires, so a crashed
//! worker never blocks a customer for good.

pub mod contract;
mod dynamodb;
mod memory;

pub use crate::converge::CustomerState;
pub use dynamodb::{DynamoDbCustomerStore, DynamoDbNameLocks};
pub use memory::{InMemoryCustomerStore, InMemoryNameLocks};

use crate::idempotency::StoreError;
use async_trait::async_trait;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerKey {
    pub site: String,
    pub customer_id: String,
}

impl CustomerKey {
    pub fn new(site: impl Into<String>, customer_id: impl Into<String>) -> Self {
        Self {
            site: site.into(),
            customer_id: customer_id.into(),
        }
    }

    /// The stored key: `site#customer_id`.
    pub fn storage_key(&self) -> String {
        format!("{}#{}", self.site, self.customer_id)
    }
}

/// What [`CustomerStore::lock`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locked {
    /// The lease is ours; the customer's state (empty for a new customer).
    Held(CustomerState),
    /// Another worker holds it until then.
    Busy { until: OffsetDateTime },
}

#[async_trait]
pub trait CustomerStore: Send + Sync {
    /// The customer's state, without taking the lease (operators, the reconciler).
    async fn get(&self, key: &CustomerKey) -> Result<Option<CustomerState>, StoreError>;

    /// Takes the customer's lease for `holder` until `now + lease_for` (or keeps it, if
    /// `holder` has it) and returns the state, in one call.
    async fn lock(
        &self,
        key: &CustomerKey,
        holder: &str,
        now: OffsetDateTime,
        lease_for: Duration,
    ) -> Result<Locked, StoreError>;

    /// Stores `state` if `holder` still holds the lease ([`StoreError::LeaseLost`] if not),
    /// and gives the lease back in the same write when `release`.
    async fn save(
        &self,
        key: &CustomerKey,
        holder: &str,
        state: &CustomerState,
        release: bool,
    ) -> Result<(), StoreError>;

    /// Gives the lease back unchanged (after a failure), if `holder` still holds it.
    async fn unlock(&self, key: &CustomerKey, holder: &str) -> Result<(), StoreError>;

    /// Deletes the customer's record. `false` when there was none.
    async fn forget(&self, key: &CustomerKey) -> Result<bool, StoreError>;
}

/// Named leases shared by every worker of a deployment, for the rare action that must
/// happen once across instances: creating a Keap tag of a name (Keap does not keep tag names
/// unique, so two instances missing the same tag would make two).
#[async_trait]
pub trait NameLocks: Send + Sync {
    /// Takes the lease on `name` for `holder` until `now + lease_for`; `Some(until)` when
    /// another holder has it until then.
    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        lease_for: Duration,
    ) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Gives the lease back, if `holder` has it.
    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// A lease as stored: who holds it and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    pub until: OffsetDateTime,
}

/// The lease rule for stores that read and write under their own lock (in-memory, SQLite;
/// DynamoDB states it as a condition): `holder` may take it when nobody holds it, when it
/// expired, or when `holder` has it already. `Err(until)` otherwise.
pub fn may_take(
    current: Option<&LeaseHolder>,
    holder: &str,
    now: OffsetDateTime,
) -> Result<(), OffsetDateTime> {
    match current {
        Some(lease) if lease.holder != holder && lease.until >= now => Err(lease.until),
        _ => Ok(()),
    }
}

/// The store key of the lock on creating a tag named `name`.
pub fn tag_creation_lock(name: &str) -> String {
    format!("create-tag#{name}")
}

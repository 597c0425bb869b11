//! The identity map: Chargify (site, customer id) → Keap contact id, and per subscription the
//! `updated_at` of the last billing state applied (the stale-event guard).
//!
//! The first event of a customer upserts the Keap contact by email and stores the mapping;
//! later events update that contact by id, so a `customer_update` with a new email never
//! creates a second contact. Both facts live in one item per customer, so a typical event
//! costs one read and at most one write here.

pub mod contract;
mod dynamodb;
mod memory;

pub use dynamodb::DynamoDbCustomerStore;
pub use memory::InMemoryCustomerStore;

use crate::idempotency::StoreError;
use crate::keap::ContactId;
use async_trait::async_trait;
use std::collections::BTreeMap;
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

/// What we know about a Chargify customer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerRecord {
    pub contact_id: Option<ContactId>,
    /// Subscription id → `updated_at` of the newest event whose billing state was applied.
    pub subscription_clocks: BTreeMap<String, OffsetDateTime>,
}

impl CustomerRecord {
    /// An event about `subscription` as of `updated_at` is stale when a newer one was
    /// already applied. Equal times are not stale: a retry of the same event must pass.
    pub fn is_stale(&self, subscription: &str, updated_at: OffsetDateTime) -> bool {
        self.subscription_clocks
            .get(subscription)
            .is_some_and(|applied| *applied > updated_at)
    }
}

/// What [`CustomerStore::save`] did with the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockUpdate {
    /// No clock was given.
    Unchanged,
    Advanced,
    /// A newer state was applied meanwhile; the clock was left alone.
    Stale,
}

#[async_trait]
pub trait CustomerStore: Send + Sync {
    async fn get(&self, key: &CustomerKey) -> Result<Option<CustomerRecord>, StoreError>;

    /// One write: the contact id, and the subscription clock moved forward only (never
    /// back: the write is conditional on the stored time being no newer).
    async fn save(
        &self,
        key: &CustomerKey,
        contact_id: ContactId,
        clock: Option<(&str, OffsetDateTime)>,
    ) -> Result<ClockUpdate, StoreError>;
}

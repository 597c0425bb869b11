//! Idempotency records: each webhook (site + Chargify webhook id) changes Keap once, however
//! often SQS or Chargify delivers it.
//!
//! Semantics (a superset of the Powertools idempotency utility):
//! - [`IdempotencyStore::begin`] takes an `IN_PROGRESS` lease with one conditional write. The
//!   lease always has an expiry (now + the invocation's remaining time, capped), and an
//!   expired lease is always retaken, so a crashed worker never blocks a webhook for good.
//! - A refused `begin` returns the existing record (DynamoDB's
//!   `ReturnValuesOnConditionCheckFailure=ALL_OLD`), so a duplicate costs no extra read.
//! - The record keeps the hash of the first body; a replay with another body is flagged.
//! - Steps that Keap would repeat (goals, notes) are recorded as they succeed; a retry after a
//!   failure midway skips them ([`Lease::is_done`]).
//! - [`IdempotencyStore::complete`] marks the record `COMPLETED` with a summary and a TTL.
//! - `begin` also stores the delivery's envelope ([`Received`]) in the same write, so an
//!   operator can see what a record is about and send it again (`cks status`, `cks replay`)
//!   for as long as the record lives (its TTL), with no write of its own.
//! - [`IdempotencyStore::reopen`] is the operator's forced replay: a `COMPLETED` record becomes
//!   `FAILED` again, keeping its steps, so the next delivery applies the webhook once more
//!   without repeating a goal or a note. Normal redeliveries never reopen anything.
//! - [`IdempotencyStore::delete`] is the operator's erasure of one person (`cks forget`): the
//!   record goes, its seen marker (no personal data) stays.

pub mod contract;
mod dynamodb;
mod memory;

pub use dynamodb::{DynamoDbIdempotencyStore, RecordPage};
pub use memory::InMemoryIdempotencyStore;

use async_trait::async_trait;
use std::collections::BTreeSet;
use std::time::Duration;
use time::OffsetDateTime;

use crate::envelope::WebhookEnvelope;

/// Records are kept 35 days after completion by default: longer than Chargify's replay
/// window in practice, and past a month-end reconciliation.
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(35 * 24 * 3600);

/// A lease never lasts longer than this, whatever time the invocation has left.
pub const DEFAULT_MAX_LEASE: Duration = Duration::from_secs(15 * 60);

/// Which webhook a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey {
    pub site: String,
    pub webhook_id: String,
}

impl IdempotencyKey {
    pub fn new(site: impl Into<String>, webhook_id: impl Into<String>) -> Self {
        Self {
            site: site.into(),
            webhook_id: webhook_id.into(),
        }
    }

    /// The stored key: `site#webhook_id` (neither part can contain `#`).
    pub fn storage_key(&self) -> String {
        format!("{}#{}", self.site, self.webhook_id)
    }

    /// The key back from [`Self::storage_key`]; `None` for text without a `#`.
    pub fn from_storage_key(text: &str) -> Option<Self> {
        let (site, webhook_id) = text.split_once('#')?;
        Some(Self::new(site, webhook_id))
    }
}

/// What a record keeps of the latest delivery that began an attempt on it: `cks status`
/// shows the event and the time, `cks replay` sends the envelope again. Written by `begin`
/// in the write that takes the lease, so keeping it costs no extra write, and it lives as
/// long as the record (`RECORD_TTL_DAYS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub event: String,
    /// When ingest received the webhook (the envelope's `received_at`).
    pub received_at: OffsetDateTime,
    /// The queue message: the envelope's JSON. At most SQS's 256 KiB message limit (ingest
    /// refuses larger webhooks with 413), so it fits in a DynamoDB item (400 KB) with room for
    /// the record's other attributes. It holds the raw body, with the customer's personal
    /// data: show it only when asked.
    pub envelope: String,
}

impl Received {
    pub fn of(envelope: &WebhookEnvelope) -> Self {
        Self {
            event: envelope.event.clone(),
            received_at: envelope.received_at,
            envelope: envelope.to_json(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStatus {
    InProgress,
    Completed,
    /// The last attempt failed and released its lease; the next attempt may begin at once.
    Failed,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "IN_PROGRESS" => Some(Self::InProgress),
            "COMPLETED" => Some(Self::Completed),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A record as stored (for `status` and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub key: IdempotencyKey,
    pub status: RecordStatus,
    pub payload_hash: String,
    pub steps_done: BTreeSet<String>,
    pub attempts: u32,
    pub lease_expires_at: Option<OffsetDateTime>,
    pub summary: Option<String>,
    pub last_error: Option<String>,
    /// When the store may delete the record (DynamoDB TTL).
    pub expires_at: OffsetDateTime,
    /// The latest delivery begun; `None` on records written before envelopes were kept.
    pub received: Option<Received>,
}

/// The right to work on a webhook until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: IdempotencyKey,
    /// Random per attempt; every later write is conditional on it.
    pub token: String,
    pub expires_at: OffsetDateTime,
    pub steps_done: BTreeSet<String>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// This body's hash differs from the first one seen for this webhook id.
    pub payload_differs: bool,
}

impl Lease {
    pub fn is_done(&self, step: &str) -> bool {
        self.steps_done.contains(step)
    }
}

/// What [`IdempotencyStore::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Go ahead; skip the steps already done.
    Started(Lease),
    /// Done before: skip. `same_payload` is false for a replay whose body differs.
    AlreadyCompleted {
        summary: Option<String>,
        same_payload: bool,
    },
    /// Another worker holds a live lease: try again after it expires.
    InProgress { lease_expires_at: OffsetDateTime },
}

/// What [`IdempotencyStore::delete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The record is gone, and the envelope it kept with it.
    Removed,
    /// There was no record.
    Absent,
    /// Kept: a worker holds a live lease on it until then.
    Leased { until: OffsetDateTime },
}

/// The store failed. All kinds are transient for the record (it is retried), except a lost
/// lease, which means another worker took over and this one must stop.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("the lease was taken over by another worker (this attempt ran past its expiry); stopping without further changes")]
    LeaseLost,
    #[error("store throttled ({detail}); retried with backoff, then the record is retried later")]
    Throttled { detail: String },
    #[error("store unavailable ({detail}); check the table name, IAM policy and DynamoDB health")]
    Unavailable { detail: String },
    #[error("stored record is unreadable ({detail}); inspect it with `status`")]
    Corrupt { detail: String },
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::LeaseLost => "lease_lost",
            Self::Throttled { .. } => "store_throttled",
            Self::Unavailable { .. } => "store_unavailable",
            Self::Corrupt { .. } => "store_corrupt",
        }
    }
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Takes the lease for `key` until `now + lease_for`: creates the record, or retakes one
    /// whose lease expired or was released (keeping its steps), and stores `received` in the
    /// same write. Otherwise says why not (and stores nothing).
    async fn begin(
        &self,
        key: &IdempotencyKey,
        payload_hash: &str,
        received: &Received,
        now: OffsetDateTime,
        lease_for: Duration,
        record_ttl: Duration,
    ) -> Result<Begin, StoreError>;

    /// Records that a non-repeatable step succeeded. Fails with `LeaseLost` if this attempt
    /// no longer holds the lease.
    async fn record_step(&self, lease: &Lease, step: &str) -> Result<(), StoreError>;

    /// Marks the webhook done, recording `final_step` too (saves a write when the last
    /// action was a goal or a note).
    async fn complete(
        &self,
        lease: &Lease,
        summary: &str,
        final_step: Option<&str>,
        now: OffsetDateTime,
        record_ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Gives the lease up after a failure, so the retry need not wait for it to expire.
    async fn release(&self, lease: &Lease, error: &str) -> Result<(), StoreError>;

    async fn get(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Operator action (`cks replay --force`): turns the record back from `COMPLETED` to
    /// `FAILED` with `note` as its error and an expired lease, in one conditional write, so
    /// the next delivery of the webhook retakes it and applies the plan again. Its steps are
    /// kept: goals and notes already done are not repeated. Returns `false`, changing
    /// nothing, when the record is missing or not completed (then a delivery retakes it
    /// anyway, or a worker holds it).
    async fn reopen(&self, key: &IdempotencyKey, note: &str) -> Result<bool, StoreError>;

    /// Leaves a slim marker that `key` was applied, kept until `now + ttl`: longer than the
    /// record (whose TTL bounds how long its body, with personal data, is kept), so a replay
    /// after the record expired is still known for a duplicate. The marker holds the key and
    /// its expiry only. Idempotent.
    async fn mark_seen(
        &self,
        key: &IdempotencyKey,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Whether a marker of `key` exists (and has not expired).
    async fn seen(&self, key: &IdempotencyKey, now: OffsetDateTime) -> Result<bool, StoreError>;

    /// Operator action (`cks forget`): deletes the record, and with it the envelope it keeps
    /// (the webhook's body: personal data), unless a worker holds a live lease on it at `now`
    /// (see [`live_lease`]): deleting under a worker would fail its next write and let the
    /// redelivery apply the webhook again from the start, goals included. The seen marker
    /// stays: it holds the key and an expiry only, and keeps a later delivery of the webhook
    /// from being applied again.
    async fn delete(
        &self,
        key: &IdempotencyKey,
        now: OffsetDateTime,
    ) -> Result<Deleted, StoreError>;
}

/// How long a seen marker is kept by default: longer than Chargify keeps webhooks it can
/// replay (its webhook records are listed for a year in practice), after which a replay is
/// refused by its age instead (`MAX_EVENT_AGE_DAYS`).
pub const DEFAULT_SEEN_MARKER_TTL: Duration = Duration::from_secs(400 * 24 * 3600);

/// The stored key of `key`'s seen marker.
pub fn seen_marker_key(key: &IdempotencyKey) -> String {
    format!("seen#{}", key.storage_key())
}

/// The arguments of [`IdempotencyStore::begin`], for [`decide_begin`].
#[derive(Debug, Clone, Copy)]
pub struct BeginRequest<'a> {
    pub key: &'a IdempotencyKey,
    pub payload_hash: &'a str,
    pub received: &'a Received,
    pub now: OffsetDateTime,
    pub lease_for: Duration,
    pub record_ttl: Duration,
}

/// The `begin` rules for a store that reads and writes whole records under its own lock (the
/// in-memory and SQLite stores; DynamoDB states the same rules as a condition expression):
/// given the stored record, the answer and the record to write for `token`, or `None` when
/// nothing may be written (completed, or a live lease elsewhere).
pub fn decide_begin(
    existing: Option<&IdempotencyRecord>,
    request: &BeginRequest<'_>,
    token: &str,
) -> (Begin, Option<IdempotencyRecord>) {
    let lease_expires_at = later(request.now, request.lease_for);
    let mut record = match existing {
        None => IdempotencyRecord {
            key: request.key.clone(),
            status: RecordStatus::InProgress,
            payload_hash: request.payload_hash.to_owned(),
            steps_done: BTreeSet::new(),
            attempts: 0,
            lease_expires_at: None,
            summary: None,
            last_error: None,
            expires_at: request.now,
            received: None,
        },
        Some(record) => match record.status {
            RecordStatus::Completed => {
                let answer = Begin::AlreadyCompleted {
                    summary: record.summary.clone(),
                    same_payload: record.payload_hash == request.payload_hash,
                };
                return (answer, None);
            }
            _ => match live_lease(record, request.now) {
                Some(at) => {
                    return (
                        Begin::InProgress {
                            lease_expires_at: at,
                        },
                        None,
                    )
                }
                None => record.clone(),
            },
        },
    };
    record.status = RecordStatus::InProgress;
    record.attempts += 1;
    record.lease_expires_at = Some(lease_expires_at);
    record.expires_at = later(request.now, request.record_ttl);
    record.received = Some(request.received.clone());
    let lease = Lease {
        key: request.key.clone(),
        token: token.to_owned(),
        expires_at: lease_expires_at,
        steps_done: record.steps_done.clone(),
        attempt: record.attempts,
        payload_differs: record.payload_hash != request.payload_hash,
    };
    (Begin::Started(lease), Some(record))
}

/// When a worker holds `record` at `now`: the expiry of its live lease (`IN_PROGRESS` and
/// not yet expired), the rule by which `begin` refuses and `delete` keeps a record.
pub fn live_lease(record: &IdempotencyRecord, now: OffsetDateTime) -> Option<OffsetDateTime> {
    match (record.status, record.lease_expires_at) {
        (RecordStatus::InProgress, Some(at)) if at >= now => Some(at),
        _ => None,
    }
}

/// A fresh random lease token (128 bits, hex).
pub fn new_token() -> String {
    let mut bytes = [0u8; 16];
    // getrandom through ring (already linked for TLS).
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // No OS randomness is a broken host; a time-based token still differs per attempt.
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes = nanos.to_le_bytes();
    }
    hex::encode(bytes)
}

/// `now + by`; a duration too large for a date (never one we pass) counts as a day.
pub fn later(now: OffsetDateTime, by: Duration) -> OffsetDateTime {
    now + time::Duration::try_from(by).unwrap_or(time::Duration::DAY)
}

/// SHA-256 of a webhook body, hex.
pub fn payload_hash(body: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(body.as_bytes()))
}

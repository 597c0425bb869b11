//! The processor use case: one queued webhook envelope → its Keap changes, exactly once.
//!
//! [`Processor::process`] parses the envelope's body, plans with the rules, takes the
//! idempotency lease, applies the plan (see [`apply`]) and completes the record. [`batch`]
//! runs an SQS batch through it with FIFO-group ordering, panic isolation and the
//! retry/dead-letter decisions of [`failure`]. No AWS or HTTP type appears here: the stores,
//! the CRM and the queue are ports.

pub mod apply;
pub mod batch;
pub mod failure;

pub use apply::Applied;
pub use batch::{process_batch, BatchRecord, BatchResult};
pub use failure::{Disposition, ProcessError};

use crate::chargify::Webhook;
use crate::envelope::WebhookEnvelope;
use crate::idempotency::{
    payload_hash, Begin, IdempotencyKey, IdempotencyStore, Received, DEFAULT_MAX_LEASE,
    DEFAULT_RECORD_TTL,
};
use crate::identity::CustomerStore;
use crate::keap::{Crm, Directory};
use crate::rules::RuleSet;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// Completed records are kept this long (DynamoDB TTL).
    pub record_ttl: Duration,
    /// A lease lasts the invocation's remaining time, but never longer than this.
    pub max_lease: Duration,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            record_ttl: DEFAULT_RECORD_TTL,
            max_lease: DEFAULT_MAX_LEASE,
        }
    }
}

/// How a webhook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    Applied(Applied),
    /// Done before (SQS redelivery, Chargify retry or replay). `same_payload` is false for a
    /// replay whose body differs from the first: flagged, since it was not applied.
    Duplicate {
        same_payload: bool,
    },
    /// No rule asks for a Keap change: acknowledged and counted.
    Ignored,
}

impl Processed {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Applied(a) if a.stale => "stale",
            Self::Applied(_) => "applied",
            Self::Duplicate { .. } => "duplicate",
            Self::Ignored => "ignored",
        }
    }

    /// The `Outcome` dimension of `WebhooksProcessed`.
    pub fn metric_outcome(&self) -> crate::telemetry::metrics::ProcessedOutcome {
        use crate::telemetry::metrics::ProcessedOutcome as O;
        match self {
            Self::Applied(a) if a.stale => O::Stale,
            Self::Applied(_) => O::Applied,
            Self::Duplicate { .. } => O::Duplicate,
            Self::Ignored => O::Ignored,
        }
    }
}

pub struct Processor {
    pub rules: Arc<RuleSet>,
    pub crm: Arc<dyn Crm>,
    pub directory: Directory,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub customers: Arc<dyn CustomerStore>,
    pub settings: ProcessorSettings,
}

impl Processor {
    /// Applies one envelope. `remaining` is the time the invocation has left (the lease
    /// must not outlive it: a retry after a timeout finds it expired and retakes it).
    pub async fn process(
        &self,
        envelope: &WebhookEnvelope,
        remaining: Duration,
    ) -> Result<Processed, ProcessError> {
        let webhook = Webhook::parse(envelope.raw_body.as_bytes())
            .map_err(|e| ProcessError::Body(e.to_string()))?;
        let plan = self.rules.plan(&webhook, &envelope.site)?;
        for note in &plan.notes {
            tracing::info!(
                webhook_id = webhook.id.as_str(),
                note = note.as_str(),
                "plan note"
            );
        }
        if plan.is_empty() {
            return Ok(Processed::Ignored);
        }
        let key = IdempotencyKey::new(&envelope.site, &envelope.webhook_id);
        let now = OffsetDateTime::now_utc();
        let lease_for = remaining
            .min(self.settings.max_lease)
            .max(Duration::from_secs(1));
        let lease = match self
            .idempotency
            .begin(
                &key,
                &payload_hash(&envelope.raw_body),
                &Received::of(envelope),
                now,
                lease_for,
                self.settings.record_ttl,
            )
            .await?
        {
            Begin::Started(lease) => lease,
            Begin::AlreadyCompleted { same_payload, .. } => {
                return Ok(Processed::Duplicate { same_payload })
            }
            Begin::InProgress { lease_expires_at } => {
                return Err(ProcessError::InProgressElsewhere {
                    until: lease_expires_at,
                })
            }
        };
        if lease.payload_differs {
            tracing::warn!(
                webhook_id = webhook.id.as_str(),
                attempt = lease.attempt,
                "this delivery's body differs from the first one seen for this webhook id"
            );
            crate::telemetry::metrics::replay_payload_differs();
        }
        let run = apply::Run {
            rules: &self.rules,
            crm: self.crm.as_ref(),
            directory: &self.directory,
            idempotency: self.idempotency.as_ref(),
            customers: self.customers.as_ref(),
        };
        match run.apply(&plan, &lease).await {
            Ok(applied) => {
                run.complete(&lease, &applied, self.settings.record_ttl)
                    .await?;
                Ok(Processed::Applied(applied))
            }
            Err(error) => {
                // Give the lease back so the retry need not wait for it to expire. Best
                // effort: if this write fails too, the lease simply expires.
                if !matches!(
                    error,
                    ProcessError::Store(crate::idempotency::StoreError::LeaseLost)
                ) {
                    if let Err(e) = self.idempotency.release(&lease, &error.to_string()).await {
                        tracing::warn!(error = %e, "could not release the idempotency lease");
                    }
                }
                Err(error)
            }
        }
    }
}
#[cfg(test)]
mod tests;

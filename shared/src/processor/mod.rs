//! The processor use case: queued webhook envelopes → their Keap changes, exactly once, with
//! Keap ending as Chargify's history says whatever the order they arrive in.
//!
//! [`Processor::process_run`] takes a run of webhooks of one customer, in queue order (one
//! webhook, or a customer's backlog in one batch), and:
//! 1. takes each webhook's idempotency lease (a completed one is a duplicate);
//! 2. takes the customer's lease in the identity map, which returns the customer's state;
//! 3. folds the plans over it (`crate::converge`): which values each webhook still wins,
//!    which rules are stale, which goals and notes fire;
//! 4. makes Keap hold the values the run leaves (`crate::apply`): one contact write, one tag
//!    apply and one tag remove at most, and none of what Keap holds already;
//! 5. saves the mirror of what Keap now holds, then fires the goals and notes in order, each
//!    recorded as an intent before its call and as done after it;
//! 6. saves the state (the values' versions) and gives the customer's lease back, then
//!    completes each webhook's record.
//!
//! Each webhook of a run ends exactly as if it had been processed on its own, in order: the
//! fold is the same; only the Keap writes are merged. [`batch`] runs an SQS batch through it
//! (runs per customer, customers concurrently, order and failures per message group, the
//! retry and dead-letter decisions of [`failure`]). No AWS or HTTP type appears here: the
//! stores, the CRM and the queue are ports.

pub mod batch;
pub mod failure;
mod run;

pub use batch::{process_batch, BatchRecord, BatchResult};
pub use failure::{Disposition, ProcessError};
pub use run::Planned;

use crate::apply::{Report, StepCounts};
use crate::chargify::Webhook;
use crate::envelope::WebhookEnvelope;
use crate::idempotency::{IdempotencyStore, DEFAULT_MAX_LEASE, DEFAULT_RECORD_TTL};
use crate::identity::CustomerStore;
use crate::keap::{ContactId, Crm, Directory};
use crate::rules::RuleSet;
use std::sync::Arc;
use std::time::Duration;

/// How often a contact's tags are read back from Keap by default, to catch a tag changed by
/// hand: a customer whose only events are monthly renewals pays one read about every third
/// renewal (the renewals between cost no call), and a hand change is corrected within a
/// quarter (any write's answer corrects it sooner).
pub const DEFAULT_MIRROR_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long a failing record is retried by default: well inside SQS's 14-day retention (the
/// queue keeps 14 days), long enough to ride out a weekend's outage of Keap or of our
/// credentials.
pub const DEFAULT_MAX_WEBHOOK_AGE: Duration = Duration::from_secs(4 * 24 * 3600);

/// Customers of one batch processed at once: enough to overlap Keap's latency, few enough
/// that the client's rate limit, not the task count, sets the pace.
pub const DEFAULT_GROUP_CONCURRENCY: usize = 4;

/// The processor's limits: how long records, markers and leases last, how old a webhook or
/// a mirror may be, and how many customers run at once. The processor function reads them
/// from its environment ([`crate::config::ProcessorSettings`]); `cks serve` keeps the defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Completed records are kept this long (DynamoDB TTL).
    pub record_ttl: Duration,
    /// A lease lasts the invocation's remaining time, but never longer than this.
    pub max_lease: Duration,
    /// A contact whose tags were last read from Keap longer ago is read again (one call)
    /// before its next change; `None`: never.
    pub mirror_max_age: Option<Duration>,
    /// A record still failing this long after ingest received it is dead-lettered instead
    /// of retried (`MAX_WEBHOOK_AGE_DAYS`).
    pub max_webhook_age: Duration,
    /// Message groups (customers) of one batch processed at once.
    pub group_concurrency: usize,
    /// A webhook whose event time is older than this is acknowledged and counted, not
    /// applied (`MAX_EVENT_AGE_DAYS`; the stack sets 365 days): a replay of a webhook from
    /// long ago, whose record and seen marker are gone, fires no goal. `None` (the default
    /// where the variable is unset, e.g. `cks serve` with its bundled 2012 samples): no bound.
    pub max_event_age: Option<Duration>,
    /// How long a seen marker outlives its record (`SEEN_MARKER_DAYS`).
    pub seen_marker_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            record_ttl: DEFAULT_RECORD_TTL,
            max_lease: DEFAULT_MAX_LEASE,
            mirror_max_age: Some(DEFAULT_MIRROR_MAX_AGE),
            max_webhook_age: DEFAULT_MAX_WEBHOOK_AGE,
            group_concurrency: DEFAULT_GROUP_CONCURRENCY,
            max_event_age: None,
            seen_marker_ttl: crate::idempotency::DEFAULT_SEEN_MARKER_TTL,
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
    /// Older than `max_event_age` by its event time: acknowledged and counted, not applied.
    TooOld,
}

impl Processed {
    pub fn outcome(&self) -> &'static str {
        self.metric_outcome().as_str()
    }

    /// The `Outcome` dimension of `WebhooksProcessed`.
    pub fn metric_outcome(&self) -> crate::telemetry::metrics::ProcessedOutcome {
        use crate::telemetry::metrics::ProcessedOutcome as O;
        match self {
            Self::Applied(a) if a.stale => O::Stale,
            Self::Applied(_) => O::Applied,
            Self::Duplicate { .. } => O::Duplicate,
            Self::Ignored => O::Ignored,
            Self::TooOld => O::TooOld,
        }
    }
}

/// What one webhook did, for the log line and its record's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub contact_id: Option<ContactId>,
    /// Values this webhook decided (at least as new as what was held).
    pub won: usize,
    /// Values already held from a newer change: left alone.
    pub superseded: usize,
    /// Every value it writes was superseded.
    pub stale: bool,
    /// Its goals and notes.
    pub steps: StepCounts,
    /// The Keap writes of the run this webhook was applied in.
    pub run: Report,
    /// Webhooks in that run (more than one: a customer's backlog merged into one write).
    pub run_size: usize,
}

impl Applied {
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(id) = self.contact_id {
            parts.push(format!(
                "contact {id}{}",
                if self.run.contact_written {
                    " written"
                } else {
                    ""
                }
            ));
        }
        parts.push(format!(
            "values {} won, {} superseded",
            self.won, self.superseded
        ));
        if self.run.values_written > 0 || self.run.unchanged > 0 {
            parts.push(format!(
                "sent {}, already held {}",
                self.run.values_written, self.run.unchanged
            ));
        }
        if self.run.tags_applied > 0 || self.run.tags_removed > 0 {
            parts.push(format!(
                "tags +{} -{}",
                self.run.tags_applied, self.run.tags_removed
            ));
        }
        let steps = &self.steps;
        if steps.goals > 0 {
            parts.push(format!("goals {}", steps.goals));
        }
        if steps.notes > 0 {
            parts.push(format!("notes {}", steps.notes));
        }
        if steps.done_before > 0 {
            parts.push(format!("{} steps already done", steps.done_before));
        }
        if steps.stale > 0 {
            parts.push(format!("{} steps skipped as stale", steps.stale));
        }
        if steps.uncertain_skipped > 0 {
            parts.push(format!(
                "{} uncertain steps skipped",
                steps.uncertain_skipped
            ));
        }
        if steps.uncertain_repeated > 0 {
            parts.push(format!(
                "{} uncertain steps repeated",
                steps.uncertain_repeated
            ));
        }
        if self.stale {
            parts.push("stale: newer values already held".into());
        }
        if self.run_size > 1 {
            parts.push(format!("merged with {} others", self.run_size - 1));
        }
        parts.join("; ")
    }
}

pub struct Processor {
    pub rules: Arc<RuleSet>,
    pub crm: Arc<dyn Crm>,
    pub directory: Arc<Directory>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub customers: Arc<dyn CustomerStore>,
    pub settings: Limits,
}

impl Processor {
    /// The plan of an envelope (pure: parse and rules).
    pub fn plan(&self, envelope: WebhookEnvelope) -> Result<Planned, ProcessError> {
        let form = crate::chargify::FormBody::parse(envelope.raw_body.as_bytes())
            .map_err(|e| ProcessError::Body(e.to_string()))?;
        // Ingest refuses such bodies; one queued another way (a redrive, an old envelope) is
        // dead-lettered with the reason before anything walks its tree.
        form.check_limits(crate::chargify::FormLimits::WEBHOOK)?;
        let webhook = Webhook::from_form(form).map_err(|e| ProcessError::Body(e.to_string()))?;
        let plan = self.rules.plan(&webhook, &envelope.site)?;
        for note in &plan.notes {
            tracing::info!(
                webhook_id = webhook.id.as_str(),
                note = note.as_str(),
                "plan note"
            );
        }
        Ok(Planned { envelope, plan })
    }

    /// Applies one envelope on its own. `remaining` is the time the invocation has left
    /// (the leases must not outlive it: a retry after a timeout finds them expired).
    pub async fn process(
        &self,
        envelope: &WebhookEnvelope,
        remaining: Duration,
    ) -> Result<Processed, ProcessError> {
        let planned = self.plan(envelope.clone())?;
        self.process_run(std::slice::from_ref(&planned), remaining)
            .await
            .pop()
            .unwrap_or(Err(ProcessError::HeldBack))
    }
}

#[cfg(test)]
mod convergence_tests;
#[cfg(test)]
mod tests;

//! The metric catalogue: every CloudWatch metric the functions emit, with its dimensions,
//! recorded through small typed functions so no call site repeats a name or a label.
//!
//! Metrics go through the `metrics` facade into `metrics_cloudwatch_embedded`, which writes
//! them as Embedded Metric Format lines on [`super::flush_metrics`]. That crate turns each
//! distinct label set into one EMF document whose single dimension set is `Function` (the
//! default dimension given to [`super::init`]) followed by the labels, so the labels here ARE
//! the dimensions CloudWatch sees, and the alarms in `template.yaml` must name exactly this set.
//! Names and dimension keys are PascalCase; dimension values are short fixed words or event
//! keys, never ids, addresses or anything a customer typed (cardinality, and personal data).
//!
//! | metric | dimensions | kind (unit) |
//! |---|---|---|
//! | `WebhooksReceived` | Function, Event | counter: accepted and enqueued |
//! | `IngestRefused` | Function, Reason | counter: refused with a 4xx (reason = ingest's outcome code) |
//! | `SignatureFailures` | Function | counter: a signature no configured key produced, or a key of another site |
//! | `EnqueueFailures` | Function | counter: SQS did not store a verified webhook (503) |
//! | `WebhooksProcessed` | Function, Event, Outcome | counter: one per record the processor finished with |
//! | `KeapCalls` | Function, Operation, Status | counter: one per HTTP attempt to Keap |
//! | `KeapRateLimited` | Function, Kind | counter: Keap answered 429 |
//! | `KeapQuotaRemaining` | Function | gauge (Count): calls left today, as Keap last reported |
//! | `KeapDailyQuotaRemainingPercent` | Function | gauge (Percent): the same as a share of the limit |
//! | `KeapReauthorisationNeeded` | Function | counter: Keap refused our credentials and no retry can fix it |
//! | `EndToEndLag` | Function | histogram (Milliseconds): envelope `received_at` → applied |
//! | `ReplayPayloadDiffers` | Function | counter: a webhook id came back with a different body |
//! | `CustomFieldsSkipped` | Function | counter: a rule named a Keap custom field that does not exist |
//! | `ReconcilerWebhooksRecovered` | Function, Outcome | counter: a failed or paused webhook the reconciler listed, by what it did |
//! | `ReconcilerSnapshotsEnqueued` | Function, Outcome | counter: a subscription the events walk checked, by what it did |
//! | `DuplicateTagNames` | Function | counter: a tag name the rules manage has several tags in Keap (once per name and instance) |
//! | `UncertainSteps` | Function, Kind, Decision | counter: a retry found a goal or note sent but not recorded done, and skipped or repeated it |
//! | `RecordDelayFailures` | Function | counter: SQS refused to hide a record for the delay its failure asked for |
//!
//! Gauges are re-emitted by every flush with the last value set (the crate keeps them), so a
//! quota gauge means "what Keap last told this instance". A long-running caller (a reconciler
//! loop) must flush at least every 100 recordings of a histogram: the crate keeps at most 100
//! unflushed values per histogram, as one EMF document may carry no more.

use crate::chargify::webhook::EVENT_KEYS;
use metrics::Unit;

/// `Function` values: which program emitted the metric.
pub mod function {
    pub const INGEST: &str = "ingest";
    pub const PROCESSOR: &str = "processor";
    pub const RECONCILER: &str = "reconciler";
    pub const CLI: &str = "cli";
}

/// Metric names, for the template test and anyone reading metrics back.
pub mod name {
    pub const WEBHOOKS_RECEIVED: &str = "WebhooksReceived";
    pub const INGEST_REFUSED: &str = "IngestRefused";
    pub const SIGNATURE_FAILURES: &str = "SignatureFailures";
    pub const ENQUEUE_FAILURES: &str = "EnqueueFailures";
    pub const WEBHOOKS_PROCESSED: &str = "WebhooksProcessed";
    pub const KEAP_CALLS: &str = "KeapCalls";
    pub const KEAP_RATE_LIMITED: &str = "KeapRateLimited";
    pub const KEAP_QUOTA_REMAINING: &str = "KeapQuotaRemaining";
    pub const KEAP_DAILY_QUOTA_REMAINING_PERCENT: &str = "KeapDailyQuotaRemainingPercent";
    pub const KEAP_REAUTHORISATION_NEEDED: &str = "KeapReauthorisationNeeded";
    pub const END_TO_END_LAG: &str = "EndToEndLag";
    pub const REPLAY_PAYLOAD_DIFFERS: &str = "ReplayPayloadDiffers";
    pub const CUSTOM_FIELDS_SKIPPED: &str = "CustomFieldsSkipped";
    pub const RECONCILER_WEBHOOKS_RECOVERED: &str = "ReconcilerWebhooksRecovered";
    pub const RECONCILER_SNAPSHOTS_ENQUEUED: &str = "ReconcilerSnapshotsEnqueued";
    pub const DUPLICATE_TAG_NAMES: &str = "DuplicateTagNames";
    pub const UNCERTAIN_STEPS: &str = "UncertainSteps";
    pub const RECORD_DELAY_FAILURES: &str = "RecordDelayFailures";
}

use name::*;

/// Units by name. The crate keys units by metric name, whatever the labels.
const UNITS: &[(&str, Unit)] = &[
    (WEBHOOKS_RECEIVED, Unit::Count),
    (INGEST_REFUSED, Unit::Count),
    (SIGNATURE_FAILURES, Unit::Count),
    (ENQUEUE_FAILURES, Unit::Count),
    (WEBHOOKS_PROCESSED, Unit::Count),
    (KEAP_CALLS, Unit::Count),
    (KEAP_RATE_LIMITED, Unit::Count),
    (KEAP_QUOTA_REMAINING, Unit::Count),
    (KEAP_DAILY_QUOTA_REMAINING_PERCENT, Unit::Percent),
    (KEAP_REAUTHORISATION_NEEDED, Unit::Count),
    (END_TO_END_LAG, Unit::Milliseconds),
    (REPLAY_PAYLOAD_DIFFERS, Unit::Count),
    (CUSTOM_FIELDS_SKIPPED, Unit::Count),
    (RECONCILER_WEBHOOKS_RECOVERED, Unit::Count),
    (RECONCILER_SNAPSHOTS_ENQUEUED, Unit::Count),
    (DUPLICATE_TAG_NAMES, Unit::Count),
    (UNCERTAIN_STEPS, Unit::Count),
    (RECORD_DELAY_FAILURES, Unit::Count),
];

/// Tells the installed recorder each metric's unit. Called by [`super::init`] once the
/// recorder is in place (a description given before it exists is lost).
pub(super) fn describe_units() {
    for (metric, unit) in UNITS {
        // The facade has one describe call per kind; the EMF recorder treats them alike.
        metrics::with_recorder(|recorder| {
            recorder.describe_counter((*metric).into(), Some(*unit), "".into())
        });
    }
}

/// The `Event` dimension: a known Chargify event key as it is, anything else `other`, so a
/// signed body with an invented key cannot mint new CloudWatch metrics.
pub fn event_dimension(event: &str) -> &'static str {
    EVENT_KEYS
        .iter()
        .find(|known| **known == event)
        .copied()
        .unwrap_or("other")
}

/// A verified webhook was stored on the queue.
pub fn webhook_received(event: &str) {
    metrics::counter!(WEBHOOKS_RECEIVED, "Event" => event_dimension(event)).increment(1);
}

/// Ingest refused a request with a 4xx; `reason` is its outcome code (`signature_mismatch`,
/// `body_too_large`, `method_not_allowed`, …: a fixed set).
pub fn ingest_refused(reason: &'static str) {
    metrics::counter!(INGEST_REFUSED, "Reason" => reason).increment(1);
}

/// A signature was present but no configured key produced it (or a site-bound key signed for
/// another site): the alarm source for a wrong Site Shared Key.
pub fn signature_failure() {
    metrics::counter!(SIGNATURE_FAILURES).increment(1);
}

/// SQS did not store a verified webhook; ingest answered 503 and Chargify retries.
pub fn enqueue_failure() {
    metrics::counter!(ENQUEUE_FAILURES).increment(1);
}

/// How the processor finished with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessedOutcome {
    Applied,
    Duplicate,
    /// Every value it writes was already held from a newer change: nothing written.
    Stale,
    /// Older than `MAX_EVENT_AGE_DAYS` (a replay from long ago): acknowledged, not applied.
    TooOld,
    /// No rule asks for a Keap change.
    Ignored,
    /// Left on the queue, hidden until it is worth retrying.
    RetryLater,
    /// Could not be retried later nor dead-lettered: back to the queue after its timeout.
    Failed,
    DeadLettered,
}

impl ProcessedOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::TooOld => "too_old",
            Self::Ignored => "ignored",
            Self::RetryLater => "retry_later",
            Self::Failed => "failed",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

pub fn webhook_processed(event: &str, outcome: ProcessedOutcome) {
    metrics::counter!(
        WEBHOOKS_PROCESSED,
        "Event" => event_dimension(event),
        "Outcome" => outcome.as_str()
    )
    .increment(1);
}

/// Time from ingest's `received_at` to the record being applied.
pub fn end_to_end_lag(lag: std::time::Duration) {
    metrics::histogram!(END_TO_END_LAG).record(lag.as_secs_f64() * 1000.0);
}

/// What one HTTP attempt to Keap ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    Http(u16),
    /// No HTTP answer: connection, timeout or an unreadable body.
    Network,
}

/// One HTTP attempt to Keap; `operation` is a fixed name (`contact_upsert`, `tags_apply`, …).
pub fn keap_call(operation: &'static str, status: CallStatus) {
    let status = match status {
        CallStatus::Http(code) => code.to_string(),
        CallStatus::Network => "network".to_owned(),
    };
    metrics::counter!(KEAP_CALLS, "Operation" => operation, "Status" => status).increment(1);
}

/// Which of Keap's limits a 429 hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitKind {
    /// Per-second spike arrest.
    Spike,
    /// Per-minute throttle (the key's or the account's).
    Minute,
    /// The daily quota.
    Daily,
    /// A 429 that says none of these.
    Other,
}

impl RateLimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spike => "spike",
            Self::Minute => "minute",
            Self::Daily => "daily",
            Self::Other => "other",
        }
    }
}

pub fn keap_rate_limited(kind: RateLimitKind) {
    metrics::counter!(KEAP_RATE_LIMITED, "Kind" => kind.as_str()).increment(1);
}

/// Keap's daily quota as its headers reported it: calls left, and that share of the limit
/// when the limit is known.
pub fn keap_quota(available: u64, limit: Option<u64>) {
    metrics::gauge!(KEAP_QUOTA_REMAINING).set(available as f64);
    if let Some(percent) = quota_percent(available, limit) {
        metrics::gauge!(KEAP_DAILY_QUOTA_REMAINING_PERCENT).set(percent);
    }
}

/// `available` as a percentage of `limit`, 0–100; none for an unknown or zero limit.
pub fn quota_percent(available: u64, limit: Option<u64>) -> Option<f64> {
    let limit = limit.filter(|l| *l > 0)?;
    Some(available.min(limit) as f64 * 100.0 / limit as f64)
}

/// Keap refused our credentials for good: OAuth re-authorisation needed, or the key (or a
/// freshly refreshed token) rejected. Recorded by the Keap client where it returns the error;
/// callers must not record it again.
pub fn keap_reauthorisation_needed() {
    metrics::counter!(KEAP_REAUTHORISATION_NEEDED).increment(1);
}

pub fn replay_payload_differs() {
    metrics::counter!(REPLAY_PAYLOAD_DIFFERS).increment(1);
}

pub fn custom_field_skipped() {
    metrics::counter!(CUSTOM_FIELDS_SKIPPED).increment(1);
}

pub fn duplicate_tag_names() {
    metrics::counter!(DUPLICATE_TAG_NAMES).increment(1);
}

/// A goal or note found sent but not recorded done: `kind` is `goal` or `note`, `decision`
/// `skipped` or `repeated`.
pub fn uncertain_step(kind: &'static str, decision: &'static str) {
    metrics::counter!(UNCERTAIN_STEPS, "Kind" => kind, "Decision" => decision).increment(1);
}

pub fn record_delay_failure() {
    metrics::counter!(RECORD_DELAY_FAILURES).increment(1);
}

/// What the reconciler did with one failed or paused webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveredOutcome {
    /// Verified and put on the queue from its stored body.
    Enqueued,
    /// Its idempotency record is completed: nothing to do.
    AlreadyProcessed,
    /// Its stored signature verifies with no configured key: not enqueued.
    SignatureFailed,
    /// Sent to Chargify's replay (after a signature failure, when configured).
    Replayed,
    /// A body ingest would refuse too, or a test webhook.
    Unusable,
}

impl RecoveredOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enqueued => "enqueued",
            Self::AlreadyProcessed => "already_processed",
            Self::SignatureFailed => "signature_failed",
            Self::Replayed => "replayed",
            Self::Unusable => "unusable",
        }
    }
}

pub fn reconciler_webhook(outcome: RecoveredOutcome) {
    metrics::counter!(RECONCILER_WEBHOOKS_RECOVERED, "Outcome" => outcome.as_str()).increment(1);
}

/// What the reconciler's events walk did with one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOutcome {
    Enqueued,
    /// The identity map's clock is at or past the subscription's `updated_at`.
    AlreadyApplied,
    /// Its webhooks were recovered in the same run.
    CoveredByWebhooks,
    /// Gone from Chargify, or no snapshot can be made of it.
    Failed,
}

impl SnapshotOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enqueued => "enqueued",
            Self::AlreadyApplied => "already_applied",
            Self::CoveredByWebhooks => "covered_by_webhooks",
            Self::Failed => "failed",
        }
    }
}

pub fn reconciler_snapshot(outcome: SnapshotOutcome) {
    metrics::counter!(RECONCILER_SNAPSHOTS_ENQUEUED, "Outcome" => outcome.as_str()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::capture::Capture;

    #[test]
    fn each_function_records_its_metric_with_exactly_the_catalogued_dimensions() {
        let capture = Capture::default();
        metrics::with_local_recorder(&capture, || {
            webhook_received("signup_success");
            webhook_received("made_up_event");
            ingest_refused("signature_mismatch");
            signature_failure();
            signature_failure();
            enqueue_failure();
            webhook_processed("payment_failure", ProcessedOutcome::RetryLater);
            keap_call("contact_upsert", CallStatus::Http(200));
            keap_call("contact_upsert", CallStatus::Network);
            keap_rate_limited(RateLimitKind::Daily);
            keap_quota(2_900, Some(30_000));
            keap_reauthorisation_needed();
            end_to_end_lag(std::time::Duration::from_millis(1500));
            reconciler_webhook(RecoveredOutcome::Enqueued);
            reconciler_snapshot(SnapshotOutcome::AlreadyApplied);
        });
        let one = |name, labels: &[(&str, &str)]| capture.get(name, labels);
        assert_eq!(
            one(WEBHOOKS_RECEIVED, &[("Event", "signup_success")]),
            Some(1.0)
        );
        assert_eq!(one(WEBHOOKS_RECEIVED, &[("Event", "other")]), Some(1.0));
        assert_eq!(
            one(INGEST_REFUSED, &[("Reason", "signature_mismatch")]),
            Some(1.0)
        );
        assert_eq!(one(SIGNATURE_FAILURES, &[]), Some(2.0));
        assert_eq!(one(ENQUEUE_FAILURES, &[]), Some(1.0));
        assert_eq!(
            one(
                WEBHOOKS_PROCESSED,
                &[("Event", "payment_failure"), ("Outcome", "retry_later")]
            ),
            Some(1.0)
        );
        assert_eq!(
            one(
                KEAP_CALLS,
                &[("Operation", "contact_upsert"), ("Status", "200")]
            ),
            Some(1.0)
        );
        assert_eq!(
            one(
                KEAP_CALLS,
                &[("Operation", "contact_upsert"), ("Status", "network")]
            ),
            Some(1.0)
        );
        assert_eq!(one(KEAP_RATE_LIMITED, &[("Kind", "daily")]), Some(1.0));
        assert_eq!(one(KEAP_QUOTA_REMAINING, &[]), Some(2_900.0));
        assert_eq!(
            one(KEAP_DAILY_QUOTA_REMAINING_PERCENT, &[]),
            Some(9.666_666_666_666_666)
        );
        assert_eq!(one(KEAP_REAUTHORISATION_NEEDED, &[]), Some(1.0));
        assert_eq!(one(END_TO_END_LAG, &[]), Some(1500.0));
        assert_eq!(
            one(RECONCILER_WEBHOOKS_RECOVERED, &[("Outcome", "enqueued")]),
            Some(1.0)
        );
        assert_eq!(
            one(
                RECONCILER_SNAPSHOTS_ENQUEUED,
                &[("Outcome", "already_applied")]
            ),
            Some(1.0)
        );
        // Nothing else: no stray label sets.
        assert_eq!(capture.len(), 15);
    }

    #[test]
    fn quota_percent_needs_a_known_limit() {
        assert_eq!(quota_percent(3_000, Some(30_000)), Some(10.0));
        assert_eq!(quota_percent(40_000, Some(30_000)), Some(100.0));
        assert_eq!(quota_percent(10, Some(0)), None);
        assert_eq!(quota_percent(10, None), None);
    }

    #[test]
    fn event_dimension_keeps_known_keys_only() {
        assert_eq!(
            event_dimension("subscription_state_change"),
            "subscription_state_change"
        );
        assert_eq!(event_dimension("test"), "test");
        assert_eq!(event_dimension(""), "other");
        assert_eq!(event_dimension("Signup_Success"), "other");
    }

    #[test]
    fn every_catalogued_metric_has_a_unit() {
        let names = [
            WEBHOOKS_RECEIVED,
            INGEST_REFUSED,
            SIGNATURE_FAILURES,
            ENQUEUE_FAILURES,
            WEBHOOKS_PROCESSED,
            KEAP_CALLS,
            KEAP_RATE_LIMITED,
            KEAP_QUOTA_REMAINING,
            KEAP_DAILY_QUOTA_REMAINING_PERCENT,
            KEAP_REAUTHORISATION_NEEDED,
            END_TO_END_LAG,
            REPLAY_PAYLOAD_DIFFERS,
            CUSTOM_FIELDS_SKIPPED,
            RECONCILER_WEBHOOKS_RECOVERED,
            RECONCILER_SNAPSHOTS_ENQUEUED,
            DUPLICATE_TAG_NAMES,
            UNCERTAIN_STEPS,
            RECORD_DELAY_FAILURES,
        ];
        for name in names {
            assert!(UNITS.iter().any(|(n, _)| *n == name), "{name} has no unit");
        }
        assert_eq!(UNITS.len(), names.len());
    }
}

//! One SQS FIFO batch: records in order within each message group; at a group's first
//! failure that record and every later record of the group go back to the queue unprocessed
//! (other groups go on); a panic fails only its own record; permanent failures move to the
//! dead-letter queue with their reason; transient ones are hidden until they are worth
//! retrying.

use super::failure::{Disposition, ProcessError};
use super::{Processed, Processor};
use crate::envelope::WebhookEnvelope;
use crate::queue::{DeadLetter, RecordControl};
use crate::telemetry::metrics::{self, ProcessedOutcome};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tracing::Instrument;

/// Records are not started with less time than this left: a record cut off by the Lambda
/// timeout would hold its lease until it expires.
pub const MIN_TIME_PER_RECORD: Duration = Duration::from_secs(10);

/// The parts of an SQS record the processor reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchRecord {
    pub message_id: Option<String>,
    pub receipt_handle: Option<String>,
    pub group_id: Option<String>,
    pub deduplication_id: Option<String>,
    pub body: Option<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchResult {
    /// Message ids to report as `batchItemFailures`.
    pub failed: Vec<String>,
    /// Records that failed but carry no message id. Lambda cannot be told which they are,
    /// so the whole batch must be failed (the handler returns an error); idempotency makes
    /// the redelivery of the others harmless.
    pub unreportable: usize,
    pub dead_lettered: usize,
    /// Outcome name per processed record, in order (for tests and the summary log).
    pub outcomes: Vec<&'static str>,
}

/// Runs `records` through `processor`. `deadline` is when the invocation times out.
pub async fn process_batch(
    processor: Arc<Processor>,
    control: Arc<dyn RecordControl>,
    records: Vec<BatchRecord>,
    deadline: Instant,
) -> BatchResult {
    let mut result = BatchResult::default();
    let mut failed_groups: HashSet<String> = HashSet::new();
    for record in records {
        let group = record.group_id.clone().unwrap_or_default();
        let message_id = record.message_id.clone().filter(|id| !id.is_empty());
        let fail = |result: &mut BatchResult, outcome: &'static str| {
            result.outcomes.push(outcome);
            match &message_id {
                Some(id) => result.failed.push(id.clone()),
                None => result.unreportable += 1,
            }
        };
        if failed_groups.contains(&group) {
            tracing::info!(
                message_id = message_id.as_deref().unwrap_or(""),
                group = group.as_str(),
                "held back: an earlier record of its group failed"
            );
            fail(&mut result, "held_back");
            continue;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining < MIN_TIME_PER_RECORD {
            tracing::warn!(
                message_id = message_id.as_deref().unwrap_or(""),
                remaining_ms = remaining.as_millis() as u64,
                "too little invocation time left; record returned to the queue"
            );
            failed_groups.insert(group);
            fail(&mut result, "out_of_time");
            continue;
        }
        let started = Instant::now();
        let outcome = run_one(&processor, &record, remaining).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok((envelope, processed)) => {
                log_success(&envelope, &processed, message_id.as_deref(), elapsed_ms);
                result.outcomes.push(processed.outcome());
            }
            Err((envelope, error)) => {
                let event = envelope
                    .as_ref()
                    .map(|e| e.event.clone())
                    .unwrap_or_default();
                let webhook_id = envelope
                    .as_ref()
                    .map(|e| e.webhook_id.clone())
                    .unwrap_or_default();
                match error.disposition(OffsetDateTime::now_utc()) {
                    Disposition::RetryAfter(delay) => {
                        tracing::warn!(
                            message_id = message_id.as_deref().unwrap_or(""),
                            webhook_id = webhook_id.as_str(),
                            event = event.as_str(),
                            code = error.code(),
                            error = %crate::telemetry::redact_emails(&error.to_string()),
                            retry_in_s = delay.as_secs(),
                            elapsed_ms,
                            "webhook failed; retried later"
                        );
                        metrics::webhook_processed(&event, ProcessedOutcome::RetryLater);
                        if let Some(receipt) = &record.receipt_handle {
                            if let Err(e) = control.retry_later(receipt, delay).await {
                                tracing::warn!(error = %e, "could not delay the record; it returns after the visibility timeout");
                            }
                        }
                        failed_groups.insert(group);
                        fail(&mut result, "failed");
                    }
                    Disposition::DeadLetter { code } => {
                        let letter = DeadLetter {
                            body: record.body.clone().unwrap_or_default(),
                            group_id: if group.is_empty() {
                                "unknown".into()
                            } else {
                                group.clone()
                            },
                            deduplication_id: record
                                .deduplication_id
                                .clone()
                                .or_else(|| message_id.clone())
                                .unwrap_or_else(|| "unknown".into()),
                            reason: error.to_string(),
                            code: code.to_owned(),
                        };
                        match control.dead_letter(&letter).await {
                            Ok(()) => {
                                tracing::error!(
                                    message_id = message_id.as_deref().unwrap_or(""),
                                    webhook_id = webhook_id.as_str(),
                                    event = event.as_str(),
                                    code,
                                    error = %crate::telemetry::redact_emails(&error.to_string()),
                                    elapsed_ms,
                                    "webhook cannot be applied; moved to the dead-letter queue"
                                );
                                metrics::webhook_processed(&event, ProcessedOutcome::DeadLettered);
                                result.dead_lettered += 1;
                                result.outcomes.push("dead_lettered");
                            }
                            Err(e) => {
                                tracing::error!(
                                    message_id = message_id.as_deref().unwrap_or(""),
                                    webhook_id = webhook_id.as_str(),
                                    code,
                                    error = %crate::telemetry::redact_emails(&error.to_string()),
                                    dlq_error = %e,
                                    "webhook cannot be applied and the dead-letter queue refused it; returned to the queue"
                                );
                                metrics::webhook_processed(&event, ProcessedOutcome::Failed);
                                failed_groups.insert(group);
                                fail(&mut result, "failed");
                            }
                        }
                    }
                }
            }
        }
    }
    result
}

type RunResult = Result<(WebhookEnvelope, Processed), (Option<WebhookEnvelope>, ProcessError)>;

/// One record on its own task, so a panic fails this record only.
async fn run_one(
    processor: &Arc<Processor>,
    record: &BatchRecord,
    remaining: Duration,
) -> RunResult {
    let envelope = match WebhookEnvelope::from_json(record.body.as_deref().unwrap_or("")) {
        Ok(envelope) => envelope,
        Err(e) => return Err((None, e.into())),
    };
    let task = {
        let processor = Arc::clone(processor);
        let envelope = envelope.clone();
        // In the invocation's span, so the record's log lines carry its request id.
        tokio::spawn(async move { processor.process(&envelope, remaining).await }.in_current_span())
    };
    match task.await {
        Ok(Ok(processed)) => Ok((envelope, processed)),
        Ok(Err(e)) => Err((Some(envelope), e)),
        Err(join) => {
            let detail = if join.is_panic() {
                let panic = join.into_panic();
                panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-text panic".into())
            } else {
                "task cancelled".into()
            };
            Err((Some(envelope), ProcessError::Panicked(detail)))
        }
    }
}

fn log_success(
    envelope: &WebhookEnvelope,
    processed: &Processed,
    message_id: Option<&str>,
    elapsed_ms: u64,
) {
    let outcome = processed.outcome();
    // A clock behind ingest's would make the lag negative: counted as zero.
    let lag = Duration::try_from(OffsetDateTime::now_utc() - envelope.received_at)
        .unwrap_or(Duration::ZERO);
    let lag_ms = lag.as_millis() as u64;
    let summary = match processed {
        Processed::Applied(applied) => applied.summary(),
        Processed::Duplicate { same_payload: true } => "already applied".into(),
        Processed::Duplicate {
            same_payload: false,
        } => {
            metrics::replay_payload_differs();
            "already applied; this replay's body differs from the first (not applied)".into()
        }
        Processed::Ignored => "no rule for this event".into(),
    };
    tracing::info!(
        message_id = message_id.unwrap_or(""),
        webhook_id = envelope.webhook_id.as_str(),
        event = envelope.event.as_str(),
        site = envelope.site.as_str(),
        outcome,
        summary = summary.as_str(),
        elapsed_ms,
        lag_ms,
        "webhook processed"
    );
    metrics::webhook_processed(&envelope.event, processed.metric_outcome());
    // Stale records are applied too (their other actions ran), so they count in the lag.
    if matches!(processed, Processed::Applied(_)) {
        metrics::end_to_end_lag(lag);
    }
}

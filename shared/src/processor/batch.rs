//! One SQS FIFO batch. Records are split by message group (one customer each); groups run
//! concurrently (bounded), each group in order. Within a group, consecutive records of one
//! customer run as one [`Processor::process_run`], so a backlog costs one set of Keap writes.
//!
//! **Failures.** At a group's first failure, that record and every later record of the group
//! go back to the queue unprocessed, all hidden for the delay the failure asks for (so the
//! group resumes when the failure says, not when the visibility timeout ends); other groups
//! go on. A permanent failure, or a record still failing [`Limits::max_webhook_age`]
//! after ingest received it, is moved to the dead-letter queue with its reason, and the rest
//! of its group goes on. A run of several records that fails permanently or panics is run
//! again one record at a time, so only the record at fault is dead-lettered. A panic fails
//! its own run only (each run is a task). The queue's redrive limit is set far above what
//! this policy uses: it only catches a record that kills its invocation every time.
//!
//! [`Limits::max_webhook_age`]: super::Limits::max_webhook_age

use super::failure::{Disposition, ProcessError};
use super::run::Planned;
use super::{Processed, Processor};
use crate::envelope::WebhookEnvelope;
use crate::queue::{clamp_visibility, DeadLetter, RecordControl};
use crate::telemetry::metrics::{self, ProcessedOutcome};
use futures::StreamExt;
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
    /// Outcome name per record, in the batch's order (for tests and the summary log).
    pub outcomes: Vec<&'static str>,
    /// `(message id, delay)` per record hidden for a retry: what was asked of the queue.
    pub delays: Vec<(String, Duration)>,
    /// Records the queue refused to hide: each comes back after its visibility timeout.
    pub delay_failures: Vec<String>,
}

/// A record with what the batch learnt of it.
struct Record {
    position: usize,
    record: BatchRecord,
    message_id: Option<String>,
    planned: Result<Planned, (Option<WebhookEnvelope>, ProcessError)>,
}

/// How one record ended, before the queue hears of it.
enum Ending {
    Done(WebhookEnvelope, Processed),
    /// Back to the queue, hidden for this long.
    Retry(Option<WebhookEnvelope>, ProcessError, Duration),
    HeldBack(Duration),
    DeadLetter(Option<WebhookEnvelope>, ProcessError, &'static str),
}

/// Runs `records` through `processor`. `deadline` is when the invocation times out.
pub async fn process_batch(
    processor: Arc<Processor>,
    control: Arc<dyn RecordControl>,
    records: Vec<BatchRecord>,
    deadline: Instant,
) -> BatchResult {
    let received = Instant::now();
    // Groups in order of first appearance, each in queue order.
    let mut groups: Vec<(String, Vec<Record>)> = Vec::new();
    for (position, record) in records.into_iter().enumerate() {
        let group = record.group_id.clone().unwrap_or_default();
        let planned = match WebhookEnvelope::from_json(record.body.as_deref().unwrap_or("")) {
            Ok(envelope) => processor
                .plan(envelope.clone())
                .map_err(|e| (Some(envelope), e)),
            Err(e) => Err((None, e.into())),
        };
        let entry = Record {
            position,
            message_id: record.message_id.clone().filter(|id| !id.is_empty()),
            record,
            planned,
        };
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, members)) => members.push(entry),
            None => groups.push((group, vec![entry])),
        }
    }
    let concurrency = processor.settings.group_concurrency.max(1);
    let endings: Vec<Vec<(Record, Ending)>> = futures::stream::iter(groups)
        .map(|(_, members)| {
            let processor = Arc::clone(&processor);
            async move { group(&processor, members, deadline).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut endings: Vec<(Record, Ending)> = endings.into_iter().flatten().collect();
    endings.sort_by_key(|(r, _)| r.position);
    let mut result = BatchResult::default();
    for (record, ending) in endings {
        settle(&control, &record, ending, received, &mut result).await;
    }
    result
}

/// One message group, in order.
async fn group(
    processor: &Arc<Processor>,
    members: Vec<Record>,
    deadline: Instant,
) -> Vec<(Record, Ending)> {
    let mut endings: Vec<(Record, Ending)> = Vec::with_capacity(members.len());
    let mut queue: std::collections::VecDeque<Record> = members.into();
    // Set at the group's first failure: the rest waits this long.
    let mut held: Option<Duration> = None;
    // After a run failed as a whole, the next records go one at a time.
    let mut one_at_a_time = 0usize;
    while let Some(mut first) = queue.pop_front() {
        if let Some(delay) = held {
            endings.push((first, Ending::HeldBack(delay)));
            continue;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining < MIN_TIME_PER_RECORD {
            tracing::warn!(
                message_id = first.message_id.as_deref().unwrap_or(""),
                remaining_ms = remaining.as_millis() as u64,
                "too little invocation time left; record returned to the queue"
            );
            held = Some(Duration::ZERO);
            endings.push((first, Ending::HeldBack(Duration::ZERO)));
            continue;
        }
        let planned = match &first.planned {
            Ok(planned) => planned.clone(),
            Err(_) => {
                // The record's own envelope or plan failed: its error, taken out of it.
                let placeholder = Err((None, ProcessError::HeldBack));
                let Err((envelope, error)) = std::mem::replace(&mut first.planned, placeholder)
                else {
                    continue;
                };
                let ending = decide(envelope, error);
                if let Ending::Retry(_, _, delay) = &ending {
                    held = Some(*delay);
                }
                endings.push((first, ending));
                continue;
            }
        };
        // The run: this record and the next ones of the same customer.
        let mut run = vec![first];
        let mut items = vec![planned];
        let customer = items[0].customer();
        while one_at_a_time == 0 && customer.is_some() {
            let same = queue
                .front()
                .is_some_and(|next| matches!(&next.planned, Ok(p) if p.customer() == customer));
            if !same {
                break;
            }
            if let Some(next) = queue.pop_front() {
                if let Ok(p) = &next.planned {
                    items.push(p.clone());
                }
                run.push(next);
            }
        }
        one_at_a_time = one_at_a_time.saturating_sub(1);
        let results = run_isolated(processor, items, remaining).await;
        let permanent = results.iter().any(|r| match r {
            Err(e) => {
                matches!(e, ProcessError::Panicked(_))
                    || matches!(
                        e.disposition(OffsetDateTime::now_utc()),
                        Disposition::DeadLetter { .. }
                    )
            }
            Ok(_) => false,
        });
        if permanent && run.len() > 1 {
            // Find the record at fault: the same records again, one run each.
            tracing::info!(
                records = run.len(),
                "a merged run failed permanently; running its records one at a time"
            );
            one_at_a_time = run.len();
            for record in run.into_iter().rev() {
                queue.push_front(record);
            }
            continue;
        }
        for (record, outcome) in run.into_iter().zip(results) {
            let envelope = record.planned.as_ref().ok().map(|p| p.envelope.clone());
            let ending = match (outcome, held) {
                (_, Some(delay)) => Ending::HeldBack(delay),
                (Ok(processed), None) => match envelope {
                    Some(envelope) => Ending::Done(envelope, processed),
                    None => Ending::HeldBack(Duration::ZERO),
                },
                (Err(error), None) => {
                    let ending = decide_aged(envelope, error, processor);
                    if let Ending::Retry(_, _, delay) = &ending {
                        held = Some(*delay);
                    }
                    ending
                }
            };
            endings.push((record, ending));
        }
    }
    endings
}

/// A run on its own task, so a panic fails this run only.
async fn run_isolated(
    processor: &Arc<Processor>,
    items: Vec<Planned>,
    remaining: Duration,
) -> Vec<Result<Processed, ProcessError>> {
    let count = items.len();
    let task = {
        let processor = Arc::clone(processor);
        // In the invocation's span, so the run's log lines carry its request id.
        tokio::spawn(
            async move { processor.process_run(&items, remaining).await }.in_current_span(),
        )
    };
    match task.await {
        Ok(results) => results,
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
            let mut results = vec![Err(ProcessError::Panicked(detail))];
            results.extend((1..count).map(|_| Err(ProcessError::HeldBack)));
            results
        }
    }
}

/// What a failure means for its record.
fn decide(envelope: Option<WebhookEnvelope>, error: ProcessError) -> Ending {
    match error.disposition(OffsetDateTime::now_utc()) {
        Disposition::RetryAfter(delay) => Ending::Retry(envelope, error, delay),
        Disposition::DeadLetter { code } => Ending::DeadLetter(envelope, error, code),
    }
}

/// [`decide`], where a record that would be retried but has been failing for longer than
/// the processor's budget is dead-lettered instead.
fn decide_aged(
    envelope: Option<WebhookEnvelope>,
    error: ProcessError,
    processor: &Processor,
) -> Ending {
    if matches!(error, ProcessError::HeldBack) {
        return Ending::HeldBack(Duration::ZERO);
    }
    let budget = processor.settings.max_webhook_age;
    let age = envelope.as_ref().map(|e| {
        Duration::try_from(OffsetDateTime::now_utc() - e.received_at).unwrap_or(Duration::ZERO)
    });
    match decide(envelope, error) {
        Ending::Retry(envelope, error, _) if age.is_some_and(|age| age > budget) => {
            let error = ProcessError::RetryBudgetExhausted {
                age: age.unwrap_or_default(),
                last: Box::new(error),
            };
            Ending::DeadLetter(envelope, error, "retry_budget_exhausted")
        }
        other => other,
    }
}

/// Tells the queue how a record ended, logs it and counts it.
async fn settle(
    control: &Arc<dyn RecordControl>,
    record: &Record,
    ending: Ending,
    received: Instant,
    result: &mut BatchResult,
) {
    let message_id = record.message_id.clone();
    let fail = |result: &mut BatchResult, outcome: &'static str| {
        result.outcomes.push(outcome);
        match &message_id {
            Some(id) => result.failed.push(id.clone()),
            None => result.unreportable += 1,
        }
    };
    let hide = |delay: Duration| {
        let control = Arc::clone(control);
        let receipt = record.record.receipt_handle.clone();
        let message_id = message_id.clone().unwrap_or_default();
        async move {
            let delay = clamp_visibility(delay, received.elapsed());
            let Some(receipt) = receipt else {
                return (message_id, delay, Ok(()));
            };
            let answer = control.retry_later(&receipt, delay).await;
            (message_id, delay, answer)
        }
    };
    let report_delay =
        |result: &mut BatchResult, (id, delay, answer): (String, Duration, Result<(), _>)| {
            match answer {
                Ok(()) => result.delays.push((id, delay)),
                Err(e) => {
                    tracing::error!(
                        message_id = id.as_str(),
                        delay_s = delay.as_secs(),
                        error = %e,
                        "the queue refused to hide the record; it comes back after its visibility timeout"
                    );
                    metrics::record_delay_failure();
                    result.delay_failures.push(id);
                }
            }
        };
    match ending {
        Ending::Done(envelope, processed) => {
            log_success(&envelope, &processed, message_id.as_deref());
            result.outcomes.push(processed.outcome());
        }
        Ending::HeldBack(delay) => {
            tracing::info!(
                message_id = message_id.as_deref().unwrap_or(""),
                group = record.record.group_id.as_deref().unwrap_or(""),
                retry_in_s = delay.as_secs(),
                "held back: an earlier record of its group is not applied yet"
            );
            let hidden = hide(delay).await;
            report_delay(result, hidden);
            fail(result, "held_back");
        }
        Ending::Retry(envelope, error, delay) => {
            let event = envelope.as_ref().map(|e| e.event.as_str()).unwrap_or("");
            tracing::warn!(
                message_id = message_id.as_deref().unwrap_or(""),
                webhook_id = envelope.as_ref().map(|e| e.webhook_id.as_str()).unwrap_or(""),
                event,
                code = error.code(),
                error = %crate::telemetry::redact_emails(&error.to_string()),
                retry_in_s = delay.as_secs(),
                "webhook failed; retried later"
            );
            metrics::webhook_processed(event, ProcessedOutcome::RetryLater);
            let hidden = hide(delay).await;
            report_delay(result, hidden);
            fail(result, "failed");
        }
        Ending::DeadLetter(envelope, error, code) => {
            let event = envelope
                .as_ref()
                .map(|e| e.event.clone())
                .unwrap_or_default();
            let webhook_id = envelope
                .as_ref()
                .map(|e| e.webhook_id.clone())
                .unwrap_or_default();
            let group = record.record.group_id.clone().unwrap_or_default();
            let letter = DeadLetter {
                body: record.record.body.clone().unwrap_or_default(),
                group_id: if group.is_empty() {
                    "unknown".into()
                } else {
                    group
                },
                deduplication_id: record
                    .record
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
                    let hidden = hide(super::failure::DEFAULT_RETRY_DELAY).await;
                    report_delay(result, hidden);
                    fail(result, "failed");
                }
            }
        }
    }
}

fn log_success(envelope: &WebhookEnvelope, processed: &Processed, message_id: Option<&str>) {
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
        Processed::TooOld => "older than MAX_EVENT_AGE_DAYS: not applied".into(),
    };
    tracing::info!(
        message_id = message_id.unwrap_or(""),
        webhook_id = envelope.webhook_id.as_str(),
        event = envelope.event.as_str(),
        site = envelope.site.as_str(),
        outcome,
        summary = summary.as_str(),
        lag_ms,
        "webhook processed"
    );
    metrics::webhook_processed(&envelope.event, processed.metric_outcome());
    // Stale records are applied too (their writes were decided), so they count in the lag.
    if matches!(processed, Processed::Applied(_)) {
        metrics::end_to_end_lag(lag);
    }
}

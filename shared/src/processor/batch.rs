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
use crate::queue::{clamp_visibility, DeadLetter, QueueError, RecordControl};
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

/// The record's message id; an empty one is none (Lambda could not be told of it).
fn message_id(record: &BatchRecord) -> Option<String> {
    record.message_id.clone().filter(|id| !id.is_empty())
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
            message_id: message_id(&record),
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
        settle(control.as_ref(), &record, ending, received, &mut result).await;
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
                let ending = decide(envelope, error, OffsetDateTime::now_utc());
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
                    let ending = decide_aged(
                        envelope,
                        error,
                        OffsetDateTime::now_utc(),
                        processor.settings.max_webhook_age,
                    );
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

/// What a failure means for its record, at `now`.
fn decide(envelope: Option<WebhookEnvelope>, error: ProcessError, now: OffsetDateTime) -> Ending {
    match error.disposition(now) {
        Disposition::RetryAfter(delay) => Ending::Retry(envelope, error, delay),
        Disposition::DeadLetter { code } => Ending::DeadLetter(envelope, error, code),
    }
}

/// [`decide`], where a record that would be retried but has been failing for longer than
/// `max_age` (the processor's retry budget) since ingest received it is dead-lettered
/// instead, and a record held back by its run's failure returns at once.
fn decide_aged(
    envelope: Option<WebhookEnvelope>,
    error: ProcessError,
    now: OffsetDateTime,
    max_age: Duration,
) -> Ending {
    if matches!(error, ProcessError::HeldBack) {
        return Ending::HeldBack(Duration::ZERO);
    }
    let age = envelope
        .as_ref()
        .map(|e| Duration::try_from(now - e.received_at).unwrap_or(Duration::ZERO));
    match decide(envelope, error, now) {
        Ending::Retry(envelope, error, _) if age.is_some_and(|age| age > max_age) => {
            let error = ProcessError::RetryBudgetExhausted {
                age: age.unwrap_or_default(),
                last: Box::new(error),
            };
            Ending::DeadLetter(envelope, error, "retry_budget_exhausted")
        }
        other => other,
    }
}

/// What the queue is told of one record: the decision, made before any queue call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Settlement {
    /// Not reported failed: Lambda deletes it. `outcome` names it in the summary.
    Ack { outcome: &'static str },
    /// Reported failed and hidden for `delay` (clamped to what SQS allows), so it and the
    /// rest of its group return when the failure asks.
    Retry {
        delay: Duration,
        outcome: &'static str,
    },
    /// Moved to the dead-letter queue as this message, and not reported failed.
    DeadLetter(DeadLetter),
}

impl Settlement {
    /// The decision for `record`, which ended as `ending`, `since_receive` after the batch
    /// was received. No I/O: [`settle`] carries it out.
    fn of(record: &BatchRecord, ending: &Ending, since_receive: Duration) -> Self {
        let retry = |delay, outcome| Self::Retry {
            delay: clamp_visibility(delay, since_receive),
            outcome,
        };
        match ending {
            Ending::Done(_, processed) => Self::Ack {
                outcome: processed.outcome(),
            },
            Ending::HeldBack(delay) => retry(*delay, "held_back"),
            Ending::Retry(_, _, delay) => retry(*delay, "failed"),
            Ending::DeadLetter(_, error, code) => {
                Self::DeadLetter(dead_letter(record, &error.to_string(), code))
            }
        }
    }

    /// When the dead-letter queue refuses a record: back to the main queue, to try again.
    fn dead_letter_refused(since_receive: Duration) -> Self {
        Self::Retry {
            delay: clamp_visibility(super::failure::DEFAULT_RETRY_DELAY, since_receive),
            outcome: "failed",
        }
    }
}

/// Tells the queue how a record ended ([`Settlement::of`]), then logs and counts it.
async fn settle(
    control: &dyn RecordControl,
    record: &Record,
    ending: Ending,
    received: Instant,
    result: &mut BatchResult,
) {
    let mut settlement = Settlement::of(&record.record, &ending, received.elapsed());
    match &ending {
        Ending::Done(envelope, processed) => {
            log_success(envelope, processed, record.message_id.as_deref());
        }
        Ending::HeldBack(delay) => log_held_back(record, *delay),
        Ending::Retry(envelope, error, delay) => {
            log_retry(record, envelope.as_ref(), error, *delay);
        }
        Ending::DeadLetter(envelope, error, code) => {
            if let Settlement::DeadLetter(letter) = &settlement {
                let moved = control.dead_letter(letter).await;
                log_dead_letter(record, envelope.as_ref(), error, code, moved.as_ref().err());
                if moved.is_err() {
                    settlement = Settlement::dead_letter_refused(received.elapsed());
                }
            }
        }
    }
    match settlement {
        Settlement::Ack { outcome } => result.outcomes.push(outcome),
        Settlement::DeadLetter(_) => {
            result.dead_lettered += 1;
            result.outcomes.push("dead_lettered");
        }
        Settlement::Retry { delay, outcome } => {
            let answer = hide(control, record, delay).await;
            result.hidden(record, delay, answer);
            result.fail(record, outcome);
        }
    }
}

/// Asks the queue to hide the record for `delay`. A record without a receipt handle cannot
/// be hidden: it comes back after its visibility timeout, as any failed record does.
async fn hide(
    control: &dyn RecordControl,
    record: &Record,
    delay: Duration,
) -> Result<(), QueueError> {
    match &record.record.receipt_handle {
        Some(receipt) => control.retry_later(receipt, delay).await,
        None => Ok(()),
    }
}

/// The dead-letter message of a record: its body unchanged, its group and deduplication id
/// (or stand-ins where SQS gave none), and why.
fn dead_letter(record: &BatchRecord, reason: &str, code: &str) -> DeadLetter {
    let group = record.group_id.clone().unwrap_or_default();
    DeadLetter {
        body: record.body.clone().unwrap_or_default(),
        group_id: if group.is_empty() {
            "unknown".into()
        } else {
            group
        },
        deduplication_id: record
            .deduplication_id
            .clone()
            .or_else(|| message_id(record))
            .unwrap_or_else(|| "unknown".into()),
        reason: reason.to_owned(),
        code: code.to_owned(),
    }
}

impl BatchResult {
    /// A record left on the queue: reported failed by its message id, so Lambda does not
    /// delete it.
    fn fail(&mut self, record: &Record, outcome: &'static str) {
        self.outcomes.push(outcome);
        match &record.message_id {
            Some(id) => self.failed.push(id.clone()),
            None => self.unreportable += 1,
        }
    }

    /// What the queue answered when asked to hide a record for `delay`.
    fn hidden(&mut self, record: &Record, delay: Duration, answer: Result<(), QueueError>) {
        let id = record.message_id.clone().unwrap_or_default();
        match answer {
            Ok(()) => self.delays.push((id, delay)),
            Err(e) => {
                tracing::error!(
                    message_id = id.as_str(),
                    delay_s = delay.as_secs(),
                    error = %e,
                    "the queue refused to hide the record; it comes back after its visibility timeout"
                );
                metrics::record_delay_failure();
                self.delay_failures.push(id);
            }
        }
    }
}

fn log_held_back(record: &Record, delay: Duration) {
    tracing::info!(
        message_id = record.message_id.as_deref().unwrap_or(""),
        group = record.record.group_id.as_deref().unwrap_or(""),
        retry_in_s = delay.as_secs(),
        "held back: an earlier record of its group is not applied yet"
    );
}

fn log_retry(
    record: &Record,
    envelope: Option<&WebhookEnvelope>,
    error: &ProcessError,
    delay: Duration,
) {
    let event = envelope.map(|e| e.event.as_str()).unwrap_or("");
    tracing::warn!(
        message_id = record.message_id.as_deref().unwrap_or(""),
        webhook_id = envelope.map(|e| e.webhook_id.as_str()).unwrap_or(""),
        event,
        code = error.code(),
        error = %crate::telemetry::redact_emails(&error.to_string()),
        retry_in_s = delay.as_secs(),
        "webhook failed; retried later"
    );
    metrics::webhook_processed(event, ProcessedOutcome::RetryLater);
}

/// A record that cannot be applied: moved to the dead-letter queue, or, when that queue
/// `refused` it, returned to the main queue.
fn log_dead_letter(
    record: &Record,
    envelope: Option<&WebhookEnvelope>,
    error: &ProcessError,
    code: &'static str,
    refused: Option<&QueueError>,
) {
    let message_id = record.message_id.as_deref().unwrap_or("");
    let webhook_id = envelope.map(|e| e.webhook_id.as_str()).unwrap_or("");
    let event = envelope.map(|e| e.event.as_str()).unwrap_or("");
    let error = crate::telemetry::redact_emails(&error.to_string());
    match refused {
        None => {
            tracing::error!(
                message_id,
                webhook_id,
                event,
                code,
                error = %error,
                "webhook cannot be applied; moved to the dead-letter queue"
            );
            metrics::webhook_processed(event, ProcessedOutcome::DeadLettered);
        }
        Some(dlq_error) => {
            tracing::error!(
                message_id,
                webhook_id,
                code,
                error = %error,
                dlq_error = %dlq_error,
                "webhook cannot be applied and the dead-letter queue refused it; returned to the queue"
            );
            metrics::webhook_processed(event, ProcessedOutcome::Failed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keap::{KeapError, ThrottleKind};
    use crate::queue::MAX_VISIBILITY_DELAY;

    fn record(message_id: Option<&str>, group: Option<&str>, dedup: Option<&str>) -> BatchRecord {
        BatchRecord {
            message_id: message_id.map(str::to_owned),
            receipt_handle: Some("receipt".into()),
            group_id: group.map(str::to_owned),
            deduplication_id: dedup.map(str::to_owned),
            body: Some("{\"the\":\"body\"}".into()),
        }
    }

    fn throttled(seconds: u64) -> ProcessError {
        ProcessError::Keap(KeapError::Throttled {
            kind: ThrottleKind::Minute,
            retry_after: Duration::from_secs(seconds),
            request_id: None,
        })
    }

    fn refused() -> ProcessError {
        ProcessError::Keap(KeapError::Permanent {
            status: 400,
            reason: "invalid email".into(),
            request_id: None,
        })
    }

    fn received(ago: time::Duration, now: OffsetDateTime) -> Option<WebhookEnvelope> {
        crate::fixtures::envelope_at(crate::fixtures::SIGNUP_SUCCESS, now - ago)
    }

    #[test]
    fn a_failure_is_retried_when_it_asks_and_dead_lettered_when_permanent() {
        let now = OffsetDateTime::now_utc();
        let day = Duration::from_secs(86_400);
        let fresh = || received(time::Duration::minutes(5), now);
        assert!(matches!(
            decide_aged(fresh(), throttled(42), now, day),
            Ending::Retry(Some(_), ProcessError::Keap(_), d) if d == Duration::from_secs(42)
        ));
        assert!(matches!(
            decide_aged(fresh(), refused(), now, day),
            Ending::DeadLetter(Some(_), ProcessError::Keap(_), "keap_permanent")
        ));
        // Held back behind its run's failure: returns at once, its own record untouched.
        assert!(matches!(
            decide_aged(fresh(), ProcessError::HeldBack, now, day),
            Ending::HeldBack(d) if d == Duration::ZERO
        ));
        // A record with no envelope has no age: retried as its failure asks.
        assert!(matches!(
            decide_aged(None, throttled(7), now, day),
            Ending::Retry(None, _, d) if d == Duration::from_secs(7)
        ));
    }

    #[test]
    fn a_record_failing_past_the_retry_budget_is_dead_lettered_with_its_last_failure() {
        let now = OffsetDateTime::now_utc();
        let budget = Duration::from_secs(86_400);
        let old = received(time::Duration::hours(25), now);
        let Ending::DeadLetter(Some(_), error, code) = decide_aged(old, throttled(42), now, budget)
        else {
            panic!("expected a dead letter");
        };
        assert_eq!(code, "retry_budget_exhausted");
        assert!(
            matches!(&error, ProcessError::RetryBudgetExhausted { last, .. } if matches!(**last, ProcessError::Keap(_))),
            "{error}"
        );
        // A permanent failure keeps its own code, whatever the age.
        let old = received(time::Duration::hours(25), now);
        assert!(matches!(
            decide_aged(old, refused(), now, budget),
            Ending::DeadLetter(_, _, "keap_permanent")
        ));
    }

    #[test]
    fn each_ending_settles_as_ack_retry_or_dead_letter() {
        let r = record(Some("m-1"), Some("site:cust"), Some("dedup-1"));
        let now = Duration::from_secs(3);
        assert_eq!(
            Settlement::of(&r, &Ending::Done(envelope(), Processed::Ignored), now),
            Settlement::Ack {
                outcome: Processed::Ignored.outcome()
            }
        );
        assert_eq!(
            Settlement::of(&r, &Ending::HeldBack(Duration::from_secs(30)), now),
            Settlement::Retry {
                delay: Duration::from_secs(30),
                outcome: "held_back"
            }
        );
        assert_eq!(
            Settlement::of(
                &r,
                &Ending::Retry(None, throttled(60), Duration::from_secs(60)),
                now
            ),
            Settlement::Retry {
                delay: Duration::from_secs(60),
                outcome: "failed"
            }
        );
        let error = refused();
        let reason = error.to_string();
        assert_eq!(
            Settlement::of(&r, &Ending::DeadLetter(None, error, "keap_permanent"), now),
            Settlement::DeadLetter(DeadLetter {
                body: "{\"the\":\"body\"}".into(),
                group_id: "site:cust".into(),
                deduplication_id: "dedup-1".into(),
                reason,
                code: "keap_permanent".into(),
            })
        );
        assert_eq!(
            Settlement::dead_letter_refused(now),
            Settlement::Retry {
                delay: super::super::failure::DEFAULT_RETRY_DELAY,
                outcome: "failed"
            }
        );
    }

    #[test]
    fn a_retry_is_hidden_no_longer_than_sqs_allows_after_the_receive() {
        let r = record(Some("m-1"), Some("g"), Some("d"));
        let since = Duration::from_secs(3600);
        let Settlement::Retry { delay, .. } = Settlement::of(
            &r,
            &Ending::Retry(None, throttled(1), Duration::from_secs(86_400)),
            since,
        ) else {
            panic!("expected a retry");
        };
        assert_eq!(delay, clamp_visibility(Duration::from_secs(86_400), since));
        assert!(delay + since < MAX_VISIBILITY_DELAY);
    }

    #[test]
    fn a_dead_letter_stands_in_for_what_sqs_did_not_give() {
        let error = refused();
        let no_group_no_dedup = record(Some("m-9"), None, None);
        let Settlement::DeadLetter(letter) = Settlement::of(
            &no_group_no_dedup,
            &Ending::DeadLetter(None, error, "keap_permanent"),
            Duration::ZERO,
        ) else {
            panic!("expected a dead letter");
        };
        assert_eq!(letter.group_id, "unknown");
        assert_eq!(letter.deduplication_id, "m-9");
        let nothing = BatchRecord {
            message_id: Some(String::new()),
            ..BatchRecord::default()
        };
        let letter = dead_letter(&nothing, "why", "malformed_envelope");
        assert_eq!(
            (letter.body.as_str(), letter.group_id.as_str()),
            ("", "unknown")
        );
        assert_eq!(letter.deduplication_id, "unknown");
    }

    fn envelope() -> WebhookEnvelope {
        crate::fixtures::envelope(crate::fixtures::SIGNUP_SUCCESS).expect("an envelope")
    }
}

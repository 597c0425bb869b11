//! The processor function's entry point: SQS FIFO trigger with `ReportBatchItemFailures`.
//!
//! Cold start reads and checks everything once (configuration, rules, Keap credentials) and
//! fails loudly naming the fix; each invocation then runs its batch through
//! [`process_batch`] and reports the records to retry.

use crate::aws;
use crate::config::{ConfigError, ProcessorService, ProcessorSettings};
use crate::processor::{process_batch, BatchRecord, Processor};
use crate::queue::RecordControl;
use crate::telemetry;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bound on each AWS call (DynamoDB, SQS), retries included.
const AWS_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A batch Lambda must retry whole: some failed record carries no message id to report.
#[derive(Debug, thiserror::Error)]
#[error("{0} failed records carry no SQS message id; failing the whole batch so none is lost (the others are idempotent)")]
pub struct UnreportableFailures(pub usize);

pub async fn run() -> Result<(), Error> {
    telemetry::init(telemetry::metrics::function::PROCESSOR);
    let ProcessorService { processor, control } = cold_start().await.inspect_err(|e| {
        tracing::error!(error = %e, "processor cannot start");
    })?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let processor = Arc::clone(&processor);
        let control = Arc::clone(&control);
        async move {
            let deadline = deadline_of(event.context.deadline);
            tracing::debug!(
                deadline_ms = event.context.deadline,
                remaining_ms = deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
                "invocation"
            );
            let response = handle(processor, control, event.payload, deadline).await;
            telemetry::flush_metrics();
            response.map_err(Error::from)
        }
    }))
    .await
}

async fn cold_start() -> Result<ProcessorService, ConfigError> {
    let settings = ProcessorSettings::from_env()?;
    let aws = aws::sdk_config(
        AWS_CALL_TIMEOUT,
        aws::region_of_queue_url(&settings.queue_url),
    )
    .await;
    let service = settings.build(&aws).await?;
    tracing::info!(
        rules = settings.rules.handled_events().len(),
        idempotency_table = settings.idempotency_table.as_str(),
        customers_table = settings.customers_table.as_str(),
        "processor ready"
    );
    Ok(service)
}

/// Runs one SQS event. `deadline` is when the invocation times out.
pub async fn handle(
    processor: Arc<Processor>,
    control: Arc<dyn RecordControl>,
    event: SqsEvent,
    deadline: Instant,
) -> Result<SqsBatchResponse, UnreportableFailures> {
    let records = event.records.into_iter().map(batch_record).collect();
    let result = process_batch(processor, control, records, deadline).await;
    if result.unreportable > 0 {
        return Err(UnreportableFailures(result.unreportable));
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = result
        .failed
        .into_iter()
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    Ok(response)
}

fn batch_record(message: SqsMessage) -> BatchRecord {
    BatchRecord {
        group_id: message.attributes.get("MessageGroupId").cloned(),
        deduplication_id: message.attributes.get("MessageDeduplicationId").cloned(),
        message_id: message.message_id,
        receipt_handle: message.receipt_handle,
        body: message.body,
    }
}

/// Deadlines below this (September 2001 in epoch milliseconds) cannot be timestamps.
const EARLIEST_DEADLINE_MS: u64 = 1_000_000_000_000;

/// The Lambda context's deadline as an `Instant`. Lambda sends milliseconds since the epoch;
/// `cargo lambda watch` sends the timeout itself (e.g. `600000`), which is read as time left,
/// so local runs are not cut to zero.
pub fn deadline_of(deadline_ms: u64) -> Instant {
    if deadline_ms < EARLIEST_DEADLINE_MS {
        return Instant::now() + Duration::from_millis(deadline_ms);
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_epoch_times_or_cargo_lambdas_relative_timeout() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let left = |d: Instant| d.saturating_duration_since(Instant::now()).as_secs();
        assert!((55..=60).contains(&left(deadline_of(now_ms + 60_000))));
        assert!((595..=600).contains(&left(deadline_of(600_000))));
        assert_eq!(left(deadline_of(now_ms - 5_000)), 0);
    }
}

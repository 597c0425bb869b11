//! The reconciler function: an EventBridge schedule (or any event: its content is ignored)
//! runs one bounded [`Reconciler::run`] and answers its counts. A run that fails (Chargify
//! refuses the key, SQS or DynamoDB down) fails the invocation, so `ReconcilerErrorsAlarm`
//! fires; the cursors saved before the failure keep its progress.

use crate::aws;
use crate::config::{ConfigError, ReconcilerSettings};
use crate::reconcile::{ReconcileError, ReconcileReport, Reconciler};
use crate::telemetry;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Kept back from the invocation's deadline for a Chargify request in flight (it may take
/// 120 s, its own cut-off): with the run's own 20 s margin, a 300 s invocation starts no page
/// in its last 130 s. Never more than half the invocation, so a short local timeout (`cargo
/// lambda watch`) still gets work done.
pub const REQUEST_RESERVE: Duration = Duration::from_secs(110);

/// The deadline the run works to: the invocation's, less [`REQUEST_RESERVE`] (at most half
/// the time left).
pub fn working_deadline(invocation_deadline: Instant) -> Instant {
    let left = invocation_deadline.saturating_duration_since(Instant::now());
    invocation_deadline - REQUEST_RESERVE.min(left / 2)
}

/// Bound on each AWS call (SQS, DynamoDB), retries included.
const AWS_CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run() -> Result<(), Error> {
    telemetry::init(telemetry::metrics::function::RECONCILER);
    let reconciler = Arc::new(cold_start().await.inspect_err(|e| {
        tracing::error!(error = %e, "reconciler cannot start");
    })?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let reconciler = Arc::clone(&reconciler);
        async move {
            let deadline =
                working_deadline(super::processor_lambda::deadline_of(event.context.deadline));
            let report = handle(&reconciler, deadline).await;
            telemetry::flush_metrics();
            report.map_err(Error::from)
        }
    }))
    .await
}

async fn cold_start() -> Result<Reconciler, ConfigError> {
    let settings = ReconcilerSettings::from_env()?;
    let aws = aws::sdk_config(
        AWS_CALL_TIMEOUT,
        aws::region_of_queue_url(&settings.ingest.queue_url),
    )
    .await;
    let reconciler = settings.build(&aws).await?;
    tracing::info!(
        site = settings.chargify.site.as_str(),
        max_pages = settings.run.max_pages,
        replay_unverified = settings.run.replay_unverified,
        "reconciler ready"
    );
    Ok(reconciler)
}

/// One scheduled run, until `deadline`.
pub async fn handle(
    reconciler: &Reconciler,
    deadline: Instant,
) -> Result<ReconcileReport, ReconcileError> {
    reconciler.run(deadline).await.inspect_err(|e| {
        tracing::error!(error = %e, "reconcile run failed; the next run resumes from the saved cursors");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_working_deadline_keeps_a_request_in_reserve_but_at_most_half() {
        let left = |d: Instant| d.saturating_duration_since(Instant::now()).as_secs();
        let now = Instant::now();
        assert!((188..=190).contains(&left(working_deadline(now + Duration::from_secs(300)))));
        assert!((29..=30).contains(&left(working_deadline(now + Duration::from_secs(60)))));
    }
}

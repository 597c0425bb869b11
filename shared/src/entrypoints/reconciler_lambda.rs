//! The reconciler function: an EventBridge schedule (or any event: its content is ignored)
//! runs one bounded [`Reconciler::run`] and answers its counts. A run that fails (Chargify
//! refuses the key, SQS or DynamoDB down) fails the invocation, so `ReconcilerErrorsAlarm`
//! fires; the cursors saved before the failure keep its progress.

use crate::chargify::api::{build_client, ChargifySettings};
use crate::config::{
    load_shared_keys, ConfigError, IngestSettings, CUSTOMERS_TABLE, IDEMPOTENCY_TABLE,
};
use crate::cursor_store::DynamoDbCursorStore;
use crate::dynamodb::Table;
use crate::idempotency::DynamoDbIdempotencyStore;
use crate::identity::DynamoDbCustomerStore;
use crate::ingest::IngestService;
use crate::queue::{SqsWebhookQueue, WebhookQueue};
use crate::reconcile::{ReconcileError, ReconcileReport, ReconcileSettings, Reconciler};
use crate::telemetry;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const RECONCILE_MAX_PAGES: &str = "RECONCILE_MAX_PAGES";
pub const RECONCILE_OVERLAP_DAYS: &str = "RECONCILE_OVERLAP_DAYS";
pub const RECONCILE_REPLAY_UNVERIFIED: &str = "RECONCILE_REPLAY_UNVERIFIED";

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

/// Everything a reconciler needs, from the environment (the Lambda) or from flags and stack
/// outputs laid over it (`cks reconcile`).
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// The queue and the shared keys, read exactly as ingest reads them.
    pub ingest: IngestSettings,
    pub idempotency_table: String,
    pub customers_table: String,
    pub chargify: ChargifySettings,
    pub settings: ReconcileSettings,
}

impl ReconcilerConfig {
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let ingest = IngestSettings::from_lookup(&var)?;
        let chargify = ChargifySettings::from_lookup(&var)?;
        let table = |name: &'static str, why: &'static str| {
            set(name).ok_or(ConfigError::Missing(name, why))
        };
        let number = |name: &'static str, default: u32, range: std::ops::RangeInclusive<u32>| {
            match set(name) {
                None => Ok(default),
                Some(text) => text
                    .parse::<u32>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| ConfigError::Invalid {
                        name,
                        reason: format!(
                            "`{text}` is not a whole number between {} and {}",
                            range.start(),
                            range.end()
                        ),
                    }),
            }
        };
        let replay_unverified = match set(RECONCILE_REPLAY_UNVERIFIED).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: RECONCILE_REPLAY_UNVERIFIED,
                    reason: format!("`{other}` is not true or false"),
                })
            }
        };
        let mut settings = ReconcileSettings::new(chargify.site.clone());
        settings.max_pages = number(RECONCILE_MAX_PAGES, settings.max_pages, 1..=100)?;
        settings.overlap_days =
            number(RECONCILE_OVERLAP_DAYS, settings.overlap_days.into(), 1..=7)? as u8;
        settings.replay_unverified = replay_unverified;
        Ok(Self {
            ingest,
            idempotency_table: table(IDEMPOTENCY_TABLE, "set it to the DynamoDB table of idempotency records (the reconciler keeps its cursors there)")?,
            customers_table: table(CUSTOMERS_TABLE, "set it to the DynamoDB table of the identity map (the reconciler reads the subscription clocks)")?,
            chargify,
            settings,
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The reconciler over AWS and Chargify: reads the shared keys and the API key (Secrets
    /// Manager when configured so) once.
    pub async fn build(&self, aws: &aws_config::SdkConfig) -> Result<Reconciler, ConfigError> {
        let keys = load_shared_keys(&self.ingest.keys, aws).await?;
        let api = build_client(&self.chargify, aws).await?;
        let queue: Arc<dyn WebhookQueue> = Arc::new(SqsWebhookQueue::new(
            aws_sdk_sqs::Client::new(aws),
            self.ingest.queue_url.clone(),
        ));
        Ok(Reconciler {
            api: Arc::new(api),
            ingest: IngestService::new(keys, queue),
            cursors: Arc::new(DynamoDbCursorStore::new(Table::from_config(
                aws,
                &self.idempotency_table,
            ))),
            idempotency: Arc::new(DynamoDbIdempotencyStore::new(Table::from_config(
                aws,
                &self.idempotency_table,
            ))),
            customers: Arc::new(DynamoDbCustomerStore::new(Table::from_config(
                aws,
                &self.customers_table,
            ))),
            settings: self.settings.clone(),
        })
    }
}

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
    let config = ReconcilerConfig::from_env()?;
    let aws = super::aws_config(
        AWS_CALL_TIMEOUT,
        super::region_of_queue_url(&config.ingest.queue_url),
    )
    .await;
    let reconciler = config.build(&aws).await?;
    tracing::info!(
        site = config.chargify.site.as_str(),
        max_pages = config.settings.max_pages,
        replay_unverified = config.settings.replay_unverified,
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
    use crate::config::lookup_of;

    fn config(pairs: &[(&str, &str)]) -> Result<ReconcilerConfig, ConfigError> {
        ReconcilerConfig::from_lookup(lookup_of(pairs))
    }

    const BASE: &[(&str, &str)] = &[
        ("QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/q.fifo"),
        ("CHARGIFY_SHARED_KEYS", "k"),
        ("CHARGIFY_SITE", "acme"),
        ("CHARGIFY_API_KEY", "api"),
        (IDEMPOTENCY_TABLE, "idem"),
        (CUSTOMERS_TABLE, "customers"),
    ];

    #[test]
    fn the_working_deadline_keeps_a_request_in_reserve_but_at_most_half() {
        let left = |d: Instant| d.saturating_duration_since(Instant::now()).as_secs();
        let now = Instant::now();
        assert!((188..=190).contains(&left(working_deadline(now + Duration::from_secs(300)))));
        assert!((29..=30).contains(&left(working_deadline(now + Duration::from_secs(60)))));
    }

    #[test]
    fn reads_ingests_settings_and_its_own_and_names_each_mistake() {
        let ok = config(BASE).expect("valid");
        assert_eq!(ok.settings.site, "acme");
        assert_eq!(ok.settings.max_pages, 10);
        assert!(!ok.settings.replay_unverified);
        let mut more = BASE.to_vec();
        more.push((RECONCILE_REPLAY_UNVERIFIED, "true"));
        more.push((RECONCILE_MAX_PAGES, "3"));
        let ok = config(&more).expect("valid");
        assert!(ok.settings.replay_unverified);
        assert_eq!(ok.settings.max_pages, 3);
        let err = |pairs: &[(&str, &str)]| {
            config(pairs)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(&BASE[1..]).contains("QUEUE_URL"));
        assert!(err(&BASE[..5]).contains(CUSTOMERS_TABLE));
        let mut bad = BASE.to_vec();
        bad.push((RECONCILE_MAX_PAGES, "0"));
        assert!(err(&bad).contains(RECONCILE_MAX_PAGES));
        let mut bad = BASE.to_vec();
        bad.push((RECONCILE_REPLAY_UNVERIFIED, "yes"));
        assert!(err(&bad).contains(RECONCILE_REPLAY_UNVERIFIED));
    }
}

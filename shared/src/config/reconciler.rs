//! The reconciler function's settings, and the reconciler over Chargify, SQS and DynamoDB.

use super::{
    load_shared_keys, ConfigError, IngestSettings, Vars, CUSTOMERS_TABLE, IDEMPOTENCY_TABLE,
};
use crate::chargify::api::ChargifySettings;
use crate::cursor_store::DynamoDbCursorStore;
use crate::dynamodb::Table;
use crate::idempotency::DynamoDbIdempotencyStore;
use crate::identity::DynamoDbCustomerStore;
use crate::ingest::IngestService;
use crate::queue::WebhookQueue;
use crate::reconcile::{Reconciler, RunOptions};
use std::sync::Arc;

pub const RECONCILE_MAX_PAGES: &str = "RECONCILE_MAX_PAGES";
pub const RECONCILE_OVERLAP_DAYS: &str = "RECONCILE_OVERLAP_DAYS";
pub const RECONCILE_REPLAY_UNVERIFIED: &str = "RECONCILE_REPLAY_UNVERIFIED";

/// Everything a reconciler needs, from the environment (the Lambda) or from flags and stack
/// outputs laid over it (`cks reconcile`).
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    /// The queue and the shared keys, read exactly as ingest reads them.
    pub ingest: IngestSettings,
    pub idempotency_table: String,
    pub customers_table: String,
    pub chargify: ChargifySettings,
    /// What each run may do, and how much.
    pub run: RunOptions,
}

impl ReconcilerSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let ingest = IngestSettings::from_vars(vars)?;
        let chargify = ChargifySettings::from_vars(vars)?;
        let replay_unverified = vars.flag(RECONCILE_REPLAY_UNVERIFIED, false)?;
        let mut run = RunOptions::new(chargify.site.clone());
        run.max_pages = vars.number(RECONCILE_MAX_PAGES, run.max_pages, 1..=100)?;
        run.overlap_days = vars.number(RECONCILE_OVERLAP_DAYS, run.overlap_days, 1..=7)?;
        run.replay_unverified = replay_unverified;
        Ok(Self {
            ingest,
            idempotency_table: vars.required(IDEMPOTENCY_TABLE, "set it to the DynamoDB table of idempotency records (the reconciler keeps its cursors there)")?,
            customers_table: vars.required(CUSTOMERS_TABLE, "set it to the DynamoDB table of the identity map (the reconciler reads the subscription clocks)")?,
            chargify,
            run,
        })
    }

    /// The reconciler over AWS and Chargify: reads the shared keys and the API key (Secrets
    /// Manager when configured so) once.
    pub async fn build(&self, aws: &aws_config::SdkConfig) -> Result<Reconciler, ConfigError> {
        let keys = load_shared_keys(&self.ingest.keys, aws).await?;
        let api = self.chargify.build(aws).await?;
        let queue: Arc<dyn WebhookQueue> = Arc::new(self.ingest.queue(aws));
        let table = |name: &str| Table::from_config(aws, name);
        Ok(Reconciler {
            api: Arc::new(api),
            ingest: IngestService::new(keys, queue),
            cursors: Arc::new(DynamoDbCursorStore::new(table(&self.idempotency_table))),
            idempotency: Arc::new(DynamoDbIdempotencyStore::new(table(
                &self.idempotency_table,
            ))),
            customers: Arc::new(DynamoDbCustomerStore::new(table(&self.customers_table))),
            settings: self.run.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<ReconcilerSettings, ConfigError> {
        ReconcilerSettings::from_vars(&Vars::from_pairs(pairs.iter().copied()))
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
    fn reads_ingests_settings_and_its_own_and_names_each_mistake() {
        let ok = settings(BASE).expect("valid");
        assert_eq!(ok.run.site, "acme");
        assert_eq!(ok.run.max_pages, 10);
        assert!(!ok.run.replay_unverified);
        let mut more = BASE.to_vec();
        more.push((RECONCILE_REPLAY_UNVERIFIED, "true"));
        more.push((RECONCILE_MAX_PAGES, "3"));
        let ok = settings(&more).expect("valid");
        assert!(ok.run.replay_unverified);
        assert_eq!(ok.run.max_pages, 3);
        let err = |pairs: &[(&str, &str)]| {
            settings(pairs)
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

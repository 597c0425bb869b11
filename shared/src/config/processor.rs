//! The processor function's settings, and the processor over DynamoDB, SQS and Keap.

use super::{ConfigError, Vars, QUEUE_URL};
use crate::dynamodb::Table;
use crate::idempotency::DynamoDbIdempotencyStore;
use crate::identity::{DynamoDbCustomerStore, DynamoDbNameLocks};
use crate::keap::settings::KeapSettings;
use crate::keap::Directory;
use crate::processor::{Limits, Processor};
use crate::queue::{RecordControl, SqsRecordControl};
use crate::rules::RuleSet;
use std::sync::Arc;
use std::time::Duration;

const DAY: u64 = 24 * 3600;

pub const IDEMPOTENCY_TABLE: &str = "IDEMPOTENCY_TABLE";
pub const CUSTOMERS_TABLE: &str = "CUSTOMERS_TABLE";
pub const DEAD_LETTER_QUEUE_URL: &str = "DEAD_LETTER_QUEUE_URL";
pub const RECORD_TTL_DAYS: &str = "RECORD_TTL_DAYS";
pub const MAX_LEASE_SECONDS: &str = "MAX_LEASE_SECONDS";
pub const MAX_WEBHOOK_AGE_DAYS: &str = "MAX_WEBHOOK_AGE_DAYS";
pub const MIRROR_MAX_AGE_DAYS: &str = "MIRROR_MAX_AGE_DAYS";
pub const MAX_EVENT_AGE_DAYS: &str = "MAX_EVENT_AGE_DAYS";
pub const SEEN_MARKER_DAYS: &str = "SEEN_MARKER_DAYS";

/// Settings of the processor function: its tables and queues, its limits, the rules
/// (`RULES_TOML`, see [`RuleSet::from_vars`]) and the Keap credentials
/// ([`crate::keap::settings`]).
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    pub idempotency_table: String,
    pub customers_table: String,
    /// The queue the records come from (for `ChangeMessageVisibility`).
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    /// Record and marker lifetimes, the lease, and the age bounds on webhooks and mirrors.
    pub limits: Limits,
    pub rules: Arc<RuleSet>,
    pub keap: KeapSettings,
}

/// The processor and the control of the records it is given (visibility, dead letters):
/// what each invocation's batch runs through.
pub struct ProcessorService {
    pub processor: Arc<Processor>,
    pub control: Arc<dyn RecordControl>,
}

impl ProcessorSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let days = |name, default, range| -> Result<Option<Duration>, ConfigError> {
            Ok(match vars.number(name, default, range)? {
                0 => None,
                days => Some(Duration::from_secs(days * DAY)),
            })
        };
        let idempotency_table = vars.required(
            IDEMPOTENCY_TABLE,
            "set it to the DynamoDB table of idempotency records",
        )?;
        let customers_table = vars.required(
            CUSTOMERS_TABLE,
            "set it to the DynamoDB table of the identity map (Chargify customer → Keap contact)",
        )?;
        let queue_url = vars.fifo_queue_url(
            QUEUE_URL,
            "set it to the URL of the SQS FIFO queue the processor reads",
            "",
        )?;
        let dead_letter_queue_url = vars.fifo_queue_url(
            DEAD_LETTER_QUEUE_URL,
            "set it to the URL of the FIFO dead-letter queue for webhooks that cannot be applied",
            "",
        )?;
        let limits = Limits {
            record_ttl: Duration::from_secs(vars.number(RECORD_TTL_DAYS, 35, 1..=365)? * DAY),
            max_lease: Duration::from_secs(vars.number(MAX_LEASE_SECONDS, 900, 10..=900)?),
            // SQS keeps a message 14 days: the budget must end before the queue drops it.
            max_webhook_age: Duration::from_secs(
                vars.number(MAX_WEBHOOK_AGE_DAYS, 4, 1..=13)? * DAY,
            ),
            mirror_max_age: days(MIRROR_MAX_AGE_DAYS, 90, 0..=3650)?,
            // Unset or 0: no bound (the stack sets it; see Limits::max_event_age).
            max_event_age: days(MAX_EVENT_AGE_DAYS, 0, 0..=3650)?,
            seen_marker_ttl: Duration::from_secs(
                vars.number(SEEN_MARKER_DAYS, 400, 1..=3650)? * DAY,
            ),
            ..Limits::default()
        };
        Ok(Self {
            idempotency_table,
            customers_table,
            queue_url,
            dead_letter_queue_url,
            limits,
            rules: Arc::new(RuleSet::from_vars(vars)?),
            keap: KeapSettings::from_vars(vars)?,
        })
    }

    /// The processor over DynamoDB and Keap, and the record control over SQS. The Keap
    /// secrets are read here, once; without Keap credentials the function cannot work.
    pub async fn build(
        &self,
        aws: &aws_config::SdkConfig,
    ) -> Result<ProcessorService, ConfigError> {
        let crm = self
            .keap
            .build(aws)
            .await?
            .ok_or(ConfigError::NoKeapCredentials)?;
        let table = |name: &str| Table::from_config(aws, name);
        let processor = Processor {
            rules: Arc::clone(&self.rules),
            crm: Arc::new(crm),
            directory: Arc::new(Directory::new(Arc::new(DynamoDbNameLocks::new(table(
                &self.customers_table,
            ))))),
            idempotency: Arc::new(DynamoDbIdempotencyStore::new(table(
                &self.idempotency_table,
            ))),
            customers: Arc::new(DynamoDbCustomerStore::new(table(&self.customers_table))),
            settings: self.limits.clone(),
        };
        let control = SqsRecordControl::new(
            aws_sdk_sqs::Client::new(aws),
            &self.queue_url,
            &self.dead_letter_queue_url,
        );
        Ok(ProcessorService {
            processor: Arc::new(processor),
            control: Arc::new(control),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<ProcessorSettings, ConfigError> {
        ProcessorSettings::from_vars(&Vars::from_pairs(pairs.iter().copied()))
    }

    const BASE: &[(&str, &str)] = &[
        (IDEMPOTENCY_TABLE, "idem"),
        (CUSTOMERS_TABLE, "customers"),
        (QUEUE_URL, "https://sqs.us-east-1.amazonaws.com/1/q.fifo"),
        (
            DEAD_LETTER_QUEUE_URL,
            "https://sqs.us-east-1.amazonaws.com/1/dlq.fifo",
        ),
    ];

    #[test]
    fn defaults_and_errors_name_the_variable() {
        let ok = settings(BASE).expect("valid");
        assert_eq!(ok.limits.record_ttl, Duration::from_secs(35 * 24 * 3600));
        assert_eq!(ok.limits.max_lease, Duration::from_secs(900));
        let err = settings(&BASE[1..]).unwrap_err();
        assert!(err.to_string().contains(IDEMPOTENCY_TABLE), "{err}");
        let mut bad = BASE.to_vec();
        bad.push((RECORD_TTL_DAYS, "forever"));
        assert!(settings(&bad)
            .unwrap_err()
            .to_string()
            .contains(RECORD_TTL_DAYS));
        let mut bad = BASE.to_vec();
        bad[3] = (
            DEAD_LETTER_QUEUE_URL,
            "https://sqs.us-east-1.amazonaws.com/1/dlq",
        );
        assert!(settings(&bad).unwrap_err().to_string().contains(".fifo"));
    }

    #[test]
    fn limits_keep_their_defaults_ranges_and_zero_meaning_no_bound() {
        let ok = settings(BASE).expect("valid");
        assert_eq!(ok.limits.max_webhook_age, Duration::from_secs(4 * DAY));
        assert_eq!(
            ok.limits.mirror_max_age,
            Some(Duration::from_secs(90 * DAY))
        );
        assert_eq!(ok.limits.max_event_age, None);
        assert_eq!(ok.limits.seen_marker_ttl, Duration::from_secs(400 * DAY));
        assert_eq!(
            ok.limits.group_concurrency,
            Limits::default().group_concurrency
        );
        let mut set = BASE.to_vec();
        set.extend([(MIRROR_MAX_AGE_DAYS, "0"), (MAX_EVENT_AGE_DAYS, "365")]);
        let ok = settings(&set).expect("valid");
        assert_eq!(ok.limits.mirror_max_age, None);
        assert_eq!(
            ok.limits.max_event_age,
            Some(Duration::from_secs(365 * DAY))
        );
        for (name, refused) in [
            (MAX_WEBHOOK_AGE_DAYS, "14"),
            (MAX_LEASE_SECONDS, "9"),
            (SEEN_MARKER_DAYS, "0"),
        ] {
            let mut bad = BASE.to_vec();
            bad.push((name, refused));
            let err = settings(&bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{name} is invalid")), "{err}");
        }
    }

    #[test]
    fn the_rules_and_the_keap_settings_are_read_with_the_rest() {
        let mut set = BASE.to_vec();
        set.push(("RULES_TOML", "version = "));
        let err = settings(&set).unwrap_err().to_string();
        assert!(err.starts_with("rules file is not valid"), "{err}");
        let mut set = BASE.to_vec();
        set.push(("KEAP_API_KEY", "k"));
        let ok = settings(&set).expect("valid");
        assert!(matches!(
            ok.keap.auth,
            crate::keap::settings::KeapAuth::ApiKey(_)
        ));
    }
}

//! Configuration from the environment, checked once at cold start.
//!
//! A function that cannot work (no queue, no keys) must fail its first invocation loudly with
//! a message that says what to set, rather than answer Chargify with errors one by one.

use crate::chargify::signature::KeySetError;
use crate::chargify::SharedKeySet;
use std::time::Duration;

pub const QUEUE_URL: &str = "QUEUE_URL";
pub const CHARGIFY_SHARED_KEYS: &str = "CHARGIFY_SHARED_KEYS";
pub const CHARGIFY_SHARED_KEYS_SECRET_ARN: &str = "CHARGIFY_SHARED_KEYS_SECRET_ARN";
pub const SQS_TIMEOUT_MS: &str = "SQS_TIMEOUT_MS";

/// Default budget for one SendMessage, retries included. Chargify gives up after about 15 s;
/// this leaves the function time to answer 503 itself, which Chargify logs more usefully.
pub const DEFAULT_SQS_TIMEOUT: Duration = Duration::from_secs(8);

/// Where the shared keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `CHARGIFY_SHARED_KEYS`: the key specification itself (local and development).
    Inline(String),
    /// `CHARGIFY_SHARED_KEYS_SECRET_ARN`: a Secrets Manager secret holding the specification.
    Secret { arn: String },
}

impl std::fmt::Debug for KeySource {
    // The inline form is key material: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
            Self::Secret { arn } => f.debug_struct("Secret").field("arn", arn).finish(),
        }
    }
}

/// Settings of the ingest function.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub queue_url: String,
    pub keys: KeySource,
    pub sqs_timeout: Duration,
}

/// A setting that is missing or wrong. The message names the variable and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set; {1}")]
    Missing(&'static str, &'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("set only one of CHARGIFY_SHARED_KEYS and CHARGIFY_SHARED_KEYS_SECRET_ARN, not both")]
    TwoKeySources,
    #[error("shared keys: {0}")]
    Keys(#[from] KeySetError),
    #[error("could not read secret {arn} from Secrets Manager: {detail}; check the ARN and the function's secretsmanager:GetSecretValue permission")]
    SecretUnreadable { arn: String, detail: String },
    #[error("secret {arn} has no value yet (the stack creates its secrets empty); put it with `aws secretsmanager put-secret-value --secret-id {arn} --secret-string '…'` (docs/deploy.md), then start the function again")]
    SecretHasNoValue { arn: String },
    #[error("{set} are all set, but they choose different ways to do one thing; {fix}")]
    Conflict { set: String, fix: &'static str },
    #[error("could not set up the Keap client: {0}")]
    Keap(#[from] crate::keap::KeapError),
}

impl IngestSettings {
    /// Reads the settings through `var` (the process environment in production, a map in tests).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let queue_url = set(QUEUE_URL).ok_or(ConfigError::Missing(
            QUEUE_URL,
            "set it to the URL of the SQS FIFO queue webhooks go to",
        ))?;
        if !queue_url.ends_with(".fifo") {
            return Err(ConfigError::Invalid {
                name: QUEUE_URL,
                reason: format!("`{queue_url}` is not a FIFO queue URL (it must end in .fifo); ordering and deduplication depend on FIFO"),
            });
        }
        let keys = match (set(CHARGIFY_SHARED_KEYS), set(CHARGIFY_SHARED_KEYS_SECRET_ARN)) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoKeySources),
            (Some(spec), None) => KeySource::Inline(spec),
            (None, Some(arn)) => KeySource::Secret { arn },
            (None, None) => {
                return Err(ConfigError::Missing(
                    CHARGIFY_SHARED_KEYS_SECRET_ARN,
                    "set it to the ARN of the secret holding the Chargify Site Shared Key(s), or set CHARGIFY_SHARED_KEYS locally",
                ))
            }
        };
        let sqs_timeout = match set(SQS_TIMEOUT_MS) {
            None => DEFAULT_SQS_TIMEOUT,
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) if (100..=14_000).contains(&ms) => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError::Invalid {
                        name: SQS_TIMEOUT_MS,
                        reason: format!("`{ms}` is not a number of milliseconds between 100 and 14000 (Chargify waits about 15 s)"),
                    })
                }
            },
        };
        // An inline specification is checked now, so a typo fails the cold start.
        if let KeySource::Inline(spec) = &keys {
            SharedKeySet::parse(spec)?;
        }
        Ok(Self {
            queue_url,
            keys,
            sqs_timeout,
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// Loads the key set, reading Secrets Manager once when the keys live there.
pub async fn load_shared_keys(
    source: &KeySource,
    aws: &aws_config::SdkConfig,
) -> Result<SharedKeySet, ConfigError> {
    match source {
        KeySource::Inline(spec) => Ok(SharedKeySet::parse(spec)?),
        KeySource::Secret { arn } => Ok(SharedKeySet::parse(&read_secret(arn, aws).await?)?),
    }
}

/// The text of a Secrets Manager secret, read once (at cold start).
pub async fn read_secret(arn: &str, aws: &aws_config::SdkConfig) -> Result<String, ConfigError> {
    let client = aws_sdk_secretsmanager::Client::new(aws);
    let unreadable = |detail: String| ConfigError::SecretUnreadable {
        arn: arn.to_owned(),
        detail,
    };
    let output = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| {
            // A secret created without a value has no AWSCURRENT version: Secrets Manager
            // answers ResourceNotFound "…can't find the specified secret value…".
            let no_value = e.as_service_error().is_some_and(|service| {
                service.is_resource_not_found_exception()
                    && service
                        .meta()
                        .message()
                        .is_some_and(|m| m.contains("secret value"))
            });
            if no_value {
                return ConfigError::SecretHasNoValue {
                    arn: arn.to_owned(),
                };
            }
            unreadable(aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string())
        })?;
    match output.secret_string() {
        Some(text) if !text.trim().is_empty() => Ok(text.to_owned()),
        Some(_) => Err(ConfigError::SecretHasNoValue {
            arn: arn.to_owned(),
        }),
        None => Err(unreadable(
            "the secret has no SecretString (binary secrets are not supported)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<IngestSettings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        IngestSettings::from_lookup(|name| map.get(name).cloned())
    }

    const FIFO: &str = "http://127.0.0.1:5000/123456789012/webhooks.fifo";

    #[test]
    fn reads_a_complete_configuration() {
        let s = settings(&[(QUEUE_URL, FIFO), (CHARGIFY_SHARED_KEYS, "a,b")]).expect("valid");
        assert_eq!(s.queue_url, FIFO);
        assert_eq!(s.keys, KeySource::Inline("a,b".into()));
        assert_eq!(s.sqs_timeout, DEFAULT_SQS_TIMEOUT);
        let s = settings(&[
            (QUEUE_URL, FIFO),
            (CHARGIFY_SHARED_KEYS_SECRET_ARN, "arn:x"),
            (SQS_TIMEOUT_MS, "2500"),
        ])
        .expect("valid");
        assert_eq!(
            s.keys,
            KeySource::Secret {
                arn: "arn:x".into()
            }
        );
        assert_eq!(s.sqs_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn each_mistake_names_its_fix() {
        let msg = |vars: &[(&str, &str)]| {
            settings(vars)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(msg(&[(CHARGIFY_SHARED_KEYS, "a")]).starts_with("QUEUE_URL is not set"));
        assert!(
            msg(&[(QUEUE_URL, "https://sqs/q"), (CHARGIFY_SHARED_KEYS, "a")])
                .contains("must end in .fifo")
        );
        assert!(msg(&[(QUEUE_URL, FIFO)]).contains("CHARGIFY_SHARED_KEYS"));
        assert!(msg(&[
            (QUEUE_URL, FIFO),
            (CHARGIFY_SHARED_KEYS, "a"),
            (CHARGIFY_SHARED_KEYS_SECRET_ARN, "arn")
        ])
        .contains("only one"));
        assert!(msg(&[(QUEUE_URL, FIFO), (CHARGIFY_SHARED_KEYS, "acme=")]).contains("contains `=`"));
        assert!(msg(&[
            (QUEUE_URL, FIFO),
            (CHARGIFY_SHARED_KEYS, "a"),
            (SQS_TIMEOUT_MS, "60000")
        ])
        .contains("SQS_TIMEOUT_MS"));
    }

    #[test]
    fn debug_never_prints_inline_keys() {
        let s = settings(&[(QUEUE_URL, FIFO), (CHARGIFY_SHARED_KEYS, "hunter2-secret")])
            .expect("valid");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}

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

/// Settings of the processor function (the Keap credentials are read by
/// [`crate::keap::settings`], the rules by [`crate::rules::RuleSet::from_env`]).
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub idempotency_table: String,
    pub customers_table: String,
    /// The queue the records come from (for `ChangeMessageVisibility`).
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    pub record_ttl: Duration,
    pub max_lease: Duration,
    /// A record still failing this long after ingest received it is dead-lettered.
    pub max_webhook_age: Duration,
    /// A contact's tags are read back from Keap when last read longer ago; `None`: never.
    pub mirror_max_age: Option<Duration>,
    /// Webhooks older than this by their event time are not applied; `None`: no bound.
    pub max_event_age: Option<Duration>,
    /// How long a seen marker of each webhook id is kept.
    pub seen_marker_ttl: Duration,
}

impl ProcessorConfig {
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let fifo = |name: &'static str, why: &'static str| -> Result<String, ConfigError> {
            let url = set(name).ok_or(ConfigError::Missing(name, why))?;
            if !url.ends_with(".fifo") {
                return Err(ConfigError::Invalid {
                    name,
                    reason: format!("`{url}` is not a FIFO queue URL (it must end in .fifo)"),
                });
            }
            Ok(url)
        };
        let number = |name: &'static str, default: u64, range: std::ops::RangeInclusive<u64>| {
            match set(name) {
                None => Ok(default),
                Some(text) => match text.parse::<u64>() {
                    Ok(n) if range.contains(&n) => Ok(n),
                    _ => Err(ConfigError::Invalid {
                        name,
                        reason: format!(
                            "`{text}` is not a whole number between {} and {}",
                            range.start(),
                            range.end()
                        ),
                    }),
                },
            }
        };
        Ok(Self {
            idempotency_table: set(IDEMPOTENCY_TABLE).ok_or(ConfigError::Missing(
                IDEMPOTENCY_TABLE,
                "set it to the DynamoDB table of idempotency records",
            ))?,
            customers_table: set(CUSTOMERS_TABLE).ok_or(ConfigError::Missing(
                CUSTOMERS_TABLE,
                "set it to the DynamoDB table of the identity map (Chargify customer → Keap contact)",
            ))?,
            queue_url: fifo(QUEUE_URL, "set it to the URL of the SQS FIFO queue the processor reads")?,
            dead_letter_queue_url: fifo(
                DEAD_LETTER_QUEUE_URL,
                "set it to the URL of the FIFO dead-letter queue for webhooks that cannot be applied",
            )?,
            record_ttl: Duration::from_secs(number(RECORD_TTL_DAYS, 35, 1..=365)? * 24 * 3600),
            max_lease: Duration::from_secs(number(MAX_LEASE_SECONDS, 900, 10..=900)?),
            // SQS keeps a message 14 days: the budget must end before the queue drops it.
            max_webhook_age: Duration::from_secs(number(MAX_WEBHOOK_AGE_DAYS, 4, 1..=13)? * DAY),
            mirror_max_age: match number(MIRROR_MAX_AGE_DAYS, 90, 0..=3650)? {
                0 => None,
                days => Some(Duration::from_secs(days * DAY)),
            },
            // Unset or 0: no bound (the stack sets it; see ProcessorSettings::max_event_age).
            max_event_age: match number(MAX_EVENT_AGE_DAYS, 0, 0..=3650)? {
                0 => None,
                days => Some(Duration::from_secs(days * DAY)),
            },
            seen_marker_ttl: Duration::from_secs(number(SEEN_MARKER_DAYS, 400, 1..=3650)? * DAY),
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// Test support: a `from_lookup` variable source over `(name, value)` pairs.
#[cfg(test)]
pub(crate) fn lookup_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

#[cfg(test)]
mod processor_config_tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<ProcessorConfig, ConfigError> {
        ProcessorConfig::from_lookup(lookup_of(pairs))
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
        let ok = config(BASE).expect("valid");
        assert_eq!(ok.record_ttl, Duration::from_secs(35 * 24 * 3600));
        assert_eq!(ok.max_lease, Duration::from_secs(900));
        let err = config(&BASE[1..]).unwrap_err();
        assert!(err.to_string().contains(IDEMPOTENCY_TABLE), "{err}");
        let mut bad = BASE.to_vec();
        bad.push((RECORD_TTL_DAYS, "forever"));
        assert!(config(&bad)
            .unwrap_err()
            .to_string()
            .contains(RECORD_TTL_DAYS));
        let mut bad = BASE.to_vec();
        bad[3] = (
            DEAD_LETTER_QUEUE_URL,
            "https://sqs.us-east-1.amazonaws.com/1/dlq",
        );
        assert!(config(&bad).unwrap_err().to_string().contains(".fifo"));
    }
}

//! The ingest function's settings, and its service over SQS.

use super::{ConfigError, Secret, Vars};
use crate::chargify::SharedKeySet;
use crate::ingest::IngestService;
use crate::queue::SqsWebhookQueue;
use std::time::Duration;

pub const QUEUE_URL: &str = "QUEUE_URL";
pub const CHARGIFY_SHARED_KEYS: &str = "CHARGIFY_SHARED_KEYS";
pub const CHARGIFY_SHARED_KEYS_SECRET_ARN: &str = "CHARGIFY_SHARED_KEYS_SECRET_ARN";
pub const SQS_TIMEOUT_MS: &str = "SQS_TIMEOUT_MS";

/// Default budget for one SendMessage, retries included. Chargify gives up after about 15 s;
/// this leaves the function time to answer 503 itself, which Chargify logs more usefully.
pub const DEFAULT_SQS_TIMEOUT: Duration = Duration::from_secs(8);

/// Settings of the ingest function (the reconciler reads the same: it verifies and queues
/// webhooks as ingest does).
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub queue_url: String,
    /// The key specification (`CHARGIFY_SHARED_KEYS`) or the secret holding it
    /// (`CHARGIFY_SHARED_KEYS_SECRET_ARN`).
    pub keys: Secret,
    pub sqs_timeout: Duration,
}

impl IngestSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let queue_url = vars.fifo_queue_url(
            QUEUE_URL,
            "set it to the URL of the SQS FIFO queue webhooks go to",
            "; ordering and deduplication depend on FIFO",
        )?;
        let keys = match vars.secret(CHARGIFY_SHARED_KEYS, CHARGIFY_SHARED_KEYS_SECRET_ARN) {
            Ok(Some(keys)) => keys,
            // This pair had its own message before the general one existed; it stays word
            // for word.
            Err(ConfigError::Conflict { .. }) => return Err(ConfigError::TwoKeySources),
            Err(other) => return Err(other),
            Ok(None) => {
                return Err(ConfigError::Missing(
                    CHARGIFY_SHARED_KEYS_SECRET_ARN,
                    "set it to the ARN of the secret holding the Chargify Site Shared Key(s), or set CHARGIFY_SHARED_KEYS locally",
                ))
            }
        };
        let sqs_timeout = vars
            .bounded(SQS_TIMEOUT_MS, &(100..=14_000), |ms| {
                format!("`{ms}` is not a number of milliseconds between 100 and 14000 (Chargify waits about 15 s)")
            })?
            .map_or(DEFAULT_SQS_TIMEOUT, Duration::from_millis);
        // An inline specification is checked now, so a typo fails the cold start.
        if let Secret::Inline(spec) = &keys {
            SharedKeySet::parse(spec)?;
        }
        Ok(Self {
            queue_url,
            keys,
            sqs_timeout,
        })
    }

    /// The ingest service over the SQS queue, with the keys read (Secrets Manager once,
    /// when they live there).
    pub async fn build(
        &self,
        aws: &aws_config::SdkConfig,
    ) -> Result<IngestService<SqsWebhookQueue>, ConfigError> {
        let keys = load_shared_keys(&self.keys, aws).await?;
        // Which scope each key has (`acme#0`: bound to site acme; `*#0`: any site), never the
        // key: a key read as site-bound by mistake shows here.
        let labels: Vec<String> = keys.keys().iter().map(|k| k.label()).collect();
        tracing::info!(
            keys = keys.keys().len(),
            key_scopes = labels.join(",").as_str(),
            queue_url = self.queue_url.as_str(),
            "ingest ready"
        );
        Ok(IngestService::new(keys, self.queue(aws)))
    }

    /// The queue webhooks go to.
    pub fn queue(&self, aws: &aws_config::SdkConfig) -> SqsWebhookQueue {
        SqsWebhookQueue::new(aws_sdk_sqs::Client::new(aws), self.queue_url.clone())
    }
}

/// Loads the key set, reading Secrets Manager once when the keys live there.
pub async fn load_shared_keys(
    source: &Secret,
    aws: &aws_config::SdkConfig,
) -> Result<SharedKeySet, ConfigError> {
    let spec = source.read(aws, |_, text| Ok(text)).await?;
    Ok(SharedKeySet::parse(&spec)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<IngestSettings, ConfigError> {
        IngestSettings::from_vars(&Vars::from_pairs(vars.iter().copied()))
    }

    const FIFO: &str = "http://127.0.0.1:5000/123456789012/webhooks.fifo";

    #[test]
    fn reads_a_complete_configuration() {
        let s = settings(&[(QUEUE_URL, FIFO), (CHARGIFY_SHARED_KEYS, "a,b")]).expect("valid");
        assert_eq!(s.queue_url, FIFO);
        assert_eq!(s.keys, Secret::Inline("a,b".into()));
        assert_eq!(s.sqs_timeout, DEFAULT_SQS_TIMEOUT);
        let s = settings(&[
            (QUEUE_URL, FIFO),
            (CHARGIFY_SHARED_KEYS_SECRET_ARN, "arn:x"),
            (SQS_TIMEOUT_MS, "2500"),
        ])
        .expect("valid");
        assert_eq!(s.keys, Secret::Arn("arn:x".into()));
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

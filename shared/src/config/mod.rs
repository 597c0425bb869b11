//! Configuration from the environment, checked once at cold start.
//!
//! A function that cannot work (no queue, no keys) must fail its first invocation loudly with
//! a message that says what to set, rather than answer Chargify with errors one by one.
//!
//! Every variable is read through [`Vars`] (the process environment, or a map in tests), and
//! every secret is a [`Secret`]. Each function has its settings, read and checked by
//! `from_env` (or `from_vars` over a map), and a `build` that wires its adapters over AWS:
//! [`IngestSettings`], [`ProcessorSettings`], [`ReconcilerSettings`]. The Lambda entry points
//! and the `cks` commands that run the same services call these same two.

mod ingest;
mod processor;
mod reconciler;
mod secret;
mod vars;

pub use ingest::{
    load_shared_keys, IngestSettings, CHARGIFY_SHARED_KEYS, CHARGIFY_SHARED_KEYS_SECRET_ARN,
    DEFAULT_SQS_TIMEOUT, QUEUE_URL, SQS_TIMEOUT_MS,
};
pub use processor::{
    ProcessorService, ProcessorSettings, CUSTOMERS_TABLE, DEAD_LETTER_QUEUE_URL, IDEMPOTENCY_TABLE,
    MAX_EVENT_AGE_DAYS, MAX_LEASE_SECONDS, MAX_WEBHOOK_AGE_DAYS, MIRROR_MAX_AGE_DAYS,
    RECORD_TTL_DAYS, SEEN_MARKER_DAYS,
};
pub use reconciler::{
    ReconcilerSettings, RECONCILE_MAX_PAGES, RECONCILE_OVERLAP_DAYS, RECONCILE_REPLAY_UNVERIFIED,
};
pub use secret::Secret;
pub use vars::Vars;

use crate::chargify::signature::KeySetError;

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
    Conflict { set: String, fix: String },
    #[error("could not set up the Keap client: {0}")]
    Keap(#[from] crate::keap::KeapError),
    #[error(transparent)]
    Rules(#[from] crate::rules::RulesError),
    #[error("no Keap credentials: set KEAP_API_KEY_SECRET_ARN (or KEAP_API_KEY), or the OAuth variables (docs/keap-auth.md)")]
    NoKeapCredentials,
}

//! Operator commands against a deployed stack: `status`, `replay`, `dlq list|redrive`,
//! `forget` (docs/operations.md, "Operate: status, replay, dead letters, forget"). The
//! decisions are pure functions in `shared::replay` and `shared::forget`; this module and its
//! children make the AWS calls, one module per concept: [`stack`] finds the resources,
//! [`records`] reads idempotency records, [`status`], [`replay`], [`dlq`] and [`forget`] are
//! the commands, [`progress`] draws the bars.

pub mod dlq;
pub mod forget;
pub mod progress;
pub mod reconcile;
mod records;
pub mod replay;
pub mod stack;
pub mod status;

use shared::idempotency::{IdempotencyKey, StoreError};
use shared::queue::QueueError;
use shared::replay::{BadSince, Refusal};

/// Where the deployed resources are: the stack's outputs, unless given one by one.
#[derive(clap::Args, Debug, Clone)]
pub struct StackArgs {
    /// CloudFormation stack whose outputs name the queue, the dead-letter queue and the
    /// idempotency table.
    #[arg(long, env = "CKS_STACK", default_value = "chargify-keap-sync")]
    pub stack: String,
    /// The main FIFO queue (instead of the stack's `WebhookQueueUrl` output).
    #[arg(long, value_name = "URL")]
    pub queue_url: Option<String>,
    /// The dead-letter FIFO queue (instead of the stack's `DeadLetterQueueUrl` output).
    #[arg(long, value_name = "URL")]
    pub dead_letter_queue_url: Option<String>,
    /// The idempotency table (instead of the stack's `IdempotencyTableName` output).
    #[arg(long, value_name = "NAME")]
    pub idempotency_table: Option<String>,
}

/// Which webhook: `--site` and the id, or `site#id` in one.
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// The Chargify site subdomain of the webhook. Without it, the table is scanned for the id
    /// (and an id found on two sites asks for it).
    #[arg(long, env = "CKS_SITE")]
    pub site: Option<String>,
}

/// One line each, saying what to set or do.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("no AWS credentials found ({detail}); set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (run `aws sso login` for an SSO profile)")]
    NoCredentials { detail: String },
    #[error("stack {stack} not found in region {region}; set --stack (or CKS_STACK) and AWS_REGION, or pass the resources the command needs as flags (--queue-url, --dead-letter-queue-url, --idempotency-table, --customers-table)")]
    StackNotFound { stack: String, region: String },
    #[error(
        "stack {stack} has no output {output}; deploy the current template.yaml, or pass {flag}"
    )]
    OutputMissing {
        stack: String,
        output: &'static str,
        flag: &'static str,
    },
    #[error("cannot read stack {stack} ({detail}); check AWS_REGION and the permission cloudformation:DescribeStacks, or pass the resources as flags")]
    Stack { stack: String, detail: String },
    #[error("no idempotency record for webhook {0} (never processed, ignored by the rules, or expired); `cks dlq list` shows dead letters that never started one")]
    NotFound(String),
    #[error("webhook id {id} is on several sites ({sites}); pass --site")]
    Ambiguous { id: String, sites: String },
    #[error("webhook {key} not replayed: {refusal}")]
    Refused { key: String, refusal: Refusal },
    #[error("webhook {key} changed while it was being replayed (it is no longer completed); run the command again")]
    Raced { key: String },
    #[error("webhook {key}: its stored envelope is unreadable ({detail})")]
    BadEnvelope { key: String, detail: String },
    #[error("idempotency table {table}: {source}")]
    Store { table: String, source: StoreError },
    #[error("queue {url}: {source}")]
    Queue { url: String, source: QueueError },
    #[error("queue {url}: {detail}; check the URL, AWS_REGION and the IAM policy")]
    Sqs { url: String, detail: String },
    #[error(transparent)]
    Since(#[from] BadSince),
    #[error("{failed} of {total} could not be sent; see the lines above and run the command again (resends are safe)")]
    Incomplete { failed: usize, total: usize },
}

/// The `site#id` text of a key, as operators type it.
pub fn key_text(key: &IdempotencyKey) -> String {
    key.storage_key()
}

/// A field of a JSON view as text output prints it: strings bare, absent as `-`.
pub fn field(view: &serde_json::Value, name: &str) -> String {
    match &view[name] {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A time as RFC 3339, for output.
pub fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// Bound on each AWS call of the commands.
const AWS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A run's id, in every deduplication id the run sends (see `shared::replay`).
pub fn run_id() -> String {
    shared::idempotency::new_token()[..12].to_owned()
}

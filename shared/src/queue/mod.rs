//! The queue port: where ingest hands a verified webhook over to the processor.

mod memory;
mod sqs;
mod sqs_control;

pub use memory::{InMemoryQueue, InMemoryRecordControl};
pub use sqs::SqsWebhookQueue;
pub use sqs_control::{SqsRecordControl, MAX_FAILURE_REASON_BYTES, MAX_VISIBILITY_DELAY};

/// Time kept back from SQS's 12-hour limit for what passed between SQS handing a record out
/// and the batch starting (the receive, the invocation's start).
pub const RECEIVE_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// The longest a received record may be hidden now: SQS refuses a visibility timeout that
/// ends more than 12 hours after the receive, so the limit is what is left of those 12 hours
/// (`since_receive` having passed), less [`RECEIVE_MARGIN`]. Longer delays are clamped, never
/// dropped: the record comes back early and is hidden again.
pub fn clamp_visibility(
    delay: std::time::Duration,
    since_receive: std::time::Duration,
) -> std::time::Duration {
    delay.min(MAX_VISIBILITY_DELAY.saturating_sub(since_receive + RECEIVE_MARGIN))
}

use async_trait::async_trait;

/// One message for a FIFO queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    pub group_id: String,
    pub deduplication_id: String,
    pub body: String,
    /// Small string attributes (event key, envelope version) a consumer can read or filter
    /// on without parsing the body.
    pub attributes: Vec<(String, String)>,
}

/// What the queue said when it took a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub message_id: String,
    pub sequence_number: Option<String>,
}

/// The queue did not take the message. Ingest answers 503 for every kind so Chargify retries;
/// the kind only decides what the log says to look at.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "queue unreachable or failing ({detail}); check the queue URL, network and SQS health"
    )]
    Unavailable { detail: String },
    #[error("queue refused the message ({code}: {detail}); check the queue's configuration and IAM policy")]
    Refused { code: String, detail: String },
}

impl QueueError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "queue_unavailable",
            Self::Refused { .. } => "queue_refused",
        }
    }
}

#[async_trait]
pub trait WebhookQueue: Send + Sync {
    /// Resolves only once the queue has durably stored the message.
    async fn send(&self, message: &OutboundMessage) -> Result<SentMessage, QueueError>;
}

/// A shared queue is a queue: the reconciler hands one `Arc<dyn WebhookQueue>` to the ingest
/// service it builds its messages with, whichever adapter the caller chose.
#[async_trait]
impl<T: WebhookQueue + ?Sized> WebhookQueue for std::sync::Arc<T> {
    async fn send(&self, message: &OutboundMessage) -> Result<SentMessage, QueueError> {
        (**self).send(message).await
    }
}

/// A message the processor gives up on, for the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The original message, unchanged, so a redrive replays it as it was.
    pub body: String,
    pub group_id: String,
    pub deduplication_id: String,
    /// Why: shown by `dlq list` and attached as the `FailureReason` attribute.
    pub reason: String,
    /// Stable failure code (`keap_permanent`, `malformed_envelope`, …), attribute `FailureCode`.
    pub code: String,
}

/// What the processor does with a record it cannot finish now.
#[async_trait]
pub trait RecordControl: Send + Sync {
    /// Hides the record for `delay` (SQS `ChangeMessageVisibility`, at most 12 hours), so it
    /// comes back after a Keap throttle or quota reset instead of burning receives.
    async fn retry_later(
        &self,
        receipt_handle: &str,
        delay: std::time::Duration,
    ) -> Result<(), QueueError>;

    /// Moves a message to the dead-letter queue with its reason. The caller then reports the
    /// record as done so it leaves the main queue.
    async fn dead_letter(&self, message: &DeadLetter) -> Result<(), QueueError>;
}

//! The queue port: where ingest hands a verified webhook over to the processor.

mod memory;
mod sqs;

pub use memory::InMemoryQueue;
pub use sqs::SqsWebhookQueue;

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

//! SQS FIFO adapter for the queue port.

use super::{OutboundMessage, QueueError, SentMessage, WebhookQueue};
use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, SdkError};
use aws_sdk_sqs::types::MessageAttributeValue;

#[derive(Debug, Clone)]
pub struct SqsWebhookQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsWebhookQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

#[async_trait]
impl WebhookQueue for SqsWebhookQueue {
    async fn send(&self, message: &OutboundMessage) -> Result<SentMessage, QueueError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_group_id(&message.group_id)
            .message_deduplication_id(&message.deduplication_id)
            .message_body(&message.body);
        for (name, value) in &message.attributes {
            request = request.message_attributes(name, string_attribute(value)?);
        }
        match request.send().await {
            Ok(output) => Ok(SentMessage {
                message_id: output.message_id.unwrap_or_default(),
                sequence_number: output.sequence_number,
            }),
            Err(err) => Err(classify(err)),
        }
    }
}

/// A `String` message attribute.
pub(super) fn string_attribute(value: &str) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| QueueError::Refused {
            code: "InvalidAttribute".into(),
            detail: e.to_string(),
        })
}

/// A service error with a code is a refusal (bad queue, permissions, invalid parameters);
/// anything that never produced an answer (timeouts, connection failures) is unavailability.
pub(super) fn classify<E, R>(err: SdkError<E, R>) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown").to_owned();
            let throttled = matches!(
                code.as_str(),
                "ThrottlingException" | "RequestThrottled" | "ServiceUnavailable" | "InternalError"
            );
            if throttled {
                QueueError::Unavailable { detail }
            } else {
                QueueError::Refused { code, detail }
            }
        }
        _ => QueueError::Unavailable { detail },
    }
}

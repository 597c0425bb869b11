//! SQS adapter for [`RecordControl`]: delays a record on the main FIFO queue and moves one
//! to the dead-letter FIFO queue.
//!
//! IAM: `sqs:ChangeMessageVisibility` on the main queue, `sqs:SendMessage` on the
//! dead-letter queue (plus `kms:GenerateDataKey`/`kms:Decrypt` if it uses a customer key).

use super::sqs::{classify, string_attribute};
use super::{DeadLetter, QueueError, RecordControl};
use async_trait::async_trait;
use std::time::Duration;

/// SQS's longest visibility timeout: 12 hours.
pub const MAX_VISIBILITY_DELAY: Duration = Duration::from_secs(43_200);

/// `FailureReason` keeps this many bytes at most: enough to say why, and small next to the
/// message, whose size limit the attributes count against.
pub const MAX_FAILURE_REASON_BYTES: usize = 1024;

/// SQS refuses empty attribute values; an empty reason or code is sent as this.
const UNSPECIFIED: &str = "unspecified";

#[derive(Debug, Clone)]
pub struct SqsRecordControl {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_queue_url: String,
}

impl SqsRecordControl {
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
        dead_letter_queue_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            dead_letter_queue_url: dead_letter_queue_url.into(),
        }
    }
}

/// Whole seconds for SQS, rounded up (a sub-second delay still hides the message) and
/// clamped to [`MAX_VISIBILITY_DELAY`].
fn visibility_seconds(delay: Duration) -> i32 {
    let rounded_up = delay
        .as_secs()
        .saturating_add(u64::from(delay.subsec_nanos() > 0));
    i32::try_from(rounded_up.min(MAX_VISIBILITY_DELAY.as_secs())).unwrap_or(i32::MAX)
}

fn attribute_text(value: &str, max_bytes: usize) -> &str {
    match &value[..value.floor_char_boundary(max_bytes)] {
        "" => UNSPECIFIED,
        text => text,
    }
}

#[async_trait]
impl RecordControl for SqsRecordControl {
    /// SQS counts the timeout from now, and caps a message's total hidden time at 12 hours
    /// from its receipt; a longer request is refused ([`QueueError::Refused`]).
    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(visibility_seconds(delay))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Same group id (the dead letters of one customer stay in order) and the same
    /// deduplication id (a repeated dead-lettering within SQS's 5-minute window is stored
    /// once), body unchanged so a redrive replays the message as it was.
    async fn dead_letter(&self, message: &DeadLetter) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.dead_letter_queue_url)
            .message_group_id(&message.group_id)
            .message_deduplication_id(&message.deduplication_id)
            .message_body(&message.body)
            .message_attributes(
                "FailureReason",
                string_attribute(attribute_text(&message.reason, MAX_FAILURE_REASON_BYTES))?,
            )
            .message_attributes(
                "FailureCode",
                string_attribute(attribute_text(&message.code, MAX_FAILURE_REASON_BYTES))?,
            )
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_and_stop_at_twelve_hours() {
        assert_eq!(visibility_seconds(Duration::ZERO), 0);
        assert_eq!(visibility_seconds(Duration::from_millis(1)), 1);
        assert_eq!(visibility_seconds(Duration::from_secs(90)), 90);
        assert_eq!(visibility_seconds(Duration::from_secs(86_400)), 43_200);
        assert_eq!(visibility_seconds(Duration::MAX), 43_200);
    }

    #[test]
    fn reasons_are_cut_on_a_character_boundary_and_never_empty() {
        // One ASCII byte first, so the limit falls inside a two-byte 'é'.
        let long = format!("a{}", "é".repeat(MAX_FAILURE_REASON_BYTES));
        let cut = attribute_text(&long, MAX_FAILURE_REASON_BYTES);
        assert_eq!(cut.len(), MAX_FAILURE_REASON_BYTES - 1);
        assert!(long.starts_with(cut));
        assert_eq!(attribute_text("", MAX_FAILURE_REASON_BYTES), UNSPECIFIED);
        assert_eq!(
            attribute_text("keap 400", MAX_FAILURE_REASON_BYTES),
            "keap 400"
        );
    }
}

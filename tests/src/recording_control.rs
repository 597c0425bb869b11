//! A [`RecordControl`] over SQS that remembers every delay the processor asked for, so a test
//! can check it against SQS's limit (and what the failure called for) before skipping the
//! wait by making the record visible again.

use async_trait::async_trait;
use shared::queue::{DeadLetter, QueueError, RecordControl, SqsRecordControl};
use std::sync::Mutex;
use std::time::Duration;

pub struct RecordingControl {
    inner: SqsRecordControl,
    asked: Mutex<Vec<Duration>>,
}

impl RecordingControl {
    pub fn new(inner: SqsRecordControl) -> Self {
        Self {
            inner,
            asked: Mutex::new(Vec::new()),
        }
    }

    /// Every delay asked so far, in order.
    pub fn asked(&self) -> Vec<Duration> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The delays asked since the last call.
    pub fn take(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.asked.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait]
impl RecordControl for RecordingControl {
    async fn retry_later(&self, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(delay);
        self.inner.retry_later(receipt, delay).await
    }

    async fn dead_letter(&self, message: &DeadLetter) -> Result<(), QueueError> {
        self.inner.dead_letter(message).await
    }
}

/// Makes hidden records visible now: the wait they asked for, skipped.
pub async fn show(sqs: &aws_sdk_sqs::Client, queue_url: &str, receipts: &[String]) {
    for receipt in receipts {
        let _ = sqs
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await;
    }
}

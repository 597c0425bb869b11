//! An in-memory FIFO queue with SQS's deduplication rule, for unit tests.

use super::{OutboundMessage, QueueError, SentMessage, WebhookQueue};
use async_trait::async_trait;
use std::sync::Mutex;

/// Keeps every accepted message; a second message with a deduplication id already seen is
/// acknowledged with the first one's id and not stored again, as SQS FIFO does.
#[derive(Debug, Default)]
pub struct InMemoryQueue {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    messages: Vec<(String, OutboundMessage)>,
    fail_with: Option<String>,
}

impl InMemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later `send` fail as an unreachable queue would.
    pub fn fail_sends(&self, detail: &str) {
        self.lock().fail_with = Some(detail.to_owned());
    }

    pub fn messages(&self) -> Vec<OutboundMessage> {
        self.lock()
            .messages
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the data usable for a test.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl WebhookQueue for InMemoryQueue {
    async fn send(&self, message: &OutboundMessage) -> Result<SentMessage, QueueError> {
        let mut state = self.lock();
        if let Some(detail) = &state.fail_with {
            return Err(QueueError::Unavailable {
                detail: detail.clone(),
            });
        }
        if let Some((id, _)) = state
            .messages
            .iter()
            .find(|(_, m)| m.deduplication_id == message.deduplication_id)
        {
            return Ok(SentMessage {
                message_id: id.clone(),
                sequence_number: None,
            });
        }
        let id = format!("mem-{}", state.messages.len() + 1);
        state.messages.push((id.clone(), message.clone()));
        Ok(SentMessage {
            message_id: id,
            sequence_number: None,
        })
    }
}

/// Records what the processor asked of the queue, for unit tests.
#[derive(Debug, Default)]
pub struct InMemoryRecordControl {
    state: Mutex<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    delays: Vec<(String, std::time::Duration)>,
    dead_letters: Vec<super::DeadLetter>,
    fail_with: Option<String>,
}

impl InMemoryRecordControl {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fail_calls(&self, detail: &str) {
        self.lock().fail_with = Some(detail.to_owned());
    }

    pub fn delays(&self) -> Vec<(String, std::time::Duration)> {
        self.lock().delays.clone()
    }

    pub fn dead_letters(&self) -> Vec<super::DeadLetter> {
        self.lock().dead_letters.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self) -> Result<(), QueueError> {
        match &self.lock().fail_with {
            Some(detail) => Err(QueueError::Unavailable {
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl super::RecordControl for InMemoryRecordControl {
    async fn retry_later(
        &self,
        receipt_handle: &str,
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        self.check()?;
        self.lock().delays.push((receipt_handle.to_owned(), delay));
        Ok(())
    }

    async fn dead_letter(&self, message: &super::DeadLetter) -> Result<(), QueueError> {
        self.check()?;
        self.lock().dead_letters.push(message.clone());
        Ok(())
    }
}

//! The queue in SQLite: the [`WebhookQueue`] ingest sends to, the [`RecordControl`] the
//! processor steers records with, and the receive/settle pair the worker loop uses in place
//! of the SQS event source mapping.
//!
//! Same rules as the SQS FIFO queue the Lambdas use:
//! - FIFO per message group: only a group's oldest message can be received, and not while
//!   it is in flight or delayed, so one customer's webhooks are applied in order.
//! - Deduplication id: a message whose id was sent in the last 5 minutes is acknowledged
//!   with the first one's message id and not stored again (SQS's window; later replays are
//!   stopped by the idempotency records instead, exactly as in AWS).
//! - Visibility: a received message is hidden for the visibility timeout; if the process
//!   dies it comes back when that expires. `retry_later` hides it for the delay asked for.
//! - After [`MAX_RECEIVES`] receives a message moves to the dead-letter table
//!   (`max_receives_exceeded`), like the stack's redrive policy.

use super::{now_ms, Db};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use shared::idempotency::new_token;
use shared::processor::BatchRecord;
use shared::queue::{
    DeadLetter, OutboundMessage, QueueError, RecordControl, SentMessage, WebhookQueue,
    MAX_VISIBILITY_DELAY,
};
use std::time::Duration;

/// SQS FIFO's deduplication interval.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Receives before a message is dead-lettered (the stack's `maxReceiveCount`).
pub const MAX_RECEIVES: i64 = 5;

#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
}

/// A dead letter as stored (for tests and inspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeadLetter {
    pub group_id: String,
    pub deduplication_id: String,
    pub reason: String,
    pub code: String,
}

fn unavailable(detail: String) -> QueueError {
    QueueError::Unavailable { detail }
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteQueue {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Takes up to `max` messages, each the oldest of its group and visible now, and hides
    /// them for `visibility`. Messages past [`MAX_RECEIVES`] go to the dead letters instead.
    pub async fn receive(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<BatchRecord>, QueueError> {
        self.db
            .write(move |tx| {
                let now = now_ms();
                let mut heads = tx.prepare(
                    "SELECT m.seq, m.message_id, m.group_id, m.dedup_id, m.body, m.receive_count
                     FROM messages m
                     WHERE m.visible_at_ms <= ?1
                       AND NOT EXISTS (SELECT 1 FROM messages e
                                       WHERE e.group_id = m.group_id AND e.seq < m.seq)
                     ORDER BY m.seq LIMIT ?2",
                )?;
                let rows = heads
                    .query_map(params![now, max as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut records = Vec::new();
                for (seq, message_id, group_id, dedup_id, body, receives) in rows {
                    if receives >= MAX_RECEIVES {
                        tx.execute(
                            "INSERT INTO dead_letters (group_id, dedup_id, body, reason, code, dead_lettered_at_ms)
                             VALUES (?1, ?2, ?3, ?4, 'max_receives_exceeded', ?5)",
                            params![group_id, dedup_id, body,
                                format!("received {receives} times without succeeding"), now],
                        )?;
                        tx.execute("DELETE FROM messages WHERE seq = ?1", params![seq])?;
                        continue;
                    }
                    let receipt = new_token();
                    tx.execute(
                        "UPDATE messages SET visible_at_ms = ?1, receive_count = receive_count + 1,
                         receipt_handle = ?2, delayed = 0 WHERE seq = ?3",
                        params![now.saturating_add(ms(visibility)), receipt, seq],
                    )?;
                    records.push(BatchRecord {
                        message_id: Some(message_id),
                        receipt_handle: Some(receipt),
                        group_id: Some(group_id),
                        deduplication_id: Some(dedup_id),
                        body: Some(body),
                    });
                }
                Ok(records)
            })
            .await
            .map_err(unavailable)
    }

    /// After a batch: deletes the records that succeeded (or were dead-lettered), and makes
    /// the failed ones visible again at once unless `retry_later` chose when.
    pub async fn settle(
        &self,
        records: &[BatchRecord],
        failed: &[String],
    ) -> Result<(), QueueError> {
        let outcomes: Vec<(String, bool)> = records
            .iter()
            .filter_map(|r| {
                let receipt = r.receipt_handle.clone()?;
                let failed = r.message_id.as_ref().is_some_and(|id| failed.contains(id));
                Some((receipt, failed))
            })
            .collect();
        self.db
            .write(move |tx| {
                let now = now_ms();
                for (receipt, failed) in outcomes {
                    if failed {
                        tx.execute(
                            "UPDATE messages SET visible_at_ms = MIN(visible_at_ms, ?1)
                             WHERE receipt_handle = ?2 AND delayed = 0",
                            params![now, receipt],
                        )?;
                    } else {
                        tx.execute(
                            "DELETE FROM messages WHERE receipt_handle = ?1",
                            params![receipt],
                        )?;
                    }
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    /// Messages waiting or in flight.
    pub async fn depth(&self) -> Result<usize, QueueError> {
        self.db
            .write(|tx| {
                tx.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get::<_, i64>(0))
                    .map(|n| n as usize)
            })
            .await
            .map_err(unavailable)
    }

    pub async fn dead_letters(&self) -> Result<Vec<StoredDeadLetter>, QueueError> {
        self.db
            .write(|tx| {
                let mut query = tx.prepare(
                    "SELECT group_id, dedup_id, reason, code FROM dead_letters ORDER BY id",
                )?;
                let rows = query
                    .query_map([], |r| {
                        Ok(StoredDeadLetter {
                            group_id: r.get(0)?,
                            deduplication_id: r.get(1)?,
                            reason: r.get(2)?,
                            code: r.get(3)?,
                        })
                    })?
                    .collect();
                rows
            })
            .await
            .map_err(unavailable)
    }

    /// Every dead letter's row id and body (the envelope), oldest first (`cks forget`).
    pub async fn dead_letter_bodies(&self) -> Result<Vec<(i64, String)>, QueueError> {
        self.db
            .write(|tx| {
                let mut query = tx.prepare("SELECT id, body FROM dead_letters ORDER BY id")?;
                let rows = query
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect();
                rows
            })
            .await
            .map_err(unavailable)
    }

    /// Deletes the dead letters with these row ids, in one transaction; how many there were.
    pub async fn delete_dead_letters(&self, ids: Vec<i64>) -> Result<usize, QueueError> {
        self.db
            .write(move |tx| {
                let mut deleted = 0;
                for id in ids {
                    deleted += tx.execute("DELETE FROM dead_letters WHERE id = ?1", params![id])?;
                }
                Ok(deleted)
            })
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl WebhookQueue for SqliteQueue {
    async fn send(&self, message: &OutboundMessage) -> Result<SentMessage, QueueError> {
        let message = message.clone();
        self.db
            .write(move |tx| {
                let now = now_ms();
                tx.execute(
                    "DELETE FROM dedup WHERE sent_at_ms < ?1",
                    params![now - ms(DEDUP_WINDOW)],
                )?;
                let seen: Option<String> = tx
                    .query_row(
                        "SELECT message_id FROM dedup WHERE dedup_id = ?1",
                        params![message.deduplication_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(message_id) = seen {
                    return Ok(SentMessage {
                        message_id,
                        sequence_number: None,
                    });
                }
                let message_id = new_token();
                tx.execute(
                    "INSERT INTO messages (message_id, group_id, dedup_id, body, sent_at_ms, visible_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    params![message_id, message.group_id, message.deduplication_id, message.body, now],
                )?;
                let seq = tx.last_insert_rowid();
                tx.execute(
                    "INSERT INTO dedup (dedup_id, message_id, sent_at_ms) VALUES (?1, ?2, ?3)",
                    params![message.deduplication_id, message_id, now],
                )?;
                Ok(SentMessage {
                    message_id,
                    sequence_number: Some(seq.to_string()),
                })
            })
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl RecordControl for SqliteQueue {
    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        let receipt = receipt_handle.to_owned();
        let delay = ms(delay.min(MAX_VISIBILITY_DELAY));
        let changed = self
            .db
            .write(move |tx| {
                tx.execute(
                    "UPDATE messages SET visible_at_ms = ?1, delayed = 1 WHERE receipt_handle = ?2",
                    params![now_ms().saturating_add(delay), receipt],
                )
            })
            .await
            .map_err(unavailable)?;
        if changed == 0 {
            return Err(QueueError::Refused {
                code: "ReceiptHandleIsInvalid".into(),
                detail: "the message was deleted or received again since".into(),
            });
        }
        Ok(())
    }

    async fn dead_letter(&self, message: &DeadLetter) -> Result<(), QueueError> {
        let letter = message.clone();
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO dead_letters (group_id, dedup_id, body, reason, code, dead_lettered_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![letter.group_id, letter.deduplication_id, letter.body,
                        letter.reason, letter.code, now_ms()],
                )
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_db;

    fn message(group: &str, dedup: &str) -> OutboundMessage {
        OutboundMessage {
            group_id: group.into(),
            deduplication_id: dedup.into(),
            body: format!("body of {dedup}"),
            attributes: vec![],
        }
    }

    const VISIBILITY: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn one_group_is_served_in_order_and_a_duplicate_is_stored_once() {
        let (_dir, db) = temp_db();
        let queue = SqliteQueue::new(db);
        let first = queue.send(&message("g1", "d1")).await.expect("send");
        let again = queue.send(&message("g1", "d1")).await.expect("send");
        assert_eq!(first.message_id, again.message_id);
        queue.send(&message("g1", "d2")).await.expect("send");
        queue.send(&message("g2", "d3")).await.expect("send");
        assert_eq!(queue.depth().await.unwrap(), 3);

        let batch = queue.receive(10, VISIBILITY).await.expect("receive");
        let dedups: Vec<_> = batch
            .iter()
            .filter_map(|r| r.deduplication_id.clone())
            .collect();
        assert_eq!(dedups, ["d1", "d3"], "group heads only");
        // In flight: nothing of either group is served again.
        assert!(queue.receive(10, VISIBILITY).await.unwrap().is_empty());
        queue.settle(&batch, &[]).await.expect("settle");
        let next = queue.receive(10, VISIBILITY).await.unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].deduplication_id.as_deref(), Some("d2"));
    }

    #[tokio::test]
    async fn a_failed_record_returns_at_once_unless_delayed_and_dead_letters_are_kept() {
        let (_dir, db) = temp_db();
        let queue = SqliteQueue::new(db);
        queue.send(&message("g1", "d1")).await.unwrap();
        queue.send(&message("g2", "d2")).await.unwrap();
        let batch = queue.receive(10, VISIBILITY).await.unwrap();
        let ids: Vec<String> = batch.iter().filter_map(|r| r.message_id.clone()).collect();
        // g1's record asks to wait an hour; g2's simply failed.
        let g1 = batch
            .iter()
            .find(|r| r.group_id.as_deref() == Some("g1"))
            .unwrap();
        queue
            .retry_later(
                g1.receipt_handle.as_deref().unwrap(),
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        queue.settle(&batch, &ids).await.unwrap();
        let again = queue.receive(10, VISIBILITY).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].group_id.as_deref(), Some("g2"));
        // g1's receipt still holds (it was not received again); an unknown one is refused.
        assert!(queue
            .retry_later(g1.receipt_handle.as_deref().unwrap(), Duration::ZERO)
            .await
            .is_ok());
        assert!(queue.retry_later("gone", Duration::ZERO).await.is_err());

        queue
            .dead_letter(&DeadLetter {
                body: "b".into(),
                group_id: "g2".into(),
                deduplication_id: "d2".into(),
                reason: "why".into(),
                code: "keap_permanent".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            queue.dead_letters().await.unwrap()[0].code,
            "keap_permanent"
        );
    }

    #[tokio::test]
    async fn an_unfinished_receive_comes_back_after_the_visibility_timeout_then_dead_letters() {
        let (_dir, db) = temp_db();
        let queue = SqliteQueue::new(db);
        queue.send(&message("g1", "d1")).await.unwrap();
        for _ in 0..MAX_RECEIVES {
            // A zero visibility timeout stands for a worker that died holding the record.
            assert_eq!(queue.receive(10, Duration::ZERO).await.unwrap().len(), 1);
        }
        assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
        let letters = queue.dead_letters().await.unwrap();
        assert_eq!(letters[0].code, "max_receives_exceeded");
        assert_eq!(queue.depth().await.unwrap(), 0);
    }
}

//! The queue in SQLite: the [`WebhookQueue`] ingest sends to, the [`RecordControl`] the
//! processor steers records with, and the receive/settle pair the worker loop uses in place
//! of the SQS event source mapping.
//!
//! Same rules as the SQS FIFO queue the Lambdas use:
//! - FIFO per message group: a receive hands out a group's leading run of visible messages,
//!   oldest first (several of one group may come in one batch, as SQS FIFO does), and never
//!   a message while an earlier one of its group is in flight or delayed, so one customer's
//!   webhooks are applied in order.
//! - Deduplication id: a message whose id was sent in the last 5 minutes is acknowledged
//!   with the first one's message id and not stored again (SQS's window; later replays are
//!   stopped by the idempotency records instead, exactly as in AWS).
//! - Visibility: a received message is hidden for the visibility timeout; if the process
//!   dies it comes back when that expires. `retry_later` hides it for the delay asked for.
//! - After [`MAX_RECEIVES`] receives a message moves to the dead-letter table
//!   (`max_receives_exceeded`), like the stack's redrive policy. The limit is high on
//!   purpose: the processor decides when a failure is permanent and dead-letters it with its
//!   reason; a webhook waiting out Keap's throttles or an outage is received again and again.
//!   The limit only catches a record that crashes its worker every time.

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
pub const MAX_RECEIVES: i64 = 1000;

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

/// How much one receive takes.
#[derive(Debug, Clone, Copy)]
struct Limits {
    groups: usize,
    per_group: usize,
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

    /// Takes the leading run of visible messages of up to `groups` groups, oldest groups
    /// first, at most `per_group` of each, in order, and hides them for `visibility`.
    /// Messages past [`MAX_RECEIVES`] go to the dead letters instead. A worker per run
    /// applies the groups in parallel and each group in order.
    pub async fn receive(
        &self,
        groups: usize,
        per_group: usize,
        visibility: Duration,
    ) -> Result<Vec<Vec<BatchRecord>>, QueueError> {
        let runs = self
            .receive_runs(Limits { groups, per_group }, visibility)
            .await?;
        Ok(runs.into_iter().filter(|run| !run.is_empty()).collect())
    }

    /// The leading runs within `limits`, the groups in the order of their oldest message.
    async fn receive_runs(
        &self,
        limits: Limits,
        visibility: Duration,
    ) -> Result<Vec<Vec<BatchRecord>>, QueueError> {
        let total = limits.groups.saturating_mul(limits.per_group);
        if total == 0 {
            return Ok(Vec::new());
        }
        self.db
            .write(move |tx| {
                let now = now_ms();
                // Visible messages with no hidden (in flight or delayed) message before them
                // in their group: exactly the groups' leading visible runs.
                let mut runs = tx.prepare(
                    "SELECT m.seq, m.message_id, m.group_id, m.dedup_id, m.body, m.receive_count
                     FROM messages m
                     WHERE m.visible_at_ms <= ?1
                       AND NOT EXISTS (SELECT 1 FROM messages e
                                       WHERE e.group_id = m.group_id AND e.seq < m.seq
                                         AND e.visible_at_ms > ?1)
                     ORDER BY m.seq",
                )?;
                let mut rows = runs.query(params![now])?;
                // (run, seq, message id, group, dedup id, body, receives) per message taken.
                type Picked = (usize, i64, String, String, String, String, i64);
                let mut picked: Vec<Picked> = Vec::new();
                // Each run's group and how many messages it has taken.
                let mut taken: Vec<(String, usize)> = Vec::new();
                while picked.len() < total {
                    let Some(row) = rows.next()? else {
                        break;
                    };
                    let group: String = row.get(2)?;
                    let run = match taken.iter().position(|(g, _)| *g == group) {
                        Some(run) if taken[run].1 >= limits.per_group => continue,
                        Some(run) => run,
                        None if taken.len() >= limits.groups => continue,
                        None => {
                            taken.push((group.clone(), 0));
                            taken.len() - 1
                        }
                    };
                    taken[run].1 += 1;
                    picked.push((
                        run,
                        row.get(0)?,
                        row.get(1)?,
                        group,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ));
                }
                drop(rows);
                let mut out: Vec<Vec<BatchRecord>> = vec![Vec::new(); taken.len()];
                for (run, seq, message_id, group_id, dedup_id, body, receives) in picked {
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
                    if let Some(records) = out.get_mut(run) {
                        records.push(BatchRecord {
                            message_id: Some(message_id),
                            receipt_handle: Some(receipt),
                            group_id: Some(group_id),
                            deduplication_id: Some(dedup_id),
                            body: Some(body),
                        });
                    }
                }
                Ok(out)
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

    fn dedups(records: &[BatchRecord]) -> Vec<String> {
        records
            .iter()
            .filter_map(|r| r.deduplication_id.clone())
            .collect()
    }

    /// One receive of every group's run (at most `per_group` each), flattened in run order.
    async fn receive(
        queue: &SqliteQueue,
        per_group: usize,
        visibility: Duration,
    ) -> Vec<BatchRecord> {
        queue
            .receive(usize::MAX, per_group, visibility)
            .await
            .expect("receive")
            .into_iter()
            .flatten()
            .collect()
    }

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

        let head: Vec<BatchRecord> = queue
            .receive(1, 1, VISIBILITY)
            .await
            .expect("receive")
            .concat();
        assert_eq!(dedups(&head), ["d1"], "one group, its oldest message");
        // d1 in flight: g1's d2 is never handed out behind it; g2 is.
        let other = receive(&queue, 10, VISIBILITY).await;
        assert_eq!(dedups(&other), ["d3"]);
        assert!(receive(&queue, 10, VISIBILITY).await.is_empty());
        queue.settle(&head, &[]).await.expect("settle");
        let next = receive(&queue, 10, VISIBILITY).await;
        assert_eq!(dedups(&next), ["d2"]);
    }

    #[tokio::test]
    async fn a_receive_hands_out_each_groups_leading_visible_run_in_order() {
        let (_dir, db) = temp_db();
        let queue = SqliteQueue::new(db);
        for (group, dedup) in [
            ("g1", "a1"),
            ("g2", "b1"),
            ("g1", "a2"),
            ("g1", "a3"),
            ("g2", "b2"),
            ("g3", "c1"),
        ] {
            queue.send(&message(group, dedup)).await.unwrap();
        }
        // As SQS FIFO may: several of one group in one batch, in order.
        let batch = receive(&queue, 10, VISIBILITY).await;
        assert_eq!(dedups(&batch), ["a1", "a2", "a3", "b1", "b2", "c1"]);
        // a1 and b1 succeed, a2 asks to wait an hour, a3 and b2 were held back behind it or
        // just failed: a3 stays behind the delayed a2, b2 is g2's head again.
        let receipt = |dedup: &str| {
            batch
                .iter()
                .find(|r| r.deduplication_id.as_deref() == Some(dedup))
                .and_then(|r| r.receipt_handle.clone())
                .unwrap()
        };
        queue
            .retry_later(&receipt("a2"), Duration::from_secs(3600))
            .await
            .unwrap();
        let failed: Vec<String> = batch
            .iter()
            .filter(|r| {
                ["a2", "a3", "b2", "c1"].contains(&r.deduplication_id.as_deref().unwrap_or(""))
            })
            .filter_map(|r| r.message_id.clone())
            .collect();
        queue.settle(&batch, &failed).await.unwrap();
        let again = receive(&queue, 10, VISIBILITY).await;
        assert_eq!(dedups(&again), ["b2", "c1"], "never a3 while a2 is delayed");
    }

    #[tokio::test]
    async fn groups_can_be_received_as_runs_within_limits() {
        let (_dir, db) = temp_db();
        let queue = SqliteQueue::new(db);
        for (group, dedup) in [
            ("g1", "a1"),
            ("g2", "b1"),
            ("g1", "a2"),
            ("g1", "a3"),
            ("g3", "c1"),
            ("g2", "b2"),
        ] {
            queue.send(&message(group, dedup)).await.unwrap();
        }
        let runs = queue.receive(2, 2, VISIBILITY).await.unwrap();
        let runs: Vec<Vec<String>> = runs.iter().map(|run| dedups(run)).collect();
        assert_eq!(
            runs,
            [vec!["a1", "a2"], vec!["b1", "b2"]],
            "oldest groups first"
        );
        // a3 waits behind a1 and a2 in flight; g3 is free.
        let rest = queue.receive(4, 10, VISIBILITY).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(dedups(&rest[0]), ["c1"]);
    }

    #[tokio::test]
    async fn a_failed_record_returns_at_once_unless_delayed_and_dead_letters_are_kept() {
        let (_dir, db) = temp_db();
        let queue = SqliteQueue::new(db);
        queue.send(&message("g1", "d1")).await.unwrap();
        queue.send(&message("g2", "d2")).await.unwrap();
        let batch = receive(&queue, 10, VISIBILITY).await;
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
        let again = receive(&queue, 10, VISIBILITY).await;
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
        let queue = SqliteQueue::new(db.clone());
        queue.send(&message("g1", "d1")).await.unwrap();
        queue.send(&message("g1", "d2")).await.unwrap();
        // A zero visibility timeout stands for a worker that died holding the record.
        for _ in 0..3 {
            assert_eq!(receive(&queue, 1, Duration::ZERO).await.len(), 1);
        }
        // The high limit is for a record that crashes its worker every time; rather than
        // crash it a thousand times, the test brings its count to one below the limit.
        db.write(|tx| {
            tx.execute(
                "UPDATE messages SET receive_count = ?1 WHERE dedup_id = 'd1'",
                params![MAX_RECEIVES - 1],
            )
        })
        .await
        .unwrap();
        assert_eq!(
            dedups(&receive(&queue, 1, Duration::ZERO).await),
            ["d1"],
            "the last receive"
        );
        // Its next receive dead-letters it; then the next message of its group comes out.
        assert!(receive(&queue, 1, Duration::ZERO).await.is_empty());
        assert_eq!(dedups(&receive(&queue, 1, Duration::ZERO).await), ["d2"]);
        let letters = queue.dead_letters().await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].code, "max_receives_exceeded");
        assert!(
            letters[0].reason.contains("received 1000 times"),
            "{letters:?}"
        );
        assert_eq!(queue.depth().await.unwrap(), 1);
    }
}

//! `cks dlq list` and `cks dlq redrive`: the dead-letter FIFO queue.
//!
//! `list` reads without consuming: it receives with a short visibility timeout, keeps every
//! message in flight until the pass ends (so a second receive hands out the others), then
//! makes them all visible again. `redrive` moves each message to the main queue (send with
//! its group and a fresh deduplication id, then delete), so re-running it after a crash
//! between the two only sends a duplicate, which the processor's idempotency records drop.
//! Both are bounded (`--max`). SQS FIFO hands out a group's later messages only once its
//! earlier ones are deleted or visible again, so a listing of a group with more messages than
//! one receive returns can be short: the approximate total is printed next to it.

use super::stack::Deployed;
use super::{progress, OpsError, StackArgs};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::json;
use shared::queue::{SqsWebhookQueue, WebhookQueue};
use shared::replay::{redrive_message, DeadLetterMessage};
use shared::telemetry::redact_emails;

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// Show the dead letters (webhook, event, failure code and reason, sent time, receive
    /// count) without consuming them.
    List(ListArgs),
    /// Move every dead letter back to the main queue, to be processed again.
    Redrive(RedriveArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print one JSON object per message.
    #[arg(long)]
    pub json: bool,
    /// Read at most this many messages.
    #[arg(long, default_value_t = 1000)]
    pub max: usize,
    #[command(flatten)]
    pub stack: StackArgs,
}

#[derive(clap::Args, Debug)]
pub struct RedriveArgs {
    /// Only list what would be moved (consumes nothing).
    #[arg(long)]
    pub dry_run: bool,
    /// Move at most this many messages.
    #[arg(long, default_value_t = 10_000)]
    pub max: usize,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// How long `list` hides what it read: long enough for one pass, short enough that messages
/// come back by themselves if the command dies before making them visible again.
const LIST_VISIBILITY_SECS: i32 = 30;
/// How long `redrive` hides a message between its receive and its delete.
const REDRIVE_VISIBILITY_SECS: i32 = 60;
/// A receive that finds nothing this many times in a row ends the pass (short receives can
/// miss messages on real SQS, which samples its servers).
const EMPTY_RECEIVES: usize = 2;

/// A received dead letter and the handle to make it visible again or delete it.
pub(super) struct Received {
    pub(super) letter: DeadLetterMessage,
    pub(super) receipt: String,
    sent_at_ms: Option<i64>,
    receive_count: Option<u32>,
}

/// One pass over the queue: batches until [`EMPTY_RECEIVES`] receives in a row find nothing.
#[derive(Default)]
struct Pass {
    empty: usize,
}

impl Pass {
    async fn next(
        &mut self,
        queue: &DeadLetterQueue,
        visibility: i32,
    ) -> Result<Option<Vec<Received>>, OpsError> {
        while self.empty < EMPTY_RECEIVES {
            let batch = queue.receive(visibility).await?;
            if !batch.is_empty() {
                self.empty = 0;
                return Ok(Some(batch));
            }
            self.empty += 1;
        }
        Ok(None)
    }
}

pub(super) struct DeadLetterQueue {
    sqs: aws_sdk_sqs::Client,
    url: String,
}

impl DeadLetterQueue {
    pub(super) fn new(sqs: aws_sdk_sqs::Client, url: String) -> Self {
        Self { sqs, url }
    }

    fn error(&self, e: impl std::error::Error + 'static) -> OpsError {
        OpsError::Sqs {
            url: self.url.clone(),
            detail: DisplayErrorContext(e).to_string(),
        }
    }

    async fn approximate_count(&self) -> Result<u64, OpsError> {
        let output = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(output
            .attributes
            .and_then(|a| {
                a.get(&QueueAttributeName::ApproximateNumberOfMessages)
                    .cloned()
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// Up to 10 messages, hidden for `visibility` seconds; an empty batch when none is there.
    async fn receive(&self, visibility: i32) -> Result<Vec<Received>, OpsError> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .visibility_timeout(visibility)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let system = m.attributes.unwrap_or_default();
                let get = |name: MessageSystemAttributeName| system.get(&name).cloned();
                let mut attributes: Vec<(String, String)> = m
                    .message_attributes
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v.string_value?)))
                    .collect();
                attributes.sort();
                Some(Received {
                    receipt: m.receipt_handle?,
                    sent_at_ms: get(MessageSystemAttributeName::SentTimestamp)
                        .and_then(|t| t.parse().ok()),
                    receive_count: get(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|n| n.parse().ok()),
                    letter: DeadLetterMessage {
                        message_id: m.message_id.unwrap_or_default(),
                        body: m.body.unwrap_or_default(),
                        group_id: get(MessageSystemAttributeName::MessageGroupId),
                        deduplication_id: get(MessageSystemAttributeName::MessageDeduplicationId),
                        attributes,
                    },
                })
            })
            .collect())
    }

    pub(super) async fn make_visible(&self, receipt: &str) -> Result<(), OpsError> {
        self.sqs
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub(super) async fn delete(&self, receipt: &str) -> Result<(), OpsError> {
        self.sqs
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Every message (at most `max`), received and kept in flight for `visibility` seconds
    /// until the caller deletes it or makes it visible again. A pass that fails midway makes
    /// what it held visible again before it returns: a failure must not hide messages.
    pub(super) async fn hold_all(
        &self,
        max: usize,
        visibility: i32,
    ) -> Result<Vec<Received>, OpsError> {
        let bar = progress::bar(self.approximate_count().await?, "reading dead letters");
        let mut seen: Vec<Received> = Vec::new();
        let mut pass = Pass::default();
        let outcome = async {
            while seen.len() < max {
                let Some(batch) = pass.next(self, visibility).await? else {
                    break;
                };
                for message in batch {
                    progress::advance(&bar);
                    seen.push(message);
                }
            }
            Ok::<(), OpsError>(())
        }
        .await;
        bar.finish_and_clear();
        if let Err(e) = outcome {
            self.release(&seen).await?;
            return Err(e);
        }
        let over = seen.split_off(max.min(seen.len()));
        self.release(&over).await?;
        Ok(seen)
    }

    /// Makes `messages` visible again.
    pub(super) async fn release(&self, messages: &[Received]) -> Result<(), OpsError> {
        for message in messages {
            self.make_visible(&message.receipt).await?;
        }
        Ok(())
    }

    /// Every message (at most `max`), left visible again afterwards.
    async fn peek_all(&self, max: usize) -> Result<Vec<Received>, OpsError> {
        let seen = self.hold_all(max, LIST_VISIBILITY_SECS).await?;
        self.release(&seen).await?;
        Ok(seen)
    }
}

fn sent_text(ms: Option<i64>) -> String {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    })
    .map(super::rfc3339)
    .unwrap_or_else(|| "?".into())
}

/// One message as JSON: ids, event and failure, never the body (personal data); emails in
/// the reason are redacted.
fn summary(message: &Received) -> serde_json::Value {
    let letter = &message.letter;
    let envelope = letter.envelope();
    json!({
        "message_id": letter.message_id,
        "webhook": envelope.as_ref().map(|e| format!("{}#{}", e.site, e.webhook_id)),
        "event": envelope.as_ref().map(|e| e.event.clone()),
        "group": letter.group_id,
        "failure_code": letter.attribute("FailureCode"),
        "failure_reason": letter.attribute("FailureReason").map(redact_emails),
        "sent_at": sent_text(message.sent_at_ms),
        "receive_count": message.receive_count,
    })
}

async fn open(stack: StackArgs) -> Result<(Deployed, DeadLetterQueue), OpsError> {
    let deployed = Deployed::connect(stack).await?;
    let queue = DeadLetterQueue::new(deployed.sqs(), deployed.dead_letter_queue_url().await?);
    Ok((deployed, queue))
}

fn print_list(messages: &[Received], json: bool) {
    for message in messages {
        let view = summary(message);
        if json {
            println!("{view}");
            continue;
        }
        let field = |name: &str| super::field(&view, name);
        println!(
            "{}  {}  {}  sent {}  receives {}  {}: {}",
            field("message_id"),
            field("webhook"),
            field("event"),
            field("sent_at"),
            field("receive_count"),
            field("failure_code"),
            field("failure_reason"),
        );
    }
}

pub async fn run(command: DlqCommand) -> Result<(), OpsError> {
    match command {
        DlqCommand::List(args) => {
            let (_, queue) = open(args.stack).await?;
            let messages = queue.peek_all(args.max).await?;
            print_list(&messages, args.json);
            if !args.json {
                println!(
                    "{} dead letter(s) listed; the queue holds about {}",
                    messages.len(),
                    queue.approximate_count().await?
                );
            }
            Ok(())
        }
        DlqCommand::Redrive(args) if args.dry_run => {
            let (_, queue) = open(args.stack).await?;
            let messages = queue.peek_all(args.max).await?;
            print_list(&messages, false);
            println!("{} dead letter(s) would be redriven", messages.len());
            Ok(())
        }
        DlqCommand::Redrive(args) => {
            let (deployed, queue) = open(args.stack).await?;
            let main = SqsWebhookQueue::new(deployed.sqs(), deployed.queue_url().await?);
            redrive(&queue, &main, args.max).await
        }
    }
}

async fn redrive(
    queue: &DeadLetterQueue,
    main: &SqsWebhookQueue,
    max: usize,
) -> Result<(), OpsError> {
    let run = super::run_id();
    let bar = progress::bar(queue.approximate_count().await?, "redriving");
    let (mut moved, mut pass) = (0, Pass::default());
    while moved < max {
        let Some(batch) = pass.next(queue, REDRIVE_VISIBILITY_SECS).await? else {
            break;
        };
        // In the order received, so a group's messages reach the main queue in their order.
        for message in batch {
            if moved >= max {
                // Over the bound: give it back at once rather than after the timeout.
                queue.make_visible(&message.receipt).await?;
                continue;
            }
            main.send(&redrive_message(&message.letter, &run))
                .await
                .map_err(|source| OpsError::Queue {
                    url: main.queue_url().to_owned(),
                    source,
                })?;
            queue.delete(&message.receipt).await?;
            moved += 1;
            progress::advance(&bar);
        }
    }
    bar.finish_and_clear();
    println!(
        "moved {moved} dead letter(s) to {}; the dead-letter queue holds about {} now",
        main.queue_url(),
        queue.approximate_count().await?
    );
    Ok(())
}

//! `cks replay <webhook-id>` and `cks replay --since <time>`: sends stored envelopes to the
//! main queue again, as ingest sent them but with a fresh deduplication id. What is sent and
//! when a record is refused or reopened is decided by `shared::replay` (see its semantics).

use super::stack::Deployed;
use super::{key_text, progress, records, rfc3339, run_id, OpsError, StackArgs, WebhookArgs};
use shared::idempotency::{DynamoDbIdempotencyStore, IdempotencyRecord, IdempotencyStore};
use shared::queue::{SqsWebhookQueue, WebhookQueue};
use shared::replay::{decide, parse_since, replay_message, selected_since, Decision};
use time::OffsetDateTime;

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The Chargify webhook id (`id=` in its body), or `site#id`.
    #[arg(required_unless_present = "since", conflicts_with = "since")]
    pub webhook_id: Option<String>,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    /// Replay every unfinished record received since then: an RFC 3339 time
    /// (2026-11-27T09:00:00Z) or a duration back from now (90s, 30m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Apply completed records again too (their goals and notes are not repeated).
    #[arg(long)]
    pub force: bool,
    /// Only say what would be sent.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// The note a forced replay leaves in the record's `last_error`.
const REOPEN_NOTE: &str = "reopened by `cks replay --force`; the replayed message applies it again";

struct Replayer {
    store: DynamoDbIdempotencyStore,
    queue: SqsWebhookQueue,
    run: String,
    dry_run: bool,
}

/// What happened to one record.
enum Outcome {
    Sent { reopened: bool },
    WouldSend { reopen: bool },
}

impl Replayer {
    async fn replay(&self, record: &IdempotencyRecord, force: bool) -> Result<Outcome, OpsError> {
        let key = key_text(&record.key);
        let reopen = match decide(record, force, OffsetDateTime::now_utc()) {
            Decision::Refuse(refusal) => return Err(OpsError::Refused { key, refusal }),
            Decision::ReopenThenSend => true,
            Decision::Send { lease_until } => {
                if let Some(until) = lease_until {
                    eprintln!(
                        "note: a worker holds {key} until {}; the replayed copy waits for it",
                        rfc3339(until)
                    );
                }
                false
            }
        };
        let envelope = record
            .received
            .as_ref()
            .map(|r| r.envelope.as_str())
            .unwrap_or_default();
        let message = replay_message(envelope, &self.run).map_err(|e| OpsError::BadEnvelope {
            key: key.clone(),
            detail: e.to_string(),
        })?;
        if self.dry_run {
            return Ok(Outcome::WouldSend { reopen });
        }
        if reopen {
            let reopened = self
                .store
                .reopen(&record.key, REOPEN_NOTE)
                .await
                .map_err(|source| OpsError::Store {
                    table: self.store.table().to_owned(),
                    source,
                })?;
            if !reopened {
                return Err(OpsError::Raced { key });
            }
        }
        // A send that fails after a reopen leaves the record FAILED with no message: running
        // the command again sends it (no --force needed any more).
        self.queue
            .send(&message)
            .await
            .map_err(|source| OpsError::Queue {
                url: self.queue.queue_url().to_owned(),
                source,
            })?;
        Ok(Outcome::Sent { reopened: reopen })
    }
}

fn describe(record: &IdempotencyRecord) -> String {
    let received = record.received.as_ref();
    format!(
        "{} {} received {} (was {}, {} step(s) done)",
        key_text(&record.key),
        received.map(|r| r.event.as_str()).unwrap_or("?"),
        received
            .map(|r| rfc3339(r.received_at))
            .unwrap_or_else(|| "?".into()),
        record.status.as_str(),
        record.steps_done.len()
    )
}

pub async fn run(args: ReplayArgs) -> Result<(), OpsError> {
    // Checked before any AWS call: a typo should not cost a table scan.
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, OffsetDateTime::now_utc()))
        .transpose()?;
    let deployed = Deployed::connect(args.stack).await?;
    let replayer = Replayer {
        store: deployed.idempotency().await?,
        queue: SqsWebhookQueue::new(deployed.sqs(), deployed.queue_url().await?),
        run: run_id(),
        dry_run: args.dry_run,
    };
    match (since, args.webhook_id) {
        (Some(since), _) => replay_since(&replayer, since, args.force).await,
        (None, Some(webhook)) => {
            let record =
                records::find(&replayer.store, &webhook, args.webhook.site.as_deref()).await?;
            match replayer.replay(&record, args.force).await? {
                Outcome::WouldSend { reopen } => println!(
                    "would {}send {}",
                    if reopen { "reopen and " } else { "" },
                    describe(&record)
                ),
                Outcome::Sent { reopened } => println!(
                    "replayed {}{}: the processor skips the steps already done",
                    describe(&record),
                    if reopened { ", reopened" } else { "" }
                ),
            }
            Ok(())
        }
        // clap requires one of the two.
        (None, None) => Ok(()),
    }
}

async fn replay_since(
    replayer: &Replayer,
    since: OffsetDateTime,
    force: bool,
) -> Result<(), OpsError> {
    let mut chosen: Vec<IdempotencyRecord> = records::scan_all(&replayer.store)
        .await?
        .into_iter()
        .filter(|r| selected_since(r, since, force))
        .collect();
    // In the order they were received, so each customer's webhooks reach its FIFO group in
    // their original order.
    chosen.sort_by_key(|r| r.received.as_ref().map(|d| d.received_at));
    let total = chosen.len();
    let bar = progress::bar(total as u64, "replaying");
    let (mut sent, mut reopened, mut failed) = (0, 0, 0);
    for record in &chosen {
        match replayer.replay(record, force).await {
            Ok(Outcome::WouldSend { reopen }) => {
                bar.suspend(|| {
                    println!(
                        "would {}send {}",
                        if reopen { "reopen and " } else { "" },
                        describe(record)
                    )
                });
            }
            Ok(Outcome::Sent { reopened: r }) => {
                sent += 1;
                reopened += usize::from(r);
                bar.suspend(|| println!("replayed {}", describe(record)));
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("error: {e}"));
            }
        }
        progress::advance(&bar);
    }
    bar.finish_and_clear();
    if replayer.dry_run {
        println!(
            "{total} record(s) received since {} would be replayed",
            rfc3339(since)
        );
    } else {
        println!(
            "replayed {sent} of {total} record(s) received since {} ({reopened} reopened, {failed} failed)",
            rfc3339(since)
        );
    }
    if failed > 0 {
        return Err(OpsError::Incomplete { failed, total });
    }
    Ok(())
}

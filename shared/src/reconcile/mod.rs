//! The reconciler: recovers what Chargify never got to deliver.
//!
//! Chargify makes 5 delivery attempts over about 5 minutes and then marks a webhook `failed`;
//! after 25 failures in a row it pauses the endpoint, and webhooks created while paused are
//! stored `paused` and never sent on their own. An SQS outage, a bad deploy or a wrong key
//! therefore loses events unless someone replays them. A run does two passes:
//!
//! 1. **Failed and paused webhooks** (`GET /webhooks.json?status=failed|paused` since the
//!    webhook cursor). Each stored body is checked against its `signature_hmac_sha_256` with
//!    the site's shared keys, through the same [`IngestService::accept`] ingest runs, so the
//!    envelope, the FIFO group and the deduplication id are exactly ingest's; then it goes on
//!    the queue. This does not depend on our endpoint being up and does not count against
//!    Chargify's pause counter. A webhook whose idempotency record is `COMPLETED` was in
//!    fact processed (Chargify marked it failed on a lost answer, say) and is skipped; any
//!    other copy the processor sees is a duplicate at no Keap cost. A body whose signature
//!    does not verify is never enqueued (the `SignatureFailures`-style outcome
//!    `signature_failed` is counted and logged); with `replay_unverified` its id goes to
//!    `POST /webhooks/replay.json` so Chargify re-sends it to ingest (which then checks it
//!    with the keys it has: useful after a key rotation ingest already knows about), else it
//!    is only reported. A body ingest would refuse (malformed, too large) is reported.
//! 2. **The Events API** (`GET /events.json?since_id=cursor+1`, oldest first). Per event
//!    about a subscription, once per subscription per run: the customer's identity-map
//!    record is read and its clock for the subscription compared with the subscription's
//!    `updated_at` from `GET /subscriptions/{id}.json`; a clock at or past it means that state
//!    was applied (skip, no Keap call); else a snapshot sync ([`snapshot_envelope`]) is
//!    enqueued: same rules, same idempotency, and the stale-event guard keeps it from
//!    overriding newer state. Subscriptions whose webhooks pass 1 recovered in this run are
//!    skipped: those webhooks carry the state (and the goals a snapshot does not fire).
//!
//! **Limits.** A snapshot restores state (contact, fields, state and plan tags), not
//! history: a missed `payment_failure` goal or note comes back only through pass 1 (its
//! webhook). A webhook that Chargify still retries when a run lists is picked up by the next
//! run (the day overlap). An event whose webhook was delivered but is still on our queue can
//! cause one snapshot that repeats the state (a few Keap calls, same values).
//!
//! **Bounded.** At most `max_pages` pages per list per run and nothing started with less than
//! `time_margin` left before the deadline; each cursor is saved after each page, so a run cut
//! short resumes where it stopped. Dry runs read everything and write nothing.

pub mod cursor;
#[cfg(test)]
mod tests;

use crate::chargify::api::{
    ChargifyApi, ChargifyApiError, EventQuery, WebhookQuery, WebhookRecord, WebhookStatus,
};
use crate::chargify::snapshot::{snapshot_envelope, SnapshotError};
use crate::chargify::{SignatureCandidate, SignatureSource};
use crate::cursor_store::CursorStore;
use crate::idempotency::{IdempotencyKey, IdempotencyStore, RecordStatus, StoreError};
use crate::identity::{CustomerKey, CustomerStore};
use crate::ingest::{outbound_message, Accepted, IngestService, NotQueued, Outcome, Refusal};
use crate::queue::{QueueError, WebhookQueue};
use crate::telemetry::metrics::{self, RecoveredOutcome, SnapshotOutcome};
use cursor::{DayPosition, EventCursor, WebhookCursor};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::{Date, OffsetDateTime};

/// What a run may do, and how much.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The Chargify site (subdomain) the API key belongs to.
    pub site: String,
    /// Most pages per list (failed webhooks, paused webhooks, events) per run.
    pub max_pages: u32,
    /// Days listed again before today when a webhook list was run to its end.
    pub overlap_days: u8,
    /// Send webhooks whose stored signature does not verify to `POST /webhooks/replay.json`.
    pub replay_unverified: bool,
    /// List and decide, write nothing (no queue, no replay, no cursor).
    pub dry_run: bool,
    /// Start the webhook lists at this day instead of the cursor.
    pub since_date: Option<Date>,
    /// Start the events walk after this id instead of the cursor.
    pub since_event_id: Option<i64>,
    /// Nothing is started with less than this left before the deadline.
    pub time_margin: Duration,
}

impl RunOptions {
    pub fn new(site: impl Into<String>) -> Self {
        Self {
            site: site.into(),
            max_pages: 10,
            overlap_days: 1,
            replay_unverified: false,
            dry_run: false,
            since_date: None,
            since_event_id: None,
            time_margin: Duration::from_secs(20),
        }
    }
}

/// A run failed before it finished. Cursors saved so far stay; the next run resumes there.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Chargify: {0}")]
    Chargify(#[from] ChargifyApiError),
    #[error("the queue did not take a recovered webhook: {0}; nothing after it was sent, the next run retries")]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Site(#[from] SnapshotError),
    #[error("DynamoDB: {0}")]
    Store(#[from] StoreError),
    #[error("the reconciler cursor `{key}` is unreadable ({detail}); delete that item of the idempotency table to start over (from yesterday for webhooks, from the first event for events)")]
    CursorUnreadable { key: String, detail: String },
}

/// What a run did. Counts only: no bodies, no personal data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub dry_run: bool,
    pub webhooks_listed: u64,
    /// Put on the queue from the stored body (verified).
    pub webhooks_enqueued: u64,
    /// Skipped: the idempotency record says the webhook was processed.
    pub webhooks_already_processed: u64,
    /// The stored signature did not verify with any configured key.
    pub webhooks_signature_failed: u64,
    /// Asked of Chargify again (`POST /webhooks/replay.json`).
    pub webhooks_replayed: u64,
    /// A body ingest would refuse (malformed, too large, no body or signature) or a test.
    pub webhooks_unusable: u64,
    /// Ids that need an operator: unverified and not replayed, or unusable.
    pub needs_attention: Vec<i64>,
    pub events_seen: u64,
    pub snapshots_enqueued: u64,
    pub snapshots_already_applied: u64,
    /// Subscriptions skipped because pass 1 recovered their webhooks in this run.
    pub snapshots_covered_by_webhooks: u64,
    /// Subscriptions Chargify no longer has, or that cannot be snapshotted.
    pub snapshots_failed: u64,
    /// Why the run stopped before the end of a list, if it did.
    pub stopped_early: Option<String>,
    /// The cursors after the run.
    pub webhook_cursor_failed: Option<String>,
    pub webhook_cursor_paused: Option<String>,
    pub event_cursor: Option<i64>,
}

/// The reconciler over its ports.
pub struct Reconciler {
    pub api: Arc<dyn ChargifyApi>,
    /// Verifies stored bodies with the ingest keys and builds ingest's very messages; its
    /// queue is where recovered webhooks and snapshots go.
    pub ingest: IngestService<Arc<dyn WebhookQueue>>,
    pub cursors: Arc<dyn CursorStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub customers: Arc<dyn CustomerStore>,
    pub settings: RunOptions,
}

/// Per-run state of pass 1 that pass 2 reads.
#[derive(Default)]
struct Recovered {
    subscriptions: BTreeSet<String>,
}

impl Reconciler {
    /// One run: failed webhooks, paused webhooks, then the events walk. `deadline` is when
    /// the caller must be done (the Lambda's deadline).
    pub async fn run(&self, deadline: Instant) -> Result<ReconcileReport, ReconcileError> {
        let mut report = ReconcileReport {
            dry_run: self.settings.dry_run,
            ..ReconcileReport::default()
        };
        let mut recovered = Recovered::default();
        let mut replay = Vec::new();
        let key = cursor::webhooks_key(&self.settings.site);
        let mut cursor: WebhookCursor = cursor::load(self.cursors.as_ref(), &key).await?;
        for status in [WebhookStatus::Failed, WebhookStatus::Paused] {
            self.webhook_pass(
                status,
                &mut cursor,
                deadline,
                &mut report,
                &mut recovered,
                &mut replay,
            )
            .await?;
        }
        report.webhook_cursor_failed = cursor.failed.map(|p| format!("{p:?}"));
        report.webhook_cursor_paused = cursor.paused.map(|p| format!("{p:?}"));
        if !replay.is_empty() && !self.settings.dry_run {
            self.api.replay_webhooks(&replay).await?;
            report.webhooks_replayed = replay.len() as u64;
            for _ in &replay {
                metrics::reconciler_webhook(RecoveredOutcome::Replayed);
            }
            tracing::info!(
                count = replay.len(),
                "unverified webhooks replayed by Chargify"
            );
        }
        self.events_pass(deadline, &mut report, &recovered).await?;
        tracing::info!(
            webhooks_listed = report.webhooks_listed,
            webhooks_enqueued = report.webhooks_enqueued,
            webhooks_already_processed = report.webhooks_already_processed,
            webhooks_signature_failed = report.webhooks_signature_failed,
            webhooks_replayed = report.webhooks_replayed,
            events_seen = report.events_seen,
            snapshots_enqueued = report.snapshots_enqueued,
            snapshots_already_applied = report.snapshots_already_applied,
            stopped_early = report.stopped_early.as_deref().unwrap_or(""),
            dry_run = report.dry_run,
            "reconcile run finished"
        );
        Ok(report)
    }

    fn time_left(&self, deadline: Instant) -> bool {
        deadline.saturating_duration_since(Instant::now()) > self.settings.time_margin
    }

    fn today(&self) -> Date {
        OffsetDateTime::now_utc().date()
    }

    async fn webhook_pass(
        &self,
        status: WebhookStatus,
        cursor: &mut WebhookCursor,
        deadline: Instant,
        report: &mut ReconcileReport,
        recovered: &mut Recovered,
        replay: &mut Vec<i64>,
    ) -> Result<(), ReconcileError> {
        let floor = self
            .today()
            .saturating_sub(time::Duration::days(self.settings.overlap_days.into()));
        let mut position = match (self.settings.since_date, cursor.get(status)) {
            (Some(day), _) => DayPosition::new(day),
            (None, Some(position)) => position,
            (None, None) => DayPosition::new(floor),
        };
        let key = cursor::webhooks_key(&self.settings.site);
        for _ in 0..self.settings.max_pages {
            if !self.time_left(deadline) {
                report.stopped_early = Some("time".into());
                return Ok(());
            }
            let query = WebhookQuery {
                status: Some(status),
                since_date: Some(position.since),
                ..WebhookQuery::default()
            };
            let page = self.api.webhooks_page(&query, position.page).await?;
            if page.is_empty() {
                position = position.exhausted(floor);
            } else {
                for record in &page {
                    report.webhooks_listed += 1;
                    self.recover(record, report, recovered, replay).await?;
                }
                position = position.after_page(page.last().and_then(created_day));
            }
            cursor.set(status, position);
            if !self.settings.dry_run {
                cursor::save(self.cursors.as_ref(), &key, cursor).await?;
            }
            if page.is_empty() {
                return Ok(());
            }
        }
        report.stopped_early = Some("max_pages".into());
        Ok(())
    }

    /// One failed or paused webhook: verify and enqueue its stored body, or say why not.
    async fn recover(
        &self,
        record: &WebhookRecord,
        report: &mut ReconcileReport,
        recovered: &mut Recovered,
        replay: &mut Vec<i64>,
    ) -> Result<(), ReconcileError> {
        let id = record.id;
        let event = record.event.as_deref().unwrap_or("");
        let (Some(body), Some(signature)) = (
            record.body.as_deref(),
            record.signature_hmac_sha_256.as_deref(),
        ) else {
            self.unusable(id, event, "no stored body or signature", report);
            return Ok(());
        };
        // Chargify sent it in the header; the envelope records it so, as ingest would have.
        let signature = [SignatureCandidate {
            source: SignatureSource::Header,
            value: signature,
        }];
        let Accepted { envelope, message } = match self.ingest.accept(body.as_bytes(), &signature) {
            Ok(accepted) => accepted,
            Err(
                Refusal::Signature(_)
                | Refusal::Webhook {
                    reason: NotQueued::SiteMismatch,
                    ..
                },
            ) => {
                self.unverified(id, event, report, replay);
                return Ok(());
            }
            // Chargify's "Test" webhook is acknowledged by ingest, never queued.
            Err(Refusal::Webhook {
                reason: NotQueued::Test,
                ..
            }) => {
                report.webhooks_unusable += 1;
                metrics::reconciler_webhook(RecoveredOutcome::Unusable);
                return Ok(());
            }
            Err(refusal) => {
                self.unusable(id, event, Outcome::from(refusal).code(), report);
                return Ok(());
            }
        };
        let done = self
            .idempotency
            .get(&IdempotencyKey::new(&envelope.site, &envelope.webhook_id))
            .await?
            .is_some_and(|r| r.status == RecordStatus::Completed);
        if done {
            report.webhooks_already_processed += 1;
            metrics::reconciler_webhook(RecoveredOutcome::AlreadyProcessed);
            return Ok(());
        }
        if let Some(subscription) = &envelope.subscription_id {
            recovered.subscriptions.insert(subscription.clone());
        }
        if !self.settings.dry_run {
            self.ingest.queue().send(&message).await?;
        }
        report.webhooks_enqueued += 1;
        metrics::reconciler_webhook(RecoveredOutcome::Enqueued);
        tracing::info!(
            webhook_id = id,
            event = metrics::event_dimension(event),
            dry_run = self.settings.dry_run,
            "failed or paused webhook enqueued from its stored body"
        );
        Ok(())
    }

    fn unverified(
        &self,
        id: i64,
        event: &str,
        report: &mut ReconcileReport,
        replay: &mut Vec<i64>,
    ) {
        report.webhooks_signature_failed += 1;
        metrics::reconciler_webhook(RecoveredOutcome::SignatureFailed);
        if self.settings.replay_unverified {
            replay.push(id);
        } else {
            report.needs_attention.push(id);
        }
        tracing::warn!(
            webhook_id = id,
            event = metrics::event_dimension(event),
            replay = self.settings.replay_unverified,
            "stored webhook's signature verifies with no configured key; not enqueued (check the shared keys: docs/operations.md, IngestSignatureMismatchAlarm)"
        );
    }

    fn unusable(&self, id: i64, event: &str, why: &str, report: &mut ReconcileReport) {
        report.webhooks_unusable += 1;
        report.needs_attention.push(id);
        metrics::reconciler_webhook(RecoveredOutcome::Unusable);
        tracing::warn!(
            webhook_id = id,
            event = metrics::event_dimension(event),
            reason = why,
            "stored webhook cannot be enqueued; ingest would refuse it too"
        );
    }

    async fn events_pass(
        &self,
        deadline: Instant,
        report: &mut ReconcileReport,
        recovered: &Recovered,
    ) -> Result<(), ReconcileError> {
        let key = cursor::events_key(&self.settings.site);
        let mut cursor: EventCursor = cursor::load(self.cursors.as_ref(), &key).await?;
        if let Some(id) = self.settings.since_event_id {
            cursor.last_id = Some(id);
        }
        let mut seen_subscriptions = BTreeSet::new();
        for _ in 0..self.settings.max_pages {
            if !self.time_left(deadline) {
                report.stopped_early = Some("time".into());
                break;
            }
            let query = EventQuery {
                since_id: cursor.last_id.map(|id| id.saturating_add(1)),
                filter: Vec::new(),
            };
            // Always page 1: the cursor moves with each page.
            let page = self.api.events_page(&query, 1).await?;
            let Some(last) = page.iter().map(|e| e.id).max() else {
                report.event_cursor = cursor.last_id;
                return Ok(());
            };
            for event in &page {
                report.events_seen += 1;
                let Some(subscription) = event.subscription_id else {
                    continue;
                };
                if seen_subscriptions.insert(subscription) {
                    self.snapshot_if_missed(subscription, report, recovered)
                        .await?;
                }
            }
            cursor.last_id = Some(last.max(cursor.last_id.unwrap_or(last)));
            if !self.settings.dry_run {
                cursor::save(self.cursors.as_ref(), &key, &cursor).await?;
            }
        }
        if report.stopped_early.is_none() {
            report.stopped_early = Some("max_pages".into());
        }
        report.event_cursor = cursor.last_id;
        Ok(())
    }

    /// One subscription an event was about: is its current state applied? If not, enqueue
    /// its snapshot.
    async fn snapshot_if_missed(
        &self,
        subscription_id: i64,
        report: &mut ReconcileReport,
        recovered: &Recovered,
    ) -> Result<(), ReconcileError> {
        if recovered
            .subscriptions
            .contains(&subscription_id.to_string())
        {
            report.snapshots_covered_by_webhooks += 1;
            metrics::reconciler_snapshot(SnapshotOutcome::CoveredByWebhooks);
            return Ok(());
        }
        let Some(subscription) = self.api.subscription(subscription_id).await? else {
            report.snapshots_failed += 1;
            metrics::reconciler_snapshot(SnapshotOutcome::Failed);
            tracing::warn!(
                subscription_id,
                "subscription of an event not found in Chargify"
            );
            return Ok(());
        };
        let customer = subscription.customer.as_ref().and_then(|c| c.id);
        let applied = match (customer, subscription.updated_at) {
            (Some(customer), Some(updated_at)) => self
                .customers
                .get(&CustomerKey::new(&self.settings.site, customer.to_string()))
                .await?
                .is_some_and(|state| state.has_applied(&subscription_id.to_string(), updated_at)),
            _ => false,
        };
        if applied {
            report.snapshots_already_applied += 1;
            metrics::reconciler_snapshot(SnapshotOutcome::AlreadyApplied);
            return Ok(());
        }
        let envelope = match snapshot_envelope(
            &self.settings.site,
            &subscription,
            OffsetDateTime::now_utc(),
        ) {
            Ok(envelope) => envelope,
            Err(e @ (SnapshotError::NoUpdatedAt(_) | SnapshotError::Unreadable { .. })) => {
                report.snapshots_failed += 1;
                metrics::reconciler_snapshot(SnapshotOutcome::Failed);
                tracing::warn!(subscription_id, error = %e, "no snapshot");
                return Ok(());
            }
            // The configuration is wrong for every subscription: stop the run.
            Err(e @ SnapshotError::BadSite(_)) => return Err(e.into()),
        };
        if !self.settings.dry_run {
            self.ingest
                .queue()
                .send(&outbound_message(&envelope))
                .await?;
        }
        report.snapshots_enqueued += 1;
        metrics::reconciler_snapshot(SnapshotOutcome::Enqueued);
        tracing::info!(
            subscription_id,
            dry_run = self.settings.dry_run,
            "snapshot enqueued for a subscription whose state was never applied"
        );
        Ok(())
    }
}

/// The day a webhook was created, in the offset Chargify wrote (the site's zone).
fn created_day(record: &WebhookRecord) -> Option<Date> {
    record
        .created_at
        .as_deref()
        .and_then(crate::rules::template::parse_chargify_time)
        .map(|t| t.date())
}

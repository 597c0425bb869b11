//! The reconciler's decisions over in-memory ports and a fake Chargify: verify or refuse a
//! stored body, skip what was processed, cursor advance and overlap, bounded pages, the
//! events walk's skip-when-applied and once-per-subscription.

use super::*;
use crate::chargify::api::{Event, Subscription, SubscriptionQuery};
use crate::chargify::signature::sign;
use crate::chargify::SharedKeySet;
use crate::cursor_store::InMemoryCursorStore;
use crate::envelope::WebhookEnvelope;
use crate::idempotency::{InMemoryIdempotencyStore, Received};
use crate::identity::InMemoryCustomerStore;
use crate::queue::InMemoryQueue;
use async_trait::async_trait;
use serde_json::Value;
use std::sync::Mutex;
use time::format_description::well_known::Rfc3339;
use time::macros::{date, datetime};

const SITE: &str = "acme";
const KEY: &str = "reconcile-key";

#[derive(Default)]
struct FakeChargify {
    /// (status, record); listed oldest first, filtered by status and created day.
    webhooks: Mutex<Vec<(WebhookStatus, WebhookRecord)>>,
    events: Mutex<Vec<Event>>,
    subscriptions: Mutex<Vec<Value>>,
    per_page: usize,
    queries: Mutex<Vec<String>>,
    replayed: Mutex<Vec<i64>>,
    subscription_reads: Mutex<Vec<i64>>,
}

impl FakeChargify {
    fn new(per_page: usize) -> Self {
        Self {
            per_page,
            ..Self::default()
        }
    }

    fn add_subscription(&self, id: i64, customer: i64, state: &str, updated_at: OffsetDateTime) {
        let at = updated_at.format(&Rfc3339).expect("time");
        let sub = crate::fixtures::api_subscription(id, customer, state, &at);
        self.subscriptions.lock().expect("lock").push(sub);
    }

    /// A webhook about `subscription` of `customer`, signed with `key`.
    fn add_webhook(
        &self,
        id: i64,
        status: WebhookStatus,
        created: OffsetDateTime,
        customer: i64,
        key: &str,
    ) {
        let body = crate::fixtures::derive(
            crate::fixtures::SUBSCRIPTION_STATE_CHANGE,
            &id.to_string(),
            "subscription_state_change",
            &[
                ("payload[site][subdomain]", SITE),
                ("payload[subscription][id]", &(customer * 10).to_string()),
                ("payload[subscription][customer][id]", &customer.to_string()),
            ],
        );
        let record = WebhookRecord {
            id,
            event: Some("subscription_state_change".into()),
            created_at: Some(created.format(&Rfc3339).expect("time")),
            signature_hmac_sha_256: Some(sign(key, body.as_bytes())),
            body: Some(body),
            ..WebhookRecord::default()
        };
        self.webhooks.lock().expect("lock").push((status, record));
    }

    fn add_event(&self, id: i64, subscription: Option<i64>) {
        self.events.lock().expect("lock").push(Event {
            id,
            key: Some("subscription_state_change".into()),
            subscription_id: subscription,
            ..Event::default()
        });
    }
}

fn page_of<T: Clone>(items: &[T], page: u32, per_page: usize) -> Vec<T> {
    items
        .iter()
        .skip((page as usize - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect()
}

#[async_trait]
impl ChargifyApi for FakeChargify {
    async fn subscriptions_page(
        &self,
        _: &SubscriptionQuery,
        _: u32,
    ) -> Result<Vec<Subscription>, ChargifyApiError> {
        Ok(Vec::new())
    }

    async fn subscription(&self, id: i64) -> Result<Option<Subscription>, ChargifyApiError> {
        self.subscription_reads.lock().expect("lock").push(id);
        Ok(self
            .subscriptions
            .lock()
            .expect("lock")
            .iter()
            .find(|s| s["id"] == id)
            .and_then(|s| serde_json::from_value(s.clone()).ok()))
    }

    async fn webhooks_page(
        &self,
        query: &WebhookQuery,
        page: u32,
    ) -> Result<Vec<WebhookRecord>, ChargifyApiError> {
        let since = query
            .since_date
            .expect("the reconciler always sends since_date");
        self.queries.lock().expect("lock").push(format!(
            "{}:{since}:{page}",
            query.status.map(WebhookStatus::as_str).unwrap_or("")
        ));
        let matching: Vec<WebhookRecord> = self
            .webhooks
            .lock()
            .expect("lock")
            .iter()
            .filter(|(status, _)| Some(*status) == query.status)
            .filter(|(_, r)| created_day(r).is_some_and(|d| d >= since))
            .map(|(_, r)| r.clone())
            .collect();
        Ok(page_of(&matching, page, self.per_page))
    }

    async fn replay_webhooks(&self, ids: &[i64]) -> Result<(), ChargifyApiError> {
        self.replayed.lock().expect("lock").extend_from_slice(ids);
        Ok(())
    }

    async fn events_page(
        &self,
        query: &EventQuery,
        page: u32,
    ) -> Result<Vec<Event>, ChargifyApiError> {
        let matching: Vec<Event> = self
            .events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| query.since_id.is_none_or(|s| e.id >= s))
            .cloned()
            .collect();
        Ok(page_of(&matching, page, self.per_page))
    }
}

struct World {
    api: Arc<FakeChargify>,
    queue: Arc<InMemoryQueue>,
    cursors: Arc<InMemoryCursorStore>,
    idempotency: Arc<InMemoryIdempotencyStore>,
    customers: Arc<InMemoryCustomerStore>,
}

impl World {
    fn new(per_page: usize) -> Self {
        Self {
            api: Arc::new(FakeChargify::new(per_page)),
            queue: Arc::new(InMemoryQueue::new()),
            cursors: Arc::new(InMemoryCursorStore::default()),
            idempotency: Arc::new(InMemoryIdempotencyStore::new()),
            customers: Arc::new(InMemoryCustomerStore::new()),
        }
    }

    fn reconciler(&self, settings: RunOptions) -> Reconciler {
        let queue: Arc<dyn WebhookQueue> = self.queue.clone();
        Reconciler {
            api: self.api.clone(),
            ingest: IngestService::new(SharedKeySet::parse(KEY).expect("key"), queue),
            cursors: self.cursors.clone(),
            idempotency: self.idempotency.clone(),
            customers: self.customers.clone(),
            settings,
        }
    }

    async fn run(&self, settings: RunOptions) -> ReconcileReport {
        self.reconciler(settings)
            .run(Instant::now() + Duration::from_secs(600))
            .await
            .expect("run")
    }

    async fn webhook_cursor(&self) -> cursor::WebhookCursor {
        cursor::load(self.cursors.as_ref(), &cursor::webhooks_key(SITE))
            .await
            .expect("cursor")
    }

    fn sent_ids(&self) -> Vec<String> {
        self.queue
            .messages()
            .iter()
            .map(|m| m.deduplication_id.clone())
            .collect()
    }
}

fn settings() -> RunOptions {
    RunOptions::new(SITE)
}

fn since(day: Date) -> RunOptions {
    RunOptions {
        since_date: Some(day),
        ..settings()
    }
}

const DAY1: OffsetDateTime = datetime!(2026-11-20 10:00:00 UTC);

#[tokio::test]
async fn verified_bodies_are_enqueued_as_ingest_would_and_forgeries_never() {
    let w = World::new(200);
    w.api.add_webhook(5, WebhookStatus::Failed, DAY1, 1, KEY);
    w.api.add_webhook(6, WebhookStatus::Paused, DAY1, 2, KEY);
    w.api
        .add_webhook(7, WebhookStatus::Failed, DAY1, 3, "some-other-key");
    let report = w.run(since(date!(2026 - 11 - 20))).await;
    assert_eq!(report.webhooks_listed, 3);
    assert_eq!(report.webhooks_enqueued, 2);
    assert_eq!(report.webhooks_signature_failed, 1);
    assert_eq!(report.needs_attention, vec![7]);
    assert_eq!(report.webhooks_replayed, 0);
    assert!(w.api.replayed.lock().expect("lock").is_empty());
    // The very message ingest builds: group by customer, dedup by site and webhook id.
    let messages = w.queue.messages();
    assert_eq!(w.sent_ids(), ["acme:5", "acme:6"]);
    assert_eq!(messages[0].group_id, "acme:cus:1");
    let envelope = WebhookEnvelope::from_json(&messages[0].body).expect("envelope");
    assert_eq!(envelope.webhook_id, "5");
    assert_eq!(envelope.verified_by.key, "*#0");
}

#[tokio::test]
async fn unverified_bodies_go_to_chargify_replay_only_when_configured() {
    let w = World::new(200);
    w.api
        .add_webhook(7, WebhookStatus::Failed, DAY1, 3, "some-other-key");
    let report = w
        .run(RunOptions {
            replay_unverified: true,
            ..since(date!(2026 - 11 - 20))
        })
        .await;
    assert_eq!(report.webhooks_replayed, 1);
    assert!(report.needs_attention.is_empty());
    assert_eq!(*w.api.replayed.lock().expect("lock"), vec![7]);
    assert!(w.queue.messages().is_empty());
}

#[tokio::test]
async fn a_webhook_already_processed_is_not_sent_again() {
    let w = World::new(200);
    w.api.add_webhook(5, WebhookStatus::Failed, DAY1, 1, KEY);
    w.api.add_webhook(6, WebhookStatus::Failed, DAY1, 1, KEY);
    let key = IdempotencyKey::new(SITE, "5");
    let received = Received {
        event: "subscription_state_change".into(),
        received_at: DAY1,
        envelope: String::new(),
    };
    let begun = w
        .idempotency
        .begin(
            &key,
            "h",
            &received,
            OffsetDateTime::now_utc(),
            Duration::from_secs(60),
            Duration::from_secs(3600),
        )
        .await
        .expect("begin");
    let crate::idempotency::Begin::Started(lease) = begun else {
        panic!("a new record starts");
    };
    w.idempotency
        .complete(
            &lease,
            "done",
            None,
            OffsetDateTime::now_utc(),
            Duration::from_secs(3600),
        )
        .await
        .expect("complete");
    let report = w.run(since(date!(2026 - 11 - 20))).await;
    assert_eq!(report.webhooks_already_processed, 1);
    assert_eq!(w.sent_ids(), ["acme:6"]);
}

#[tokio::test]
async fn the_webhook_cursor_moves_by_day_with_overlap_and_pages_are_bounded() {
    let w = World::new(2);
    // Five failed webhooks over three days, two a page.
    for (id, day) in [(1, 0), (2, 0), (3, 1), (4, 2), (5, 2)] {
        let created = DAY1 + time::Duration::days(day);
        w.api
            .add_webhook(id, WebhookStatus::Failed, created, id, KEY);
    }
    // First run: one page per list. The page ends on day 0 = the start: next page.
    let first = w
        .run(RunOptions {
            max_pages: 1,
            ..since(date!(2026 - 11 - 20))
        })
        .await;
    assert_eq!(first.stopped_early.as_deref(), Some("max_pages"));
    assert_eq!(w.sent_ids(), ["acme:1", "acme:2"]);
    let stored = w.webhook_cursor().await;
    assert_eq!(
        stored.failed,
        Some(DayPosition {
            since: date!(2026 - 11 - 20),
            page: 2
        })
    );
    // Second run from the cursor: page 2 of day 0 ends on day 1 → day 1, page 1.
    let second = w
        .run(RunOptions {
            max_pages: 1,
            ..settings()
        })
        .await;
    assert_eq!(second.webhooks_enqueued, 2);
    let stored = w.webhook_cursor().await;
    assert_eq!(stored.failed, Some(DayPosition::new(date!(2026 - 11 - 22))));
    // Third run, unbounded: day 2 again (the overlap; SQS and idempotency make it free),
    // then the end of the list moves the cursor to yesterday (UTC).
    w.run(settings()).await;
    let stored = w.webhook_cursor().await;
    let yesterday = OffsetDateTime::now_utc().date() - time::Duration::days(1);
    assert_eq!(stored.failed, Some(DayPosition::new(yesterday)));
    let queries = w.api.queries.lock().expect("lock").clone();
    assert_eq!(
        queries
            .iter()
            .filter(|q| q.starts_with("failed"))
            .cloned()
            .collect::<Vec<_>>(),
        [
            "failed:2026-11-20:1",
            "failed:2026-11-20:2",
            "failed:2026-11-22:1",
            "failed:2026-11-22:2",
        ]
    );
    // Every webhook reached the queue, each once (SQS deduplication on the overlap).
    let mut ids = w.sent_ids();
    ids.sort();
    assert_eq!(ids, ["acme:1", "acme:2", "acme:3", "acme:4", "acme:5"]);
}

#[tokio::test]
async fn a_dry_run_writes_nothing() {
    let w = World::new(200);
    w.api.add_webhook(5, WebhookStatus::Failed, DAY1, 1, KEY);
    w.api.add_event(100, Some(10));
    w.api.add_subscription(10, 1, "active", DAY1);
    let report = w
        .run(RunOptions {
            dry_run: true,
            ..since(date!(2026 - 11 - 20))
        })
        .await;
    assert_eq!(report.webhooks_enqueued, 1);
    assert!(w.queue.messages().is_empty());
    assert_eq!(
        w.cursors
            .load(&cursor::webhooks_key(SITE))
            .await
            .expect("load"),
        None
    );
    assert_eq!(
        w.cursors
            .load(&cursor::events_key(SITE))
            .await
            .expect("load"),
        None
    );
}

#[tokio::test]
async fn events_snapshot_only_subscriptions_whose_state_was_never_applied() {
    let w = World::new(2);
    let t = datetime!(2026-11-20 10:00:00 UTC);
    // Subscription 10: applied up to t (clock = updated_at). 20: clock behind. 30: unknown
    // customer. 40: gone from Chargify.
    w.api.add_subscription(10, 1, "active", t);
    w.api
        .add_subscription(20, 2, "past_due", t + time::Duration::seconds(5));
    w.api.add_subscription(30, 3, "canceled", t);
    let seed = crate::identity::contract::seed;
    seed(
        &*w.customers,
        &CustomerKey::new(SITE, "1"),
        101,
        Some(("10", t)),
    )
    .await;
    seed(
        &*w.customers,
        &CustomerKey::new(SITE, "2"),
        102,
        Some(("20", t)),
    )
    .await;
    for (id, sub) in [
        (100, Some(10)),
        (101, Some(20)),
        (102, Some(20)),
        (103, None),
        (104, Some(30)),
        (105, Some(40)),
    ] {
        w.api.add_event(id, sub);
    }
    let report = w.run(settings()).await;
    assert_eq!(report.events_seen, 6);
    assert_eq!(report.snapshots_already_applied, 1);
    assert_eq!(report.snapshots_enqueued, 2);
    assert_eq!(report.snapshots_failed, 1);
    assert_eq!(report.event_cursor, Some(105));
    // One read per distinct subscription.
    assert_eq!(
        *w.api.subscription_reads.lock().expect("lock"),
        [10, 20, 30, 40]
    );
    let sent = w.sent_ids();
    assert_eq!(sent.len(), 2);
    assert!(sent[0].starts_with("acme:snapshot-20-"), "{sent:?}");
    assert!(sent[1].starts_with("acme:snapshot-30-"), "{sent:?}");
    // The next run starts after the cursor: nothing more.
    w.api.add_event(106, Some(10));
    let again = w.run(settings()).await;
    assert_eq!(again.events_seen, 1);
    assert_eq!(again.snapshots_enqueued, 0);
    assert_eq!(again.event_cursor, Some(106));
}

#[tokio::test]
async fn a_subscription_whose_webhooks_were_recovered_gets_no_snapshot_in_the_same_run() {
    let w = World::new(200);
    // Customer 1's webhook is about subscription 10 (customer × 10 in add_webhook).
    w.api.add_webhook(5, WebhookStatus::Paused, DAY1, 1, KEY);
    w.api.add_subscription(10, 1, "active", DAY1);
    w.api.add_event(100, Some(10));
    let report = w.run(since(date!(2026 - 11 - 20))).await;
    assert_eq!(report.webhooks_enqueued, 1);
    assert_eq!(report.snapshots_covered_by_webhooks, 1);
    assert_eq!(report.snapshots_enqueued, 0);
    assert_eq!(w.sent_ids(), ["acme:5"]);
}

//! Long faults end with every webhook applied once, in order, with no manual work: the
//! processor's Lambda handler over SQS FIFO in moto, DynamoDB in moto and the Keap stand-in.
//! Time is skipped, not waited for: after each invocation the delays the processor asked SQS
//! for are checked (what the failure calls for, within SQS's 12-hour limit), then the hidden
//! records are made visible again.

use integration_tests::keap_standin::{Fault, KeapStandIn};
use integration_tests::pipeline::post_signed;
use integration_tests::recording_control::{show, RecordingControl};
use integration_tests::{drain, processor_resources, receive_as_lambda_event, ProcessorResources};
use shared::chargify::SharedKeySet;
use shared::dynamodb::Table;
use shared::entrypoints::processor_lambda::handle;
use shared::fixtures;
use shared::idempotency::DynamoDbIdempotencyStore;
use shared::identity::{DynamoDbCustomerStore, DynamoDbNameLocks};
use shared::ingest::IngestService;
use shared::keap::{Credential, Directory, KeapClient, KeapClientConfig};
use shared::processor::{Limits, Processor};
use shared::queue::{SqsRecordControl, SqsWebhookQueue, MAX_VISIBILITY_DELAY};
use shared::rules::RuleSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "liveness-shared-key";

struct Stack {
    resources: ProcessorResources,
    keap: KeapStandIn,
    processor: Arc<Processor>,
    control: Arc<RecordingControl>,
    ingest: IngestService<SqsWebhookQueue>,
}

/// One invocation's outcome.
struct Invocation {
    records: usize,
    failed: Vec<String>,
    /// Receipt handles of the records reported failed.
    hidden: Vec<String>,
    elapsed: Duration,
}

impl Stack {
    async fn start() -> Self {
        let resources = processor_resources("liveness").await;
        let rules = RuleSet::default_rules().expect("rules");
        let keap = KeapStandIn::start().await;
        keap.add_custom_fields(rules.custom_field_labels(), 100);
        // The client as deployed: its retries, waits and deadline handling untouched; only the
        // pace is raised (the stand-in is local).
        let mut config = KeapClientConfig::new(keap.base_url(), Credential::ApiKey("sak".into()));
        config.requests_per_second = std::num::NonZeroU32::new(100).expect("non-zero");
        let table = |name: &str| Table::new(resources.dynamodb.clone(), name);
        let processor = Arc::new(Processor {
            rules: Arc::new(rules),
            crm: Arc::new(KeapClient::new(config).expect("client")),
            directory: Arc::new(Directory::new(Arc::new(DynamoDbNameLocks::new(table(
                &resources.customers_table,
            ))))),
            idempotency: Arc::new(DynamoDbIdempotencyStore::new(table(
                &resources.idempotency_table,
            ))),
            customers: Arc::new(DynamoDbCustomerStore::new(table(
                &resources.customers_table,
            ))),
            settings: Limits::default(),
        });
        let control = Arc::new(RecordingControl::new(SqsRecordControl::new(
            resources.sqs.clone(),
            &resources.queue_url,
            &resources.dead_letter_url,
        )));
        let ingest = IngestService::new(
            SharedKeySet::parse(KEY).expect("key"),
            SqsWebhookQueue::new(resources.sqs.clone(), &resources.queue_url),
        );
        Self {
            resources,
            keap,
            processor,
            control,
            ingest,
        }
    }

    async fn post(&self, body: &str) {
        assert_eq!(post_signed(&self.ingest, KEY, body).await, 200);
    }

    /// One invocation with `time` left; deletes what succeeded.
    async fn invoke(&self, time: Duration) -> Invocation {
        let sqs = &self.resources.sqs;
        let event = receive_as_lambda_event(sqs, &self.resources.queue_url, 600).await;
        let started = Instant::now();
        let response = handle(
            self.processor.clone(),
            self.control.clone(),
            event.clone(),
            Instant::now() + time,
        )
        .await
        .expect("reportable");
        let elapsed = started.elapsed();
        let failed: Vec<String> = response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        integration_tests::delete_succeeded(sqs, &self.resources.queue_url, &event, &failed).await;
        let hidden = event
            .records
            .iter()
            .filter(|r| failed.contains(&r.message_id.clone().unwrap_or_default()))
            .filter_map(|r| r.receipt_handle.clone())
            .collect();
        Invocation {
            records: event.records.len(),
            failed,
            hidden,
            elapsed,
        }
    }

    async fn show(&self, receipts: &[String]) {
        show(&self.resources.sqs, &self.resources.queue_url, receipts).await;
    }

    async fn dead_letters(&self) -> usize {
        drain(&self.resources.sqs, &self.resources.dead_letter_url)
            .await
            .len()
    }

    fn goals(&self) -> Vec<String> {
        self.keap
            .state()
            .goals
            .iter()
            .map(|(i, c, _)| format!("{i}/{c}"))
            .collect()
    }
}

/// Two webhooks of one customer: a signup, and its cancellation a day later.
fn two_webhooks() -> [String; 2] {
    let at = |day: u8| format!("2026-05-{day:02}%2010%3A00%3A00%20-0500");
    let event = |id: &str, event: &str, state: &str, day: u8| {
        fixtures::derive(
            fixtures::SIGNUP_SUCCESS,
            id,
            event,
            &[
                ("payload[subscription][state]", state),
                ("payload[subscription][updated_at]", &at(day)),
            ],
        )
    };
    [
        event("301", "signup_success", "active", 1),
        event("302", "subscription_state_change", "canceled", 2),
    ]
}

/// A Keap outage outlasting 12 receive cycles, of `fault`: nothing is dead-lettered (the
/// queue's redrive limit and the processor's age budget are far off), each hide is the one
/// the failure calls for, and once Keap is back both webhooks apply once, in order.
async fn outage(fault: Fault, delay: Duration) {
    let stack = Stack::start().await;
    let [signup, canceled] = two_webhooks();
    stack.post(&signup).await;
    stack.post(&canceled).await;
    let mut cycles = 0;
    for _ in 0..14 {
        // Every attempt of the first contact write fails (retries included).
        for _ in 0..8 {
            stack.keap.inject_on("PUT", "/v1/contacts", fault.clone());
        }
        let invocation = stack.invoke(Duration::from_secs(60)).await;
        assert_eq!(invocation.records, 2, "both records come back each cycle");
        assert_eq!(
            invocation.failed.len(),
            2,
            "the failure and the one held behind it"
        );
        let asked = stack.control.take();
        assert_eq!(
            asked,
            vec![delay, delay],
            "both hidden for the failure's delay"
        );
        stack.keap.state().targeted_faults.clear();
        stack.show(&invocation.hidden).await;
        cycles += 1;
    }
    assert!(
        stack.goals().is_empty(),
        "nothing applied during the outage"
    );
    // Keap is back.
    let invocation = stack.invoke(Duration::from_secs(60)).await;
    assert!(invocation.failed.is_empty(), "{:?}", invocation.failed);
    assert_eq!(
        stack.goals(),
        ["chargify/signup", "chargify/canceled"],
        "once each, in order"
    );
    assert_eq!(stack.dead_letters().await, 0);
    stack.keap.assert_no_violations();
    eprintln!("outage of {fault:?}: {cycles} receive cycles, each hidden {delay:?}, 0 dead letters, both applied once in order");
}

#[tokio::test]
async fn a_keap_5xx_outage_of_more_than_12_cycles_loses_nothing() {
    outage(Fault::Status(503), Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_revoked_key_for_more_than_12_cycles_loses_nothing() {
    outage(Fault::Unauthorized, Duration::from_secs(15 * 60)).await;
}

/// A record held back behind a 30 s failure of its group comes back with it, about 30 s
/// later, not after the queue's visibility timeout (the receive here uses 600 s).
#[tokio::test]
async fn a_held_back_record_returns_with_its_group_after_the_failure_delay() {
    let stack = Stack::start().await;
    let [signup, canceled] = two_webhooks();
    stack.post(&signup).await;
    stack.post(&canceled).await;
    for _ in 0..8 {
        stack
            .keap
            .inject_on("PUT", "/v1/contacts", Fault::Status(503));
    }
    let invocation = stack.invoke(Duration::from_secs(60)).await;
    assert_eq!(invocation.failed.len(), 2);
    assert_eq!(
        stack.control.take(),
        [Duration::from_secs(30), Duration::from_secs(30)]
    );
    stack.keap.state().targeted_faults.clear();
    // Really wait: both are visible again after the 30 s asked, well before 600 s.
    let started = Instant::now();
    let mut back = 0;
    while started.elapsed() < Duration::from_secs(45) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let invocation = stack.invoke(Duration::from_secs(60)).await;
        back += invocation.records;
        if back == 2 {
            break;
        }
    }
    let waited = started.elapsed();
    assert_eq!(back, 2, "both records came back within 45 s");
    assert!(
        waited >= Duration::from_secs(28),
        "not before the delay: {waited:?}"
    );
    assert_eq!(stack.goals(), ["chargify/signup", "chargify/canceled"]);
    eprintln!(
        "held back: received again {:.1} s after the failure",
        waited.as_secs_f64()
    );
}

/// A storm of 20 spike-arrest 429s, then a per-minute 429, on invocations started with 20 s
/// left: each returns before its deadline (in-process retries stop at their count, a long
/// wait hides the record instead), and the record is applied once later.
#[tokio::test]
async fn a_429_storm_and_a_minute_throttle_never_overrun_the_invocation() {
    let stack = Stack::start().await;
    let [signup, _] = two_webhooks();
    stack.post(&signup).await;
    for _ in 0..20 {
        stack.keap.inject(Fault::SpikeArrest);
    }
    let deadline = Duration::from_secs(20);
    let storm = stack.invoke(deadline).await;
    assert_eq!(storm.failed.len(), 1);
    assert!(storm.elapsed < deadline, "storm: {:?}", storm.elapsed);
    let asked = stack.control.take();
    assert!(
        asked[0] <= Duration::from_secs(3),
        "a spike's short wait: {asked:?}"
    );
    stack.keap.state().faults.clear();
    stack.show(&storm.hidden).await;

    stack.keap.inject(Fault::MinuteThrottle);
    let minute = stack.invoke(deadline).await;
    assert_eq!(minute.failed.len(), 1);
    assert!(
        minute.elapsed < Duration::from_secs(5),
        "minute: {:?}",
        minute.elapsed
    );
    let asked = stack.control.take();
    assert!(
        asked[0] >= Duration::from_secs(1) && asked[0] <= Duration::from_secs(61),
        "hidden until the next minute: {asked:?}"
    );
    stack.keap.state().minute_budget.1 = 240;
    stack.show(&minute.hidden).await;

    let after = stack.invoke(deadline).await;
    assert!(after.failed.is_empty());
    assert_eq!(stack.goals(), ["chargify/signup"], "applied once");
    eprintln!(
        "429 storm: returned after {:.1} s of a 20 s invocation; per-minute 429: after {:.1} s, hidden {:?}",
        storm.elapsed.as_secs_f64(),
        minute.elapsed.as_secs_f64(),
        asked[0]
    );
}

/// The daily quota is spent and resets in 22 hours: the record is hidden as long as SQS
/// allows (12 hours from the receive, clamped, never refused), comes back, is hidden again,
/// and applies once after the reset; it is never dead-lettered.
#[tokio::test]
async fn a_daily_quota_22_hours_from_reset_waits_for_it_without_dead_letters() {
    let stack = Stack::start().await;
    let [signup, _] = two_webhooks();
    stack.post(&signup).await;
    let reset = time::OffsetDateTime::now_utc() + time::Duration::hours(22);
    stack.keap.state().quota_expiry_ms = (reset.unix_timestamp() * 1000) as u64;
    let mut hides = Vec::new();
    for _ in 0..2 {
        stack.keap.inject(Fault::DailyQuota);
        let invocation = stack.invoke(Duration::from_secs(60)).await;
        assert_eq!(invocation.failed.len(), 1);
        let asked = stack.control.take();
        assert_eq!(asked.len(), 1);
        assert!(asked[0] <= MAX_VISIBILITY_DELAY, "{asked:?}");
        assert!(
            asked[0] >= Duration::from_secs(11 * 3600),
            "as long as SQS allows: {asked:?}"
        );
        hides.push(asked[0]);
        stack.show(&invocation.hidden).await;
    }
    // The reset.
    {
        let mut keap = stack.keap.state();
        keap.faults.clear();
        keap.daily_budget = (30_000, 30_000);
    }
    let invocation = stack.invoke(Duration::from_secs(60)).await;
    assert!(invocation.failed.is_empty());
    assert_eq!(stack.goals(), ["chargify/signup"]);
    assert_eq!(stack.dead_letters().await, 0);
    assert!(stack.control.asked().is_empty());
    eprintln!("daily quota 22 h from reset: hidden {hides:?} (SQS allows 12 h), applied once after the reset, 0 dead letters");
}

/// Bodies built to hurt, queued without ingest (ingest refuses them): a 5,000- and a
/// 20,000-level nesting and a 100,000-field body are dead-lettered with their reason, and
/// their batch-mates apply.
#[tokio::test]
async fn hostile_bodies_on_the_queue_are_dead_lettered_and_their_batch_mates_apply() {
    let stack = Stack::start().await;
    let hostile = |id: &str, tail: String| format!("id={id}&event=signup_success&{tail}");
    let deep = |levels: usize| format!("payload{}=x", "[a]".repeat(levels));
    let wide = (0..100_000).map(|_| "a").collect::<Vec<_>>().join("&");
    let bodies = [
        hostile("401", deep(5_000)),
        hostile("402", deep(20_000)),
        hostile("403", wide),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let envelope = fixtures::envelope(body).expect("an envelope (ingest would refuse it)");
        stack
            .resources
            .sqs
            .send_message()
            .queue_url(&stack.resources.queue_url)
            .message_group_id(format!("hostile-{i}"))
            .message_deduplication_id(format!("hostile-{i}"))
            .message_body(envelope.to_json())
            .send()
            .await
            .expect("queued");
    }
    let [signup, _] = two_webhooks();
    stack.post(&signup).await;
    let invocation = stack.invoke(Duration::from_secs(60)).await;
    assert_eq!(invocation.records, 4);
    assert!(invocation.failed.is_empty(), "{:?}", invocation.failed);
    assert_eq!(stack.goals(), ["chargify/signup"], "the batch-mate applied");
    let letters = drain(&stack.resources.sqs, &stack.resources.dead_letter_url).await;
    let mut codes: Vec<String> = letters
        .iter()
        .map(|l| {
            l.attributes
                .iter()
                .find(|(k, _)| k == "FailureCode")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        ["body_too_deep", "body_too_deep", "body_too_many_fields"]
    );
}

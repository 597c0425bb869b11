//! A simulated 10-minute SQS outage during which the stand-in Chargify's
//! retries run out, recovered by the reconciler, compared with a run without the outage.
//!
//! - **Chargify**: the stand-in, delivering each webhook to the **built `ingest` binary**
//!   (under `cargo lambda watch`, over HTTP, through its function-URL route) on Chargify's
//!   retry schedule compressed 100× (5 attempts over ~3 s instead of ~5 min), pausing the
//!   endpoint after Chargify's 25 failed attempts in a row.
//! - **SQS**: moto, reached by ingest through a TCP proxy on 127.0.0.1 that drops every
//!   connection while the outage lasts: ingest answers 503 as in a real SQS outage.
//! - **Processor**: its Lambda handler in process on each batch (as the event source mapping
//!   delivers it), DynamoDB in moto, the Keap stand-in.
//! - **Reconciler**: in process, wired by `ReconcilerSettings::build` exactly as the Lambda's
//!   cold start wires it (configuration from variables, SQS, DynamoDB, the Chargify client).
//!
//! The outage lasts 10 compressed minutes (6 s) and at least until every webhook created in
//! it has failed or paused; webhooks created after the pause are stored `paused` and never
//! sent, as Chargify does. Then the reconciler runs, the processor drains, and Keap must look
//! exactly as after the same story without the outage.

use integration_tests::chargify_standin::{
    ChargifyStandIn, Delivery, NewSubscription, StandInConfig, WebhookStatus,
};
use integration_tests::lambda_watch::LambdaWatch;
use integration_tests::pipeline::{Pipeline, KEY};
use integration_tests::{aws_config_for, http_request, moto_endpoint};
use serde_json::Value;
use shared::config::{ReconcilerSettings, Vars};
use shared::idempotency::{IdempotencyKey, IdempotencyStore, RecordStatus};
use shared::reconcile::{ReconcileReport, Reconciler};
use shared::rules::RuleSet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SITE: &str = "acme";
/// Chargify's schedule runs 100 times faster: 10 minutes are 6 s.
const TIME_SCALE: f64 = 0.01;
const OUTAGE: Duration = Duration::from_secs(600);
/// Chargify pauses an endpoint after this many failed attempts in a row.
const PAUSE_AFTER: u32 = 25;

/// A TCP proxy to moto that drops every connection, new or open, while `down` is true.
struct SqsProxy {
    port: u16,
    down: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SqsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SqsProxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (down, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    if *rx.borrow() {
                        return; // dropped: the caller sees the connection closed
                    }
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Self { port, down, task }
    }

    fn set_down(&self, down: bool) {
        let _ = self.down.send(down);
    }
}

/// One world: moto resources, the Keap stand-in and processor, the ingest binary behind the
/// proxy, the Chargify stand-in delivering to it.
struct World {
    pipeline: Pipeline,
    chargify: ChargifyStandIn,
    proxy: SqsProxy,
    _ingest: LambdaWatch,
}

impl World {
    async fn start() -> Self {
        let pipeline = Pipeline::start(RuleSet::default_rules().expect("rules")).await;
        let endpoint = moto_endpoint();
        let proxy = SqsProxy::start(endpoint.trim_start_matches("http://").to_owned()).await;
        let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
        let ingest = LambdaWatch::start(
            "ingest",
            &[
                ("QUEUE_URL", pipeline.queue_url.as_str()),
                ("AWS_ENDPOINT_URL", proxy_url.as_str()),
                ("CHARGIFY_SHARED_KEYS", KEY),
                ("AWS_REGION", "us-east-1"),
                // A failing SendMessage answers 503 within a second, as Chargify's deliveries
                // would otherwise wait for the 8 s default on every attempt.
                ("SQS_TIMEOUT_MS", "1000"),
            ],
            &[
                "CHARGIFY_SHARED_KEYS_SECRET_ARN",
                "AWS_DEFAULT_REGION",
                "SQS_TIMEOUT_MS",
            ],
        );
        wait_until_ready(ingest.port).await;
        let chargify = chargify_standin().await;
        chargify.deliver_to(Delivery {
            url: format!("http://127.0.0.1:{}/lambda-url/ingest/", ingest.port),
            time_scale: TIME_SCALE,
            pause_after: PAUSE_AFTER,
            timeout: Duration::from_secs(15),
        });
        Self {
            pipeline,
            chargify,
            proxy,
            _ingest: ingest,
        }
    }

    async fn settle(&self) {
        assert!(
            self.chargify
                .wait_deliveries_idle(Duration::from_secs(180))
                .await,
            "deliveries still running after 180 s"
        );
        let failed = self.pipeline.drain_through_processor().await;
        assert!(failed.is_empty(), "records failed: {failed:?}");
    }

    async fn reconciler(&self) -> Reconciler {
        let vars = reconciler_vars(&self.pipeline, &self.chargify);
        let mut settings =
            ReconcilerSettings::from_vars(&Vars::from_pairs(vars)).expect("configuration");
        // The stand-in's clock starts on this day; a first run would otherwise start
        // yesterday (UTC), which is another day when the test runs on another date.
        settings.run.since_date = Some(time::macros::date!(2026 - 11 - 27));
        let aws = aws_config_for(&moto_endpoint()).await;
        settings.build(&aws).await.expect("reconciler")
    }

    async fn reconcile(&self) -> ReconcileReport {
        self.reconciler()
            .await
            .run(Instant::now() + Duration::from_secs(120))
            .await
            .expect("reconcile run")
    }

    fn keap_calls(&self) -> usize {
        self.pipeline.keap.state().calls.len()
    }
}

/// The stand-in Chargify of these tests: our site, signing with the pipeline's shared key.
async fn chargify_standin() -> ChargifyStandIn {
    ChargifyStandIn::start_with(StandInConfig {
        site: SITE.into(),
        shared_key: KEY.into(),
        ..StandInConfig::default()
    })
    .await
}

/// The reconciler's variables for a pipeline and a stand-in, as the stack would set them.
fn reconciler_vars(
    pipeline: &Pipeline,
    chargify: &ChargifyStandIn,
) -> HashMap<&'static str, String> {
    HashMap::from([
        ("QUEUE_URL", pipeline.queue_url.clone()),
        ("CHARGIFY_SHARED_KEYS", KEY.to_owned()),
        ("CHARGIFY_SITE", SITE.to_owned()),
        ("CHARGIFY_API_KEY", chargify.state().config.api_key.clone()),
        ("CHARGIFY_BASE_URL", chargify.base_url()),
        ("IDEMPOTENCY_TABLE", pipeline.idempotency_table.clone()),
        ("CUSTOMERS_TABLE", pipeline.customers_table.clone()),
    ])
}

/// Waits (bounded) until the built ingest function answers (an unsigned post: 401).
async fn wait_until_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let answer = http_request(port, "POST", "/lambda-url/ingest/", &[], b"").await;
        if matches!(answer, Ok((401, _))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ingest function did not answer within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The customers of the story: subscription ids in order.
fn customers(chargify: &ChargifyStandIn) -> Vec<i64> {
    [
        (101, "trialing"),
        (102, "active"),
        (103, "trialing"),
        (104, "active"),
        (105, "active"),
    ]
    .into_iter()
    .map(|(customer, state)| chargify.add_subscription(NewSubscription::new(customer, state)))
    .collect()
}

/// Before the outage: three signups.
fn phase1(c: &ChargifyStandIn, s: &[i64]) -> Vec<i64> {
    vec![
        c.emit(s[0], "signup_success").1,
        c.emit(s[1], "signup_success").1,
        c.emit(s[2], "signup_success").1,
    ]
}

/// During the outage: six webhooks, enough failed attempts to pause the endpoint.
fn phase2(c: &ChargifyStandIn, s: &[i64]) -> Vec<i64> {
    vec![
        c.change_state(s[0], "past_due").1,
        c.emit(s[0], "payment_failure").1,
        c.change_state(s[1], "canceled").1,
        c.emit(s[3], "signup_success").1,
        c.change_state(s[2], "active").1,
        c.emit(s[2], "payment_success").1,
    ]
}

/// After SQS is back, while Chargify still has the endpoint paused.
fn phase3(c: &ChargifyStandIn, s: &[i64]) -> Vec<i64> {
    vec![
        c.change_state(s[0], "active").1,
        c.emit(s[0], "payment_success").1,
        c.emit(s[4], "signup_success").1,
        c.change_state(s[3], "past_due").1,
    ]
}

/// What a Keap user sees, by contact email: the contact's fields (ids and timestamps left
/// out: they differ between worlds by construction), its tag names, and the goals achieved.
fn keap_view(pipeline: &Pipeline) -> BTreeMap<String, Value> {
    let state = pipeline.keap.state();
    let tag_name = |id: &i64| {
        state
            .tags
            .get(id)
            .and_then(|t| t["name"].as_str())
            .unwrap_or("?")
            .to_owned()
    };
    let mut view = BTreeMap::new();
    for (id, contact) in &state.contacts {
        let email = contact
            .get("email_addresses")
            .and_then(|e| e[0]["email"].as_str())
            .unwrap_or("?")
            .to_owned();
        let mut fields = contact.clone();
        fields.retain(|k, _| !(k == "id" || k.contains("date") || k.contains("updated")));
        let tags: BTreeSet<String> = state
            .contact_tags
            .get(id)
            .map(|t| t.iter().map(tag_name).collect())
            .unwrap_or_default();
        let mut goals: BTreeMap<String, u32> = BTreeMap::new();
        for (_, call, contact_id) in &state.goals {
            if contact_id == id {
                *goals.entry(call.clone()).or_default() += 1;
            }
        }
        view.insert(
            email,
            serde_json::json!({"fields": fields, "tags": tags, "goals": goals}),
        );
    }
    view
}

async fn assert_all_completed(pipeline: &Pipeline, webhooks: &[i64]) {
    for id in webhooks {
        let record = pipeline
            .idempotency
            .get(&IdempotencyKey::new(SITE, id.to_string()))
            .await
            .expect("read");
        assert_eq!(
            record.map(|r| r.status),
            Some(RecordStatus::Completed),
            "webhook {id} was not processed"
        );
    }
}

#[tokio::test]
async fn a_ten_minute_sqs_outage_is_recovered_by_the_reconciler_to_the_same_keap_state() {
    let started = Instant::now();
    // Baseline: the story with SQS up throughout.
    let base = World::start().await;
    let subs = customers(&base.chargify);
    let mut all = phase1(&base.chargify, &subs);
    base.settle().await;
    all.extend(phase2(&base.chargify, &subs));
    base.settle().await;
    all.extend(phase3(&base.chargify, &subs));
    base.settle().await;
    assert_all_completed(&base.pipeline, &all).await;
    assert_eq!(
        base.chargify
            .state()
            .webhooks_with(WebhookStatus::Successful)
            .len(),
        all.len()
    );
    let baseline = keap_view(&base.pipeline);
    let baseline_calls = base.keap_calls();
    base.pipeline.assert_no_violations();
    drop(base);
    eprintln!("baseline done in {:?}", started.elapsed());

    // The same story in a fresh world, with SQS down for 10 (compressed) minutes.
    let world = World::start().await;
    let subs = customers(&world.chargify);
    let mut all = phase1(&world.chargify, &subs);
    world.settle().await;
    world.proxy.set_down(true);
    let outage_started = Instant::now();
    let during = phase2(&world.chargify, &subs);
    all.extend(&during);
    let outage_until = outage_started + OUTAGE.mul_f64(TIME_SCALE);
    let bound = Instant::now() + Duration::from_secs(180);
    loop {
        let settled = {
            let state = world.chargify.state();
            during.iter().all(|id| {
                matches!(
                    state.webhooks.get(id).map(|w| w.status),
                    Some(WebhookStatus::Failed | WebhookStatus::Paused)
                )
            })
        };
        if settled && Instant::now() >= outage_until {
            break;
        }
        assert!(
            Instant::now() < bound,
            "Chargify's retries did not run out in 180 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    world.proxy.set_down(false);
    eprintln!("outage lasted {:?}", outage_started.elapsed());
    {
        let state = world.chargify.state();
        assert!(
            state.paused,
            "25 failed attempts in a row pause the endpoint"
        );
        assert!(
            !state.webhooks_with(WebhookStatus::Failed).is_empty(),
            "some webhooks ran out of retries"
        );
    }
    // SQS is back, but Chargify sends nothing to a paused endpoint on its own.
    let after = phase3(&world.chargify, &subs);
    all.extend(&after);
    world.settle().await;
    let (failed, paused) = {
        let state = world.chargify.state();
        (
            state.webhooks_with(WebhookStatus::Failed),
            state.webhooks_with(WebhookStatus::Paused),
        )
    };
    assert_eq!(failed.len() + paused.len(), during.len() + after.len());
    assert!(after.iter().all(|id| paused.contains(id)), "{paused:?}");
    let before_reconcile = keap_view(&world.pipeline);
    assert_ne!(before_reconcile, baseline, "the outage lost events");

    // `cks reconcile --dry-run`, the same code from the operator's machine: it sees what the
    // run will do and changes nothing.
    let (api_key, base_url) = (
        world.chargify.state().config.api_key.clone(),
        world.chargify.base_url(),
    );
    let dry = integration_tests::run_cks(
        &[
            "reconcile",
            "--queue-url",
            &world.pipeline.queue_url,
            "--idempotency-table",
            &world.pipeline.idempotency_table,
            "--customers-table",
            &world.pipeline.customers_table,
            "--since-date",
            "2026-11-27",
            "--dry-run",
            "--json",
        ],
        &[
            ("CKS_STACK", None),
            ("CHARGIFY_SITE", Some(SITE)),
            ("CHARGIFY_API_KEY", Some(&api_key)),
            ("CHARGIFY_API_KEY_SECRET_ARN", None),
            ("CHARGIFY_BASE_URL", Some(&base_url)),
            ("CHARGIFY_SHARED_KEYS", Some(KEY)),
            ("CHARGIFY_SHARED_KEYS_SECRET_ARN", None),
        ],
    )
    .await;
    assert!(dry.ok, "cks reconcile --dry-run: {}", dry.stderr);
    let dry = &dry.json_lines()[0];
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        dry["webhooks_enqueued"].as_u64(),
        Some((failed.len() + paused.len()) as u64)
    );
    assert!(
        world.pipeline.invoke().await.is_none(),
        "a dry run sends nothing"
    );

    let report = world.reconcile().await;
    eprintln!("reconcile report: {report:?}");
    assert_eq!(
        report.webhooks_enqueued as usize,
        failed.len() + paused.len()
    );
    assert_eq!(report.webhooks_signature_failed, 0);
    assert_eq!(
        report.snapshots_enqueued, 0,
        "the webhooks carry every state"
    );
    assert!(report.needs_attention.is_empty());
    world.settle().await;
    assert_all_completed(&world.pipeline, &all).await;
    let recovered = keap_view(&world.pipeline);
    let outage_calls = world.keap_calls();
    world.pipeline.assert_no_violations();
    eprintln!(
        "Keap calls: baseline {baseline_calls}, outage run {outage_calls}; webhooks recovered: {} failed + {} paused; Chargify delivery attempts: {}",
        failed.len(),
        paused.len(),
        world.chargify.state().delivery_attempts
    );
    assert_eq!(
        recovered, baseline,
        "Keap differs from the run without the outage"
    );

    // A second run finds every listed webhook processed: nothing sent, no Keap call.
    let again = world.reconcile().await;
    assert_eq!(again.webhooks_enqueued, 0);
    assert_eq!(
        again.webhooks_already_processed as usize,
        failed.len() + paused.len()
    );
    world.settle().await;
    assert_eq!(world.keap_calls(), outage_calls);
    eprintln!("whole test {:?}", started.elapsed());
}

/// The Events-API path, without deliveries (webhooks are posted through ingest in process):
/// events whose state was applied cost nothing; an event whose webhook never existed brings
/// a snapshot that applies its state.
#[tokio::test]
async fn an_event_without_a_webhook_is_recovered_by_a_snapshot_and_applied_ones_cost_nothing() {
    let pipeline = Pipeline::start(RuleSet::default_rules().expect("rules")).await;
    let chargify = chargify_standin().await;
    let a = chargify.add_subscription(NewSubscription::new(201, "active"));
    let b = chargify.add_subscription(NewSubscription::new(202, "active"));
    for sub in [a, b] {
        let (_, webhook) = chargify.emit(sub, "signup_success");
        let body = chargify.state().webhooks[&webhook].body.clone();
        assert_eq!(pipeline.post(&body).await, 200);
    }
    assert!(pipeline.drain_through_processor().await.is_empty());
    let vars = reconciler_vars(&pipeline, &chargify);
    let aws = aws_config_for(&moto_endpoint()).await;
    let reconciler = ReconcilerSettings::from_vars(&Vars::from_pairs(vars))
        .expect("configuration")
        .build(&aws)
        .await
        .expect("reconciler");
    let run = || reconciler.run(Instant::now() + Duration::from_secs(60));

    // Both signups were applied: the walk reads each subscription once and sends nothing.
    let calls = pipeline.keap.state().calls.len();
    let first = run().await.expect("run");
    assert_eq!(first.events_seen, 2);
    assert_eq!(first.snapshots_already_applied, 2);
    assert_eq!(first.snapshots_enqueued, 0);
    assert!(pipeline.drain_through_processor().await.is_empty());
    assert_eq!(pipeline.keap.state().calls.len(), calls, "no Keap call");

    // B is canceled in Chargify, and its webhook never existed (not subscribed, say).
    let (_, webhook) = chargify.change_state(b, "canceled");
    chargify.state().webhooks.remove(&webhook);
    let second = run().await.expect("run");
    assert_eq!(second.events_seen, 1);
    assert_eq!(second.snapshots_enqueued, 1);
    assert!(pipeline.drain_through_processor().await.is_empty());
    let view = keap_view(&pipeline);
    let tags = |email: &str| view[email]["tags"].clone();
    assert_eq!(
        tags("customer202@example.com"),
        serde_json::json!(["Billing: Canceled", "Plan: basic"])
    );
    assert_eq!(
        tags("customer201@example.com"),
        serde_json::json!(["Billing: Active", "Plan: basic"])
    );
    // A snapshot restores state, not history: no goal fired for the cancellation.
    assert!(view["customer202@example.com"]["goals"]
        .get("canceled")
        .is_none());

    // Nothing new: nothing read beyond the cursor.
    let third = run().await.expect("run");
    assert_eq!((third.events_seen, third.snapshots_enqueued), (0, 0));
    pipeline.assert_no_violations();
}

/// The built `reconciler` binary under `cargo lambda watch`, configured by environment only
/// as in AWS, invoked with the scheduled event of `events/`: it enqueues a failed webhook
/// from its stored body, the processor applies it, and its EMF metrics say so.
// Multi-threaded: the Chargify stand-in serves on this runtime while `cargo lambda invoke`
// blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_reconciler_binary_recovers_a_failed_webhook_on_its_scheduled_event() {
    use integration_tests::emf;
    use shared::cursor_store::{CursorStore, DynamoDbCursorStore};
    use shared::reconcile::cursor::{self, DayPosition, WebhookCursor};

    let pipeline = Pipeline::start(RuleSet::default_rules().expect("rules")).await;
    let chargify = chargify_standin().await;
    let sub = chargify.add_subscription(NewSubscription::new(301, "active"));
    let (_, webhook) = chargify.emit(sub, "signup_success");
    if let Some(hook) = chargify.state().webhooks.get_mut(&webhook) {
        hook.status = WebhookStatus::Failed;
    }
    // The cursor an earlier run left on the stand-in's day (a first run would start
    // yesterday, UTC, which is another day when this test runs on another date).
    let endpoint = moto_endpoint();
    let aws = aws_config_for(&endpoint).await;
    let cursors = DynamoDbCursorStore::new(shared::dynamodb::Table::from_config(
        &aws,
        &pipeline.idempotency_table,
    ));
    let day = DayPosition::new(time::macros::date!(2026 - 11 - 27));
    let stored = WebhookCursor {
        failed: Some(day),
        paused: Some(day),
        ..WebhookCursor::default()
    };
    cursor::save(&cursors, &cursor::webhooks_key(SITE), &stored)
        .await
        .expect("cursor saved");
    assert!(cursors
        .load(&cursor::webhooks_key(SITE))
        .await
        .expect("load")
        .is_some());

    let vars = reconciler_vars(&pipeline, &chargify);
    let mut env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
    ]);
    let watch = LambdaWatch::start(
        "reconciler",
        &env,
        &[
            "CHARGIFY_SHARED_KEYS_SECRET_ARN",
            "CHARGIFY_API_KEY_SECRET_ARN",
            "AWS_DEFAULT_REGION",
        ],
    );
    let report = watch
        .invoke_when_ready("reconciler", "events/reconciler-schedule.json")
        .await
        .unwrap_or_else(|e| panic!("invoke: {e}\n{}", watch.log_text()));
    assert_eq!(report["webhooks_enqueued"], 1, "{report}");
    assert_eq!(report["events_seen"], 1, "{report}");
    assert_eq!(report["snapshots_covered_by_webhooks"], 1, "{report}");
    assert!(pipeline.drain_through_processor().await.is_empty());
    assert_all_completed(&pipeline, &[webhook]).await;
    assert!(keap_view(&pipeline).contains_key("customer301@example.com"));
    // The run's lines carry its request id and say it is the cold start.
    let ids = watch.assert_lines_carry_the_invocation("reconciler", "reconciler ready");
    assert!(!ids.is_empty());
    let metrics = emf::extract(&emf::documents(&watch.log_text()));
    assert_eq!(
        emf::total(
            &metrics,
            "ReconcilerWebhooksRecovered",
            &[("Function", "reconciler"), ("Outcome", "enqueued")]
        ),
        1.0
    );
    assert_eq!(
        emf::dimension_sets(&metrics, "ReconcilerSnapshotsEnqueued"),
        [["Function", "Outcome"]]
    );
}

//! The convergence property through the deployed pipeline's real wire protocols: random
//! customer histories are posted, signed, through ingest onto an SQS FIFO queue in moto, in the
//! weather's order (reordered, repeated, replayed late); three processor instances, each its
//! own Keap client and tag directory, share the DynamoDB tables (moto, one request at a time,
//! so conditional writes are atomic as in DynamoDB) and drain the queue with the Lambda
//! handler; one of them is killed mid-batch now and then. Keap (the stand-in, which refuses
//! anything the v1 spec refuses) must end exactly as an uninterrupted in-order run of the same
//! histories leaves it (the in-memory reference), with no double goal, no duplicate tag, no
//! contract violation and no call that changes nothing.
//!
//! Time is skipped, not waited for: a record hidden for a retry, and the records of a killed
//! instance, are made visible again at once (after checking the delay asked for), and a killed
//! instance's leases are expired in the tables.

use integration_tests::keap_standin::KeapStandIn;
use integration_tests::keap_view::standin_view;
use integration_tests::pipeline::post_signed;
use integration_tests::recording_control::{show, RecordingControl};
use integration_tests::{processor_resources, receive_as_lambda_event, ProcessorResources};
use shared::chargify::SharedKeySet;
use shared::dynamodb::Table;
use shared::entrypoints::processor_lambda::handle;
use shared::fixtures::history::{histories, knob, weather, Rng, Sent, SITE};
use shared::fixtures::kill::{KillSwitch, Killable};
use shared::fixtures::view::{self, GoalCounts, KeapView};
use shared::idempotency::{DynamoDbIdempotencyStore, IdempotencyStore, InMemoryIdempotencyStore};
use shared::identity::{
    CustomerStore, DynamoDbCustomerStore, DynamoDbNameLocks, InMemoryCustomerStore,
    InMemoryNameLocks, NameLocks,
};
use shared::ingest::IngestService;
use shared::keap::{Credential, Crm, Directory, InMemoryCrm, KeapClient, KeapClientConfig};
use shared::processor::{Limits, Processor};
use shared::queue::{RecordControl, SqsRecordControl, SqsWebhookQueue, MAX_VISIBILITY_DELAY};
use shared::rules::RuleSet;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "convergence-shared-key";

/// The shared parts of a cluster of processor instances.
struct Cluster {
    resources: ProcessorResources,
    keap: KeapStandIn,
    rules: Arc<RuleSet>,
    idempotency: Arc<DynamoDbIdempotencyStore>,
    customers: Arc<DynamoDbCustomerStore>,
    locks: Arc<DynamoDbNameLocks>,
    control: Arc<RecordingControl>,
    ingest: IngestService<SqsWebhookQueue>,
}

impl Cluster {
    async fn start() -> Self {
        let resources = processor_resources("convergence").await;
        let rules = Arc::new(RuleSet::default_rules().expect("default rules"));
        let keap = KeapStandIn::start().await;
        keap.add_custom_fields(rules.custom_field_labels(), 100);
        let table = |name: &str| Table::new(resources.dynamodb.clone(), name);
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
            idempotency: Arc::new(DynamoDbIdempotencyStore::new(table(
                &resources.idempotency_table,
            ))),
            customers: Arc::new(DynamoDbCustomerStore::new(table(
                &resources.customers_table,
            ))),
            locks: Arc::new(DynamoDbNameLocks::new(table(&resources.customers_table))),
            resources,
            keap,
            rules,
            control,
            ingest,
        }
    }

    /// A processor process: its own Keap client and directory, every port behind `switch`.
    fn instance(&self, switch: &Arc<KillSwitch>) -> Arc<Processor> {
        let mut config =
            KeapClientConfig::new(self.keap.base_url(), Credential::ApiKey("sak-conv".into()));
        config.max_retries = 1;
        config.requests_per_second = std::num::NonZeroU32::new(400).expect("non-zero");
        let crm: Arc<dyn Crm> = Arc::new(KeapClient::new(config).expect("client"));
        let idempotency: Arc<dyn IdempotencyStore> = self.idempotency.clone();
        let customers: Arc<dyn CustomerStore> = self.customers.clone();
        let locks: Arc<dyn NameLocks> = self.locks.clone();
        Arc::new(Processor {
            rules: self.rules.clone(),
            crm: Killable::new(crm, switch.clone()),
            directory: Arc::new(Directory::new(Killable::new(locks, switch.clone()))),
            idempotency: Killable::new(idempotency, switch.clone()),
            customers: Killable::new(customers, switch.clone()),
            settings: Limits::default(),
        })
    }

    /// The time a dead process's leases needed, skipped: every lease in both tables ends.
    async fn expire_leases(&self) {
        use aws_sdk_dynamodb::types::AttributeValue;
        let db = &self.resources.dynamodb;
        for (table, attribute) in [
            (&self.resources.idempotency_table, "lease_expires_at"),
            (&self.resources.customers_table, "lease_until"),
        ] {
            let items = db
                .scan()
                .table_name(table.as_str())
                .send()
                .await
                .expect("scan")
                .items
                .unwrap_or_default();
            for item in items {
                if !item.contains_key(attribute) {
                    continue;
                }
                db.update_item()
                    .table_name(table.as_str())
                    .key("pk", item["pk"].clone())
                    .update_expression(format!("SET {attribute} = :zero"))
                    .expression_attribute_values(":zero", AttributeValue::N("0".into()))
                    .send()
                    .await
                    .expect("expire a lease");
            }
        }
    }

    /// Makes hidden records visible now (the wait skipped).
    async fn show(&self, receipts: &[String]) {
        show(&self.resources.sqs, &self.resources.queue_url, receipts).await;
    }

    async fn queue_is_empty(&self) -> bool {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let attributes = self
            .resources
            .sqs
            .get_queue_attributes()
            .queue_url(&self.resources.queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("attributes")
            .attributes
            .unwrap_or_default();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .all(|a| attributes.get(a).is_none_or(|n| n == "0"))
    }
}

/// The reference: every webhook once, in true order, one at a time, in memory.
async fn reference(sends: &[Sent], rules: &Arc<RuleSet>) -> (KeapView, GoalCounts) {
    let crm = Arc::new(InMemoryCrm::new());
    for label in rules.custom_field_labels() {
        crm.add_custom_field(&label);
    }
    let customers = Arc::new(InMemoryCustomerStore::new());
    let processor = Processor {
        rules: rules.clone(),
        crm: crm.clone(),
        directory: Arc::new(Directory::new(Arc::new(InMemoryNameLocks::new()))),
        idempotency: Arc::new(InMemoryIdempotencyStore::new()),
        customers: customers.clone(),
        settings: Limits::default(),
    };
    let mut ordered = sends.to_vec();
    ordered.sort_by_key(|s| s.id);
    for sent in &ordered {
        let envelope = shared::fixtures::envelope(&sent.body).expect("envelope");
        processor
            .process(&envelope, Duration::from_secs(60))
            .await
            .expect("the reference applies every webhook");
    }
    view::in_memory(&crm, &customers)
}

/// How a drain went.
#[derive(Default)]
struct Drained {
    /// Per customer, webhook ids in the order first completed.
    applied: BTreeMap<String, Vec<String>>,
    kills: usize,
    batches: usize,
}

/// Drains the queue with `instances` instances; each batch of instance 0 is killed after a
/// random number of external calls with probability `kill_percent`.
async fn drain(
    cluster: &Cluster,
    instances: usize,
    kill_percent: u64,
    rng: &mut Rng,
    customer_of: &BTreeMap<String, u64>,
) -> Drained {
    let mut drained = Drained::default();
    for _round in 0..600 {
        let mut work = Vec::new();
        for i in 0..instances {
            let event =
                receive_as_lambda_event(&cluster.resources.sqs, &cluster.resources.queue_url, 60)
                    .await;
            if event.records.is_empty() {
                continue;
            }
            // Instance 0 dies in some of its batches (at least in its first few), after a
            // random number of external calls.
            let kill = i == 0 && (drained.kills < 3 || rng.chance(kill_percent));
            let switch = if kill && drained.kills < 6 {
                KillSwitch::after(rng.below(40))
            } else {
                KillSwitch::counting()
            };
            work.push((cluster.instance(&switch), switch, event));
        }
        if work.is_empty() {
            if cluster.queue_is_empty().await {
                return drained;
            }
            continue;
        }
        let runs = work.into_iter().map(|(processor, switch, event)| {
            let control: Arc<dyn RecordControl> = cluster.control.clone();
            async move {
                let handled = handle(
                    processor,
                    control,
                    event.clone(),
                    Instant::now() + Duration::from_secs(60),
                );
                (event, switch.run(handled).await)
            }
        });
        for (event, result) in futures::future::join_all(runs).await {
            drained.batches += 1;
            let receipts: Vec<String> = event
                .records
                .iter()
                .filter_map(|r| r.receipt_handle.clone())
                .collect();
            let Some(result) = result else {
                drained.kills += 1;
                cluster.show(&receipts).await;
                cluster.expire_leases().await;
                continue;
            };
            let failed: Vec<String> = result
                .expect("every record has an id")
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier)
                .collect();
            integration_tests::delete_succeeded(
                &cluster.resources.sqs,
                &cluster.resources.queue_url,
                &event,
                &failed,
            )
            .await;
            let mut retry = Vec::new();
            for record in &event.records {
                let id = record.message_id.clone().unwrap_or_default();
                if failed.contains(&id) {
                    retry.extend(record.receipt_handle.clone());
                    continue;
                }
                let envelope = shared::envelope::WebhookEnvelope::from_json(
                    record.body.as_deref().unwrap_or(""),
                )
                .expect("envelope");
                let customer = customer_of[&envelope.webhook_id].to_string();
                let order = drained.applied.entry(customer).or_default();
                if !order.contains(&envelope.webhook_id) {
                    order.push(envelope.webhook_id);
                }
            }
            cluster.show(&retry).await;
        }
    }
    panic!("the queue did not drain in 600 rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_with_kills_end_as_the_in_order_run() {
    let seed: u64 = knob("CONVERGENCE_SEED", 7_2026);
    let customers: usize = knob("CONVERGENCE_LAMBDA_HISTORIES", 30);
    let mut rng = Rng::new(seed);
    let all = histories(&mut rng, 20_000, customers);
    let sends: Vec<Sent> = all.iter().flatten().cloned().collect();
    let cluster = Cluster::start().await;
    let (expected_view, in_order_goals) = reference(&sends, &cluster.rules).await;

    // Each customer's webhooks in the weather's order, customers interleaved.
    let mut queues: Vec<std::collections::VecDeque<Sent>> =
        all.iter().map(|h| weather(&mut rng, h).into()).collect();
    let mut delivered = 0;
    while !queues.is_empty() {
        let i = rng.below(queues.len());
        if let Some(sent) = queues[i].pop_front() {
            assert_eq!(post_signed(&cluster.ingest, KEY, &sent.body).await, 200);
            delivered += 1;
        }
        if queues[i].is_empty() {
            queues.remove(i);
        }
    }
    let customer_of: BTreeMap<String, u64> = sends
        .iter()
        .map(|s| (s.id.to_string(), s.customer))
        .collect();
    let started = Instant::now();
    let drained = drain(&cluster, 3, 10, &mut rng, &customer_of).await;

    let (got, fired) = standin_view(&cluster.keap);
    assert_end_state(seed, &got, &expected_view);
    let uncertain = uncertain_skipped(&cluster).await;
    let (expected, missing) = check_goals(
        seed,
        &cluster.rules,
        &sends,
        &drained.applied,
        &fired,
        uncertain,
    );
    let letters =
        integration_tests::drain(&cluster.resources.sqs, &cluster.resources.dead_letter_url).await;
    assert!(letters.is_empty(), "nothing dead-lettered: {letters:?}");
    cluster.keap.assert_no_violations();
    let asked = cluster.control.asked();
    assert!(
        asked.iter().all(|d| *d <= MAX_VISIBILITY_DELAY),
        "every hide within SQS's limit: {asked:?}"
    );
    let noops = cluster.keap.noop_calls();
    let mut delays: BTreeMap<u64, usize> = BTreeMap::new();
    for d in &asked {
        *delays.entry(d.as_secs()).or_default() += 1;
    }
    eprintln!("hides by delay (s → count): {delays:?}; no-op calls: {noops:?}");
    let in_order: usize = in_order_goals.values().sum();
    let policy: usize = expected.values().sum();
    eprintln!(
        "lambda path: {customers} histories, {} webhooks, {delivered} deliveries, 3 instances, {} batches, {} kills, {} hides skipped, 0 mismatches, {} goals skipped as stale, {missing} lost in the crash window, {} no-op calls, {:.1} s",
        sends.len(),
        drained.batches,
        drained.kills,
        asked.len(),
        in_order.saturating_sub(policy),
        noops.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Goals and notes skipped as uncertain, from the records' summaries.
/// Keap's contacts, fields and tags as the in-order run left them: no extra contact, no
/// duplicate tag.
fn assert_end_state(seed: u64, got: &KeapView, expected: &KeapView) {
    assert_eq!(got.contacts.len(), expected.contacts.len());
    for (customer, contact) in &expected.contacts {
        assert_eq!(
            got.contacts.get(customer),
            Some(contact),
            "seed {seed}: customer {customer}"
        );
    }
    assert_eq!(
        got.contact_count, expected.contact_count,
        "no extra contact"
    );
    assert_eq!(got.duplicate_tag_names, 0, "no duplicate tag");
}

/// The goals fired against the stated policy for the order the webhooks were applied in:
/// none doubled, and at most the uncertain steps missing. Returns the policy's goals and the
/// number missing.
fn check_goals(
    seed: u64,
    rules: &RuleSet,
    sends: &[Sent],
    applied: &BTreeMap<String, Vec<String>>,
    fired: &GoalCounts,
    uncertain: usize,
) -> (GoalCounts, usize) {
    let bodies: BTreeMap<String, String> = sends
        .iter()
        .map(|s| (s.id.to_string(), s.body.clone()))
        .collect();
    let expected = view::expected_goals(rules, SITE, &bodies, applied);
    let missing = view::check_goals(fired, &expected, uncertain)
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    (expected, missing)
}

async fn uncertain_skipped(cluster: &Cluster) -> usize {
    let mut total = 0;
    let mut next = None;
    loop {
        let page = cluster.idempotency.scan_page(next).await.expect("scan");
        for record in &page.records {
            if let Some(n) = record.summary.as_deref().and_then(|s| {
                s.split("; ")
                    .find_map(|p| p.strip_suffix(" uncertain steps skipped"))
                    .and_then(|n| n.parse::<usize>().ok())
            }) {
                total += n;
            }
        }
        match page.next {
            Some(n) => next = Some(n),
            None => return total,
        }
    }
}

/// A running `cks serve` against the Keap stand-in; killed (SIGKILL) when dropped.
struct Serve {
    child: std::process::Child,
    port: u16,
    stderr: std::path::PathBuf,
    stdout: std::path::PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(dir: &std::path::Path, keap: &KeapStandIn, port: u16, run: usize) -> Self {
        use std::process::{Command, Stdio};
        let stderr = dir.join(format!("serve-{run}.err"));
        let stdout = dir.join(format!("serve-{run}.out"));
        let child = Command::new(integration_tests::cks_binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(dir.join("local.sqlite3"))
            .env("CHARGIFY_SHARED_KEYS", KEY)
            .env("CKS_VISIBILITY_TIMEOUT_SECS", "25")
            .env("KEAP_API_KEY", "sak-serve")
            .env("KEAP_BASE_URL", keap.base_url())
            .env("KEAP_REQUESTS_PER_SECOND", "200")
            .env_remove("KEAP_API_KEY_SECRET_ARN")
            .env_remove("KEAP_CLIENT_ID")
            .env_remove("KEAP_OAUTH_CLIENT_SECRET_ARN")
            .env_remove("RULES_TOML")
            .env_remove("CKS_TEST_PAUSE")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("log"))
            .stderr(std::fs::File::create(&stderr).expect("log"))
            .spawn()
            .expect("cks serve starts");
        let serve = Self {
            child,
            port,
            stderr,
            stdout,
        };
        let started = Instant::now();
        while !serve.log().contains("Listening: POST") {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "serve did not start: {}",
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Goals and notes a retry skipped as uncertain (its JSON log lines on stdout).
    fn uncertain_skipped(&self) -> usize {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("died before recording it") && l.contains("\"skipped\""))
            .count()
    }

    async fn post(&self, body: &str) -> u16 {
        let signature = shared::chargify::signature::sign(KEY, body.as_bytes());
        let headers = [
            (
                shared::chargify::signature::SIGNATURE_HEADER,
                signature.as_str(),
            ),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        integration_tests::http_request(
            self.port,
            "POST",
            "/webhooks/chargify",
            &headers,
            body.as_bytes(),
        )
        .await
        .map(|(status, _)| status)
        .unwrap_or(0)
    }
}

/// `processed webhook <id> <event>: <outcome>` lines of every run, in order: each customer's
/// first completions. A duplicate counts: a run killed after completing a record but before
/// printing it leaves the record's first line to the duplicate of its retry.
fn applied_order(
    logs: &[String],
    customer_of: &BTreeMap<String, u64>,
) -> BTreeMap<String, Vec<String>> {
    let mut applied: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in logs.iter().flat_map(|l| l.lines()) {
        let Some(rest) = line.strip_prefix("processed webhook ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(id), _, Some(outcome)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if !matches!(outcome, "applied" | "stale" | "duplicate") {
            continue;
        }
        if let Some(customer) = customer_of.get(id) {
            let order = applied.entry(customer.to_string()).or_default();
            if !order.iter().any(|o| o == id) {
                order.push(id.to_owned());
            }
        }
    }
    applied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cks_serve_killed_twice_ends_as_the_in_order_run() {
    let seed: u64 = knob("CONVERGENCE_SEED", 11_2026);
    let customers: usize = knob("CONVERGENCE_SERVE_HISTORIES", 30);
    let mut rng = Rng::new(seed);
    let all = histories(&mut rng, 40_000, customers);
    let sends: Vec<Sent> = all.iter().flatten().cloned().collect();
    let rules = Arc::new(RuleSet::default_rules().expect("default rules"));
    let (expected_view, _) = reference(&sends, &rules).await;
    let keap = KeapStandIn::start().await;
    keap.add_custom_fields(rules.custom_field_labels(), 100);
    let dir = std::env::temp_dir().join(format!("cks-convergence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        listener.local_addr().expect("addr").port()
    };

    let mut queues: Vec<std::collections::VecDeque<Sent>> =
        all.iter().map(|h| weather(&mut rng, h).into()).collect();
    let total: usize = queues.iter().map(|q| q.len()).sum();
    let kills_at = [total / 3, 2 * total / 3];
    let mut logs = Vec::new();
    let mut uncertain = 0;
    let mut run = 0;
    let mut serve = Serve::start(&dir, &keap, port, run);
    let mut sent = 0;
    while !queues.is_empty() {
        let i = rng.below(queues.len());
        if let Some(webhook) = queues[i].pop_front() {
            assert_eq!(serve.post(&webhook.body).await, 200, "{}", serve.log());
            sent += 1;
            if kills_at.contains(&sent) {
                // kill -9 with records in flight, then a restart on the same file.
                logs.push(serve.log());
                uncertain += serve.uncertain_skipped();
                drop(serve);
                run += 1;
                serve = Serve::start(&dir, &keap, port, run);
            }
        }
        if queues[i].is_empty() {
            queues.remove(i);
        }
    }
    let customer_of: BTreeMap<String, u64> = sends
        .iter()
        .map(|s| (s.id.to_string(), s.customer))
        .collect();
    // The restarted server works off what is left (records in flight at a kill come back
    // after the 25 s visibility timeout). Settled means every webhook has its line: the
    // goals fired from a record come before its line, so reading the stand-in's goals only
    // then never counts a goal whose webhook the order below leaves out. Bounded wait.
    let started = Instant::now();
    loop {
        let mut so_far = logs.clone();
        so_far.push(serve.log());
        let processed: usize = applied_order(&so_far, &customer_of)
            .values()
            .map(Vec::len)
            .sum();
        if processed >= customer_of.len() || started.elapsed() > Duration::from_secs(150) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    logs.push(serve.log());
    uncertain += serve.uncertain_skipped();
    let (got, fired) = standin_view(&keap);
    assert_end_state(seed, &got, &expected_view);
    let applied = applied_order(&logs, &customer_of);
    let (_, missing) = check_goals(seed, &rules, &sends, &applied, &fired, uncertain);
    keap.assert_no_violations();
    let dead: usize = logs
        .iter()
        .map(|l| l.matches(": dead_lettered").count())
        .sum();
    assert_eq!(dead, 0, "nothing dead-lettered");
    eprintln!(
        "serve path: {customers} histories, {} webhooks, {sent} deliveries, 2 kill -9s, 0 mismatches, {missing} goals lost in the crash window, {} no-op calls, {:.1} s",
        sends.len(),
        keap.noop_calls().len(),
        started.elapsed().as_secs_f64()
    );
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

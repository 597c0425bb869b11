//! `events/` holds the HTTP API events for `sam local invoke IngestFunction -e events/<file>`.
//! This test (1) checks each file is exactly what the generator below makes from the bundled
//! Chargify bodies and the demo key (`shared::fixtures::DEMO_SHARED_KEY`; run with `UPDATE_EVENTS=1` to
//! rewrite them), and (2) feeds every file to the real handler, with SQS in moto, and checks
//! the answer documented in `events/README.md`.
//!
//! It also makes the SQS FIFO events for `sam local invoke ProcessorFunction -e
//! events/processor-<sample>.json` (each record the message ingest would queue for a signed
//! sample) and feeds each to the real processor handler with in-memory stores and a dry-run
//! Keap, checking that no record fails.

use integration_tests::{
    create_fifo_queue, drain, http_api_event, moto_endpoint, repo_root, sqs_client, Signature,
};
use shared::chargify::signature::sign;
use shared::chargify::SharedKeySet;
use shared::entrypoints::ingest_lambda::handle;
use shared::fixtures;
use shared::ingest::IngestService;
use shared::queue::SqsWebhookQueue;
use std::collections::BTreeMap;

/// One event file: its contents, and the answer the handler must give.
struct EventCase {
    file: &'static str,
    event: serde_json::Value,
    status: u16,
    outcome: &'static str,
    enqueues: bool,
}

/// The key the event files are signed with: the demo key, which `events/README.md` puts in the
/// emulator's Secrets Manager for `sam local invoke`.
fn local_key() -> String {
    fixtures::DEMO_SHARED_KEY.to_owned()
}

fn cases(key: &str) -> Vec<EventCase> {
    let signed = |body: &str, base64: bool| {
        let sig = sign(key, body.as_bytes());
        http_api_event("POST", body.as_bytes(), Signature::Header(&sig), base64)
    };
    let wrong = sign("not-the-shared-key", fixtures::SIGNUP_SUCCESS.as_bytes());
    let query_sig = sign(key, fixtures::SUBSCRIPTION_STATE_CHANGE.as_bytes());
    vec![
        EventCase {
            file: "ingest-signup-success.json",
            event: signed(fixtures::SIGNUP_SUCCESS, false),
            status: 200,
            outcome: "enqueued",
            enqueues: true,
        },
        EventCase {
            file: "ingest-payment-success-base64.json",
            event: signed(fixtures::PAYMENT_SUCCESS, true),
            status: 200,
            outcome: "enqueued",
            enqueues: true,
        },
        EventCase {
            file: "ingest-state-change-query-signature.json",
            event: http_api_event(
                "POST",
                fixtures::SUBSCRIPTION_STATE_CHANGE.as_bytes(),
                Signature::Query(&query_sig),
                false,
            ),
            status: 200,
            outcome: "enqueued",
            enqueues: true,
        },
        EventCase {
            file: "ingest-test-webhook.json",
            event: signed(fixtures::TEST, false),
            status: 200,
            outcome: "test_acknowledged",
            enqueues: false,
        },
        EventCase {
            file: "ingest-wrong-signature.json",
            event: http_api_event(
                "POST",
                fixtures::SIGNUP_SUCCESS.as_bytes(),
                Signature::Header(&wrong),
                false,
            ),
            status: 401,
            outcome: "signature_mismatch",
            enqueues: false,
        },
        EventCase {
            file: "ingest-unsigned.json",
            event: http_api_event(
                "POST",
                fixtures::SIGNUP_SUCCESS.as_bytes(),
                Signature::None,
                false,
            ),
            status: 401,
            outcome: "signature_missing",
            enqueues: false,
        },
        EventCase {
            file: "ingest-not-a-webhook.json",
            event: signed("hello=world", false),
            status: 400,
            outcome: "body_missing_field",
            enqueues: false,
        },
    ]
}

/// When the generated messages were "received" (fixed, so the files do not change).
const RECEIVED_AT: time::OffsetDateTime = time::macros::datetime!(2026-01-05 10:00 UTC);

/// One SQS FIFO record as the event source mapping delivers it, for the message ingest
/// queues for `body`.
fn sqs_record(body: &str, index: usize) -> serde_json::Value {
    let envelope = fixtures::envelope_at(body, RECEIVED_AT).expect("a sample is a webhook");
    let message = shared::ingest::outbound_message(&envelope);
    let attributes: serde_json::Map<String, serde_json::Value> = message
        .attributes
        .iter()
        .map(|(name, value)| {
            (
                name.clone(),
                serde_json::json!({"stringValue": value, "dataType": "String"}),
            )
        })
        .collect();
    let sent_ms = RECEIVED_AT.unix_timestamp() * 1000;
    serde_json::json!({
        "messageId": format!("00000000-0000-4000-8000-{:012}", index + 1),
        "receiptHandle": format!("local-receipt-{}", index + 1),
        "body": message.body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": sent_ms.to_string(),
            "SequenceNumber": format!("{:020}", index + 1),
            "MessageGroupId": message.group_id,
            "SenderId": "AIDAEXAMPLE",
            "MessageDeduplicationId": message.deduplication_id,
            "ApproximateFirstReceiveTimestamp": sent_ms.to_string()
        },
        "messageAttributes": attributes,
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:chargify-webhooks.fifo",
        "awsRegion": "us-east-1"
    })
}

/// Processor event files: the whole story as one batch (in order, one FIFO group), then
/// one file per sample that ingest would queue (the `test` webhook never is).
fn processor_cases() -> Vec<(String, serde_json::Value)> {
    let story: Vec<serde_json::Value> = fixtures::story()
        .iter()
        .enumerate()
        .map(|(i, (_, body))| sqs_record(body, i))
        .collect();
    let mut cases = vec![(
        "processor-story.json".to_owned(),
        serde_json::json!({ "Records": story }),
    )];
    for (name, body) in fixtures::samples() {
        if name == shared::chargify::webhook::TEST_EVENT {
            continue;
        }
        let file = format!("processor-{}.json", name.replace([':', '_'], "-"));
        cases.push((
            file,
            serde_json::json!({ "Records": [sqs_record(&body, 0)] }),
        ));
    }
    cases
}

fn render(event: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(event).unwrap_or_default();
    text.push('\n');
    text
}

#[test]
fn event_files_match_the_generator() {
    let dir = repo_root().join("events");
    let update = std::env::var("UPDATE_EVENTS").is_ok_and(|v| v == "1");
    let cases = cases(&local_key());
    for case in &cases {
        let path = dir.join(case.file);
        let expected = render(&case.event);
        if update {
            std::fs::write(&path, &expected).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_EVENTS=1 to create it)",
                path.display()
            )
        });
        assert_eq!(
            actual, expected,
            "{} is stale: run UPDATE_EVENTS=1 cargo test --test events",
            case.file
        );
    }
    let processor = processor_cases();
    for (file, event) in &processor {
        let path = dir.join(file);
        let expected = render(event);
        if update {
            std::fs::write(&path, &expected).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_EVENTS=1 to create it)",
                path.display()
            )
        });
        assert_eq!(
            actual, expected,
            "{file} is stale: run UPDATE_EVENTS=1 cargo test --test events"
        );
    }
    // Every event file is covered by a documented expectation.
    let mut listed: Vec<&str> = cases.iter().map(|c| c.file).collect();
    listed.extend(processor.iter().map(|(f, _)| f.as_str()));
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("events/README.md");
    for entry in std::fs::read_dir(&dir).expect("events/") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("ingest-") || name.starts_with("processor-") {
            assert!(
                listed.contains(&name.as_str()),
                "{name} has no expectation in tests/tests/events.rs"
            );
            assert!(
                readme.contains(&name),
                "{name} is not documented in events/README.md"
            );
        }
    }
}

#[tokio::test]
async fn every_event_file_gets_its_documented_answer() {
    let key = local_key();
    let endpoint = moto_endpoint();
    let client = sqs_client(&endpoint).await;
    let queue_url = create_fifo_queue(&client, "events").await;
    let service = IngestService::new(
        SharedKeySet::parse(&key).expect("the demo key parses"),
        SqsWebhookQueue::new(client.clone(), queue_url.clone()),
    );
    let mut expected_events = BTreeMap::new();
    for case in cases(&key) {
        let path = repo_root().join("events").join(case.file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let request =
            lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let response = handle(&service, request)
            .await
            .expect("the handler never errors");
        let body = String::from_utf8_lossy(response.body().as_ref()).into_owned();
        assert_eq!(
            response.status().as_u16(),
            case.status,
            "{}: {body}",
            case.file
        );
        assert!(
            body.contains(&format!(r#""outcome":"{}""#, case.outcome)),
            "{}: {body}",
            case.file
        );
        if case.enqueues {
            *expected_events.entry(case.file).or_insert(0) += 1;
        }
    }
    let messages = drain(&client, &queue_url).await;
    assert_eq!(
        messages.len(),
        expected_events.len(),
        "one message per enqueuing event file"
    );
}

#[tokio::test]
async fn every_processor_event_file_is_processed_without_a_failed_record() {
    use shared::entrypoints::processor_lambda::handle;
    use shared::idempotency::InMemoryIdempotencyStore;
    use shared::identity::InMemoryCustomerStore;
    use shared::keap::{Directory, InMemoryCrm};
    use shared::processor::{Limits, Processor};
    use shared::queue::{InMemoryRecordControl, RecordControl};
    use shared::rules::RuleSet;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    for (file, _) in processor_cases() {
        let path = repo_root().join("events").join(&file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let event: aws_lambda_events::sqs::SqsEvent =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let records = event.records.len();
        let rules = Arc::new(RuleSet::default_rules().expect("default rules"));
        let crm = Arc::new(InMemoryCrm::dry_run(&rules.custom_field_labels()));
        let processor = Arc::new(Processor {
            rules,
            crm: crm.clone(),
            directory: Arc::new(Directory::new(Arc::new(
                shared::identity::InMemoryNameLocks::new(),
            ))),
            idempotency: Arc::new(InMemoryIdempotencyStore::new()),
            customers: Arc::new(InMemoryCustomerStore::new()),
            settings: Limits::default(),
        });
        let control = Arc::new(InMemoryRecordControl::new());
        let as_port: Arc<dyn RecordControl> = control.clone();
        let response = handle(
            processor,
            as_port,
            event,
            Instant::now() + Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(records > 0, "{file} has records");
        assert!(
            response.batch_item_failures.is_empty(),
            "{file}: failed records {:?}",
            response
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.clone())
                .collect::<Vec<_>>()
        );
        assert!(control.dead_letters().is_empty(), "{file}: dead letters");
        assert!(control.delays().is_empty(), "{file}: delayed records");
    }
}

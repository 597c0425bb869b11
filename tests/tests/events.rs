//! `events/` holds the HTTP API events for `sam local invoke IngestFunction -e events/<file>`.
//! This test (1) checks each file is exactly what the generator below makes from the bundled
//! Chargify bodies and the demo key in `events/env.json` (run with `UPDATE_EVENTS=1` to
//! rewrite them), and (2) feeds every file to the real handler, with SQS in moto, and checks
//! the answer documented in `events/README.md`.

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

fn local_key() -> String {
    let path = repo_root().join("events/env.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let env: serde_json::Value = serde_json::from_str(&text).expect("env.json is JSON");
    env["IngestFunction"]["CHARGIFY_SHARED_KEYS"]
        .as_str()
        .expect("env.json sets IngestFunction.CHARGIFY_SHARED_KEYS")
        .to_owned()
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
    // Every ingest event file is covered by a documented expectation.
    let listed: Vec<&str> = cases.iter().map(|c| c.file).collect();
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("events/README.md");
    for entry in std::fs::read_dir(&dir).expect("events/") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("ingest-") {
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

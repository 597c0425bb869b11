//! The built `processor` binary under `cargo lambda watch`, configured as in AWS (environment
//! only), with SQS and DynamoDB in moto and Keap as the stand-in: SQS events made by ingest
//! are invoked through the Lambda invoke API, and a misconfigured function refuses to start
//! with a message naming the variable.

use integration_tests::emf;
use integration_tests::keap_standin::KeapStandIn;
use integration_tests::lambda_watch::LambdaWatch;
use integration_tests::pipeline::post_signed;
use integration_tests::{
    moto_endpoint, processor_resources, receive_as_lambda_event, ProcessorResources,
};
use shared::chargify::SharedKeySet;
use shared::fixtures;
use shared::ingest::IngestService;
use shared::queue::SqsWebhookQueue;
use shared::rules::RuleSet;
use std::time::{Duration, Instant};

const KEY: &str = "processor-binary-key";

/// Invokes `event` (written to a temp file) once the watcher has built and started the
/// binary.
async fn invoke_when_ready(
    watch: &LambdaWatch,
    event: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let file = std::env::temp_dir().join(format!("processor-event-{}.json", watch.port));
    std::fs::write(&file, event.to_string()).expect("write event");
    watch
        .invoke_when_ready("processor", &file.to_string_lossy())
        .await
}

// Multi-threaded: the Keap stand-in serves on this runtime while `cargo lambda invoke` blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_binary_applies_queued_webhooks_to_keap() {
    let endpoint = moto_endpoint();
    let ProcessorResources {
        sqs,
        queue_url,
        dead_letter_url,
        idempotency_table,
        customers_table,
        ..
    } = processor_resources("processor-bin").await;
    let keap = KeapStandIn::start().await;
    let rules = RuleSet::default_rules().expect("rules");
    keap.add_custom_fields(rules.custom_field_labels(), 200);
    // Ingest puts the story on the queue, exactly as in AWS.
    let ingest = IngestService::new(
        SharedKeySet::parse(KEY).expect("key"),
        SqsWebhookQueue::new(sqs.clone(), &queue_url),
    );
    for (_, body) in fixtures::story().into_iter().take(3) {
        assert_eq!(post_signed(&ingest, KEY, &body).await, 200);
    }
    let base_url = keap.base_url();
    let watch = LambdaWatch::start(
        "processor",
        &[
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("QUEUE_URL", queue_url.as_str()),
            ("DEAD_LETTER_QUEUE_URL", dead_letter_url.as_str()),
            ("IDEMPOTENCY_TABLE", idempotency_table.as_str()),
            ("CUSTOMERS_TABLE", customers_table.as_str()),
            ("KEAP_API_KEY", "sak-binary"),
            ("KEAP_BASE_URL", base_url.as_str()),
        ],
        &["KEAP_CLIENT_ID", "KEAP_CLIENT_SECRET", "RULES_TOML"],
    );
    let event = receive_as_lambda_event(&sqs, &queue_url, 120).await;
    assert_eq!(event.records.len(), 3);
    let event = serde_json::to_value(&event).expect("event as JSON");
    let reply = invoke_when_ready(&watch, &event)
        .await
        .unwrap_or_else(|e| panic!("invoke: {e}\n{}", watch.log_text()));
    assert_eq!(reply["batchItemFailures"], serde_json::json!([]), "{reply}");
    let goals: Vec<String> = keap.state().goals.iter().map(|g| g.1.clone()).collect();
    assert_eq!(goals, ["signup", "trial_ending", "payment_failed"]);
    assert!(keap.violations().is_empty());
    // Invoked again with the same records (a redelivery): nothing more happens.
    let calls = keap.state().calls.len();
    let reply = invoke_when_ready(&watch, &event).await.expect("invoke");
    assert_eq!(reply["batchItemFailures"], serde_json::json!([]), "{reply}");
    assert_eq!(keap.state().calls.len(), calls);
    // The log is JSON lines and carries no email address.
    let log = watch.log_text();
    assert!(log.contains("\"webhook processed\""), "{log}");
    assert!(!log.contains("john@example.com") && !log.contains("john%40example.com"));
    // Every line of both invocations carries its request id (the records' lines too, logged
    // from their own tasks); the first invocation is the cold start.
    let ids = watch.assert_lines_carry_the_invocation("processor", "processor ready");
    assert!(ids.len() >= 2, "{ids:?}");
    // The metrics it wrote are valid EMF, with the catalogue's dimensions.
    let metrics = emf::extract(&emf::documents(&log));
    let processed = |event, outcome| {
        emf::total(
            &metrics,
            "WebhooksProcessed",
            &[
                ("Function", "processor"),
                ("Event", event),
                ("Outcome", outcome),
            ],
        )
    };
    for event in ["signup_success", "trial_end_notice", "payment_failure"] {
        assert_eq!(processed(event, "applied"), 1.0, "{event} applied");
        assert_eq!(processed(event, "duplicate"), 1.0, "{event} redelivered");
    }
    assert_eq!(
        emf::dimension_sets(&metrics, "WebhooksProcessed"),
        [["Event", "Function", "Outcome"]]
    );
    assert!(
        emf::total(
            &metrics,
            "KeapCalls",
            &[
                ("Function", "processor"),
                ("Operation", "contact_upsert"),
                ("Status", "200")
            ]
        ) >= 1.0
    );
    let lags: Vec<&emf::Extracted> = metrics.iter().filter(|m| m.name == "EndToEndLag").collect();
    assert_eq!(lags.iter().map(|m| m.values.len()).sum::<usize>(), 3);
    assert!(
        lags.iter()
            .all(|m| m.unit.as_deref() == Some("Milliseconds")
                && m.dimensions.keys().eq(["Function"]))
    );
    let quota: Vec<f64> = metrics
        .iter()
        .filter(|m| m.name == "KeapDailyQuotaRemainingPercent")
        .flat_map(|m| m.values.clone())
        .collect();
    assert!(
        !quota.is_empty() && quota.iter().all(|p| (0.0..=100.0).contains(p)),
        "{quota:?}"
    );
    assert_eq!(
        emf::total(
            &metrics,
            "KeapReauthorisationNeeded",
            &[("Function", "processor")]
        ),
        0.0
    );
}

#[tokio::test]
async fn a_misconfigured_binary_names_the_missing_variable() {
    let watch = LambdaWatch::start(
        "processor",
        &[
            ("AWS_REGION", "us-east-1"),
            ("QUEUE_URL", "http://127.0.0.1:9/1/q.fifo"),
            ("DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:9/1/dlq.fifo"),
            ("CUSTOMERS_TABLE", "customers"),
            ("KEAP_API_KEY", "sak"),
        ],
        &["IDEMPOTENCY_TABLE"],
    );
    // The first invoke starts the function, which stops at once; the invoke gets no answer.
    let file = std::env::temp_dir().join(format!("processor-empty-{}.json", watch.port));
    std::fs::write(&file, r#"{"Records": []}"#).expect("write event");
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(400);
    while Instant::now() < deadline {
        let watch_ref = &watch;
        let file = file.to_string_lossy().into_owned();
        let _ = tokio::task::spawn_blocking({
            let port = watch_ref.port;
            move || {
                std::process::Command::new("timeout")
                    .args(["20", "cargo", "lambda", "invoke", "-A", "127.0.0.1", "-P"])
                    .arg(port.to_string())
                    .args(["--data-file", &file, "processor"])
                    .output()
            }
        })
        .await;
        log = watch.log_text();
        if log.contains("processor cannot start") {
            break;
        }
    }
    assert!(log.contains("IDEMPOTENCY_TABLE is not set"), "{log}");
}

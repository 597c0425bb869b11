//! The built `ingest` binary under `cargo lambda watch` (a local Lambda Runtime API on
//! 127.0.0.1), with SQS in moto: invoked with `cargo lambda invoke --data-file events/...`, and
//! over plain HTTP through the emulator's function-URL route, as Chargify would post.
//! Needs `cargo lambda` on PATH; `tests/run.sh` provides it.

use integration_tests::emf;
use integration_tests::lambda_watch::LambdaWatch;
use integration_tests::{
    create_fifo_queue, create_secret, drain, http_request, moto_endpoint, sqs_client,
};
use shared::chargify::signature::sign;
use shared::envelope::WebhookEnvelope;
use shared::fixtures;
use std::time::{Duration, Instant};

const KEY: &str = "binary-test-shared-key";

/// Where the function under test gets its shared keys.
enum Keys<'a> {
    Inline(&'a str),
    SecretArn(&'a str),
}

/// Whether the function gets `AWS_REGION` (Lambda always sets it; a laptop may not).
enum Region {
    Set,
    Unset,
}

fn start_watcher(queue_url: &str, endpoint: &str, keys: Keys<'_>, region: Region) -> LambdaWatch {
    let mut env = vec![("QUEUE_URL", queue_url), ("AWS_ENDPOINT_URL", endpoint)];
    match keys {
        Keys::Inline(spec) => env.push(("CHARGIFY_SHARED_KEYS", spec)),
        Keys::SecretArn(arn) => env.push(("CHARGIFY_SHARED_KEYS_SECRET_ARN", arn)),
    }
    if let Region::Set = region {
        env.push(("AWS_REGION", "us-east-1"));
    }
    LambdaWatch::start(
        "ingest",
        &env,
        &[
            "CHARGIFY_SHARED_KEYS",
            "CHARGIFY_SHARED_KEYS_SECRET_ARN",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
        ],
    )
}

/// A form POST to the function through cargo lambda's function-URL route.
async fn http_post(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    http_request(port, "POST", path, &all, body).await
}

/// Waits (bounded) until the watcher has built and started the function and it answers.
async fn wait_until_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok((status, _)) = http_post(port, "/lambda-url/ingest/", &[], b"").await {
            if status == 401 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the ingest function did not answer within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn cargo_lambda_invoke(watch: &LambdaWatch, event: &str) -> serde_json::Value {
    watch
        .invoke("ingest", event)
        .unwrap_or_else(|e| panic!("invoke {event}: {e}"))
}

#[tokio::test]
async fn the_built_binary_enqueues_signed_webhooks_and_refuses_the_rest() {
    let endpoint = moto_endpoint();
    let client = sqs_client(&endpoint).await;
    let queue_url = create_fifo_queue(&client, "binary").await;
    let watch = start_watcher(&queue_url, &endpoint, Keys::Inline(KEY), Region::Set);
    let port = watch.port;
    wait_until_ready(port).await;

    // Over HTTP, as Chargify posts: signed, tampered, wrong method.
    let body = fixtures::PAYMENT_FAILURE.as_bytes();
    let sig = sign(KEY, body);
    let header = [("X-Chargify-Webhook-Signature-Hmac-Sha-256", sig.as_str())];
    let (status, text) = http_post(port, "/lambda-url/ingest/", &header, body)
        .await
        .expect("post");
    assert_eq!(status, 200, "{text}");
    let (status, text) = http_post(port, "/lambda-url/ingest/", &header, b"id=1&event=x")
        .await
        .expect("post");
    assert_eq!(status, 401, "{text}");
    let query = format!("/lambda-url/ingest/?signature_hmac_sha_256={sig}");
    let (status, text) = http_post(port, &query, &[], body).await.expect("post");
    assert_eq!(status, 200, "query signature: {text}");

    // Through the Lambda invoke API, with the sam-local event files (signed with the demo
    // key, which this function does not have: so they must be refused).
    let reply = cargo_lambda_invoke(&watch, "events/ingest-signup-success.json");
    assert_eq!(reply["statusCode"], 401, "{reply}");

    // A body flagged base64 that is not (a direct invoke; API Gateway never sends one) gets a
    // 401 answer, not a crashed invocation.
    let mut event = integration_tests::http_api_event(
        "POST",
        body,
        integration_tests::Signature::Header(&sig),
        false,
    );
    event["isBase64Encoded"] = serde_json::Value::Bool(true);
    event["body"] = serde_json::Value::String("not base64 at all!".into());
    let file = std::env::temp_dir().join(format!("bad-base64-{port}.json"));
    std::fs::write(&file, event.to_string()).expect("write event");
    let reply = cargo_lambda_invoke(&watch, &file.to_string_lossy());
    assert_eq!(reply["statusCode"], 401, "{reply}");

    // Every metric line is valid EMF. Three requests carried a signature no key produces
    // (the tampered body, the event file signed with the demo key, the undecodable base64
    // body); the readiness probes carried none, which is a refusal but not a signature failure.
    let metrics = emf::extract(&emf::documents(&watch.log_text()));
    assert_eq!(
        emf::total(&metrics, "SignatureFailures", &[("Function", "ingest")]),
        3.0
    );
    assert_eq!(
        emf::total(
            &metrics,
            "IngestRefused",
            &[("Function", "ingest"), ("Reason", "signature_mismatch")]
        ),
        3.0
    );
    assert!(
        emf::total(
            &metrics,
            "IngestRefused",
            &[("Function", "ingest"), ("Reason", "signature_missing")]
        ) >= 1.0
    );
    assert_eq!(
        emf::total(
            &metrics,
            "WebhooksReceived",
            &[("Function", "ingest"), ("Event", "payment_failure")]
        ),
        2.0
    );
    assert_eq!(
        emf::dimension_sets(&metrics, "SignatureFailures"),
        [["Function"]]
    );
    assert_eq!(
        emf::dimension_sets(&metrics, "WebhooksReceived"),
        [["Event", "Function"]]
    );
    assert_eq!(
        emf::total(&metrics, "EnqueueFailures", &[("Function", "ingest")]),
        0.0
    );

    // Each request's line carries its invocation: the first one's is the cold start, and the
    // request ids are those cargo lambda gave (one per invocation).
    let ids = watch.assert_lines_carry_the_invocation("ingest", "ingest ready");
    assert!(ids.len() >= 6, "one request id per invocation: {ids:?}");

    let messages = drain(&client, &queue_url).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let envelope = WebhookEnvelope::from_json(&messages[0].body).expect("envelope");
    assert_eq!(envelope.event, "payment_failure");
    assert_eq!(envelope.raw_body, fixtures::PAYMENT_FAILURE);
    assert_eq!(
        messages[0].deduplication_id,
        "capital-preferences-ltd:176857854"
    );
}

#[tokio::test]
async fn the_built_binary_reads_its_key_from_secrets_manager_and_answers_the_event_files() {
    let endpoint = moto_endpoint();
    let client = sqs_client(&endpoint).await;
    let queue_url = create_fifo_queue(&client, "binary-events").await;
    // The demo key the event files are signed with.
    let demo_key = fixtures::DEMO_SHARED_KEY;
    // This function reads the key from Secrets Manager at cold start, as in AWS.
    let arn = create_secret("binary-demo-key", demo_key).await;
    let watch = start_watcher(&queue_url, &endpoint, Keys::SecretArn(&arn), Region::Unset);
    wait_until_ready(watch.port).await;
    for (file, status) in [
        ("events/ingest-signup-success.json", 200),
        ("events/ingest-payment-success-base64.json", 200),
        ("events/ingest-test-webhook.json", 200),
        ("events/ingest-wrong-signature.json", 401),
        ("events/ingest-not-a-webhook.json", 400),
    ] {
        let reply = cargo_lambda_invoke(&watch, file);
        assert_eq!(reply["statusCode"], status, "{file}: {reply}");
    }
    assert_eq!(drain(&client, &queue_url).await.len(), 2);
}

//! The built `ingest` binary under `cargo lambda watch` (a local Lambda Runtime API on
//! 127.0.0.1), with SQS in moto: invoked with `cargo lambda invoke --data-file events/...`, and
//! over plain HTTP through the emulator's function-URL route, as Chargify would post.
//! Needs `cargo lambda` on PATH; `tests/run.sh` provides it.

use integration_tests::{
    create_fifo_queue, create_secret, drain, http_request, moto_endpoint, repo_root, sqs_client,
};
use shared::chargify::signature::sign;
use shared::envelope::WebhookEnvelope;
use shared::fixtures;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "binary-test-shared-key";

/// Kills the watcher (and the function it started) when the test ends, pass or fail.
struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        // cargo lambda runs the function as a child process in its own group.
        let _ = Command::new("kill")
            .arg("--")
            .arg(format!("-{}", self.0.id()))
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

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

fn start_watcher(
    port: u16,
    queue_url: &str,
    endpoint: &str,
    keys: Keys<'_>,
    region: Region,
) -> Watcher {
    use std::os::unix::process::CommandExt;
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("cargo-lambda-watch-{port}.log")))
            .expect("log file");
    let mut command = Command::new("cargo");
    command
        .env_remove("CHARGIFY_SHARED_KEYS")
        .env_remove("CHARGIFY_SHARED_KEYS_SECRET_ARN")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    if let Region::Set = region {
        command.env("AWS_REGION", "us-east-1");
    }
    match keys {
        Keys::Inline(spec) => command.env("CHARGIFY_SHARED_KEYS", spec),
        Keys::SecretArn(arn) => command.env("CHARGIFY_SHARED_KEYS_SECRET_ARN", arn),
    };
    let child = command
        .current_dir(repo_root())
        .args([
            "lambda",
            "watch",
            "--ignore-changes",
            "--quiet",
            "-A",
            "127.0.0.1",
            "-P",
        ])
        .arg(port.to_string())
        .args(["--package", "ingest", "--bin", "ingest"])
        .env("QUEUE_URL", queue_url)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("`cargo lambda` is on PATH (run the tests with `bash tests/run.sh`)");
    Watcher(child)
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

fn cargo_lambda_invoke(port: u16, event: &str) -> serde_json::Value {
    let output = Command::new("cargo")
        .current_dir(repo_root())
        .args(["lambda", "invoke", "-A", "127.0.0.1", "-P"])
        .arg(port.to_string())
        .args(["--output-format", "json", "--data-file", event, "ingest"])
        .stdin(Stdio::null())
        .output()
        .expect("cargo lambda invoke runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "invoke {event}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("invoke {event} printed {stdout}: {e}"))
}

#[tokio::test]
async fn the_built_binary_enqueues_signed_webhooks_and_refuses_the_rest() {
    let endpoint = moto_endpoint();
    let client = sqs_client(&endpoint).await;
    let queue_url = create_fifo_queue(&client, "binary").await;
    let port = free_port();
    let _watcher = start_watcher(port, &queue_url, &endpoint, Keys::Inline(KEY), Region::Set);
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
    let reply = cargo_lambda_invoke(port, "events/ingest-signup-success.json");
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
    let reply = cargo_lambda_invoke(port, &file.to_string_lossy());
    assert_eq!(reply["statusCode"], 401, "{reply}");

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
    let port = free_port();
    // The demo key the event files are signed with (events/env.json).
    let env: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("events/env.json")).expect("env.json"),
    )
    .expect("env.json is JSON");
    let demo_key = env["IngestFunction"]["CHARGIFY_SHARED_KEYS"]
        .as_str()
        .expect("demo key");
    // This function reads the key from Secrets Manager at cold start, as in AWS.
    let arn = create_secret("binary-demo-key", demo_key).await;
    let _watcher = start_watcher(
        port,
        &queue_url,
        &endpoint,
        Keys::SecretArn(&arn),
        Region::Unset,
    );
    wait_until_ready(port).await;
    for (file, status) in [
        ("events/ingest-signup-success.json", 200),
        ("events/ingest-payment-success-base64.json", 200),
        ("events/ingest-test-webhook.json", 200),
        ("events/ingest-wrong-signature.json", 401),
        ("events/ingest-not-a-webhook.json", 400),
    ] {
        let reply = cargo_lambda_invoke(port, file);
        assert_eq!(reply["statusCode"], status, "{file}: {reply}");
    }
    assert_eq!(drain(&client, &queue_url).await.len(), 2);
}

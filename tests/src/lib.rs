//! Harness for the integration tests: the AWS emulator (moto server, started by `tests/run.sh`
//! on 127.0.0.1), HTTP API v2 events like API Gateway sends, and reading a queue back.
//!
//! Tests fail, rather than skip, when the emulator is not there: a skipped AWS test would
//! let a broken adapter pass.

pub mod backfill_world;
pub mod chargify_standin;
pub mod emf;
pub mod keap_contract;
pub mod keap_standin;
pub mod keap_view;
pub mod lambda_watch;
pub mod loopback;
pub mod pipeline;
pub mod recording_control;

use base64::Engine;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

pub const MOTO_ENDPOINT_VAR: &str = "MOTO_ENDPOINT";

/// The emulator's URL, from `MOTO_ENDPOINT` (set by `tests/run.sh`). Only loopback is allowed.
pub fn moto_endpoint() -> String {
    let endpoint = std::env::var(MOTO_ENDPOINT_VAR).unwrap_or_else(|_| {
        panic!("{MOTO_ENDPOINT_VAR} is not set: run the tests with `bash tests/run.sh`, which starts moto on 127.0.0.1")
    });
    assert!(
        endpoint.starts_with("http://127.0.0.1:") || endpoint.starts_with("http://localhost:"),
        "{MOTO_ENDPOINT_VAR} must point at loopback, not {endpoint}"
    );
    endpoint
}

/// SDK configuration for an endpoint, with dummy credentials (the emulator checks none).
pub async fn aws_config_for(endpoint: &str) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_timeout(Duration::from_secs(5))
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(shared::aws::https_client())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .timeout_config(timeouts)
        .load()
        .await
}

pub async fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&aws_config_for(endpoint).await)
}

/// A DynamoDB client with the production retry policy (`shared::dynamodb::client`).
pub async fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    shared::dynamodb::client(&aws_config_for(endpoint).await)
}

/// A DynamoDB client like [`dynamodb_client`] that also logs every request it transmits.
pub async fn logged_dynamodb_client(endpoint: &str) -> (aws_sdk_dynamodb::Client, RequestLog) {
    let log = RequestLog::default();
    let conf = aws_sdk_dynamodb::config::Builder::from(&aws_config_for(endpoint).await)
        .retry_config(shared::dynamodb::retry_config())
        .interceptor(log.clone())
        .build();
    (aws_sdk_dynamodb::Client::from_conf(conf), log)
}

/// The operations a client sent (from the `X-Amz-Target` header of the JSON protocols,
/// e.g. `UpdateItem`), one per attempt, so retries count too.
#[derive(Debug, Clone, Default)]
pub struct RequestLog {
    operations: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RequestLog {
    /// The operations sent since the last call, and forgets them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.operations.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl aws_sdk_dynamodb::config::Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("?");
        let operation = target.rsplit('.').next().unwrap_or(target).to_owned();
        self.operations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(operation);
        Ok(())
    }
}

/// A fresh table with a unique name, keyed by `pk` (S) like all of ours, on-demand, with TTL
/// on `ttl_attribute` when given. Returns the table name.
pub async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    prefix: &str,
    ttl_attribute: Option<&str>,
) -> String {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TimeToLiveSpecification,
    };
    let name = unique_name(prefix);
    client
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(shared::dynamodb::PARTITION_KEY)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(shared::dynamodb::PARTITION_KEY)
                .key_type(KeyType::Hash)
                .build()
                .expect("key schema"),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("create table {name} on the emulator: {e:?}"));
    if let Some(attribute) = ttl_attribute {
        client
            .update_time_to_live()
            .table_name(&name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(attribute)
                    .enabled(true)
                    .build()
                    .expect("TTL specification"),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("enable TTL on {name}: {e:?}"));
    }
    name
}

/// A table for `DynamoDbIdempotencyStore`: `pk` (S), TTL on `expires_at`.
pub async fn create_idempotency_table(client: &aws_sdk_dynamodb::Client) -> String {
    create_table(client, "idempotency", Some("expires_at")).await
}

/// A table for `DynamoDbCustomerStore`: `pk` (S), no TTL.
pub async fn create_customers_table(client: &aws_sdk_dynamodb::Client) -> String {
    create_table(client, "customers", None).await
}

/// An endpoint on 127.0.0.1 where nothing listens: every connection is refused.
pub fn unreachable_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A unique resource name (`prefix-<nanos>`), so tests sharing one emulator never collide.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos}")
}

/// A fresh FIFO queue with a unique name, so tests sharing one emulator never see each
/// other's messages. Content-based deduplication is off: ingest always sets the id.
pub async fn create_fifo_queue(client: &aws_sdk_sqs::Client, prefix: &str) -> String {
    create_fifo_queue_with(client, prefix, &[]).await
}

/// [`create_fifo_queue`] with more attributes (a redrive policy, a visibility timeout).
pub async fn create_fifo_queue_with(
    client: &aws_sdk_sqs::Client,
    prefix: &str,
    attributes: &[(aws_sdk_sqs::types::QueueAttributeName, String)],
) -> String {
    use aws_sdk_sqs::types::QueueAttributeName;
    let name = format!("{}.fifo", unique_name(prefix));
    let mut request = client
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
    for (attribute, value) in attributes {
        request = request.attributes(attribute.clone(), value);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("create queue {name} on the emulator: {e:?}"))
        .queue_url
        .unwrap_or_else(|| panic!("no url for queue {name}"))
}

/// A main FIFO queue and its dead-letter FIFO queue, wired as the stack wires them (redrive
/// after 1000 receives: the processor decides when to give up). Returns `(main url,
/// dead-letter url)`.
pub async fn create_fifo_queue_pair(
    client: &aws_sdk_sqs::Client,
    prefix: &str,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dead_letter_url = create_fifo_queue(client, &format!("{prefix}-dlq")).await;
    let arn = client
        .get_queue_attributes()
        .queue_url(&dead_letter_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("arn of {dead_letter_url}: {e:?}"))
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_else(|| panic!("no arn for {dead_letter_url}"));
    let redrive = json!({ "deadLetterTargetArn": arn, "maxReceiveCount": 1000 }).to_string();
    let main_url = create_fifo_queue_with(
        client,
        prefix,
        &[(QueueAttributeName::RedrivePolicy, redrive)],
    )
    .await;
    (main_url, dead_letter_url)
}

/// A Secrets Manager secret (in the emulator) with a unique name; returns its ARN.
pub async fn create_secret(name: &str, value: &str) -> String {
    let config = aws_config_for(&moto_endpoint()).await;
    let client = aws_sdk_secretsmanager::Client::new(&config);
    client
        .create_secret()
        .name(unique_name(name))
        .secret_string(value)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create secret {name} on the emulator: {e:?}"))
        .arn
        .unwrap_or_else(|| panic!("no arn for secret {name}"))
}

/// A message read back from the queue.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub body: String,
    pub group_id: String,
    pub deduplication_id: String,
    pub attributes: Vec<(String, String)>,
}

/// Every message on the queue: bounded polling until two empty receives in a row.
pub async fn drain(client: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<ReceivedMessage> {
    use aws_sdk_sqs::types::MessageSystemAttributeName;
    let mut out = Vec::new();
    let mut empty = 0;
    for _ in 0..50 {
        let output = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(300)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap_or_else(|e| panic!("receive from {queue_url}: {e:?}"));
        let messages = output.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            if empty == 2 {
                break;
            }
            continue;
        }
        empty = 0;
        for m in messages {
            let system = m.attributes.clone().unwrap_or_default();
            let attr =
                |name: MessageSystemAttributeName| system.get(&name).cloned().unwrap_or_default();
            let mut attributes: Vec<(String, String)> = m
                .message_attributes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.string_value.unwrap_or_default()))
                .collect();
            attributes.sort();
            out.push(ReceivedMessage {
                body: m.body.clone().unwrap_or_default(),
                group_id: attr(MessageSystemAttributeName::MessageGroupId),
                deduplication_id: attr(MessageSystemAttributeName::MessageDeduplicationId),
                attributes,
            });
        }
    }
    out
}

/// How a test request's signature travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature<'a> {
    None,
    Header(&'a str),
    Query(&'a str),
}

/// An API Gateway HTTP API (payload format 2.0) event for `POST /webhooks/chargify`, as
/// API Gateway builds it: lower-case header names, `rawQueryString`, and a base64 body when
/// `base64` is set.
pub fn http_api_event(method: &str, body: &[u8], signature: Signature<'_>, base64: bool) -> Value {
    let mut headers = json!({
        "content-type": "application/x-www-form-urlencoded",
        "host": "abc123.execute-api.us-east-1.amazonaws.com",
        "user-agent": "Chargify Webhooks",
    });
    let mut raw_query = String::new();
    let mut query_params = Value::Null;
    match signature {
        Signature::None => {}
        Signature::Header(sig) => {
            headers["x-chargify-webhook-signature-hmac-sha-256"] = json!(sig);
        }
        Signature::Query(sig) => {
            raw_query = format!("signature_hmac_sha_256={sig}");
            query_params = json!({ "signature_hmac_sha_256": sig });
        }
    }
    let body_text = if base64 {
        base64::engine::general_purpose::STANDARD.encode(body)
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    let mut event = json!({
        "version": "2.0",
        "routeKey": "POST /webhooks/chargify",
        "rawPath": "/webhooks/chargify",
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": "/webhooks/chargify",
                "protocol": "HTTP/1.1",
                "sourceIp": "198.51.100.7",
                "userAgent": "Chargify Webhooks"
            },
            "requestId": "test-request",
            "routeKey": "POST /webhooks/chargify",
            "stage": "$default",
            "time": "27/Nov/2026:10:00:00 +0000",
            "timeEpoch": 1795773600000u64
        },
        "body": body_text,
        "isBase64Encoded": base64
    });
    if !query_params.is_null() {
        event["queryStringParameters"] = query_params;
    }
    event
}

/// `target/debug/cks`, built once per test binary by the first test that needs it (a test
/// crate cannot name another package's binary with `CARGO_BIN_EXE_*`).
pub fn cks_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = std::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            )
            .current_dir(repo_root())
            .args([
                "build",
                "--quiet",
                "--locked",
                "-p",
                "chargify-keap-sync-cli",
                "--bin",
                "cks",
            ])
            .status()
            .expect("cargo runs");
            assert!(status.success(), "cargo build -p chargify-keap-sync-cli");
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join("target"))
                .join("debug")
                .join("cks")
        })
        .clone()
}

/// What one `cks` run gave.
#[derive(Debug)]
pub struct CksRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CksRun {
    /// stdout as one JSON value a line.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The failure's message, which the commands promise on exactly one line.
    pub fn one_error_line(&self) -> &str {
        assert!(!self.ok, "expected a failure; stdout: {}", self.stdout);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one error line: {}", self.stderr);
        lines[0]
    }
}

/// Runs the built `cks` ([`cks_binary`]) with `args` against moto, as an operator with
/// credentials would: the endpoint, a region, dummy keys, no profile, no instance metadata.
/// `env` then sets (`Some`) or removes (`None`) variables. Bounded: a minute.
pub async fn run_cks(args: &[&str], env: &[(&str, Option<&str>)]) -> CksRun {
    let binary = tokio::task::spawn_blocking(cks_binary)
        .await
        .expect("cks builds");
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args)
        .kill_on_drop(true)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_ENDPOINT_URL", moto_endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("cks finishes within a minute")
        .expect("cks runs");
    CksRun {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A raw HTTP/1.1 request to 127.0.0.1 (the tests depend on no HTTP client crate). Returns
/// the status and the whole response text (head and body).
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

/// Receives up to 10 messages and shapes them as the SQS event Lambda's event source mapping
/// delivers (message id, receipt handle, body, and the FIFO system attributes).
pub async fn receive_as_lambda_event(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    visibility_timeout: i32,
) -> aws_lambda_events::sqs::SqsEvent {
    use aws_sdk_sqs::types::MessageSystemAttributeName;
    let output = client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(visibility_timeout)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap_or_else(|e| panic!("receive from {queue_url}: {e:?}"));
    let mut event = aws_lambda_events::sqs::SqsEvent::default();
    for m in output.messages.unwrap_or_default() {
        let mut record = aws_lambda_events::sqs::SqsMessage::default();
        record.message_id = m.message_id.clone();
        record.receipt_handle = m.receipt_handle.clone();
        record.body = m.body.clone();
        record.event_source = Some("aws:sqs".into());
        for (name, value) in m.attributes.clone().unwrap_or_default() {
            record.attributes.insert(name.as_str().to_owned(), value);
        }
        event.records.push(record);
    }
    event
}

/// Deletes the records of `event` that are not in `failed` (message ids), as the event source
/// mapping does after a partial batch response.
pub async fn delete_succeeded(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    event: &aws_lambda_events::sqs::SqsEvent,
    failed: &[String],
) {
    for record in &event.records {
        let id = record.message_id.clone().unwrap_or_default();
        if failed.contains(&id) {
            continue;
        }
        if let Some(receipt) = &record.receipt_handle {
            client
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(receipt)
                .send()
                .await
                .unwrap_or_else(|e| panic!("delete {id}: {e:?}"));
        }
    }
}

/// What the processor needs in AWS, freshly made in the emulator: the FIFO queue and its
/// dead-letter queue, the idempotency table and the identity-map table.
pub struct ProcessorResources {
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub queue_url: String,
    pub dead_letter_url: String,
    pub idempotency_table: String,
    pub customers_table: String,
}

pub async fn processor_resources(prefix: &str) -> ProcessorResources {
    let endpoint = moto_endpoint();
    let sqs = sqs_client(&endpoint).await;
    let dynamodb = dynamodb_client(&endpoint).await;
    let (queue_url, dead_letter_url) = create_fifo_queue_pair(&sqs, prefix).await;
    let idempotency_table = create_idempotency_table(&dynamodb).await;
    let customers_table = create_customers_table(&dynamodb).await;
    ProcessorResources {
        sqs,
        dynamodb,
        queue_url,
        dead_letter_url,
        idempotency_table,
        customers_table,
    }
}

//! Harness for the integration tests: the AWS emulator (moto server, started by `tests/run.sh`
//! on 127.0.0.1), HTTP API v2 events like API Gateway sends, and reading a queue back.
//!
//! Tests fail, rather than skip, when the emulator is not there: a skipped AWS test would
//! let a broken adapter pass.

pub mod keap_contract;
pub mod keap_standin;

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
        .http_client(shared::entrypoints::https_client())
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

pub async fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&aws_config_for(endpoint).await)
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
    use aws_sdk_sqs::types::QueueAttributeName;
    let name = format!("{}.fifo", unique_name(prefix));
    client
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .send()
        .await
        .unwrap_or_else(|e| panic!("create queue {name} on the emulator: {e:?}"))
        .queue_url
        .unwrap_or_else(|| panic!("no url for queue {name}"))
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

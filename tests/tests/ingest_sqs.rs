//! The ingest Lambda handler, fed API Gateway HTTP API events, against SQS FIFO in moto.

use integration_tests::{
    create_fifo_queue, drain, http_api_event, moto_endpoint, sqs_client, unreachable_endpoint,
    Signature,
};
use lambda_http::{Body, Response};
use shared::chargify::signature::sign;
use shared::chargify::SharedKeySet;
use shared::entrypoints::ingest_lambda::handle;
use shared::envelope::{WebhookEnvelope, MAX_BODY_BYTES};
use shared::fixtures;
use shared::ingest::IngestService;
use shared::queue::SqsWebhookQueue;

const KEY: &str = "integration-shared-key";
const OLD_KEY: &str = "integration-old-key";

struct Harness {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    service: IngestService<SqsWebhookQueue>,
}

async fn harness(name: &str) -> Harness {
    let endpoint = moto_endpoint();
    let client = sqs_client(&endpoint).await;
    let queue_url = create_fifo_queue(&client, name).await;
    let keys = SharedKeySet::parse(&format!("{OLD_KEY},{KEY}")).expect("keys");
    let service = IngestService::new(
        keys,
        SqsWebhookQueue::new(client.clone(), queue_url.clone()),
    );
    Harness {
        client,
        queue_url,
        service,
    }
}

async fn invoke(
    service: &IngestService<SqsWebhookQueue>,
    event: &serde_json::Value,
) -> (u16, String) {
    let request =
        lambda_http::request::from_str(&event.to_string()).expect("a valid HTTP API event");
    let response: Response<Body> = handle(service, request)
        .await
        .expect("the handler never errors");
    let status = response.status().as_u16();
    let body = String::from_utf8_lossy(response.body().as_ref()).into_owned();
    (status, body)
}

fn signed(body: &str) -> serde_json::Value {
    let sig = sign(KEY, body.as_bytes());
    http_api_event("POST", body.as_bytes(), Signature::Header(&sig), false)
}

#[tokio::test]
async fn a_valid_webhook_becomes_exactly_one_fifo_message() {
    let h = harness("valid").await;
    let (status, body) = invoke(&h.service, &signed(fixtures::SIGNUP_SUCCESS)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""outcome":"enqueued""#), "{body}");

    let messages = drain(&h.client, &h.queue_url).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m.group_id, "acme-test:cus:15");
    assert_eq!(m.deduplication_id, "acme-test:5");
    assert_eq!(
        m.attributes,
        vec![
            ("envelope_version".to_owned(), "1".to_owned()),
            ("event".to_owned(), "signup_success".to_owned())
        ]
    );
    let envelope = WebhookEnvelope::from_json(&m.body).expect("an envelope");
    assert_eq!(envelope.version, 1);
    assert_eq!(envelope.webhook_id, "5");
    assert_eq!(envelope.event, "signup_success");
    assert_eq!(envelope.site, "acme-test");
    assert_eq!(envelope.site_id.as_deref(), Some("3"));
    assert_eq!(envelope.subscription_id.as_deref(), Some("14"));
    assert_eq!(envelope.customer_id.as_deref(), Some("15"));
    assert_eq!(envelope.event_id.as_deref(), Some("99"));
    assert_eq!(envelope.verified_by.key, "*#1");
    assert_eq!(
        envelope.raw_body,
        fixtures::SIGNUP_SUCCESS,
        "the raw body travels byte for byte"
    );
    let age = time::OffsetDateTime::now_utc() - envelope.received_at;
    assert!(
        age.whole_seconds().abs() < 60,
        "received_at {}",
        envelope.received_at
    );
}

#[tokio::test]
async fn every_reference_body_is_enqueued_with_its_ids() {
    let h = harness("reference").await;
    let mut expected = Vec::new();
    for (event, body) in fixtures::ALL.iter().filter(|(e, _)| *e != "test") {
        let (status, reply) = invoke(&h.service, &signed(body)).await;
        assert_eq!(status, 200, "{event}: {reply}");
        expected.push(*event);
    }
    let messages = drain(&h.client, &h.queue_url).await;
    let mut events: Vec<String> = messages
        .iter()
        .map(|m| WebhookEnvelope::from_json(&m.body).expect("envelope").event)
        .collect();
    events.sort();
    expected.sort();
    assert_eq!(events, expected);
    let group_of = |event: &str| {
        messages
            .iter()
            .find(|m| m.body.contains(&format!(r#""event":"{event}""#)))
            .map(|m| m.group_id.clone())
            .unwrap_or_default()
    };
    assert_eq!(group_of("payment_success"), "general-goods:cus:14585695");
    assert_eq!(group_of("statement_settled"), "general-goods:cus:14585695");
    assert_eq!(group_of("customer_update"), "capital-preferences-ltd:cus:0");
}

#[tokio::test]
async fn the_same_webhook_twice_is_one_message() {
    let h = harness("dedup").await;
    let event = signed(fixtures::PAYMENT_FAILURE);
    assert_eq!(invoke(&h.service, &event).await.0, 200);
    assert_eq!(invoke(&h.service, &event).await.0, 200);
    // A replay signed with the other live key is the same webhook too.
    let old_sig = sign(OLD_KEY, fixtures::PAYMENT_FAILURE.as_bytes());
    let replay = http_api_event(
        "POST",
        fixtures::PAYMENT_FAILURE.as_bytes(),
        Signature::Header(&old_sig),
        false,
    );
    assert_eq!(invoke(&h.service, &replay).await.0, 200);
    assert_eq!(drain(&h.client, &h.queue_url).await.len(), 1);
}

#[tokio::test]
async fn base64_bodies_and_query_signatures_are_accepted() {
    let h = harness("encodings").await;
    let body = fixtures::CUSTOMER_UPDATE;
    let sig = sign(KEY, body.as_bytes());
    let base64 = http_api_event("POST", body.as_bytes(), Signature::Header(&sig), true);
    assert_eq!(invoke(&h.service, &base64).await.0, 200);
    let other = fixtures::SUBSCRIPTION_STATE_CHANGE;
    let sig = sign(KEY, other.as_bytes());
    let query = http_api_event("POST", other.as_bytes(), Signature::Query(&sig), false);
    assert_eq!(invoke(&h.service, &query).await.0, 200);
    let messages = drain(&h.client, &h.queue_url).await;
    assert_eq!(messages.len(), 2);
    let raw: Vec<String> = messages
        .iter()
        .map(|m| {
            WebhookEnvelope::from_json(&m.body)
                .expect("envelope")
                .raw_body
        })
        .collect();
    assert!(
        raw.iter().any(|b| b == body),
        "base64 body decoded to the exact bytes"
    );
}

#[tokio::test]
async fn every_bad_input_gets_its_answer_and_enqueues_nothing() {
    let h = harness("bad").await;
    let body = fixtures::SIGNUP_SUCCESS;
    let good_sig = sign(KEY, body.as_bytes());
    let tampered = body.replace("john%40example.com", "mallory%40example.com");
    let truncated = &body[..body.len() / 2];
    let oversized = format!("id=9&event=x&pad={}", "a".repeat(MAX_BODY_BYTES));
    let json_body = r#"{"id":"9","event":"signup_success"}"#;
    let wrong_key_sig = sign("not-the-key", body.as_bytes());
    let md5_style = "3df5f2c8d2bfd40d8a8d72cb9e7fe56c";
    let cases: Vec<(&str, serde_json::Value, u16, &str)> = vec![
        (
            "unsigned",
            http_api_event("POST", body.as_bytes(), Signature::None, false),
            401,
            "signature_missing",
        ),
        (
            "wrong key",
            http_api_event(
                "POST",
                body.as_bytes(),
                Signature::Header(&wrong_key_sig),
                false,
            ),
            401,
            "signature_mismatch",
        ),
        (
            "legacy md5 only",
            http_api_event("POST", body.as_bytes(), Signature::Header(md5_style), false),
            401,
            "signature_malformed",
        ),
        (
            "tampered",
            http_api_event(
                "POST",
                tampered.as_bytes(),
                Signature::Header(&good_sig),
                false,
            ),
            401,
            "signature_mismatch",
        ),
        (
            "truncated",
            http_api_event(
                "POST",
                truncated.as_bytes(),
                Signature::Header(&good_sig),
                false,
            ),
            401,
            "signature_mismatch",
        ),
        (
            "truncated, re-signed",
            signed(&truncated[..truncated.find("&event").unwrap_or(4)]),
            400,
            "body_missing_field",
        ),
        ("json, signed", signed(json_body), 400, "body_missing_field"),
        ("empty, signed", signed(""), 400, "body_missing_field"),
        (
            "oversized, signed",
            signed(&oversized),
            413,
            "body_too_large",
        ),
        (
            "GET",
            http_api_event("GET", body.as_bytes(), Signature::Header(&good_sig), false),
            405,
            "method_not_allowed",
        ),
    ];
    for (name, event, status, outcome) in cases {
        let (got, reply) = invoke(&h.service, &event).await;
        assert_eq!(got, status, "{name}: {reply}");
        assert!(
            reply.contains(&format!(r#""outcome":"{outcome}""#)),
            "{name}: {reply}"
        );
    }
    let binary = b"id=1&event=signup_success&x=\xff";
    let sig = sign(KEY, binary);
    let (status, _) = invoke(
        &h.service,
        &http_api_event("POST", binary, Signature::Header(&sig), true),
    )
    .await;
    assert_eq!(status, 400, "signed non-text body");
    assert!(drain(&h.client, &h.queue_url).await.is_empty());
}

#[tokio::test]
async fn the_test_webhook_is_200_and_not_enqueued() {
    let h = harness("testhook").await;
    let (status, body) = invoke(&h.service, &signed(fixtures::TEST)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("test_acknowledged"));
    assert!(drain(&h.client, &h.queue_url).await.is_empty());
}

#[tokio::test]
async fn an_unreachable_queue_is_503_so_chargify_retries() {
    // A port nothing listens on: connection refused on every attempt.
    let dead = unreachable_endpoint();
    let client = sqs_client(&dead).await;
    let keys = SharedKeySet::parse(KEY).expect("keys");
    let service = IngestService::new(
        keys,
        SqsWebhookQueue::new(client, format!("{dead}/123456789012/gone.fifo")),
    );
    let started = std::time::Instant::now();
    let (status, body) = invoke(&service, &signed(fixtures::SIGNUP_SUCCESS)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("queue_unavailable"), "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(14),
        "answered within Chargify's 15 s"
    );
}

#[tokio::test]
async fn a_queue_that_does_not_exist_is_503() {
    let endpoint = moto_endpoint();
    let client = sqs_client(&endpoint).await;
    let keys = SharedKeySet::parse(KEY).expect("keys");
    let service = IngestService::new(
        keys,
        SqsWebhookQueue::new(
            client,
            format!("{endpoint}/123456789012/never-created.fifo"),
        ),
    );
    let (status, body) = invoke(&service, &signed(fixtures::SIGNUP_SUCCESS)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("queue_refused"), "{body}");
}

#[tokio::test]
async fn bodies_shaped_like_no_webhook_are_400_and_nothing_reaches_sqs() {
    let h = harness("shape").await;
    let nested = |levels: usize| {
        format!(
            "id=9&event=signup_success&payload[site][subdomain]=acme-test&payload{}=v",
            "[a]".repeat(levels)
        )
    };
    let cases = [
        (nested(5_000), "body_too_deep"),
        (nested(20_000), "body_too_deep"),
        (
            format!("id=9&event=signup_success{}", "&a".repeat(100_000)),
            "body_too_many_fields",
        ),
    ];
    for (body, code) in &cases {
        assert!(body.len() <= MAX_BODY_BYTES, "{code}: {} bytes", body.len());
        let (status, reply) = invoke(&h.service, &signed(body)).await;
        assert_eq!(status, 400, "{code}: {reply}");
        assert!(reply.contains(&format!(r#""outcome":"{code}""#)), "{reply}");
    }
    // The process is still here, and still takes a real webhook.
    let (status, _) = invoke(&h.service, &signed(fixtures::SIGNUP_SUCCESS)).await;
    assert_eq!(status, 200);
    let messages = drain(&h.client, &h.queue_url).await;
    assert_eq!(messages.len(), 1, "only the real webhook: {messages:?}");
}

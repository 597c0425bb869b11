//! The SQS record control (delay a record, dead-letter it) against SQS FIFO in moto.

use integration_tests::{
    create_fifo_queue_pair, drain, moto_endpoint, sqs_client, unreachable_endpoint,
};
use shared::queue::{
    DeadLetter, OutboundMessage, QueueError, RecordControl, SqsRecordControl, SqsWebhookQueue,
    WebhookQueue,
};
use std::time::{Duration, Instant};

struct Harness {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_url: String,
    control: SqsRecordControl,
}

async fn harness(name: &str) -> Harness {
    let client = sqs_client(&moto_endpoint()).await;
    let (queue_url, dead_letter_url) = create_fifo_queue_pair(&client, name).await;
    let control = SqsRecordControl::new(client.clone(), &queue_url, &dead_letter_url);
    Harness {
        client,
        queue_url,
        dead_letter_url,
        control,
    }
}

fn dead_letter(reason: &str) -> DeadLetter {
    DeadLetter {
        body: r#"{"version":1,"webhook_id":"5","raw_body":"id=5&event=signup_success&x=%C3%A9 é"}"#
            .to_owned(),
        group_id: "acme-test:cus:15".to_owned(),
        deduplication_id: "acme-test:5".to_owned(),
        reason: reason.to_owned(),
        code: "keap_permanent".to_owned(),
    }
}

/// One receive (no long polling), hiding what it gets for `visibility` seconds.
async fn receive(h: &Harness, visibility: i32) -> Vec<aws_sdk_sqs::types::Message> {
    h.client
        .receive_message()
        .queue_url(&h.queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(visibility)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default()
}

#[tokio::test]
async fn dead_letter_puts_the_unchanged_body_and_its_reason_on_the_dead_letter_queue() {
    let h = harness("deadletter").await;
    let long_reason = format!("Keap refused the contact: {}", "x".repeat(5000));
    let message = dead_letter(&long_reason);
    h.control.dead_letter(&message).await.expect("dead letter");
    // The same message dead-lettered again (a retried call) is stored once.
    h.control.dead_letter(&message).await.expect("dead letter");
    let messages = drain(&h.client, &h.dead_letter_url).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m.body, message.body);
    assert_eq!(m.group_id, message.group_id);
    assert_eq!(m.deduplication_id, message.deduplication_id);
    assert_eq!(
        m.attributes,
        vec![
            ("FailureCode".to_owned(), "keap_permanent".to_owned()),
            (
                "FailureReason".to_owned(),
                long_reason[..shared::queue::MAX_FAILURE_REASON_BYTES].to_owned()
            ),
        ]
    );
    assert!(drain(&h.client, &h.queue_url).await.is_empty());
}

#[tokio::test]
async fn retry_later_hides_a_received_message_and_zero_shows_it_again() {
    let h = harness("retrylater").await;
    SqsWebhookQueue::new(h.client.clone(), &h.queue_url)
        .send(&OutboundMessage {
            group_id: "acme-test:cus:15".to_owned(),
            deduplication_id: "acme-test:5".to_owned(),
            body: "hello".to_owned(),
            attributes: Vec::new(),
        })
        .await
        .expect("send");

    // Received and hidden for 5 minutes, then handed back at once: visible again.
    let first = receive(&h, 300).await;
    assert_eq!(first.len(), 1);
    let handle = first[0].receipt_handle().expect("receipt handle");
    h.control
        .retry_later(handle, Duration::ZERO)
        .await
        .expect("retry later");
    let again = receive(&h, 1).await;
    assert_eq!(again.len(), 1, "a zero delay makes the message visible");

    // Received with a 1 s timeout, then delayed 10 minutes: gone once the 1 s has passed.
    let handle = again[0].receipt_handle().expect("receipt handle");
    h.control
        .retry_later(handle, Duration::from_secs(600))
        .await
        .expect("retry later");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        receive(&h, 1).await.is_empty(),
        "the delay outlasts the receive's own timeout"
    );
}

#[tokio::test]
async fn a_bad_receipt_handle_is_refused() {
    let h = harness("badhandle").await;
    let result = h
        .control
        .retry_later("not-a-receipt-handle", Duration::from_secs(30))
        .await;
    assert!(
        matches!(result, Err(QueueError::Refused { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_unreachable_queue_is_unavailable_within_bounded_time() {
    let dead = unreachable_endpoint();
    let client = sqs_client(&dead).await;
    let control = SqsRecordControl::new(
        client,
        format!("{dead}/123456789012/gone.fifo"),
        format!("{dead}/123456789012/gone-dlq.fifo"),
    );
    let started = Instant::now();
    let result = control.dead_letter(&dead_letter("why")).await;
    assert!(
        matches!(result, Err(QueueError::Unavailable { .. })),
        "{result:?}"
    );
    let result = control.retry_later("handle", Duration::from_secs(5)).await;
    assert!(
        matches!(result, Err(QueueError::Unavailable { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

//! The processor end to end over real wire protocols: ingest puts signed reference webhooks on
//! an SQS FIFO queue in moto, the processor's Lambda handler runs each batch as the event
//! source mapping would deliver it, with its idempotency records and identity map in DynamoDB
//! (moto), against the Keap stand-in (which refuses any request the v1 spec would).

use integration_tests::keap_standin::Fault;
use integration_tests::pipeline::Pipeline as Stack;
use integration_tests::{drain, receive_as_lambda_event};
use shared::entrypoints::processor_lambda::handle;
use shared::fixtures;
use shared::idempotency::{IdempotencyKey, IdempotencyStore, RecordStatus};
use shared::rules::RuleSet;
use std::time::{Duration, Instant};

async fn stack() -> Stack {
    Stack::start(RuleSet::default_rules().expect("default rules")).await
}

async fn stack_with(rules: RuleSet) -> Stack {
    Stack::start(rules).await
}

fn tag_names_of_only_contact(stack: &Stack) -> Vec<String> {
    let state = stack.keap.state();
    assert_eq!(state.contacts.len(), 1, "exactly one contact");
    let id = *state.contacts.keys().next().expect("contact");
    let mut names: Vec<String> = state
        .contact_tags
        .get(&id)
        .into_iter()
        .flatten()
        .filter_map(|t| state.tags.get(t))
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn billing(tags: &[String]) -> Vec<String> {
    tags.iter()
        .filter(|t| t.starts_with("Billing: "))
        .cloned()
        .collect()
}

#[tokio::test]
async fn every_reference_webhook_goes_from_ingest_to_keap() {
    let stack = stack().await;
    for (event, body) in fixtures::ALL {
        assert_eq!(stack.post(body).await, 200, "{event}");
    }
    let failed = stack.drain_through_processor().await;
    assert!(failed.is_empty(), "failed: {failed:?}");
    stack.assert_no_violations();
    let goals = stack.goals();
    assert!(goals.contains(&"chargify/signup".to_owned()), "{goals:?}");
    assert!(
        goals.contains(&"chargify/payment_failed".to_owned()),
        "{goals:?}"
    );
    // signup (acme-test) and the captures (capital-preferences-ltd) share john@example.com,
    // so they meet in one Keap contact, found by email; payment_success is pookie999's.
    let (contacts, tags) = {
        let state = stack.keap.state();
        let tags: Vec<String> = state
            .tags
            .values()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
        (state.contacts.len(), tags)
    };
    assert_eq!(contacts, 2);
    assert!(tags.contains(&"Billing: Active".to_owned()), "{tags:?}");
    assert!(
        tags.contains(&"Plan: handle_6a9273b8a".to_owned()),
        "{tags:?}"
    );
    // The records say what happened; the dead-letter queue is empty.
    let record = stack
        .idempotency
        .get(&IdempotencyKey::new("acme-test", "5"))
        .await
        .expect("read")
        .expect("signup record");
    assert_eq!(record.status, RecordStatus::Completed);
    assert!(drain(&stack.sqs, &stack.dead_letter_url).await.is_empty());
    // Every Keap call changed something: no tag applied that the contact had, none removed
    // that it lacked, no contact write of the values it held.
    assert_eq!(stack.keap.noop_calls(), Vec::<String>::new());
}

#[tokio::test]
async fn the_same_webhook_three_times_at_once_has_one_effect() {
    let stack = stack().await;
    assert_eq!(stack.post(fixtures::SIGNUP_SUCCESS).await, 200);
    let event = receive_as_lambda_event(&stack.sqs, &stack.queue_url, 60).await;
    assert_eq!(event.records.len(), 1);
    // Three deliveries of it (an SQS redelivery, a Chargify retry, a replay) run together.
    // Started 20 ms apart, so they overlap in Keap but reach the lease one after another:
    // moto does not serialise concurrent conditional writes the way DynamoDB does (see
    // stores_dynamodb.rs), and this test is about the processor, not the emulator.
    let mut runs = Vec::new();
    for i in 0..3 {
        let mut copy = event.clone();
        copy.records[0].message_id = Some(format!("copy-{i}"));
        let processor = stack.processor.clone();
        let control = stack.control.clone();
        runs.push(tokio::spawn(async move {
            handle(
                processor,
                control,
                copy,
                Instant::now() + Duration::from_secs(60),
            )
            .await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for run in runs {
        run.await.expect("no panic").expect("reportable");
    }
    // Whichever lost the race retries later and finds the record completed.
    let retry = handle(
        stack.processor.clone(),
        stack.control.clone(),
        event,
        Instant::now() + Duration::from_secs(60),
    )
    .await
    .expect("reportable");
    assert!(retry.batch_item_failures.is_empty());
    assert_eq!(stack.goals(), ["chargify/signup"]);
    assert_eq!(stack.keap.state().contacts.len(), 1);
    stack.assert_no_violations();
}

#[tokio::test]
async fn a_failure_after_the_goal_does_not_fire_it_again_on_retry() {
    let rules = RuleSet::from_toml(&shared::rules::DEFAULT_RULES.replace(
        "  { achieve_goal = \"chargify/signup\" },",
        "  { achieve_goal = \"chargify/signup\" },\n  { add_note = { title = \"Signed up\", body = \"Plan {{ product.name }}\" } },",
    ))
    .expect("rules");
    let stack = stack_with(rules).await;
    // The note fails (twice: the client retries once), after the goal succeeded.
    stack
        .keap
        .inject_on("POST", "/v1/notes", Fault::Status(503));
    stack
        .keap
        .inject_on("POST", "/v1/notes", Fault::Status(503));
    assert_eq!(stack.post(fixtures::SIGNUP_SUCCESS).await, 200);
    let failed = stack.invoke().await.expect("a batch");
    assert_eq!(failed.len(), 1);
    assert_eq!(stack.goals(), ["chargify/signup"]);
    assert!(stack.keap.state().notes.is_empty());
    // The record comes back (the processor hid it for 30 s; make it visible now) and is retried.
    let event = receive_as_lambda_event(&stack.sqs, &stack.queue_url, 0).await;
    assert!(
        event.records.is_empty(),
        "hidden by the processor's retry delay"
    );
    let retried = handle(
        stack.processor.clone(),
        stack.control.clone(),
        resend(),
        Instant::now() + Duration::from_secs(60),
    )
    .await
    .expect("reportable");
    assert!(retried.batch_item_failures.is_empty());
    assert_eq!(stack.goals(), ["chargify/signup"], "the goal fired once");
    assert_eq!(stack.keap.state().notes.len(), 1);
    stack.assert_no_violations();
}

/// The same webhook as a fresh SQS record (as a redelivery after the visibility delay).
fn resend() -> aws_lambda_events::sqs::SqsEvent {
    let envelope = fixtures::envelope(fixtures::SIGNUP_SUCCESS).expect("envelope");
    let mut record = aws_lambda_events::sqs::SqsMessage::default();
    record.message_id = Some("redelivery".into());
    record.body = Some(envelope.to_json());
    record
        .attributes
        .insert("MessageGroupId".into(), envelope.message_group_id());
    let mut event = aws_lambda_events::sqs::SqsEvent::default();
    event.records.push(record);
    event
}

fn state_change(id: &str, state: &str, updated_at: &str) -> String {
    fixtures::derive(
        fixtures::SIGNUP_SUCCESS,
        id,
        "subscription_state_change",
        &[
            ("payload[subscription][state]", state),
            ("payload[subscription][updated_at]", updated_at),
        ],
    )
}

#[tokio::test]
async fn an_older_state_change_after_a_newer_one_leaves_the_state_tag_alone() {
    let stack = stack().await;
    stack.post(fixtures::SIGNUP_SUCCESS).await;
    stack
        .post(&state_change(
            "71",
            "canceled",
            "2012-11-01%2009%3A00%3A00%20-0400",
        ))
        .await;
    // Chargify does not promise order: an earlier "past_due" arrives last.
    stack
        .post(&state_change(
            "70",
            "past_due",
            "2012-10-01%2009%3A00%3A00%20-0400",
        ))
        .await;
    assert!(stack.drain_through_processor().await.is_empty());
    assert_eq!(
        billing(&tag_names_of_only_contact(&stack)),
        ["Billing: Canceled"]
    );
    stack.assert_no_violations();
}

#[tokio::test]
async fn an_email_change_keeps_the_same_contact() {
    let stack = stack().await;
    stack.post(fixtures::SIGNUP_SUCCESS).await;
    let update = fixtures::derive(
        fixtures::CUSTOMER_UPDATE,
        "80",
        "customer_update",
        &[
            ("payload[site][subdomain]", "acme-test"),
            ("payload[customer][id]", "15"),
            ("payload[customer][email]", "john.new%40example.com"),
        ],
    );
    stack.post(&update).await;
    assert!(stack.drain_through_processor().await.is_empty());
    let state = stack.keap.state();
    assert_eq!(state.contacts.len(), 1, "no second contact");
    let contact = state.contacts.values().next().expect("contact");
    assert_eq!(
        contact["email_addresses"][0]["email"].as_str(),
        Some("john.new@example.com"),
        "{contact:?}"
    );
    drop(state);
    stack.assert_no_violations();
}

#[tokio::test]
async fn a_keap_429_is_retried_later_and_a_400_lands_in_the_dead_letter_queue() {
    let stack = stack().await;
    // Daily quota: never retried in-process; the record waits for the reset.
    stack
        .keap
        .inject_on("PUT", "/v1/contacts", Fault::DailyQuota);
    stack.post(fixtures::SIGNUP_SUCCESS).await;
    let failed = stack.invoke().await.expect("batch");
    assert_eq!(failed.len(), 1);
    assert!(stack.goals().is_empty());
    // Nothing lost: the message is still on the queue, hidden until the quota resets.
    let attributes = stack
        .sqs
        .get_queue_attributes()
        .queue_url(&stack.queue_url)
        .attribute_names(
            aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )
        .send()
        .await
        .expect("attributes");
    let hidden = attributes
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .cloned()
        })
        .unwrap_or_default();
    assert_eq!(hidden, "1");

    // A 400 (Keap refuses the contact): dead-lettered with the reason, not retried.
    let other = fixtures::derive(
        fixtures::SIGNUP_SUCCESS,
        "90",
        "signup_success",
        &[("payload[subscription][customer][id]", "16")],
    );
    stack
        .keap
        .inject_on("PUT", "/v1/contacts", Fault::Status(400));
    stack.post(&other).await;
    let failed = stack.invoke().await.expect("batch");
    assert!(
        failed.is_empty(),
        "a dead-lettered record leaves the main queue"
    );
    let letters = drain(&stack.sqs, &stack.dead_letter_url).await;
    assert_eq!(letters.len(), 1);
    let attribute = |name: &str| {
        letters[0]
            .attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(attribute("FailureCode"), "keap_permanent");
    assert!(attribute("FailureReason").contains("400") || !attribute("FailureReason").is_empty());
    assert!(letters[0].body.contains("\"webhook_id\":\"90\""));
}

#[tokio::test]
async fn a_fifo_group_stops_at_its_first_failure() {
    let stack = stack().await;
    // Customer 99 is known already: its next webhook updates its contact by id.
    let other = |id: &str, event: &str, state: &str| {
        fixtures::derive(
            fixtures::SIGNUP_SUCCESS,
            id,
            event,
            &[
                ("payload[subscription][customer][id]", "99"),
                (
                    "payload[subscription][customer][email]",
                    "other%40example.com",
                ),
                ("payload[subscription][state]", state),
                (
                    "payload[subscription][updated_at]",
                    "2012-09-10%2011%3A38%3A33%20-0400",
                ),
            ],
        )
    };
    stack.post(&other("62", "signup_success", "active")).await;
    assert!(stack.drain_through_processor().await.is_empty());
    // Customer 15: the upsert of its new contact fails transiently (both attempts), so its
    // later payment failure must wait. Customer 99's webhook, in the same batch, is not held
    // up (it makes no upsert, so the faults are all customer 15's).
    stack
        .keap
        .inject_on("PUT", "/v1/contacts", Fault::Status(503));
    stack
        .keap
        .inject_on("PUT", "/v1/contacts", Fault::Status(503));
    stack.post(fixtures::SIGNUP_SUCCESS).await;
    let payment_failure = fixtures::derive(fixtures::SIGNUP_SUCCESS, "61", "payment_failure", &[]);
    stack.post(&payment_failure).await;
    let other = other("63", "subscription_state_change", "canceled");
    stack.post(&other).await;
    let event = receive_as_lambda_event(&stack.sqs, &stack.queue_url, 60).await;
    assert_eq!(event.records.len(), 3, "moto hands the whole batch over");
    let response = handle(
        stack.processor.clone(),
        stack.control.clone(),
        event.clone(),
        Instant::now() + Duration::from_secs(60),
    )
    .await
    .expect("reportable");
    let failed: Vec<String> = response
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    let ids: Vec<String> = event
        .records
        .iter()
        .map(|r| r.message_id.clone().unwrap_or_default())
        .collect();
    let group = |i: usize| event.records[i].attributes.get("MessageGroupId").cloned();
    let failed_groups: Vec<_> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| failed.contains(id))
        .map(|(i, _)| group(i))
        .collect();
    assert_eq!(
        failed.len(),
        2,
        "the failed signup and the payment failure behind it"
    );
    assert!(failed_groups
        .iter()
        .all(|g| *g == Some("acme-test:cus:15".into())));
    assert_eq!(
        stack.goals(),
        ["chargify/signup", "chargify/canceled"],
        "customer 99's cancellation went through"
    );
    stack.assert_no_violations();
}

//! The processor with in-memory ports: exactly-once, ordering, stale events, identity and
//! failure handling. The same paths run against moto and the Keap stand-in in `tests/`.

use super::*;
use crate::fixtures;
use crate::idempotency::{IdempotencyKey, InMemoryIdempotencyStore};
use crate::identity::{InMemoryCustomerStore, InMemoryNameLocks};
use crate::keap::{InMemoryCrm, KeapError};
use crate::queue::InMemoryRecordControl;
use std::time::Instant;
use time::OffsetDateTime;

struct World {
    crm: Arc<InMemoryCrm>,
    idempotency: Arc<InMemoryIdempotencyStore>,
    customers: Arc<InMemoryCustomerStore>,
    processor: Arc<Processor>,
}

fn world() -> World {
    world_with(Limits::default())
}

fn world_with(settings: Limits) -> World {
    let rules = Arc::new(RuleSet::default_rules().expect("default rules"));
    let crm = Arc::new(InMemoryCrm::new());
    for label in rules.custom_field_labels() {
        crm.add_custom_field(&label);
    }
    let idempotency = Arc::new(InMemoryIdempotencyStore::new());
    let customers = Arc::new(InMemoryCustomerStore::new());
    let processor = Arc::new(Processor {
        rules,
        crm: crm.clone(),
        directory: Arc::new(Directory::new(Arc::new(InMemoryNameLocks::new()))),
        idempotency: idempotency.clone(),
        customers: customers.clone(),
        settings,
    });
    World {
        crm,
        idempotency,
        customers,
        processor,
    }
}

const MINUTE: Duration = Duration::from_secs(60);

fn body_with_state(state: &str, updated_at: &str) -> String {
    fixtures::SUBSCRIPTION_STATE_CHANGE
        .replace(
            "payload[subscription][state]=inactive",
            &format!("payload[subscription][state]={state}"),
        )
        .replace(
            "payload[subscription][updated_at]=2012-09-09%2011%3A49%3A44%20-0400",
            &format!("payload[subscription][updated_at]={updated_at}"),
        )
}

fn with_id(body: &str, id: &str) -> String {
    let end = body.find('&').unwrap_or(body.len());
    format!("id={id}{}", &body[end..])
}

async fn process(world: &World, body: &str) -> Result<Processed, ProcessError> {
    let envelope = fixtures::envelope(body).expect("envelope");
    world.processor.process(&envelope, MINUTE).await
}

fn contact_of(world: &World) -> ContactId {
    *world.crm.state().contacts.keys().next().expect("a contact")
}

use crate::keap::ContactId;

#[tokio::test]
async fn signup_creates_the_contact_tags_it_and_fires_the_goal_once() {
    let world = world();
    let outcome = process(&world, fixtures::SIGNUP_SUCCESS)
        .await
        .expect("applies");
    let Processed::Applied(applied) = outcome else {
        panic!("expected applied, got {outcome:?}");
    };
    assert!(applied.run.contact_written);
    let contact = contact_of(&world);
    let tags = world.crm.tag_names(contact);
    assert!(tags.iter().any(|t| t.starts_with("Billing: ")), "{tags:?}");
    assert!(tags.iter().any(|t| t.starts_with("Plan: ")), "{tags:?}");
    assert_eq!(world.crm.state().goals.len(), 1);
    {
        let state = world.crm.state();
        let (fields, _) = &state.contacts[&contact];
        assert!(
            fields.custom_fields.len() >= 4,
            "{:?}",
            fields.custom_fields
        );
        assert!(fields.email.as_deref().is_some_and(|e| e.contains('@')));
    }
    // Delivered again: nothing more happens in Keap.
    let calls = world.crm.call_count();
    assert_eq!(
        process(&world, fixtures::SIGNUP_SUCCESS)
            .await
            .expect("dup"),
        Processed::Duplicate { same_payload: true }
    );
    assert_eq!(world.crm.call_count(), calls);
    assert_eq!(world.crm.state().goals.len(), 1);
}

#[tokio::test]
async fn a_warm_signup_costs_three_keap_calls() {
    let world = world();
    process(&world, fixtures::SIGNUP_SUCCESS)
        .await
        .expect("warms the caches");
    // A second customer signs up: caches are warm, the contact is new.
    let second = with_id(fixtures::SIGNUP_SUCCESS, "99000001")
        .replace(
            "payload[subscription][customer][id]=",
            "payload[subscription][customer][id]=7",
        )
        .replace("%40", "+second%40");
    let calls = world.crm.call_count();
    let writes = world.idempotency.writes();
    process(&world, &second).await.expect("applies");
    let made: Vec<&str> = world.crm.state().calls[calls..]
        .iter()
        .map(|c| c.operation)
        .collect();
    assert_eq!(made, ["upsert_contact", "apply_tags", "achieve_goal"]);
    // Begin, the goal's intent and done, the seen marker, complete.
    assert_eq!(world.idempotency.writes() - writes, 5);
}

#[tokio::test]
async fn state_changes_keep_exactly_one_state_tag_and_an_older_one_is_stale() {
    let world = world();
    process(&world, fixtures::SIGNUP_SUCCESS)
        .await
        .expect("signup");
    let contact = contact_of(&world);
    let canceled = with_id(
        &body_with_state("canceled", "2012-09-10%2010%3A00%3A00%20-0400"),
        "5001",
    );
    process(&world, &canceled).await.expect("canceled");
    let billing: Vec<String> = world
        .crm
        .tag_names(contact)
        .into_iter()
        .filter(|t| t.starts_with("Billing: "))
        .collect();
    assert_eq!(billing, ["Billing: Canceled"]);

    // An "active" that happened before the cancellation arrives late.
    let late_active = with_id(
        &body_with_state("active", "2012-09-09%2012%3A00%3A00%20-0400"),
        "5000",
    );
    let calls = world.crm.call_count();
    let outcome = process(&world, &late_active).await.expect("processed");
    assert_eq!(outcome.outcome(), "stale");
    assert_eq!(
        world.crm.call_count(),
        calls,
        "a stale webhook costs no call"
    );
    let billing: Vec<String> = world
        .crm
        .tag_names(contact)
        .into_iter()
        .filter(|t| t.starts_with("Billing: "))
        .collect();
    assert_eq!(billing, ["Billing: Canceled"]);
    // Its goal is skipped: the state it reports is superseded (`on_stale = skip`).
    let goals: Vec<String> = world
        .crm
        .state()
        .goals
        .iter()
        .map(|g| g.2.clone())
        .collect();
    assert_eq!(goals, ["signup", "canceled"]);
}

#[tokio::test]
async fn an_email_change_keeps_the_same_contact() {
    let world = world();
    process(&world, fixtures::SIGNUP_SUCCESS)
        .await
        .expect("signup");
    let contact = contact_of(&world);
    // customer_update for the same Chargify customer id, with a new email.
    let signup = Webhook::parse(fixtures::SIGNUP_SUCCESS.as_bytes()).expect("parses");
    let customer = signup.customer_id.clone().expect("customer id");
    let update = fixtures::CUSTOMER_UPDATE
        .replace(
            "payload[customer][id]=0",
            &format!("payload[customer][id]={customer}"),
        )
        .replace("payload[customer][email]=", "payload[customer][email]=new.")
        .replace("capital-preferences-ltd", "acme-test");
    process(&world, &update).await.expect("update");
    let state = world.crm.state();
    assert_eq!(state.contacts.len(), 1, "no second contact");
    assert!(state.contacts[&contact]
        .0
        .email
        .as_deref()
        .is_some_and(|e| e.starts_with("new.")));
}

#[tokio::test]
async fn a_failure_after_the_goal_does_not_fire_the_goal_again_on_retry() {
    let text = crate::rules::DEFAULT_RULES.replace(
        "  { achieve_goal = \"chargify/payment_failed\" },",
        "  { achieve_goal = \"chargify/payment_failed\" },\n  { add_note = { title = \"Payment failed\", body = \"{{ transaction.memo }}\" } },",
    );
    let mut world = world();
    let processor = Arc::get_mut(&mut world.processor).expect("sole owner");
    processor.rules = Arc::new(RuleSet::from_toml(&text).expect("rules"));
    process(&world, fixtures::SIGNUP_SUCCESS)
        .await
        .expect("signup");
    let goals_before = world.crm.state().goals.len();
    world.crm.fail_next_call_to(
        "create_note",
        KeapError::Transient {
            status: 503,
            reason: "Service Unavailable".into(),
            request_id: None,
        },
    );
    let err = process(&world, fixtures::PAYMENT_FAILURE)
        .await
        .expect_err("note fails");
    assert!(matches!(
        err.disposition(OffsetDateTime::now_utc()),
        Disposition::RetryAfter(_)
    ));
    assert_eq!(world.crm.state().goals.len(), goals_before + 1);
    assert_eq!(world.crm.state().notes.len(), 0);
    let Processed::Applied(applied) = process(&world, fixtures::PAYMENT_FAILURE)
        .await
        .expect("retry")
    else {
        panic!("expected applied");
    };
    assert_eq!(applied.steps.done_before, 1);
    assert_eq!(
        world.crm.state().goals.len(),
        goals_before + 1,
        "goal fired once"
    );
    assert_eq!(world.crm.state().notes.len(), 1);
}

#[tokio::test]
async fn three_concurrent_deliveries_have_one_effect() {
    let world = world();
    let envelope = fixtures::envelope(fixtures::SIGNUP_SUCCESS).expect("envelope");
    let runs = (0..3).map(|_| {
        let processor = world.processor.clone();
        let envelope = envelope.clone();
        tokio::spawn(async move { processor.process(&envelope, MINUTE).await })
    });
    let mut applied = 0;
    let mut busy = 0;
    for run in runs {
        match run.await.expect("no panic") {
            Ok(Processed::Applied(_)) => applied += 1,
            Ok(Processed::Duplicate { .. }) => {}
            Err(ProcessError::InProgressElsewhere { .. } | ProcessError::CustomerBusy { .. }) => {
                busy += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, 1);
    assert!(busy <= 2);
    assert_eq!(world.crm.state().goals.len(), 1);
    assert_eq!(world.crm.state().contacts.len(), 1);
}

fn record(id: &str, group: &str, body: &str) -> BatchRecord {
    BatchRecord {
        message_id: Some(id.into()),
        receipt_handle: Some(format!("rh-{id}")),
        group_id: Some(group.into()),
        deduplication_id: Some(format!("dd-{id}")),
        body: Some(fixtures::envelope(body).expect("envelope").to_json()),
    }
}

/// Keap's per-minute 429, asking for a 20-second wait.
fn minute_throttle() -> KeapError {
    KeapError::Throttled {
        kind: crate::keap::ThrottleKind::Minute,
        retry_after: Duration::from_secs(20),
        request_id: None,
    }
}

#[tokio::test]
async fn a_group_stops_at_its_first_failure_and_other_groups_go_on() {
    let world = world();
    let control = Arc::new(InMemoryRecordControl::new());
    world.crm.fail_next(minute_throttle());
    let records = vec![
        record("m1", "acme:cus:1", fixtures::SIGNUP_SUCCESS),
        record("m2", "acme:cus:1", fixtures::PAYMENT_FAILURE),
        record("m3", "acme:cus:2", fixtures::CUSTOMER_UPDATE),
        record("m4", "acme:cus:1", fixtures::PAYMENT_SUCCESS),
    ];
    let result = process_batch(
        world.processor.clone(),
        control.clone(),
        records,
        Instant::now() + Duration::from_secs(120),
    )
    .await;
    assert_eq!(result.failed, ["m1", "m2", "m4"]);
    assert_eq!(
        result.outcomes,
        ["failed", "held_back", "applied", "held_back"]
    );
    // The records held back wait as long as the one that failed: the group resumes together.
    let twenty = Duration::from_secs(20);
    assert_eq!(
        control.delays(),
        [
            ("rh-m1".to_owned(), twenty),
            ("rh-m2".to_owned(), twenty),
            ("rh-m4".to_owned(), twenty)
        ]
    );
    assert_eq!(result.delays.len(), 3);
    assert!(result.delay_failures.is_empty());
}

/// `WebhooksProcessed` counts each record it finished with once, by event and outcome, and a
/// record held back behind its group's failure not at all (it was not processed).
#[test]
fn each_finished_record_is_counted_by_event_and_outcome() {
    use crate::telemetry::capture::Capture;
    let capture = Capture::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A current-thread runtime runs every task on this thread, where the local recorder is.
    metrics::with_local_recorder(&capture, || {
        runtime.block_on(async {
            let world = world();
            let control = Arc::new(InMemoryRecordControl::new());
            world.crm.fail_next(minute_throttle());
            let mut garbage = record("m0", "g0", fixtures::SIGNUP_SUCCESS);
            garbage.body = Some("{not json".into());
            let deadline = || Instant::now() + MINUTE * 2;
            let first = vec![
                record("m1", "acme:cus:1", fixtures::SIGNUP_SUCCESS),
                record("m2", "acme:cus:1", fixtures::PAYMENT_FAILURE),
                record("m3", "acme:cus:2", fixtures::CUSTOMER_UPDATE),
                garbage,
            ];
            process_batch(world.processor.clone(), control.clone(), first, deadline()).await;
            let again = vec![record("m4", "acme:cus:2", fixtures::CUSTOMER_UPDATE)];
            process_batch(world.processor.clone(), control.clone(), again, deadline()).await;
            control.fail_calls("DLQ down");
            let mut unreadable = record("m5", "g5", fixtures::SIGNUP_SUCCESS);
            unreadable.body = Some("{}".into());
            process_batch(
                world.processor.clone(),
                control,
                vec![unreadable],
                deadline(),
            )
            .await;
        })
    });
    let processed = |event, outcome| {
        capture.get(
            "WebhooksProcessed",
            &[("Event", event), ("Outcome", outcome)],
        )
    };
    assert_eq!(processed("signup_success", "retry_later"), Some(1.0));
    assert_eq!(processed("payment_failure", "retry_later"), None);
    assert_eq!(processed("customer_update", "applied"), Some(1.0));
    assert_eq!(processed("customer_update", "duplicate"), Some(1.0));
    assert_eq!(processed("other", "dead_lettered"), Some(1.0));
    assert_eq!(processed("other", "failed"), Some(1.0));
    assert!(capture.get("EndToEndLag", &[]).is_some());
}

#[tokio::test]
async fn a_permanent_failure_goes_to_the_dead_letter_queue_with_its_reason() {
    let world = world();
    let control = Arc::new(InMemoryRecordControl::new());
    world.crm.fail_next(KeapError::Permanent {
        status: 400,
        reason: "Invalid email address".into(),
        request_id: None,
    });
    let mut garbage = record("m0", "g0", fixtures::SIGNUP_SUCCESS);
    garbage.body = Some("{not json".into());
    let records = vec![garbage, record("m1", "g1", fixtures::SIGNUP_SUCCESS)];
    let result = process_batch(
        world.processor.clone(),
        control.clone(),
        records,
        Instant::now() + Duration::from_secs(120),
    )
    .await;
    assert!(
        result.failed.is_empty(),
        "dead-lettered records leave the queue"
    );
    assert_eq!(result.dead_lettered, 2);
    let letters = control.dead_letters();
    assert_eq!(letters[0].code, "malformed_envelope");
    assert_eq!(letters[1].code, "keap_permanent");
    assert!(letters[1].reason.contains("Invalid email address"));
    assert_eq!(letters[1].deduplication_id, "dd-m1");
    // A dead-letter queue that refuses the message: the record stays on the main queue.
    control.fail_calls("DLQ down");
    let mut bad = record("m2", "g2", fixtures::SIGNUP_SUCCESS);
    bad.body = Some("{}".into());
    let result = process_batch(
        world.processor.clone(),
        control,
        vec![bad],
        Instant::now() + MINUTE * 2,
    )
    .await;
    assert_eq!(result.failed, ["m2"]);
}

#[tokio::test]
async fn records_without_a_message_id_are_never_reported_but_fail_the_batch() {
    let world = world();
    let control = Arc::new(InMemoryRecordControl::new());
    world.crm.fail_next(KeapError::Network {
        detail: "reset".into(),
    });
    let mut nameless = record("", "g1", fixtures::SIGNUP_SUCCESS);
    nameless.message_id = Some(String::new());
    let result = process_batch(
        world.processor.clone(),
        control,
        vec![nameless],
        Instant::now() + MINUTE * 2,
    )
    .await;
    assert!(result.failed.is_empty());
    assert_eq!(result.unreportable, 1);
}

#[tokio::test]
async fn ignored_events_make_no_keap_call_and_no_record() {
    let world = world();
    assert_eq!(
        process(&world, fixtures::STATEMENT_SETTLED)
            .await
            .expect("ok"),
        Processed::Ignored
    );
    assert_eq!(
        process(&world, fixtures::TEST).await.expect("ok"),
        Processed::Ignored
    );
    assert_eq!(world.crm.call_count(), 0);
    assert_eq!(world.idempotency.writes(), 0);
    assert_eq!(world.customers.writes(), 0);
}

/// The Maxio spec's subscription example as the signup fixture's subscription 14 of
/// customer 15, in `state` as of `updated_at` (RFC 3339, as the API sends it).
fn snapshot(state: &str, updated_at: &str) -> crate::envelope::WebhookEnvelope {
    let mut raw = fixtures::api_subscription(14, 15, state, updated_at);
    // The customer as of the same time, with the signup body's email.
    raw["customer"]["updated_at"] = updated_at.into();
    raw["customer"]["email"] = "john@example.com".into();
    // The signup body's product, so the two agree on the plan.
    raw["product"]["handle"] = "handle_6a9273b8a".into();
    raw["product"]["name"] = "Pro".into();
    let sub: crate::chargify::api::Subscription =
        serde_json::from_value(raw).expect("a subscription");
    crate::chargify::snapshot::snapshot_envelope("acme-test", &sub, OffsetDateTime::now_utc())
        .expect("snapshot")
}

fn billing_tags(world: &World, contact: ContactId) -> Vec<String> {
    world
        .crm
        .tag_names(contact)
        .into_iter()
        .filter(|t| t.starts_with("Billing: "))
        .collect()
}

#[tokio::test]
async fn a_snapshot_creates_the_contact_with_its_state_and_plan_tags_and_no_goal() {
    let world = world();
    let env = snapshot("past_due", "2016-11-14T15:24:41-05:00");
    let outcome = world
        .processor
        .process(&env, MINUTE)
        .await
        .expect("applied");
    assert_eq!(outcome.outcome(), "applied");
    let contact = contact_of(&world);
    assert_eq!(billing_tags(&world, contact), ["Billing: Past Due"]);
    assert!(world
        .crm
        .tag_names(contact)
        .contains("Plan: handle_6a9273b8a"));
    assert!(world.crm.state().goals.is_empty());
    // The same subscription snapshotted again (a resumed backfill): a duplicate, no Keap call.
    let calls = world.crm.state().calls.len();
    let again = snapshot("past_due", "2016-11-14T15:24:41-05:00");
    assert_eq!(again.webhook_id, env.webhook_id);
    let outcome = world.processor.process(&again, MINUTE).await.expect("ok");
    assert_eq!(outcome, Processed::Duplicate { same_payload: true });
    assert_eq!(world.crm.state().calls.len(), calls);
}

#[tokio::test]
async fn a_snapshot_never_takes_a_value_back_and_a_newer_one_wins() {
    let world = world();
    // Signup (active, 2012-09-09 11:38:33 -0400), then canceled a day later.
    process(&world, fixtures::SIGNUP_SUCCESS)
        .await
        .expect("signup");
    let canceled = fixtures::derive(
        fixtures::SIGNUP_SUCCESS,
        "6",
        "subscription_state_change",
        &[
            ("payload[subscription][state]", "canceled"),
            (
                "payload[subscription][updated_at]",
                "2012-09-10%2010%3A00%3A00%20-0400",
            ),
        ],
    );
    process(&world, &canceled).await.expect("canceled");
    let contact = contact_of(&world);
    assert_eq!(billing_tags(&world, contact), ["Billing: Canceled"]);

    // A snapshot older than everything applied is stale: no call at all.
    let calls = world.crm.state().calls.len();
    let ancient = snapshot("active", "2012-09-08T10:00:00Z");
    let outcome = world.processor.process(&ancient, MINUTE).await.expect("ok");
    assert_eq!(outcome.outcome(), "stale");
    assert_eq!(world.crm.state().calls.len(), calls, "no Keap call");

    // One taken between signup and cancellation may add what only the signup wrote, but
    // never takes the cancellation's state back.
    let between = snapshot("active", "2012-09-09T16:38:33Z");
    world.processor.process(&between, MINUTE).await.expect("ok");
    assert_eq!(billing_tags(&world, contact), ["Billing: Canceled"]);

    // One newer than the cancellation applies, with no goal.
    let goals = world.crm.state().goals.len();
    let newer = snapshot("active", "2012-09-11T10:00:00-04:00");
    let outcome = world
        .processor
        .process(&newer, MINUTE)
        .await
        .expect("processed");
    assert_eq!(outcome.outcome(), "applied");
    assert_eq!(billing_tags(&world, contact), ["Billing: Active"]);
    assert_eq!(world.crm.state().goals.len(), goals);
    // So an older webhook that arrives late (a retry after an outage) is stale in turn.
    let replayed = with_id(&canceled, "7");
    let outcome = process(&world, &replayed).await.expect("processed");
    assert_eq!(outcome.outcome(), "stale");
    assert_eq!(billing_tags(&world, contact), ["Billing: Active"]);
}

async fn record_of(world: &World, key: &IdempotencyKey) -> crate::idempotency::IdempotencyRecord {
    world
        .idempotency
        .get(key)
        .await
        .expect("get")
        .expect("record")
}

/// The record keeps the envelope that began it, so an operator can replay it; a forced
/// replay (`reopen`) applies the plan again without firing the goal a second time, and a
/// plain redelivery of a completed record still changes nothing.
#[tokio::test]
async fn the_record_keeps_the_envelope_and_a_forced_replay_repeats_no_goal() {
    let world = world();
    let envelope = fixtures::envelope(fixtures::SIGNUP_SUCCESS).expect("envelope");
    world
        .processor
        .process(&envelope, MINUTE)
        .await
        .expect("applies");
    let key = IdempotencyKey::new(&envelope.site, &envelope.webhook_id);
    let record = record_of(&world, &key).await;
    let kept = record.received.expect("the envelope is kept");
    assert_eq!(kept.event, "signup_success");
    assert_eq!(kept.received_at, envelope.received_at);
    let replayed = WebhookEnvelope::from_json(&kept.envelope).expect("a readable envelope");
    assert_eq!(replayed, envelope);

    let calls = world.crm.call_count();
    assert_eq!(
        world
            .processor
            .process(&replayed, MINUTE)
            .await
            .expect("dup"),
        Processed::Duplicate { same_payload: true },
        "a replay of a completed record is a duplicate unless reopened"
    );
    assert_eq!(world.crm.call_count(), calls);

    assert!(world
        .idempotency
        .reopen(&key, "forced")
        .await
        .expect("reopen"));
    let outcome = world
        .processor
        .process(&replayed, MINUTE)
        .await
        .expect("applies again");
    let Processed::Applied(applied) = outcome else {
        panic!("expected applied, got {outcome:?}");
    };
    assert_eq!(applied.steps.goals, 0, "the goal is a step already done");
    assert_eq!(applied.steps.done_before, 1);
    assert_eq!(
        world.crm.call_count(),
        calls + 1,
        "the contact is read back, and Keap holds every value: nothing is sent again"
    );
    assert_eq!(world.crm.state().goals.len(), 1);
    let record = record_of(&world, &key).await;
    assert_eq!(record.status, crate::idempotency::RecordStatus::Completed);
    assert_eq!(record.attempts, 2);
}

/// A replay after its record expired is a duplicate through the seen marker; one older than
/// `max_event_age` is acknowledged and not applied.
#[tokio::test]
async fn a_replay_after_the_record_expired_is_a_duplicate_and_one_too_old_is_not_applied() {
    let world = world_with(Limits {
        max_event_age: Some(Duration::from_secs(365 * 24 * 3600)),
        ..Limits::default()
    });
    // A signup from this year: applied, marked seen.
    let now = OffsetDateTime::now_utc() - time::Duration::days(40);
    let stamp = |at: OffsetDateTime| {
        let est = at.to_offset(time::macros::offset!(-5));
        format!(
            "{:04}-{:02}-{:02}%2010%3A00%3A00%20-0500",
            est.year(),
            u8::from(est.month()),
            est.day()
        )
    };
    let recent = fixtures::derive(
        fixtures::SIGNUP_SUCCESS,
        "7001",
        "signup_success",
        &[("payload[subscription][updated_at]", &stamp(now))],
    );
    assert_eq!(
        process(&world, &recent).await.expect("applies").outcome(),
        "applied"
    );
    // 35 days on, the record expires; Chargify replays the webhook.
    world.idempotency.expire_records();
    let calls = world.crm.call_count();
    assert_eq!(
        process(&world, &recent).await.expect("duplicate"),
        Processed::Duplicate { same_payload: true }
    );
    assert_eq!(world.crm.call_count(), calls, "no Keap call");
    assert_eq!(
        world.crm.state().goals.len(),
        1,
        "the signup goal fired once"
    );

    // The reference body is from 2012: older than a year, whatever its id.
    let outcome = process(&world, &with_id(fixtures::SIGNUP_SUCCESS, "7002"))
        .await
        .expect("acknowledged");
    assert_eq!(outcome, Processed::TooOld);
    assert_eq!(outcome.outcome(), "too_old");
    assert_eq!(world.crm.call_count(), calls, "not applied");
    // A snapshot (made from Chargify's current state) is never too old.
    let old = snapshot("active", "2016-11-14T15:24:41-05:00");
    assert_eq!(
        world
            .processor
            .process(&old, MINUTE)
            .await
            .expect("applies")
            .outcome(),
        "applied"
    );
}

/// A redelivery queued right behind the first copy, in the same batch: a duplicate, not a
/// failure waiting for its own lease.
#[tokio::test]
async fn the_same_webhook_twice_in_one_batch_is_applied_once_and_acknowledged_twice() {
    let world = world();
    let control = Arc::new(InMemoryRecordControl::new());
    let records = vec![
        record("m1", "acme:cus:15", fixtures::SIGNUP_SUCCESS),
        record("m2", "acme:cus:15", fixtures::SIGNUP_SUCCESS),
    ];
    let result = process_batch(
        world.processor.clone(),
        control.clone(),
        records,
        Instant::now() + MINUTE * 2,
    )
    .await;
    assert_eq!(result.outcomes, ["applied", "duplicate"]);
    assert!(result.failed.is_empty());
    assert!(control.delays().is_empty());
    assert_eq!(world.crm.state().goals.len(), 1);
}

/// A dead-lettered webhook redriven after later webhooks of its customer were applied
/// changes nothing they superseded: no value goes back, no goal fires late.
#[tokio::test]
async fn a_redriven_dead_letter_changes_nothing_a_newer_webhook_superseded() {
    let world = world();
    let at = |day: u8| format!("2026-03-{day:02}%2010%3A00%3A00%20-0500");
    let event = |id: &str, event: &str, state: &str, day: u8| {
        fixtures::derive(
            fixtures::SIGNUP_SUCCESS,
            id,
            event,
            &[
                ("payload[subscription][state]", state),
                ("payload[subscription][updated_at]", &at(day)),
                ("payload[transaction][created_at]", &at(day)),
            ],
        )
    };
    process(&world, &event("8001", "signup_success", "active", 1))
        .await
        .expect("signup");
    // The payment failure is refused by Keap (a 400 on its tag): dead-lettered.
    world.crm.fail_next_call_to(
        "apply_tags",
        KeapError::Permanent {
            status: 400,
            reason: "refused".into(),
            request_id: None,
        },
    );
    let failure = event("8002", "payment_failure", "past_due", 5);
    let err = process(&world, &failure).await.expect_err("refused");
    assert!(matches!(
        err.disposition(OffsetDateTime::now_utc()),
        Disposition::DeadLetter { .. }
    ));
    // The customer pays; the queue goes on.
    process(&world, &event("8003", "payment_success", "active", 8))
        .await
        .expect("payment");
    let contact = contact_of(&world);
    let before = world.crm.tag_names(contact);
    let goals = world.crm.state().goals.len();
    // Days later an operator redrives the dead letter.
    let outcome = process(&world, &failure).await.expect("redriven");
    assert_eq!(outcome.outcome(), "stale");
    assert_eq!(world.crm.tag_names(contact), before, "no value goes back");
    assert!(!before.contains("Billing: Payment Failed"));
    assert_eq!(
        world.crm.state().goals.len(),
        goals,
        "no dunning goal for a customer who paid"
    );
}

/// A renewal that changes nothing (renewal_success then payment_success, no failure before)
/// costs no Keap call: the mirror knows the contact lacks "Billing: Payment Failed".
#[tokio::test]
async fn a_normal_renewal_costs_no_keap_call() {
    let world = world();
    let at = |day: u8| format!("2026-04-{day:02}%2010%3A00%3A00%20-0500");
    let event = |id: &str, event: &str, day: u8| {
        fixtures::derive(
            fixtures::SIGNUP_SUCCESS,
            id,
            event,
            &[
                ("payload[subscription][state]", "active"),
                ("payload[subscription][updated_at]", &at(day)),
            ],
        )
    };
    process(&world, &event("9001", "signup_success", 1))
        .await
        .expect("signup");
    let calls = world.crm.call_count();
    for (id, name) in [("9002", "renewal_success"), ("9003", "payment_success")] {
        let outcome = process(&world, &event(id, name, 28))
            .await
            .expect("renewal");
        assert_eq!(outcome.outcome(), "applied");
    }
    let made: Vec<String> = world.crm.state().calls[calls..]
        .iter()
        .map(|c| format!("{} {}", c.operation, c.detail))
        .collect();
    assert!(made.is_empty(), "0 Keap calls, made {made:?}");
}

#[tokio::test]
async fn the_contacts_tag_list_is_kept_so_a_renewal_after_the_signup_costs_no_call() {
    use crate::fixtures::history::{Change, Rng, Subscriber, SITE};
    let world = world();
    let (mut rng, mut next_id) = (Rng::new(1), 1);
    let at = time::macros::datetime!(2026-06-01 09:00:00 UTC);
    let mut subscriber = Subscriber::new(5, at, false, 0, None);
    for sent in subscriber.send(Change::Signup, at, &mut rng, &mut next_id) {
        process(&world, &sent.body).await.expect("applied");
    }
    let key = crate::identity::CustomerKey::new(SITE, "5");
    let state = world.customers.all().remove(&key).expect("the customer");
    assert!(
        state.tags.is_some(),
        "the tags Keap listed, with our own tag calls since, are saved"
    );
    let calls = world.crm.call_count();
    let renewal_at = at + time::Duration::days(30);
    for sent in subscriber.send(Change::Renewal, renewal_at, &mut rng, &mut next_id) {
        process(&world, &sent.body).await.expect("applied");
    }
    assert_eq!(
        world.crm.call_count(),
        calls,
        "a renewal changes nothing Keap holds: not even a read of the contact"
    );
}

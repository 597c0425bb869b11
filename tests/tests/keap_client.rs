//! The Keap client against the stand-in: every call the spec accepts, state as Keap would
//! keep it, and each kind of failure handled as `docs/processor.md` describes.

use integration_tests::keap_standin::{Fault, KeapStandIn};
use shared::keap::{
    deadline, ContactFields, Credential, Crm, KeapClient, KeapClientConfig, KeapError, ThrottleKind,
};
use std::time::{Duration, Instant};

fn client(keap: &KeapStandIn) -> KeapClient {
    let mut config = KeapClientConfig::new(keap.base_url(), Credential::ApiKey("sak-test".into()));
    config.max_wait = Duration::from_secs(3);
    KeapClient::new(config).expect("client")
}

fn jane() -> ContactFields {
    ContactFields {
        given_name: Some("Jane".into()),
        family_name: Some("Doe".into()),
        phone: Some("555-555-1234".into()),
        address: Some(shared::keap::Address {
            line1: Some("123 Main St".into()),
            locality: Some("Pleasantville".into()),
            region: Some("NC".into()),
            postal_code: Some("12345".into()),
            country_code: Some("USA".into()),
            ..Default::default()
        }),
        custom_fields: vec![(7, serde_json::json!("pro-monthly"))],
        opt_in_reason: Some("Customer purchased subscription via Chargify".into()),
        ..ContactFields::default()
    }
}

#[tokio::test]
async fn every_call_is_one_the_spec_accepts_and_keeps_state() {
    let keap = KeapStandIn::start().await;
    keap.state().custom_fields.push((7, "Plan".into()));
    keap.state()
        .campaign_goals
        .push(("chargify".into(), "signup".into()));
    let crm = client(&keap);

    let contact = crm
        .upsert_contact_by_email("jane@example.com", &jane())
        .await
        .expect("upsert");
    let same = crm
        .upsert_contact_by_email("jane@example.com", &ContactFields::default())
        .await
        .expect("upsert again");
    assert_eq!(same.id, contact.id);
    assert_eq!(
        crm.get_contact(contact.id)
            .await
            .expect("get")
            .email
            .as_deref(),
        Some("jane@example.com")
    );
    let found = crm
        .find_contacts_by_email("jane@example.com")
        .await
        .expect("find");
    assert_eq!(found.iter().map(|c| c.id).collect::<Vec<_>>(), [contact.id]);
    let patch = ContactFields {
        family_name: Some("Smith".into()),
        ..ContactFields::default()
    };
    crm.update_contact(contact.id, &patch).await.expect("patch");

    assert!(crm
        .find_tags_by_name("Billing: Active")
        .await
        .expect("tags")
        .is_empty());
    let active = crm.create_tag("Billing: Active").await.expect("create tag");
    let found = crm
        .find_tags_by_name("Billing: Active")
        .await
        .expect("tags");
    assert_eq!(found, std::slice::from_ref(&active));
    crm.apply_tags(contact.id, &[active.id])
        .await
        .expect("apply");
    crm.apply_tags(contact.id, &[active.id])
        .await
        .expect("a duplicate apply is success");
    crm.apply_tag_to_contacts(active.id, &[contact.id])
        .await
        .expect("bulk apply");
    let hits = crm
        .achieve_goal(contact.id, "chargify", "signup")
        .await
        .expect("goal");
    assert_eq!(hits.len(), 1);
    assert!(hits[0].success);
    crm.create_note(contact.id, "Chargify", "Signed up for Pro")
        .await
        .expect("note");
    let fields = crm.custom_fields().await.expect("model");
    assert_eq!(fields[0].label, "Plan");
    crm.remove_tags(contact.id, &[active.id])
        .await
        .expect("remove");
    // One tag on, then off, many contacts at once (the backfill's bulk calls).
    let other = crm
        .upsert_contact_by_email("other@example.com", &ContactFields::default())
        .await
        .expect("upsert other");
    let trial = crm.create_tag("Billing: Trialing").await.expect("tag");
    crm.apply_tag_to_contacts(trial.id, &[contact.id, other.id])
        .await
        .expect("bulk apply");
    assert!(keap.state().contact_tags[&other.id].contains(&trial.id));
    crm.remove_tag_from_contacts(trial.id, &[contact.id, other.id])
        .await
        .expect("bulk remove");

    assert!(keap.violations().is_empty(), "{:?}", keap.violations());
    let state = keap.state();
    let stored = &state.contacts[&contact.id];
    assert_eq!(stored["family_name"], "Smith");
    assert_eq!(stored["given_name"], "Jane");
    assert_eq!(stored["custom_fields"][0]["content"], "pro-monthly");
    assert!(state.contact_tags[&contact.id].is_empty());
    assert!(state.contact_tags[&other.id].is_empty());
    assert_eq!(state.goals.len(), 1);
    assert_eq!(state.notes.len(), 1);
    assert!(state
        .calls
        .iter()
        .all(|c| c.api_key.as_deref() == Some("sak-test")));
}

#[tokio::test]
async fn per_tag_failures_inside_a_200_are_errors() {
    let keap = KeapStandIn::start().await;
    let crm = client(&keap);
    let contact = crm
        .upsert_contact_by_email("a@example.com", &ContactFields::default())
        .await
        .expect("upsert");
    match crm.apply_tags(contact.id, &[424242]).await {
        Err(KeapError::ItemsRefused { failures }) => {
            assert_eq!(failures, [(424242, "TAG_ID_NOT_FOUND".to_owned())])
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn transient_failures_are_retried_and_permanent_ones_are_not() {
    let keap = KeapStandIn::start().await;
    let crm = client(&keap);
    keap.inject(Fault::SpikeArrest);
    keap.inject(Fault::Status(503));
    crm.custom_fields()
        .await
        .expect("succeeds after a spike arrest and a 503");
    assert_eq!(keap.state().calls.len(), 3);

    keap.inject(Fault::Status(400));
    let err = crm.custom_fields().await.expect_err("400 is permanent");
    assert!(
        matches!(err, KeapError::Permanent { status: 400, .. }),
        "{err}"
    );
    assert_eq!(
        keap.state().calls.len(),
        4,
        "no retry of a permanent failure"
    );

    keap.inject(Fault::DailyQuota);
    let err = crm.custom_fields().await.expect_err("daily quota");
    assert!(
        matches!(
            err,
            KeapError::DailyQuotaExhausted {
                resets_at: Some(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        keap.state().calls.len(),
        5,
        "the daily quota is handed back, not retried"
    );

    for _ in 0..5 {
        keap.inject(Fault::Status(500));
    }
    let err = crm.custom_fields().await.expect_err("retries are bounded");
    assert!(err.is_transient());
    assert_eq!(keap.state().calls.len(), 9, "1 attempt + 3 retries");
}

#[tokio::test]
async fn a_falling_budget_slows_the_client_before_any_429() {
    let keap = KeapStandIn::start().await;
    // Each answer reports one fewer: 752, 751, 750 (half), 749, ...
    keap.state().minute_budget = (1500, 753);
    let crm = client(&keap);
    for _ in 0..8 {
        crm.custom_fields().await.expect("call");
    }
    // Calls 1-3 saw more than half left; calls 4-8 saw half or less and waited first.
    assert_eq!(crm.paced_waits(), 5);
    assert_eq!(keap.state().throttled, 0);
}

#[tokio::test]
async fn the_directory_lists_tags_once_never_caches_a_missing_one_and_keeps_duplicates() {
    use shared::identity::InMemoryNameLocks;
    use shared::keap::{Directory, IfMissing, LookupError};
    use std::sync::Arc;
    let keap = KeapStandIn::start().await;
    keap.state().custom_fields.push((7, "Plan".into()));
    let crm = client(&keap);
    let directory = Directory::new(Arc::new(InMemoryNameLocks::new()));

    let err = directory
        .ensure_tag(&crm, "Billing: Active", IfMissing::Fail)
        .await
        .expect_err("missing");
    assert!(matches!(err, LookupError::MissingTag { .. }), "{err}");
    assert!(
        keap.state().tags.is_empty(),
        "nothing created without permission"
    );
    let ids = directory
        .ensure_tag(&crm, "Billing: Active", IfMissing::Create)
        .await
        .expect("created");
    let calls = keap.state().calls.len();
    assert_eq!(
        directory
            .ensure_tag(&crm, "Billing: Active", IfMissing::Fail)
            .await
            .expect("known"),
        ids
    );
    assert_eq!(
        keap.state().calls.len(),
        calls,
        "a known name makes no call"
    );
    for _ in 0..2 {
        assert!(directory
            .tag_ids(&crm, "Billing: Unpaid")
            .await
            .expect("none")
            .is_empty());
    }
    assert_eq!(
        keap.state().calls.len(),
        calls + 2,
        "a missing name is looked up every time: another instance may create it"
    );

    // Two tags of one name (a race of older versions, or a person): both kept, lowest first.
    let first = crm.create_tag("Plan: pro").await.expect("tag").id;
    let second = crm
        .create_tag("Plan: pro")
        .await
        .expect("same-named tag")
        .id;
    assert_eq!(
        directory.tag_ids(&crm, "Plan: pro").await.expect("found"),
        [first.min(second), first.max(second)]
    );

    assert_eq!(
        directory
            .custom_field_id(&crm, "Plan")
            .await
            .expect("field"),
        7
    );
    let calls = keap.state().calls.len();
    let err = directory
        .custom_field_id(&crm, "MRR")
        .await
        .expect_err("no such field");
    assert!(matches!(err, LookupError::MissingCustomField { .. }));
    assert_eq!(keap.state().calls.len(), calls, "the model is read once");

    // A cold directory of an account with 1,500 tags reads them in two pages.
    for i in 0..1_500 {
        keap.state().tags.insert(
            100_000 + i,
            serde_json::json!({"id": 100_000 + i, "name": format!("Tag {i}")}),
        );
    }
    let cold = Directory::new(Arc::new(InMemoryNameLocks::new()));
    let calls = keap.state().calls.len();
    assert_eq!(
        cold.tag_ids(&crm, "Tag 1499").await.expect("listed"),
        [101_499]
    );
    assert_eq!(keap.state().calls.len(), calls + 2, "two pages of 1,000");
    assert!(keap.violations().is_empty());
}

#[tokio::test]
async fn a_company_is_created_once_and_shared_by_its_contacts() {
    let keap = KeapStandIn::start().await;
    let crm = client(&keap);
    let acme = |email: &str| ContactFields {
        email: Some(email.into()),
        company: Some("Acme, Inc.".into()),
        ..ContactFields::default()
    };
    // A longer name the stand-in's loose `company_name` filter also returns.
    crm.create_company("Acme, Inc. Europe")
        .await
        .expect("other company");

    let jane = crm
        .upsert_contact_by_email("jane@example.com", &acme("jane@example.com"))
        .await
        .expect("upsert with a new company");
    let company = jane.company_id.expect("linked to a company");
    let john = crm
        .upsert_contact_by_email("john@example.com", &acme("john@example.com"))
        .await
        .expect("upsert with the same company");
    assert_eq!(john.company_id, Some(company));
    let creates = |keap: &KeapStandIn| {
        keap.state()
            .calls
            .iter()
            .filter(|c| c.method == "POST" && c.path == "/v1/companies")
            .count()
    };
    assert_eq!(creates(&keap), 2, "Acme Europe by hand, Acme, Inc. once");
    assert_eq!(
        keap.state().companies[&company]["company_name"],
        "Acme, Inc."
    );

    // A cold client finds the company instead of creating another, and a patch links it too.
    let cold = client(&keap);
    let moved = cold
        .update_contact(
            jane.id,
            &ContactFields {
                company: Some(" Acme, Inc. ".into()),
                ..ContactFields::default()
            },
        )
        .await
        .expect("patch");
    assert_eq!(moved.company_id, Some(company));
    assert_eq!(creates(&keap), 2);

    // Keap allows same-named companies: the oldest (lowest id) is the one contacts join.
    let first = cold.create_company("Globex").await.expect("globex");
    cold.create_company("Globex").await.expect("second globex");
    let found = cold.find_companies_by_name("Globex").await.expect("find");
    assert_eq!(found.len(), 2);
    let linked = cold
        .upsert_contact_by_email(
            "hank@example.com",
            &ContactFields {
                company: Some("Globex".into()),
                ..ContactFields::default()
            },
        )
        .await
        .expect("upsert");
    assert_eq!(linked.company_id, Some(first.id));
    assert!(keap.violations().is_empty(), "{:?}", keap.violations());
}

#[tokio::test]
async fn chargify_countries_reach_keap_as_alpha3_and_unknown_ones_take_the_region_along() {
    let keap = KeapStandIn::start().await;
    let crm = client(&keap);
    let billing = |country: &str| ContactFields {
        address: Some(shared::keap::Address {
            locality: Some("Pleasantville".into()),
            region: Some("NC".into()),
            country_code: Some(country.into()),
            ..Default::default()
        }),
        ..ContactFields::default()
    };
    let us = crm
        .upsert_contact_by_email("us@example.com", &billing("US"))
        .await
        .expect("US");
    let nowhere = crm
        .upsert_contact_by_email("zz@example.com", &billing("ZZ"))
        .await
        .expect("unknown country");
    let state = keap.state();
    let address = |id: i64| state.contacts[&id]["addresses"][0].clone();
    assert_eq!(address(us.id)["country_code"], "USA");
    assert_eq!(address(us.id)["region"], "NC");
    assert_eq!(
        address(nowhere.id),
        serde_json::json!({"field": "BILLING", "locality": "Pleasantville"})
    );
    assert!(state.calls.iter().all(|c| c.outcome.is_ok()));
}

#[tokio::test]
async fn a_storm_of_spike_arrests_ends_at_the_retry_count() {
    let keap = KeapStandIn::start().await;
    let crm = client(&keap);
    for _ in 0..20 {
        keap.inject(Fault::SpikeArrest);
    }
    let started = Instant::now();
    let err = crm.custom_fields().await.expect_err("still throttled");
    let elapsed = started.elapsed();
    assert!(
        matches!(
            err,
            KeapError::Throttled {
                kind: ThrottleKind::SpikeArrest,
                ..
            }
        ),
        "{err}"
    );
    let attempts = keap.state().calls.len();
    println!(
        "429 storm of 20 spike arrests: {attempts} attempts, {:.1} s, then the error",
        elapsed.as_secs_f64()
    );
    assert_eq!(attempts, 4, "1 attempt + max_retries (3), not 20");
    assert_eq!(crm.throttled_answers(), 4);
}

#[tokio::test]
async fn inside_a_deadline_no_wait_outlasts_the_callers_time() {
    let keap = KeapStandIn::start().await;
    let crm = client(&keap);

    // A per-minute 429 goes back to the caller at once (it hides its record instead).
    keap.inject(Fault::MinuteThrottle);
    let scope = Duration::from_secs(20);
    let started = Instant::now();
    let err = deadline::scope(started + scope, crm.custom_fields())
        .await
        .expect_err("throttled");
    let elapsed = started.elapsed();
    println!(
        "per-minute 429 in a {} s scope: returned after {} ms",
        scope.as_secs(),
        elapsed.as_millis()
    );
    assert!(elapsed < scope, "{elapsed:?}");
    assert!(
        matches!(
            &err,
            KeapError::Throttled {
                kind: ThrottleKind::Minute,
                retry_after,
                ..
            } if *retry_after > Duration::ZERO
        ),
        "{err}"
    );
    assert_eq!(keap.state().calls.len(), 1, "not retried in-process");

    // Spike arrests with 2 s left after the reserve: at most one 1.5–2 s wait fits.
    for _ in 0..20 {
        keap.inject(Fault::SpikeArrest);
    }
    let short = deadline::RESERVE + Duration::from_secs(2);
    let started = Instant::now();
    let err = deadline::scope(started + short, crm.custom_fields())
        .await
        .expect_err("throttled");
    let elapsed = started.elapsed();
    assert!(elapsed < short, "{elapsed:?}");
    assert!(err.is_transient(), "{err}");
    assert!(keap.state().calls.len() <= 3, "one or two attempts");
    keap.state().faults.clear();

    // A slow answer is cut at the time left, not at the 20 s request timeout.
    keap.inject(Fault::Slow(Duration::from_secs(30)));
    let started = Instant::now();
    let err = deadline::scope(started + short, crm.custom_fields())
        .await
        .expect_err("timed out");
    let elapsed = started.elapsed();
    println!(
        "slow answer in a {} s scope: cut after {} ms",
        short.as_secs(),
        elapsed.as_millis()
    );
    assert!(elapsed < short, "{elapsed:?}");
    assert!(matches!(err, KeapError::Network { .. }), "{err}");
}

#[tokio::test]
async fn every_5xx_is_retried() {
    let keap = KeapStandIn::start().await;
    let crm = client(&keap);
    keap.inject(Fault::Status(501));
    keap.inject(Fault::Status(599));
    crm.custom_fields()
        .await
        .expect("succeeds after a 501 and a 599");
    assert_eq!(keap.state().calls.len(), 3);
    for _ in 0..4 {
        keap.inject(Fault::Status(501));
    }
    let err = crm.custom_fields().await.expect_err("still 501");
    assert!(
        matches!(err, KeapError::Transient { status: 501, .. }),
        "{err}"
    );
    assert_eq!(keap.state().calls.len(), 7, "1 attempt + 3 retries");
}

#[tokio::test]
async fn every_tag_and_company_is_listed_page_by_page() {
    let keap = KeapStandIn::start().await;
    {
        let mut state = keap.state();
        for id in 1..=2345 {
            state.tags.insert(
                id,
                serde_json::json!({"id": id, "name": format!("Tag {id}"), "description": null}),
            );
        }
        for id in 5001..=6000 {
            state.companies.insert(
                id,
                serde_json::json!({"id": id, "company_name": format!("Company {id}")}),
            );
        }
    }
    let crm = client(&keap);
    let tags = crm.list_tags().await.expect("tags");
    assert_eq!(tags.len(), 2345);
    assert_eq!(tags[2344].name, "Tag 2345");
    let ids: std::collections::BTreeSet<i64> = tags.iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), 2345, "no tag twice");
    let companies = crm.list_companies().await.expect("companies");
    assert_eq!(companies.len(), 1000);
    let state = keap.state();
    let queries = |path: &str| -> Vec<String> {
        state
            .calls
            .iter()
            .filter(|c| c.path == path)
            .filter_map(|c| c.query.clone())
            .collect()
    };
    assert_eq!(
        queries("/v1/tags"),
        [
            "limit=1000&offset=0",
            "limit=1000&offset=1000",
            "limit=1000&offset=2000"
        ]
    );
    // Exactly one full page: a second, empty page tells the list has ended.
    assert_eq!(
        queries("/v1/companies"),
        ["limit=1000&offset=0", "limit=1000&offset=1000"]
    );
    assert!(state.calls.iter().all(|c| c.outcome.is_ok()));
}

#[tokio::test]
async fn a_contact_is_read_back_with_its_custom_fields() {
    let keap = KeapStandIn::start().await;
    keap.state().custom_fields.push((7, "Plan".into()));
    let crm = client(&keap);
    let jane = crm
        .upsert_contact_by_email("jane@example.com", &jane())
        .await
        .expect("upsert");
    let upserted = jane.fields.expect("an upsert answers the contact");
    assert_eq!(upserted.given_name.as_deref(), Some("Jane"));

    let read = crm.get_contact(jane.id).await.expect("get");
    let fields = read.fields.expect("fields");
    assert_eq!(
        fields.custom_fields,
        [(7, serde_json::json!("pro-monthly"))]
    );
    assert_eq!(fields.email.as_deref(), Some("jane@example.com"));
    assert_eq!(fields.family_name.as_deref(), Some("Doe"));
    assert_eq!(fields.phone.as_deref(), Some("555-555-1234"));
    let address = fields.address.expect("billing address");
    assert_eq!(address.region.as_deref(), Some("NC"));
    assert_eq!(address.country_code.as_deref(), Some("USA"));

    // A search does not ask for custom fields, and Keap (the stand-in) leaves them out.
    let found = crm
        .find_contacts_by_email("jane@example.com")
        .await
        .expect("find");
    let found = found[0].fields.clone().expect("fields");
    assert!(found.custom_fields.is_empty());
    assert_eq!(found.given_name.as_deref(), Some("Jane"));
    let state = keap.state();
    let get = state
        .calls
        .iter()
        .find(|c| c.method == "GET" && c.path == format!("/v1/contacts/{}", jane.id))
        .expect("the get");
    assert_eq!(
        get.query.as_deref(),
        Some("optional_properties=custom_fields")
    );
    assert!(state.calls.iter().all(|c| c.outcome.is_ok()));
}

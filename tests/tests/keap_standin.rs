//! The Keap stand-in itself: it must keep state like Keap, refuse what the spec refuses, and
//! fail the way Keap fails, or the client tests built on it prove nothing.

use integration_tests::http_request;
use integration_tests::keap_standin::{Fault, KeapStandIn};
use shared::keap::{KeapError, ThrottleKind};

const KEY: (&str, &str) = ("X-Keap-API-Key", "test-service-account-key");
const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn call(keap: &KeapStandIn, method: &str, path: &str, body: &str) -> (u16, String) {
    let full = format!("/crm/rest{path}");
    http_request(
        keap.addr.port(),
        method,
        &full,
        &[KEY, JSON],
        body.as_bytes(),
    )
    .await
    .expect("the stand-in answers")
}

fn body_of(response: &str) -> serde_json::Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn keeps_contacts_tags_goals_and_notes() {
    let keap = KeapStandIn::start().await;
    let upsert = r#"{"duplicate_option":"Email","email_addresses":[{"email":"jane@example.com","field":"EMAIL1"}],"given_name":"Jane"}"#;
    let (status, text) = call(&keap, "PUT", "/v1/contacts", upsert).await;
    assert_eq!(status, 200, "{text}");
    let id = body_of(&text)["id"].as_i64().expect("contact id");
    let (_, again) = call(&keap, "PUT", "/v1/contacts", upsert).await;
    assert_eq!(
        body_of(&again)["id"].as_i64(),
        Some(id),
        "upsert by email finds the same contact"
    );

    let (status, tag) = call(&keap, "POST", "/v1/tags", r#"{"name":"Billing: Active"}"#).await;
    assert_eq!(status, 200, "{tag}");
    let tag_id = body_of(&tag)["id"].as_i64().expect("tag id");
    let apply = format!(r#"{{"tagIds":[{tag_id},999999]}}"#);
    let (_, results) = call(&keap, "POST", &format!("/v1/contacts/{id}/tags"), &apply).await;
    let results = body_of(&results);
    assert_eq!(results[tag_id.to_string()], "SUCCESS");
    assert_eq!(results["999999"], "TAG_ID_NOT_FOUND");
    let (_, results) = call(&keap, "POST", &format!("/v1/contacts/{id}/tags"), &apply).await;
    assert_eq!(body_of(&results)[tag_id.to_string()], "DUPLICATE");

    keap.state()
        .campaign_goals
        .push(("chargify".into(), "signup".into()));
    let goal = format!(r#"{{"contact_id":{id}}}"#);
    let (status, reached) = call(&keap, "POST", "/v1/campaigns/goals/chargify/signup", &goal).await;
    assert_eq!(status, 201);
    assert_eq!(body_of(&reached).as_array().map(Vec::len), Some(1));
    let (status, _) = call(
        &keap,
        "POST",
        "/v1/notes",
        &format!(r#"{{"contact_id":{id},"title":"Signup"}}"#),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        &keap,
        "DELETE",
        &format!("/v1/contacts/{id}/tags?ids={tag_id}"),
        "",
    )
    .await;
    assert_eq!(status, 204);

    let state = keap.state();
    assert_eq!(state.contacts.len(), 1);
    assert!(state.contact_tags[&id].is_empty());
    assert_eq!(
        state.goals,
        [("chargify".to_owned(), "signup".to_owned(), id)]
    );
    assert_eq!(state.notes.len(), 1);
    assert!(state.calls.iter().all(|c| c.outcome.is_ok()));
}

#[tokio::test]
async fn refuses_what_the_spec_refuses() {
    let keap = KeapStandIn::start().await;
    let (status, text) = call(
        &keap,
        "PUT",
        "/v1/contacts",
        r#"{"duplicate_option":"Email","givenname":"Jane"}"#,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let (status, _) = call(&keap, "POST", "/v1/contacts/12/tags", r#"{"tagIds":["1"]}"#).await;
    assert_eq!(status, 400);
    let (status, _) = http_request(
        keap.addr.port(),
        "GET",
        "/crm/rest/v1/contacts/model",
        &[],
        b"",
    )
    .await
    .expect("answer");
    assert_eq!(status, 401, "no credentials");
    assert_eq!(keap.violations().len(), 2);
}

#[tokio::test]
async fn fails_like_keap_and_the_classifier_reads_it() {
    let keap = KeapStandIn::start().await;
    let now = time::OffsetDateTime::now_utc();
    let classify = |status: u16, text: &str| {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut headers = http::HeaderMap::new();
        for line in head.lines().skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.trim().as_bytes()),
                    http::HeaderValue::from_str(value.trim()),
                ) {
                    headers.insert(n, v);
                }
            }
        }
        KeapError::from_response(status, &headers, body.as_bytes(), now)
    };
    keap.inject(Fault::SpikeArrest);
    let (status, text) = call(&keap, "GET", "/v1/contacts/model", "").await;
    assert!(matches!(
        classify(status, &text),
        KeapError::Throttled {
            kind: ThrottleKind::SpikeArrest,
            ..
        }
    ));
    keap.inject(Fault::MinuteThrottle);
    let (status, text) = call(&keap, "GET", "/v1/contacts/model", "").await;
    assert!(matches!(
        classify(status, &text),
        KeapError::Throttled {
            kind: ThrottleKind::Minute,
            ..
        }
    ));
    keap.inject(Fault::DailyQuota);
    let (status, text) = call(&keap, "GET", "/v1/contacts/model", "").await;
    assert!(matches!(
        classify(status, &text),
        KeapError::DailyQuotaExhausted {
            resets_at: Some(_),
            ..
        }
    ));
    keap.inject(Fault::Unauthorized);
    let (status, text) = call(&keap, "GET", "/v1/contacts/model", "").await;
    assert!(matches!(
        classify(status, &text),
        KeapError::Unauthorized { .. }
    ));
    keap.inject(Fault::Status(503));
    let (status, text) = call(&keap, "GET", "/v1/contacts/model", "").await;
    assert!(classify(status, &text).is_transient());
    keap.inject(Fault::Slow(std::time::Duration::from_millis(300)));
    let started = std::time::Instant::now();
    let (status, _) = call(&keap, "GET", "/v1/contacts/model", "").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(keap.state().throttled, 3);
}

#[tokio::test]
async fn the_spike_limit_arrests_a_key_over_its_calls_in_one_second() {
    let keap = KeapStandIn::start().await;
    keap.state().spike_limit = Some(3);
    // Back to back, well within one second: three answered, the fourth arrested.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call(&keap, "GET", "/v1/contacts/model", "").await);
    }
    assert_eq!(
        statuses.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [200, 200, 200, 429]
    );
    assert_eq!(
        body_of(&statuses[3].1)["fault"]["detail"]["errorcode"],
        "policies.ratelimit.SpikeArrestViolation"
    );
    // Another key has its own window.
    let (status, _) = http_request(
        keap.addr.port(),
        "GET",
        "/crm/rest/v1/contacts/model",
        &[("X-Keap-API-Key", "another-key")],
        b"",
    )
    .await
    .expect("answer");
    assert_eq!(status, 200);
    assert_eq!(keap.state().throttled, 1);
}

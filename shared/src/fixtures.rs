//! Real Chargify webhook bodies (see `shared/fixtures/chargify/README.md` for their sources),
//! compiled in so tests, benchmarks and local samples share one copy.

pub mod fifo;
pub mod history;
pub mod kill;
pub mod view;

pub const TEST: &str = include_str!("../fixtures/chargify/test.txt");
pub const SIGNUP_SUCCESS: &str = include_str!("../fixtures/chargify/signup_success.txt");
pub const SUBSCRIPTION_STATE_CHANGE: &str =
    include_str!("../fixtures/chargify/subscription_state_change.txt");
pub const PAYMENT_FAILURE: &str = include_str!("../fixtures/chargify/payment_failure.txt");
pub const PAYMENT_SUCCESS: &str = include_str!("../fixtures/chargify/payment_success.txt");
pub const CUSTOMER_UPDATE: &str = include_str!("../fixtures/chargify/customer_update.txt");
pub const STATEMENT_SETTLED: &str = include_str!("../fixtures/chargify/statement_settled.txt");

/// The published demo Site Shared Key: `cks serve` and `cks send` use it when
/// `CHARGIFY_SHARED_KEYS` is unset (serve only on loopback), and the `events/` files are signed
/// with it. Anyone can read it here, so it must never verify anything reachable from outside.
pub const DEMO_SHARED_KEY: &str = "local-dev-shared-key";

/// Not a webhook: `{"subscription": {…}}` as Chargify's REST API returns it (the Maxio spec's
/// example), for the API client and snapshot syncs.
pub const API_SUBSCRIPTION: &str = include_str!("../fixtures/chargify/api_subscription.json");

/// The subscription object of [`API_SUBSCRIPTION`] (unwrapped) as subscription `id` of
/// customer `customer_id`, in `state` as of `updated_at` (RFC 3339, as the API writes it).
/// Everything else is the Maxio example's.
pub fn api_subscription(
    id: i64,
    customer_id: i64,
    state: &str,
    updated_at: &str,
) -> serde_json::Value {
    let mut sub = serde_json::from_str::<serde_json::Value>(API_SUBSCRIPTION)
        .map(|mut item| item["subscription"].take())
        .unwrap_or_else(|e| panic!("the bundled subscription is JSON: {e}"));
    sub["id"] = id.into();
    sub["customer"]["id"] = customer_id.into();
    sub["state"] = state.into();
    sub["updated_at"] = updated_at.into();
    sub
}

/// Every bundled body, by event key.
pub const ALL: &[(&str, &str)] = &[
    ("test", TEST),
    ("signup_success", SIGNUP_SUCCESS),
    ("subscription_state_change", SUBSCRIPTION_STATE_CHANGE),
    ("payment_failure", PAYMENT_FAILURE),
    ("payment_success", PAYMENT_SUCCESS),
    ("customer_update", CUSTOMER_UPDATE),
    ("statement_settled", STATEMENT_SETTLED),
];

/// The envelope ingest would queue for `body`, verified by a demo key (tests, benchmarks and
/// the local samples). `None` when `body` is not a webhook.
pub fn envelope(body: &str) -> Option<crate::envelope::WebhookEnvelope> {
    envelope_at(body, time::OffsetDateTime::now_utc())
}

/// [`envelope`] received at `at` (generated files must not change from run to run).
pub fn envelope_at(
    body: &str,
    at: time::OffsetDateTime,
) -> Option<crate::envelope::WebhookEnvelope> {
    let webhook = crate::chargify::Webhook::parse(body.as_bytes()).ok()?;
    let keys = crate::chargify::SharedKeySet::parse("local-dev-shared-key").ok()?;
    let key = keys.keys().first()?;
    Some(crate::envelope::WebhookEnvelope::new(
        &webhook,
        body.to_owned(),
        key,
        crate::chargify::SignatureSource::Header,
        at,
    ))
}

/// A body derived from `body`: a new webhook id and event key, and `fields` set (replaced
/// when present, appended otherwise). Values must be form-encoded already (`%20` for a space).
pub fn derive(body: &str, id: &str, event: &str, fields: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = body
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect();
    let mut set = |key: &str, value: &str| match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(pair) => pair.1 = value.to_owned(),
        None => pairs.push((key.to_owned(), value.to_owned())),
    };
    set("id", id);
    set("event", event);
    for (key, value) in fields {
        set(key, value);
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// One customer's billing story, oldest first: the official `signup_success` example's
/// customer (site `acme-test`, customer 15, subscription 14) signs up on a trial, is told the
/// trial ends, fails a payment, recovers, and cancels. Each body is the reference body with
/// the fields of that event changed (Chargify's webhooks for one subscription share this
/// layout; notices and payments add their own fields). Names are what `send` accepts.
pub fn story() -> Vec<(&'static str, String)> {
    const STATE: &str = "payload[subscription][state]";
    const PREVIOUS: &str = "payload[subscription][previous_state]";
    const UPDATED: &str = "payload[subscription][updated_at]";
    let at = |day: &str| format!("2012-{day}%2009%3A00%3A00%20-0400");
    let base = SIGNUP_SUCCESS;
    let transaction = |success: &str, memo: &str| {
        vec![
            ("payload[transaction][id]", "9001".to_owned()),
            ("payload[transaction][success]", success.to_owned()),
            ("payload[transaction][amount_in_cents]", "9900".to_owned()),
            ("payload[transaction][memo]", memo.to_owned()),
            (
                "payload[transaction][transaction_type]",
                "payment".to_owned(),
            ),
        ]
    };
    let build = |id: &str,
                 event: &str,
                 mut fields: Vec<(&'static str, String)>,
                 more: Vec<(&'static str, String)>| {
        fields.extend(more);
        let borrowed: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        derive(base, id, event, &borrowed)
    };
    let state = |now: &str, previous: &str, day: &str| {
        vec![
            (STATE, now.to_owned()),
            (PREVIOUS, previous.to_owned()),
            (UPDATED, at(day)),
        ]
    };
    vec![
        (
            "signup",
            build(
                "1001",
                "signup_success",
                state("trialing", "pending", "09-09"),
                vec![],
            ),
        ),
        (
            "trial_ending",
            build(
                "1002",
                "trial_end_notice",
                state("trialing", "trialing", "09-27"),
                vec![],
            ),
        ),
        (
            "payment_failure",
            build(
                "1003",
                "payment_failure",
                state("past_due", "trialing", "09-30"),
                transaction("false", "Card%20declined"),
            ),
        ),
        (
            "past_due",
            build(
                "1004",
                "subscription_state_change",
                state("past_due", "trialing", "09-30"),
                vec![],
            ),
        ),
        (
            "payment_recovered",
            build(
                "1005",
                "payment_success",
                state("active", "past_due", "10-02"),
                transaction("true", "Retry%20succeeded"),
            ),
        ),
        (
            "active",
            build(
                "1006",
                "subscription_state_change",
                state("active", "past_due", "10-02"),
                vec![],
            ),
        ),
        (
            "canceled",
            build(
                "1007",
                "subscription_state_change",
                state("canceled", "active", "11-01"),
                vec![],
            ),
        ),
    ]
}

/// Prefix that names a reference body even where a story step has the same name
/// (`ref:payment_failure`).
pub const REFERENCE_PREFIX: &str = "ref:";

/// Every named sample `cks send` and the processor events use: the story's steps first, then
/// the reference bodies by event key (a story step wins a shared name; `ref:<event>` always
/// names the reference body).
pub fn samples() -> Vec<(String, String)> {
    let mut samples: Vec<(String, String)> = story()
        .into_iter()
        .map(|(name, body)| (name.to_owned(), body))
        .collect();
    for (event, body) in ALL {
        let name = if samples.iter().any(|(n, _)| n == event) {
            format!("{REFERENCE_PREFIX}{event}")
        } else {
            (*event).to_owned()
        };
        samples.push((name, (*body).to_owned()));
    }
    samples
}

/// The sample called `name` (see [`samples`]).
pub fn sample(name: &str) -> Option<String> {
    if let Some(event) = name.strip_prefix(REFERENCE_PREFIX) {
        return ALL
            .iter()
            .find(|(e, _)| *e == event)
            .map(|(_, b)| (*b).to_owned());
    }
    samples()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_a_unique_name_and_parses() {
        let samples = samples();
        assert_eq!(samples.len(), story().len() + ALL.len());
        for (name, body) in &samples {
            assert_eq!(
                samples.iter().filter(|(n, _)| n == name).count(),
                1,
                "{name}"
            );
            assert!(envelope(body).is_some(), "{name} is a webhook");
            assert_eq!(sample(name).as_deref(), Some(body.as_str()));
        }
        assert_eq!(sample("payment_failure"), Some(story()[2].1.clone()));
        assert_eq!(
            sample("ref:payment_failure").as_deref(),
            Some(PAYMENT_FAILURE)
        );
        assert_eq!(sample("nope"), None);
    }
}

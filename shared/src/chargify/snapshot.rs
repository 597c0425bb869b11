//! Snapshot syncs: a subscription read from Chargify's API, turned into the same queue
//! envelope a webhook becomes, so it goes through the same processor, rules and idempotency.
//!
//! The subscription JSON is encoded into Chargify's own form shape (`payload[subscription][…]`,
//! arrays indexed, `null` as an empty value) with `event=subscription_snapshot`: the processor
//! re-parses `raw_body` exactly as it does a webhook's, and the rules see `subscription`,
//! `customer`, `product` where they see them for `signup_success`. `encode` ∘ `FormBody::parse`
//! round-trips (a property test checks it); the only loss is empty arrays and objects, which a
//! form cannot carry.
//!
//! **Idempotency.** The webhook id is `snapshot-{subscription id}-{updated_at as unix
//! seconds}`: re-snapshotting an unchanged subscription (a resumed backfill, a reconciler run
//! that overlaps the last) is a duplicate and costs no Keap call; any change in Chargify moves
//! `updated_at` and makes a new snapshot.
//!
//! **Ordering.** The stale-event guard's clock is the subscription's `updated_at`, for
//! webhooks (`payload[subscription][updated_at]`) and snapshots alike, compared as instants
//! (the API's RFC 3339 and the webhooks' `2016-11-08 16:22:22 -0500` parse to the same
//! `OffsetDateTime`). A snapshot older than the last billing state applied changes nothing
//! (the default rule says `on_stale = "skip_all"`), and one applied advances the clock, so an
//! older webhook replayed later is stale in turn.
//!
//! **Trust.** Ingest refuses `subscription_snapshot` from the internet (see
//! [`super::webhook::INTERNAL_EVENT_KEYS`]): only code holding the API key makes one, and its
//! envelope says so in `verified_by` (source `chargify_api`, no key).

use super::api::Subscription;
use super::signature::{is_valid_subdomain, SignatureSource};
use super::webhook::{Webhook, MAX_ID_LEN};
use crate::envelope::{VerifiedBy, WebhookEnvelope};
use serde_json::Value;
use time::OffsetDateTime;

/// The event key of a snapshot sync. Never accepted by ingest.
pub const SNAPSHOT_EVENT: &str = "subscription_snapshot";

/// `verified_by.key` of a snapshot: it was fetched with the API key, not signed by a key.
pub const SNAPSHOT_KEY_LABEL: &str = "chargify_api";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("subscription {0} has no updated_at, so a snapshot of it could not be ordered against its webhooks; fetch it again (Chargify always sends one)")]
    NoUpdatedAt(i64),
    #[error("`{0}` is not a Chargify site subdomain; check CHARGIFY_SITE")]
    BadSite(String),
    #[error("the snapshot of subscription {id} is not a body the processor can read: {detail}")]
    Unreadable { id: i64, detail: String },
}

/// The snapshot's webhook id: deterministic in the subscription and its `updated_at`.
pub fn snapshot_id(subscription_id: i64, updated_at: OffsetDateTime) -> String {
    format!("snapshot-{subscription_id}-{}", updated_at.unix_timestamp())
}

/// The envelope the processor should get for `subscription` of `site`, as of `received_at`.
pub fn snapshot_envelope(
    site: &str,
    subscription: &Subscription,
    received_at: OffsetDateTime,
) -> Result<WebhookEnvelope, SnapshotError> {
    if !is_valid_subdomain(site) {
        return Err(SnapshotError::BadSite(site.to_owned()));
    }
    let updated_at = subscription
        .updated_at
        .ok_or(SnapshotError::NoUpdatedAt(subscription.id))?;
    let id = snapshot_id(subscription.id, updated_at);
    let body = snapshot_body(&id, site, &subscription.raw);
    let webhook = Webhook::parse(body.as_bytes()).map_err(|e| SnapshotError::Unreadable {
        id: subscription.id,
        detail: e.to_string(),
    })?;
    debug_assert!(id.len() <= MAX_ID_LEN);
    Ok(WebhookEnvelope {
        version: crate::envelope::ENVELOPE_VERSION,
        webhook_id: webhook.id.clone(),
        event: webhook.event.clone(),
        site: site.to_owned(),
        site_id: None,
        subscription_id: webhook.subscription_id.clone(),
        customer_id: webhook.customer_id.clone(),
        event_id: None,
        received_at,
        verified_by: VerifiedBy {
            key: SNAPSHOT_KEY_LABEL.to_owned(),
            fingerprint: String::new(),
            source: SignatureSource::ChargifyApi,
        },
        raw_body: body,
    })
}

/// `id=…&event=subscription_snapshot&payload[site][subdomain]=…&payload[subscription][…]=…`.
pub fn snapshot_body(id: &str, site: &str, subscription: &Value) -> String {
    let mut body = String::with_capacity(4096);
    push_pair(&mut body, "id", id);
    push_pair(&mut body, "event", SNAPSHOT_EVENT);
    push_pair(&mut body, "payload[site][subdomain]", site);
    encode_into(&mut body, "payload[subscription]", subscription);
    body
}

/// Appends `value` under `prefix` in Chargify's bracket form: objects nest (`prefix[key]`),
/// arrays are indexed (`prefix[0]`), scalars are text, `null` is an empty value.
pub fn encode_into(body: &mut String, prefix: &str, value: &Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                encode_into(body, &format!("{prefix}[{key}]"), child);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                encode_into(body, &format!("{prefix}[{i}]"), child);
            }
        }
        Value::Null => push_pair(body, prefix, ""),
        Value::String(text) => push_pair(body, prefix, text),
        Value::Bool(b) => push_pair(body, prefix, if *b { "true" } else { "false" }),
        Value::Number(n) => push_pair(body, prefix, &n.to_string()),
    }
}

fn push_pair(body: &mut String, key: &str, value: &str) {
    if !body.is_empty() {
        body.push('&');
    }
    // Brackets stay literal in keys, as Chargify sends them; everything else is escaped.
    percent_encode_into(body, key, b"[]");
    body.push('=');
    percent_encode_into(body, value, b"");
}

/// `text` percent-encoded as a form value (everything but `A–Z a–z 0–9 - . _ ~` escaped, so a
/// space is `%20` as in Chargify's bodies).
pub fn form_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    percent_encode_into(&mut out, text, b"");
    out
}

fn percent_encode_into(out: &mut String, text: &str, keep: &[u8]) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(byte >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(byte & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chargify::FormBody;
    use serde_json::json;

    fn spec_subscription() -> Subscription {
        let raw: Value = serde_json::from_str(crate::fixtures::API_SUBSCRIPTION).expect("JSON");
        serde_json::from_value(raw["subscription"].clone()).expect("a subscription")
    }

    /// What a form can carry: scalars as text, null as "", no empty containers.
    fn as_form_sees_it(value: &Value) -> Option<Value> {
        match value {
            Value::Object(map) => {
                let kept: serde_json::Map<String, Value> = map
                    .iter()
                    .filter_map(|(k, v)| as_form_sees_it(v).map(|v| (k.clone(), v)))
                    .collect();
                (!kept.is_empty()).then_some(Value::Object(kept))
            }
            Value::Array(items) => {
                // An empty element leaves a gap in the indices, and a gap keeps an object
                // (trailing ones leave no trace).
                let kept: Vec<(usize, Value)> = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| as_form_sees_it(v).map(|v| (i, v)))
                    .collect();
                if kept.is_empty() {
                    None
                } else if kept.iter().enumerate().all(|(n, (i, _))| n == *i) {
                    Some(Value::Array(kept.into_iter().map(|(_, v)| v).collect()))
                } else {
                    Some(Value::Object(
                        kept.into_iter().map(|(i, v)| (i.to_string(), v)).collect(),
                    ))
                }
            }
            Value::Null => Some(Value::String(String::new())),
            Value::String(s) => Some(Value::String(s.clone())),
            Value::Bool(b) => Some(Value::String(b.to_string())),
            Value::Number(n) => Some(Value::String(n.to_string())),
        }
    }

    #[test]
    fn the_spec_subscription_becomes_an_envelope_the_processor_reads() {
        let sub = spec_subscription();
        let at = time::macros::datetime!(2026-11-27 10:00:00 UTC);
        let env = snapshot_envelope("acme", &sub, at).expect("envelope");
        assert_eq!(env.webhook_id, "snapshot-15236915-1479155081");
        assert_eq!(env.event, SNAPSHOT_EVENT);
        assert_eq!(env.customer_id.as_deref(), Some("14714298"));
        assert_eq!(env.message_group_id(), "acme:cus:14714298");
        assert_eq!(env.verified_by.source, SignatureSource::ChargifyApi);
        assert!(!env.to_json().contains("api_key"));
        let form = FormBody::parse(env.raw_body.as_bytes()).expect("a form");
        assert_eq!(
            form.get("payload[subscription][customer][email]"),
            Some("curtis@example.com")
        );
        assert_eq!(
            form.get("payload[subscription][product][name]"),
            Some("$10 Basic Plan")
        );
        assert_eq!(form.get("payload[subscription][canceled_at]"), Some(""));
        let json = form.to_json();
        assert_eq!(
            json["payload"]["subscription"],
            as_form_sees_it(&sub.raw).expect("not empty")
        );
        // Same subscription, same id: a re-snapshot is a duplicate.
        let again = snapshot_envelope("acme", &sub, at + time::Duration::hours(1)).expect("env");
        assert_eq!(again.deduplication_id(), env.deduplication_id());
    }

    #[test]
    fn a_subscription_without_updated_at_or_a_bad_site_is_refused() {
        let mut sub = spec_subscription();
        let at = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            snapshot_envelope("Not A Site", &sub, at).map(|_| ()),
            Err(SnapshotError::BadSite("Not A Site".into()))
        );
        sub.updated_at = None;
        assert_eq!(
            snapshot_envelope("acme", &sub, at).map(|_| ()),
            Err(SnapshotError::NoUpdatedAt(15236915))
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn encode_then_parse_round_trips(value in json_value()) {
            let mut body = String::new();
            encode_into(&mut body, "payload[subscription]", &value);
            let form = FormBody::parse(body.as_bytes()).expect("encoded text parses");
            let parsed = form.to_json();
            let got = parsed.get("payload").and_then(|p| p.get("subscription")).cloned();
            proptest::prop_assert_eq!(got, as_form_sees_it(&value));
        }
    }
}

//! The shapes of Chargify's REST answers (Maxio spec: Subscription, Customer, Product,
//! Webhook, Event) and the queries we send. Lenient on purpose: see the module docs.

use crate::rules::template::parse_chargify_time;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{Date, OffsetDateTime};

/// A subscription as `GET /subscriptions/{id}.json` returns it: the fields we read, and the
/// whole object in `raw` (a snapshot carries all of it through the rules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct Subscription {
    pub id: i64,
    /// An open string: Chargify has states outside its documented enum (`inactive` appears in
    /// Chargify's test-page samples), so an unknown one must pass through, not fail the parse.
    pub state: Option<String>,
    /// The stale-event clock of a snapshot (RFC 3339 in the API).
    pub updated_at: Option<OffsetDateTime>,
    pub customer: Option<Customer>,
    pub product: Option<Product>,
    pub raw: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub handle: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl TryFrom<Value> for Subscription {
    type Error = String;

    fn try_from(raw: Value) -> Result<Self, Self::Error> {
        #[derive(Deserialize)]
        struct Fields {
            id: i64,
            #[serde(default)]
            state: Option<String>,
            #[serde(default)]
            updated_at: Option<String>,
        }
        let fields: Fields =
            serde_json::from_value(raw.clone()).map_err(|e| format!("not a subscription: {e}"))?;
        // A nested object that is odd (null, or a field of the wrong type) is left out rather
        // than refusing the subscription: `raw` still has it for the rules.
        fn nested<T: serde::de::DeserializeOwned>(raw: &Value, key: &str) -> Option<T> {
            raw.get(key)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
        }
        Ok(Self {
            id: fields.id,
            state: fields.state.filter(|s| !s.is_empty()),
            updated_at: fields.updated_at.as_deref().and_then(parse_chargify_time),
            customer: nested(&raw, "customer"),
            product: nested(&raw, "product"),
            raw,
        })
    }
}

impl From<Subscription> for Value {
    fn from(subscription: Subscription) -> Self {
        subscription.raw
    }
}

/// A webhook record of `GET /webhooks.json`. `body` is the form body exactly as sent, and
/// `signature_hmac_sha_256` its signature with the site's shared key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: i64,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_at: Option<String>,
    #[serde(default)]
    pub accepted_at: Option<String>,
    #[serde(default)]
    pub last_sent_at: Option<String>,
    #[serde(default)]
    pub last_sent_url: Option<String>,
    #[serde(default)]
    pub successful: Option<bool>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub signature_hmac_sha_256: Option<String>,
}

/// An Events-API record ("Site Activity").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub subscription_id: Option<i64>,
    #[serde(default)]
    pub customer_id: Option<i64>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub event_specific_data: Option<Value>,
}

/// The `{"subscription": …}` / `{"webhook": …}` / `{"event": …}` wrappers of list items.
#[derive(Deserialize)]
pub(super) struct SubscriptionItem {
    pub subscription: Subscription,
}
#[derive(Deserialize)]
pub(super) struct WebhookItem {
    pub webhook: WebhookRecord,
}
#[derive(Deserialize)]
pub(super) struct EventItem {
    pub event: Event,
}

/// Filters of `GET /subscriptions.json`. With `updated_since`, the list is every
/// subscription updated at or after it, oldest change first (`date_field=updated_at`,
/// `sort=updated_at`, `direction=asc`): the order a resumable backfill wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionQuery {
    /// A state filter (`active`, `past_due`, …, or the list-only `pending_cancellation`…).
    pub state: Option<String>,
    /// A product id.
    pub product_id: Option<i64>,
    /// Sent as `start_datetime` (`YYYY-MM-DD HH:MM:SS`) in the offset of the value given:
    /// Chargify reads it in the site's time zone, so pass it in that zone, or earlier (a
    /// subscription listed twice is a duplicate snapshot, skipped at no Keap cost).
    pub updated_since: Option<OffsetDateTime>,
}

impl SubscriptionQuery {
    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(state) = &self.state {
            params.push(("state", state.clone()));
        }
        if let Some(product) = self.product_id {
            params.push(("product", product.to_string()));
        }
        if let Some(since) = self.updated_since {
            let format =
                time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
            params.push(("date_field", "updated_at".into()));
            params.push(("start_datetime", since.format(format).unwrap_or_default()));
            params.push(("sort", "updated_at".into()));
            params.push(("direction", "asc".into()));
        }
        params
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    Successful,
    Failed,
    Pending,
    Paused,
}

impl WebhookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Successful => "successful",
            Self::Failed => "failed",
            Self::Pending => "pending",
            Self::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WebhookOrder {
    NewestFirst,
    /// What a cursor wants.
    #[default]
    OldestFirst,
}

/// Filters of `GET /webhooks.json`. Dates are on `created_at`, inclusive, in the site's zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookQuery {
    pub status: Option<WebhookStatus>,
    pub since_date: Option<Date>,
    pub until_date: Option<Date>,
    pub subscription: Option<i64>,
    pub order: WebhookOrder,
}

impl WebhookQuery {
    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
        let day = time::macros::format_description!("[year]-[month]-[day]");
        let mut params = Vec::new();
        if let Some(status) = self.status {
            params.push(("status", status.as_str().to_owned()));
        }
        if let Some(date) = self.since_date {
            params.push(("since_date", date.format(day).unwrap_or_default()));
        }
        if let Some(date) = self.until_date {
            params.push(("until_date", date.format(day).unwrap_or_default()));
        }
        if let Some(subscription) = self.subscription {
            params.push(("subscription", subscription.to_string()));
        }
        params.push((
            "order",
            match self.order {
                WebhookOrder::NewestFirst => "newest_first",
                WebhookOrder::OldestFirst => "oldest_first",
            }
            .to_owned(),
        ));
        params
    }
}

/// Filters of `GET /events.json`, always oldest first (`direction=asc`): the reconciler's
/// cursor is the highest id it processed, and it asks for `since_id = cursor + 1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Inclusive.
    pub since_id: Option<i64>,
    /// Event keys (`filter=a,b`); empty for all.
    pub filter: Vec<String>,
}

impl EventQuery {
    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![("direction", "asc".to_owned())];
        if let Some(since) = self.since_id {
            params.push(("since_id", since.to_string()));
        }
        if !self.filter.is_empty() {
            params.push(("filter", self.filter.join(",")));
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_spec_example_subscription_reads_and_keeps_its_raw_json() {
        let raw: Value =
            serde_json::from_str(crate::fixtures::API_SUBSCRIPTION).expect("fixture is JSON");
        let item: SubscriptionItem = serde_json::from_value(raw.clone()).expect("reads");
        let sub = item.subscription;
        assert_eq!(sub.id, 15236915);
        assert_eq!(sub.state.as_deref(), Some("active"));
        assert_eq!(
            sub.updated_at,
            Some(time::macros::datetime!(2016-11-14 15:24:41 -05:00))
        );
        assert_eq!(sub.customer.as_ref().and_then(|c| c.id), Some(14714298));
        assert_eq!(
            sub.product.as_ref().and_then(|p| p.handle.as_deref()),
            Some("basic")
        );
        assert_eq!(sub.raw, raw["subscription"]);
    }

    #[test]
    fn unknown_states_nulls_and_odd_nested_objects_are_tolerated() {
        let sub: Subscription = serde_json::from_value(json!({
            "id": 1, "state": "some_future_state", "updated_at": null,
            "customer": null, "product": {"id": "not a number"}, "new_field": [1, 2]
        }))
        .expect("reads");
        assert_eq!(sub.state.as_deref(), Some("some_future_state"));
        assert_eq!(sub.updated_at, None);
        assert_eq!(sub.customer, None);
        assert_eq!(sub.product, None);
        assert!(serde_json::from_value::<Subscription>(json!({"state": "active"})).is_err());
        let hook: WebhookItem = serde_json::from_value(json!({"webhook": {
            "id": 5, "event": "x", "accepted_at": null, "successful": null, "extra": 1
        }}))
        .expect("reads");
        assert_eq!(hook.webhook.id, 5);
        let event: EventItem = serde_json::from_value(json!({"event": {
            "id": 9, "key": "k", "event_specific_data": null, "subscription_id": null
        }}))
        .expect("reads");
        assert_eq!(event.event.id, 9);
    }

    #[test]
    fn queries_become_chargify_parameters() {
        let query = SubscriptionQuery {
            state: Some("active".into()),
            product_id: Some(7),
            updated_since: Some(time::macros::datetime!(2024-01-02 03:04:05 UTC)),
        };
        assert_eq!(
            query.params(),
            vec![
                ("state", "active".to_owned()),
                ("product", "7".to_owned()),
                ("date_field", "updated_at".to_owned()),
                ("start_datetime", "2024-01-02 03:04:05".to_owned()),
                ("sort", "updated_at".to_owned()),
                ("direction", "asc".to_owned()),
            ]
        );
        let hooks = WebhookQuery {
            status: Some(WebhookStatus::Paused),
            since_date: Some(time::macros::date!(2024 - 01 - 02)),
            ..WebhookQuery::default()
        };
        assert_eq!(
            hooks.params(),
            vec![
                ("status", "paused".to_owned()),
                ("since_date", "2024-01-02".to_owned()),
                ("order", "oldest_first".to_owned()),
            ]
        );
        let events = EventQuery {
            since_id: Some(10),
            filter: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            events.params(),
            vec![
                ("direction", "asc".to_owned()),
                ("since_id", "10".to_owned()),
                ("filter", "a,b".to_owned()),
            ]
        );
    }
}

//! The facts the pipeline needs from a verified Chargify webhook: which webhook, which event,
//! which site and which customer/subscription it concerns.

use super::form::{FormBody, FormError};
use super::signature::is_valid_subdomain;

/// Chargify's pseudo-event from the "Test" button in the webhook settings.
pub const TEST_EVENT: &str = "test";

/// Longest id we carry. It keeps `site:id` inside SQS's 128-character limit for
/// `MessageGroupId` and `MessageDeduplicationId` (63-character subdomain + separator + id).
pub const MAX_ID_LEN: usize = 60;

/// Every event key Chargify can send a webhook for: the 35 subscribable keys of the
/// `Webhook Subscription` enum in Maxio's spec, and the `test` pseudo-event Chargify sends from
/// its webhook settings page.
/// Rules naming any other key are refused at load, since such a rule could never run.
pub const EVENT_KEYS: &[&str] = &[
    "signup_success",
    "signup_failure",
    "renewal_success",
    "renewal_failure",
    "payment_success",
    "payment_failure",
    "billing_date_change",
    "subscription_state_change",
    "subscription_product_change",
    "subscription_card_update",
    "subscription_group_card_update",
    "expiring_card",
    "expiration_date_change",
    "customer_create",
    "customer_update",
    "component_allocation_change",
    "metered_usage",
    "prepaid_usage",
    "upgrade_downgrade_success",
    "upgrade_downgrade_failure",
    "statement_closed",
    "statement_settled",
    "refund_success",
    "refund_failure",
    "upcoming_renewal_notice",
    "trial_end_notice",
    "dunning_step_reached",
    "invoice_issued",
    "pending_cancellation_change",
    "prepaid_subscription_balance_changed",
    "subscription_prepayment_account_balance_changed",
    "subscription_service_credit_account_balance_changed",
    "direct_debit_payment_pending",
    "direct_debit_payment_paid_out",
    "direct_debit_payment_rejected",
    TEST_EVENT,
];

/// Event keys that never come from Chargify: made by this system (a snapshot sync of a
/// subscription read from the API). Rules may answer them; ingest refuses them from the
/// internet, so only a holder of the API key can make one.
pub const INTERNAL_EVENT_KEYS: &[&str] = &[super::snapshot::SNAPSHOT_EVENT];

/// Whether `event` is one of [`INTERNAL_EVENT_KEYS`].
pub fn is_internal_event(event: &str) -> bool {
    INTERNAL_EVENT_KEYS.contains(&event)
}

/// A parsed webhook. Only build one from a body whose signature verified.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: String,
    pub event: String,
    /// `payload[site][subdomain]`, when present and well formed.
    pub site_subdomain: Option<String>,
    pub site_id: Option<String>,
    pub subscription_id: Option<String>,
    /// `payload[subscription][customer][id]`, else `payload[customer][id]`.
    pub customer_id: Option<String>,
    /// `payload[event_id]`: the matching Events-API record.
    pub event_id: Option<String>,
    pub form: FormBody,
}

/// Why a verified body is not a usable webhook. Each maps to HTTP 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("body is not a form: {0}")]
    NotAForm(#[from] FormError),
    #[error("required field `{0}` is missing or empty")]
    Missing(&'static str),
    #[error("field `{field}` is not an id (1–{MAX_ID_LEN} of A–Z a–z 0–9 . _ -)")]
    BadId { field: &'static str },
    #[error("field `{field}` is not an event key (1–100 of a–z 0–9 _)")]
    BadEvent { field: &'static str },
    #[error("payload[site][subdomain] is not a valid subdomain")]
    BadSite,
    #[error(
        "event `{0}` is made by this system from Chargify's API, never sent by Chargify; refused"
    )]
    InternalEvent(String),
    #[error("field `id` is not a Chargify webhook id: Chargify numbers its webhooks with positive whole numbers (1 to 9223372036854775807, no leading zero)")]
    NotAChargifyId,
}

impl WebhookError {
    /// Stable name for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAForm(_) => "body_not_form",
            Self::Missing(_) => "body_missing_field",
            Self::BadId { .. }
            | Self::BadEvent { .. }
            | Self::BadSite
            | Self::InternalEvent(_)
            | Self::NotAChargifyId => "body_bad_field",
        }
    }
}

impl Webhook {
    pub fn parse(raw: &[u8]) -> Result<Self, WebhookError> {
        Self::from_form(FormBody::parse(raw)?)
    }

    pub fn from_form(form: FormBody) -> Result<Self, WebhookError> {
        let id = form
            .get_non_empty("id")
            .ok_or(WebhookError::Missing("id"))?;
        if !is_id(id) {
            return Err(WebhookError::BadId { field: "id" });
        }
        let event = form
            .get_non_empty("event")
            .ok_or(WebhookError::Missing("event"))?;
        if !is_event_key(event) {
            return Err(WebhookError::BadEvent { field: "event" });
        }
        let site_subdomain = match form.get_non_empty("payload[site][subdomain]") {
            Some(site) if is_valid_subdomain(site) => Some(site.to_owned()),
            Some(_) => return Err(WebhookError::BadSite),
            None => None,
        };
        // Ids that are present but odd are left out rather than refused: they only pick the
        // FIFO group, and the processor reads the raw body again anyway.
        let optional_id = |key: &str| {
            form.get_non_empty(key)
                .filter(|v| is_id(v))
                .map(str::to_owned)
        };
        let subscription_id = optional_id("payload[subscription][id]");
        let customer_id = optional_id("payload[subscription][customer][id]")
            .or_else(|| optional_id("payload[customer][id]"));
        Ok(Self {
            id: id.to_owned(),
            event: event.to_owned(),
            site_subdomain,
            site_id: optional_id("payload[site][id]"),
            subscription_id,
            customer_id,
            event_id: optional_id("payload[event_id]"),
            form,
        })
    }

    pub fn is_test(&self) -> bool {
        self.event == TEST_EVENT
    }
}

/// Whether `id` is a webhook id as Chargify makes them: a positive whole number that fits
/// Chargify's 64-bit ids, written without a sign or leading zero. Only that canonical form is
/// accepted, so one webhook has one FIFO deduplication id (`007` and `7` would be two). The
/// system's own snapshot ids (`snapshot-<subscription>-<time>`) are not of this form: only
/// what arrives from the internet must be (see `IngestService::prepare`).
pub fn is_chargify_webhook_id(id: &str) -> bool {
    !id.starts_with('0')
        && id.bytes().all(|b| b.is_ascii_digit())
        && id.parse::<i64>().is_ok_and(|n| n > 0)
}

/// Whether `value` is an id as we carry them (webhook, customer, subscription): 1 to
/// [`MAX_ID_LEN`] of `A–Z a–z 0–9 . _ -`.
pub fn is_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_event_key(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 100
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn reads_ids_from_subscription_events() {
        let hook = Webhook::parse(fixtures::SIGNUP_SUCCESS.as_bytes()).expect("parses");
        assert_eq!(hook.id, "5");
        assert_eq!(hook.event, "signup_success");
        assert_eq!(hook.site_subdomain.as_deref(), Some("acme-test"));
        assert_eq!(hook.site_id.as_deref(), Some("3"));
        assert_eq!(hook.subscription_id.as_deref(), Some("14"));
        assert_eq!(hook.customer_id.as_deref(), Some("15"));
        assert_eq!(hook.event_id.as_deref(), Some("99"));
        assert!(!hook.is_test());
    }

    #[test]
    fn reads_the_customer_of_customer_events() {
        let hook = Webhook::parse(fixtures::CUSTOMER_UPDATE.as_bytes()).expect("parses");
        assert_eq!(hook.event, "customer_update");
        assert_eq!(hook.customer_id.as_deref(), Some("0"));
        assert_eq!(hook.subscription_id, None);
        assert_eq!(
            hook.site_subdomain.as_deref(),
            Some("capital-preferences-ltd")
        );
    }

    #[test]
    fn every_reference_body_parses() {
        for (name, body) in fixtures::ALL {
            let hook = Webhook::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&hook.event, name);
        }
    }

    #[test]
    fn the_test_webhook_is_recognised() {
        let hook = Webhook::parse(fixtures::TEST.as_bytes()).expect("parses");
        assert!(hook.is_test());
        assert_eq!(hook.site_subdomain, None);
        assert_eq!(hook.customer_id, None);
    }

    #[test]
    fn missing_or_bad_required_fields_are_refused() {
        assert_eq!(
            Webhook::parse(b"event=x").err(),
            Some(WebhookError::Missing("id"))
        );
        assert_eq!(
            Webhook::parse(b"id=&event=x").err(),
            Some(WebhookError::Missing("id"))
        );
        assert_eq!(
            Webhook::parse(b"id=1").err(),
            Some(WebhookError::Missing("event"))
        );
        assert_eq!(
            Webhook::parse(b"id=1%202&event=x").err(),
            Some(WebhookError::BadId { field: "id" })
        );
        let long = format!("id={}&event=x", "9".repeat(MAX_ID_LEN + 1));
        assert_eq!(
            Webhook::parse(long.as_bytes()).err(),
            Some(WebhookError::BadId { field: "id" })
        );
        assert_eq!(
            Webhook::parse(b"id=1&event=Signup%20Success").err(),
            Some(WebhookError::BadEvent { field: "event" })
        );
        assert_eq!(
            Webhook::parse(b"id=1&event=x&payload[site][subdomain]=a.b").err(),
            Some(WebhookError::BadSite)
        );
        assert!(matches!(
            Webhook::parse(b"{\"id\":1,\"event\":\"x\"}").err(),
            Some(WebhookError::Missing("id"))
        ));
    }

    #[test]
    fn chargify_webhook_ids_are_positive_whole_numbers_in_canonical_form() {
        for good in ["1", "5", "176857854", "9223372036854775807"] {
            assert!(is_chargify_webhook_id(good), "{good}");
        }
        for bad in [
            "",
            "0",
            "-5",
            "+5",
            "abc",
            "007",
            "1.0",
            "1e3",
            " 5",
            "9223372036854775808",
            "snapshot-14-1700000000",
        ] {
            assert!(!is_chargify_webhook_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn odd_optional_ids_are_left_out() {
        let hook =
            Webhook::parse(b"id=1&event=x&payload[customer][id]=a%20b&payload[subscription][id]=")
                .expect("parses");
        assert_eq!(hook.customer_id, None);
        assert_eq!(hook.subscription_id, None);
    }
}

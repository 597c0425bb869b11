//! The message ingest puts on the queue and the processor takes off it.
//!
//! It carries the raw body unchanged (so the processor, a replay tool or a person can verify
//! and re-parse exactly what Chargify sent) next to the ids ingest extracted, and a `version`
//! so the two functions can be deployed independently.

use crate::chargify::signature::{SharedKey, SignatureSource};
use crate::chargify::Webhook;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Version of the envelope schema written by this build.
pub const ENVELOPE_VERSION: u32 = 1;

/// Largest SQS message body. SQS accepts up to 1 MiB in some regions since 2025, but 256 KiB is
/// what every region, the FIFO docs and the emulators enforce, so it is the one we design for.
pub const SQS_MAX_MESSAGE_BYTES: usize = 262_144;

/// Bytes kept back for the envelope's own fields (ids, timestamps, key label, JSON syntax).
/// Measured envelopes without the body are under 700 bytes; the rest is headroom.
pub const ENVELOPE_RESERVE_BYTES: usize = 4_096;

/// Largest raw webhook body ingest accepts (HTTP 413 above it). A body within the limit whose
/// JSON escaping still pushes the envelope past [`SQS_MAX_MESSAGE_BYTES`] is also refused
/// with 413; Chargify's percent-encoded bodies need no escaping, so that is theoretical.
pub const MAX_BODY_BYTES: usize = SQS_MAX_MESSAGE_BYTES - ENVELOPE_RESERVE_BYTES;

/// Stands in for the site when a webhook names none (only Chargify's `test` webhook is known
/// to lack one). `_` can never be a subdomain, so it collides with no real site.
pub const NO_SITE: &str = "_";

/// Which key verified the webhook: a label and a fingerprint, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedBy {
    pub key: String,
    pub fingerprint: String,
    pub source: SignatureSource,
}

/// Version 1 of the queue message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEnvelope {
    pub version: u32,
    pub webhook_id: String,
    pub event: String,
    /// Chargify site subdomain, or [`NO_SITE`].
    pub site: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub verified_by: VerifiedBy,
    /// The HTTP body exactly as received (after base64 decoding by the Lambda runtime).
    pub raw_body: String,
}

/// Why a queue message is not an envelope this build can read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message is not a webhook envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("envelope version {found} is newer than this build understands ({ENVELOPE_VERSION}); deploy the newer processor")]
    UnsupportedVersion { found: u32 },
}

impl WebhookEnvelope {
    /// Builds the envelope for a verified webhook. The site is the body's subdomain, else the
    /// site the verifying key is bound to, else [`NO_SITE`].
    pub fn new(
        webhook: &Webhook,
        raw_body: String,
        key: &SharedKey,
        source: SignatureSource,
        received_at: OffsetDateTime,
    ) -> Self {
        let site = webhook
            .site_subdomain
            .clone()
            .or_else(|| key.site().map(str::to_owned))
            .unwrap_or_else(|| NO_SITE.to_owned());
        Self {
            version: ENVELOPE_VERSION,
            webhook_id: webhook.id.clone(),
            event: webhook.event.clone(),
            site,
            site_id: webhook.site_id.clone(),
            subscription_id: webhook.subscription_id.clone(),
            customer_id: webhook.customer_id.clone(),
            event_id: webhook.event_id.clone(),
            received_at,
            verified_by: VerifiedBy {
                key: key.label(),
                fingerprint: key.fingerprint().to_owned(),
                source,
            },
            raw_body,
        }
    }

    /// FIFO group: all webhooks about one customer run in order. Falls back to the
    /// subscription, then to the webhook itself (its own group, so it blocks nothing).
    pub fn message_group_id(&self) -> String {
        match (&self.customer_id, &self.subscription_id) {
            (Some(customer), _) => format!("{}:cus:{customer}", self.site),
            (None, Some(subscription)) => format!("{}:sub:{subscription}", self.site),
            (None, None) => format!("{}:wh:{}", self.site, self.webhook_id),
        }
    }

    /// FIFO deduplication: Chargify keeps the webhook id across retries and replays, so the
    /// same webhook sent twice within SQS's 5-minute window is stored once. Later replays are
    /// caught by the processor's idempotency records.
    pub fn deduplication_id(&self) -> String {
        format!("{}:{}", self.site, self.webhook_id)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings, numbers and a timestamp cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let VersionOnly { version } = serde_json::from_str(text)?;
        if version > ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion { found: version });
        }
        Ok(serde_json::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chargify::SharedKeySet;
    use crate::fixtures;
    use time::macros::datetime;

    fn envelope_for(body: &str, keys: &str) -> WebhookEnvelope {
        let keys = SharedKeySet::parse(keys).expect("keys");
        let hook = Webhook::parse(body.as_bytes()).expect("parses");
        WebhookEnvelope::new(
            &hook,
            body.to_owned(),
            &keys.keys()[0],
            SignatureSource::Header,
            datetime!(2026-11-27 10:00:00 UTC),
        )
    }

    #[test]
    fn ids_follow_customer_then_subscription_then_webhook() {
        let env = envelope_for(fixtures::SIGNUP_SUCCESS, "k");
        assert_eq!(env.message_group_id(), "acme-test:cus:15");
        assert_eq!(env.deduplication_id(), "acme-test:5");

        let env = envelope_for(
            "id=7&event=x&payload[site][subdomain]=s&payload[subscription][id]=9",
            "k",
        );
        assert_eq!(env.message_group_id(), "s:sub:9");
        let env = envelope_for("id=7&event=x", "k");
        assert_eq!(env.message_group_id(), "_:wh:7");
        assert_eq!(env.deduplication_id(), "_:7");
        let env = envelope_for("id=7&event=x", "bound=k");
        assert_eq!(env.deduplication_id(), "bound:7");
    }

    #[test]
    fn round_trips_and_refuses_newer_versions() {
        let env = envelope_for(fixtures::PAYMENT_SUCCESS, "k");
        let text = env.to_json();
        assert_eq!(WebhookEnvelope::from_json(&text).expect("reads"), env);
        assert!(
            text.contains(r#""received_at":"2026-11-27T10:00:00Z""#),
            "{text}"
        );
        let newer = text.replacen(r#""version":1"#, r#""version":2"#, 1);
        assert!(matches!(
            WebhookEnvelope::from_json(&newer),
            Err(EnvelopeError::UnsupportedVersion { found: 2 })
        ));
        assert!(matches!(
            WebhookEnvelope::from_json("{}"),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn longest_ids_fit_sqs_limits() {
        let site = "a".repeat(63);
        let id = "9".repeat(crate::chargify::webhook::MAX_ID_LEN);
        let body =
            format!("id={id}&event=x&payload[site][subdomain]={site}&payload[customer][id]={id}");
        let env = envelope_for(&body, "k");
        assert!(
            env.message_group_id().len() <= 128,
            "{}",
            env.message_group_id().len()
        );
        assert!(env.deduplication_id().len() <= 128);
    }

    #[test]
    fn the_reserve_covers_the_envelope_fields() {
        let env = envelope_for(fixtures::SIGNUP_SUCCESS, "k");
        let overhead = env.to_json().len() - env.raw_body.len();
        assert!(overhead < 700, "overhead {overhead}");
        assert!(overhead * 4 < ENVELOPE_RESERVE_BYTES);
    }
}

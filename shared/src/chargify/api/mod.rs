//! Chargify's REST API (Maxio Advanced Billing): the port the reconciler and the backfill use
//! ([`ChargifyApi`]), its types, and the HTTPS adapter ([`ChargifyClient`]).
//!
//! The types are read leniently: Maxio's spec is loose (fields come and go, states outside the
//! documented enum appear in the wild, most fields may be `null`), so every field but an item's
//! `id` is optional and unknown fields are ignored. A subscription also keeps its raw JSON,
//! because a snapshot sync needs all of it (see [`super::snapshot`]).

mod client;
mod settings;
mod types;

pub use client::{
    ChargifyClient, ChargifyClientConfig, Region, MAX_CONCURRENT_REQUESTS, MAX_PER_PAGE,
};
pub use settings::{
    ChargifySettings, CHARGIFY_API_KEY, CHARGIFY_API_KEY_SECRET_ARN, CHARGIFY_BASE_URL,
    CHARGIFY_REGION, CHARGIFY_SITE,
};
pub use types::{
    Customer, Event, EventQuery, Product, Subscription, SubscriptionQuery, WebhookOrder,
    WebhookQuery, WebhookRecord, WebhookStatus,
};

use async_trait::async_trait;
use std::time::Duration;

/// Most webhook ids `POST /webhooks/replay.json` takes in one call.
pub const MAX_REPLAY_IDS: usize = 1000;

/// What the reconciler and the backfill need from Chargify. Pages are 1-based, as Chargify's
/// are; an empty page means there is nothing more.
#[async_trait]
pub trait ChargifyApi: Send + Sync {
    /// `GET /subscriptions.json`: one page of subscriptions matching `query`.
    async fn subscriptions_page(
        &self,
        query: &SubscriptionQuery,
        page: u32,
    ) -> Result<Vec<Subscription>, ChargifyApiError>;

    /// `GET /subscriptions/{id}.json`; `None` when Chargify has no such subscription.
    async fn subscription(&self, id: i64) -> Result<Option<Subscription>, ChargifyApiError>;

    /// `GET /webhooks.json`: one page of webhook records matching `query`.
    async fn webhooks_page(
        &self,
        query: &WebhookQuery,
        page: u32,
    ) -> Result<Vec<WebhookRecord>, ChargifyApiError>;

    /// `POST /webhooks/replay.json`, in as many calls of at most [`MAX_REPLAY_IDS`] as needed.
    /// Chargify queues the replays and sends them later, with their original ids.
    async fn replay_webhooks(&self, ids: &[i64]) -> Result<(), ChargifyApiError>;

    /// `GET /events.json`, oldest first: one page of events with `id >= query.since_id`.
    async fn events_page(
        &self,
        query: &EventQuery,
        page: u32,
    ) -> Result<Vec<Event>, ChargifyApiError>;
}

/// A Chargify call that failed. The messages say what to do; none carries the API key.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ChargifyApiError {
    #[error("Chargify refused the API key (401 on {path}): check CHARGIFY_API_KEY (or the secret behind CHARGIFY_API_KEY_SECRET_ARN), CHARGIFY_SITE and CHARGIFY_REGION")]
    Unauthorized { path: String },
    #[error("Chargify forbids {path} (403): the API key's role may not use this endpoint; use a key with full API access")]
    Forbidden { path: String },
    #[error("Chargify has no {path} (404)")]
    NotFound { path: String },
    #[error("Chargify refused {path} (422): {errors}; fix the request (an account block also answers 422: see the site's notifications)")]
    Unprocessable { path: String, errors: String },
    #[error("Chargify still answered 429 on {path} after {attempts} attempts: the site allows about 4 concurrent requests across every process using it; run fewer at once and retry later")]
    Throttled {
        path: String,
        attempts: usize,
        /// What the last 429 asked for (`Retry-After`), if anything.
        retry_after: Option<Duration>,
    },
    #[error("Chargify answered {status} on {path}; transient, retry later")]
    Transient { path: String, status: u16 },
    #[error("Chargify answered {status} on {path}: {detail}")]
    Refused {
        path: String,
        status: u16,
        detail: String,
    },
    #[error(
        "could not reach Chargify ({detail}); check the network, CHARGIFY_SITE and CHARGIFY_REGION"
    )]
    Network { detail: String },
    #[error("Chargify's answer to {path} is not the JSON expected: {detail}")]
    Unreadable { path: String, detail: String },
}

impl ChargifyApiError {
    /// Worth trying again later (throttling, 5xx, network); the others need a fix first.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Transient { .. } | Self::Network { .. }
        )
    }
}

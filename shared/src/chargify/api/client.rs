//! The [`ChargifyApi`] adapter over HTTPS (reqwest, rustls).
//!
//! Chargify limits each site to about 4 concurrent requests and answers
//! 429 beyond that. The client holds a semaphore of [`MAX_CONCURRENT_REQUESTS`] permits, so one
//! client never has more in flight; several processes (a reconciler and a backfill, say)
//! share the site's budget, so give each a smaller `max_concurrency`, or expect the 429s they
//! cause to be absorbed by the retries below. A 429 waits `Retry-After` when Chargify sends it,
//! else an exponential backoff with jitter; 5xx and network failures are retried the same way,
//! a bounded number of times. 4xx answers are typed errors, never retried.

use super::types::{EventItem, SubscriptionItem, WebhookItem};
use super::{
    ChargifyApi, ChargifyApiError, Event, EventQuery, Subscription, SubscriptionQuery,
    WebhookQuery, WebhookRecord, MAX_REPLAY_IDS,
};
use crate::keap::transport::{jitter, without_url};
use crate::telemetry::redact_serde_error;
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Chargify's documented concurrency limit per site.
pub const MAX_CONCURRENT_REQUESTS: usize = 4;
/// Chargify's largest page.
pub const MAX_PER_PAGE: u32 = 200;

/// Which Chargify data centre hosts the site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Region {
    #[default]
    Us,
    Eu,
}

impl Region {
    /// `https://{site}.chargify.com` (US) or `https://{site}.ebilling.maxio.com` (EU).
    pub fn base_url(self, site: &str) -> String {
        match self {
            Self::Us => format!("https://{site}.chargify.com"),
            Self::Eu => format!("https://{site}.ebilling.maxio.com"),
        }
    }
}

#[derive(Clone)]
pub struct ChargifyClientConfig {
    /// Scheme and host, no trailing slash: [`Region::base_url`], or a stand-in's address.
    pub base_url: String,
    pub api_key: String,
    pub per_page: u32,
    /// Chargify cuts every request off at 120 s.
    pub request_timeout: Duration,
    /// Requests in flight at once through this client (at most [`MAX_CONCURRENT_REQUESTS`]).
    pub max_concurrency: usize,
    /// Retries after the first attempt, for 429, 5xx and network failures.
    pub max_retries: usize,
    /// First backoff when Chargify gives no `Retry-After` (doubles, with jitter).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is returned to the caller instead of waited out.
    pub max_retry_after: Duration,
}

impl std::fmt::Debug for ChargifyClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChargifyClientConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("per_page", &self.per_page)
            .field("max_concurrency", &self.max_concurrency)
            .finish_non_exhaustive()
    }
}

impl ChargifyClientConfig {
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            api_key: api_key.into(),
            per_page: MAX_PER_PAGE,
            request_timeout: Duration::from_secs(120),
            max_concurrency: MAX_CONCURRENT_REQUESTS,
            max_retries: 5,
            // Chargify's advice on a 429 is to pause and continue slower: start at seconds.
            min_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

pub struct ChargifyClient {
    http: reqwest::Client,
    config: ChargifyClientConfig,
    permits: Semaphore,
}

impl ChargifyClient {
    pub fn new(config: ChargifyClientConfig) -> Result<Self, ChargifyApiError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| ChargifyApiError::Network {
                detail: without_url(&e),
            })?;
        let permits = Semaphore::new(config.max_concurrency.clamp(1, MAX_CONCURRENT_REQUESTS));
        Ok(Self {
            http,
            config,
            permits,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.config.base_url
    }

    /// One call with bounded retries. `Ok(None)` for a 404.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&'static str, String)],
        body: Option<&Value>,
    ) -> Result<Option<Value>, ChargifyApiError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_max_times(self.config.max_retries)
            .with_jitter();
        let max_retry_after = self.config.max_retry_after;
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let result = (|| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.attempt(method.clone(), path, query, body)
        })
        .retry(backoff)
        .when(|e| match e {
            ChargifyApiError::Throttled { retry_after, .. } => {
                retry_after.is_none_or(|wait| wait <= max_retry_after)
            }
            ChargifyApiError::Transient { .. } | ChargifyApiError::Network { .. } => true,
            _ => false,
        })
        .adjust(|e, planned| {
            // No planned wait: the retries are used up, whatever Chargify asked for.
            let planned = planned?;
            Some(match e {
                // Chargify said how long: wait that, plus jitter so parallel workers spread out.
                ChargifyApiError::Throttled {
                    retry_after: Some(wait),
                    ..
                } => *wait + jitter(),
                _ => planned,
            })
        })
        .notify(|e, wait| {
            tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "Chargify call failed; retrying")
        })
        .await;
        match result {
            Err(ChargifyApiError::Throttled { retry_after, .. }) => {
                Err(ChargifyApiError::Throttled {
                    path: path.to_owned(),
                    attempts: attempts.load(std::sync::atomic::Ordering::Relaxed),
                    retry_after,
                })
            }
            Err(ChargifyApiError::NotFound { .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    async fn attempt(
        &self,
        method: Method,
        path: &str,
        query: &[(&'static str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ChargifyApiError> {
        // The permit is held for the request only, never across a backoff sleep.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ChargifyApiError::Network {
                detail: "client shut down".into(),
            })?;
        let url = format!("{}{path}", self.config.base_url);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .query(query)
            .basic_auth(&self.config.api_key, Some("x"))
            .header("accept", "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ChargifyApiError::Network {
                detail: without_url(&e),
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ChargifyApiError::Network {
                detail: without_url(&e),
            })?;
        tracing::debug!(%method, path, status, "Chargify call");
        let path = path.to_owned();
        match status {
            200..=299 => {
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                serde_json::from_slice(&bytes).map_err(|e| ChargifyApiError::Unreadable {
                    path,
                    detail: redact_serde_error(&e),
                })
            }
            401 => Err(ChargifyApiError::Unauthorized { path }),
            403 => Err(ChargifyApiError::Forbidden { path }),
            404 => Err(ChargifyApiError::NotFound { path }),
            422 => Err(ChargifyApiError::Unprocessable {
                path,
                errors: error_text(&bytes),
            }),
            429 => Err(ChargifyApiError::Throttled {
                path,
                attempts: 1,
                retry_after,
            }),
            408 | 500..=599 => Err(ChargifyApiError::Transient { path, status }),
            _ => Err(ChargifyApiError::Refused {
                path,
                status,
                detail: error_text(&bytes),
            }),
        }
    }

    async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        mut query: Vec<(&'static str, String)>,
        page: u32,
    ) -> Result<Vec<T>, ChargifyApiError> {
        query.push(("page", page.max(1).to_string()));
        query.push((
            "per_page",
            self.config.per_page.clamp(1, MAX_PER_PAGE).to_string(),
        ));
        match self.call(Method::GET, path, &query, None).await? {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(value) => {
                serde_json::from_value(value).map_err(|e| ChargifyApiError::Unreadable {
                    path: path.to_owned(),
                    detail: redact_serde_error(&e),
                })
            }
        }
    }
}

/// Chargify's error bodies are `{"errors": [..]}` or `{"errors": {..}}`; the text is
/// Chargify's own (never the request), cut short for logs.
fn error_text(bytes: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => match map.get("errors") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect::<Vec<_>>()
                .join("; "),
            Some(other) => other.to_string(),
            None => Value::Object(map).to_string(),
        },
        _ => String::from_utf8_lossy(bytes).trim().to_owned(),
    };
    let text = crate::telemetry::redact_emails(&text);
    text.chars().take(300).collect()
}

#[async_trait]
impl ChargifyApi for ChargifyClient {
    async fn subscriptions_page(
        &self,
        query: &SubscriptionQuery,
        page: u32,
    ) -> Result<Vec<Subscription>, ChargifyApiError> {
        let items: Vec<SubscriptionItem> = self
            .list("/subscriptions.json", query.params(), page)
            .await?;
        Ok(items.into_iter().map(|i| i.subscription).collect())
    }

    async fn subscription(&self, id: i64) -> Result<Option<Subscription>, ChargifyApiError> {
        let path = format!("/subscriptions/{id}.json");
        let Some(value) = self.call(Method::GET, &path, &[], None).await? else {
            return Ok(None);
        };
        let item: SubscriptionItem =
            serde_json::from_value(value).map_err(|e| ChargifyApiError::Unreadable {
                path,
                detail: redact_serde_error(&e),
            })?;
        Ok(Some(item.subscription))
    }

    async fn webhooks_page(
        &self,
        query: &WebhookQuery,
        page: u32,
    ) -> Result<Vec<WebhookRecord>, ChargifyApiError> {
        let items: Vec<WebhookItem> = self.list("/webhooks.json", query.params(), page).await?;
        Ok(items.into_iter().map(|i| i.webhook).collect())
    }

    async fn replay_webhooks(&self, ids: &[i64]) -> Result<(), ChargifyApiError> {
        for chunk in ids.chunks(MAX_REPLAY_IDS) {
            let body = json!({ "ids": chunk });
            self.call(Method::POST, "/webhooks/replay.json", &[], Some(&body))
                .await?
                .ok_or_else(|| ChargifyApiError::NotFound {
                    path: "/webhooks/replay.json".into(),
                })?;
        }
        Ok(())
    }

    async fn events_page(
        &self,
        query: &EventQuery,
        page: u32,
    ) -> Result<Vec<Event>, ChargifyApiError> {
        let items: Vec<EventItem> = self.list("/events.json", query.params(), page).await?;
        Ok(items.into_iter().map(|i| i.event).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_pick_their_hosts() {
        assert_eq!(Region::Us.base_url("acme"), "https://acme.chargify.com");
        assert_eq!(
            Region::Eu.base_url("acme"),
            "https://acme.ebilling.maxio.com"
        );
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let config = ChargifyClientConfig::new("https://acme.chargify.com/", "sekrit-key");
        assert_eq!(config.base_url, "https://acme.chargify.com");
        assert!(!format!("{config:?}").contains("sekrit"));
    }

    #[test]
    fn error_bodies_become_short_text_without_emails() {
        assert_eq!(
            error_text(br#"{"errors": ["Email a@b.example is taken", "x"]}"#),
            "Email <email> is taken; x"
        );
        assert_eq!(
            error_text(b"HTTP Basic: Access denied.\n"),
            "HTTP Basic: Access denied."
        );
    }
}

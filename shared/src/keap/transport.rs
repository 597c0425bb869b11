//! Keap REST v1 over HTTPS, below the [`Crm`](super::crm::Crm) mapping: how one call reaches
//! Keap, whatever it asks for.
//!
//! Every call goes through one path ([`Transport::call`]), named by its [`Operation`]: a
//! client-side rate limit (governor) under the configured requests per second; pacing that
//! slows down as Keap's reported per-minute budget falls, so the client eases off before Keap
//! answers 429; the `x-keap-*` report of every answer; `x-request-id` in the log; the
//! `KeapCalls` metric by operation; and bounded retries with exponential backoff and jitter
//! (backon) for transient failures.
//!
//! Only short waits happen in-process: a spike-arrest 429 (about 1.5 s) and the backoff after
//! a 5xx or a network failure, each at most [`KeapClientConfig::max_retries`] times. A 429
//! that asks for longer (the per-minute throttle waits for the next minute, a long
//! `Retry-After`) and the daily quota go back to the caller at once, which hides its queue
//! record for that long instead of holding a worker asleep. Inside a
//! [`deadline::scope`](super::deadline::scope) no wait and no request outlasts the caller's
//! time less its reserve: a wait that would not fit returns the error instead.
//!
//! With OAuth, a 401 means the access token died early (revoked, or Keap's clock differs):
//! the call gets one new token through the refresh lease and is retried once; a second 401
//! is permanent.

use super::deadline;
use super::directory::DEFAULT_TTL;
use super::errors::{KeapError, ThrottleKind};
use super::oauth::OAuthTokens;
use super::throttle::ThrottleReport;
use crate::telemetry::metrics::{self, CallStatus, RateLimitKind};
use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::Method;
use serde_json::Value;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Keap's production base URL; paths are appended as `/v1/...`.
pub const KEAP_BASE_URL: &str = "https://api.infusionsoft.com/crm/rest";

/// Longest Keap-requested wait (a 429's) taken in-process by default. Spike arrest asks for
/// [`super::errors::SPIKE_ARREST_WAIT`] (1.5 s, plus up to 0.5 s of jitter here), which fits;
/// the per-minute throttle (up to a minute) and any longer `Retry-After` do not, and go back
/// to the caller: a worker asleep for a minute holds its whole batch, and every customer
/// behind it, while a hidden queue record holds nothing.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(3);

/// The Keap endpoints this client calls, each with the fixed name the `KeapCalls` metric and
/// the alarms use for it (never an id, email or goal name from the path or query).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `PUT /v1/contacts` (create or update by email).
    ContactUpsert,
    /// `GET /v1/contacts?email=`.
    ContactFind,
    /// `GET /v1/contacts/model`.
    ContactModel,
    /// `GET /v1/contacts/{id}`.
    ContactGet,
    /// `PATCH /v1/contacts/{id}`.
    ContactUpdate,
    /// `POST /v1/contacts/{id}/tags`.
    TagsApply,
    /// `DELETE /v1/contacts/{id}/tags?ids=`.
    TagsRemove,
    /// `GET /v1/tags?name=`.
    TagFind,
    /// `GET /v1/tags` (every tag, paged).
    TagList,
    /// `POST /v1/tags`.
    TagCreate,
    /// `POST /v1/tags/{id}/contacts`.
    TagApplyToContacts,
    /// `DELETE /v1/tags/{id}/contacts?ids=`.
    TagRemoveFromContacts,
    /// `POST /v1/campaigns/goals/{integration}/{callName}`.
    GoalAchieve,
    /// `POST /v1/notes`.
    NoteCreate,
    /// `GET /v1/companies?company_name=`.
    CompanyFind,
    /// `GET /v1/companies` (every company, paged).
    CompanyList,
    /// `POST /v1/companies`.
    CompanyCreate,
}

impl Operation {
    /// Every operation, for tests and documentation.
    pub const ALL: [Operation; 17] = [
        Self::ContactUpsert,
        Self::ContactFind,
        Self::ContactModel,
        Self::ContactGet,
        Self::ContactUpdate,
        Self::TagsApply,
        Self::TagsRemove,
        Self::TagFind,
        Self::TagList,
        Self::TagCreate,
        Self::TagApplyToContacts,
        Self::TagRemoveFromContacts,
        Self::GoalAchieve,
        Self::NoteCreate,
        Self::CompanyFind,
        Self::CompanyList,
        Self::CompanyCreate,
    ];

    /// The `Operation` dimension of `KeapCalls`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ContactUpsert => "contact_upsert",
            Self::ContactFind => "contact_find",
            Self::ContactModel => "contact_model",
            Self::ContactGet => "contact_get",
            Self::ContactUpdate => "contact_update",
            Self::TagsApply => "tags_apply",
            Self::TagsRemove => "tags_remove",
            Self::TagFind => "tag_find",
            Self::TagList => "tag_list",
            Self::TagCreate => "tag_create",
            Self::TagApplyToContacts => "tag_apply_to_contacts",
            Self::TagRemoveFromContacts => "tag_remove_from_contacts",
            Self::GoalAchieve => "goal_achieve",
            Self::NoteCreate => "note_create",
            Self::CompanyFind => "company_find",
            Self::CompanyList => "company_list",
            Self::CompanyCreate => "company_create",
        }
    }

    /// The HTTP method of the endpoint.
    pub fn method(self) -> Method {
        match self {
            Self::ContactFind
            | Self::ContactModel
            | Self::ContactGet
            | Self::TagFind
            | Self::TagList
            | Self::CompanyFind
            | Self::CompanyList => Method::GET,
            Self::ContactUpsert => Method::PUT,
            Self::ContactUpdate => Method::PATCH,
            Self::TagsRemove | Self::TagRemoveFromContacts => Method::DELETE,
            Self::TagsApply
            | Self::TagCreate
            | Self::TagApplyToContacts
            | Self::GoalAchieve
            | Self::NoteCreate
            | Self::CompanyCreate => Method::POST,
        }
    }
}

/// How the client proves who it is.
#[derive(Clone)]
pub enum Credential {
    /// Service account key or personal access token, sent as `X-Keap-API-Key`.
    ApiKey(String),
    /// OAuth2 access token from the shared token store, sent as `Authorization: Bearer`.
    OAuth(Arc<OAuthTokens>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            Self::OAuth(_) => f.write_str("OAuth(<redacted>)"),
        }
    }
}

/// The credential one call sends: the key, or the bearer token it got for this call.
enum Auth<'a> {
    ApiKey(&'a str),
    Bearer(String),
}

#[derive(Debug, Clone)]
pub struct KeapClientConfig {
    pub base_url: String,
    pub credential: Credential,
    /// Client-side ceiling. A service account key may make 10 per second.
    pub requests_per_second: NonZeroU32,
    /// Retries after the first attempt, for transient failures: a call makes at most
    /// `max_retries + 1` requests.
    pub max_retries: usize,
    /// A 429 asking for a longer wait than this is returned to the caller instead of waited
    /// out here ([`DEFAULT_MAX_WAIT`]).
    pub max_wait: Duration,
    /// Longest one request may take; inside a deadline scope, less when less time is left.
    pub request_timeout: Duration,
    /// How long a name resolved to an id (tags, companies, custom fields) stays cached.
    pub lookup_ttl: Duration,
}

impl KeapClientConfig {
    pub fn new(base_url: impl Into<String>, credential: Credential) -> Self {
        Self {
            base_url: base_url.into(),
            credential,
            requests_per_second: NonZeroU32::MIN.saturating_add(9),
            max_retries: 3,
            max_wait: DEFAULT_MAX_WAIT,
            request_timeout: Duration::from_secs(20),
            lookup_ttl: DEFAULT_TTL,
        }
    }
}

/// One Keap account's connection: the HTTP client, the rate limit every call shares, and what
/// Keap last said about the budgets.
pub struct Transport {
    http: reqwest::Client,
    config: KeapClientConfig,
    limiter: DefaultDirectRateLimiter,
    last_report: Mutex<ThrottleReport>,
    paced_waits: AtomicU64,
    /// Requests sent (retries included: each one counts against Keap's quota).
    requests_sent: AtomicU64,
    /// 429 answers received, of any kind.
    throttled_answers: AtomicU64,
}

impl Transport {
    pub fn new(config: KeapClientConfig) -> Result<Self, KeapError> {
        // No client-wide timeout: each request gets its own (see `attempt`).
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| KeapError::Network {
                detail: e.to_string(),
            })?;
        let limiter = RateLimiter::direct(even_spacing(config.requests_per_second));
        Ok(Self {
            http,
            limiter,
            last_report: Mutex::new(ThrottleReport::default()),
            paced_waits: AtomicU64::new(0),
            requests_sent: AtomicU64::new(0),
            throttled_answers: AtomicU64::new(0),
            config,
        })
    }

    pub fn config(&self) -> &KeapClientConfig {
        &self.config
    }

    /// How many times the client slowed down because Keap's reported budget was low.
    pub fn paced_waits(&self) -> u64 {
        self.paced_waits.load(Ordering::Relaxed)
    }

    /// Requests sent to Keap, retries included (what Keap's quota counts).
    pub fn requests_sent(&self) -> u64 {
        self.requests_sent.load(Ordering::Relaxed)
    }

    /// 429 answers received (spike arrest, per-minute or daily).
    pub fn throttled_answers(&self) -> u64 {
        self.throttled_answers.load(Ordering::Relaxed)
    }

    /// What Keap's last answer said about the budgets (daily quota left, per-minute left).
    pub fn throttle_report(&self) -> ThrottleReport {
        *self.last_report.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One Keap call with limiting, pacing and bounded retries. Returns the JSON answer
    /// (`Value::Null` for an empty body).
    pub async fn call(
        &self,
        operation: Operation,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, KeapError> {
        let request = Request {
            operation,
            path,
            query,
            body,
        };
        self.call_once_authorised(&request).await.inspect_err(|e| {
            if needs_a_person(e) {
                metrics::keap_reauthorisation_needed();
            }
        })
    }

    /// [`Self::call`] without the metric: the credential, and with OAuth one new token and
    /// one retry after a 401.
    async fn call_once_authorised(&self, request: &Request<'_>) -> Result<Value, KeapError> {
        let tokens = match &self.config.credential {
            Credential::ApiKey(key) => return self.call_with(&Auth::ApiKey(key), request).await,
            Credential::OAuth(tokens) => tokens,
        };
        let token = tokens.access_token().await?;
        match self.call_with(&Auth::Bearer(token.clone()), request).await {
            Err(KeapError::Unauthorized { reason, .. }) => {
                tracing::warn!(%reason, operation = request.operation.name(), "Keap rejected the access token; refreshing once");
                let token = tokens.replace_rejected(&token).await?;
                self.call_with(&Auth::Bearer(token), request).await
            }
            other => other,
        }
    }

    /// One call with one credential: limiting, pacing and bounded retries.
    async fn call_with(&self, auth: &Auth<'_>, request: &Request<'_>) -> Result<Value, KeapError> {
        let max_wait = self.config.max_wait;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.config.max_retries)
            .with_jitter();
        (|| self.attempt(auth, request))
            .retry(backoff)
            .when(|e| retry_in_process(e, max_wait))
            .adjust(|e, planned| {
                let wait = next_wait(e, planned);
                if wait.is_some_and(|w| !deadline::allows(w)) {
                    tracing::info!(
                        operation = request.operation.name(),
                        "no time left for another attempt before the caller's deadline; returning the error"
                    );
                    return None;
                }
                wait
            })
            .notify(|e, wait| tracing::warn!(operation = request.operation.name(), error = %crate::telemetry::redact_emails(&e.to_string()), wait_ms = wait.as_millis() as u64, "Keap call failed; retrying"))
            .await
    }

    /// One request: the rate limiter's turn, pacing, then the request itself, each bounded
    /// by the caller's deadline.
    async fn attempt(&self, auth: &Auth<'_>, request: &Request<'_>) -> Result<Value, KeapError> {
        let operation = request.operation;
        match deadline::remaining() {
            None => self.limiter.until_ready().await,
            Some(left) => tokio::time::timeout(left, self.limiter.until_ready())
                .await
                .map_err(|_| out_of_time(operation))?,
        }
        let report = self.throttle_report();
        if let Some(wait) = pacing_delay(&report) {
            if !deadline::allows(wait) {
                return Err(out_of_time(operation));
            }
            self.paced_waits.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(wait_ms = wait.as_millis() as u64, "Keap budget low; pacing");
            tokio::time::sleep(wait).await;
        }
        let timeout = deadline::bound(self.config.request_timeout);
        if timeout.is_zero() {
            return Err(out_of_time(operation));
        }
        let method = operation.method();
        let url = format!("{}{}", self.config.base_url, request.path);
        let mut builder = self
            .http
            .request(method.clone(), &url)
            .query(request.query)
            .timeout(timeout);
        builder = match auth {
            Auth::ApiKey(key) => builder.header("X-Keap-API-Key", *key),
            Auth::Bearer(token) => builder.bearer_auth(token),
        };
        if let Some(body) = request.body {
            builder = builder.json(body);
        }
        let operation = operation.name();
        self.requests_sent.fetch_add(1, Ordering::Relaxed);
        let response = builder.send().await.map_err(|e| {
            metrics::keap_call(operation, CallStatus::Network);
            KeapError::Network {
                detail: without_url(&e),
            }
        })?;
        let status = response.status().as_u16();
        metrics::keap_call(operation, CallStatus::Http(status));
        let headers = response.headers().clone();
        let report = ThrottleReport::from_headers(&headers);
        if !report.is_empty() {
            *self.last_report.lock().unwrap_or_else(|p| p.into_inner()) = report;
        }
        if let Some(available) = report.daily.available {
            metrics::keap_quota(available, report.daily.limit);
        }
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tracing::debug!(%method, operation, status, request_id, "Keap call");
        let bytes = response.bytes().await.map_err(|e| KeapError::Network {
            detail: without_url(&e),
        })?;
        if !(200..300).contains(&status) {
            let error =
                KeapError::from_response(status, &headers, &bytes, time::OffsetDateTime::now_utc());
            if status == 429 {
                self.throttled_answers.fetch_add(1, Ordering::Relaxed);
                metrics::keap_rate_limited(rate_limit_kind(&error));
            }
            return Err(error);
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| KeapError::Network {
            detail: format!("unreadable JSON from Keap ({e})"),
        })
    }
}

/// What one call sends, whatever the credential.
struct Request<'a> {
    operation: Operation,
    path: &'a str,
    query: &'a [(&'a str, String)],
    body: Option<&'a Value>,
}

/// The error of a call the caller's deadline left no time for: transient, so the caller
/// hides its record and tries again with fresh time.
fn out_of_time(operation: Operation) -> KeapError {
    KeapError::Network {
        detail: format!(
            "no time left before the caller's deadline for {}; not sent",
            operation.name()
        ),
    }
}

/// `per_second` calls a second, one at a time, evenly spaced. governor's default burst is a
/// whole second's allowance: after a pause it lets 10 calls go at once and the 11th 100 ms
/// later, so 11 land in one second and Keap's spike arrest (10 in any second, smoothed to one
/// per 100 ms) answers 429, which costs a 1.5 s retry wait. A burst of one never does that.
fn even_spacing(per_second: NonZeroU32) -> Quota {
    Quota::per_second(per_second).allow_burst(NonZeroU32::MIN)
}

/// True when no retry can succeed until a person fixes the credentials: OAuth's authorisation
/// is gone, or Keap refused the key (API key mode) or a token just obtained (OAuth). This is
/// what `KeapReauthorisationNeeded` counts, whatever the mode.
fn needs_a_person(error: &KeapError) -> bool {
    matches!(
        error,
        KeapError::ReauthorisationNeeded { .. } | KeapError::Unauthorized { .. }
    )
}

/// The `Kind` of a 429, from the classification `KeapError::from_response` made.
fn rate_limit_kind(error: &KeapError) -> RateLimitKind {
    match error {
        KeapError::Throttled {
            kind: ThrottleKind::SpikeArrest,
            ..
        } => RateLimitKind::Spike,
        KeapError::Throttled {
            kind: ThrottleKind::Minute,
            ..
        } => RateLimitKind::Minute,
        KeapError::DailyQuotaExhausted { .. } => RateLimitKind::Daily,
        _ => RateLimitKind::Other,
    }
}

/// Whether `error` is worth another attempt inside this call: transient failures, and a
/// spike-arrest 429 whose wait is at most `max_wait`. A per-minute 429 never is (its wait
/// runs to the next minute), nor the daily quota (hours), nor anything permanent.
fn retry_in_process(error: &KeapError, max_wait: Duration) -> bool {
    match error {
        KeapError::Throttled {
            kind: ThrottleKind::SpikeArrest,
            retry_after,
            ..
        } => *retry_after <= max_wait,
        KeapError::Throttled {
            kind: ThrottleKind::Minute,
            ..
        } => false,
        KeapError::Transient { .. } | KeapError::Network { .. } => true,
        _ => false,
    }
}

/// The wait before the next attempt, from backon's `planned` backoff: `None` once the retries
/// are used up (backon plans nothing more), whatever the error asks for. A 429 waits what
/// Keap asked for plus jitter, so parallel workers spread out.
fn next_wait(error: &KeapError, planned: Option<Duration>) -> Option<Duration> {
    let planned = planned?;
    Some(match error {
        KeapError::Throttled { retry_after, .. } => *retry_after + jitter(),
        _ => planned,
    })
}

/// Waits that spread the rest of a low per-minute budget over the minute: none while more
/// than half is left, `60 s / available` below that, a whole second when it is empty.
pub fn pacing_delay(report: &ThrottleReport) -> Option<Duration> {
    let fraction = report.minute_fraction_left()?;
    if fraction > 0.5 {
        return None;
    }
    let available = [report.minute.available, report.tenant_minute.available]
        .into_iter()
        .flatten()
        .min()?;
    Some(match available {
        0 => Duration::from_secs(1),
        n => Duration::from_millis(60_000 / n).min(Duration::from_secs(1)),
    })
}

/// Up to half a second, from the clock's nanoseconds: enough to spread workers that failed
/// together without a random number generator.
pub(crate) fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    Duration::from_millis(u64::from(nanos % 500))
}

/// reqwest errors print the URL, which carries emails in query strings.
pub(crate) fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_decode() {
        "unreadable body"
    } else {
        "request failed"
    };
    kind.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keap::errors::SPIKE_ARREST_WAIT;
    use crate::keap::throttle::Budget;
    use std::collections::HashSet;
    use std::time::Instant;

    #[test]
    fn operations_keep_the_names_metrics_and_alarms_use() {
        let names: Vec<&str> = Operation::ALL.iter().map(|op| op.name()).collect();
        let unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "one name per operation");
        for name in [
            "contact_upsert",
            "contact_find",
            "contact_model",
            "contact_get",
            "contact_update",
            "tags_apply",
            "tags_remove",
            "tag_find",
            "tag_create",
            "tag_apply_to_contacts",
            "tag_remove_from_contacts",
            "goal_achieve",
            "note_create",
            "company_find",
            "company_create",
            "tag_list",
            "company_list",
        ] {
            assert!(unique.contains(name), "{name} is still emitted");
        }
        assert_eq!(Operation::ContactUpsert.method(), Method::PUT);
        assert_eq!(Operation::ContactUpdate.method(), Method::PATCH);
        assert_eq!(Operation::TagRemoveFromContacts.method(), Method::DELETE);
        assert_eq!(Operation::TagList.method(), Method::GET);
    }

    #[test]
    fn a_429_is_counted_by_the_limit_it_hit() {
        let throttled = |kind| KeapError::Throttled {
            kind,
            retry_after: Duration::from_secs(1),
            request_id: None,
        };
        assert_eq!(
            rate_limit_kind(&throttled(ThrottleKind::SpikeArrest)),
            RateLimitKind::Spike
        );
        assert_eq!(
            rate_limit_kind(&throttled(ThrottleKind::Minute)),
            RateLimitKind::Minute
        );
        let daily = KeapError::DailyQuotaExhausted {
            resets_at: None,
            request_id: None,
        };
        assert_eq!(rate_limit_kind(&daily), RateLimitKind::Daily);
        assert!(needs_a_person(&KeapError::ReauthorisationNeeded {
            reason: "gone".into()
        }));
        assert!(!needs_a_person(&daily));
    }

    fn minute(limit: u64, available: u64) -> ThrottleReport {
        ThrottleReport {
            minute: Budget {
                limit: Some(limit),
                available: Some(available),
                used: None,
            },
            ..ThrottleReport::default()
        }
    }

    #[test]
    fn pacing_starts_below_half_the_budget_and_grows_as_it_falls() {
        assert_eq!(pacing_delay(&ThrottleReport::default()), None);
        assert_eq!(pacing_delay(&minute(240, 200)), None);
        assert_eq!(
            pacing_delay(&minute(240, 120)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            pacing_delay(&minute(240, 60)),
            Some(Duration::from_millis(1000))
        );
        assert_eq!(pacing_delay(&minute(240, 0)), Some(Duration::from_secs(1)));
        let shallower = pacing_delay(&minute(1500, 700)).unwrap_or_default();
        let deeper = pacing_delay(&minute(1500, 100)).unwrap_or_default();
        assert!(deeper > shallower);
    }

    fn spike() -> KeapError {
        KeapError::Throttled {
            kind: ThrottleKind::SpikeArrest,
            retry_after: SPIKE_ARREST_WAIT,
            request_id: None,
        }
    }

    #[test]
    fn only_spike_arrest_and_transient_failures_are_waited_out_here() {
        assert!(retry_in_process(&spike(), DEFAULT_MAX_WAIT));
        let long_spike = KeapError::Throttled {
            kind: ThrottleKind::SpikeArrest,
            retry_after: Duration::from_secs(30),
            request_id: None,
        };
        assert!(
            !retry_in_process(&long_spike, DEFAULT_MAX_WAIT),
            "a long Retry-After"
        );
        let minute = KeapError::Throttled {
            kind: ThrottleKind::Minute,
            retry_after: Duration::from_millis(1_250),
            request_id: None,
        };
        assert!(
            !retry_in_process(&minute, Duration::from_secs(65)),
            "a per-minute 429 is never waited out in-process, however short"
        );
        let daily = KeapError::DailyQuotaExhausted {
            resets_at: None,
            request_id: None,
        };
        assert!(!retry_in_process(&daily, Duration::from_secs(65)));
        let gateway = KeapError::Transient {
            status: 502,
            reason: "bad gateway".into(),
            request_id: None,
        };
        assert!(retry_in_process(&gateway, DEFAULT_MAX_WAIT));
        let refused = KeapError::Permanent {
            status: 400,
            reason: "Invalid email".into(),
            request_id: None,
        };
        assert!(!retry_in_process(&refused, DEFAULT_MAX_WAIT));
    }

    #[test]
    fn no_wait_once_the_retries_are_used_up() {
        assert_eq!(next_wait(&spike(), None), None, "the retry count holds");
        let wait = next_wait(&spike(), Some(Duration::from_millis(200))).unwrap_or_default();
        assert!(
            wait >= SPIKE_ARREST_WAIT && wait < SPIKE_ARREST_WAIT + Duration::from_millis(500),
            "{wait:?}"
        );
        let network = KeapError::Network {
            detail: "timeout".into(),
        };
        assert_eq!(
            next_wait(&network, Some(Duration::from_millis(400))),
            Some(Duration::from_millis(400))
        );
        assert_eq!(next_wait(&network, None), None);
    }

    #[tokio::test]
    async fn a_call_with_no_time_left_sends_nothing() {
        let config = KeapClientConfig::new(
            // Nothing listens here; the call must not even try.
            "http://127.0.0.1:9/crm/rest",
            Credential::ApiKey("k".into()),
        );
        let transport = Transport::new(config).expect("transport");
        let soon = Instant::now() + deadline::RESERVE / 2;
        let result = deadline::scope(
            soon,
            transport.call(Operation::ContactModel, "/v1/contacts/model", &[], None),
        )
        .await;
        match result {
            Err(KeapError::Network { detail }) => {
                assert!(detail.contains("no time left"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(transport.requests_sent(), 0);
    }
}

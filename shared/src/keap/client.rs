//! Keap REST v1 over HTTPS: the [`Crm`] adapter.
//!
//! Every call goes through one path ([`KeapClient::call`]): a client-side rate limit
//! (governor) under the configured requests per second; pacing that slows down as Keap's
//! reported per-minute budget falls, so the client eases off before Keap answers 429; the
//! `x-keap-*` report of every answer; `x-request-id` in the log; and bounded retries with
//! exponential backoff and jitter (backon) for transient failures, honouring the wait each
//! kind of 429 asks for. A daily-quota 429 is never retried here: its reset is hours away,
//! and the caller should delay the work instead.
//!
//! With OAuth, a 401 means the access token died early (revoked, or Keap's clock differs):
//! the call gets one new token through the refresh lease and is retried once; a second 401
//! is permanent.

use super::country::keap_country_code;
use super::crm::{
    Address, Company, CompanyId, Contact, ContactFields, ContactId, Crm, CustomField, GoalHit, Tag,
    TagId, MAX_BULK_TAG_CONTACTS,
};
use super::directory::{Directory, DEFAULT_TTL};
use super::errors::{KeapError, ThrottleKind};
use super::oauth::OAuthTokens;
use super::throttle::ThrottleReport;
use crate::telemetry::metrics::{self, CallStatus, RateLimitKind};
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Keap's production base URL; paths are appended as `/v1/...`.
pub const KEAP_BASE_URL: &str = "https://api.infusionsoft.com/crm/rest";

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
    /// Retries after the first attempt, for transient failures.
    pub max_retries: usize,
    /// A throttle asking for a longer wait than this is returned to the caller instead.
    pub max_wait: Duration,
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
            max_wait: Duration::from_secs(65),
            request_timeout: Duration::from_secs(20),
            lookup_ttl: DEFAULT_TTL,
        }
    }
}

pub struct KeapClient {
    http: reqwest::Client,
    config: KeapClientConfig,
    limiter: DefaultDirectRateLimiter,
    last_report: Mutex<ThrottleReport>,
    paced_waits: AtomicU64,
    /// Requests sent (retries included: each one counts against Keap's quota).
    requests_sent: AtomicU64,
    /// 429 answers received, of any kind.
    throttled_answers: AtomicU64,
    directory: Directory,
}

impl KeapClient {
    pub fn new(config: KeapClientConfig) -> Result<Self, KeapError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
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
            directory: Directory::with_ttl(
                Arc::new(crate::identity::InMemoryNameLocks::new()),
                config.lookup_ttl,
            ),
            config,
        })
    }

    /// The name → id cache of this client's Keap account. The client uses it for contacts'
    /// companies; callers use the same one for tags and custom fields, so one account has
    /// one cache.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// How many times the client slowed down because Keap's reported budget was low.
    pub fn paced_waits(&self) -> u64 {
        self.paced_waits.load(Ordering::Relaxed)
    }

    /// Requests this client sent to Keap, retries included (what Keap's quota counts).
    pub fn requests_sent(&self) -> u64 {
        self.requests_sent.load(Ordering::Relaxed)
    }

    /// 429 answers this client received (spike arrest, per-minute or daily).
    pub fn throttled_answers(&self) -> u64 {
        self.throttled_answers.load(Ordering::Relaxed)
    }

    /// What Keap's last answer said about the budgets (daily quota left, per-minute left).
    pub fn throttle_report(&self) -> ThrottleReport {
        *self.last_report.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most requests one call can send: the first, its retries, and with OAuth one more
    /// after a refreshed token.
    pub fn max_requests_per_call(&self) -> u64 {
        let oauth = u64::from(matches!(self.config.credential, Credential::OAuth(_)));
        1 + self.config.max_retries as u64 + oauth
    }

    /// The configured pace, calls per second.
    pub fn requests_per_second(&self) -> u32 {
        self.config.requests_per_second.get()
    }

    /// One Keap call with limiting, pacing and bounded retries. Returns the JSON answer
    /// (`Value::Null` for an empty body).
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, KeapError> {
        self.call_once_authorised(method, path, query, body)
            .await
            .inspect_err(|e| {
                if needs_a_person(e) {
                    metrics::keap_reauthorisation_needed();
                }
            })
    }

    /// [`Self::call`] without the metric: the credential, and with OAuth one new token and
    /// one retry after a 401.
    async fn call_once_authorised(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, KeapError> {
        let tokens = match &self.config.credential {
            Credential::ApiKey(key) => {
                return self
                    .call_with(&Auth::ApiKey(key), method, path, query, body)
                    .await
            }
            Credential::OAuth(tokens) => tokens,
        };
        let token = tokens.access_token().await?;
        match self
            .call_with(
                &Auth::Bearer(token.clone()),
                method.clone(),
                path,
                query,
                body,
            )
            .await
        {
            Err(KeapError::Unauthorized { reason, .. }) => {
                tracing::warn!(%reason, path, "Keap rejected the access token; refreshing once");
                let token = tokens.replace_rejected(&token).await?;
                self.call_with(&Auth::Bearer(token), method, path, query, body)
                    .await
            }
            other => other,
        }
    }

    /// One call with one credential: limiting, pacing and bounded retries.
    async fn call_with(
        &self,
        auth: &Auth<'_>,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, KeapError> {
        let max_wait = self.config.max_wait;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.config.max_retries)
            .with_jitter();
        (|| self.attempt(auth, method.clone(), path, query, body))
            .retry(backoff)
            .when(|e| retry_in_process(e, max_wait))
            .adjust(|e, planned| match e {
                // Keap said how long: wait that, plus jitter so parallel workers spread out.
                KeapError::Throttled { retry_after, .. } => Some(*retry_after + jitter()),
                _ => planned,
            })
            .notify(|e, wait| tracing::warn!(error = %crate::telemetry::redact_emails(&e.to_string()), wait_ms = wait.as_millis() as u64, "Keap call failed; retrying"))
            .await
    }

    async fn attempt(
        &self,
        auth: &Auth<'_>,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, KeapError> {
        self.limiter.until_ready().await;
        let report = *self.last_report.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(wait) = pacing_delay(&report) {
            self.paced_waits.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(wait_ms = wait.as_millis() as u64, "Keap budget low; pacing");
            tokio::time::sleep(wait).await;
        }
        let url = format!("{}{path}", self.config.base_url);
        let mut request = self.http.request(method.clone(), &url).query(query);
        request = match auth {
            Auth::ApiKey(key) => request.header("X-Keap-API-Key", *key),
            Auth::Bearer(token) => request.bearer_auth(token),
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        let operation = operation_of(&method, path);
        self.requests_sent.fetch_add(1, Ordering::Relaxed);
        let response = request.send().await.map_err(|e| {
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
        tracing::debug!(%method, path, status, request_id, "Keap call");
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

impl KeapClient {
    /// Every item of a v1 list (the array under `items`) matching `filter` (if any), page by
    /// page.
    async fn list_all(
        &self,
        path: &str,
        items: &str,
        filter: Option<(&str, &str)>,
    ) -> Result<Vec<Value>, KeapError> {
        const PAGE: usize = 1000;
        let mut all = Vec::new();
        // Bounded paging: Keap accounts hold thousands of tags or companies, not millions.
        for page in 0..100 {
            let mut query = vec![
                ("limit", PAGE.to_string()),
                ("offset", (page * PAGE).to_string()),
            ];
            if let Some((name, value)) = filter {
                query.push((name, value.to_owned()));
            }
            let mut answer = self.call(Method::GET, path, &query, None).await?;
            let batch = match answer.get_mut(items).map(Value::take) {
                Some(Value::Array(batch)) => batch,
                _ => Vec::new(),
            };
            let count = batch.len();
            all.extend(batch);
            if count < PAGE {
                break;
            }
        }
        Ok(all)
    }

    /// The contact body for `fields`, with the company name resolved to its id.
    async fn contact_body(&self, fields: &ContactFields) -> Result<Map<String, Value>, KeapError> {
        let mut body = fields_json(fields);
        let company = fields.company.as_deref().map(str::trim);
        if let Some(id) = fields.company_id {
            body.insert("company".into(), json!({ "id": id }));
        } else if let Some(name) = company.filter(|n| !n.is_empty()) {
            let id: CompanyId = self.directory.company_id(self, name).await?;
            body.insert("company".into(), json!({ "id": id }));
        }
        Ok(body)
    }

    /// A bulk tag call: Keap answers 200 with a result per item, and every item must succeed.
    async fn post_items(&self, path: &str, body: &Value) -> Result<(), KeapError> {
        let answer = self.call(Method::POST, path, &[], Some(body)).await?;
        all_items_applied(&answer)
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

/// The `Operation` dimension of a call: a fixed name per endpoint, never the ids, emails or
/// goal names its path or query carry.
pub fn operation_of(method: &Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path
        .trim_start_matches("/v1/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let m = method.as_str();
    match (m, segments.as_slice()) {
        ("PUT", ["contacts"]) => "contact_upsert",
        ("GET", ["contacts"]) => "contact_find",
        ("GET", ["contacts", "model"]) => "contact_model",
        ("GET", ["contacts", _]) => "contact_get",
        ("PATCH", ["contacts", _]) => "contact_update",
        ("POST", ["contacts", _, "tags"]) => "tags_apply",
        ("DELETE", ["contacts", _, "tags"]) => "tags_remove",
        ("GET", ["tags"]) => "tag_find",
        ("POST", ["tags"]) => "tag_create",
        ("POST", ["tags", _, "contacts"]) => "tag_apply_to_contacts",
        ("DELETE", ["tags", _, "contacts"]) => "tag_remove_from_contacts",
        ("POST", ["campaigns", "goals", ..]) => "goal_achieve",
        ("POST", ["notes"]) => "note_create",
        ("GET", ["companies"]) => "company_find",
        ("POST", ["companies"]) => "company_create",
        _ => "other",
    }
}

fn retry_in_process(error: &KeapError, max_wait: Duration) -> bool {
    match error {
        KeapError::Throttled { retry_after, .. } => *retry_after <= max_wait,
        KeapError::Transient { .. } | KeapError::Network { .. } => true,
        _ => false,
    }
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

fn fields_json(fields: &ContactFields) -> Map<String, Value> {
    let mut body = Map::new();
    if let Some(email) = &fields.email {
        body.insert(
            "email_addresses".into(),
            json!([{"email": email, "field": "EMAIL1"}]),
        );
    }
    if let Some(v) = &fields.given_name {
        body.insert("given_name".into(), json!(v));
    }
    if let Some(v) = &fields.family_name {
        body.insert("family_name".into(), json!(v));
    }
    if let Some(v) = &fields.phone {
        body.insert(
            "phone_numbers".into(),
            json!([{"number": v, "field": "PHONE1"}]),
        );
    }
    if let Some(address) = &fields.address {
        body.insert("addresses".into(), json!([address_json(address)]));
    }
    if !fields.custom_fields.is_empty() {
        let custom: Vec<Value> = fields
            .custom_fields
            .iter()
            .map(|(id, content)| json!({"id": id, "content": content}))
            .collect();
        body.insert("custom_fields".into(), Value::Array(custom));
    }
    if let Some(v) = &fields.opt_in_reason {
        body.insert("opt_in_reason".into(), json!(v));
    }
    body
}

/// Keap refuses a region without a country ("BILLING Region is invalid"), so a region is
/// only sent together with a country code Keap knows (alpha-3); an unknown country is dropped
/// with its region rather than sent and refused.
fn address_json(address: &Address) -> Value {
    let mut out = Map::new();
    out.insert("field".into(), json!("BILLING"));
    let mut put = |key: &str, value: &Option<String>| {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            out.insert(key.into(), json!(v));
        }
    };
    put("line1", &address.line1);
    put("line2", &address.line2);
    put("locality", &address.locality);
    put("postal_code", &address.postal_code);
    let given = address.country_code.as_deref().map(str::trim);
    match given
        .filter(|c| !c.is_empty())
        .map(|c| (c, keap_country_code(c)))
    {
        Some((_, Some(alpha3))) => {
            put("region", &address.region);
            put("country_code", &Some(alpha3.to_owned()));
        }
        Some((unknown, None)) => {
            tracing::warn!(
                country = unknown,
                "not an ISO 3166-1 country code; address sent without country and region"
            );
        }
        None => {}
    }
    Value::Object(out)
}

/// The `id` of a record Keap answered; one without is an answer we cannot use.
fn id_of(record: &Value, what: &str) -> Result<i64, KeapError> {
    record["id"].as_i64().ok_or_else(|| KeapError::Network {
        detail: format!("Keap answered a {what} without an id"),
    })
}

fn contact_from(value: &Value) -> Result<Contact, KeapError> {
    let id = id_of(value, "contact")?;
    let email = value["email_addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["field"] == "EMAIL1").or(a.first()))
        .and_then(|e| e["email"].as_str())
        .map(str::to_owned);
    let tag_ids = value["tag_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect());
    let company_id = value["company"]["id"].as_i64();
    Ok(Contact {
        id,
        email,
        tag_ids,
        company_id,
    })
}

/// Keap's per-item results. Documented as a list of entries, seen as a map of id → status:
/// both are read. `SUCCESS` and `DUPLICATE` are success.
fn refused_items(results: &Value) -> Vec<(i64, String)> {
    let pairs: Vec<(i64, String)> = match results {
        Value::Object(map) => map
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_owned())))
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|item| {
                let (k, v) = item.as_object()?.iter().next()?;
                Some((k.parse().unwrap_or_default(), v.as_str()?.to_owned()))
            })
            .collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter(|(_, status)| status != "SUCCESS" && status != "DUPLICATE")
        .collect()
}

fn all_items_applied(results: &Value) -> Result<(), KeapError> {
    let failures = refused_items(results);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(KeapError::ItemsRefused { failures })
    }
}

fn ids_csv(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

#[async_trait]
impl Crm for KeapClient {
    async fn upsert_contact_by_email(
        &self,
        email: &str,
        fields: &ContactFields,
    ) -> Result<Contact, KeapError> {
        let mut body = self.contact_body(fields).await?;
        body.insert(
            "email_addresses".into(),
            json!([{"email": email, "field": "EMAIL1"}]),
        );
        body.insert("duplicate_option".into(), json!("Email"));
        let answer = self
            .call(Method::PUT, "/v1/contacts", &[], Some(&Value::Object(body)))
            .await?;
        contact_from(&answer)
    }

    async fn get_contact(&self, id: ContactId) -> Result<Contact, KeapError> {
        let answer = self
            .call(Method::GET, &format!("/v1/contacts/{id}"), &[], None)
            .await?;
        contact_from(&answer)
    }

    async fn find_contacts_by_email(&self, email: &str) -> Result<Vec<Contact>, KeapError> {
        let answer = self
            .call(
                Method::GET,
                "/v1/contacts",
                &[("email", email.to_owned()), ("limit", "1000".into())],
                None,
            )
            .await?;
        let mut contacts: Vec<Contact> = answer["contacts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| contact_from(c).ok())
            .collect();
        contacts.sort_by_key(|c| c.id);
        Ok(contacts)
    }

    async fn update_contact(
        &self,
        id: ContactId,
        fields: &ContactFields,
    ) -> Result<Contact, KeapError> {
        let body = Value::Object(self.contact_body(fields).await?);
        let answer = self
            .call(
                Method::PATCH,
                &format!("/v1/contacts/{id}"),
                &[],
                Some(&body),
            )
            .await?;
        contact_from(&answer)
    }

    async fn list_tags(&self) -> Result<Vec<Tag>, KeapError> {
        let tags = self.list_all("/v1/tags", "tags", None).await?;
        Ok(tags
            .iter()
            .filter_map(|t| {
                Some(Tag {
                    id: t["id"].as_i64()?,
                    name: t["name"].as_str()?.to_owned(),
                })
            })
            .collect())
    }

    async fn find_tags_by_name(&self, name: &str) -> Result<Vec<Tag>, KeapError> {
        let tags = self
            .list_all("/v1/tags", "tags", Some(("name", name)))
            .await?;
        Ok(tags
            .iter()
            .filter_map(|t| {
                let tag_name = t["name"].as_str()?;
                // Keap's name filter may match loosely; keep exact names only.
                (tag_name == name).then(|| Tag {
                    id: t["id"].as_i64().unwrap_or_default(),
                    name: tag_name.to_owned(),
                })
            })
            .collect())
    }

    async fn create_tag(&self, name: &str) -> Result<Tag, KeapError> {
        let answer = self
            .call(Method::POST, "/v1/tags", &[], Some(&json!({"name": name})))
            .await?;
        Ok(Tag {
            id: id_of(&answer, "tag")?,
            name: name.to_owned(),
        })
    }

    async fn apply_tags(&self, contact: ContactId, tags: &[TagId]) -> Result<(), KeapError> {
        if tags.is_empty() {
            return Ok(());
        }
        self.post_items(
            &format!("/v1/contacts/{contact}/tags"),
            &json!({"tagIds": tags}),
        )
        .await
    }

    async fn remove_tags(&self, contact: ContactId, tags: &[TagId]) -> Result<(), KeapError> {
        if tags.is_empty() {
            return Ok(());
        }
        self.call(
            Method::DELETE,
            &format!("/v1/contacts/{contact}/tags"),
            &[("ids", ids_csv(tags))],
            None,
        )
        .await
        .map(|_| ())
    }

    async fn apply_tag_to_contacts(
        &self,
        tag: TagId,
        contacts: &[ContactId],
    ) -> Result<(), KeapError> {
        for chunk in contacts.chunks(MAX_BULK_TAG_CONTACTS) {
            self.post_items(&format!("/v1/tags/{tag}/contacts"), &json!({"ids": chunk}))
                .await?;
        }
        Ok(())
    }

    async fn remove_tag_from_contacts(
        &self,
        tag: TagId,
        contacts: &[ContactId],
    ) -> Result<(), KeapError> {
        for chunk in contacts.chunks(MAX_BULK_TAG_CONTACTS) {
            // The spec declares `ids` as an exploded form array (`ids=1&ids=2`), unlike the
            // per-contact removal, which documents a comma-separated list.
            let query: Vec<(&str, String)> =
                chunk.iter().map(|id| ("ids", id.to_string())).collect();
            self.call(
                Method::DELETE,
                &format!("/v1/tags/{tag}/contacts"),
                &query,
                None,
            )
            .await?;
        }
        Ok(())
    }

    async fn achieve_goal(
        &self,
        contact: ContactId,
        integration: &str,
        call_name: &str,
    ) -> Result<Vec<GoalHit>, KeapError> {
        let path = format!("/v1/campaigns/goals/{integration}/{call_name}");
        let answer = self
            .call(
                Method::POST,
                &path,
                &[],
                Some(&json!({"contact_id": contact})),
            )
            .await?;
        Ok(answer
            .as_array()
            .into_iter()
            .flatten()
            .map(|hit| GoalHit {
                campaign_id: hit["campaign_id"].as_i64().unwrap_or_default(),
                goal_id: hit["goal_id"].as_i64().unwrap_or_default(),
                success: hit["success"].as_bool().unwrap_or(false),
                message: hit["message"].as_str().unwrap_or_default().to_owned(),
            })
            .collect())
    }

    async fn create_note(
        &self,
        contact: ContactId,
        title: &str,
        body: &str,
    ) -> Result<i64, KeapError> {
        let note = json!({"contact_id": contact, "title": title, "body": body, "type": "Other"});
        let answer = self
            .call(Method::POST, "/v1/notes", &[], Some(&note))
            .await?;
        Ok(answer["id"].as_i64().unwrap_or_default())
    }

    async fn custom_fields(&self) -> Result<Vec<CustomField>, KeapError> {
        let answer = self
            .call(Method::GET, "/v1/contacts/model", &[], None)
            .await?;
        Ok(answer["custom_fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                Some(CustomField {
                    id: f["id"].as_i64()?,
                    label: f["label"].as_str()?.to_owned(),
                })
            })
            .collect())
    }

    async fn list_companies(&self) -> Result<Vec<Company>, KeapError> {
        let companies = self.list_all("/v1/companies", "companies", None).await?;
        Ok(companies
            .iter()
            .filter_map(|c| {
                Some(Company {
                    id: c["id"].as_i64()?,
                    name: c["company_name"].as_str()?.to_owned(),
                })
            })
            .collect())
    }

    async fn find_companies_by_name(&self, name: &str) -> Result<Vec<Company>, KeapError> {
        let companies = self
            .list_all("/v1/companies", "companies", Some(("company_name", name)))
            .await?;
        let mut exact: Vec<Company> = companies
            .iter()
            .filter_map(|c| {
                let company_name = c["company_name"].as_str()?;
                // The spec does not say how `company_name` matches; keep exact names only.
                (company_name == name).then(|| {
                    Some(Company {
                        id: c["id"].as_i64()?,
                        name: company_name.to_owned(),
                    })
                })?
            })
            .collect();
        exact.sort_by_key(|c| c.id);
        Ok(exact)
    }

    async fn create_company(&self, name: &str) -> Result<Company, KeapError> {
        let body = json!({ "company_name": name });
        let answer = self
            .call(Method::POST, "/v1/companies", &[], Some(&body))
            .await?;
        Ok(Company {
            id: id_of(&answer, "company")?,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keap::throttle::Budget;

    #[test]
    fn operations_name_the_endpoint_never_its_ids() {
        let cases = [
            (Method::PUT, "/v1/contacts", "contact_upsert"),
            (Method::GET, "/v1/contacts", "contact_find"),
            (Method::GET, "/v1/contacts/model", "contact_model"),
            (Method::GET, "/v1/contacts/1007", "contact_get"),
            (Method::PATCH, "/v1/contacts/1007", "contact_update"),
            (Method::POST, "/v1/contacts/1007/tags", "tags_apply"),
            (Method::DELETE, "/v1/contacts/1007/tags", "tags_remove"),
            (Method::GET, "/v1/tags", "tag_find"),
            (Method::POST, "/v1/tags", "tag_create"),
            (Method::POST, "/v1/tags/5/contacts", "tag_apply_to_contacts"),
            (
                Method::DELETE,
                "/v1/tags/5/contacts",
                "tag_remove_from_contacts",
            ),
            (
                Method::POST,
                "/v1/campaigns/goals/chargify/signup",
                "goal_achieve",
            ),
            (Method::POST, "/v1/notes", "note_create"),
            (Method::GET, "/v1/companies", "company_find"),
            (Method::POST, "/v1/companies", "company_create"),
            (Method::DELETE, "/v1/companies/3", "other"),
        ];
        for (method, path, operation) in cases {
            assert_eq!(operation_of(&method, path), operation, "{method} {path}");
        }
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

    #[test]
    fn per_item_results_are_read_in_either_shape() {
        assert!(refused_items(&json!({"1": "SUCCESS", "2": "DUPLICATE"})).is_empty());
        assert_eq!(
            refused_items(&json!({"1": "SUCCESS", "2": "TAG_ID_NOT_FOUND"})),
            [(2, "TAG_ID_NOT_FOUND".to_owned())]
        );
        assert_eq!(
            refused_items(&json!([{"7": "NO_PERMISSION"}, {"8": "SUCCESS"}])),
            [(7, "NO_PERMISSION".to_owned())]
        );
    }

    #[test]
    fn a_region_travels_only_with_its_country() {
        let without = address_json(&Address {
            region: Some("NC".into()),
            ..Address::default()
        });
        assert_eq!(without, json!({"field": "BILLING"}));
        let nc = |country: &str| Address {
            region: Some("NC".into()),
            country_code: Some(country.into()),
            ..Address::default()
        };
        let with = json!({"field": "BILLING", "region": "NC", "country_code": "USA"});
        assert_eq!(address_json(&nc("USA")), with);
        assert_eq!(address_json(&nc("US")), with, "Chargify's alpha-2");
        for unknown in ["", "  ", "ZZ", "United States"] {
            assert_eq!(
                address_json(&nc(unknown)),
                json!({"field": "BILLING"}),
                "{unknown:?}: neither the country nor the region"
            );
        }
    }

    #[test]
    fn throttles_longer_than_the_limit_go_back_to_the_caller() {
        let long = KeapError::Throttled {
            kind: crate::keap::ThrottleKind::Minute,
            retry_after: Duration::from_secs(59),
            request_id: None,
        };
        assert!(retry_in_process(&long, Duration::from_secs(65)));
        assert!(!retry_in_process(&long, Duration::from_secs(5)));
        let daily = KeapError::DailyQuotaExhausted {
            resets_at: None,
            request_id: None,
        };
        assert!(!retry_in_process(&daily, Duration::from_secs(65)));
    }
}

//! A Chargify (Maxio Advanced Billing) stand-in on 127.0.0.1 for the tests: the REST calls the
//! reconciler and the backfill make, and the webhook deliveries they recover from.
//!
//! - **State**: subscriptions (built from the Maxio spec's example, with their customer and
//!   product), events with increasing ids, and webhooks with a status (`successful`, `failed`,
//!   `pending`, `paused`) and a body signed with the site's shared key.
//! - **REST**: `GET /subscriptions.json`, `GET /subscriptions/{id}.json`, `GET /webhooks.json`,
//!   `POST /webhooks/replay.json`, `GET /events.json`, with the spec's parameters; a parameter
//!   the spec would refuse gets 422 with Chargify's `{"errors": [...]}`. HTTP basic auth with
//!   `api key:x` is enforced (401 otherwise). More than [`StandInConfig::max_concurrent`]
//!   requests in flight get Chargify's 429; injected [`Fault`]s serve others.
//! - **Delivery** ([`ChargifyStandIn::deliver_to`]): every new webhook is POSTed to a URL with
//!   Chargify's retry schedule (5 attempts: at once, then 10, 15, 90 and 180 s after each
//!   failure) compressed by a factor; after 5 failures the webhook is
//!   `failed`; after `pause_after` failed attempts in a row the endpoint pauses and new
//!   webhooks are stored `paused`, never sent, until [`ChargifyStandIn::resume_endpoint`]. A
//!   replay re-sends (even while paused: that is how paused webhooks get out).
//!
//! Everything is bounded: the stored items, the call log, the pages, the retries.

use crate::loopback::LoopbackServer;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use shared::chargify::api::ChargifyClientConfig;
use shared::chargify::snapshot::form_value;
use shared::chargify::FormBody;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The answer Chargify gives a request over its concurrency limit.
pub const TOO_MANY_REQUESTS: &str =
    "Your request was denied due to a usage violation. Please slow down and try again in a few minutes.";
/// Most items of each kind the stand-in stores, and calls it logs.
pub const MAX_ITEMS: usize = 100_000;
pub const MAX_LOGGED_CALLS: usize = 20_000;
/// Chargify's retry schedule: waits before attempts 2 to 5, after the previous failure.
pub const RETRY_SCHEDULE: [Duration; 4] = [
    Duration::from_secs(10),
    Duration::from_secs(15),
    Duration::from_secs(90),
    Duration::from_secs(180),
];
pub const DELIVERY_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone)]
pub struct StandInConfig {
    pub site: String,
    pub api_key: String,
    /// The site's webhook shared key: bodies are signed with it.
    pub shared_key: String,
    /// Chargify allows about 4 concurrent requests per site.
    pub max_concurrent: usize,
    /// Each answer waits this long first, so concurrent requests overlap measurably.
    pub latency: Duration,
}

impl Default for StandInConfig {
    fn default() -> Self {
        Self {
            site: "acme".into(),
            api_key: "standin-api-key".into(),
            shared_key: "standin-shared-key".into(),
            max_concurrent: 4,
            latency: Duration::ZERO,
        }
    }
}

/// Where and how webhooks are delivered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: String,
    /// Multiplies [`RETRY_SCHEDULE`]: `0.001` turns the ~5 minutes into ~0.3 s.
    pub time_scale: f64,
    /// Failed attempts in a row that pause the endpoint (Chargify: 25).
    pub pause_after: u32,
    /// One attempt's time limit (Chargify: about 15 s).
    pub timeout: Duration,
}

impl Delivery {
    pub fn to(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            time_scale: 0.001,
            pause_after: 25,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One injected failure, served instead of the next accepted request's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Chargify's 429, with `Retry-After: n` when given.
    TooManyRequests {
        retry_after: Option<u64>,
    },
    Status(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Clone)]
pub struct StoredWebhook {
    pub id: i64,
    pub event: String,
    pub subscription_id: Option<i64>,
    pub created_at: OffsetDateTime,
    pub status: WebhookStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub last_error_at: Option<OffsetDateTime>,
    pub accepted_at: Option<OffsetDateTime>,
    pub last_sent_at: Option<OffsetDateTime>,
    pub last_sent_url: Option<String>,
    pub body: String,
    pub signature_hmac_sha_256: String,
}

/// A request the stand-in answered.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
}

/// Everything the stand-in knows. Tests read it through [`ChargifyStandIn::state`].
#[derive(Debug)]
pub struct State {
    pub config: StandInConfig,
    /// Subscription id → its JSON (as `GET /subscriptions/{id}.json` has it, unwrapped).
    pub subscriptions: BTreeMap<i64, Value>,
    /// Event JSON objects, ids increasing.
    pub events: Vec<Value>,
    pub webhooks: BTreeMap<i64, StoredWebhook>,
    /// The last [`MAX_LOGGED_CALLS`] calls.
    pub calls: VecDeque<Call>,
    pub calls_total: u64,
    /// 429s served for going over the concurrency limit (injected faults not counted).
    pub throttled: u64,
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub faults: VecDeque<Fault>,
    pub delivery: Option<Delivery>,
    pub paused: bool,
    pub consecutive_failures: u32,
    pub delivery_attempts: u64,
    pub deliveries_running: usize,
    /// Ids passed to `POST /webhooks/replay.json`, in order.
    pub replayed: Vec<i64>,
    /// The stand-in's clock: every change moves it one second on, so times are distinct and
    /// the same test gives the same times.
    pub now: OffsetDateTime,
    next_id: i64,
}

impl State {
    fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn tick(&mut self) -> OffsetDateTime {
        self.now += time::Duration::seconds(1);
        self.now
    }

    /// `webhook id`s of the given status.
    pub fn webhooks_with(&self, status: WebhookStatus) -> Vec<i64> {
        self.webhooks
            .values()
            .filter(|w| w.status == status)
            .map(|w| w.id)
            .collect()
    }
}

struct Shared {
    state: Mutex<State>,
    http: reqwest::Client,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A subscription to create: the Maxio example with these values.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub customer_id: i64,
    pub email: String,
    pub state: String,
    pub product_id: i64,
    pub product_handle: String,
}

impl NewSubscription {
    pub fn new(customer_id: i64, state: &str) -> Self {
        Self {
            customer_id,
            email: format!("customer{customer_id}@example.com"),
            state: state.into(),
            product_id: 3792003,
            product_handle: "basic".into(),
        }
    }
}

pub struct ChargifyStandIn {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: LoopbackServer,
}

impl ChargifyStandIn {
    pub async fn start() -> Self {
        Self::start_with(StandInConfig::default()).await
    }

    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start_with(config: StandInConfig) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                config,
                subscriptions: BTreeMap::new(),
                events: Vec::new(),
                webhooks: BTreeMap::new(),
                calls: VecDeque::new(),
                calls_total: 0,
                throttled: 0,
                in_flight: 0,
                max_in_flight: 0,
                faults: VecDeque::new(),
                delivery: None,
                paused: false,
                consecutive_failures: 0,
                delivery_attempts: 0,
                deliveries_running: 0,
                replayed: Vec::new(),
                now: time::macros::datetime!(2026-11-27 09:00:00 UTC),
                next_id: 1000,
            }),
            http: reqwest::Client::builder()
                .build()
                .expect("an HTTP client for deliveries"),
        });
        let server_shared = Arc::clone(&shared);
        let server = LoopbackServer::start(move |request| {
            let shared = Arc::clone(&server_shared);
            async move { serve(&shared, request).await }
        })
        .await;
        Self {
            addr: server.addr,
            shared,
            _server: server,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration for this stand-in, with short backoffs so tests stay quick.
    pub fn client_config(&self) -> ChargifyClientConfig {
        let mut config =
            ChargifyClientConfig::new(self.base_url(), self.state().config.api_key.clone());
        config.min_backoff = Duration::from_millis(20);
        config.max_backoff = Duration::from_millis(200);
        config.request_timeout = Duration::from_secs(10);
        config
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    pub fn inject(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    pub fn calls_total(&self) -> u64 {
        self.state().calls_total
    }

    pub fn throttled(&self) -> u64 {
        self.state().throttled
    }

    pub fn max_in_flight(&self) -> usize {
        self.state().max_in_flight
    }

    /// Adds a subscription (no event, no webhook: it existed before the sync). Returns its id.
    pub fn add_subscription(&self, new: NewSubscription) -> i64 {
        let mut s = self.state();
        assert!(s.subscriptions.len() < MAX_ITEMS, "stand-in full");
        let id = s.next_id();
        let now = s.tick();
        let mut sub =
            shared::fixtures::api_subscription(id, new.customer_id, &new.state, &rfc3339(now));
        sub["previous_state"] = Value::Null;
        sub["created_at"] = rfc3339(now).into();
        sub["customer"]["email"] = new.email.into();
        sub["customer"]["reference"] = format!("ref-{}", new.customer_id).into();
        sub["product"]["id"] = new.product_id.into();
        sub["product"]["handle"] = new.product_handle.into();
        sub["credit_card"]["customer_id"] = new.customer_id.into();
        s.subscriptions.insert(id, sub);
        id
    }

    /// The subscription's JSON, if it exists.
    pub fn subscription(&self, id: i64) -> Option<Value> {
        self.state().subscriptions.get(&id).cloned()
    }

    /// Moves a subscription to `state` (its `updated_at` moves on), records the
    /// `subscription_state_change` event and its webhook (delivered if delivery is on).
    /// Returns `(event id, webhook id)`.
    pub fn change_state(&self, subscription_id: i64, state: &str) -> (i64, i64) {
        {
            let mut s = self.state();
            let now = s.tick();
            let Some(sub) = s.subscriptions.get_mut(&subscription_id) else {
                panic!("no subscription {subscription_id}");
            };
            let previous = sub["state"].clone();
            sub["previous_state"] = previous;
            sub["state"] = state.into();
            sub["updated_at"] = rfc3339(now).into();
        }
        self.emit(subscription_id, "subscription_state_change")
    }

    /// Records event `key` about a subscription as it is now, and its webhook (a body derived
    /// from the bundled real body of that event, else of a state change, signed with the
    /// shared key), delivered when delivery is on. Returns `(event id, webhook id)`.
    pub fn emit(&self, subscription_id: i64, key: &str) -> (i64, i64) {
        let (event_id, webhook_id, send) = {
            let mut s = self.state();
            assert!(
                s.events.len() < MAX_ITEMS && s.webhooks.len() < MAX_ITEMS,
                "stand-in full"
            );
            let Some(sub) = s.subscriptions.get(&subscription_id).cloned() else {
                panic!("no subscription {subscription_id}");
            };
            let now = s.tick();
            let event_id = s.next_id();
            let event_specific_data = if key == "subscription_state_change" {
                json!({
                    "previous_subscription_state": sub["previous_state"],
                    "new_subscription_state": sub["state"],
                })
            } else {
                Value::Null
            };
            s.events.push(json!({
                "id": event_id,
                "key": key,
                "message": format!("{key} on subscription {subscription_id}"),
                "subscription_id": subscription_id,
                "customer_id": sub["customer"]["id"],
                "created_at": rfc3339(now),
                "event_specific_data": event_specific_data,
            }));
            let webhook_id = s.next_id();
            let body = webhook_body(&s.config.site, webhook_id, key, event_id, &sub);
            let signature =
                shared::chargify::signature::sign(&s.config.shared_key, body.as_bytes());
            let (status, send) = match (&s.delivery, s.paused) {
                (Some(_), true) => (WebhookStatus::Paused, false),
                (Some(_), false) => (WebhookStatus::Pending, true),
                (None, _) => (WebhookStatus::Pending, false),
            };
            s.webhooks.insert(
                webhook_id,
                StoredWebhook {
                    id: webhook_id,
                    event: key.to_owned(),
                    subscription_id: Some(subscription_id),
                    created_at: now,
                    status,
                    attempts: 0,
                    last_error: None,
                    last_error_at: None,
                    accepted_at: None,
                    last_sent_at: None,
                    last_sent_url: None,
                    body,
                    signature_hmac_sha_256: signature,
                },
            );
            (event_id, webhook_id, send)
        };
        if send {
            spawn_delivery(&self.shared, webhook_id, false);
        }
        (event_id, webhook_id)
    }

    /// Turns delivery on: new webhooks are POSTed to `delivery.url`.
    pub fn deliver_to(&self, delivery: Delivery) {
        self.state().delivery = Some(delivery);
    }

    /// What editing the endpoint's URL does in Chargify: the endpoint is active again and the
    /// failure count starts over. Webhooks stored `paused` stay so until replayed.
    pub fn resume_endpoint(&self) {
        let mut s = self.state();
        s.paused = false;
        s.consecutive_failures = 0;
    }

    /// Waits until no delivery is running (bounded by `timeout`). True when idle.
    pub async fn wait_deliveries_idle(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if self.state().deliveries_running == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// `2026-11-27 10:00:00 +0000`, as webhook bodies carry times.
fn webhook_time(at: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
    );
    at.format(format).unwrap_or_default()
}

/// The body Chargify would send for `key` about `sub`: the bundled real body of that event
/// (else of a state change), with this webhook's ids and the subscription's current values.
fn webhook_body(site: &str, webhook_id: i64, key: &str, event_id: i64, sub: &Value) -> String {
    let base = shared::fixtures::ALL
        .iter()
        .find(|(name, _)| *name == key)
        .map_or(shared::fixtures::SUBSCRIPTION_STATE_CHANGE, |(_, body)| {
            body
        });
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let updated_at = sub["updated_at"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .map(webhook_time)
        .unwrap_or_default();
    let fields: Vec<(&str, String)> = vec![
        ("payload[site][subdomain]", site.to_owned()),
        ("payload[subscription][id]", text(&sub["id"])),
        ("payload[subscription][state]", text(&sub["state"])),
        (
            "payload[subscription][previous_state]",
            text(&sub["previous_state"]),
        ),
        ("payload[subscription][updated_at]", updated_at),
        (
            "payload[subscription][customer][id]",
            text(&sub["customer"]["id"]),
        ),
        (
            "payload[subscription][customer][email]",
            text(&sub["customer"]["email"]),
        ),
        (
            "payload[subscription][product][id]",
            text(&sub["product"]["id"]),
        ),
        (
            "payload[subscription][product][handle]",
            text(&sub["product"]["handle"]),
        ),
        ("payload[event_id]", event_id.to_string()),
    ];
    let encoded: Vec<(&str, String)> = fields.iter().map(|(k, v)| (*k, form_value(v))).collect();
    let borrowed: Vec<(&str, &str)> = encoded.iter().map(|(k, v)| (*k, v.as_str())).collect();
    shared::fixtures::derive(base, &webhook_id.to_string(), key, &borrowed)
}

fn spawn_delivery(shared: &Arc<Shared>, webhook_id: i64, replay: bool) {
    shared.lock().deliveries_running += 1;
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        deliver(&shared, webhook_id, replay).await;
        shared.lock().deliveries_running -= 1;
    });
}

/// Up to [`DELIVERY_ATTEMPTS`] POSTs on Chargify's schedule; only `200` is an acceptance.
async fn deliver(shared: &Shared, webhook_id: i64, replay: bool) {
    for attempt in 1..=DELIVERY_ATTEMPTS {
        if attempt > 1 {
            let scale = shared
                .lock()
                .delivery
                .as_ref()
                .map_or(0.0, |d| d.time_scale);
            let wait = RETRY_SCHEDULE[attempt as usize - 2].mul_f64(scale.max(0.0));
            tokio::time::sleep(wait).await;
        }
        let (delivery, body, signature) = {
            let mut s = shared.lock();
            let Some(delivery) = s.delivery.clone() else {
                return;
            };
            // A paused endpoint sends nothing more on its own; a replay is sent anyway.
            let paused = s.paused && !replay;
            let Some(hook) = s.webhooks.get_mut(&webhook_id) else {
                return;
            };
            if paused {
                hook.status = WebhookStatus::Paused;
                return;
            }
            (
                delivery,
                hook.body.clone(),
                hook.signature_hmac_sha_256.clone(),
            )
        };
        let answer = shared
            .http
            .post(&delivery.url)
            .timeout(delivery.timeout)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-chargify-webhook-id", webhook_id.to_string())
            .header("x-chargify-webhook-signature-hmac-sha-256", signature)
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16());
        let mut s = shared.lock();
        let now = s.tick();
        s.delivery_attempts += 1;
        let pause_after = delivery.pause_after.max(1);
        let accepted = matches!(answer, Ok(200));
        if accepted {
            s.consecutive_failures = 0;
        } else {
            s.consecutive_failures += 1;
            if s.consecutive_failures >= pause_after {
                s.paused = true;
            }
        }
        let Some(hook) = s.webhooks.get_mut(&webhook_id) else {
            return;
        };
        hook.attempts += 1;
        hook.last_sent_at = Some(now);
        hook.last_sent_url = Some(delivery.url.clone());
        if accepted {
            hook.status = WebhookStatus::Successful;
            hook.accepted_at = Some(now);
            return;
        }
        hook.last_error = Some(match answer {
            Ok(code) => format!("{code} (retry {attempt} of {DELIVERY_ATTEMPTS})"),
            Err(_) => format!("connection failed (retry {attempt} of {DELIVERY_ATTEMPTS})"),
        });
        hook.last_error_at = Some(now);
    }
    if let Some(hook) = shared.lock().webhooks.get_mut(&webhook_id) {
        hook.status = WebhookStatus::Failed;
    }
}

async fn serve(
    shared: &Arc<Shared>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // The concurrency limit comes first: Chargify counts requests, good or bad.
    let (latency, api_key) = {
        let mut s = shared.lock();
        if s.in_flight >= s.config.max_concurrent {
            s.throttled += 1;
            drop(s);
            return log(shared, &method, &path, &query, too_many(None));
        }
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        (s.config.latency, s.config.api_key.clone())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    // Taken in its own statement: a guard in an `if let` would live through the branches.
    let fault = shared.lock().faults.pop_front();
    let answer = if !authorized(authorization.as_deref(), &api_key) {
        text_response(401, "HTTP Basic: Access denied.\n")
    } else if let Some(fault) = fault {
        match fault {
            Fault::TooManyRequests { retry_after } => too_many(retry_after),
            Fault::Status(status) => json_response(status, json!({"errors": ["injected failure"]})),
        }
    } else {
        let params = FormBody::parse(query.as_deref().unwrap_or("").as_bytes()).unwrap_or_default();
        route(shared, &method, &path, &params, &body)
    };
    shared.lock().in_flight -= 1;
    log(shared, &method, &path, &query, answer)
}

fn log(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &Option<String>,
    answer: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    let mut s = shared.lock();
    s.calls_total += 1;
    if s.calls.len() >= MAX_LOGGED_CALLS {
        s.calls.pop_front();
    }
    s.calls.push_back(Call {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.clone(),
        status: answer.status().as_u16(),
    });
    answer
}

fn authorized(header: Option<&str>, api_key: &str) -> bool {
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .is_some_and(|pair| pair == format!("{api_key}:x"))
}

fn route(
    shared: &Arc<Shared>,
    method: &str,
    path: &str,
    params: &FormBody,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let result = match (method, path) {
        ("GET", "/subscriptions.json") => list_subscriptions(&shared.lock(), params),
        ("GET", "/webhooks.json") => list_webhooks(&shared.lock(), params),
        ("POST", "/webhooks/replay.json") => replay(shared, body),
        ("GET", "/events.json") => list_events(&shared.lock(), params),
        ("GET", _) if path.starts_with("/subscriptions/") && path.ends_with(".json") => {
            let id = &path["/subscriptions/".len()..path.len() - ".json".len()];
            let s = shared.lock();
            match id
                .parse::<i64>()
                .ok()
                .and_then(|id| s.subscriptions.get(&id))
            {
                Some(sub) => Ok(json!({ "subscription": sub })),
                None => Err((404, "Not Found".to_owned())),
            }
        }
        _ => Err((404, "Not Found".to_owned())),
    };
    match result {
        Ok(value) => json_response(200, value),
        Err((status, message)) => json_response(status, json!({ "errors": [message] })),
    }
}

type Answer = Result<Value, (u16, String)>;

fn unprocessable(message: impl Into<String>) -> (u16, String) {
    (422, message.into())
}

/// `page` (1-based) and `per_page` (1–200), as the spec bounds them.
fn paging(params: &FormBody, default_per_page: usize) -> Result<(usize, usize), (u16, String)> {
    let number = |name: &str, default: usize, max: usize| -> Result<usize, (u16, String)> {
        match params.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    unprocessable(format!("{name} must be a whole number from 1 to {max}"))
                }),
        }
    };
    Ok((
        number("page", 1, 1_000_000)?,
        number("per_page", default_per_page, 200)?,
    ))
}

fn page_of<T: Clone>(items: &[T], page: usize, per_page: usize) -> Vec<T> {
    items
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .cloned()
        .collect()
}

fn one_of<'a>(
    params: &'a FormBody,
    name: &str,
    allowed: &[&str],
) -> Result<Option<&'a str>, (u16, String)> {
    match params.get(name) {
        None => Ok(None),
        Some(value) if allowed.contains(&value) => Ok(Some(value)),
        Some(value) => Err(unprocessable(format!(
            "{name} `{value}` is not one of {}",
            allowed.join(", ")
        ))),
    }
}

fn parse_time(value: &Value) -> Option<OffsetDateTime> {
    value
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
}

/// `YYYY-MM-DD HH:MM:SS`, in the site's zone (UTC here), or with an explicit offset.
fn parse_start_datetime(text: &str) -> Option<OffsetDateTime> {
    let plain = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(text, plain)
        .map(|t| t.assume_utc())
        .ok()
        .or_else(|| shared::rules::template::parse_chargify_time(text))
}

fn parse_date(text: &str) -> Option<time::Date> {
    time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()
}

const SUBSCRIPTION_STATE_FILTERS: &[&str] = &[
    "active",
    "canceled",
    "expired",
    "expired_cards",
    "on_hold",
    "past_due",
    "pending_cancellation",
    "pending_renewal",
    "suspended",
    "trial_ended",
    "trialing",
    "unpaid",
];
const SUBSCRIPTION_DATE_FIELDS: &[&str] = &[
    "current_period_ends_at",
    "current_period_starts_at",
    "created_at",
    "activated_at",
    "canceled_at",
    "expires_at",
    "trial_started_at",
    "trial_ended_at",
    "updated_at",
];
const SUBSCRIPTION_SORTS: &[&str] = &[
    "signup_date",
    "period_start",
    "period_end",
    "next_assessment",
    "updated_at",
    "created_at",
];

fn list_subscriptions(s: &State, params: &FormBody) -> Answer {
    let (page, per_page) = paging(params, 20)?;
    let state = one_of(params, "state", SUBSCRIPTION_STATE_FILTERS)?;
    let product = match params.get("product") {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| unprocessable("product must be an id"))?,
        ),
    };
    let date_field = one_of(params, "date_field", SUBSCRIPTION_DATE_FIELDS)?;
    let start = match params.get("start_datetime") {
        None => None,
        Some(text) => Some(
            parse_start_datetime(text)
                .ok_or_else(|| unprocessable("start_datetime must be YYYY-MM-DD HH:MM:SS"))?,
        ),
    };
    let sort = one_of(params, "sort", SUBSCRIPTION_SORTS)?.unwrap_or("signup_date");
    let descending = one_of(params, "direction", &["asc", "desc"])? == Some("desc");
    let mut items: Vec<&Value> =
        s.subscriptions
            .values()
            .filter(|sub| state.is_none_or(|st| sub["state"] == st))
            .filter(|sub| product.is_none_or(|p| sub["product"]["id"] == p))
            .filter(|sub| match start {
                None => true,
                Some(start) => parse_time(&sub[date_field.unwrap_or("created_at")])
                    .is_some_and(|at| at >= start),
            })
            .collect();
    let key = |sub: &Value| -> (Option<OffsetDateTime>, i64) {
        let field = match sort {
            "updated_at" => "updated_at",
            "signup_date" | "created_at" => "created_at",
            "period_start" => "current_period_started_at",
            "period_end" => "current_period_ends_at",
            _ => "next_assessment_at",
        };
        (
            parse_time(&sub[field]),
            sub["id"].as_i64().unwrap_or_default(),
        )
    };
    // Each key parses two times: once per item, not once per comparison (10,000 items).
    items.sort_by_cached_key(|sub| key(sub));
    if descending {
        items.reverse();
    }
    let page = page_of(&items, page, per_page);
    Ok(Value::Array(
        page.into_iter()
            .map(|sub| json!({ "subscription": sub }))
            .collect(),
    ))
}

fn webhook_json(hook: &StoredWebhook) -> Value {
    let time = |t: Option<OffsetDateTime>| t.map(rfc3339);
    json!({ "webhook": {
        "event": hook.event,
        "id": hook.id,
        "created_at": rfc3339(hook.created_at),
        "last_error": hook.last_error,
        "last_error_at": time(hook.last_error_at),
        "accepted_at": time(hook.accepted_at),
        "last_sent_at": time(hook.last_sent_at),
        "last_sent_url": hook.last_sent_url,
        "successful": hook.status == WebhookStatus::Successful,
        "body": hook.body,
        "signature": "",
        "signature_hmac_sha_256": hook.signature_hmac_sha_256,
    }})
}

fn list_webhooks(s: &State, params: &FormBody) -> Answer {
    let (page, per_page) = paging(params, 20)?;
    let status = one_of(
        params,
        "status",
        &["successful", "failed", "pending", "paused"],
    )?;
    let date = |name: &str| -> Result<Option<time::Date>, (u16, String)> {
        params
            .get(name)
            .map(|t| {
                parse_date(t).ok_or_else(|| unprocessable(format!("{name} must be YYYY-MM-DD")))
            })
            .transpose()
    };
    let (since, until) = (date("since_date")?, date("until_date")?);
    let subscription = match params.get("subscription") {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| unprocessable("subscription must be an id"))?,
        ),
    };
    let newest_first =
        one_of(params, "order", &["newest_first", "oldest_first"])? != Some("oldest_first");
    let mut items: Vec<&StoredWebhook> = s
        .webhooks
        .values()
        .filter(|w| status.is_none_or(|st| w.status.as_str() == st))
        .filter(|w| since.is_none_or(|d| w.created_at.date() >= d))
        .filter(|w| until.is_none_or(|d| w.created_at.date() <= d))
        .filter(|w| subscription.is_none_or(|id| w.subscription_id == Some(id)))
        .collect();
    if newest_first {
        items.reverse();
    }
    let page = page_of(&items, page, per_page);
    Ok(Value::Array(page.into_iter().map(webhook_json).collect()))
}

fn replay(shared: &Arc<Shared>, body: &[u8]) -> Answer {
    let ids: Vec<i64> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("ids").cloned())
        .and_then(|ids| serde_json::from_value(ids).ok())
        .ok_or_else(|| unprocessable("ids must be an array of webhook ids"))?;
    if ids.is_empty() || ids.len() > 1000 {
        return Err(unprocessable("ids must hold 1 to 1000 webhook ids"));
    }
    let mut send = Vec::new();
    {
        let mut s = shared.lock();
        let delivering = s.delivery.is_some();
        for id in &ids {
            s.replayed.push(*id);
            if let Some(hook) = s.webhooks.get_mut(id) {
                // Replay keeps the id and clears `accepted_at` until accepted again.
                hook.status = WebhookStatus::Pending;
                hook.accepted_at = None;
                if delivering {
                    send.push(*id);
                }
            }
        }
    }
    for id in send {
        spawn_delivery(shared, id, true);
    }
    Ok(json!({ "status": "ok" }))
}

fn list_events(s: &State, params: &FormBody) -> Answer {
    let (page, per_page) = paging(params, 20)?;
    let bound = |name: &str| -> Result<Option<i64>, (u16, String)> {
        params
            .get(name)
            .map(|t| {
                t.parse::<i64>()
                    .map_err(|_| unprocessable(format!("{name} must be an id")))
            })
            .transpose()
    };
    let (since, max) = (bound("since_id")?, bound("max_id")?);
    let descending = one_of(params, "direction", &["asc", "desc"])? != Some("asc");
    let filter: Vec<&str> = params
        .get("filter")
        .map(|f| {
            f.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut items: Vec<&Value> = s
        .events
        .iter()
        .filter(|e| {
            let id = e["id"].as_i64().unwrap_or_default();
            since.is_none_or(|s| id >= s) && max.is_none_or(|m| id <= m)
        })
        .filter(|e| filter.is_empty() || e["key"].as_str().is_some_and(|k| filter.contains(&k)))
        .collect();
    if descending {
        items.reverse();
    }
    let page = page_of(&items, page, per_page);
    Ok(Value::Array(
        page.into_iter().map(|e| json!({ "event": e })).collect(),
    ))
}

fn too_many(retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = json_response(429, json!({ "errors": [TOO_MANY_REQUESTS] }));
    if let Some(seconds) = retry_after {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}

fn json_response(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn text_response(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

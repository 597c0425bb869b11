//! The ingest use case: a webhook request in, a queued message and an HTTP answer out.
//!
//! Transport-free, so the Lambda entrypoint and any local server share every decision. The
//! order of checks is deliberate: cheap refusals first, no HMAC over oversized bodies, and
//! nothing read from the body before a key verifies it.
//!
//! Two layers: [`IngestService::accept`] turns a signed body into the message to queue, or a
//! [`Refusal`] that says why not (the reconciler calls it for the bodies Chargify stored);
//! [`IngestService::handle`] wraps it in the HTTP checks and answers, logs and counts.
//!
//! | answer | when | enqueued |
//! |---|---|---|
//! | 200 `enqueued` | verified, parsed, and SQS stored it (or already had it: FIFO dedup) | yes |
//! | 200 `test_acknowledged` | verified Chargify `test` webhook | no |
//! | 400 | verified, but not a form, `id`/`event` missing or malformed, or an `id` that is not a positive whole number | no |
//! | 400 | verified, but a key nested deeper than [`MAX_FORM_DEPTH`](crate::chargify::MAX_FORM_DEPTH) or more than [`MAX_FORM_FIELDS`](crate::chargify::MAX_FORM_FIELDS) pairs (`body_too_deep`, `body_too_many_fields`): checked before the body is read as a tree | no |
//! | 401 | signature missing, malformed, wrong, or a site-bound key signing for another site | no |
//! | 405 | method other than POST | no |
//! | 413 | body above [`MAX_BODY_BYTES`] or an envelope above the SQS limit | no |
//! | 503 | SQS did not store it; Chargify retries | no |

use crate::chargify::signature::{SIGNATURE_HEADER, SIGNATURE_QUERY_PARAM};
use crate::chargify::{
    FormBody, FormLimitError, FormLimits, SharedKeySet, SignatureCandidate, SignatureError,
    SignatureSource, Webhook, WebhookError,
};
use crate::envelope::{WebhookEnvelope, ENVELOPE_VERSION, MAX_BODY_BYTES, SQS_MAX_MESSAGE_BYTES};
use crate::queue::{OutboundMessage, QueueError, WebhookQueue};
use http::{HeaderMap, Method};
use serde_json::json;
use std::time::Instant;
use time::OffsetDateTime;

/// How a request ended. `code()` is the `outcome` field of the log line and the metric
/// dimension.
#[derive(Debug)]
pub enum Outcome {
    Enqueued {
        message_id: String,
    },
    TestAcknowledged,
    MethodNotAllowed,
    TooLarge {
        bytes: usize,
    },
    Unauthorized(SignatureError),
    SiteMismatch,
    BadBody(WebhookError),
    /// Verified, but shaped like no webhook: too deep or too many fields.
    BodyShape(FormLimitError),
    QueueFailed(QueueError),
}

impl Outcome {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Enqueued { .. } => "enqueued",
            Self::TestAcknowledged => "test_acknowledged",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge { .. } => "body_too_large",
            Self::Unauthorized(e) => e.code(),
            Self::SiteMismatch => "signature_site_mismatch",
            Self::BadBody(e) => e.code(),
            Self::BodyShape(e) => e.code(),
            Self::QueueFailed(e) => e.code(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Enqueued { .. } | Self::TestAcknowledged => 200,
            Self::BadBody(_) | Self::BodyShape(_) => 400,
            Self::Unauthorized(_) | Self::SiteMismatch => 401,
            Self::MethodNotAllowed => 405,
            Self::TooLarge { .. } => 413,
            Self::QueueFailed(_) => 503,
        }
    }

    /// The text sent back. Refusals say what was wrong with the request, never which keys
    /// exist or why a queue failed inside.
    fn message(&self) -> String {
        match self {
            Self::Enqueued { .. } => "webhook accepted".into(),
            Self::TestAcknowledged => "test webhook received; signature verified".into(),
            Self::MethodNotAllowed => "only POST is accepted".into(),
            Self::TooLarge { bytes } => {
                format!("body of {bytes} bytes is above the {MAX_BODY_BYTES}-byte limit")
            }
            Self::Unauthorized(e) => e.to_string(),
            Self::SiteMismatch => "the key that signed this webhook belongs to another site".into(),
            Self::BadBody(e) => e.to_string(),
            Self::BodyShape(e) => e.to_string(),
            Self::QueueFailed(_) => "temporarily unable to store the webhook; retry later".into(),
        }
    }
}

/// What to send back, and what happened.
#[derive(Debug)]
pub struct IngestReply {
    pub outcome: Outcome,
    pub webhook_id: Option<String>,
    pub event: Option<String>,
}

impl IngestReply {
    pub fn status(&self) -> u16 {
        self.outcome.status()
    }

    /// Headers every transport sends with the answer: JSON, and `Allow: POST` on a 405.
    pub fn headers(&self) -> Vec<(&'static str, &'static str)> {
        let mut headers = vec![("content-type", "application/json")];
        if self.status() == 405 {
            headers.push(("allow", "POST"));
        }
        headers
    }

    /// JSON body: `{"outcome": …, "message": …, "webhook_id": …}`.
    pub fn body(&self) -> String {
        json!({
            "outcome": self.outcome.code(),
            "message": self.outcome.message(),
            "webhook_id": self.webhook_id,
        })
        .to_string()
    }
}

/// A request as any transport sees it.
#[derive(Debug)]
pub struct InboundRequest<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// Values of the `signature_hmac_sha_256` query parameter, if any.
    pub query_signatures: Vec<&'a str>,
    /// The body as received, already base64-decoded if the event said `isBase64Encoded`.
    pub body: &'a [u8],
}

/// The ingest use case over a queue port.
pub struct IngestService<Q> {
    keys: SharedKeySet,
    queue: Q,
}

impl<Q: WebhookQueue> IngestService<Q> {
    pub fn new(keys: SharedKeySet, queue: Q) -> Self {
        Self { keys, queue }
    }

    pub fn queue(&self) -> &Q {
        &self.queue
    }

    /// Handles one request and writes its one log line and metrics.
    pub async fn handle(&self, request: InboundRequest<'_>) -> IngestReply {
        let started = Instant::now();
        let reply = self.decide(&request).await;
        record(&reply, request.body.len(), started);
        reply
    }

    async fn decide(&self, request: &InboundRequest<'_>) -> IngestReply {
        match self.prepare(request) {
            Prepared::Reply(reply) => reply,
            Prepared::Send {
                message,
                webhook_id,
                event,
            } => IngestReply {
                outcome: match self.queue.send(&message).await {
                    Ok(sent) => Outcome::Enqueued {
                        message_id: sent.message_id,
                    },
                    Err(e) => Outcome::QueueFailed(e),
                },
                webhook_id: Some(webhook_id),
                event: Some(event),
            },
        }
    }

    /// Every decision that needs no I/O: the method, then [`Self::accept`] on the body and
    /// the signatures the request presents. Public so the benchmark measures exactly the
    /// per-webhook CPU work.
    pub fn prepare(&self, request: &InboundRequest<'_>) -> Prepared {
        if request.method != Method::POST {
            return Prepared::Reply(IngestReply {
                outcome: Outcome::MethodNotAllowed,
                webhook_id: None,
                event: None,
            });
        }
        match self.accept(request.body, &signature_candidates(request)) {
            Ok(accepted) => Prepared::Send {
                webhook_id: accepted.envelope.webhook_id,
                event: accepted.envelope.event,
                message: accepted.message,
            },
            Err(refusal) => Prepared::Reply(refusal.into()),
        }
    }

    /// A signed body in, the message to queue out: the body's size bounded, the signature
    /// verified against `signatures` (as presented, not yet checked), the form parsed and bounded, the webhook
    /// read and checked, the envelope built and measured against the queue's limit. No HTTP
    /// and no I/O, so the reconciler puts a stored webhook through exactly ingest's checks.
    pub fn accept(
        &self,
        body: &[u8],
        signatures: &[SignatureCandidate<'_>],
    ) -> Result<Accepted, Refusal> {
        // Before any HMAC: an oversized body costs no key a pass over it.
        if body.len() > MAX_BODY_BYTES {
            return Err(Refusal::TooLarge { bytes: body.len() });
        }
        // The claimed site only decides which keys are tried first; it is not trusted.
        let verified = self.keys.verify(body, signatures, site_hint(body))?;
        let form = FormBody::parse(body).map_err(WebhookError::NotAForm)?;
        // Before anything reads the form: its shape bounds every walk that follows.
        form.check_limits(FormLimits::WEBHOOK)?;
        let webhook = Webhook::from_form(form)?;
        let refuse = |reason| Refusal::Webhook {
            webhook_id: webhook.id.clone(),
            event: webhook.event.clone(),
            reason,
        };
        if verified
            .site_conflict(webhook.site_subdomain.as_deref())
            .is_some()
        {
            return Err(refuse(NotQueued::SiteMismatch));
        }
        // A snapshot is made from Chargify's API by our own side; one posted here is forged
        // or a mistake, whoever signed it.
        if crate::chargify::webhook::is_internal_event(&webhook.event) {
            let error = WebhookError::InternalEvent(webhook.event.clone());
            return Err(refuse(NotQueued::Invalid(error)));
        }
        // Chargify numbers its webhooks; any other id was not made by Chargify, and would
        // give the same webhook several deduplication ids (`7`, `007`).
        if !crate::chargify::webhook::is_chargify_webhook_id(&webhook.id) {
            return Err(refuse(NotQueued::Invalid(WebhookError::NotAChargifyId)));
        }
        if webhook.is_test() {
            return Err(refuse(NotQueued::Test));
        }
        // FormBody::parse succeeded, so the body is UTF-8; the fallback is unreachable.
        let raw_body = std::str::from_utf8(body)
            .map(str::to_owned)
            .unwrap_or_default();
        let envelope = WebhookEnvelope::new(
            &webhook,
            raw_body,
            verified.key,
            verified.source,
            OffsetDateTime::now_utc(),
        );
        let message = outbound_message(&envelope);
        if message.body.len() > SQS_MAX_MESSAGE_BYTES {
            return Err(refuse(NotQueued::TooLarge { bytes: body.len() }));
        }
        Ok(Accepted { envelope, message })
    }
}

/// A verified webhook, ready for the queue.
#[derive(Debug)]
pub struct Accepted {
    pub envelope: WebhookEnvelope,
    /// [`outbound_message`] of `envelope`: serialised once, and within the queue's limit.
    pub message: OutboundMessage,
}

/// Why [`IngestService::accept`] puts a signed body on no queue.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The body is above [`MAX_BODY_BYTES`]; nothing of it was read.
    #[error("body of {bytes} bytes is above the {MAX_BODY_BYTES}-byte limit")]
    TooLarge { bytes: usize },
    /// No presented signature verifies the body with a configured key.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Verified, but shaped like no webhook: too deep or too many fields.
    #[error(transparent)]
    Shape(#[from] FormLimitError),
    /// Verified, but not a form, or `id`/`event` missing or malformed.
    #[error(transparent)]
    Body(#[from] WebhookError),
    /// A webhook read far enough to know its id and event, that is not queued.
    #[error("webhook {webhook_id} ({event}): {reason}")]
    Webhook {
        webhook_id: String,
        event: String,
        reason: NotQueued,
    },
}

/// Why a verified, readable webhook is not queued.
#[derive(Debug, thiserror::Error)]
pub enum NotQueued {
    #[error("the key that signed it belongs to another site")]
    SiteMismatch,
    /// An event only our own side makes, or an id Chargify does not make.
    #[error(transparent)]
    Invalid(WebhookError),
    /// Chargify's "Test" button: verified, and nothing to apply.
    #[error("Chargify's test webhook; nothing to apply")]
    Test,
    /// Its envelope, JSON-escaped, is above the queue's message limit.
    #[error("the envelope of its {bytes}-byte body is above the queue's message limit")]
    TooLarge { bytes: usize },
}

/// The HTTP answer to a refusal: the existing outcome codes, with the webhook's id and event
/// once the body was read far enough to know them.
impl From<Refusal> for IngestReply {
    fn from(refusal: Refusal) -> Self {
        let (webhook_id, event) = match &refusal {
            Refusal::Webhook {
                webhook_id, event, ..
            } => (Some(webhook_id.clone()), Some(event.clone())),
            _ => (None, None),
        };
        Self {
            outcome: refusal.into(),
            webhook_id,
            event,
        }
    }
}

impl From<Refusal> for Outcome {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TooLarge { bytes } => Self::TooLarge { bytes },
            Refusal::Signature(e) => Self::Unauthorized(e),
            Refusal::Shape(e) => Self::BodyShape(e),
            Refusal::Body(e) => Self::BadBody(e),
            Refusal::Webhook { reason, .. } => match reason {
                NotQueued::SiteMismatch => Self::SiteMismatch,
                NotQueued::Invalid(e) => Self::BadBody(e),
                NotQueued::Test => Self::TestAcknowledged,
                NotQueued::TooLarge { bytes } => Self::TooLarge { bytes },
            },
        }
    }
}

/// The queue message for an envelope: FIFO group and deduplication id from the envelope, and
/// the event key and envelope version as attributes. Public so the processor's test events
/// are built exactly as ingest builds its messages.
pub fn outbound_message(envelope: &WebhookEnvelope) -> OutboundMessage {
    OutboundMessage {
        group_id: envelope.message_group_id(),
        deduplication_id: envelope.deduplication_id(),
        body: envelope.to_json(),
        attributes: vec![
            ("event".into(), envelope.event.clone()),
            ("envelope_version".into(), ENVELOPE_VERSION.to_string()),
        ],
    }
}

/// The result of [`IngestService::prepare`]: a message to send, or the answer already known.
#[derive(Debug)]
pub enum Prepared {
    /// Send `message`; the webhook's id and event go into the answer.
    Send {
        message: OutboundMessage,
        webhook_id: String,
        event: String,
    },
    Reply(IngestReply),
}

fn signature_candidates<'a>(request: &InboundRequest<'a>) -> Vec<SignatureCandidate<'a>> {
    // Bounded: a request cannot make us try an unbounded number of signatures.
    const MAX_CANDIDATES: usize = 4;
    let headers = request
        .headers
        .get_all(SIGNATURE_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|value| SignatureCandidate {
            source: SignatureSource::Header,
            value,
        });
    let queries = request
        .query_signatures
        .iter()
        .map(|value| SignatureCandidate {
            source: SignatureSource::QueryParameter,
            value,
        });
    headers.chain(queries).take(MAX_CANDIDATES).collect()
}

/// The subdomain an unverified body claims, found without parsing the whole body.
fn site_hint(body: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"payload[site][subdomain]=";
    body.split(|b| *b == b'&')
        .find_map(|pair| pair.strip_prefix(KEY))
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Pulls `signature_hmac_sha_256` values out of a raw query string.
pub fn query_signatures(raw_query: Option<&str>) -> Vec<String> {
    let Some(query) = raw_query else {
        return Vec::new();
    };
    crate::chargify::FormBody::parse(query.as_bytes())
        .map(|form| {
            form.get_all(SIGNATURE_QUERY_PARAM)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// One JSON log line per request (no body, no personal data: ids, event key and outcome
/// only), and the request's metrics.
fn record(reply: &IngestReply, bytes: usize, started: Instant) {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let outcome = reply.outcome.code();
    let status = reply.status();
    let webhook_id = reply.webhook_id.as_deref().unwrap_or("");
    let event = reply.event.as_deref().unwrap_or("");
    match &reply.outcome {
        Outcome::Enqueued { message_id } => tracing::info!(
            webhook_id, event, outcome, status, bytes, latency_ms, message_id = message_id.as_str(),
            "webhook enqueued"
        ),
        Outcome::TestAcknowledged => {
            tracing::info!(webhook_id, event, outcome, status, bytes, latency_ms, "test webhook acknowledged")
        }
        Outcome::QueueFailed(error) => tracing::error!(
            webhook_id, event, outcome, status, bytes, latency_ms, error = %error,
            "webhook not stored; Chargify will retry"
        ),
        Outcome::Unauthorized(_) | Outcome::SiteMismatch => tracing::warn!(
            webhook_id, event, outcome, status, bytes, latency_ms,
            "webhook refused: signature (if every webhook fails this way, check the configured Site Shared Key)"
        ),
        other => tracing::warn!(
            webhook_id, event, outcome, status, bytes, latency_ms, reason = %other.message(),
            "webhook refused"
        ),
    }
    record_metrics(&reply.outcome, event);
}

/// The catalogue's ingest metrics for one answer: accepted webhooks by event, 4xx refusals
/// by reason, and the two alarm sources. A missing or malformed signature is a refusal but
/// not a `SignatureFailures`: Chargify always sends a well-formed one, so those come from
/// scanners of a public URL, and paging someone for them would hide the real signal (a wrong
/// Site Shared Key makes Chargify's own signatures mismatch).
fn record_metrics(outcome: &Outcome, event: &str) {
    use crate::telemetry::metrics;
    match outcome {
        Outcome::Enqueued { .. } => metrics::webhook_received(event),
        // Verified and answered 200, nothing stored: the logs show it, no metric counts it.
        Outcome::TestAcknowledged => {}
        Outcome::QueueFailed(_) => metrics::enqueue_failure(),
        refused => {
            if matches!(
                refused,
                Outcome::Unauthorized(SignatureError::Mismatch) | Outcome::SiteMismatch
            ) {
                metrics::signature_failure();
            }
            metrics::ingest_refused(refused.code());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chargify::signature::sign;
    use crate::fixtures;
    use crate::queue::InMemoryQueue;
    use http::HeaderValue;

    const KEY: &str = "test-shared-key";

    fn service() -> IngestService<InMemoryQueue> {
        IngestService::new(
            SharedKeySet::parse(KEY).expect("keys"),
            InMemoryQueue::new(),
        )
    }

    fn signed_headers(body: &[u8], key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let sig = HeaderValue::from_str(&sign(key, body)).expect("hex is a header value");
        // Mixed case on purpose: HeaderMap lookups are case-insensitive.
        headers.insert("X-Chargify-Webhook-Signature-Hmac-Sha-256", sig);
        headers
    }

    async fn post(
        svc: &IngestService<InMemoryQueue>,
        body: &[u8],
        headers: &HeaderMap,
    ) -> IngestReply {
        svc.handle(InboundRequest {
            method: &Method::POST,
            headers,
            query_signatures: vec![],
            body,
        })
        .await
    }

    #[tokio::test]
    async fn a_signed_webhook_is_enqueued_once() {
        let svc = service();
        let body = fixtures::SIGNUP_SUCCESS.as_bytes();
        let headers = signed_headers(body, KEY);
        let first = post(&svc, body, &headers).await;
        assert_eq!(first.status(), 200, "{}", first.body());
        assert_eq!(first.outcome.code(), "enqueued");
        assert_eq!(post(&svc, body, &headers).await.status(), 200);
        let messages = svc.queue().messages();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].group_id, "acme-test:cus:15");
        assert_eq!(messages[0].deduplication_id, "acme-test:5");
        let env = WebhookEnvelope::from_json(&messages[0].body).expect("envelope");
        assert_eq!(env.raw_body, fixtures::SIGNUP_SUCCESS);
        assert_eq!(env.verified_by.key, "*#0");
    }

    #[tokio::test]
    async fn a_webhook_id_that_is_not_a_positive_whole_number_is_refused_with_400() {
        let svc = service();
        for id in ["abc", "-5", "0", "007", "12a", "99999999999999999999"] {
            let body = fixtures::derive(fixtures::SIGNUP_SUCCESS, id, "signup_success", &[]);
            let reply = post(&svc, body.as_bytes(), &signed_headers(body.as_bytes(), KEY)).await;
            assert_eq!(
                (reply.status(), reply.outcome.code()),
                (400, "body_bad_field"),
                "{id}: {}",
                reply.body()
            );
            assert!(
                reply.body().contains("positive whole number"),
                "{}",
                reply.body()
            );
        }
        // Chargify's "Test" button is held to the same rule.
        let test = fixtures::derive(fixtures::TEST, "x1", "test", &[]);
        let reply = post(&svc, test.as_bytes(), &signed_headers(test.as_bytes(), KEY)).await;
        assert_eq!(reply.status(), 400);
        assert!(svc.queue().messages().is_empty());
        let body = fixtures::derive(fixtures::SIGNUP_SUCCESS, "42", "signup_success", &[]);
        let reply = post(&svc, body.as_bytes(), &signed_headers(body.as_bytes(), KEY)).await;
        assert_eq!(reply.status(), 200, "{}", reply.body());
    }

    #[test]
    fn accept_says_why_a_signed_body_is_not_queued() {
        let svc = service();
        let accept = |body: &str, key: &str| {
            let value = sign(key, body.as_bytes());
            let signature = SignatureCandidate {
                source: SignatureSource::Header,
                value: &value,
            };
            svc.accept(body.as_bytes(), &[signature])
        };
        let accepted = accept(fixtures::SIGNUP_SUCCESS, KEY).expect("accepted");
        assert_eq!(accepted.envelope.raw_body, fixtures::SIGNUP_SUCCESS);
        assert_eq!(accepted.message, outbound_message(&accepted.envelope));
        assert!(matches!(
            accept(fixtures::SIGNUP_SUCCESS, "another-key"),
            Err(Refusal::Signature(SignatureError::Mismatch))
        ));
        assert!(matches!(
            accept(fixtures::TEST, KEY),
            Err(Refusal::Webhook {
                reason: NotQueued::Test,
                ..
            })
        ));
        let bad_id = fixtures::derive(fixtures::SIGNUP_SUCCESS, "007", "signup_success", &[]);
        let refusal = accept(&bad_id, KEY).expect_err("not a Chargify id");
        assert!(
            matches!(
                &refusal,
                Refusal::Webhook { webhook_id, reason: NotQueued::Invalid(WebhookError::NotAChargifyId), .. }
                    if webhook_id == "007"
            ),
            "{refusal}"
        );
        assert!(matches!(
            accept(r#"{"id":"1"}"#, KEY),
            Err(Refusal::Body(WebhookError::Missing(_)))
        ));
        // The size is bounded before any key is tried: a stored body too (the reconciler).
        let huge = "a".repeat(MAX_BODY_BYTES + 1);
        assert!(matches!(
            accept(&huge, KEY),
            Err(Refusal::TooLarge { bytes }) if bytes == MAX_BODY_BYTES + 1
        ));
        // Nothing is sent: accepting is not queueing.
        assert!(svc.queue().messages().is_empty());
    }

    #[tokio::test]
    async fn refusals_enqueue_nothing() {
        let svc = service();
        let body = fixtures::PAYMENT_FAILURE.as_bytes();
        let no_sig = HeaderMap::new();
        let wrong = signed_headers(body, "another-key");
        let unsigned = post(&svc, body, &no_sig).await;
        assert_eq!(
            (unsigned.status(), unsigned.outcome.code()),
            (401, "signature_missing")
        );
        let mismatched = post(&svc, body, &wrong).await;
        assert_eq!(
            (mismatched.status(), mismatched.outcome.code()),
            (401, "signature_mismatch")
        );
        let tampered = fixtures::PAYMENT_FAILURE.replace("success]=false", "success]=true");
        let reply = post(&svc, tampered.as_bytes(), &signed_headers(body, KEY)).await;
        assert_eq!(reply.status(), 401);
        let json_body = br#"{"id":"1","event":"signup_success"}"#;
        let reply = post(&svc, json_body, &signed_headers(json_body, KEY)).await;
        assert_eq!(
            (reply.status(), reply.outcome.code()),
            (400, "body_missing_field")
        );
        let binary = b"id=1&event=x&\xff\xfe";
        assert_eq!(
            post(&svc, binary, &signed_headers(binary, KEY))
                .await
                .status(),
            400
        );
        let huge = vec![b'a'; MAX_BODY_BYTES + 1];
        let reply = post(&svc, &huge, &signed_headers(&huge, KEY)).await;
        assert_eq!(
            (reply.status(), reply.outcome.code()),
            (413, "body_too_large")
        );
        let get = svc
            .handle(InboundRequest {
                method: &Method::GET,
                headers: &signed_headers(body, KEY),
                query_signatures: vec![],
                body,
            })
            .await;
        assert_eq!(get.status(), 405);
        assert!(svc.queue().messages().is_empty());
    }

    #[tokio::test]
    async fn the_body_limit_is_inclusive() {
        let svc = service();
        let mut body = b"id=1&event=x&pad=".to_vec();
        body.resize(MAX_BODY_BYTES, b'a');
        let reply = post(&svc, &body, &signed_headers(&body, KEY)).await;
        assert_eq!(reply.status(), 200, "{}", reply.body());
        let env = WebhookEnvelope::from_json(&svc.queue().messages()[0].body).expect("envelope");
        assert!(env.to_json().len() <= SQS_MAX_MESSAGE_BYTES);
    }

    #[tokio::test]
    async fn escaping_that_overflows_the_envelope_is_413() {
        let svc = service();
        // Quotes are legal in a raw body and double when JSON-escaped.
        let mut body = b"id=1&event=x&pad=".to_vec();
        body.resize(MAX_BODY_BYTES, b'"');
        let reply = post(&svc, &body, &signed_headers(&body, KEY)).await;
        assert_eq!(reply.status(), 413);
        assert!(svc.queue().messages().is_empty());
    }

    #[tokio::test]
    async fn the_test_webhook_is_acknowledged_not_enqueued() {
        let svc = service();
        let body = fixtures::TEST.as_bytes();
        let reply = post(&svc, body, &signed_headers(body, KEY)).await;
        assert_eq!(
            (reply.status(), reply.outcome.code()),
            (200, "test_acknowledged")
        );
        assert!(svc.queue().messages().is_empty());
        // ... but only once its signature verifies.
        assert_eq!(post(&svc, body, &HeaderMap::new()).await.status(), 401);
    }

    #[tokio::test]
    async fn unknown_events_are_enqueued_for_the_processor() {
        let svc = service();
        let body = b"id=77&event=some_future_event&payload[site][subdomain]=acme";
        assert_eq!(
            post(&svc, body, &signed_headers(body, KEY)).await.status(),
            200
        );
        assert_eq!(svc.queue().messages().len(), 1);
    }

    #[tokio::test]
    async fn a_snapshot_is_never_accepted_from_the_internet_even_signed() {
        let svc = service();
        let sub: serde_json::Value =
            serde_json::from_str(fixtures::API_SUBSCRIPTION).expect("JSON");
        let body =
            crate::chargify::snapshot::snapshot_body("snapshot-1-2", "acme", &sub["subscription"]);
        let reply = post(&svc, body.as_bytes(), &signed_headers(body.as_bytes(), KEY)).await;
        assert_eq!(
            (reply.status(), reply.outcome.code()),
            (400, "body_bad_field"),
            "{}",
            reply.body()
        );
        assert!(svc.queue().messages().is_empty());
    }

    #[tokio::test]
    async fn the_query_parameter_signature_verifies() {
        let svc = service();
        let body = fixtures::CUSTOMER_UPDATE.as_bytes();
        let sig = sign(KEY, body);
        let query = format!("a=b&{SIGNATURE_QUERY_PARAM}={sig}");
        let sigs = query_signatures(Some(&query));
        let reply = svc
            .handle(InboundRequest {
                method: &Method::POST,
                headers: &HeaderMap::new(),
                query_signatures: sigs.iter().map(String::as_str).collect(),
                body,
            })
            .await;
        assert_eq!(reply.status(), 200, "{}", reply.body());
        let env = WebhookEnvelope::from_json(&svc.queue().messages()[0].body).expect("envelope");
        assert_eq!(env.verified_by.source, SignatureSource::QueryParameter);
    }

    #[tokio::test]
    async fn a_site_bound_key_cannot_sign_for_another_site() {
        let svc = IngestService::new(
            SharedKeySet::parse("acme-test=k1,capital-preferences-ltd=k2").expect("keys"),
            InMemoryQueue::new(),
        );
        let body = fixtures::SIGNUP_SUCCESS.as_bytes(); // site acme-test
        let reply = post(&svc, body, &signed_headers(body, "k2")).await;
        assert_eq!(
            (reply.status(), reply.outcome.code()),
            (401, "signature_site_mismatch")
        );
        assert_eq!(
            post(&svc, body, &signed_headers(body, "k1")).await.status(),
            200
        );
        assert_eq!(svc.queue().messages().len(), 1);
    }

    #[tokio::test]
    async fn bodies_shaped_like_no_webhook_are_400_and_counted_by_reason() {
        use crate::telemetry::capture::Capture;
        let svc = service();
        let deep = |levels: usize| {
            format!(
                "id=1&event=signup_success&payload[site][subdomain]=acme&payload{}=v",
                "[a]".repeat(levels)
            )
        };
        let many = format!("id=1&event=signup_success{}", "&a".repeat(100_000));
        let cases = [
            (deep(5_000), "body_too_deep"),
            (deep(20_000), "body_too_deep"),
            (many, "body_too_many_fields"),
        ];
        let capture = Capture::default();
        for (body, code) in &cases {
            let body = body.as_bytes();
            assert!(body.len() <= MAX_BODY_BYTES, "{code}: {} bytes", body.len());
            let headers = signed_headers(body, KEY);
            // The recorder is thread-local: prepare on this thread, then record as
            // `handle` does.
            let reply = match svc.prepare(&InboundRequest {
                method: &Method::POST,
                headers: &headers,
                query_signatures: vec![],
                body,
            }) {
                Prepared::Reply(reply) => reply,
                Prepared::Send { .. } => panic!("{code}: would be enqueued"),
            };
            assert_eq!((reply.status(), reply.outcome.code()), (400, *code));
            assert!(reply.body().contains("refused"), "{}", reply.body());
            metrics::with_local_recorder(&capture, || record_metrics(&reply.outcome, ""));
            // Through the whole handler too: nothing enqueued.
            assert_eq!(post(&svc, body, &headers).await.status(), 400);
        }
        assert!(svc.queue().messages().is_empty());
        let refused = |reason| capture.get("IngestRefused", &[("Reason", reason)]);
        assert_eq!(refused("body_too_deep"), Some(2.0));
        assert_eq!(refused("body_too_many_fields"), Some(1.0));
        // Unsigned, the same body is a signature refusal: its shape is not looked at first.
        let unsigned = post(&svc, cases[0].0.as_bytes(), &HeaderMap::new()).await;
        assert_eq!(unsigned.outcome.code(), "signature_missing");
    }

    #[tokio::test]
    async fn a_failing_queue_is_503() {
        let svc = service();
        svc.queue().fail_sends("connection refused");
        let body = fixtures::SIGNUP_SUCCESS.as_bytes();
        let reply = post(&svc, body, &signed_headers(body, KEY)).await;
        assert_eq!(
            (reply.status(), reply.outcome.code()),
            (503, "queue_unavailable")
        );
        assert!(!reply.body().contains("connection refused"));
    }

    #[test]
    fn only_a_wrong_key_counts_as_a_signature_failure() {
        use crate::telemetry::capture::Capture;
        let capture = Capture::default();
        metrics::with_local_recorder(&capture, || {
            record_metrics(&Outcome::Unauthorized(SignatureError::Mismatch), "");
            record_metrics(&Outcome::SiteMismatch, "signup_success");
            record_metrics(&Outcome::Unauthorized(SignatureError::Missing), "");
            record_metrics(&Outcome::MethodNotAllowed, "");
            record_metrics(&Outcome::TestAcknowledged, "test");
            record_metrics(
                &Outcome::Enqueued {
                    message_id: "m".into(),
                },
                "signup_success",
            );
            record_metrics(
                &Outcome::QueueFailed(QueueError::Unavailable {
                    detail: "down".into(),
                }),
                "signup_success",
            );
        });
        assert_eq!(capture.get("SignatureFailures", &[]), Some(2.0));
        let refused = |reason| capture.get("IngestRefused", &[("Reason", reason)]);
        assert_eq!(refused("signature_mismatch"), Some(1.0));
        assert_eq!(refused("signature_site_mismatch"), Some(1.0));
        assert_eq!(refused("signature_missing"), Some(1.0));
        assert_eq!(refused("method_not_allowed"), Some(1.0));
        assert_eq!(
            capture.get("WebhooksReceived", &[("Event", "signup_success")]),
            Some(1.0)
        );
        assert_eq!(capture.get("EnqueueFailures", &[]), Some(1.0));
        // The test webhook and the 503 are not refusals; nothing else was recorded.
        assert_eq!(capture.len(), 7);
    }
}

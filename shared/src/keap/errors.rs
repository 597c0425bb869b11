//! Keap's failures, read leniently and classified so the caller knows what to do.
//!
//! Keap answers errors in three shapes: its own `{code, message, status, details}` (where
//! `code` may be a number or a string), Apigee's `{"fault": {"faultstring", "detail":
//! {"errorcode"}}}` and OAuth's `{"error", "error_description"}`; proxies may answer HTML.
//! [`KeapError::from_response`] classifies by status (its doc lists the exact sets), and a
//! 429 is split into spike arrest, per-minute throttle and daily quota, because each wants a
//! different wait.

use super::throttle::ThrottleReport;
use http::HeaderMap;
use serde_json::Value;
use std::time::Duration;
use time::OffsetDateTime;

/// Wait after a spike-arrest 429 before jitter: Keap's spike policy is per second.
pub const SPIKE_ARREST_WAIT: Duration = Duration::from_millis(1_500);

/// A Keap error body in whichever shape it came, reduced to what a person needs to read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorBody {
    /// `message`, `faultstring` or `error_description`.
    pub message: Option<String>,
    /// `code` (as text), `detail.errorcode` or `error`.
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn parse(body: &[u8]) -> Self {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        if let Some(fault) = json.get("fault") {
            return Self {
                message: fault.get("faultstring").and_then(text),
                code: fault
                    .get("detail")
                    .and_then(|d| d.get("errorcode"))
                    .and_then(text),
            };
        }
        if json.get("error").is_some() {
            return Self {
                message: json.get("error_description").and_then(text),
                code: json.get("error").and_then(text),
            };
        }
        Self {
            message: json.get("message").and_then(text),
            code: json.get("code").and_then(text),
        }
    }

    /// One line for logs and dead-letter reasons.
    pub fn summary(&self, status: u16) -> String {
        match (&self.code, &self.message) {
            (Some(code), Some(message)) => format!("HTTP {status} {code}: {message}"),
            (None, Some(message)) => format!("HTTP {status}: {message}"),
            (Some(code), None) => format!("HTTP {status} {code}"),
            (None, None) => format!("HTTP {status} with no readable error body"),
        }
    }

    fn mentions(&self, needle: &str) -> bool {
        let needle = needle.to_ascii_lowercase();
        [&self.code, &self.message]
            .into_iter()
            .flatten()
            .any(|text| text.to_ascii_lowercase().contains(&needle))
    }
}

/// Which of Keap's limits a 429 hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleKind {
    /// Per-second spike arrest: retry after about 1–2 s.
    SpikeArrest,
    /// Per-minute throttle (credential or account): retry in the next minute.
    Minute,
}

/// A failed Keap call, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeapError {
    #[error("Keap throttled the call ({kind:?}); retry after {retry_after:?} [x-request-id {request_id:?}]")]
    Throttled {
        kind: ThrottleKind,
        retry_after: Duration,
        request_id: Option<String>,
    },
    #[error("Keap's daily API quota is used up until {resets_at:?}; delay the work until then instead of retrying [x-request-id {request_id:?}]")]
    DailyQuotaExhausted {
        resets_at: Option<OffsetDateTime>,
        request_id: Option<String>,
    },
    #[error("Keap rejected the credentials ({reason}); refresh the access token and retry once, else check the key [x-request-id {request_id:?}]")]
    Unauthorized {
        reason: String,
        request_id: Option<String>,
    },
    #[error("Keap refused the refresh token ({reason}); re-read the token store, and if it persists a person must re-authorise the integration")]
    InvalidGrant { reason: String },
    #[error("Keap's OAuth authorisation is gone ({reason}); retrying will not help: a person must re-authorise the integration with `cks keap authorize-url` and `cks keap exchange-code` (docs/keap-auth.md)")]
    ReauthorisationNeeded { reason: String },
    #[error("could not read or write the Keap OAuth token store ({detail}); retry with backoff, and check the table (KEAP_TOKEN_TABLE) and the function's DynamoDB permissions if it persists")]
    TokenStore { detail: String },
    #[error("another worker is refreshing the Keap access token and did not finish within {waited:?}; retry later (its lease expires on its own if it crashed)")]
    RefreshPending { waited: Duration },
    #[error("Keap has no such record ({reason}); the contact, tag or goal may have been merged or deleted [x-request-id {request_id:?}]")]
    NotFound {
        reason: String,
        request_id: Option<String>,
    },
    #[error("Keap refused the call permanently ({reason}); retrying will not help [x-request-id {request_id:?}]")]
    Permanent {
        status: u16,
        reason: String,
        request_id: Option<String>,
    },
    #[error("Keap refused part of the call: {failures:?}; these items were not applied")]
    ItemsRefused {
        /// `(tag or contact id, Keap's status)` for each item that did not succeed.
        failures: Vec<(i64, String)>,
    },
    #[error("could not reach Keap or read its answer ({detail}); retry with backoff")]
    Network { detail: String },
    #[error(
        "Keap failed transiently ({reason}); retry with backoff [x-request-id {request_id:?}]"
    )]
    Transient {
        status: u16,
        reason: String,
        request_id: Option<String>,
    },
}

impl KeapError {
    /// Worth retrying later with the same request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. }
                | Self::DailyQuotaExhausted { .. }
                | Self::Transient { .. }
                | Self::Network { .. }
                | Self::TokenStore { .. }
                | Self::RefreshPending { .. }
        )
    }

    /// Keap refused what was asked of this record (missing, merged, or invalid): neither
    /// waiting nor a person's fix of the credentials makes the same request pass.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::NotFound { .. } | Self::Permanent { .. } | Self::ItemsRefused { .. }
        )
    }

    /// Stable name for logs, metrics and the dead-letter `FailureCode`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Throttled { .. } => "keap_throttled",
            Self::DailyQuotaExhausted { .. } => "keap_daily_quota",
            Self::Unauthorized { .. } => "keap_unauthorized",
            Self::InvalidGrant { .. } => "keap_invalid_grant",
            Self::ReauthorisationNeeded { .. } => "keap_reauthorisation_needed",
            Self::TokenStore { .. } => "keap_token_store",
            Self::RefreshPending { .. } => "keap_refresh_pending",
            Self::NotFound { .. } => "keap_not_found",
            Self::Permanent { .. } => "keap_permanent",
            Self::ItemsRefused { .. } => "keap_items_refused",
            Self::Network { .. } => "keap_network",
            Self::Transient { .. } => "keap_transient",
        }
    }

    /// Classifies a non-success response. `now` decides the wait for a per-minute throttle.
    ///
    /// The status sets (the docs' failure table lists the same):
    ///
    /// | status | error | class |
    /// |---|---|---|
    /// | 429 | [`Self::Throttled`] (spike arrest or per-minute) or [`Self::DailyQuotaExhausted`] | transient |
    /// | 408, 500–599 (every 5xx, 501 and 505 included) | [`Self::Transient`] | transient |
    /// | 401 | [`Self::Unauthorized`] | OAuth: one new token and one retry, then needs a person |
    /// | 400 with `invalid_grant` or "invalid refresh token" | [`Self::InvalidGrant`] | needs a person (after re-reading the token store) |
    /// | 404 | [`Self::NotFound`] | permanent for that id |
    /// | 400, 403, 405, 406, 409, 412, 422 and any other status | [`Self::Permanent`] | permanent |
    ///
    /// Every 5xx is transient: Keap's v1 spec declares only 500, and a 501 or 505 from a
    /// gateway or a deploy in progress is as likely to pass as a 503. A 5xx that never passes
    /// is given up on by the caller's own limit (the queue's redrive policy), not here.
    ///
    /// A 429's wait is Keap's `Retry-After` (seconds) when it sends one; else 1.5 s for spike
    /// arrest and the rest of the current minute, plus 250 ms, for the per-minute throttle.
    pub fn from_response(
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Self {
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let error = ErrorBody::parse(body);
        let reason = error.summary(status);
        match status {
            429 => Self::throttled(
                &error,
                &ThrottleReport::from_headers(headers),
                retry_after(headers),
                request_id,
                now,
            ),
            400 if error.code.as_deref() == Some("invalid_grant")
                || error.mentions("invalid refresh token") =>
            {
                Self::InvalidGrant { reason }
            }
            401 => Self::Unauthorized { reason, request_id },
            404 => Self::NotFound { reason, request_id },
            408 | 500..=599 => Self::Transient {
                status,
                reason,
                request_id,
            },
            _ => Self::Permanent {
                status,
                reason,
                request_id,
            },
        }
    }

    fn throttled(
        error: &ErrorBody,
        report: &ThrottleReport,
        retry_after: Option<Duration>,
        request_id: Option<String>,
        now: OffsetDateTime,
    ) -> Self {
        if error.mentions("SpikeArrest") || error.mentions("spike arrest") {
            return Self::Throttled {
                kind: ThrottleKind::SpikeArrest,
                retry_after: retry_after.unwrap_or(SPIKE_ARREST_WAIT),
                request_id,
            };
        }
        // "Quota Exceeded" and QuotaViolation name no period; the headers tell which budget
        // is empty. The daily one wins: retrying before its reset only burns attempts.
        if report.daily.is_exhausted() {
            return Self::DailyQuotaExhausted {
                resets_at: report.daily_resets_at,
                request_id,
            };
        }
        let into_minute = Duration::from_secs(u64::from(now.second()))
            + Duration::from_nanos(u64::from(now.nanosecond()));
        let next_minute =
            Duration::from_secs(60).saturating_sub(into_minute) + Duration::from_millis(250);
        Self::Throttled {
            kind: ThrottleKind::Minute,
            retry_after: retry_after.unwrap_or(next_minute),
            request_id,
        }
    }
}

/// `Retry-After` in seconds, when an answer carries one. Keap does not document it; a proxy
/// in front may send it, and it knows its own window better than our guess. The HTTP-date
/// form is not read (the kind's own wait applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-27 10:00:45 UTC);

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    // The three 429 bodies Keap is known to send, verbatim.
    const QUOTA_EXCEEDED: &str = r#"{"code": "429", "message": "Quota Exceeded", "status": "Request Throttled", "details": null}"#;
    const QUOTA_VIOLATION: &str = r#"{"fault":{"faultstring":"Rate limit quota violation. Quota limit exceeded. Identifier : abc","detail":{"errorcode":"policies.ratelimit.QuotaViolation"}}}"#;
    const SPIKE: &str = r#"{"fault":{"faultstring":"Spike arrest violation. Allowed rate : MessageRate{messagesPerPeriod=10, periodInMicroseconds=1000000, maxBurstMessageCount=1.0}","detail":{"errorcode":"policies.ratelimit.SpikeArrestViolation"}}}"#;

    #[test]
    fn parses_all_three_shapes() {
        let own = ErrorBody::parse(
            br#"{"code":400,"message":"Invalid email","status":"Bad Request","details":[]}"#,
        );
        assert_eq!(own.code.as_deref(), Some("400"));
        assert_eq!(own.message.as_deref(), Some("Invalid email"));
        let apigee = ErrorBody::parse(SPIKE.as_bytes());
        assert_eq!(
            apigee.code.as_deref(),
            Some("policies.ratelimit.SpikeArrestViolation")
        );
        let oauth = ErrorBody::parse(
            br#"{"error":"invalid_grant","error_description":"Invalid refresh token"}"#,
        );
        assert_eq!(oauth.code.as_deref(), Some("invalid_grant"));
        assert_eq!(
            oauth.summary(400),
            "HTTP 400 invalid_grant: Invalid refresh token"
        );
        assert_eq!(
            ErrorBody::parse(b"<html>502 Bad Gateway</html>"),
            ErrorBody::default()
        );
    }

    #[test]
    fn spike_arrest_waits_seconds() {
        let err = KeapError::from_response(429, &HeaderMap::new(), SPIKE.as_bytes(), NOW);
        assert!(matches!(
            err,
            KeapError::Throttled { kind: ThrottleKind::SpikeArrest, retry_after, .. } if retry_after == SPIKE_ARREST_WAIT
        ));
        assert!(err.is_transient());
    }

    #[test]
    fn minute_throttle_waits_for_the_next_minute() {
        let h = headers(&[
            ("x-keap-product-throttle-available", "0"),
            ("x-keap-product-quota-available", "20000"),
            ("x-request-id", "req-1"),
        ]);
        for body in [QUOTA_EXCEEDED, QUOTA_VIOLATION] {
            let err = KeapError::from_response(429, &h, body.as_bytes(), NOW);
            match err {
                KeapError::Throttled {
                    kind: ThrottleKind::Minute,
                    retry_after,
                    request_id,
                } => {
                    assert_eq!(retry_after, Duration::from_millis(15_250));
                    assert_eq!(request_id.as_deref(), Some("req-1"));
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_empty_daily_quota_carries_its_reset_time() {
        let h = headers(&[
            ("x-keap-product-quota-available", "0"),
            ("x-keap-product-quota-expiry-time", "1795824000000"),
        ]);
        let err = KeapError::from_response(429, &h, QUOTA_EXCEEDED.as_bytes(), NOW);
        assert_eq!(
            err,
            KeapError::DailyQuotaExhausted {
                resets_at: OffsetDateTime::from_unix_timestamp(1_795_824_000).ok(),
                request_id: None,
            }
        );
        assert!(err.to_string().contains("delay the work"));
    }

    #[test]
    fn the_status_sets_of_the_classifier() {
        let classify = |status, body: &str| {
            KeapError::from_response(status, &HeaderMap::new(), body.as_bytes(), NOW)
        };
        assert!(matches!(
            classify(400, r#"{"message":"Invalid email"}"#),
            KeapError::Permanent { status: 400, .. }
        ));
        assert!(matches!(
            classify(
                400,
                r#"{"error":"invalid_request","error_description":"Invalid Refresh Token"}"#
            ),
            KeapError::InvalidGrant { .. }
        ));
        assert!(matches!(
            classify(
                401,
                r#"{"fault":{"faultstring":"Invalid access token","detail":{"errorcode":"oauth.v2.InvalidAccessToken"}}}"#
            ),
            KeapError::Unauthorized { .. }
        ));
        assert!(matches!(
            classify(403, "{}"),
            KeapError::Permanent { status: 403, .. }
        ));
        assert!(matches!(classify(404, "{}"), KeapError::NotFound { .. }));
        for status in [400, 403, 405, 406, 409, 412, 422, 410, 418] {
            assert!(
                matches!(classify(status, "{}"), KeapError::Permanent { .. }),
                "{status}"
            );
        }
        for status in [408, 500, 501, 502, 503, 504, 505, 511, 599] {
            assert!(
                matches!(
                    classify(status, "<html>gateway</html>"),
                    KeapError::Transient { .. }
                ),
                "{status}"
            );
        }
        let permanent = classify(
            400,
            r#"{"code":400,"message":"region requires country_code"}"#,
        );
        assert!(
            permanent
                .to_string()
                .contains("region requires country_code"),
            "{permanent}"
        );
    }

    #[test]
    fn a_retry_after_on_a_429_is_the_wait() {
        let h = headers(&[("retry-after", "30")]);
        assert!(matches!(
            KeapError::from_response(429, &h, SPIKE.as_bytes(), NOW),
            KeapError::Throttled { kind: ThrottleKind::SpikeArrest, retry_after, .. } if retry_after == Duration::from_secs(30)
        ));
        let h = headers(&[
            ("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT"),
            ("x-keap-product-quota-available", "20000"),
        ]);
        assert!(
            matches!(
                KeapError::from_response(429, &h, QUOTA_EXCEEDED.as_bytes(), NOW),
                KeapError::Throttled { kind: ThrottleKind::Minute, retry_after, .. } if retry_after == Duration::from_millis(15_250)
            ),
            "an HTTP-date is not read; the minute's own wait applies"
        );
    }
}

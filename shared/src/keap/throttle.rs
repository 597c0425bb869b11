//! Keap's throttle and quota headers, read from every response.
//!
//! Keap sends three families, lower-case: `x-keap-product-quota-*` (daily, per credential),
//! `x-keap-product-throttle-*` (per minute, per credential) and `x-keap-tenant-throttle-*`
//! (per minute, per Keap account since 2026-06-08). `Retry-After` is not documented (the
//! client honours one on a 429 when it comes, see `KeapError::from_response`), so the
//! client plans its pacing from these numbers instead.

use http::HeaderMap;
use time::OffsetDateTime;

/// One budget as a header family reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    pub limit: Option<u64>,
    pub available: Option<u64>,
    pub used: Option<u64>,
}

impl Budget {
    fn read(headers: &HeaderMap, prefix: &str) -> Self {
        let number = |name: &str| header_u64(headers, &format!("{prefix}-{name}"));
        Self {
            limit: number("limit"),
            available: number("available"),
            used: number("used"),
        }
    }

    /// Share of the budget left, 0.0–1.0, when both limit and available are known.
    pub fn remaining_fraction(&self) -> Option<f64> {
        match (self.limit, self.available) {
            (Some(limit), Some(available)) if limit > 0 => {
                Some((available.min(limit)) as f64 / limit as f64)
            }
            _ => None,
        }
    }

    pub fn is_exhausted(&self) -> bool {
        self.available == Some(0)
    }
}

/// Everything Keap said about our budgets in one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThrottleReport {
    /// Daily quota of the credential (`x-keap-product-quota-*`).
    pub daily: Budget,
    /// When the daily quota resets (`x-keap-product-quota-expiry-time`, epoch milliseconds).
    pub daily_resets_at: Option<OffsetDateTime>,
    /// Per-minute throttle of the credential (`x-keap-product-throttle-*`).
    pub minute: Budget,
    /// Per-minute throttle of the whole Keap account (`x-keap-tenant-throttle-*`).
    pub tenant_minute: Budget,
}

impl ThrottleReport {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let daily_resets_at = header_u64(headers, "x-keap-product-quota-expiry-time")
            .and_then(|ms| i128::from(ms).checked_mul(1_000_000))
            .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok());
        Self {
            daily: Budget::read(headers, "x-keap-product-quota"),
            daily_resets_at,
            minute: Budget::read(headers, "x-keap-product-throttle"),
            tenant_minute: Budget::read(headers, "x-keap-tenant-throttle"),
        }
    }

    /// The smallest share left of any per-minute budget: what pacing should follow.
    pub fn minute_fraction_left(&self) -> Option<f64> {
        [
            self.minute.remaining_fraction(),
            self.tenant_minute.remaining_fraction(),
        ]
        .into_iter()
        .flatten()
        .reduce(f64::min)
    }

    /// True when the response carried none of the headers (a proxy error page, say).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    #[test]
    fn reads_the_three_families() {
        let report = ThrottleReport::from_headers(&headers(&[
            ("x-keap-product-quota-limit", "30000"),
            ("x-keap-product-quota-available", "29990"),
            ("x-keap-product-quota-used", "10"),
            ("x-keap-product-quota-time-unit", "day"),
            ("x-keap-product-quota-expiry-time", "1795824000000"),
            ("x-keap-product-throttle-limit", "240"),
            ("x-keap-product-throttle-available", "60"),
            ("x-keap-tenant-throttle-limit", "10000"),
            ("x-keap-tenant-throttle-available", "9000"),
            ("x-keap-tenant-id", "ps359.infusionsoft.com"),
        ]));
        assert_eq!(report.daily.limit, Some(30_000));
        assert_eq!(report.daily.available, Some(29_990));
        assert_eq!(report.daily.used, Some(10));
        assert_eq!(
            report.daily_resets_at.map(OffsetDateTime::unix_timestamp),
            Some(1_795_824_000)
        );
        assert_eq!(report.minute.remaining_fraction(), Some(0.25));
        assert_eq!(report.minute_fraction_left(), Some(0.25));
        assert!(!report.daily.is_exhausted());
        assert!(!report.is_empty());
    }

    #[test]
    fn missing_or_garbled_headers_read_as_unknown() {
        let report = ThrottleReport::from_headers(&headers(&[
            ("x-keap-product-throttle-limit", "many"),
            ("x-keap-product-throttle-available", "0"),
        ]));
        assert_eq!(report.minute.limit, None);
        assert!(report.minute.is_exhausted());
        assert_eq!(report.minute_fraction_left(), None);
        assert!(ThrottleReport::from_headers(&HeaderMap::new()).is_empty());
    }
}

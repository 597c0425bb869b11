//! Why a webhook could not be applied, and what happens to its message: retried later (with
//! the delay the failure calls for) or moved to the dead-letter queue with its reason.

use crate::envelope::EnvelopeError;
use crate::idempotency::StoreError;
use crate::keap::{KeapError, LookupError};
use crate::queue::QueueError;
use crate::rules::PlanError;
use std::time::Duration;
use time::OffsetDateTime;

pub use crate::queue::MAX_VISIBILITY_DELAY;

/// How long a record waits after a transient failure that names no time of its own.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The longest wait for a customer another worker is applying a webhook of.
pub const CUSTOMER_BUSY_RETRY: Duration = Duration::from_secs(10);

/// How long a record waits while Keap rejects our credentials: long enough not to burn the
/// receive count, short enough that syncing resumes soon after an operator fixes the key.
pub const CREDENTIALS_RETRY_DELAY: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("message is not a webhook envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("envelope holds a body that is not a Chargify webhook: {0}")]
    Body(String),
    #[error("envelope holds a body of a shape no Chargify webhook has: {0}")]
    BodyShape(#[from] crate::chargify::FormLimitError),
    #[error("rules could not plan this webhook: {0}")]
    Plan(#[from] PlanError),
    #[error("no Keap contact can be chosen: {0}")]
    NoContact(String),
    #[error(transparent)]
    Keap(#[from] KeapError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("idempotency or identity store: {0}")]
    Store(#[from] StoreError),
    #[error("another worker is applying this webhook (lease until {until}); retried after it")]
    InProgressElsewhere { until: OffsetDateTime },
    #[error("another worker is applying a webhook of this customer (lease until {until}); retried after it")]
    CustomerBusy { until: OffsetDateTime },
    #[error("held back: an earlier webhook of its customer is not applied yet")]
    HeldBack,
    #[error("still failing {age:?} after ingest received it, past the retry budget (MAX_WEBHOOK_AGE_DAYS); last failure: {last}")]
    RetryBudgetExhausted {
        age: Duration,
        last: Box<ProcessError>,
    },
    #[error("the handler panicked: {0}")]
    Panicked(String),
    #[error("could not hand the record back to the queue: {0}")]
    Queue(#[from] QueueError),
}

impl ProcessError {
    /// Another worker took over this attempt's lease: stop without further writes.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Self::Store(StoreError::LeaseLost))
    }
}

impl From<crate::apply::ApplyError> for ProcessError {
    fn from(error: crate::apply::ApplyError) -> Self {
        use crate::apply::ApplyError;
        match error {
            ApplyError::Keap(e) => Self::Keap(e),
            ApplyError::Lookup(e) => Self::Lookup(e),
            ApplyError::NoContact(reason) => Self::NoContact(reason),
            ApplyError::Store(e) => Self::Store(e),
        }
    }
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Leave it on the queue, hidden for this long; the rest of its FIFO group waits too.
    RetryAfter(Duration),
    /// Move it to the dead-letter queue: retrying cannot help.
    DeadLetter { code: &'static str },
}

impl ProcessError {
    /// Stable name for logs, metrics and the dead-letter `FailureCode`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Envelope(EnvelopeError::UnsupportedVersion { .. }) => "envelope_version",
            Self::Envelope(_) => "malformed_envelope",
            Self::Body(_) => "malformed_body",
            Self::BodyShape(e) => e.code(),
            Self::Plan(_) => "rules_failed",
            Self::NoContact(_) => "no_contact",
            Self::Keap(e) => e.code(),
            Self::Lookup(e) => e.code(),
            Self::Store(e) => e.code(),
            Self::InProgressElsewhere { .. } => "in_progress_elsewhere",
            Self::CustomerBusy { .. } => "customer_busy",
            Self::HeldBack => "held_back",
            Self::RetryBudgetExhausted { .. } => "retry_budget_exhausted",
            Self::Panicked(_) => "panicked",
            Self::Queue(e) => e.code(),
        }
    }

    pub fn disposition(&self, now: OffsetDateTime) -> Disposition {
        match self {
            Self::Keap(e) | Self::Lookup(LookupError::Keap(e)) => keap_disposition(e, now),
            Self::Store(_) | Self::Queue(_) => Disposition::RetryAfter(DEFAULT_RETRY_DELAY),
            Self::InProgressElsewhere { until } => {
                Disposition::RetryAfter(until_then(*until, now) + Duration::from_secs(1))
            }
            // The other worker usually gives the customer back within seconds; its lease
            // is only the bound for a crash.
            Self::CustomerBusy { until } => Disposition::RetryAfter(
                (until_then(*until, now) + Duration::from_secs(1)).min(CUSTOMER_BUSY_RETRY),
            ),
            Self::HeldBack => Disposition::RetryAfter(DEFAULT_RETRY_DELAY),
            Self::Lookup(LookupError::CreationPending { .. } | LookupError::Store(_)) => {
                Disposition::RetryAfter(DEFAULT_RETRY_DELAY)
            }
            // A panic is a bug or a broken environment: retry; the redrive limit parks a
            // message that panics every time in the dead-letter queue.
            Self::Panicked(_) => Disposition::RetryAfter(DEFAULT_RETRY_DELAY),
            Self::Envelope(_)
            | Self::Body(_)
            | Self::BodyShape(_)
            | Self::Plan(_)
            | Self::NoContact(_)
            | Self::Lookup(_)
            | Self::RetryBudgetExhausted { .. } => Disposition::DeadLetter { code: self.code() },
        }
    }
}

fn keap_disposition(error: &KeapError, now: OffsetDateTime) -> Disposition {
    match error {
        KeapError::Throttled { retry_after, .. } => {
            Disposition::RetryAfter((*retry_after).max(Duration::from_secs(1)))
        }
        KeapError::DailyQuotaExhausted { resets_at, .. } => Disposition::RetryAfter(
            resets_at
                .map(|at| (until_then(at, now) + Duration::from_secs(60)).min(MAX_VISIBILITY_DELAY))
                .unwrap_or(Duration::from_secs(3600)),
        ),
        KeapError::Transient { .. }
        | KeapError::Network { .. }
        | KeapError::TokenStore { .. }
        | KeapError::RefreshPending { .. } => Disposition::RetryAfter(DEFAULT_RETRY_DELAY),
        // Credentials are fixed by a person; the messages wait for them instead of piling
        // into the dead-letter queue (the re-authorisation alarm tells the operator).
        KeapError::Unauthorized { .. }
        | KeapError::InvalidGrant { .. }
        | KeapError::ReauthorisationNeeded { .. } => {
            Disposition::RetryAfter(CREDENTIALS_RETRY_DELAY)
        }
        KeapError::NotFound { .. }
        | KeapError::Permanent { .. }
        | KeapError::ItemsRefused { .. } => Disposition::DeadLetter { code: error.code() },
    }
}

fn until_then(at: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(at - now)
        .unwrap_or(Duration::ZERO)
        .min(MAX_VISIBILITY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keap_failures_map_to_retry_or_dead_letter() {
        let now = OffsetDateTime::now_utc();
        let throttled = ProcessError::Keap(KeapError::Throttled {
            kind: crate::keap::ThrottleKind::SpikeArrest,
            retry_after: Duration::from_secs(2),
            request_id: None,
        });
        assert_eq!(
            throttled.disposition(now),
            Disposition::RetryAfter(Duration::from_secs(2))
        );
        let quota = ProcessError::Keap(KeapError::DailyQuotaExhausted {
            resets_at: Some(now + time::Duration::hours(3)),
            request_id: None,
        });
        assert_eq!(
            quota.disposition(now),
            Disposition::RetryAfter(Duration::from_secs(3 * 3600 + 60))
        );
        let far = ProcessError::Keap(KeapError::DailyQuotaExhausted {
            resets_at: Some(now + time::Duration::hours(30)),
            request_id: None,
        });
        assert_eq!(
            far.disposition(now),
            Disposition::RetryAfter(MAX_VISIBILITY_DELAY)
        );
        let bad = ProcessError::Keap(KeapError::Permanent {
            status: 400,
            reason: "Invalid email".into(),
            request_id: None,
        });
        assert_eq!(
            bad.disposition(now),
            Disposition::DeadLetter {
                code: "keap_permanent"
            }
        );
        assert_eq!(
            ProcessError::Store(StoreError::Throttled { detail: "x".into() }).disposition(now),
            Disposition::RetryAfter(DEFAULT_RETRY_DELAY)
        );
    }

    /// The backfill skips a customer on exactly the Keap failures the processor dead-letters
    /// (`KeapError::is_permanent`); the two must not drift apart.
    #[test]
    fn the_keap_failures_dead_lettered_are_the_permanent_ones() {
        let now = OffsetDateTime::now_utc();
        let reason = || "r".to_owned();
        let failures = [
            KeapError::Throttled {
                kind: crate::keap::ThrottleKind::Minute,
                retry_after: Duration::from_secs(5),
                request_id: None,
            },
            KeapError::DailyQuotaExhausted {
                resets_at: None,
                request_id: None,
            },
            KeapError::Unauthorized {
                reason: reason(),
                request_id: None,
            },
            KeapError::InvalidGrant { reason: reason() },
            KeapError::ReauthorisationNeeded { reason: reason() },
            KeapError::TokenStore { detail: reason() },
            KeapError::RefreshPending {
                waited: Duration::from_secs(1),
            },
            KeapError::NotFound {
                reason: reason(),
                request_id: None,
            },
            KeapError::Permanent {
                status: 422,
                reason: reason(),
                request_id: None,
            },
            KeapError::ItemsRefused {
                failures: vec![(1, "NOT_FOUND".into())],
            },
            KeapError::Network { detail: reason() },
            KeapError::Transient {
                status: 503,
                reason: reason(),
                request_id: None,
            },
        ];
        for error in failures {
            let dead = matches!(
                ProcessError::Keap(error.clone()).disposition(now),
                Disposition::DeadLetter { .. }
            );
            assert_eq!(dead, error.is_permanent(), "{error}");
        }
    }
}

//! The time the caller has left for its work, visible to the Keap client without threading
//! it through every `Crm` call.
//!
//! A caller with a hard end (a Lambda invocation, a queue record's visibility timeout) runs
//! its work inside [`scope`]. Before any wait inside a call (a retry's backoff, a 429's wait,
//! pacing, the rate limiter) and for each request's timeout, the client asks [`remaining`]:
//! a wait that would not fit is not started, and the call returns its error at once, so the
//! caller still has [`RESERVE`] to record the outcome (hide the queue record for the time the
//! error names) instead of being cut off mid-write. Outside any scope nothing is limited.

use std::future::Future;
use std::time::{Duration, Instant};

/// Kept back from the deadline for the caller's completing write: the idempotency record
/// and the queue call that hides or deletes the record (each a few hundred milliseconds, with
/// the AWS SDK's own retries on top).
pub const RESERVE: Duration = Duration::from_secs(5);

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `work` with `deadline` as its end. Inside another scope the earlier deadline holds:
/// an inner scope can only shorten the time, never extend it. Tasks spawned inside do not
/// inherit the scope (tokio task-locals stay with their task); run their work in a scope of
/// their own.
pub async fn scope<F: Future>(deadline: Instant, work: F) -> F::Output {
    let deadline = current().map_or(deadline, |outer| outer.min(deadline));
    DEADLINE.scope(deadline, work).await
}

/// The deadline of the enclosing [`scope`], if any.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Time left for waits and requests: until the deadline less [`RESERVE`], zero once that has
/// passed; `None` outside any scope (no limit).
pub fn remaining() -> Option<Duration> {
    current().map(|deadline| {
        deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(RESERVE)
    })
}

/// Whether a wait of `wait` fits in the time left (always, outside any scope).
pub fn allows(wait: Duration) -> bool {
    remaining().is_none_or(|left| wait <= left)
}

/// `timeout` shortened to the time left, when that is less.
pub fn bound(timeout: Duration) -> Duration {
    remaining().map_or(timeout, |left| timeout.min(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outside_a_scope_nothing_is_limited() {
        assert_eq!(remaining(), None);
        assert!(allows(Duration::from_secs(3600)));
        assert_eq!(bound(Duration::from_secs(20)), Duration::from_secs(20));
    }

    #[tokio::test]
    async fn inside_a_scope_the_reserve_is_kept_back() {
        let deadline = Instant::now() + Duration::from_secs(20);
        scope(deadline, async {
            let left = remaining().unwrap_or_default();
            assert!(left <= Duration::from_secs(15), "{left:?}");
            assert!(left > Duration::from_secs(14), "{left:?}");
            assert!(allows(Duration::from_secs(2)));
            assert!(!allows(Duration::from_secs(16)));
            assert!(bound(Duration::from_secs(20)) <= Duration::from_secs(15));
            assert_eq!(bound(Duration::from_secs(1)), Duration::from_secs(1));
        })
        .await;
        assert_eq!(remaining(), None, "the scope ends with its work");
    }

    #[tokio::test]
    async fn a_passed_deadline_leaves_nothing_and_an_inner_scope_cannot_extend() {
        let soon = Instant::now() + Duration::from_secs(3);
        scope(soon, async {
            assert_eq!(remaining(), Some(Duration::ZERO), "inside the reserve");
            assert!(!allows(Duration::from_millis(1)));
            assert!(allows(Duration::ZERO));
            scope(Instant::now() + Duration::from_secs(600), async {
                assert_eq!(current(), Some(soon));
            })
            .await;
        })
        .await;
    }
}

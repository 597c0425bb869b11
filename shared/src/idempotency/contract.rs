//! The behaviour every [`IdempotencyStore`] adapter must show, written once and run against
//! each (in-memory here, SQLite in the CLI, DynamoDB in moto). Test support: the functions
//! panic on the first broken promise, naming it.

use super::{
    Begin, Deleted, IdempotencyKey, IdempotencyStore, Lease, Received, RecordStatus, StoreError,
};
use crate::envelope::SQS_MAX_MESSAGE_BYTES;
use std::time::Duration;
use time::OffsetDateTime;

const MIN: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(35 * 24 * 3600);

/// A delivery of `event` received at `at`, whose envelope is `bytes` long (the content does
/// not matter to a store).
pub fn received(event: &str, at: OffsetDateTime, bytes: usize) -> Received {
    let head = format!("{{\"event\":\"{event}\",\"raw_body\":\"");
    let fill = bytes.saturating_sub(head.len() + 2);
    Received {
        event: event.to_owned(),
        received_at: at,
        envelope: format!("{head}{}\"}}", "x".repeat(fill)),
    }
}

/// A small delivery received `now`.
pub fn small(now: OffsetDateTime) -> Received {
    received("signup_success", now, 200)
}

async fn started_with(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    hash: &str,
    delivery: &Received,
    now: OffsetDateTime,
) -> Lease {
    match store.begin(key, hash, delivery, now, MIN, TTL).await {
        Ok(Begin::Started(lease)) => lease,
        other => panic!("expected a lease, got {other:?}"),
    }
}

async fn started(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    hash: &str,
    now: OffsetDateTime,
) -> Lease {
    started_with(store, key, hash, &small(now), now).await
}

async fn stored_delivery(store: &dyn IdempotencyStore, key: &IdempotencyKey) -> Option<Received> {
    store.get(key).await.expect("get").expect("record").received
}

/// A live lease blocks; an expired one is retaken with its steps; the crashed holder can no
/// longer write; completion is final and flags a different body. The envelope of the
/// delivery that took the lease is kept whole (one as large as SQS allows, here), a refused
/// delivery's is not.
pub async fn lease_lifecycle(store: &dyn IdempotencyStore, key: &IdempotencyKey) {
    let now = OffsetDateTime::now_utc();
    let largest = received("signup_success", now, SQS_MAX_MESSAGE_BYTES);
    let first = started_with(store, key, "h", &largest, now).await;
    assert_eq!(first.attempt, 1);
    assert!(!first.payload_differs);
    assert_eq!(
        stored_delivery(store, key).await.as_ref(),
        Some(&largest),
        "begin keeps the envelope, up to SQS's largest message"
    );
    store.record_step(&first, "goal").await.expect("step");
    let refused = received("signup_success", now + time::Duration::seconds(5), 300);
    assert_eq!(
        store.begin(key, "h", &refused, now, MIN, TTL).await,
        Ok(Begin::InProgress {
            lease_expires_at: first.expires_at
        }),
        "a live lease blocks, and the refusal carries its expiry"
    );
    assert_eq!(
        stored_delivery(store, key).await.as_ref(),
        Some(&largest),
        "a refused begin stores nothing"
    );
    // The first worker crashed; after its lease expires another takes over.
    let later = now + time::Duration::minutes(2);
    let retry = small(later);
    let second = started_with(store, key, "h", &retry, later).await;
    assert!(
        second.is_done("goal"),
        "an expired lease is retaken with its steps"
    );
    assert_eq!(
        stored_delivery(store, key).await,
        Some(retry.clone()),
        "the delivery that retook the lease is the one kept"
    );
    assert_eq!(second.attempt, 2);
    assert_ne!(second.token, first.token);
    for late in [
        store.record_step(&first, "note").await,
        store.complete(&first, "late", None, now, TTL).await,
        store.release(&first, "late").await,
    ] {
        assert_eq!(
            late,
            Err(StoreError::LeaseLost),
            "the crashed holder cannot write"
        );
    }
    store
        .complete(&second, "ok", Some("note"), now, TTL)
        .await
        .expect("complete");
    assert_eq!(
        store.begin(key, "h", &small(now), now, MIN, TTL).await,
        Ok(Begin::AlreadyCompleted {
            summary: Some("ok".into()),
            same_payload: true
        })
    );
    assert_eq!(
        store
            .begin(
                key,
                "other",
                &small(now),
                now + time::Duration::days(1),
                MIN,
                TTL
            )
            .await,
        Ok(Begin::AlreadyCompleted {
            summary: Some("ok".into()),
            same_payload: false
        }),
        "a completed record is never retaken, and a different body is flagged"
    );
    assert_eq!(
        store.record_step(&second, "after").await,
        Err(StoreError::LeaseLost),
        "completing gives the lease up"
    );
    let record = store.get(key).await.expect("get").expect("record");
    assert_eq!(record.status, RecordStatus::Completed);
    assert_eq!(
        record.steps_done.into_iter().collect::<Vec<_>>(),
        ["goal", "note"]
    );
    assert_eq!(record.attempts, 2);
    assert_eq!(record.lease_expires_at, None);
    assert_eq!(record.summary.as_deref(), Some("ok"));
    assert_eq!(record.payload_hash, "h");
    assert_eq!(
        record.received,
        Some(retry),
        "completion keeps the envelope"
    );
}

/// A released lease is retaken at once, keeps its steps, flags a different body, and is
/// never left without an expiry.
pub async fn release_and_retake(store: &dyn IdempotencyStore, key: &IdempotencyKey) {
    let now = OffsetDateTime::now_utc();
    let first = started(store, key, "h1", now).await;
    store.record_step(&first, "goal").await.expect("step");
    store.release(&first, "Keap 503").await.expect("release");
    let record = store.get(key).await.expect("get").expect("record");
    assert_eq!(record.status, RecordStatus::Failed);
    assert_eq!(record.last_error.as_deref(), Some("Keap 503"));
    assert_eq!(
        record.lease_expires_at,
        Some(OffsetDateTime::UNIX_EPOCH),
        "never a lease without an expiry"
    );
    let second = started(store, key, "h2", now).await;
    assert!(second.payload_differs);
    assert!(second.is_done("goal"), "a released record keeps its steps");
    assert_eq!(second.attempt, 2);
    assert_eq!(
        store.release(&first, "again").await,
        Err(StoreError::LeaseLost),
        "a released lease cannot be released twice"
    );
}

/// `reopen` (a forced replay) turns only a completed record back into a failed one, keeping
/// its steps and envelope, so the next delivery retakes it at once and skips what was done;
/// a record that is not completed, or missing, is left alone.
pub async fn reopen_for_a_forced_replay(store: &dyn IdempotencyStore, key: &IdempotencyKey) {
    let now = OffsetDateTime::now_utc();
    assert_eq!(
        store.reopen(key, "forced").await,
        Ok(false),
        "nothing to reopen"
    );
    let first = started(store, key, "h", now).await;
    assert_eq!(
        store.reopen(key, "forced").await,
        Ok(false),
        "a record being worked on is not reopened"
    );
    store
        .complete(&first, "ok", Some("goal"), now, TTL)
        .await
        .expect("complete");
    assert_eq!(store.reopen(key, "forced by cks").await, Ok(true));
    let record = store.get(key).await.expect("get").expect("record");
    assert_eq!(record.status, RecordStatus::Failed);
    assert_eq!(record.last_error.as_deref(), Some("forced by cks"));
    assert_eq!(record.lease_expires_at, Some(OffsetDateTime::UNIX_EPOCH));
    assert_eq!(record.received, Some(small(now)), "the envelope stays");
    assert_eq!(
        store.reopen(key, "again").await,
        Ok(false),
        "a reopened record is not completed: a second reopen changes nothing"
    );
    let again = started(store, key, "h", now).await;
    assert!(again.is_done("goal"), "the steps done stay done");
    assert_eq!(again.attempt, 2);
    store
        .complete(&again, "ok again", None, now, TTL)
        .await
        .expect("complete");
    assert!(matches!(
        store.begin(key, "h", &small(now), now, MIN, TTL).await,
        Ok(Begin::AlreadyCompleted { .. })
    ));
}

/// A seen marker: absent until marked, present until its expiry, idempotent, and not a record
/// (the record's own key reads nothing from it). `key` must be unused.
pub async fn seen_markers(store: &dyn IdempotencyStore, key: &IdempotencyKey) {
    let now = OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a time");
    let day = Duration::from_secs(24 * 3600);
    assert_eq!(store.seen(key, now).await, Ok(false), "no marker yet");
    store.mark_seen(key, now, day).await.expect("mark");
    store.mark_seen(key, now, day).await.expect("mark again");
    assert_eq!(store.seen(key, now).await, Ok(true));
    assert_eq!(
        store.seen(key, now + time::Duration::hours(23)).await,
        Ok(true)
    );
    assert_eq!(
        store.seen(key, now + time::Duration::hours(25)).await,
        Ok(false),
        "an expired marker counts as none"
    );
    assert_eq!(store.get(key).await, Ok(None), "a marker is not a record");
}

/// `delete` (`cks forget`) removes a record whatever its status, except while a worker holds
/// a live lease on it; a missing record is absent; the seen marker stays. `key` must be
/// unused.
pub async fn delete_for_forget(store: &dyn IdempotencyStore, key: &IdempotencyKey) {
    let now = OffsetDateTime::now_utc();
    assert_eq!(
        store.delete(key, now).await,
        Ok(Deleted::Absent),
        "no record yet"
    );
    let held = started(store, key, "h", now).await;
    assert_eq!(
        store.delete(key, now).await,
        Ok(Deleted::Leased {
            until: held.expires_at
        }),
        "a worker's live lease keeps the record"
    );
    assert!(store.get(key).await.expect("get").is_some());
    let after = held.expires_at + time::Duration::seconds(1);
    assert_eq!(
        store.delete(key, after).await,
        Ok(Deleted::Removed),
        "an expired lease (the worker stopped) does not"
    );
    assert_eq!(store.get(key).await, Ok(None));

    let failed = started(store, key, "h", now).await;
    store.release(&failed, "Keap 400").await.expect("release");
    assert_eq!(
        store.delete(key, now).await,
        Ok(Deleted::Removed),
        "a failed record goes at once"
    );

    let done = started(store, key, "h", now).await;
    store.mark_seen(key, now, TTL).await.expect("mark");
    store
        .complete(&done, "ok", None, now, TTL)
        .await
        .expect("complete");
    assert_eq!(store.delete(key, now).await, Ok(Deleted::Removed));
    assert_eq!(store.get(key).await, Ok(None), "the record is gone");
    assert_eq!(
        store.seen(key, now).await,
        Ok(true),
        "its seen marker stays: a later delivery is still a duplicate"
    );
    assert_eq!(store.delete(key, now).await, Ok(Deleted::Absent));
}

//! The behaviour every [`IdempotencyStore`] adapter must show, written once and run against
//! each (in-memory here, SQLite in the CLI, DynamoDB in moto). Test support: the functions
//! panic on the first broken promise, naming it.

use super::{Begin, IdempotencyKey, IdempotencyStore, Lease, RecordStatus, StoreError};
use std::time::Duration;
use time::OffsetDateTime;

const MIN: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(35 * 24 * 3600);

async fn started(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    hash: &str,
    now: OffsetDateTime,
) -> Lease {
    match store.begin(key, hash, now, MIN, TTL).await {
        Ok(Begin::Started(lease)) => lease,
        other => panic!("expected a lease, got {other:?}"),
    }
}

/// A live lease blocks; an expired one is retaken with its steps; the crashed holder can no
/// longer write; completion is final and flags a different body.
pub async fn lease_lifecycle(store: &dyn IdempotencyStore, key: &IdempotencyKey) {
    let now = OffsetDateTime::now_utc();
    let first = started(store, key, "h", now).await;
    assert_eq!(first.attempt, 1);
    assert!(!first.payload_differs);
    store.record_step(&first, "goal").await.expect("step");
    assert_eq!(
        store.begin(key, "h", now, MIN, TTL).await,
        Ok(Begin::InProgress {
            lease_expires_at: first.expires_at
        }),
        "a live lease blocks, and the refusal carries its expiry"
    );
    // The first worker crashed; after its lease expires another takes over.
    let second = started(store, key, "h", now + time::Duration::minutes(2)).await;
    assert!(
        second.is_done("goal"),
        "an expired lease is retaken with its steps"
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
        store.begin(key, "h", now, MIN, TTL).await,
        Ok(Begin::AlreadyCompleted {
            summary: Some("ok".into()),
            same_payload: true
        })
    );
    assert_eq!(
        store
            .begin(key, "other", now + time::Duration::days(1), MIN, TTL)
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

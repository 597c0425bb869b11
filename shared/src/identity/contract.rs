//! The behaviour every [`CustomerStore`] and [`NameLocks`] adapter must show, written once and
//! run against each (in-memory here, SQLite in the CLI, DynamoDB in moto). Test support: the
//! functions panic on the first broken promise, naming it.

use super::{CustomerKey, CustomerState, CustomerStore, Locked, NameLocks};
use crate::converge::Version;
use crate::idempotency::StoreError;
use std::time::Duration;
use time::OffsetDateTime;

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a valid time")
        + time::Duration::milliseconds(250)
}

/// The lease: one holder at a time, re-entrant for its holder, taken over once expired; a
/// save needs it; an unlock gives it back. `key` must be unused.
pub async fn one_holder_at_a_time(store: &dyn CustomerStore, key: &CustomerKey) {
    let now = t0();
    let minute = Duration::from_secs(60);
    assert_eq!(store.get(key).await, Ok(None), "an unknown customer");
    assert_eq!(
        store.lock(key, "a", now, minute).await,
        Ok(Locked::Held(CustomerState::default())),
        "a new customer's lease is taken, with an empty state"
    );
    match store.lock(key, "b", now, minute).await {
        Ok(Locked::Busy { until }) => assert_eq!(until, now + time::Duration::minutes(1)),
        other => panic!("a held lease refuses another holder, got {other:?}"),
    }
    assert!(
        matches!(store.lock(key, "a", now, minute).await, Ok(Locked::Held(_))),
        "the holder may take it again"
    );
    let state = CustomerState {
        contact_id: Some(7),
        ..CustomerState::default()
    };
    assert_eq!(
        store.save(key, "b", &state, true).await,
        Err(StoreError::LeaseLost),
        "only the holder saves"
    );
    assert_eq!(store.save(key, "a", &state, false).await, Ok(()));
    assert!(
        matches!(
            store.lock(key, "b", now, minute).await,
            Ok(Locked::Busy { .. })
        ),
        "a save without release keeps the lease"
    );
    let later = now + time::Duration::minutes(2);
    assert_eq!(
        store.lock(key, "b", later, minute).await,
        Ok(Locked::Held(state.clone())),
        "an expired lease is taken over, with the state saved"
    );
    assert_eq!(
        store.save(key, "a", &CustomerState::default(), true).await,
        Err(StoreError::LeaseLost),
        "the first holder lost it"
    );
    store
        .unlock(key, "a")
        .await
        .expect("unlock by a non-holder changes nothing");
    assert!(matches!(
        store.lock(key, "c", later, minute).await,
        Ok(Locked::Busy { .. })
    ));
    store.unlock(key, "b").await.expect("unlock");
    assert!(
        matches!(
            store.lock(key, "c", later, minute).await,
            Ok(Locked::Held(_))
        ),
        "an unlocked lease is free"
    );
    store
        .save(key, "c", &state, true)
        .await
        .expect("save and release");
    assert!(
        matches!(
            store.lock(key, "d", later, minute).await,
            Ok(Locked::Held(_))
        ),
        "a save with release frees the lease"
    );
    store.unlock(key, "d").await.expect("unlock");
    assert_eq!(store.get(key).await, Ok(Some(state)));
    assert_eq!(store.forget(key).await, Ok(true));
    assert_eq!(store.get(key).await, Ok(None));
    assert_eq!(store.forget(key).await, Ok(false));
}

/// Every part of a state survives the store, to the nanosecond. `key` must be unused.
pub async fn state_round_trips(store: &dyn CustomerStore, key: &CustomerKey) {
    let now = t0();
    let mut state = CustomerState {
        contact_id: Some(1_234_567_890_123),
        ..CustomerState::default()
    };
    state.clocks.insert(
        "tag:Billing: Active".into(),
        Version::new(Some(now), "1001"),
    );
    state
        .clocks
        .insert("contact:email".into(), Version::new(None, "snapshot-1-2"));
    state.tags = Some([5, 9].into());
    state
        .mirror
        .insert("field:Chargify Plan".into(), "0011aabb".into());
    state.note_subscription("14", now);
    state.mirror_read_at = Some(OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("time"));
    assert!(matches!(
        store.lock(key, "a", now, Duration::from_secs(60)).await,
        Ok(Locked::Held(_))
    ));
    store.save(key, "a", &state, true).await.expect("save");
    assert_eq!(store.get(key).await, Ok(Some(state.clone())));
    assert_eq!(
        store.lock(key, "b", now, Duration::from_secs(60)).await,
        Ok(Locked::Held(state))
    );
    store.unlock(key, "b").await.expect("unlock");
}

/// A name lock: one holder at a time, re-entrant, expiring, released.
pub async fn name_locks(locks: &dyn NameLocks, name: &str) {
    let now = t0();
    let lease = Duration::from_secs(30);
    assert_eq!(locks.try_lock(name, "a", now, lease).await, Ok(None));
    assert_eq!(
        locks.try_lock(name, "b", now, lease).await,
        Ok(Some(now + time::Duration::seconds(30))),
        "held by another"
    );
    assert_eq!(
        locks.try_lock(name, "a", now, lease).await,
        Ok(None),
        "re-entrant"
    );
    assert_eq!(
        locks
            .try_lock(name, "b", now + time::Duration::seconds(31), lease)
            .await,
        Ok(None),
        "expired: taken over"
    );
    locks
        .unlock(name, "a")
        .await
        .expect("a non-holder's unlock changes nothing");
    assert!(locks
        .try_lock(name, "c", now, lease)
        .await
        .expect("lock")
        .is_some());
    locks.unlock(name, "b").await.expect("unlock");
    assert_eq!(
        locks.try_lock(name, "c", now, lease).await,
        Ok(None),
        "released"
    );
    locks.unlock(name, "c").await.expect("unlock");
}

/// Test support: stores a customer as mapped to `contact`, with subscription `clock` applied
/// as of its time (what the processor leaves after applying that subscription's change).
pub async fn seed(
    store: &dyn CustomerStore,
    key: &CustomerKey,
    contact: crate::keap::ContactId,
    clock: Option<(&str, OffsetDateTime)>,
) {
    let holder = "seed";
    let state = match store
        .lock(
            key,
            holder,
            OffsetDateTime::now_utc(),
            Duration::from_secs(60),
        )
        .await
    {
        Ok(Locked::Held(state)) => state,
        other => panic!("seeding {key:?}: {other:?}"),
    };
    let mut state = CustomerState {
        contact_id: Some(contact),
        ..state
    };
    if let Some((subscription, at)) = clock {
        state.note_subscription(subscription, at);
    }
    store
        .save(key, holder, &state, true)
        .await
        .unwrap_or_else(|e| panic!("seeding {key:?}: {e}"));
}

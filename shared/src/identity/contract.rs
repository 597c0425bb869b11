//! The behaviour every [`CustomerStore`] adapter must show, written once and run against each
//! (in-memory here, SQLite in the CLI, DynamoDB in moto). Test support: the function panics
//! on the first broken promise, naming it.

use super::{ClockUpdate, CustomerKey, CustomerStore};
use time::OffsetDateTime;

/// The clock only moves forward, per subscription; equal times pass (a retry of the same
/// event); a stale save still stores the contact id; sub-second times survive the round trip.
/// `key` and `fresh` must be unused keys.
pub async fn clock_only_moves_forward(
    store: &dyn CustomerStore,
    key: &CustomerKey,
    fresh: &CustomerKey,
) {
    assert_eq!(
        store.get(key).await,
        Ok(None),
        "an unknown customer has no record"
    );
    let t1 = OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a valid time")
        + time::Duration::milliseconds(250);
    let t2 = t1 + time::Duration::milliseconds(500);
    assert_eq!(
        store.save(key, 7, Some(("s1", t2))).await,
        Ok(ClockUpdate::Advanced)
    );
    assert_eq!(
        store.save(key, 8, Some(("s1", t1))).await,
        Ok(ClockUpdate::Stale),
        "an older state never moves the clock back"
    );
    let record = store.get(key).await.expect("get").expect("record");
    assert_eq!(
        record.contact_id,
        Some(8),
        "a stale save still stores the contact"
    );
    assert_eq!(record.subscription_clocks.get("s1"), Some(&t2));
    assert_eq!(
        store.save(key, 8, Some(("s1", t2))).await,
        Ok(ClockUpdate::Advanced),
        "equal times are not stale: a retry of the same event passes"
    );
    assert_eq!(
        store.save(key, 8, Some(("s2", t1))).await,
        Ok(ClockUpdate::Advanced),
        "each subscription has its own clock"
    );
    assert_eq!(store.save(key, 9, None).await, Ok(ClockUpdate::Unchanged));
    let record = store.get(key).await.expect("get").expect("record");
    assert_eq!(record.contact_id, Some(9));
    assert!(record.is_stale("s1", t1));
    assert!(!record.is_stale("s1", t2));
    assert!(!record.is_stale("s2", t1));
    assert_eq!(
        record.subscription_clocks.keys().collect::<Vec<_>>(),
        vec!["s1", "s2"]
    );
    assert_eq!(
        store.save(fresh, 1, Some(("s9", t1))).await,
        Ok(ClockUpdate::Advanced),
        "a clock is created with the record itself"
    );
    let record = store.get(fresh).await.expect("get").expect("record");
    assert_eq!(record.subscription_clocks.get("s9"), Some(&t1));
}

//! The DynamoDB idempotency store and identity map against DynamoDB in moto: the behaviours
//! the in-memory adapters' unit tests pin down, plus what only a real store can show
//! (concurrent workers, one write per call, missing tables, an unreachable endpoint).

use integration_tests::{
    create_customers_table, create_idempotency_table, dynamodb_client, logged_dynamodb_client,
    moto_endpoint, unreachable_endpoint, RequestLog,
};
use shared::dynamodb::{string, Table, PARTITION_KEY};
use shared::idempotency::{
    contract, Begin, DynamoDbIdempotencyStore, IdempotencyKey, IdempotencyStore, Lease,
    RecordStatus, StoreError,
};
use shared::identity::{
    contract as contract_identity, CustomerKey, CustomerStore, DynamoDbCustomerStore,
    DynamoDbNameLocks,
};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const MIN: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(35 * 24 * 3600);

fn key() -> IdempotencyKey {
    IdempotencyKey::new("acme", "123")
}

async fn idempotency_store() -> DynamoDbIdempotencyStore {
    let client = dynamodb_client(&moto_endpoint()).await;
    let table = create_idempotency_table(&client).await;
    DynamoDbIdempotencyStore::new(Table::new(client, table))
}

/// `begin` on [`key`] at `now`, for a small delivery received then.
async fn begin_at(
    store: &DynamoDbIdempotencyStore,
    hash: &str,
    now: OffsetDateTime,
) -> Result<Begin, StoreError> {
    store
        .begin(&key(), hash, &contract::small(now), now, MIN, TTL)
        .await
}

async fn started(store: &DynamoDbIdempotencyStore, hash: &str, now: OffsetDateTime) -> Lease {
    match begin_at(store, hash, now).await.expect("begin") {
        Begin::Started(lease) => lease,
        other => panic!("expected a lease, got {other:?}"),
    }
}

#[tokio::test]
async fn keeps_the_idempotency_contract() {
    let store = idempotency_store().await;
    contract::lease_lifecycle(&store, &IdempotencyKey::new("acme", "1")).await;
    contract::release_and_retake(&store, &IdempotencyKey::new("acme", "2")).await;
    contract::reopen_for_a_forced_replay(&store, &IdempotencyKey::new("acme", "3")).await;
    contract::seen_markers(&store, &IdempotencyKey::new("acme", "4")).await;
    contract::delete_for_forget(&store, &IdempotencyKey::new("acme", "5")).await;
}

#[tokio::test]
async fn every_lease_has_an_expiry_and_every_record_a_ttl() {
    let store = idempotency_store().await;
    // A sub-second time: the stored numbers keep it exactly.
    let now = OffsetDateTime::now_utc();
    let lease = started(&store, "h", now).await;
    assert_eq!(lease.expires_at, now + MIN);
    let record = store.get(&key()).await.expect("get").expect("record");
    assert_eq!(record.status, RecordStatus::InProgress);
    assert_eq!(record.lease_expires_at, Some(lease.expires_at));
    assert_eq!(
        record.expires_at.unix_timestamp(),
        (now + TTL).unix_timestamp(),
        "the TTL is whole epoch seconds"
    );
    // Completing moves the TTL to completion + TTL.
    let later = now + time::Duration::hours(1);
    store
        .complete(&lease, "ok", None, later, TTL)
        .await
        .expect("complete");
    let record = store.get(&key()).await.expect("get").expect("record");
    assert_eq!(
        record.expires_at.unix_timestamp(),
        (later + TTL).unix_timestamp()
    );
    assert!(record.steps_done.is_empty());
    assert_eq!(
        store.get(&IdempotencyKey::new("acme", "never")).await,
        Ok(None)
    );
}

/// Eight workers race for one webhook. That only one *takes* the lease rests on DynamoDB's
/// conditional-write guarantee, which moto does not give: it does not serialise concurrent
/// updates of one item (2 of 8 were seen starting). What holds on any backend, and is checked
/// here, is that whichever way the race goes exactly one worker can finish: every later write
/// is conditional on the holder's token. Sequential refusal is in the contract test.
#[tokio::test]
async fn eight_concurrent_begins_leave_exactly_one_holder() {
    let store = idempotency_store().await;
    let now = OffsetDateTime::now_utc();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { begin_at(&store, "h", now).await })
        })
        .collect();
    let mut leases = Vec::new();
    for task in tasks {
        match task.await.expect("task").expect("begin") {
            Begin::Started(lease) => leases.push(lease),
            Begin::InProgress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!leases.is_empty(), "someone takes the lease");
    let mut finished = 0;
    for lease in &leases {
        match store.complete(lease, "ok", None, now, TTL).await {
            Ok(()) => finished += 1,
            Err(StoreError::LeaseLost) => {}
            Err(e) => panic!("complete: {e}"),
        }
    }
    assert_eq!(finished, 1, "exactly one holder can finish");
    let record = store.get(&key()).await.expect("get").expect("record");
    assert_eq!(record.status, RecordStatus::Completed);
}

#[tokio::test]
async fn each_operation_is_one_write_and_a_refusal_needs_no_read() {
    let (client, log) = logged_dynamodb_client(&moto_endpoint()).await;
    let table = create_idempotency_table(&client).await;
    log.take();
    let store = DynamoDbIdempotencyStore::new(Table::new(client, table));
    let now = OffsetDateTime::now_utc();
    let one_update = |log: &RequestLog, what: &str| {
        assert_eq!(log.take(), vec!["UpdateItem".to_owned()], "{what}");
    };
    let first = started(&store, "h", now).await;
    one_update(&log, "begin");
    store.record_step(&first, "goal").await.expect("step");
    one_update(&log, "record_step");
    assert!(matches!(
        begin_at(&store, "h", now).await,
        Ok(Begin::InProgress { .. })
    ));
    one_update(&log, "refused begin");
    store.release(&first, "x").await.expect("release");
    one_update(&log, "release");
    let second = started(&store, "h", now).await;
    one_update(&log, "retaken begin");
    store
        .complete(&second, "ok", Some("note"), now, TTL)
        .await
        .expect("complete");
    one_update(&log, "complete with a final step");
    assert!(matches!(
        begin_at(&store, "h", now).await,
        Ok(Begin::AlreadyCompleted { .. })
    ));
    one_update(&log, "begin of a completed record");
    store.get(&key()).await.expect("get");
    assert_eq!(log.take(), vec!["GetItem".to_owned()]);

    let (client, log) = logged_dynamodb_client(&moto_endpoint()).await;
    let table = create_customers_table(&client).await;
    log.take();
    let customers = DynamoDbCustomerStore::new(Table::new(client, table));
    let customer = CustomerKey::new("acme", "42");
    let t = OffsetDateTime::now_utc();
    let minute = std::time::Duration::from_secs(60);
    let state = match customers.lock(&customer, "w", t, minute).await {
        Ok(shared::identity::Locked::Held(state)) => state,
        other => panic!("lock: {other:?}"),
    };
    one_update(&log, "the lease taken with the state read");
    customers
        .save(&customer, "w", &state, false)
        .await
        .expect("save");
    one_update(&log, "a save keeping the lease");
    customers
        .save(&customer, "w", &state, true)
        .await
        .expect("save");
    one_update(&log, "a save giving the lease back");
    assert!(matches!(
        customers.lock(&customer, "w", t, minute).await,
        Ok(shared::identity::Locked::Held(_))
    ));
    log.take();
    assert!(matches!(
        customers.lock(&customer, "other", t, minute).await,
        Ok(shared::identity::Locked::Busy { .. })
    ));
    one_update(
        &log,
        "a refused lease answers its holder's expiry in the same call",
    );
}

#[tokio::test]
async fn keeps_the_customer_store_contract() {
    let client = dynamodb_client(&moto_endpoint()).await;
    let table = create_customers_table(&client).await;
    let store = DynamoDbCustomerStore::new(Table::new(client, table));
    contract_identity::one_holder_at_a_time(&store, &CustomerKey::new("acme", "42")).await;
    contract_identity::state_round_trips(&store, &CustomerKey::new("acme", "43")).await;
    contract_identity::name_locks(
        &DynamoDbNameLocks::new(Table::new(
            dynamodb_client(&moto_endpoint()).await,
            store.table(),
        )),
        "Billing: Active",
    )
    .await;
}

/// An item of the layout before the state attribute (one `sub#` clock per subscription)
/// reads as a state with those clocks.
#[tokio::test]
async fn an_item_from_before_the_state_reads_its_subscription_clocks() {
    let client = dynamodb_client(&moto_endpoint()).await;
    let table = create_customers_table(&client).await;
    client
        .put_item()
        .table_name(&table)
        .item(PARTITION_KEY, string("acme#42"))
        .item(
            "contact_id",
            aws_sdk_dynamodb::types::AttributeValue::N("1007".into()),
        )
        .item(
            "sub#14",
            aws_sdk_dynamodb::types::AttributeValue::N("1790000000.5".into()),
        )
        .send()
        .await
        .expect("put");
    let store = DynamoDbCustomerStore::new(Table::new(client, table));
    let state = store
        .get(&CustomerKey::new("acme", "42"))
        .await
        .expect("get")
        .expect("item");
    assert_eq!(state.contact_id, Some(1007));
    let at = OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("time")
        + time::Duration::milliseconds(500);
    assert!(state.has_applied("14", at));
    assert!(!state.has_applied("14", at + time::Duration::seconds(1)));
}

#[tokio::test]
async fn a_record_with_odd_attributes_is_corrupt_not_a_panic() {
    let client = dynamodb_client(&moto_endpoint()).await;
    let table = create_idempotency_table(&client).await;
    client
        .put_item()
        .table_name(&table)
        .item(PARTITION_KEY, string(key().storage_key()))
        .item("status", string("SHRUG"))
        .item("payload_hash", string("h"))
        .send()
        .await
        .expect("put");
    let store = DynamoDbIdempotencyStore::new(Table::new(client.clone(), &table));
    assert!(
        matches!(store.get(&key()).await, Err(StoreError::Corrupt { .. })),
        "get"
    );
    // No lease expiry, so the begin is refused; the refused item is unreadable.
    assert!(
        matches!(
            begin_at(&store, "h", OffsetDateTime::now_utc()).await,
            Err(StoreError::Corrupt { .. })
        ),
        "begin"
    );
    let customers = DynamoDbCustomerStore::new(Table::new(client.clone(), &table));
    client
        .put_item()
        .table_name(&table)
        .item(PARTITION_KEY, string("acme#42"))
        .item("contact_id", string("seven"))
        .send()
        .await
        .expect("put");
    assert!(matches!(
        customers.get(&CustomerKey::new("acme", "42")).await,
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn a_missing_table_is_unavailable() {
    let client = dynamodb_client(&moto_endpoint()).await;
    let store = DynamoDbIdempotencyStore::new(Table::new(client.clone(), "never-created"));
    let now = OffsetDateTime::now_utc();
    let unavailable = |result: Result<(), StoreError>, what: &str| match result {
        Err(StoreError::Unavailable { detail }) => {
            assert!(detail.contains("ResourceNotFound"), "{what}: {detail}")
        }
        other => panic!("{what}: {other:?}"),
    };
    unavailable(begin_at(&store, "h", now).await.map(drop), "begin");
    unavailable(store.get(&key()).await.map(drop), "get");
    let customers = DynamoDbCustomerStore::new(Table::new(client, "never-created"));
    let customer = CustomerKey::new("acme", "42");
    unavailable(
        customers.lock(&customer, "w", now, MIN).await.map(drop),
        "lock",
    );
    unavailable(customers.get(&customer).await.map(drop), "customer get");
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_fast_as_unavailable() {
    let client = dynamodb_client(&unreachable_endpoint()).await;
    let store = DynamoDbIdempotencyStore::new(Table::new(client.clone(), "any"));
    let customers = DynamoDbCustomerStore::new(Table::new(client, "any"));
    let started = Instant::now();
    let result = begin_at(&store, "h", OffsetDateTime::now_utc()).await;
    assert!(
        matches!(
            result,
            Err(StoreError::Unavailable { .. } | StoreError::Throttled { .. })
        ),
        "{result:?}"
    );
    let result = customers.get(&CustomerKey::new("acme", "42")).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "{result:?}"
    );
    // Five attempts with a backoff capped at 2 s: seconds, not the invocation's lifetime.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_backfill_cursor_lives_in_the_idempotency_table_beside_the_records_without_a_ttl() {
    use shared::backfill::{cursor_key, BackfillQuery};
    use shared::cursor_store::{CursorStore, DynamoDbCursorStore};
    let client = dynamodb_client(&moto_endpoint()).await;
    let table = create_idempotency_table(&client).await;
    let cursors = DynamoDbCursorStore::new(Table::new(client.clone(), table.clone()));
    let records = DynamoDbIdempotencyStore::new(Table::new(client.clone(), table.clone()));
    let key = cursor_key("acme", &BackfillQuery::default());
    assert_eq!(cursors.load(&key).await, Ok(None));
    cursors.save(&key, "{\"page\":1}").await.expect("save");
    cursors.save(&key, "{\"page\":2}").await.expect("replace");
    assert_eq!(
        cursors.load(&key).await,
        Ok(Some("{\"page\":2}".to_owned()))
    );
    // A record of the same site is another item, and the cursor is none of its business.
    let now = OffsetDateTime::now_utc();
    assert!(matches!(
        records
            .begin(
                &key_of("acme", "1"),
                "h",
                &contract::small(now),
                now,
                MIN,
                TTL
            )
            .await,
        Ok(Begin::Started(_))
    ));
    let item = client
        .get_item()
        .table_name(&table)
        .key(PARTITION_KEY, string(key.clone()))
        .send()
        .await
        .expect("get")
        .item
        .expect("the cursor item");
    assert!(
        !item.contains_key("expires_at"),
        "the TTL must never delete a cursor"
    );
    assert_eq!(
        cursors.load(&key).await,
        Ok(Some("{\"page\":2}".to_owned()))
    );
}

fn key_of(site: &str, id: &str) -> IdempotencyKey {
    IdempotencyKey::new(site, id)
}

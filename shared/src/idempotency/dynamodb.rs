//! DynamoDB adapter for idempotency records: one item per webhook, one conditional write per
//! call, the same semantics as [`super::InMemoryIdempotencyStore`] (the integration tests
//! run the same behaviours against moto).
//!
//! Table: partition key `pk` (S) = [`IdempotencyKey::storage_key`], no sort key, TTL on
//! `expires_at`. Attributes:
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `status` | S | `IN_PROGRESS`, `COMPLETED` or `FAILED` |
//! | `payload_hash` | S | hash of the first body seen |
//! | `steps_done` | SS | steps done so far (absent while none: DynamoDB has no empty sets) |
//! | `attempts` | N | attempts begun |
//! | `lease_token` | S | the holder's token; only while `IN_PROGRESS` |
//! | `lease_expires_at` | N | epoch seconds; `0` once released, absent once completed |
//! | `started_at` | N | epoch seconds, when the latest attempt began |
//! | `summary`, `completed_at` | S, N | set by `complete` |
//! | `last_error` | S | set by `release` (at most [`MAX_ERROR_BYTES`]) |
//! | `expires_at` | N | whole epoch seconds: the TTL. Set by `begin` (the only write that can create an item) and `complete`, so an abandoned record still expires |
//! | `event`, `received_at`, `envelope` | S, N, S | the delivery that began the latest attempt ([`Received`]), set by `begin` in its one write |
//!
//! The envelope makes items as large as the webhook (8 KB for a typical Chargify body, at
//! most SQS's 256 KiB, under DynamoDB's 400 KB item limit). Writes are billed per KB of the
//! item, so each of a record's two writes costs a few write units instead of one: the price
//! of replaying from the record without a second table or write.
//!
//! IAM: `dynamodb:UpdateItem`, `dynamodb:GetItem` on the table (the processor);
//! `dynamodb:Scan` too for `cks replay --since` and `cks status` without `--site`, and
//! `Scan` and `DeleteItem` for `cks forget`.

use super::{
    later, new_token, Begin, Deleted, IdempotencyKey, IdempotencyRecord, IdempotencyStore, Lease,
    Received, RecordStatus, StoreError,
};
use crate::dynamodb::{
    classify, epoch, epoch_whole_seconds, number, refused_item, string, Item, ItemReader, Table,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use std::time::Duration;
use time::OffsetDateTime;

/// `last_error` keeps this many bytes at most: enough for any error we write, far below
/// DynamoDB's 400 KB item limit.
pub const MAX_ERROR_BYTES: usize = 2048;

const STATUS: &str = "status";
const PAYLOAD_HASH: &str = "payload_hash";
const STEPS_DONE: &str = "steps_done";
const ATTEMPTS: &str = "attempts";
const LEASE_EXPIRES_AT: &str = "lease_expires_at";
const SUMMARY: &str = "summary";
const LAST_ERROR: &str = "last_error";
const EXPIRES_AT: &str = "expires_at";
const EVENT: &str = "event";
const RECEIVED_AT: &str = "received_at";
const ENVELOPE: &str = "envelope";

/// Takes (or retakes) the lease. An `UpdateItem`, not a `PutItem`: a retaken lease must keep
/// the `steps_done`, `payload_hash` and `attempts` of earlier attempts, which a put would
/// replace, and doing it in one conditional write (rather than a read then a write) is
/// what makes two workers unable to both win. `status` is a reserved word, hence `#status`.
const BEGIN_UPDATE: &str = "SET #status = :in_progress, lease_token = :token, \
    lease_expires_at = :lease_expires_at, started_at = :now, expires_at = :expires_at, \
    payload_hash = if_not_exists(payload_hash, :hash), \
    attempts = if_not_exists(attempts, :zero) + :one, \
    #event = :event, #received_at = :received_at, #envelope = :envelope";
/// A new record, or one neither completed nor under a live lease (a released lease has
/// expiry 0, so it is retaken at once).
const BEGIN_CONDITION: &str =
    "attribute_not_exists(pk) OR (#status <> :completed AND lease_expires_at < :now)";
/// Every write after `begin` is allowed only to the lease holder; the token disappears on
/// `complete` and `release`, so a late write of an earlier holder fails.
const HOLDER_CONDITION: &str = "lease_token = :token AND #status = :in_progress";

#[derive(Debug, Clone)]
pub struct DynamoDbIdempotencyStore {
    table: Table,
}

impl DynamoDbIdempotencyStore {
    /// A store on `table`; build it with [`Table::from_config`] (or with a client from
    /// [`crate::dynamodb::client`]) for our retry policy on throttling.
    pub fn new(table: Table) -> Self {
        Self { table }
    }

    pub fn table(&self) -> &str {
        self.table.name()
    }

    fn update(&self, key: &IdempotencyKey) -> UpdateItemFluentBuilder {
        self.table
            .update(key.storage_key())
            .expression_attribute_names("#status", STATUS)
    }

    /// One write by the lease holder; a failed condition means the lease was lost.
    async fn write_as_holder(
        &self,
        lease: &Lease,
        update: UpdateItemFluentBuilder,
    ) -> Result<(), StoreError> {
        let result = update
            .condition_expression(HOLDER_CONDITION)
            .expression_attribute_values(":token", string(&lease.token))
            .expression_attribute_values(":in_progress", string(RecordStatus::InProgress.as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if refused_item(&err).is_some() => Err(StoreError::LeaseLost),
            Err(err) => Err(classify(err)),
        }
    }
}

/// A stored item as a record (`key` is the one asked for: the item's `pk` is its storage key).
fn record_from_item(key: &IdempotencyKey, item: &Item) -> Result<IdempotencyRecord, StoreError> {
    let reader = ItemReader::new(item);
    // All three or none: records from before envelopes were kept have none.
    let received = match reader.opt_string(ENVELOPE)? {
        None => None,
        Some(envelope) => Some(Received {
            event: reader.string(EVENT)?.to_owned(),
            received_at: reader.epoch(RECEIVED_AT)?,
            envelope: envelope.to_owned(),
        }),
    };
    let status_text = reader.string(STATUS)?;
    let status = RecordStatus::parse(status_text)
        .ok_or_else(|| reader.corrupt(STATUS, &format!("is {status_text:?}")))?;
    Ok(IdempotencyRecord {
        key: key.clone(),
        status,
        payload_hash: reader.string(PAYLOAD_HASH)?.to_owned(),
        steps_done: reader.string_set(STEPS_DONE)?,
        attempts: reader.number(ATTEMPTS)?,
        lease_expires_at: reader.opt_epoch(LEASE_EXPIRES_AT)?,
        summary: reader.opt_string(SUMMARY)?.map(str::to_owned),
        last_error: reader.opt_string(LAST_ERROR)?.map(str::to_owned),
        expires_at: reader.epoch(EXPIRES_AT)?,
        received,
    })
}

/// Why `begin` was refused, from the record the refused write returned (no extra read).
fn refusal(
    key: &IdempotencyKey,
    payload_hash: &str,
    old: Option<&Item>,
) -> Result<Begin, StoreError> {
    let Some(old) = old else {
        // Real DynamoDB returns the item whenever this condition fails (it can only fail on
        // an existing item); without it there is nothing to decide on, so try again later.
        return Err(StoreError::Unavailable {
            detail: format!(
                "begin for {} was refused without the stored record",
                key.storage_key()
            ),
        });
    };
    let record = record_from_item(key, old)?;
    match (record.status, record.lease_expires_at) {
        (RecordStatus::Completed, _) => Ok(Begin::AlreadyCompleted {
            summary: record.summary,
            same_payload: record.payload_hash == payload_hash,
        }),
        (_, Some(lease_expires_at)) => Ok(Begin::InProgress { lease_expires_at }),
        (_, None) => {
            Err(ItemReader::new(old)
                .corrupt(LEASE_EXPIRES_AT, "is missing on an unfinished record"))
        }
    }
}

fn step_set(step: &str) -> AttributeValue {
    AttributeValue::Ss(vec![step.to_owned()])
}

impl DynamoDbIdempotencyStore {
    /// A refused `begin` whose returned record is incomplete: DynamoDB returns the whole old
    /// item atomically, but an emulator answering two writes at once can hand back one caught
    /// mid-write. Decide on a consistent read instead (bounded: 3 reads, 100 ms apart); a
    /// record still unreadable after that is reported corrupt.
    async fn reread_refusal(
        &self,
        key: &IdempotencyKey,
        payload_hash: &str,
    ) -> Result<Begin, StoreError> {
        let mut last = None;
        for _ in 0..3 {
            let item = self.table.get(key.storage_key()).await?;
            match refusal(key, payload_hash, item.as_ref()) {
                Err(e @ StoreError::Corrupt { .. }) => last = Some(e),
                decided => return decided,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or(StoreError::Corrupt {
            detail: format!("record {} unreadable", key.storage_key()),
        }))
    }
}

#[async_trait]
impl IdempotencyStore for DynamoDbIdempotencyStore {
    async fn begin(
        &self,
        key: &IdempotencyKey,
        payload_hash: &str,
        received: &Received,
        now: OffsetDateTime,
        lease_for: Duration,
        record_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let token = new_token();
        let lease_expires_at = later(now, lease_for);
        let result = self
            .update(key)
            .update_expression(BEGIN_UPDATE)
            .condition_expression(BEGIN_CONDITION)
            .expression_attribute_values(":in_progress", string(RecordStatus::InProgress.as_str()))
            .expression_attribute_values(":completed", string(RecordStatus::Completed.as_str()))
            .expression_attribute_values(":token", string(&token))
            .expression_attribute_values(":lease_expires_at", epoch(lease_expires_at))
            .expression_attribute_values(":now", epoch(now))
            .expression_attribute_values(":expires_at", epoch_whole_seconds(later(now, record_ttl)))
            .expression_attribute_values(":hash", string(payload_hash))
            .expression_attribute_values(":zero", number(0))
            .expression_attribute_values(":one", number(1))
            .expression_attribute_names("#event", EVENT)
            .expression_attribute_names("#received_at", RECEIVED_AT)
            .expression_attribute_names("#envelope", ENVELOPE)
            .expression_attribute_values(":event", string(&received.event))
            .expression_attribute_values(":received_at", epoch(received.received_at))
            .expression_attribute_values(":envelope", string(&received.envelope))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(err) => {
                return match refused_item(&err) {
                    Some(old) => match refusal(key, payload_hash, old) {
                        Err(StoreError::Corrupt { .. }) => {
                            self.reread_refusal(key, payload_hash).await
                        }
                        decided => decided,
                    },
                    None => Err(classify(err)),
                }
            }
        };
        let item = output.attributes.unwrap_or_default();
        let record = record_from_item(key, &item)?;
        Ok(Begin::Started(Lease {
            key: key.clone(),
            token,
            expires_at: lease_expires_at,
            steps_done: record.steps_done,
            attempt: record.attempts,
            payload_differs: record.payload_hash != payload_hash,
        }))
    }

    async fn record_step(&self, lease: &Lease, step: &str) -> Result<(), StoreError> {
        let update = self
            .update(&lease.key)
            .update_expression("ADD steps_done :step")
            .expression_attribute_values(":step", step_set(step));
        self.write_as_holder(lease, update).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        summary: &str,
        final_step: Option<&str>,
        now: OffsetDateTime,
        record_ttl: Duration,
    ) -> Result<(), StoreError> {
        let set = "SET #status = :completed, summary = :summary, completed_at = :now, \
                   expires_at = :expires_at REMOVE lease_token, lease_expires_at";
        let mut update = self
            .update(&lease.key)
            .expression_attribute_values(":completed", string(RecordStatus::Completed.as_str()))
            .expression_attribute_values(":summary", string(summary))
            .expression_attribute_values(":now", epoch(now))
            .expression_attribute_values(
                ":expires_at",
                epoch_whole_seconds(later(now, record_ttl)),
            );
        update = match final_step {
            Some(step) => update
                .update_expression(format!("{set} ADD steps_done :step"))
                .expression_attribute_values(":step", step_set(step)),
            None => update.update_expression(set),
        };
        self.write_as_holder(lease, update).await
    }

    async fn release(&self, lease: &Lease, error: &str) -> Result<(), StoreError> {
        let error = &error[..error.floor_char_boundary(MAX_ERROR_BYTES)];
        // Expiry 0, never none: the next `begin` retakes the record at once.
        let update = self
            .update(&lease.key)
            .update_expression(
                "SET #status = :failed, last_error = :error, lease_expires_at = :zero \
                 REMOVE lease_token",
            )
            .expression_attribute_values(":failed", string(RecordStatus::Failed.as_str()))
            .expression_attribute_values(":error", string(error))
            .expression_attribute_values(":zero", number(0));
        self.write_as_holder(lease, update).await
    }

    async fn get(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.table
            .get(key.storage_key())
            .await?
            .map(|item| record_from_item(key, &item))
            .transpose()
    }

    /// The marker is its own item, `seen#<site>#<webhook id>`, with only the TTL attribute:
    /// written just before the record is completed, so a completed record always has one.
    async fn mark_seen(
        &self,
        key: &IdempotencyKey,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.table
            .update(super::seen_marker_key(key))
            .update_expression("SET expires_at = :expires_at")
            .expression_attribute_values(":expires_at", epoch_whole_seconds(later(now, ttl)))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// DynamoDB deletes an expired item within days, not at once: the expiry is checked too.
    async fn seen(&self, key: &IdempotencyKey, now: OffsetDateTime) -> Result<bool, StoreError> {
        let Some(item) = self.table.get(super::seen_marker_key(key)).await? else {
            return Ok(false);
        };
        let until = ItemReader::new(&item).opt_epoch(EXPIRES_AT)?;
        Ok(until.is_none_or(|until| until > now))
    }

    async fn delete(
        &self,
        key: &IdempotencyKey,
        now: OffsetDateTime,
    ) -> Result<Deleted, StoreError> {
        // One conditional delete: the record goes unless a worker's lease is live (the
        // converse of `begin`'s retake condition); a missing item passes and returns nothing.
        let result = self
            .table
            .delete_item(key.storage_key())
            .condition_expression(
                "attribute_not_exists(pk) OR #status <> :in_progress OR lease_expires_at < :now",
            )
            .expression_attribute_names("#status", STATUS)
            .expression_attribute_values(":in_progress", string(RecordStatus::InProgress.as_str()))
            .expression_attribute_values(":now", epoch(now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(output) if output.attributes.as_ref().is_some_and(|a| !a.is_empty()) => {
                Ok(Deleted::Removed)
            }
            Ok(_) => Ok(Deleted::Absent),
            Err(err) => {
                let Some(DeleteItemError::ConditionalCheckFailedException(failed)) =
                    err.as_service_error()
                else {
                    return Err(classify(err));
                };
                // The refusal carries the record when the store returns it; else read it
                // (then gone since, or still held: its worker's lease said until when).
                let held = match failed.item() {
                    Some(item) => Some(record_from_item(key, item)?),
                    None => self.get(key).await?,
                };
                Ok(match held {
                    None => Deleted::Absent,
                    Some(record) => Deleted::Leased {
                        until: record.lease_expires_at.unwrap_or(now),
                    },
                })
            }
        }
    }

    async fn reopen(&self, key: &IdempotencyKey, note: &str) -> Result<bool, StoreError> {
        let note = &note[..note.floor_char_boundary(MAX_ERROR_BYTES)];
        let result = self
            .update(key)
            .update_expression(
                "SET #status = :failed, last_error = :note, lease_expires_at = :zero",
            )
            .condition_expression("#status = :completed")
            .expression_attribute_values(":failed", string(RecordStatus::Failed.as_str()))
            .expression_attribute_values(":completed", string(RecordStatus::Completed.as_str()))
            .expression_attribute_values(":note", string(note))
            .expression_attribute_values(":zero", number(0))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if refused_item(&err).is_some() => Ok(false),
            Err(err) => Err(classify(err)),
        }
    }
}

/// One page of [`DynamoDbIdempotencyStore::scan_page`].
#[derive(Debug, Default)]
pub struct RecordPage {
    pub records: Vec<IdempotencyRecord>,
    /// Items on the page that are not readable records, with why (reported, not fatal: one
    /// bad item must not hide the others from an operator).
    pub unreadable: Vec<StoreError>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<Item>,
}

impl DynamoDbIdempotencyStore {
    /// One page of a full scan of the table (operator commands only: `cks replay --since`,
    /// `cks status` without a site; the processor never scans). Eventually consistent, which
    /// is fine for choosing what to replay: each replay is decided again by the record.
    pub async fn scan_page(&self, start: Option<Item>) -> Result<RecordPage, StoreError> {
        // Records only: the table also holds seen markers and cursors, which have no status.
        let output = self
            .table
            .scan()
            .filter_expression("attribute_exists(#status)")
            .expression_attribute_names("#status", STATUS)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(classify)?;
        let mut page = RecordPage {
            next: output.last_evaluated_key.filter(|k| !k.is_empty()),
            ..RecordPage::default()
        };
        for item in output.items.unwrap_or_default() {
            let reader = ItemReader::new(&item);
            let parsed = reader
                .string(crate::dynamodb::PARTITION_KEY)
                .and_then(|pk| {
                    let key = IdempotencyKey::from_storage_key(pk).ok_or_else(|| {
                        reader.corrupt(crate::dynamodb::PARTITION_KEY, "has no '#'")
                    })?;
                    record_from_item(&key, &item)
                });
            match parsed {
                Ok(record) => page.records.push(record),
                Err(e) => page.unreadable.push(e),
            }
        }
        Ok(page)
    }
}

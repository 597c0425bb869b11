//! DynamoDB adapters: the identity map and the name locks, in the customers table, with the
//! contract of [`super::contract`] (checked against moto in the integration tests).
//!
//! Table: partition key `pk` (S), no sort key, no TTL (the mapping must outlive any webhook).
//! - A customer: `pk` = [`CustomerKey::storage_key`]; `contact_id` (N); `state` (S, the
//!   [`CustomerState`] JSON without the contact id); `lease_holder` (S) and `lease_until`
//!   (N, epoch seconds, exact) while a worker holds it. Items written before the state
//!   existed have one `sub#<subscription id>` attribute per subscription clock instead: they
//!   are read as a state with those subscription clocks.
//! - A name lock: `pk` = `lock#<name>`; `lease_holder`, `lease_until`.
//!
//! Every write is one conditional `UpdateItem`; the lease is taken with `ReturnValues =
//! ALL_NEW`, so the read comes with it, and a refused one answers the holder's expiry
//! (`ReturnValuesOnConditionCheckFailure = ALL_OLD`) at no extra cost.
//!
//! IAM: `dynamodb:GetItem`, `UpdateItem`, `DeleteItem` on the table.

use super::{CustomerKey, CustomerState, CustomerStore, Locked, NameLocks};
use crate::dynamodb::{classify, epoch, number, refused_item, string, ItemReader, Table};
use crate::idempotency::{later, StoreError};
use crate::keap::ContactId;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use std::time::Duration;
use time::OffsetDateTime;

const CONTACT_ID: &str = "contact_id";
const STATE: &str = "state";
const LEASE_UNTIL: &str = "lease_until";
/// Subscription clocks of items written before [`STATE`] existed.
const LEGACY_CLOCK_PREFIX: &str = "sub#";

/// Takes the lease: nobody holds it, it expired, or the caller holds it already.
const MAY_TAKE: &str =
    "attribute_not_exists(lease_until) OR lease_until < :now OR lease_holder = :holder";

#[derive(Debug, Clone)]
pub struct DynamoDbCustomerStore {
    table: Table,
}

impl DynamoDbCustomerStore {
    /// A store on `table`; build it with [`Table::from_config`] for our retry policy.
    pub fn new(table: Table) -> Self {
        Self { table }
    }

    pub fn table(&self) -> &str {
        self.table.name()
    }
}

fn read_state(item: &crate::dynamodb::Item) -> Result<CustomerState, StoreError> {
    let reader = ItemReader::new(item);
    let contact_id = reader.opt_number::<ContactId>(CONTACT_ID)?;
    if let Some(text) = reader.opt_string(STATE)? {
        return CustomerState::from_json(contact_id, text)
            .map_err(|e| reader.corrupt(STATE, &e.to_string()));
    }
    let mut state = CustomerState {
        contact_id,
        ..CustomerState::default()
    };
    for name in item.keys() {
        if let Some(subscription) = name.strip_prefix(LEGACY_CLOCK_PREFIX) {
            state.note_subscription(subscription, reader.epoch(name)?);
        }
    }
    Ok(state)
}

/// The holder's expiry in a refused item.
fn busy_until(
    item: Option<&crate::dynamodb::Item>,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, StoreError> {
    match item {
        Some(item) => Ok(ItemReader::new(item).opt_epoch(LEASE_UNTIL)?.unwrap_or(now)),
        None => Ok(now),
    }
}

#[async_trait]
impl CustomerStore for DynamoDbCustomerStore {
    async fn get(&self, key: &CustomerKey) -> Result<Option<CustomerState>, StoreError> {
        match self.table.get(key.storage_key()).await? {
            Some(item) => read_state(&item).map(Some),
            None => Ok(None),
        }
    }

    async fn lock(
        &self,
        key: &CustomerKey,
        holder: &str,
        now: OffsetDateTime,
        lease_for: Duration,
    ) -> Result<Locked, StoreError> {
        let result = self
            .table
            .update(key.storage_key())
            .update_expression("SET lease_holder = :holder, lease_until = :until")
            .condition_expression(MAY_TAKE)
            .expression_attribute_values(":holder", string(holder))
            .expression_attribute_values(":until", epoch(later(now, lease_for)))
            .expression_attribute_values(":now", epoch(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Locked::Held(match output.attributes {
                Some(item) => read_state(&item)?,
                None => CustomerState::default(),
            })),
            Err(err) => match refused_item(&err) {
                Some(item) => Ok(Locked::Busy {
                    until: busy_until(item, now)?,
                }),
                None => Err(classify(err)),
            },
        }
    }

    async fn save(
        &self,
        key: &CustomerKey,
        holder: &str,
        state: &CustomerState,
        release: bool,
    ) -> Result<(), StoreError> {
        // `state` is one of DynamoDB's reserved words: named through `#state`.
        let mut expression = "SET #state = :state".to_owned();
        let mut update = self
            .table
            .update(key.storage_key())
            .expression_attribute_names("#state", STATE)
            .condition_expression("lease_holder = :holder")
            .expression_attribute_values(":holder", string(holder))
            .expression_attribute_values(":state", string(state.to_json()));
        if let Some(contact) = state.contact_id {
            expression.push_str(", contact_id = :contact");
            update = update.expression_attribute_values(":contact", number(contact));
        }
        if release {
            expression.push_str(" REMOVE lease_holder, lease_until");
        }
        match update.update_expression(expression).send().await {
            Ok(_) => Ok(()),
            Err(err) if refused_item(&err).is_some() => Err(StoreError::LeaseLost),
            Err(err) => Err(classify(err)),
        }
    }

    async fn unlock(&self, key: &CustomerKey, holder: &str) -> Result<(), StoreError> {
        unlock(&self.table, key.storage_key(), holder).await
    }

    async fn forget(&self, key: &CustomerKey) -> Result<bool, StoreError> {
        self.table.delete(key.storage_key()).await
    }
}

/// Removes `holder`'s lease on item `pk`; another holder's (or none) is left alone.
async fn unlock(table: &Table, pk: String, holder: &str) -> Result<(), StoreError> {
    let result = table
        .update(pk)
        .update_expression("REMOVE lease_holder, lease_until")
        .condition_expression("lease_holder = :holder")
        .expression_attribute_values(":holder", string(holder))
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(err) if refused_item(&err).is_some() => Ok(()),
        Err(err) => Err(classify(err)),
    }
}

/// Name locks as items `lock#<name>` of the customers table.
#[derive(Debug, Clone)]
pub struct DynamoDbNameLocks {
    table: Table,
}

impl DynamoDbNameLocks {
    pub fn new(table: Table) -> Self {
        Self { table }
    }
}

fn lock_key(name: &str) -> String {
    format!("lock#{name}")
}

#[async_trait]
impl NameLocks for DynamoDbNameLocks {
    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        lease_for: Duration,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let result = self
            .table
            .update(lock_key(name))
            .update_expression("SET lease_holder = :holder, lease_until = :until")
            .condition_expression(MAY_TAKE)
            .expression_attribute_values(":holder", string(holder))
            .expression_attribute_values(":until", epoch(later(now, lease_for)))
            .expression_attribute_values(":now", epoch(now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(None),
            Err(err) => match refused_item(&err) {
                Some(item) => Ok(Some(busy_until(item, now)?)),
                None => Err(classify(err)),
            },
        }
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        unlock(&self.table, lock_key(name), holder).await
    }
}

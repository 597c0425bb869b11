//! DynamoDB adapter for the identity map: one item per Chargify customer, the same semantics
//! as [`super::InMemoryCustomerStore`] (the integration tests check them against moto).
//!
//! Table: partition key `pk` (S) = [`CustomerKey::storage_key`], no sort key, no TTL (the
//! mapping must outlive any webhook). Attributes: `contact_id` (N), and one attribute per
//! subscription clock, `sub#<subscription id>` (N, epoch seconds, exact to the nanosecond:
//! see [`crate::dynamodb::epoch`]). The clocks are top-level attributes rather than a map
//! because one update expression cannot create a map and set a path inside it, and a
//! conditional write needs the clock as its own comparable path.
//!
//! IAM: `dynamodb:UpdateItem`, `dynamodb:GetItem` on the table.

use super::{ClockUpdate, CustomerKey, CustomerRecord, CustomerStore};
use crate::dynamodb::{classify, epoch, number, refused_item, ItemReader, Table};
use crate::idempotency::StoreError;
use crate::keap::ContactId;
use async_trait::async_trait;
use std::collections::BTreeMap;
use time::OffsetDateTime;

const CONTACT_ID: &str = "contact_id";
const CLOCK_PREFIX: &str = "sub#";

#[derive(Debug, Clone)]
pub struct DynamoDbCustomerStore {
    table: Table,
}

impl DynamoDbCustomerStore {
    /// A store on `table`; build it with [`Table::from_config`] (or with a client from
    /// [`crate::dynamodb::client`]) for our retry policy on throttling.
    pub fn new(table: Table) -> Self {
        Self { table }
    }

    pub fn table(&self) -> &str {
        self.table.name()
    }
}

#[async_trait]
impl CustomerStore for DynamoDbCustomerStore {
    async fn get(&self, key: &CustomerKey) -> Result<Option<CustomerRecord>, StoreError> {
        let Some(item) = self.table.get(key.storage_key()).await? else {
            return Ok(None);
        };
        let reader = ItemReader::new(&item);
        let mut subscription_clocks = BTreeMap::new();
        for name in item.keys() {
            if let Some(subscription) = name.strip_prefix(CLOCK_PREFIX) {
                subscription_clocks.insert(subscription.to_owned(), reader.epoch(name)?);
            }
        }
        Ok(Some(CustomerRecord {
            contact_id: reader.opt_number::<ContactId>(CONTACT_ID)?,
            subscription_clocks,
        }))
    }

    async fn save(
        &self,
        key: &CustomerKey,
        contact_id: ContactId,
        clock: Option<(&str, OffsetDateTime)>,
    ) -> Result<ClockUpdate, StoreError> {
        let update = self
            .table
            .update(key.storage_key())
            .expression_attribute_values(":contact", number(contact_id));
        let Some((subscription, at)) = clock else {
            update
                .update_expression("SET contact_id = :contact")
                .send()
                .await
                .map_err(classify)?;
            return Ok(ClockUpdate::Unchanged);
        };
        // Equal times pass: a retry of the same event must not be called stale.
        let result = update
            .clone()
            .update_expression("SET contact_id = :contact, #clock = :at")
            .condition_expression("attribute_not_exists(#clock) OR #clock <= :at")
            .expression_attribute_names("#clock", format!("{CLOCK_PREFIX}{subscription}"))
            .expression_attribute_values(":at", epoch(at))
            .send()
            .await;
        match result {
            Ok(_) => Ok(ClockUpdate::Advanced),
            Err(err) if refused_item(&err).is_some() => {
                // A newer state was applied meanwhile. The contact id still has to be
                // stored (it may be new); this second write is the rare path.
                update
                    .update_expression("SET contact_id = :contact")
                    .send()
                    .await
                    .map_err(classify)?;
                Ok(ClockUpdate::Stale)
            }
            Err(err) => Err(classify(err)),
        }
    }
}

//! The token store in DynamoDB: one item per Keap app (partition key `pk`, a string), every
//! change a conditional `UpdateItem`, every read strongly consistent.
//!
//! Item attributes: `access_token`, `refresh_token` (S), `access_expires_at_ms`, `version`
//! (N), and while someone refreshes `lease_holder` (S) and `lease_expires_at_ms` (N), which
//! are only ever written together: a lease without an expiry could never be taken over.

use super::store::{Lease, StoreError, TokenPair, TokenRecord, TokenStore};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use time::OffsetDateTime;

pub struct DynamoDbTokenStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    key: String,
}

impl std::fmt::Debug for DynamoDbTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbTokenStore")
            .field("table", &self.table)
            .field("key", &self.key)
            .finish()
    }
}

fn millis(at: OffsetDateTime) -> AttributeValue {
    AttributeValue::N((at.unix_timestamp_nanos() / 1_000_000).to_string())
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

impl DynamoDbTokenStore {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            key: key.into(),
        }
    }

    fn error(&self, operation: &str, detail: impl std::fmt::Display) -> StoreError {
        StoreError {
            detail: format!(
                "DynamoDB {operation} on table {} key {}: {detail}",
                self.table, self.key
            ),
        }
    }

    /// Runs a conditional update: `Ok(false)` when the condition did not hold.
    async fn update(
        &self,
        operation: &str,
        update: &str,
        condition: Option<&str>,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&self.key))
            .update_expression(update)
            .set_condition_expression(condition.map(str::to_owned));
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.error(operation, DisplayErrorContext(&e))),
        }
    }

    fn record(&self, item: &HashMap<String, AttributeValue>) -> Result<TokenRecord, StoreError> {
        let text = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_s().ok())
                .cloned()
                .ok_or_else(|| self.error("GetItem", format!("the item has no text `{name}`")))
        };
        let number = |name: &str| -> Result<Option<i128>, StoreError> {
            item.get(name)
                .map(|v| {
                    v.as_n()
                        .ok()
                        .and_then(|n| n.parse::<i128>().ok())
                        .ok_or_else(|| self.error("GetItem", format!("`{name}` is not an integer")))
                })
                .transpose()
        };
        let instant = |name: &str| -> Result<Option<OffsetDateTime>, StoreError> {
            number(name)?
                .map(|ms| {
                    OffsetDateTime::from_unix_timestamp_nanos(ms.saturating_mul(1_000_000))
                        .map_err(|e| self.error("GetItem", format!("`{name}`: {e}")))
                })
                .transpose()
        };
        let lease = match (item.get("lease_holder"), instant("lease_expires_at_ms")?) {
            (Some(holder), Some(expires_at)) => Some(Lease {
                holder: holder.as_s().cloned().unwrap_or_default(),
                expires_at,
            }),
            _ => None,
        };
        Ok(TokenRecord {
            pair: TokenPair {
                access_token: text("access_token")?,
                refresh_token: text("refresh_token")?,
                access_expires_at: instant("access_expires_at_ms")?.ok_or_else(|| {
                    self.error("GetItem", "the item has no `access_expires_at_ms`")
                })?,
            },
            version: number("version")?
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or_default(),
            lease,
        })
    }

    fn pair_values(pair: &TokenPair) -> Vec<(&'static str, AttributeValue)> {
        vec![
            (":access", s(&pair.access_token)),
            (":refresh", s(&pair.refresh_token)),
            (":expires", millis(pair.access_expires_at)),
            (":updated", millis(OffsetDateTime::now_utc())),
        ]
    }
}

/// Sets the pair; shared by a refresh and a new authorisation.
const SET_PAIR: &str = "access_token = :access, refresh_token = :refresh, access_expires_at_ms = :expires, updated_at_ms = :updated";

#[async_trait]
impl TokenStore for DynamoDbTokenStore {
    async fn load(&self) -> Result<Option<TokenRecord>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&self.key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem", DisplayErrorContext(&e)))?;
        output.item().map(|item| self.record(item)).transpose()
    }

    async fn acquire_lease(
        &self,
        version: u64,
        holder: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.update(
            "UpdateItem (take lease)",
            "SET lease_holder = :holder, lease_expires_at_ms = :until",
            Some("version = :version AND (attribute_not_exists(lease_expires_at_ms) OR lease_expires_at_ms < :now)"),
            vec![
                (":holder", s(holder)),
                (":until", millis(until)),
                (":version", n(version)),
                (":now", millis(now)),
            ],
        )
        .await
    }

    async fn complete_refresh(
        &self,
        version: u64,
        holder: &str,
        pair: &TokenPair,
    ) -> Result<bool, StoreError> {
        let mut values = Self::pair_values(pair);
        values.extend([
            (":holder", s(holder)),
            (":version", n(version)),
            (":next", n(version + 1)),
        ]);
        self.update(
            "UpdateItem (store refreshed pair)",
            &format!("SET {SET_PAIR}, version = :next REMOVE lease_holder, lease_expires_at_ms"),
            Some("version = :version AND lease_holder = :holder"),
            values,
        )
        .await
    }

    async fn release_lease(&self, holder: &str) -> Result<bool, StoreError> {
        self.update(
            "UpdateItem (release lease)",
            "REMOVE lease_holder, lease_expires_at_ms",
            Some("lease_holder = :holder"),
            vec![(":holder", s(holder))],
        )
        .await
    }

    async fn replace(&self, pair: &TokenPair) -> Result<u64, StoreError> {
        let mut values = Self::pair_values(pair);
        values.extend([(":zero", n(0)), (":one", n(1))]);
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&self.key))
            .update_expression(format!(
                "SET {SET_PAIR}, version = if_not_exists(version, :zero) + :one REMOVE lease_holder, lease_expires_at_ms"
            ))
            .set_expression_attribute_values(Some(
                values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            ))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| self.error("UpdateItem (store new authorisation)", DisplayErrorContext(&e)))?;
        output
            .attributes()
            .and_then(|a| a.get("version"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.error("UpdateItem", "no version in the answer"))
    }
}

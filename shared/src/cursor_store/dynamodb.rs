//! Cursors in DynamoDB: one item of the idempotency table per key (`pk`: the backfill's
//! `backfill#<site>#<query hash>`, the reconciler's `reconcile#<site>#…`), attribute `cursor`
//! (S, the cursor's JSON) and `saved_at` (N, epoch seconds). No `expires_at`, so the table's
//! TTL never deletes it: a backfill paused for the daily quota may resume days later. Cursor
//! keys contain `#` twice, so they never collide with an idempotency record (`site#id`). The
//! idempotency table is used because the stack already has it and both jobs already write
//! their records there; no new table, no new IAM resource.
//!
//! IAM: `dynamodb:UpdateItem`, `dynamodb:GetItem` on the table (the idempotency store's).

use super::CursorStore;
use crate::dynamodb::{classify, epoch_whole_seconds, string, ItemReader, Table};
use crate::idempotency::StoreError;
use async_trait::async_trait;

const CURSOR: &str = "cursor";

#[derive(Debug, Clone)]
pub struct DynamoDbCursorStore {
    table: Table,
}

impl DynamoDbCursorStore {
    pub fn new(table: Table) -> Self {
        Self { table }
    }
}

#[async_trait]
impl CursorStore for DynamoDbCursorStore {
    async fn load(&self, key: &str) -> Result<Option<String>, StoreError> {
        let Some(item) = self.table.get(key.to_owned()).await? else {
            return Ok(None);
        };
        Ok(Some(ItemReader::new(&item).string(CURSOR)?.to_owned()))
    }

    async fn save(&self, key: &str, cursor: &str) -> Result<(), StoreError> {
        self.table
            .update(key.to_owned())
            .update_expression("SET #cursor = :cursor, saved_at = :now")
            .expression_attribute_names("#cursor", CURSOR)
            .expression_attribute_values(":cursor", string(cursor))
            .expression_attribute_values(
                ":now",
                epoch_whole_seconds(time::OffsetDateTime::now_utc()),
            )
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

//! Where a long-running job keeps its place: a small JSON text per key, read at the start
//! and written after each unit of work, so a stopped run (a timeout, the Keap quota, Ctrl-C,
//! a crash) resumes there. The backfill and the reconciler both keep their cursors here; what
//! a cursor means is theirs ([`crate::backfill::Cursor`], [`crate::reconcile`]).
//!
//! Adapters: DynamoDB (an item of the idempotency table with no TTL), in-memory here, SQLite
//! in the CLI.

mod dynamodb;

pub use dynamodb::DynamoDbCursorStore;

use crate::idempotency::StoreError;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where cursors are kept.
#[async_trait]
pub trait CursorStore: Send + Sync {
    async fn load(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn save(&self, key: &str, cursor: &str) -> Result<(), StoreError>;
}

/// Cursors in memory (tests, dry runs).
#[derive(Debug, Default)]
pub struct InMemoryCursorStore {
    cursors: Mutex<BTreeMap<String, String>>,
}

#[async_trait]
impl CursorStore for InMemoryCursorStore {
    async fn load(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned())
    }

    async fn save(&self, key: &str, cursor: &str) -> Result<(), StoreError> {
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), cursor.to_owned());
        Ok(())
    }
}

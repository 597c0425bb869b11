//! Backfill cursors in the SQLite file (`cks backfill --local`): one row per site and query,
//! keyed like the DynamoDB item ([`shared::backfill::cursor_key`]), the cursor as JSON. The
//! table is created on first use, so files made before the backfill existed work as they are.

use super::Db;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use shared::cursor_store::CursorStore;
use shared::idempotency::StoreError;

const TABLE: &str = "CREATE TABLE IF NOT EXISTS backfill_cursors (
    key TEXT PRIMARY KEY,
    cursor TEXT NOT NULL,
    saved_at_ms INTEGER NOT NULL
)";

#[derive(Clone)]
pub struct SqliteCursorStore {
    db: Db,
}

impl SqliteCursorStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

#[async_trait]
impl CursorStore for SqliteCursorStore {
    async fn load(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.db
            .write(move |tx| {
                tx.execute(TABLE, [])?;
                tx.query_row(
                    "SELECT cursor FROM backfill_cursors WHERE key = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()
            })
            .await
            .map_err(|detail| StoreError::Unavailable { detail })
    }

    async fn save(&self, key: &str, cursor: &str) -> Result<(), StoreError> {
        let (key, cursor) = (key.to_owned(), cursor.to_owned());
        self.db
            .write(move |tx| {
                tx.execute(TABLE, [])?;
                tx.execute(
                    "INSERT INTO backfill_cursors (key, cursor, saved_at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET cursor = ?2, saved_at_ms = ?3",
                    params![key, cursor, super::now_ms()],
                )
                .map(|_| ())
            })
            .await
            .map_err(|detail| StoreError::Unavailable { detail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cursor_is_stored_replaced_and_read_back() {
        let (_dir, db) = super::super::temp_db();
        let store = SqliteCursorStore::new(db);
        assert_eq!(store.load("backfill#acme#1").await, Ok(None));
        store
            .save("backfill#acme#1", "{\"a\":1}")
            .await
            .expect("save");
        store
            .save("backfill#acme#1", "{\"a\":2}")
            .await
            .expect("save");
        assert_eq!(
            store.load("backfill#acme#1").await,
            Ok(Some("{\"a\":2}".to_owned()))
        );
        assert_eq!(store.load("backfill#acme#2").await, Ok(None));
    }
}

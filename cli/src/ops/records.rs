//! Reading idempotency records for the commands: one by key, one by webhook id alone (a
//! scan, since the key starts with the site), or all of them (a paginated scan).

use super::{progress, OpsError};
use shared::idempotency::{
    DynamoDbIdempotencyStore, IdempotencyKey, IdempotencyRecord, IdempotencyStore,
};

fn store_error(
    store: &DynamoDbIdempotencyStore,
) -> impl Fn(shared::idempotency::StoreError) -> OpsError + '_ {
    |source| OpsError::Store {
        table: store.table().to_owned(),
        source,
    }
}

/// Every record in the table, page by page, with a counter on the terminal. Unreadable items
/// are reported on stderr and skipped.
pub async fn scan_all(
    store: &DynamoDbIdempotencyStore,
) -> Result<Vec<IdempotencyRecord>, OpsError> {
    let counter = progress::counter(&format!("scanning {}", store.table()));
    let mut records = Vec::new();
    let mut next = None;
    loop {
        let page = store.scan_page(next).await.map_err(store_error(store))?;
        counter.inc((page.records.len() + page.unreadable.len()) as u64);
        for problem in &page.unreadable {
            eprintln!("skipped an unreadable record: {problem}");
        }
        records.extend(page.records);
        next = page.next;
        if next.is_none() {
            break;
        }
    }
    counter.finish_and_clear();
    Ok(records)
}

/// The record of `webhook` (`id`, or `site#id`), on `site` when given.
pub async fn find(
    store: &DynamoDbIdempotencyStore,
    webhook: &str,
    site: Option<&str>,
) -> Result<IdempotencyRecord, OpsError> {
    let key = match (IdempotencyKey::from_storage_key(webhook), site) {
        (Some(key), _) => Some(key),
        (None, Some(site)) => Some(IdempotencyKey::new(site, webhook)),
        (None, None) => None,
    };
    if let Some(key) = key {
        return store
            .get(&key)
            .await
            .map_err(store_error(store))?
            .ok_or_else(|| OpsError::NotFound(key.storage_key()));
    }
    let mut found: Vec<IdempotencyRecord> = scan_all(store)
        .await?
        .into_iter()
        .filter(|r| r.key.webhook_id == webhook)
        .collect();
    match found.len() {
        0 => Err(OpsError::NotFound(webhook.to_owned())),
        1 => Ok(found.remove(0)),
        _ => Err(OpsError::Ambiguous {
            id: webhook.to_owned(),
            sites: found
                .iter()
                .map(|r| r.key.site.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

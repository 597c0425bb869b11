//! The reconciler's two cursors, stored as JSON text through the backfill's [`CursorStore`]
//! (an item of the idempotency table without TTL) under [`webhooks_key`] and [`events_key`].
//!
//! **Webhooks** (`GET /webhooks.json?status=…&since_date=…`): Chargify filters by the day a
//! webhook was created (`YYYY-MM-DD`, inclusive, in the site's zone), so the cursor is a day
//! per status plus the page to ask for within it. After a page whose last webhook is from a
//! later day, the cursor moves to that day, page 1 (that day is listed again: the overlap,
//! which idempotency makes free); a page entirely of the cursor's day moves on a page. A list
//! run to its end sets the day to today minus the overlap (UTC today, so a site zone up to a
//! day away is still covered): a webhook created in the last minutes may still be retrying and
//! turn `failed` after this run, and the next run must still see it.
//!
//! **Events** (`GET /events.json?since_id=…`, oldest first): the highest event id handled;
//! the next page starts at `last_id + 1`.

use super::ReconcileError;
use crate::chargify::api::WebhookStatus;
use crate::cursor_store::CursorStore;
use serde::{Deserialize, Serialize};
use time::Date;

pub const RECONCILE_CURSOR_VERSION: u32 = 1;

/// `reconcile#<site>#webhooks`. Cannot collide with an idempotency record (`site#webhook
/// id`, one `#`) nor a backfill cursor (`backfill#…`).
pub fn webhooks_key(site: &str) -> String {
    format!("reconcile#{site}#webhooks")
}

/// `reconcile#<site>#events`.
pub fn events_key(site: &str) -> String {
    format!("reconcile#{site}#events")
}

/// Where one status's listing resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayPosition {
    #[serde(with = "day")]
    pub since: Date,
    /// 1-based page within the listing from `since`.
    pub page: u32,
}

impl DayPosition {
    pub fn new(since: Date) -> Self {
        Self { since, page: 1 }
    }

    /// After a page of webhooks whose last one was created on `last_day`.
    pub fn after_page(self, last_day: Option<Date>) -> Self {
        match last_day {
            Some(day) if day > self.since => Self::new(day),
            _ => Self {
                since: self.since,
                page: self.page.saturating_add(1),
            },
        }
    }

    /// The listing ran to its end: resume at `floor` (today minus the overlap), never earlier
    /// than where we are.
    pub fn exhausted(self, floor: Date) -> Self {
        Self::new(self.since.max(floor))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookCursor {
    pub version: u32,
    pub failed: Option<DayPosition>,
    pub paused: Option<DayPosition>,
}

impl WebhookCursor {
    pub fn get(&self, status: WebhookStatus) -> Option<DayPosition> {
        match status {
            WebhookStatus::Paused => self.paused,
            _ => self.failed,
        }
    }

    pub fn set(&mut self, status: WebhookStatus, position: DayPosition) {
        match status {
            WebhookStatus::Paused => self.paused = Some(position),
            _ => self.failed = Some(position),
        }
    }
}

impl Default for WebhookCursor {
    fn default() -> Self {
        Self {
            version: RECONCILE_CURSOR_VERSION,
            failed: None,
            paused: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCursor {
    pub version: u32,
    /// The highest event id handled; `None` before the first run.
    pub last_id: Option<i64>,
}

impl Default for EventCursor {
    fn default() -> Self {
        Self {
            version: RECONCILE_CURSOR_VERSION,
            last_id: None,
        }
    }
}

/// Reads a cursor; none stored yet is the default.
pub async fn load<T: Default + serde::de::DeserializeOwned>(
    store: &dyn CursorStore,
    key: &str,
) -> Result<T, ReconcileError> {
    let Some(text) = store.load(key).await? else {
        return Ok(T::default());
    };
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let unreadable = |detail: String| ReconcileError::CursorUnreadable {
        key: key.to_owned(),
        detail,
    };
    let version: VersionOnly =
        serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
    if version.version != RECONCILE_CURSOR_VERSION {
        return Err(unreadable(format!(
            "version {} (this build reads {RECONCILE_CURSOR_VERSION})",
            version.version
        )));
    }
    serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))
}

pub async fn save<T: Serialize>(
    store: &dyn CursorStore,
    key: &str,
    cursor: &T,
) -> Result<(), ReconcileError> {
    // Plain strings, numbers and dates: serialising cannot fail.
    let text = serde_json::to_string(cursor).unwrap_or_default();
    Ok(store.save(key, &text).await?)
}

/// `YYYY-MM-DD`, as Chargify's `since_date` takes it.
mod day {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Date;

    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day]");

    pub fn serialize<S: Serializer>(date: &Date, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&date.format(FORMAT).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
        let text = String::deserialize(d)?;
        Date::parse(&text, FORMAT).map_err(serde::de::Error::custom)
    }
}

/// Parses `YYYY-MM-DD` (the CLI's `--since-date`).
pub fn parse_day(text: &str) -> Option<Date> {
    Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()
}

//! The backfill's cursor: where a run got to, stored after every fully completed page so a
//! stopped run (`--max-keap-calls`, the daily quota, Ctrl-C, a crash) resumes there.
//!
//! **Keyset, not page numbers.** Chargify pages are offsets into a list sorted by
//! `updated_at`; a subscription that changes during a run moves to the end and shifts every
//! later one a place forward, so "page N+1" would skip one. Instead each request starts at
//! the `updated_at` of the last subscription done (`start_datetime`, inclusive, seconds) and
//! asks for page 1; what was done at exactly that second is remembered by id and skipped.
//! Only when a whole page shares one second (200 subscriptions changed in the same second, a
//! bulk import) does the cursor step to page 2, 3… of that second.
//!
//! **Time zone.** Chargify reads `start_datetime` in the site's zone. The cursor keeps the
//! `updated_at` exactly as the API wrote it, with the site's offset, and sends it in that
//! offset, so the zone never shifts the window.
//!
//! Stored as JSON text under [`cursor_key`]: an item of the idempotency table (DynamoDB,
//! attribute `cursor`, no TTL) or a row of the SQLite file (`cks backfill --local`).

use crate::idempotency::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Version of the stored cursor's shape.
pub const CURSOR_VERSION: u32 = 1;

/// What to backfill: the command line's filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillQuery {
    /// Chargify state filters; one pass per state (the API filters by one state at a time).
    /// Empty: every state, one pass.
    pub states: Vec<String>,
    pub product_id: Option<i64>,
    /// Only subscriptions updated at or after this (RFC 3339, in the site's zone or
    /// earlier).
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_since: Option<OffsetDateTime>,
}

impl BackfillQuery {
    /// A short, stable hash of the filters: one cursor per site and query.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let mut states = self.states.clone();
        states.sort();
        states.dedup();
        let since = self
            .updated_since
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        let text = format!(
            "states={};product={};since={since}",
            states.join(","),
            self.product_id.map(|p| p.to_string()).unwrap_or_default()
        );
        hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
    }

    /// The state filter of each pass: the states given, or one pass with none.
    pub fn passes(&self) -> Vec<Option<String>> {
        if self.states.is_empty() {
            vec![None]
        } else {
            self.states.iter().cloned().map(Some).collect()
        }
    }
}

/// The stored key of a site's cursor for `query`: `backfill#<site>#<query hash>`. It cannot
/// collide with an idempotency record (`site#webhook id`): webhook ids never contain `#`.
pub fn cursor_key(site: &str, query: &BackfillQuery) -> String {
    format!("backfill#{site}#{}", query.hash())
}

/// Running totals, kept in the cursor so a resumed run reports the whole backfill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Subscriptions listed by Chargify and looked at.
    pub seen: u64,
    /// Snapshots applied to Keap (contact written, tags set).
    pub applied: u64,
    /// Already applied before (a completed idempotency record): no Keap call.
    pub duplicates: u64,
    /// Older than the billing state already applied: no Keap call.
    pub stale: u64,
    /// No rule asks for a change (e.g. a state outside the tag group and no fields).
    pub ignored: u64,
    /// Could not be applied (bad data, a Keap refusal for this contact); logged, skipped.
    pub failed: u64,
    /// Keap requests made (what the quota counts).
    pub keap_calls: u64,
    /// Keap 429 answers.
    pub throttled: u64,
    /// Contacts written (the denominator of calls per contact).
    pub contacts: u64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.seen += other.seen;
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.stale += other.stale;
        self.ignored += other.ignored;
        self.failed += other.failed;
        self.keap_calls += other.keap_calls;
        self.throttled += other.throttled;
        self.contacts += other.contacts;
    }

    /// Keap calls per contact written, `None` before the first.
    pub fn calls_per_contact(&self) -> Option<f64> {
        (self.contacts > 0).then(|| self.keap_calls as f64 / self.contacts as f64)
    }
}

/// Where a backfill is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub version: u32,
    pub site: String,
    pub query: BackfillQuery,
    /// Index into [`BackfillQuery::passes`].
    pub pass: usize,
    /// `updated_at` of the last subscription of the last page done in this pass, as
    /// Chargify wrote it (site offset).
    #[serde(with = "time::serde::rfc3339::option")]
    pub after: Option<OffsetDateTime>,
    /// Ids done whose `updated_at` is exactly `after` (listed again by the next request,
    /// which starts at that second).
    pub done_at_after: BTreeSet<i64>,
    /// Page of the list starting at `after` to ask for next: 1, unless a whole page shared
    /// one second.
    pub page: u32,
    pub finished: bool,
    pub totals: Totals,
}

impl Cursor {
    pub fn new(site: &str, query: BackfillQuery) -> Self {
        Self {
            version: CURSOR_VERSION,
            site: site.to_owned(),
            query,
            pass: 0,
            after: None,
            done_at_after: BTreeSet::new(),
            page: 1,
            finished: false,
            totals: Totals::default(),
        }
    }

    /// Whether a subscription listed now was done already (at the cursor's second).
    pub fn already_done(&self, id: i64, updated_at: Option<OffsetDateTime>) -> bool {
        match (self.after, updated_at) {
            (Some(after), Some(at)) => {
                at < after || (at == after && self.done_at_after.contains(&id))
            }
            _ => false,
        }
    }

    /// Moves past a page whose items (all, done or skipped) had these `(id, updated_at)`.
    pub fn advance(&mut self, page: &[(i64, Option<OffsetDateTime>)]) {
        let newest = page.iter().filter_map(|(_, at)| *at).max();
        match (newest, self.after) {
            (Some(newest), Some(after)) if newest <= after => {
                // The whole page shared the cursor's second: next page of that second.
                self.done_at_after.extend(page.iter().map(|(id, _)| *id));
                self.page = self.page.saturating_add(1);
            }
            (Some(newest), _) => {
                self.after = Some(newest);
                self.done_at_after = page
                    .iter()
                    .filter(|(_, at)| *at == Some(newest))
                    .map(|(id, _)| *id)
                    .collect();
                self.page = 1;
            }
            // No item had a time (never seen from Chargify): step by page.
            (None, _) => self.page = self.page.saturating_add(1),
        }
    }

    /// The pass is over (a short or empty page): on to the next state, or done.
    pub fn next_pass(&mut self) {
        self.pass += 1;
        self.after = None;
        self.done_at_after.clear();
        self.page = 1;
        self.finished = self.pass >= self.query.passes().len();
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, CursorError> {
        let cursor: Self =
            serde_json::from_str(text).map_err(|e| CursorError::Unreadable(e.to_string()))?;
        if cursor.version != CURSOR_VERSION {
            return Err(CursorError::Version(cursor.version));
        }
        Ok(cursor)
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CursorError {
    #[error("the stored backfill cursor is unreadable ({0}); start over without --resume (applied snapshots are skipped at no Keap cost)")]
    Unreadable(String),
    #[error("the stored backfill cursor has version {0}, this build reads {CURSOR_VERSION}; start over without --resume")]
    Version(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_cursor_moves_by_time_and_by_page_only_within_one_second() {
        let mut c = Cursor::new("acme", BackfillQuery::default());
        let t1 = datetime!(2026-01-01 10:00:00 -5);
        let t2 = datetime!(2026-01-01 10:00:01 -5);
        c.advance(&[(1, Some(t1)), (2, Some(t2)), (3, Some(t2))]);
        assert_eq!((c.after, c.page), (Some(t2), 1));
        assert_eq!(c.done_at_after, BTreeSet::from([2, 3]));
        assert!(c.already_done(3, Some(t2)) && c.already_done(1, Some(t1)));
        assert!(!c.already_done(4, Some(t2)));
        // A page entirely at the cursor's second: the next page of that second.
        c.advance(&[(2, Some(t2)), (3, Some(t2)), (4, Some(t2))]);
        assert_eq!((c.after, c.page), (Some(t2), 2));
        assert!(c.already_done(4, Some(t2)));
        let json = c.to_json();
        assert!(json.contains("-05:00"), "the site's offset is kept: {json}");
        assert_eq!(Cursor::from_json(&json), Ok(c));
    }

    #[test]
    fn one_cursor_per_site_and_query() {
        let q = |states: &[&str]| BackfillQuery {
            states: states.iter().map(|s| s.to_string()).collect(),
            ..BackfillQuery::default()
        };
        assert_eq!(
            cursor_key("acme", &q(&["active", "past_due"])),
            cursor_key("acme", &q(&["past_due", "active"]))
        );
        assert_ne!(
            cursor_key("acme", &q(&["active"])),
            cursor_key("acme", &q(&[]))
        );
        assert_ne!(cursor_key("acme", &q(&[])), cursor_key("other", &q(&[])));
        assert!(matches!(
            Cursor::from_json("{\"version\": 9}"),
            Err(CursorError::Unreadable(_))
        ));
    }
}

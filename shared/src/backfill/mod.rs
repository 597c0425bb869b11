//! Backfill: every existing Chargify subscription synced to Keap as a snapshot, the way a new
//! installation starts. Over ports only: [`ChargifyApi`], [`Crm`] and its [`KeapMeter`], the
//! idempotency and identity stores, and a [`CursorStore`] (the cursor's meaning is
//! [`cursor::Cursor`]). The contact writes, the tag changes and the goals and notes are the
//! processor's own steps, shared through [`crate::apply`].
//!
//! **Per page** (up to 200 subscriptions, oldest change first):
//! 1. Each subscription becomes its `subscription_snapshot` envelope (id
//!    `snapshot-{id}-{updated_at}`) and the rules plan it, exactly as the processor would.
//! 2. Per contact, concurrently across customers (one customer's snapshots in order): take
//!    the snapshot's idempotency lease (a completed record is a **duplicate**: no Keap call);
//!    read the identity map (an older `updated_at` than the clock is **stale**: recorded, no
//!    Keap call); write the contact and its custom fields in one call (upsert by email, or
//!    update the mapped contact); work out its tag changes without sending them.
//! 3. The page's tag changes go out **in bulk**: one `POST /v1/tags/{id}/contacts` per tag to
//!    apply, one `DELETE /v1/tags/{id}/contacts?ids=` per tag to remove. A page of 200 with
//!    three states and one plan costs about 4 tag calls instead of 200 to 400.
//! 4. Per contact: the identity map (contact id, subscription clock), then the idempotency
//!    record completed. Then the cursor is saved.
//!
//! **Exactly once.** A crash after the bulk tag calls but before the records leaves the
//! leases unfinished; the next run redoes those contacts. That is safe because everything a
//! snapshot does is idempotent in Keap: the upsert writes the same values, applying a tag a
//! contact has answers `DUPLICATE`, removing one it lacks changes nothing, and snapshots have
//! no goals or notes (a rules file that gives them some gets them recorded step by step, as
//! the processor does).
//!
//! **Removals.** A contact's tag removals come from the rules (the other tags of its state
//! group). When Keap's answer to the contact write lists the contact's tags, only tags it has
//! are removed (exact, and usually nothing for a new contact). When it does not list them,
//! a contact the identity map already knew gets the removals (an earlier sync of ours may
//! have put another state tag on it), and one it did not know gets none: nothing of ours
//! ever tagged it, so the only tags to remove would be ones a person or another tool put
//! there, and a backfill must not spend a call per tag and page on that guess.
//!
//! **Resume.** See [`cursor`]: keyset paging by `updated_at`, saved after each page; a
//! stopped run resumes after the last page fully done, and anything redone is a duplicate.

mod budget;
pub mod cursor;
#[cfg(test)]
mod tests;

pub use crate::keap::KeapMeter;
pub use cursor::{cursor_key, BackfillQuery, Cursor, CursorError, Totals};

use crate::apply::{fire_steps, ApplyError, Report, TagChanges, Writer};
use crate::chargify::api::{ChargifyApi, ChargifyApiError, Subscription, SubscriptionQuery};
use crate::chargify::snapshot::snapshot_envelope;
use crate::chargify::Webhook;
use crate::converge::{Fold, Verdict};
use crate::cursor_store::CursorStore;
use crate::envelope::WebhookEnvelope;
use crate::idempotency::{
    new_token, payload_hash, Begin, IdempotencyKey, IdempotencyStore, Lease, Received,
    RecordStatus, StoreError, DEFAULT_RECORD_TTL,
};
use crate::identity::{CustomerKey, CustomerState, CustomerStore, Locked};
use crate::keap::{ContactId, Crm, Directory, KeapError, TagId};
use crate::rules::{Plan, RuleSet};
use budget::Budgeted;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// A subscription of a page as its snapshot's plan and envelope ([`Backfill::plan_page`]).
type SnapshotPlan = Option<Result<(Plan, WebhookEnvelope), String>>;

/// Chargify's largest page, and so the most contacts one bulk tag call carries here.
pub const PAGE_SIZE: usize = crate::chargify::api::MAX_PER_PAGE as usize;

/// When the filters give no start, the list starts here (before Chargify existed), so it is
/// always sorted by `updated_at` (Chargify sorts so only with a date filter).
pub const EPOCH: OffsetDateTime = time::macros::datetime!(2000-01-01 00:00:00 UTC);

/// Keap calls per contact assumed before any is measured: the contact write, plus a share
/// of the page's bulk tag calls and lookups.
pub const ASSUMED_CALLS_PER_CONTACT: f64 = 1.1;

#[derive(Debug, Clone)]
pub struct BackfillSettings {
    /// Plan and count only: no store is written and no cursor saved. Pass a CRM that sends
    /// nothing (an [`InMemoryCrm`](crate::keap::InMemoryCrm)): the engine still makes its calls
    /// to count them.
    pub dry_run: bool,
    /// Stop (resumably) before a page that would take this run past this many Keap calls.
    pub max_keap_calls: Option<u64>,
    /// Customers whose contact is written at once (the client's pace is the real limit;
    /// a few in flight hide each call's latency).
    pub concurrency: usize,
    pub record_ttl: Duration,
    /// How long a snapshot's lease lasts: longer than a page takes. A run killed mid-page
    /// leaves its leases until then; a resume before stops with [`BackfillError::Busy`].
    pub lease: Duration,
    /// Set (by Ctrl-C, say) to stop at the next page boundary, resumably.
    pub interrupt: Arc<AtomicBool>,
}

impl Default for BackfillSettings {
    fn default() -> Self {
        Self {
            dry_run: false,
            max_keap_calls: None,
            concurrency: 4,
            record_ttl: DEFAULT_RECORD_TTL,
            lease: Duration::from_secs(10 * 60),
            interrupt: Arc::default(),
        }
    }
}

/// Where the run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// Every page of every pass is done.
    Complete,
    /// Stopped at a page boundary; `--resume` continues.
    Stopped(StopReason),
}

#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// The next page would pass `--max-keap-calls`.
    MaxKeapCalls { limit: u64, used: u64 },
    /// Keap's daily quota left is below what the next page needs.
    QuotaLow { left: u64, page_needs: u64 },
    /// [`BackfillSettings::interrupt`] was set.
    Interrupted,
}

/// The estimate shown with the progress.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Eta {
    /// Subscriptions still to look at (counted from Chargify at the start; an estimate).
    pub remaining: Option<u64>,
    pub calls_per_contact: f64,
    pub remaining_calls: Option<u64>,
    /// At the client's pace.
    pub seconds: Option<f64>,
    pub quota_left: Option<u64>,
    /// The daily quota left will not cover the remaining calls.
    pub quota_short: bool,
}

/// Callbacks for the command line's progress bar; all optional.
pub trait Progress: Send + Sync {
    /// `total`: the subscriptions this run expects to look at (an estimate).
    fn started(&self, _total: Option<u64>, _totals: &Totals) {}
    fn page_done(&self, _run: &Totals, _eta: &Eta) {}
    fn warn(&self, _message: &str) {}
}

/// No progress output.
pub struct Silent;
impl Progress for Silent {}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub finish: Finish,
    /// This run.
    pub run: Totals,
    /// The whole backfill so far (this run and those it resumed).
    pub total: Totals,
    pub cursor_key: String,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("Chargify: {0}; the cursor is saved: fix it and run again with --resume")]
    Chargify(#[from] ChargifyApiError),
    #[error("Keap: {0}; the cursor is saved at the last page done: run again with --resume (anything redone is a duplicate)")]
    Keap(#[from] KeapError),
    #[error("{0}; the cursor is saved at the last page done: fix it and run again with --resume")]
    Stopped(ApplyError),
    #[error("store: {0}; the cursor is saved at the last page done: run again with --resume")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cursor(#[from] CursorError),
    #[error("no backfill cursor is stored for these filters ({key}); run without --resume to start, with the same --state/--product/--updated-since to resume")]
    NoCursor { key: String },
    #[error("snapshot {webhook_id} is being applied by another run until {until}; run again with --resume after that")]
    Busy {
        webhook_id: String,
        until: OffsetDateTime,
    },
}

/// The engine; borrow the ports and call [`Backfill::run`].
pub struct Backfill<'a> {
    pub site: &'a str,
    pub rules: &'a RuleSet,
    pub chargify: &'a dyn ChargifyApi,
    pub crm: &'a dyn Crm,
    pub meter: &'a dyn KeapMeter,
    pub directory: &'a Directory,
    pub idempotency: &'a dyn IdempotencyStore,
    pub customers: &'a dyn CustomerStore,
    pub cursors: &'a dyn CursorStore,
    pub settings: BackfillSettings,
    pub progress: &'a dyn Progress,
}

/// A customer whose contact is written and whose tags and records are still to do.
struct Pending {
    customer: Option<CustomerKey>,
    /// This run's hold on the customer's lease (unused in a dry run).
    holder: String,
    /// The contact, once written (0 until then).
    contact: ContactId,
    /// The state as Keap now holds it (old versions, the mirror after the contact write).
    working: CustomerState,
    /// The versions after the fold.
    folded: CustomerState,
    snapshots: Vec<Snapshot>,
    changes: TagChanges,
    report: Report,
}

/// One snapshot of a pending customer.
struct Snapshot {
    plan: Plan,
    lease: Option<Lease>,
    verdict: Verdict,
}

/// What one customer's snapshots came to in step 2, when they need no page call.
#[derive(Default)]
struct Counts {
    duplicates: u64,
    stale: u64,
    ignored: u64,
    failed: u64,
}

enum Step {
    Pending(Box<Pending>),
    Done(Counts),
}

impl Backfill<'_> {
    /// Runs (or, with `resume`, continues) the backfill of `query`.
    pub async fn run(&self, query: BackfillQuery, resume: bool) -> Result<Outcome, BackfillError> {
        // Every Keap call of the run goes through the budget (see `budget`).
        let guarded = Budgeted::new(self.crm, self.meter, self.settings.max_keap_calls);
        let engine = Backfill {
            crm: &guarded,
            settings: self.settings.clone(),
            ..*self
        };
        engine.run_guarded(query, resume, &guarded).await
    }

    async fn run_guarded(
        &self,
        query: BackfillQuery,
        resume: bool,
        budget: &Budgeted<'_>,
    ) -> Result<Outcome, BackfillError> {
        let started = Instant::now();
        let key = cursor_key(self.site, &query);
        let stored = match self.cursors.load(&key).await? {
            Some(text) => Some(Cursor::from_json(&text)?),
            None => None,
        };
        let mut cursor = match (resume, stored) {
            (true, Some(cursor)) => cursor,
            (true, None) => return Err(BackfillError::NoCursor { key }),
            (false, stored) => {
                if stored.is_some_and(|c| !c.finished) {
                    self.progress.warn(
                        "an unfinished backfill with these filters was stored; starting over (snapshots already applied are skipped at no Keap cost; --resume continues instead)",
                    );
                }
                Cursor::new(self.site, query)
            }
        };
        // Saved before the first page too, so `--resume` works after any stop.
        if !self.settings.dry_run {
            self.cursors.save(&key, &cursor.to_json()).await?;
        }
        let mut run = Totals::default();
        // Every company of the account in one paged list at the first one needed: each name
        // it lacks is then created with no look-up (a backfill meets many companies once each).
        self.directory.list_companies_on_first_use();
        let expected = self.count_remaining(&cursor).await;
        self.progress.started(expected, &cursor.totals);
        let mut quota_warned = false;
        // The most calls a page has cost in this run: the next page's likely price.
        let mut page_cost: u64 = (PAGE_SIZE as f64 * ASSUMED_CALLS_PER_CONTACT) as u64;

        while !cursor.finished {
            if self.settings.interrupt.load(Ordering::Relaxed) {
                return Ok(stopped(cursor, run, key, started, StopReason::Interrupted));
            }
            let used = run.keap_calls;
            if let Some(left) = self
                .meter
                .daily_quota_left()
                .filter(|_| !self.settings.dry_run)
            {
                if left < page_cost {
                    let reason = StopReason::QuotaLow {
                        left,
                        page_needs: page_cost,
                    };
                    return Ok(stopped(cursor, run, key, started, reason));
                }
            }

            let passes = cursor.query.passes();
            let query = SubscriptionQuery {
                state: passes.get(cursor.pass).cloned().flatten(),
                product_id: cursor.query.product_id,
                updated_since: Some(cursor.after.or(cursor.query.updated_since).unwrap_or(EPOCH)),
            };
            let page = self
                .chargify
                .subscriptions_page(&query, cursor.page)
                .await?;
            // The longest prefix of the page the run can still pay for.
            let mut plans = self.plan_page(&cursor, &page);
            let affordable = match self.settings.max_keap_calls {
                Some(limit) => self.affordable(&plans, limit.saturating_sub(used)),
                None => page.len(),
            };
            if affordable == 0 && !page.is_empty() {
                let limit = self.settings.max_keap_calls.unwrap_or_default();
                let reason = StopReason::MaxKeapCalls { limit, used };
                return Ok(stopped(cursor, run, key, started, reason));
            }
            let cut = affordable < page.len();
            let page = &page[..affordable];
            plans.truncate(affordable);
            let (calls_before, throttled_before) = (self.meter.calls(), self.meter.throttled());
            let outcome = self.page(page, plans).await;
            if budget.refused() {
                // The page cost more than priced: stop at the last page done (its work is
                // redone by the next run at no extra effect).
                let limit = self.settings.max_keap_calls.unwrap_or_default();
                let used = used + self.meter.calls().saturating_sub(calls_before);
                let reason = StopReason::MaxKeapCalls { limit, used };
                run.keap_calls = used;
                return Ok(stopped(cursor, run, key, started, reason));
            }
            let mut page_totals = outcome?;
            page_totals.keap_calls = self.meter.calls().saturating_sub(calls_before);
            page_totals.throttled = self.meter.throttled().saturating_sub(throttled_before);
            page_cost = page_cost.max(page_totals.keap_calls).max(1);
            let listed: Vec<(i64, Option<OffsetDateTime>)> =
                page.iter().map(|s| (s.id, s.updated_at)).collect();
            if cut || page.len() == PAGE_SIZE {
                cursor.advance(&listed);
            } else {
                cursor.next_pass();
            }
            run.add(&page_totals);
            cursor.totals.add(&page_totals);
            if !self.settings.dry_run {
                self.cursors.save(&key, &cursor.to_json()).await?;
            }
            let eta = self.eta(expected, &run);
            if eta.quota_short && !quota_warned {
                quota_warned = true;
                self.progress.warn(&format!(
                    "Keap's daily quota left ({}) will not cover the about {} calls still needed; the run will stop before it runs out, resume after the daily reset (00:00 UTC)",
                    eta.quota_left.unwrap_or_default(),
                    eta.remaining_calls.unwrap_or_default()
                ));
            }
            self.progress.page_done(&run, &eta);
            if cut {
                let limit = self.settings.max_keap_calls.unwrap_or_default();
                let reason = StopReason::MaxKeapCalls {
                    limit,
                    used: run.keap_calls,
                };
                return Ok(stopped(cursor, run, key, started, reason));
            }
        }
        Ok(Outcome {
            finish: Finish::Complete,
            run,
            total: cursor.totals,
            cursor_key: key,
            elapsed: started.elapsed(),
        })
    }

    fn eta(&self, expected: Option<u64>, run: &Totals) -> Eta {
        let calls_per_contact = run.calls_per_contact().unwrap_or(ASSUMED_CALLS_PER_CONTACT);
        // Only subscriptions still needing a contact write cost calls; a resumed run's
        // duplicates are free, so count what was seen, not what was applied.
        let remaining = expected.map(|e| e.saturating_sub(run.seen));
        let remaining_calls = remaining.map(|r| (r as f64 * calls_per_contact).ceil() as u64);
        let seconds = match (remaining_calls, self.meter.pace()) {
            (Some(calls), Some(pace)) if pace > 0.0 => Some(calls as f64 / pace),
            _ => None,
        };
        let quota_left = self.meter.daily_quota_left();
        Eta {
            remaining,
            calls_per_contact,
            remaining_calls,
            seconds,
            quota_left,
            quota_short: matches!((quota_left, remaining_calls), (Some(q), Some(c)) if c > q),
        }
    }

    /// How many subscriptions the run will still list: per pass, the last non-empty page
    /// found by doubling then bisecting (about 2·log2(pages) cheap Chargify calls). `None`
    /// if Chargify does not answer: the bar then shows counts without an ETA.
    async fn count_remaining(&self, cursor: &Cursor) -> Option<u64> {
        let passes = cursor.query.passes();
        let mut total = 0u64;
        for (pass, state) in passes.iter().enumerate().skip(cursor.pass) {
            let (since, first_page) = if pass == cursor.pass {
                (cursor.after, cursor.page)
            } else {
                (None, 1)
            };
            let query = SubscriptionQuery {
                state: state.clone(),
                product_id: cursor.query.product_id,
                updated_since: Some(since.or(cursor.query.updated_since).unwrap_or(EPOCH)),
            };
            let listed = self.count_listed(&query, first_page).await?;
            total += listed;
            if pass == cursor.pass {
                total = total.saturating_sub(cursor.done_at_after.len() as u64);
            }
        }
        Some(total)
    }

    async fn count_listed(&self, query: &SubscriptionQuery, first: u32) -> Option<u64> {
        let len = |page: u32| async move {
            self.chargify
                .subscriptions_page(query, page)
                .await
                .map(|p| p.len())
                .ok()
        };
        // Find a page past the end, doubling the step.
        let mut full = first.saturating_sub(1); // the last page known full
        let mut step = 1u32;
        let (mut end, mut end_len) = loop {
            let page = full.saturating_add(step);
            let n = len(page).await?;
            if n < PAGE_SIZE {
                break (page, n);
            }
            full = page;
            step = step.saturating_mul(2);
            if step > 1 << 20 {
                return None;
            }
        };
        // Bisect between the last full page and the first short one, until adjacent.
        while end - full > 1 {
            let mid = full + (end - full) / 2;
            let n = len(mid).await?;
            if n < PAGE_SIZE {
                (end, end_len) = (mid, n);
            } else {
                full = mid;
            }
        }
        // Pages `first..end` are full, page `end` holds the rest.
        Some(u64::from(end - first) * PAGE_SIZE as u64 + end_len as u64)
    }

    /// Each subscription of `page` as its snapshot and plan, made once: the budget prices
    /// these plans and the page applies them. `None` for a subscription the cursor shows
    /// done; an error when no snapshot can be made of it.
    fn plan_page(&self, cursor: &Cursor, page: &[Subscription]) -> Vec<SnapshotPlan> {
        let now = OffsetDateTime::now_utc();
        page.iter()
            .map(|subscription| {
                if cursor.already_done(subscription.id, subscription.updated_at) {
                    return None;
                }
                let planned = snapshot_envelope(self.site, subscription, now)
                    .map_err(|e| e.to_string())
                    .and_then(|envelope| {
                        let webhook = Webhook::parse(envelope.raw_body.as_bytes())
                            .map_err(|e| e.to_string())?;
                        self.rules
                            .plan(&webhook, self.site)
                            .map_err(|e| e.to_string())
                            .map(|plan| (plan, envelope))
                    });
                Some(planned)
            })
            .collect()
    }

    /// How many subscriptions of a page, from the first, the run can pay for with `left`
    /// Keap requests, their `plans` priced at their worst ([`budget::worst_case`]).
    fn affordable(&self, plans: &[SnapshotPlan], left: u64) -> usize {
        let mut affordable = 0;
        for k in 1..=plans.len() {
            let priced = plans[..k]
                .iter()
                .filter_map(|p| p.as_ref()?.as_ref().ok().map(|(plan, _)| plan));
            let cost = budget::worst_case(priced, self.directory);
            if cost > left {
                break;
            }
            affordable = k;
        }
        affordable
    }

    /// One page, planned by [`Self::plan_page`]: steps 1–4 of the module docs. Returns its
    /// totals (without Keap calls).
    async fn page(
        &self,
        page: &[Subscription],
        plans: Vec<SnapshotPlan>,
    ) -> Result<Totals, BackfillError> {
        let mut totals = Totals::default();
        // Step 1: envelopes and plans, grouped by customer in list order.
        let mut groups: BTreeMap<String, Vec<(Plan, String, Received)>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for (subscription, planned) in page.iter().zip(plans) {
            let Some(planned) = planned else {
                continue;
            };
            totals.seen += 1;
            let (plan, envelope) = match planned {
                Ok(planned) => planned,
                Err(reason) => {
                    tracing::warn!(
                        subscription_id = subscription.id,
                        reason = crate::telemetry::redact_emails(&reason).as_str(),
                        "subscription skipped: no snapshot can be made of it"
                    );
                    totals.failed += 1;
                    continue;
                }
            };
            if plan.is_empty() {
                totals.ignored += 1;
                continue;
            }
            let group = plan
                .customer_id
                .clone()
                .map(|c| format!("cus:{c}"))
                .unwrap_or_else(|| format!("sub:{}", subscription.id));
            if !groups.contains_key(&group) {
                order.push(group.clone());
            }
            groups.entry(group).or_default().push((
                plan,
                payload_hash(&envelope.raw_body),
                Received::of(&envelope),
            ));
        }

        // Step 2: contacts, customers concurrently, one customer's snapshots in order.
        let concurrency = self.settings.concurrency.max(1);
        let results: Vec<Result<Step, BackfillError>> =
            futures::stream::iter(order.into_iter().filter_map(|g| groups.remove(&g)))
                .map(|plans| self.customer_step(plans))
                .buffer_unordered(concurrency)
                .collect()
                .await;
        let mut pending: Vec<Pending> = Vec::new();
        let mut first_error = None;
        for result in results {
            match result {
                Ok(Step::Pending(p)) => pending.push(*p),
                Ok(Step::Done(counts)) => {
                    totals.duplicates += counts.duplicates;
                    totals.stale += counts.stale;
                    totals.ignored += counts.ignored;
                    totals.failed += counts.failed;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_error {
            self.release_all(&pending, &error.to_string()).await;
            return Err(error);
        }

        // Step 3: the page's tags, one call per tag and direction.
        let (apply, remove) = bulk_tag_calls(&pending);
        let bulk = async {
            for (tag, contacts) in &apply {
                self.crm.apply_tag_to_contacts(*tag, contacts).await?;
            }
            for (tag, contacts) in &remove {
                self.crm.remove_tag_from_contacts(*tag, contacts).await?;
            }
            Ok::<(), KeapError>(())
        };
        if let Err(error) = bulk.await {
            self.release_all(&pending, &error.to_string()).await;
            return Err(error.into());
        }

        // Step 4: records, per contact. On a failure the leases not finished are given back,
        // so a resume need not wait for them to expire.
        let mut pending = pending.into_iter();
        while let Some(p) = pending.next() {
            if let Err(error) = self.finish(p, &mut totals).await {
                let rest: Vec<Pending> = pending.collect();
                self.release_all(&rest, &error.to_string()).await;
                return Err(error);
            }
        }
        Ok(totals)
    }

    /// Step 2 for one customer's snapshots: their leases, the customer's lease and state,
    /// the fold, the contact write and the tag changes (not sent yet).
    async fn customer_step(
        &self,
        plans: Vec<(Plan, String, Received)>,
    ) -> Result<Step, BackfillError> {
        let mut counts = Counts::default();
        let now = OffsetDateTime::now_utc();
        let mut snapshots = Vec::new();
        for (plan, hash, received) in plans {
            let key = IdempotencyKey::new(self.site, &plan.webhook_id);
            let lease = if self.settings.dry_run {
                match self.idempotency.get(&key).await? {
                    Some(r) if r.status == RecordStatus::Completed => {
                        counts.duplicates += 1;
                        continue;
                    }
                    _ => None,
                }
            } else {
                let begun = self
                    .idempotency
                    .begin(
                        &key,
                        &hash,
                        &received,
                        now,
                        self.settings.lease,
                        self.settings.record_ttl,
                    )
                    .await?;
                match begun {
                    Begin::Started(lease) => Some(lease),
                    Begin::AlreadyCompleted { .. } => {
                        counts.duplicates += 1;
                        continue;
                    }
                    Begin::InProgress { lease_expires_at } => {
                        self.release_snapshots(&snapshots, "snapshot busy").await;
                        return Err(BackfillError::Busy {
                            webhook_id: plan.webhook_id.clone(),
                            until: lease_expires_at,
                        });
                    }
                }
            };
            snapshots.push(Snapshot {
                plan,
                lease,
                verdict: Verdict::default(),
            });
        }
        let Some(first) = snapshots.first() else {
            return Ok(Step::Done(counts));
        };
        let customer = first
            .plan
            .customer_id
            .as_ref()
            .map(|id| CustomerKey::new(self.site, id));
        let holder = new_token();
        let state = match (&customer, self.settings.dry_run) {
            (None, _) => CustomerState::default(),
            (Some(key), true) => self.customers.get(key).await?.unwrap_or_default(),
            (Some(key), false) => {
                match self
                    .customers
                    .lock(key, &holder, now, self.settings.lease)
                    .await?
                {
                    Locked::Held(state) => state,
                    Locked::Busy { until } => {
                        let webhook_id = first.plan.webhook_id.clone();
                        self.release_snapshots(&snapshots, "customer busy").await;
                        return Err(BackfillError::Busy { webhook_id, until });
                    }
                }
            }
        };
        let mut fold = Fold::new(state.clone());
        for snapshot in &mut snapshots {
            snapshot.verdict = fold.add(&snapshot.plan);
        }
        let fires = snapshots
            .iter()
            .any(|s| s.verdict.steps.iter().any(|(_, fire)| *fire));
        let winners = std::mem::take(&mut fold.winners);
        let mut pending = Pending {
            customer,
            holder,
            contact: 0,
            working: state,
            folded: fold.state,
            snapshots,
            changes: TagChanges::default(),
            report: Report::default(),
        };
        if winners.is_empty() && !fires {
            // Nothing to write: every snapshot is older than what the contact holds.
            for s in &pending.snapshots {
                if s.verdict.is_stale() {
                    counts.stale += 1;
                } else {
                    counts.ignored += 1;
                }
            }
            self.finish_records(&pending, "stale: newer values already held")
                .await?;
            return Ok(Step::Done(counts));
        }
        let writer = self.writer();
        let email = pending
            .snapshots
            .iter()
            .rev()
            .find_map(|s| s.plan.contact.email.clone());
        let written = async {
            // The working copy still has the versions before this fold: a retry folds the
            // snapshots again exactly as now.
            let save_first = writer
                .before_creating(&mut pending.working, &winners, email.as_deref())
                .await?;
            if let (true, Some(key), false) = (save_first, &pending.customer, self.settings.dry_run)
            {
                self.customers
                    .save(key, &pending.holder, &pending.working, false)
                    .await?;
            }
            let contact = writer
                .write_contact(
                    &mut pending.working,
                    &winners,
                    email.as_deref(),
                    now,
                    &mut pending.report,
                )
                .await?;
            let changes = writer
                .tag_changes(&pending.working, &winners, &mut pending.report)
                .await?;
            Ok::<_, ApplyError>((contact, changes))
        }
        .await;
        match written {
            Ok((contact, changes)) => {
                pending.contact = contact;
                pending.changes = changes;
                Ok(Step::Pending(Box::new(pending)))
            }
            Err(error) => self.contact_failed(pending, error, counts).await,
        }
    }

    /// A contact that cannot be written: a permanent refusal for this contact is logged
    /// and counted and the run goes on; anything a later retry can fix (throttling, the
    /// quota, credentials, the network, a store) or that fails every contact alike (a rules
    /// or Keap set-up problem) stops the run at the last page done.
    async fn contact_failed(
        &self,
        pending: Pending,
        error: ApplyError,
        mut counts: Counts,
    ) -> Result<Step, BackfillError> {
        self.release_all(std::slice::from_ref(&pending), &error.to_string())
            .await;
        if !error.is_permanent_for_customer() {
            return Err(BackfillError::Stopped(error));
        }
        for s in &pending.snapshots {
            tracing::warn!(
                webhook_id = s.plan.webhook_id.as_str(),
                code = error.code(),
                error = crate::telemetry::redact_emails(&error.to_string()).as_str(),
                "snapshot not applied; the backfill goes on"
            );
            counts.failed += 1;
        }
        Ok(Step::Done(counts))
    }

    /// Step 4 for one customer: the tags' mirror, goals and notes if the rules give
    /// snapshots any, the state saved, the records completed.
    async fn finish(&self, mut p: Pending, totals: &mut Totals) -> Result<(), BackfillError> {
        totals.contacts += 1;
        totals.applied += p.snapshots.len() as u64;
        p.changes.done(&mut p.working);
        if self.settings.dry_run {
            return Ok(());
        }
        let writer = self.writer();
        for s in &mut p.snapshots {
            let Some(lease) = s.lease.as_mut() else {
                continue;
            };
            fire_steps(
                self.idempotency,
                &writer,
                Some(p.contact),
                &s.plan,
                &s.verdict.steps,
                lease,
            )
            .await
            .map_err(BackfillError::Stopped)?;
        }
        p.folded.take_mirror(&p.working);
        let summary = format!(
            "contact {}; values sent {}, already held {}; tags +{} -{} (page bulk calls)",
            p.contact,
            p.report.values_written,
            p.report.unchanged,
            p.changes.apply.len(),
            p.changes.remove.len()
        );
        self.finish_records(&p, &summary).await
    }

    /// Saves the folded state (giving the customer's lease back) and completes the
    /// snapshots' records.
    async fn finish_records(&self, p: &Pending, summary: &str) -> Result<(), BackfillError> {
        if self.settings.dry_run {
            return Ok(());
        }
        if let Some(key) = &p.customer {
            self.customers.save(key, &p.holder, &p.folded, true).await?;
        }
        for lease in p.snapshots.iter().filter_map(|s| s.lease.as_ref()) {
            self.idempotency
                .complete(
                    lease,
                    summary,
                    None,
                    OffsetDateTime::now_utc(),
                    self.settings.record_ttl,
                )
                .await?;
        }
        Ok(())
    }

    async fn release_all(&self, pending: &[Pending], reason: &str) {
        for p in pending {
            self.release_snapshots(&p.snapshots, reason).await;
            if let (Some(key), false) = (&p.customer, self.settings.dry_run) {
                if let Err(e) = self.customers.unlock(key, &p.holder).await {
                    tracing::warn!(error = %e, "could not give a customer's lease back; it expires by itself");
                }
            }
        }
    }

    async fn release_snapshots(&self, snapshots: &[Snapshot], reason: &str) {
        for lease in snapshots.iter().filter_map(|s| s.lease.as_ref()) {
            if let Err(e) = self.idempotency.release(lease, reason).await {
                tracing::warn!(error = %e, "could not release a snapshot's lease; it expires by itself");
            }
        }
    }

    fn writer(&self) -> Writer<'_> {
        Writer {
            crm: self.crm,
            directory: self.directory,
            rules: self.rules,
        }
    }
}

fn stopped(
    cursor: Cursor,
    run: Totals,
    key: String,
    started: Instant,
    reason: StopReason,
) -> Outcome {
    Outcome {
        finish: Finish::Stopped(reason),
        run,
        total: cursor.totals,
        cursor_key: key,
        elapsed: started.elapsed(),
    }
}

/// The page's tag calls: per tag, the contacts to apply it to and to remove it from.
fn bulk_tag_calls(
    pending: &[Pending],
) -> (
    BTreeMap<TagId, Vec<ContactId>>,
    BTreeMap<TagId, Vec<ContactId>>,
) {
    let mut apply_calls: BTreeMap<TagId, Vec<ContactId>> = BTreeMap::new();
    let mut remove_calls: BTreeMap<TagId, Vec<ContactId>> = BTreeMap::new();
    for p in pending {
        for tag in &p.changes.apply {
            apply_calls.entry(*tag).or_default().push(p.contact);
        }
        for tag in &p.changes.remove {
            remove_calls.entry(*tag).or_default().push(p.contact);
        }
    }
    (apply_calls, remove_calls)
}

//! The engine over in-memory ports and a fake Chargify: bulk grouping, removals, duplicates
//! and stale snapshots, resume after a failure, the call limit, dry runs.

use super::*;
use crate::chargify::api::{Event, EventQuery, WebhookQuery, WebhookRecord};
use crate::cursor_store::InMemoryCursorStore;
use crate::idempotency::InMemoryIdempotencyStore;
use crate::identity::InMemoryCustomerStore;
use crate::identity::InMemoryNameLocks;
use crate::keap::InMemoryCrm;
use async_trait::async_trait;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU32;
use std::sync::Mutex;
use time::format_description::well_known::Rfc3339;

const SITE: &str = "acme";
const T0: OffsetDateTime = time::macros::datetime!(2026-01-01 00:00:00 -5);

/// Chargify's list as the API serves it: filtered by state, product and `updated_at`
/// (`>=`), sorted by `updated_at` then id, pages of 200.
#[derive(Default)]
struct FakeChargify {
    subscriptions: Mutex<Vec<Value>>,
    /// Fail the first request that starts after the beginning (the second page's fetch).
    fail_after_first_page: AtomicBool,
    requests: AtomicU32,
}

impl FakeChargify {
    fn with(n: usize, state: impl Fn(usize) -> &'static str) -> Self {
        let fake = Self::default();
        for i in 0..n {
            fake.add(
                i as i64 + 1,
                i as i64 + 1,
                state(i),
                T0 + time::Duration::seconds(i as i64),
            );
        }
        fake
    }

    fn add(&self, id: i64, customer: i64, state: &str, updated_at: OffsetDateTime) {
        self.add_with_company(id, customer, state, updated_at, "");
    }

    fn add_with_company(
        &self,
        id: i64,
        customer: i64,
        state: &str,
        updated_at: OffsetDateTime,
        organization: &str,
    ) {
        let at = updated_at.format(&Rfc3339).expect("time");
        let mut sub = crate::fixtures::api_subscription(id, customer, state, &at);
        sub["customer"]["email"] = format!("c{customer}@example.com").into();
        // The customer record as of the same change: its data is as new as the subscription.
        sub["customer"]["updated_at"] = at.clone().into();
        sub["customer"]["organization"] = organization.into();
        let mut subs = self.subscriptions.lock().expect("lock");
        subs.retain(|s| s["id"] != id);
        subs.push(sub);
    }
}

#[async_trait]
impl ChargifyApi for FakeChargify {
    async fn subscriptions_page(
        &self,
        query: &SubscriptionQuery,
        page: u32,
    ) -> Result<Vec<Subscription>, ChargifyApiError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let since = query.updated_since.unwrap_or(EPOCH);
        if since > EPOCH && self.fail_after_first_page.swap(false, Ordering::Relaxed) {
            return Err(ChargifyApiError::Transient {
                path: "/subscriptions.json".into(),
                status: 503,
            });
        }
        let mut subs: Vec<Subscription> = self
            .subscriptions
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|v| serde_json::from_value::<Subscription>(v.clone()).ok())
            .filter(|s| {
                query
                    .state
                    .as_deref()
                    .is_none_or(|st| s.state.as_deref() == Some(st))
            })
            .filter(|s| s.updated_at.is_some_and(|at| at >= since))
            .collect();
        subs.sort_by_key(|s| (s.updated_at, s.id));
        Ok(subs
            .into_iter()
            .skip((page as usize - 1) * PAGE_SIZE)
            .take(PAGE_SIZE)
            .collect())
    }
    async fn subscription(&self, _id: i64) -> Result<Option<Subscription>, ChargifyApiError> {
        Ok(None)
    }
    async fn webhooks_page(
        &self,
        _q: &WebhookQuery,
        _p: u32,
    ) -> Result<Vec<WebhookRecord>, ChargifyApiError> {
        Ok(Vec::new())
    }
    async fn replay_webhooks(&self, _ids: &[i64]) -> Result<(), ChargifyApiError> {
        Ok(())
    }
    async fn events_page(&self, _q: &EventQuery, _p: u32) -> Result<Vec<Event>, ChargifyApiError> {
        Ok(Vec::new())
    }
}

struct World {
    rules: RuleSet,
    chargify: FakeChargify,
    crm: InMemoryCrm,
    directory: Directory,
    idempotency: InMemoryIdempotencyStore,
    customers: InMemoryCustomerStore,
    cursors: InMemoryCursorStore,
}

impl World {
    fn new(chargify: FakeChargify) -> Self {
        let rules = RuleSet::default_rules().expect("default rules");
        let crm = InMemoryCrm::new();
        for label in rules.custom_field_labels() {
            crm.add_custom_field(&label);
        }
        Self {
            rules,
            chargify,
            crm,
            directory: Directory::new(Arc::new(InMemoryNameLocks::new())),
            idempotency: InMemoryIdempotencyStore::new(),
            customers: InMemoryCustomerStore::new(),
            cursors: InMemoryCursorStore::default(),
        }
    }

    fn engine(&self, settings: BackfillSettings) -> Backfill<'_> {
        Backfill {
            site: SITE,
            rules: &self.rules,
            chargify: &self.chargify,
            crm: &self.crm,
            meter: &self.crm,
            directory: &self.directory,
            idempotency: &self.idempotency,
            customers: &self.customers,
            cursors: &self.cursors,
            settings,
            progress: &Silent,
        }
    }

    async fn run(&self, resume: bool) -> Result<Outcome, BackfillError> {
        self.engine(BackfillSettings::default())
            .run(BackfillQuery::default(), resume)
            .await
    }

    fn calls(&self, operation: &str) -> usize {
        self.crm
            .state()
            .calls
            .iter()
            .filter(|c| c.operation == operation)
            .count()
    }

    /// Tag names per contact email.
    fn tags_by_email(&self) -> BTreeMap<String, BTreeSet<String>> {
        let emails: Vec<(ContactId, String)> = self
            .crm
            .state()
            .contacts
            .iter()
            .map(|(id, (fields, _))| (*id, fields.email.clone().unwrap_or_default()))
            .collect();
        emails
            .into_iter()
            .map(|(id, email)| (email, self.crm.tag_names(id)))
            .collect()
    }
}

fn three_states(i: usize) -> &'static str {
    ["active", "past_due", "canceled"][i % 3]
}

fn state_tag(state: &str) -> String {
    match state {
        "active" => "Billing: Active",
        "past_due" => "Billing: Past Due",
        _ => "Billing: Canceled",
    }
    .into()
}

#[tokio::test]
async fn each_page_sends_one_apply_call_per_tag_for_all_its_contacts() {
    let world = World::new(FakeChargify::with(450, three_states));
    let outcome = world.run(false).await.expect("backfill");
    assert_eq!(outcome.finish, Finish::Complete);
    assert_eq!((outcome.run.seen, outcome.run.applied), (450, 450));
    // 3 pages (200, 200, 50), each with 3 state tags and one plan tag: 4 calls a page.
    assert_eq!(world.calls("apply_tag_to_contacts"), 12);
    assert_eq!(world.calls("upsert_contact"), 450);
    assert_eq!(world.calls("apply_tags") + world.calls("remove_tags"), 0);
    // New contacts listed their (no) tags: nothing to remove.
    assert_eq!(world.calls("remove_tag_from_contacts"), 0);
    let per_contact = outcome.run.calls_per_contact().expect("contacts");
    assert!(per_contact <= 1.1, "{per_contact} Keap calls per contact");
    assert_eq!(outcome.run.keap_calls, world.crm.call_count() as u64);
    let tags = world.tags_by_email();
    assert_eq!(tags.len(), 450);
    for i in 0..450 {
        let expected = BTreeSet::from([state_tag(three_states(i)), "Plan: basic".to_owned()]);
        assert_eq!(
            tags[&format!("c{}@example.com", i + 1)],
            expected,
            "customer {}",
            i + 1
        );
    }
    assert!(world
        .cursors
        .load(&outcome.cursor_key)
        .await
        .expect("load")
        .is_some());
}

#[tokio::test]
async fn a_second_run_finds_only_duplicates_and_makes_no_keap_call() {
    let world = World::new(FakeChargify::with(250, three_states));
    world.run(false).await.expect("first");
    let calls = world.crm.call_count();
    let again = world.run(false).await.expect("second");
    assert_eq!(
        (again.run.seen, again.run.duplicates, again.run.applied),
        (250, 250, 0)
    );
    assert_eq!(
        world.crm.call_count(),
        calls,
        "no Keap call for a duplicate"
    );
}

#[tokio::test]
async fn a_snapshot_older_than_the_applied_state_is_stale_and_costs_nothing() {
    let world = World::new(FakeChargify::with(3, |_| "active"));
    // Customer 2's subscription was applied as of a day later (a webhook, say)...
    world
        .chargify
        .add(2, 2, "canceled", T0 + time::Duration::days(1));
    world.run(false).await.expect("first");
    // ...and Chargify's list now shows an older version of it (a replica behind, say).
    world
        .chargify
        .add(2, 2, "active", T0 + time::Duration::seconds(1));
    let calls = world.crm.call_count();
    let outcome = world.run(false).await.expect("backfill");
    assert_eq!(
        (
            outcome.run.duplicates,
            outcome.run.stale,
            outcome.run.applied
        ),
        (2, 1, 0)
    );
    assert_eq!(
        world.crm.call_count(),
        calls,
        "a stale snapshot costs no call"
    );
    assert_eq!(
        world.tags_by_email()["c2@example.com"],
        BTreeSet::from(["Billing: Canceled".to_owned(), "Plan: basic".to_owned()])
    );
    let record = world
        .idempotency
        .get(&IdempotencyKey::new(
            SITE,
            crate::chargify::snapshot::snapshot_id(2, T0 + time::Duration::seconds(1)),
        ))
        .await
        .expect("get")
        .expect("a record");
    assert_eq!(record.status, RecordStatus::Completed);
}

#[tokio::test]
async fn a_changed_state_removes_the_old_tag_in_one_call_for_contacts_that_have_it() {
    let chargify = FakeChargify::with(300, |_| "active");
    let world = World::new(chargify);
    world.run(false).await.expect("first");
    // 100 of them go past due later; the rest are unchanged.
    for i in 0..100 {
        let id = i + 1;
        world.chargify.add(
            id,
            id,
            "past_due",
            T0 + time::Duration::hours(1) + time::Duration::seconds(i),
        );
    }
    let before = world.crm.call_count();
    let outcome = world.run(false).await.expect("second");
    assert_eq!((outcome.run.applied, outcome.run.duplicates), (100, 200));
    // The known contacts are updated by id (Keap's answer lists their tags): one removal
    // call for "Billing: Active", one apply for "Billing: Past Due", the plan tag they have.
    assert_eq!(world.calls("update_contact"), 100);
    assert_eq!(world.calls("remove_tag_from_contacts"), 1);
    let calls = world.crm.call_count() - before;
    // 100 updates, 1 apply, 1 remove, and the new tag: looked up, looked up again under the
    // creation lock (another instance may have made it meanwhile), created.
    assert!(calls <= 105, "{calls} calls");
    let tags = world.tags_by_email();
    assert_eq!(
        tags["c1@example.com"],
        BTreeSet::from(["Billing: Past Due".to_owned(), "Plan: basic".to_owned()])
    );
    assert_eq!(
        tags["c300@example.com"],
        BTreeSet::from(["Billing: Active".to_owned(), "Plan: basic".to_owned()])
    );
}

#[tokio::test]
async fn a_customer_with_two_subscriptions_in_a_page_ends_as_the_newer_says() {
    let world = World::new(FakeChargify::default());
    // Customer 7 has a canceled subscription and, a minute later, an active one.
    world.chargify.add(1, 7, "canceled", T0);
    world
        .chargify
        .add(2, 7, "active", T0 + time::Duration::minutes(1));
    let outcome = world.run(false).await.expect("backfill");
    assert_eq!((outcome.run.applied, outcome.run.contacts), (2, 1));
    assert_eq!(
        world.tags_by_email()["c7@example.com"],
        BTreeSet::from(["Billing: Active".to_owned(), "Plan: basic".to_owned()])
    );
    assert_eq!(
        world.calls("upsert_contact"),
        1,
        "one contact write for both"
    );
}

#[tokio::test]
async fn a_run_stopped_by_a_failure_resumes_after_the_last_page_done() {
    let chargify = FakeChargify::with(450, three_states);
    chargify
        .fail_after_first_page
        .store(true, Ordering::Relaxed);
    let world = World::new(chargify);
    let error = world.run(false).await.expect_err("Chargify failed");
    assert!(matches!(error, BackfillError::Chargify(_)), "{error}");
    assert_eq!(world.calls("upsert_contact"), 200, "page 1 done");
    let resumed = world.run(true).await.expect("resume");
    assert_eq!(resumed.finish, Finish::Complete);
    assert_eq!(
        (resumed.run.seen, resumed.run.duplicates),
        (250, 0),
        "no page redone"
    );
    assert_eq!(resumed.total.applied, 450);
    assert_eq!(
        world.calls("upsert_contact"),
        450,
        "no contact written twice"
    );
}

#[tokio::test]
async fn a_failed_bulk_call_leaves_the_page_to_redo_without_double_effects() {
    let world = World::new(FakeChargify::with(250, three_states));
    world.crm.fail_next_call_to(
        "apply_tag_to_contacts",
        KeapError::Transient {
            status: 503,
            reason: "injected".into(),
            request_id: None,
        },
    );
    let error = world.run(false).await.expect_err("bulk call failed");
    assert!(matches!(error, BackfillError::Keap(_)), "{error}");
    // The leases were given back: the resume redoes page 1 at once. Its 200 contacts were
    // created before the failure, so the resume finds each one by the email it was being
    // created by and writes it again (same values) rather than creating a second; every
    // tag ends applied once and there is one contact per customer.
    let resumed = world.run(true).await.expect("resume");
    assert_eq!(resumed.total.applied, 250);
    assert_eq!(
        world.calls("upsert_contact"),
        250,
        "no contact created twice"
    );
    assert_eq!(world.calls("find_contacts"), 200, "page 1 looked up");
    assert_eq!(world.calls("update_contact"), 200, "page 1 written again");
    assert_eq!(world.crm.state().contacts.len(), 250);
    let tags = world.tags_by_email();
    assert!(
        tags.values().all(|t| t.len() == 2),
        "one state tag and the plan tag each"
    );
}

#[tokio::test]
async fn the_call_limit_stops_at_a_page_boundary_and_resume_finishes() {
    let world = World::new(FakeChargify::with(450, three_states));
    let settings = BackfillSettings {
        max_keap_calls: Some(300),
        ..BackfillSettings::default()
    };
    let stopped = world
        .engine(settings)
        .run(BackfillQuery::default(), false)
        .await
        .expect("run");
    assert!(matches!(
        stopped.finish,
        Finish::Stopped(StopReason::MaxKeapCalls { .. })
    ));
    assert!(stopped.run.keap_calls <= 300, "{}", stopped.run.keap_calls);
    assert_eq!(stopped.run.keap_calls, world.crm.call_count() as u64);
    // The first page and as much of the second as the budget pays for.
    assert!(stopped.run.applied > 200, "{}", stopped.run.applied);
    let resumed = world.run(true).await.expect("resume");
    assert_eq!(resumed.finish, Finish::Complete);
    assert_eq!(stopped.run.applied + resumed.run.applied, 450);
    assert_eq!(
        world.calls("upsert_contact"),
        450,
        "no contact written twice"
    );
}

/// With a company of its own per subscriber (each new to Keap: a create more per contact),
/// no run passes its limit, whatever the limit, and the resumed runs finish the work once.
#[tokio::test]
async fn the_call_limit_is_never_passed_with_a_company_per_subscriber() {
    for limit in [37, 120, 250, 300] {
        let chargify = FakeChargify::default();
        for i in 1..=300 {
            chargify.add_with_company(
                i,
                i,
                "active",
                T0 + time::Duration::seconds(i),
                &format!("Org {i}"),
            );
        }
        let world = World::new(chargify);
        let settings = BackfillSettings {
            max_keap_calls: Some(limit),
            ..BackfillSettings::default()
        };
        let mut applied = 0;
        let mut runs = 0;
        loop {
            runs += 1;
            assert!(runs < 100, "limit {limit}: too many runs");
            let before = world.crm.call_count() as u64;
            let outcome = world
                .engine(settings.clone())
                .run(BackfillQuery::default(), runs > 1)
                .await
                .expect("run");
            let made = world.crm.call_count() as u64 - before;
            assert!(made <= limit, "limit {limit}: a run made {made} calls");
            assert_eq!(outcome.run.keap_calls, made, "the run counts every call");
            applied += outcome.run.applied;
            if outcome.finish == Finish::Complete {
                break;
            }
        }
        assert_eq!(applied, 300, "limit {limit}");
        assert_eq!(
            world.calls("upsert_contact"),
            300,
            "limit {limit}: each contact once"
        );
        assert_eq!(
            world.calls("create_company"),
            300,
            "limit {limit}: each company once"
        );
    }
}

#[tokio::test]
async fn an_interrupt_stops_before_the_next_page() {
    let world = World::new(FakeChargify::with(250, three_states));
    let settings = BackfillSettings::default();
    settings.interrupt.store(true, Ordering::Relaxed);
    let stopped = world
        .engine(settings)
        .run(BackfillQuery::default(), false)
        .await
        .expect("run");
    assert_eq!(stopped.finish, Finish::Stopped(StopReason::Interrupted));
    assert_eq!(world.crm.call_count(), 0);
    assert_eq!(world.run(true).await.expect("resume").run.applied, 250);
}

#[tokio::test]
async fn resume_without_a_stored_cursor_says_how_to_start() {
    let world = World::new(FakeChargify::with(1, three_states));
    let error = world.run(true).await.expect_err("nothing to resume");
    assert!(
        error.to_string().contains("run without --resume"),
        "{error}"
    );
}

#[tokio::test]
async fn a_dry_run_counts_calls_and_writes_nothing() {
    let world = World::new(FakeChargify::with(250, three_states));
    let settings = BackfillSettings {
        dry_run: true,
        ..BackfillSettings::default()
    };
    let outcome = world
        .engine(settings)
        .run(BackfillQuery::default(), false)
        .await
        .expect("dry run");
    assert_eq!(outcome.run.applied, 250);
    assert!(outcome.run.keap_calls >= 250);
    assert_eq!(world.idempotency.writes(), 0);
    assert_eq!(world.customers.writes(), 0);
    assert!(world
        .cursors
        .load(&outcome.cursor_key)
        .await
        .expect("load")
        .is_none());
}

#[tokio::test]
async fn the_estimate_counts_what_chargify_will_list() {
    let world = World::new(FakeChargify::with(1234, three_states));
    let engine = world.engine(BackfillSettings::default());
    let cursor = Cursor::new(SITE, BackfillQuery::default());
    assert_eq!(engine.count_remaining(&cursor).await, Some(1234));
    let two_states = Cursor::new(
        SITE,
        BackfillQuery {
            states: vec!["active".into(), "canceled".into()],
            ..BackfillQuery::default()
        },
    );
    assert_eq!(engine.count_remaining(&two_states).await, Some(823));
    let outcome = engine
        .run(two_states.query.clone(), false)
        .await
        .expect("run");
    assert_eq!(outcome.run.applied, 823);
}

/// Keap's meter as a key with `quota` calls a day left at the start, paced at 10/s.
struct QuotaMeter<'a> {
    crm: &'a InMemoryCrm,
    quota: u64,
}

impl KeapMeter for QuotaMeter<'_> {
    fn calls(&self) -> u64 {
        self.crm.calls()
    }
    fn daily_quota_left(&self) -> Option<u64> {
        Some(self.quota.saturating_sub(self.crm.calls()))
    }
    fn pace(&self) -> Option<f64> {
        Some(10.0)
    }
}

/// What the progress bar was told.
#[derive(Default)]
struct Seen {
    total: Mutex<Option<u64>>,
    etas: Mutex<Vec<Eta>>,
    warnings: Mutex<Vec<String>>,
}

impl Progress for Seen {
    fn started(&self, total: Option<u64>, _totals: &Totals) {
        *self.total.lock().expect("lock") = total;
    }
    fn page_done(&self, _run: &Totals, eta: &Eta) {
        self.etas.lock().expect("lock").push(*eta);
    }
    fn warn(&self, message: &str) {
        self.warnings.lock().expect("lock").push(message.to_owned());
    }
}

#[tokio::test]
async fn the_eta_follows_the_measured_cost_and_a_short_quota_stops_before_a_page() {
    let world = World::new(FakeChargify::with(1000, three_states));
    // Enough for two pages (about 210 calls each), not for five.
    let meter = QuotaMeter {
        crm: &world.crm,
        quota: 500,
    };
    let seen = Seen::default();
    let engine = Backfill {
        meter: &meter,
        progress: &seen,
        ..world.engine(BackfillSettings::default())
    };
    let outcome = engine
        .run(BackfillQuery::default(), false)
        .await
        .expect("run");
    assert_eq!(*seen.total.lock().expect("lock"), Some(1000));
    let Finish::Stopped(StopReason::QuotaLow { left, page_needs }) = outcome.finish else {
        panic!("expected a quota stop: {:?}", outcome.finish);
    };
    assert!(left < page_needs, "{left} left, a page needs {page_needs}");
    // Two pages, then the stop. A page after the first starts at the second of the last one
    // done, so it lists that subscription again (skipped) and 199 new ones.
    assert_eq!(outcome.run.applied, 399, "two pages, then the stop");
    let etas = seen.etas.lock().expect("lock").clone();
    let first = etas[0];
    assert_eq!(first.remaining, Some(800));
    // Remaining × measured calls per contact ÷ 10 calls a second.
    let expected = 800.0 * first.calls_per_contact / 10.0;
    assert!(
        (first.seconds.expect("an ETA") - expected).abs() < 1.0,
        "{first:?}"
    );
    assert!(
        first.quota_short,
        "800 subscriptions need more than the quota left"
    );
    let warnings = seen.warnings.lock().expect("lock").clone();
    assert_eq!(warnings.len(), 1, "warned once: {warnings:?}");
    assert!(warnings[0].contains("daily quota"), "{}", warnings[0]);
    // Tomorrow, with a fresh quota, the rest.
    let resumed = world.run(true).await.expect("resume");
    assert_eq!(resumed.run.applied, 601);
}

//! Keap's quota spent only on changes: the Keap calls of the processor and the backfill,
//! counted by the Keap stand-in (127.0.0.1, the v1 contract enforced; no moto).
//!
//! The processor is wired as the Lambda function wires it, with the real `KeapClient` over
//! HTTP and its own tag directory per instance, fed by `process_batch` with batches as SQS
//! FIFO hands them over (up to 10 records, a customer's consecutive records together). The
//! idempotency and identity stores are the in-memory adapters: they make no Keap call, so the
//! counts are those of the DynamoDB ones. Figures:
//!
//! 1. a month of a 1,000-subscriber account (`fixtures::history::month`), on anniversary and
//!    on calendar billing, after the subscribers' signups (not counted): Keap calls per day
//!    (peak and mean) against a service key's 30,000 a day, per webhook, no-op calls (target
//!    0), and the calls spent on subscribers whose month was one normal renewal (target 0);
//! 2. one signup on a new instance (cold tag directory) of an account whose tags and custom
//!    fields exist, then one on the now warm instance (target: cold ≤ warm + 3), and the
//!    calls of each event type on the warm instance;
//! 3. a 7-webhook backlog of one customer in one batch against one record per batch, with
//!    the same end state;
//! 4. the backfill engine (`shared::backfill::Backfill`) on 10,000 subscriptions in the
//!    Chargify stand-in, a quarter with an organisation of their own, new to Keap: calls per
//!    contact (target 1.05 + 0.25).
//!
//! Call counts are deterministic (seeded histories), but for the backfill's look-ups of a tag
//! another task is creating (a task waiting for the creation lock looks again); run times
//! vary.
//!
//! `cargo bench -p integration-tests --bench keap_quota --profile dev`; see
//! docs/benchmarks.md for the run time.

use integration_tests::backfill_world::{self, customer_id, PACE};
use integration_tests::keap_standin::{Call, KeapStandIn};
use integration_tests::keap_view::standin_view;
use shared::backfill::{Backfill, BackfillQuery, BackfillSettings, Finish, Silent};
use shared::chargify::api::ChargifyClient;
use shared::cursor_store::InMemoryCursorStore;
use shared::fixtures::fifo::Fifo;
use shared::fixtures::history::{self, customer_history, Billing, Change, Rng, Sent, Subscriber};
use shared::fixtures::view::ContactView;
use shared::idempotency::{IdempotencyStore, InMemoryIdempotencyStore};
use shared::identity::{
    CustomerKey, CustomerStore, InMemoryCustomerStore, InMemoryNameLocks, Locked, NameLocks,
};
use shared::keap::{Credential, Crm, Directory, KeapClient, KeapClientConfig};
use shared::processor::{process_batch, Limits, Processor};
use shared::queue::{InMemoryRecordControl, RecordControl};
use shared::rules::RuleSet;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const SEED: u64 = 202_606;
const SUBSCRIBERS: usize = 1_000;
/// A service account key's daily quota.
const DAILY_QUOTA: usize = 30_000;
/// SQS's largest batch, which the processor's event source mapping asks for.
const BATCH: usize = 10;
const BACKFILL_SUBSCRIPTIONS: i64 = 10_000;
/// Calls per contact the backfill may spend besides the new companies' creations.
const BACKFILL_BASE_TARGET: f64 = 1.05;

/// One Keap account and the stores every processor instance shares.
struct Account {
    keap: KeapStandIn,
    rules: Arc<RuleSet>,
    idempotency: Arc<InMemoryIdempotencyStore>,
    customers: Arc<InMemoryCustomerStore>,
    locks: Arc<InMemoryNameLocks>,
    control: Arc<InMemoryRecordControl>,
}

impl Account {
    async fn new() -> Self {
        let rules = Arc::new(RuleSet::default_rules().expect("default rules"));
        let keap = KeapStandIn::start().await;
        // The stand-in's per-minute budget only falls (it never refills), and the client
        // slows down as it falls: at a key's 240 the run would crawl. Pacing moves calls in
        // time; it does not change how many there are.
        keap.state().minute_budget = (1_000_000_000, 1_000_000_000);
        keap.add_custom_fields(rules.custom_field_labels(), 100);
        Self {
            keap,
            rules,
            idempotency: Arc::new(InMemoryIdempotencyStore::new()),
            customers: Arc::new(InMemoryCustomerStore::new()),
            locks: Arc::new(InMemoryNameLocks::new()),
            control: Arc::new(InMemoryRecordControl::new()),
        }
    }

    /// A new processor instance (a Lambda cold start): its own Keap client and directory.
    fn instance(&self) -> Arc<Processor> {
        let mut config =
            KeapClientConfig::new(self.keap.base_url(), Credential::ApiKey("sak-quota".into()));
        // No spike arrest here: the pace changes the run's time, not its calls.
        config.requests_per_second = NonZeroU32::new(1_000).expect("non-zero");
        let crm: Arc<dyn Crm> = Arc::new(KeapClient::new(config).expect("client"));
        let locks: Arc<dyn NameLocks> = self.locks.clone();
        let idempotency: Arc<dyn IdempotencyStore> = self.idempotency.clone();
        let customers: Arc<dyn CustomerStore> = self.customers.clone();
        Arc::new(Processor {
            rules: self.rules.clone(),
            crm,
            directory: Arc::new(Directory::new(locks)),
            idempotency,
            customers,
            settings: Limits::default(),
        })
    }

    /// Calls the stand-in has received so far.
    fn calls(&self) -> usize {
        self.keap.state().calls.len()
    }

    /// The calls received since the `from`th.
    fn calls_since(&self, from: usize) -> Vec<Call> {
        self.keap.state().calls[from..].to_vec()
    }

    /// Queues `sends` and drains the queue through `processor`, `batch` records at a time;
    /// every record must be applied (or be a duplicate or ignored).
    async fn deliver(&self, processor: &Arc<Processor>, sends: &[Sent], batch: usize) {
        let mut fifo = Fifo::default();
        for sent in sends {
            fifo.send(sent);
        }
        loop {
            let records = fifo.receive(batch);
            if records.is_empty() {
                break;
            }
            let control: Arc<dyn RecordControl> = self.control.clone();
            let result = process_batch(
                processor.clone(),
                control,
                records.clone(),
                Instant::now() + Duration::from_secs(120),
            )
            .await;
            assert!(
                result.failed.is_empty() && result.dead_lettered == 0,
                "a record failed: {:?}; dead letters {:?}",
                result.outcomes,
                self.control.dead_letters()
            );
            fifo.settle(&records, &result.failed);
        }
        assert!(fifo.is_empty());
    }

    /// Keap contact id → Chargify customer id, from the identity map.
    fn customer_of_contact(&self) -> BTreeMap<i64, u64> {
        self.customers
            .all()
            .into_iter()
            .filter_map(|(key, state)| Some((state.contact_id?, key.customer_id.parse().ok()?)))
            .collect()
    }
}

/// A call as `METHOD /path` with ids as `{id}`.
fn shape(call: &Call) -> String {
    let path: Vec<&str> = call
        .path
        .split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                s
            }
        })
        .collect();
    format!("{} {}", call.method, path.join("/"))
}

/// The contact a call is about: in its path, or its body's `contact_id` (goals, notes).
fn contact_of(call: &Call) -> Option<i64> {
    let mut segments = call.path.split('/').skip(1);
    if let (Some("v1"), Some("contacts"), Some(id)) =
        (segments.next(), segments.next(), segments.next())
    {
        if let Ok(id) = id.parse() {
            return Some(id);
        }
    }
    call.body.as_ref()?.get("contact_id")?.as_i64()
}

/// Calls counted by [`shape`], most first.
fn by_shape(calls: &[Call]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for call in calls {
        *counts.entry(shape(call)).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    counts
        .iter()
        .map(|(shape, n)| format!("{n} {shape}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn no_tag_created(calls: &[Call]) {
    assert!(
        !calls
            .iter()
            .any(|c| c.method == "POST" && c.path == "/v1/tags"),
        "the account was to hold every tag already: {}",
        by_shape(calls)
    );
}

// ---------------------------------------------------------------------------------------
// 1. A month

struct MonthFigures {
    billing: Billing,
    /// The month's length; `per_day` runs on into the next month's first days.
    days: u32,
    webhooks: usize,
    per_day: Vec<usize>,
    noops: Vec<String>,
    quiet: usize,
    quiet_calls: usize,
    /// Calls about no contact: the directory's reads (tag list, field model, companies).
    directory_calls: usize,
    calls: Vec<Call>,
    changes: BTreeMap<Change, usize>,
    took: Duration,
}

impl MonthFigures {
    fn total(&self) -> usize {
        self.per_day.iter().sum()
    }
}

/// The month on `billing`: the account's tags and its subscribers' signups first (not
/// counted), then each day on a new processor instance, so the directory's reads (tag list,
/// field model) are paid once a day (each further cold start adds at most figure 2's
/// difference), its webhooks queued hour by hour as Chargify sends them and drained before
/// the next hour.
async fn month(billing: Billing) -> MonthFigures {
    let started = Instant::now();
    let month = history::month(&mut Rng::new(SEED), SUBSCRIBERS, billing);
    let account = Account::new().await;
    let setup = account.instance();
    warm_up(&account, &setup, &mut Clock::new(SEED + 1)).await;
    account.deliver(&setup, &month.setup, BATCH).await;
    let (first, noops_before) = (account.calls(), account.keap.noop_calls().len());
    let mut per_day = Vec::new();
    let mut pending = month.webhooks.iter().peekable();
    // The month's days, then those its last failures recover in.
    for day in 0.. {
        if day >= month.days && pending.peek().is_none() {
            break;
        }
        // Keap's daily quota resets at midnight UTC.
        account.keap.state().daily_budget = (DAILY_QUOTA as u64, DAILY_QUOTA as u64);
        let before = account.calls();
        let processor = account.instance();
        for hour in 0..24 {
            let end = month.start + time::Duration::hours(i64::from(day * 24 + hour + 1));
            let mut sends = Vec::new();
            while let Some((_, sent)) = pending.next_if(|webhook| webhook.0 < end) {
                sends.push(sent.clone());
            }
            account.deliver(&processor, &sends, BATCH).await;
        }
        per_day.push(account.calls() - before);
    }
    account.keap.assert_no_violations();
    let calls = account.calls_since(first);
    let customer_of = account.customer_of_contact();
    let about = |c: &Call| contact_of(c).and_then(|id| customer_of.get(&id).copied());
    MonthFigures {
        billing,
        days: month.days,
        webhooks: month.webhooks.len(),
        per_day,
        noops: account.keap.noop_calls()[noops_before..].to_vec(),
        quiet: month.quiet.len(),
        quiet_calls: calls
            .iter()
            .filter(|c| about(c).is_some_and(|customer| month.quiet.contains(&customer)))
            .count(),
        directory_calls: calls.iter().filter(|c| contact_of(c).is_none()).count(),
        calls,
        changes: month.changes,
        took: started.elapsed(),
    }
}

fn print_month(m: &MonthFigures) {
    let total = m.total();
    let peak = m.per_day.iter().copied().max().unwrap_or(0);
    let peak_day = m.per_day.iter().position(|d| *d == peak).unwrap_or(0);
    let peak_day = match peak_day.checked_sub(m.days as usize) {
        None => format!("June {}", peak_day + 1),
        Some(d) => format!("July {}", d + 1),
    };
    // A month's calls over its days: the daily mean of an account in its steady state.
    let mean = total as f64 / f64::from(m.days);
    let count = |c: Change| m.changes.get(&c).copied().unwrap_or(0);
    println!(
        "  {} billing: {} webhooks; renewals {} ok + {} failed and recovered, {} churned, {} plan changes, {} customer updates",
        match m.billing {
            Billing::Anniversary => "anniversary",
            Billing::Calendar => "calendar",
        },
        m.webhooks,
        count(Change::Renewal),
        count(Change::FailedRenewal),
        count(Change::StateChange("canceled")),
        count(Change::PlanChange),
        count(Change::CustomerUpdate),
    );
    println!(
        "    Keap calls: {total} ({}); per day peak {peak} ({peak_day}, {:.2}% of {DAILY_QUOTA}), mean {mean:.1} over {} days ({:.3}%)",
        match m.per_day.len().saturating_sub(m.days as usize) {
            0 => "June".to_owned(),
            spill => format!("June 1 to July {spill}"),
        },
        100.0 * peak as f64 / DAILY_QUOTA as f64,
        m.days,
        100.0 * mean / DAILY_QUOTA as f64,
    );
    println!(
        "    per webhook {:.3}; no-op calls {} (target 0); {} subscribers with one normal renewal and nothing else: {} calls (target 0)",
        total as f64 / m.webhooks as f64,
        m.noops.len(),
        m.quiet,
        m.quiet_calls,
    );
    println!(
        "    directory reads (new instance each day): {}; by call: {}",
        m.directory_calls,
        by_shape(&m.calls)
    );
    for noop in m.noops.iter().take(5) {
        println!("    no-op: {noop}");
    }
    println!("    ({:.1} s)", m.took.as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// 2. Cold start and the calls per event type

/// What a warm-up subscriber goes through, so the account holds every tag the measured
/// changes need (created by earlier subscribers, as in an installation that has run a while).
const WARM_UP: [Change; 12] = [
    Change::Signup,
    Change::TrialEndNotice,
    Change::StateChange("active"),
    Change::Renewal,
    Change::FailedRenewal,
    Change::Recovery,
    Change::CustomerUpdate,
    Change::PlanChange,
    Change::StateChange("on_hold"),
    Change::StateChange("unpaid"),
    Change::StateChange("expired"),
    Change::StateChange("canceled"),
];

/// Webhook times and ids of the scenarios of one account.
struct Clock {
    rng: Rng,
    next_id: u64,
    at: OffsetDateTime,
}

impl Clock {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            next_id: 1_000,
            at: time::macros::datetime!(2026-06-01 09:00:00 UTC),
        }
    }

    /// `change` of `subscriber`, a day after the previous change.
    fn send(&mut self, subscriber: &mut Subscriber, change: Change) -> Vec<Sent> {
        self.at += time::Duration::days(1);
        subscriber.send(change, self.at, &mut self.rng, &mut self.next_id)
    }

    fn subscriber(&self, customer: u64, plan: usize) -> Subscriber {
        Subscriber::new(customer, self.at, true, plan, None)
    }
}

/// Subscribers (customers 90001 to 90003) on each plan through [`WARM_UP`], on `processor`,
/// one record per batch: merged, a tag applied and removed again in one run is never
/// needed, so never created.
async fn warm_up(account: &Account, processor: &Arc<Processor>, clock: &mut Clock) {
    let mut sends = Vec::new();
    for plan in 0..3 {
        let mut subscriber = clock.subscriber(90_001 + plan as u64, plan);
        for change in WARM_UP {
            sends.extend(clock.send(&mut subscriber, change));
        }
    }
    account.deliver(processor, &sends, 1).await;
}

struct Row {
    label: &'static str,
    calls: Vec<Call>,
}

struct ColdWarm {
    cold: Vec<Call>,
    warm: Vec<Call>,
    rows: Vec<Row>,
    noops: usize,
}

/// The calls `sends` cost, delivered through `processor`.
async fn measure(account: &Account, processor: &Arc<Processor>, sends: &[Sent]) -> Vec<Call> {
    let before = account.calls();
    account.deliver(processor, sends, BATCH).await;
    account.calls_since(before)
}

async fn cold_and_warm() -> ColdWarm {
    let account = Account::new().await;
    let mut clock = Clock::new(SEED + 2);
    warm_up(&account, &account.instance(), &mut clock).await;

    // A new instance; two new customers sign up, on the plan of an earlier one.
    let processor = account.instance();
    let mut first = clock.subscriber(11, 0);
    let mut second = clock.subscriber(12, 0);
    let cold = measure(
        &account,
        &processor,
        &clock.send(&mut first, Change::Signup),
    )
    .await;
    let warm = measure(
        &account,
        &processor,
        &clock.send(&mut second, Change::Signup),
    )
    .await;

    // The second customer's life on the warm instance, each webhook on its own unless
    // Chargify sends them together (a renewal's pair).
    let mut send = |change| clock.send(&mut second, change);
    let notice = send(Change::TrialEndNotice);
    let active = send(Change::StateChange("active"));
    let renewal = send(Change::Renewal);
    let failed = send(Change::FailedRenewal);
    let recovered = send(Change::Recovery);
    let renewal_after = send(Change::Renewal);
    let update = send(Change::CustomerUpdate);
    let plan = send(Change::PlanChange);
    let late_renewal = send(Change::Renewal);
    let life: Vec<(&'static str, &[Sent])> = vec![
        ("trial_end_notice", &notice[..]),
        ("state change trialing → active", &active[..]),
        ("renewal: renewal_success + payment_success", &renewal[..]),
        ("payment_failure", &failed[..1]),
        ("state change active → past_due", &failed[1..]),
        ("payment_success after a failure", &recovered[..1]),
        ("state change past_due → active", &recovered[1..]),
        ("renewal after a recovery", &renewal_after[..]),
        ("customer_update (email and name)", &update[..]),
        ("subscription_product_change", &plan[..]),
    ];
    let mut rows = vec![Row {
        label: "signup_success (new customer, trial)",
        calls: warm.clone(),
    }];
    for (label, sends) in life {
        let calls = measure(&account, &processor, sends).await;
        rows.push(Row { label, calls });
    }
    // The contact's tags are read again at its first change after MIRROR_MAX_AGE_DAYS
    // (90): a renewal then costs that read. The processor compares with the wall clock, so
    // the last read is set back through the identity map's port.
    age_mirror(
        &account,
        second.customer(),
        Duration::from_secs(91 * 24 * 3600),
    )
    .await;
    rows.push(Row {
        label: "renewal, tags last read 91 days ago",
        calls: measure(&account, &processor, &late_renewal).await,
    });

    account.keap.assert_no_violations();
    for r in &rows {
        no_tag_created(&r.calls);
    }
    no_tag_created(&cold);
    ColdWarm {
        cold,
        warm,
        rows,
        noops: account.keap.noop_calls().len(),
    }
}

/// Sets the customer's mirror as last read `age` ago, through the identity map's port.
async fn age_mirror(account: &Account, customer: u64, age: Duration) {
    let key = CustomerKey::new(history::SITE, customer.to_string());
    let now = OffsetDateTime::now_utc();
    let store: &dyn CustomerStore = account.customers.as_ref();
    let Ok(Locked::Held(mut state)) = store
        .lock(&key, "bench", now, Duration::from_secs(60))
        .await
    else {
        panic!("the customer's lease");
    };
    state.mirror_read_at = Some(now - age);
    store
        .save(&key, "bench", &state, true)
        .await
        .expect("save the state");
}

fn print_cold_warm(c: &ColdWarm) {
    let (cold, warm) = (c.cold.len(), c.warm.len());
    println!(
        "  cold instance: {cold} calls ({}); warm: {warm} ({}); cold - warm = {} (target ≤ 3)",
        c.cold.iter().map(shape).collect::<Vec<_>>().join(", "),
        c.warm.iter().map(shape).collect::<Vec<_>>().join(", "),
        cold as i64 - warm as i64,
    );
    println!("  warm instance, calls per event (each its own batch):");
    for row in &c.rows {
        println!(
            "    {:<44} {:>2}  {}",
            row.label,
            row.calls.len(),
            row.calls.iter().map(shape).collect::<Vec<_>>().join(", ")
        );
    }
    println!("  no-op calls in all of it: {}", c.noops);
}

// ---------------------------------------------------------------------------------------
// 3. A backlog in one batch

struct Backlog {
    events: Vec<&'static str>,
    merged: Vec<Call>,
    one_by_one: Vec<Call>,
    same_end_state: bool,
    noops: usize,
}

/// A customer's contact and goals as Keap ends.
type EndState = (Option<ContactView>, Vec<((String, String), usize)>);

/// The backlog's calls delivered `batch` records at a time, on an instance warmed by other
/// customers, the customer's end state and the no-op calls.
async fn backlog_run(sends: &[Sent], batch: usize) -> (Vec<Call>, EndState, usize) {
    let account = Account::new().await;
    let processor = account.instance();
    warm_up(&account, &processor, &mut Clock::new(SEED + 3)).await;
    let before = account.calls();
    account.deliver(&processor, sends, batch).await;
    let calls = account.calls_since(before);
    account.keap.assert_no_violations();
    no_tag_created(&calls);
    let customer = sends[0].customer.to_string();
    let (view, goals) = standin_view(&account.keap);
    let goals: Vec<_> = goals
        .into_iter()
        .filter(|((c, _), _)| *c == customer)
        .collect();
    let noops = account.keap.noop_calls().len();
    (calls, (view.contacts.get(&customer).cloned(), goals), noops)
}

async fn backlog() -> Backlog {
    let mut next_id = 500_000;
    let start = time::macros::datetime!(2026-03-02 09:00:00 UTC);
    let sends: Vec<Sent> = customer_history(&mut Rng::new(SEED + 4), 77, &mut next_id, start, 6)
        .into_iter()
        .take(7)
        .collect();
    assert_eq!(sends.len(), 7);
    let (merged, merged_end, merged_noops) = backlog_run(&sends, BATCH).await;
    let (one_by_one, single_end, single_noops) = backlog_run(&sends, 1).await;
    Backlog {
        events: sends.iter().map(|s| s.event).collect(),
        same_end_state: merged_end == single_end,
        merged,
        one_by_one,
        noops: merged_noops + single_noops,
    }
}

fn print_backlog(b: &Backlog) {
    println!("  events: {}", b.events.join(", "));
    println!(
        "  one batch: {} calls ({}); one record per batch: {} ({}); ratio {:.2}; same end state: {}; no-op calls {}",
        b.merged.len(),
        by_shape(&b.merged),
        b.one_by_one.len(),
        by_shape(&b.one_by_one),
        b.merged.len() as f64 / b.one_by_one.len() as f64,
        if b.same_end_state { "yes" } else { "NO" },
        b.noops,
    );
}

// ---------------------------------------------------------------------------------------
// 4. Backfill

struct BackfillFigures {
    calls: Vec<Call>,
    with_company: usize,
    companies_created: usize,
    throttled: u32,
    noops: usize,
    applied: u64,
    took: Duration,
}

async fn backfill() -> BackfillFigures {
    let with_company = |i: i64| i % 4 == 0;
    let chargify = backfill_world::chargify(BACKFILL_SUBSCRIPTIONS, |i| {
        with_company(i).then(|| format!("Company of customer {}", customer_id(i)))
    })
    .await;
    let keap = backfill_world::keap().await;
    let rules = RuleSet::default_rules().expect("rules");
    let client = ChargifyClient::new(chargify.client_config()).expect("chargify client");
    let mut config = KeapClientConfig::new(keap.base_url(), Credential::ApiKey("sak-bf".into()));
    config.requests_per_second = NonZeroU32::new(PACE).expect("non-zero");
    let crm = KeapClient::new(config).expect("keap client");
    let directory = Directory::new(Arc::new(InMemoryNameLocks::new()));
    let site = chargify.state().config.site.clone();
    let (idempotency, customers, cursors) = (
        InMemoryIdempotencyStore::new(),
        InMemoryCustomerStore::new(),
        InMemoryCursorStore::default(),
    );
    let engine = Backfill {
        site: &site,
        rules: &rules,
        chargify: &client,
        crm: &crm,
        meter: &crm,
        directory: &directory,
        idempotency: &idempotency,
        customers: &customers,
        cursors: &cursors,
        settings: BackfillSettings::default(),
        progress: &Silent,
    };
    let started = Instant::now();
    let outcome = engine
        .run(BackfillQuery::default(), false)
        .await
        .expect("the backfill runs");
    let took = started.elapsed();
    assert_eq!(outcome.finish, Finish::Complete);
    keap.assert_no_violations();
    let s = keap.state();
    BackfillFigures {
        calls: s.calls.clone(),
        with_company: (0..BACKFILL_SUBSCRIPTIONS)
            .filter(|i| with_company(*i))
            .count(),
        companies_created: s.companies.len(),
        throttled: s.throttled,
        noops: s.noop_calls.len(),
        applied: outcome.run.applied,
        took,
    }
}

fn print_backfill(b: &BackfillFigures) {
    let contacts = BACKFILL_SUBSCRIPTIONS as f64;
    let share = b.with_company as f64 / contacts;
    let per_contact = b.calls.len() as f64 / contacts;
    let target = BACKFILL_BASE_TARGET + share;
    println!(
        "  {} subscriptions ({} applied), {} with a company new to Keap ({} created): {} calls, {per_contact:.3} per contact (target ≤ {target:.2}: {}); 429s {}, no-op calls {}",
        BACKFILL_SUBSCRIPTIONS,
        b.applied,
        b.with_company,
        b.companies_created,
        b.calls.len(),
        if per_contact <= target { "met" } else { "MISSED" },
        b.throttled,
        b.noops,
    );
    println!("    by call: {}", by_shape(&b.calls));
    println!(
        "    without the companies' creations: {:.3} per contact; {:.1} s at {PACE} calls/s",
        (b.calls.len() - b.companies_created) as f64 / contacts,
        b.took.as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    runtime.block_on(async {
        println!("Keap quota benchmark (stand-ins on 127.0.0.1, seed {SEED})");
        println!();
        println!("1. a month of a {SUBSCRIBERS}-subscriber account");
        for billing in [Billing::Anniversary, Billing::Calendar] {
            print_month(&month(billing).await);
        }
        println!();
        println!("2. signup on a new instance (tags and custom fields exist) vs a warm one");
        print_cold_warm(&cold_and_warm().await);
        println!();
        println!("3. a 7-webhook backlog of one customer");
        print_backlog(&backlog().await);
        println!();
        println!("4. backfill (shared::backfill::Backfill, Chargify stand-in → Keap stand-in)");
        print_backfill(&backfill().await);
    });
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}

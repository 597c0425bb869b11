//! `cks forget <email|customer id>`: removes what the stack keeps about one person (see
//! docs/data.md, "Forgetting one person"): the idempotency records holding their webhooks'
//! bodies, their identity-map entries and their dead letters, and says what it removed (keys
//! and message ids, never the email). Which webhooks are theirs is decided by
//! `shared::forget`; this module reads and deletes, through two ports with an adapter each for
//! the deployed stack (DynamoDB, the SQS dead-letter queue) and for the SQLite file of `cks
//! serve` (`--local`).
//!
//! Order: the records are read and the dead letters judged first (a dead letter can name the
//! person's customer id when no record does), then dead letters, records and map entries are
//! removed. Every step is safe to repeat, so a run that fails midway is finished by running
//! it again. Kept on purpose: the seen markers (`seen#<site>#<webhook id>`: a key and an
//! expiry, no personal data), which stop a later delivery of a webhook from applying it again.
//! Keap is not touched: the contact is the Keap account owner's to erase.

use super::dlq::{DeadLetterQueue, Received};
use super::stack::Deployed;
use super::{key_text, progress, records, rfc3339, OpsError, StackArgs};
use crate::store::idempotency::SqliteIdempotencyStore;
use crate::store::identity::SqliteCustomerStore;
use crate::store::queue::SqliteQueue;
use crate::store::{Db, DbError};
use async_trait::async_trait;
use serde_json::json;
use shared::envelope::WebhookEnvelope;
use shared::forget::{BadPerson, Person, Subject};
use shared::idempotency::{
    live_lease, Deleted, DynamoDbIdempotencyStore, IdempotencyRecord, IdempotencyStore, StoreError,
};
use shared::identity::CustomerStore;
use shared::queue::QueueError;
use shared::telemetry::redact_emails;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use time::OffsetDateTime;

#[derive(clap::Args, Debug)]
pub struct ForgetArgs {
    /// The person: an email address (any case) or a Chargify customer id.
    pub person: String,
    /// Only this Chargify site (default: every site found in the records and dead letters).
    #[arg(long, env = "CKS_SITE")]
    pub site: Option<String>,
    /// Only list what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Read at most this many dead letters per pass.
    #[arg(long, default_value_t = 10_000)]
    pub max: usize,
    /// The SQLite file of `cks serve` (its `--db`) instead of the deployed stack.
    #[arg(long, value_name = "FILE")]
    pub local: Option<PathBuf>,
    /// The identity-map table (instead of the stack's `CustomersTableName` output).
    #[arg(long, value_name = "NAME")]
    pub customers_table: Option<String>,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// One line each, saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error(transparent)]
    Person(#[from] BadPerson),
    #[error(transparent)]
    Ops(#[from] OpsError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("--local and the stack's resources (--idempotency-table, --customers-table, --dead-letter-queue-url) were both given; choose one")]
    BothStores,
    #[error("no file {0}; pass the --db file of `cks serve` (default .cks/local.sqlite3)")]
    NoLocalFile(PathBuf),
    #[error("{store}: {source}")]
    Store { store: String, source: StoreError },
    #[error("dead letters in {path}: {source}")]
    LocalQueue { path: String, source: QueueError },
    #[error("{} record(s) were being processed and were kept ({}); run `cks forget` again after {}", .0.len(), keys(.0), until(.0))]
    Busy(Vec<(String, OffsetDateTime)>),
    #[error("{0} removal(s) failed (see the lines above); run `cks forget` again: it removes what is left")]
    Incomplete(usize),
}

fn keys(busy: &[(String, OffsetDateTime)]) -> String {
    busy.iter()
        .map(|(key, _)| key.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn until(busy: &[(String, OffsetDateTime)]) -> String {
    busy.iter()
        .map(|(_, at)| *at)
        .max()
        .map(rfc3339)
        .unwrap_or_default()
}

/// The idempotency records: all of them, and the store to delete from.
#[async_trait]
trait RecordTable: Send + Sync {
    fn name(&self) -> String;
    fn store(&self) -> &dyn IdempotencyStore;
    async fn every_record(&self) -> Result<Vec<IdempotencyRecord>, ForgetError>;
}

#[async_trait]
impl RecordTable for DynamoDbIdempotencyStore {
    fn name(&self) -> String {
        format!("idempotency table {}", self.table())
    }
    fn store(&self) -> &dyn IdempotencyStore {
        self
    }
    async fn every_record(&self) -> Result<Vec<IdempotencyRecord>, ForgetError> {
        Ok(records::scan_all(self).await?)
    }
}

struct LocalRecords {
    store: SqliteIdempotencyStore,
    path: String,
}

#[async_trait]
impl RecordTable for LocalRecords {
    fn name(&self) -> String {
        format!("records in {}", self.path)
    }
    fn store(&self) -> &dyn IdempotencyStore {
        &self.store
    }
    async fn every_record(&self) -> Result<Vec<IdempotencyRecord>, ForgetError> {
        let rows = self
            .store
            .all()
            .await
            .map_err(|source| ForgetError::Store {
                store: self.name(),
                source,
            })?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            match row {
                Ok(record) => records.push(record),
                Err(problem) => eprintln!("skipped an unreadable record: {problem}"),
            }
        }
        Ok(records)
    }
}

/// A dead letter as forget sees it: an id to print and the body (the envelope) to judge.
struct Letter {
    id: String,
    body: String,
}

/// The dead letters, judged a pass at a time.
#[async_trait]
trait DeadLetters: Send {
    /// Every dead letter, held aside until [`DeadLetters::finish`].
    async fn take(&mut self) -> Result<Vec<Letter>, ForgetError>;
    /// Deletes the letters of `remove` (ids from `take`) and gives the others back; the
    /// others go back also when a delete fails.
    async fn finish(&mut self, remove: &BTreeSet<String>) -> Result<(), ForgetError>;
    /// Whether a pass after one that removed letters can find more.
    fn more_after_removal(&self) -> bool;
    /// Whether a pass stopped at its bound (`--max`) with letters left unread.
    fn capped(&self) -> bool;
}

/// How long a pass keeps the dead-letter queue's messages in flight: the judging is
/// instant, but the pass itself may be long (ten messages a receive).
const FORGET_VISIBILITY_SECS: i32 = 120;

struct QueueLetters {
    queue: DeadLetterQueue,
    max: usize,
    held: Vec<Received>,
    capped: bool,
}

#[async_trait]
impl DeadLetters for QueueLetters {
    async fn take(&mut self) -> Result<Vec<Letter>, ForgetError> {
        let received = self
            .queue
            .hold_all(self.max, FORGET_VISIBILITY_SECS)
            .await?;
        self.capped |= received.len() >= self.max;
        // A message received twice in one pass (its visibility ran out) is kept once, with
        // the newer receipt: the older one no longer deletes it.
        let mut by_id: BTreeMap<String, Received> = BTreeMap::new();
        for message in received {
            by_id.insert(message.letter.message_id.clone(), message);
        }
        self.held = by_id.into_values().collect();
        Ok(self
            .held
            .iter()
            .map(|m| Letter {
                id: m.letter.message_id.clone(),
                body: m.letter.body.clone(),
            })
            .collect())
    }

    async fn finish(&mut self, remove: &BTreeSet<String>) -> Result<(), ForgetError> {
        let mut first_error = None;
        for message in std::mem::take(&mut self.held) {
            let done = if remove.contains(&message.letter.message_id) {
                self.queue.delete(&message.receipt).await
            } else {
                self.queue.make_visible(&message.receipt).await
            };
            if let Err(e) = done {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// SQS FIFO hands out a group's later messages only once its earlier ones are deleted or
    /// visible again: a customer with more dead letters than one receive returns needs
    /// another pass.
    fn more_after_removal(&self) -> bool {
        true
    }

    fn capped(&self) -> bool {
        self.capped
    }
}

struct LocalLetters {
    queue: SqliteQueue,
    path: String,
}

impl LocalLetters {
    fn error(&self, source: QueueError) -> ForgetError {
        ForgetError::LocalQueue {
            path: self.path.clone(),
            source,
        }
    }
}

#[async_trait]
impl DeadLetters for LocalLetters {
    async fn take(&mut self) -> Result<Vec<Letter>, ForgetError> {
        let rows = self
            .queue
            .dead_letter_bodies()
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows
            .into_iter()
            .map(|(id, body)| Letter {
                id: id.to_string(),
                body,
            })
            .collect())
    }

    async fn finish(&mut self, remove: &BTreeSet<String>) -> Result<(), ForgetError> {
        let ids = remove.iter().filter_map(|id| id.parse().ok()).collect();
        self.queue
            .delete_dead_letters(ids)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// One read sees every row.
    fn more_after_removal(&self) -> bool {
        false
    }

    fn capped(&self) -> bool {
        false
    }
}

/// Where the person's data is.
struct Stores {
    records: Box<dyn RecordTable>,
    customers: Box<dyn CustomerStore>,
    customers_name: String,
    dead_letters: Box<dyn DeadLetters>,
}

impl Stores {
    async fn open(args: &ForgetArgs) -> Result<Self, ForgetError> {
        let Some(path) = &args.local else {
            return Self::deployed(args).await;
        };
        let stack = &args.stack;
        if args.customers_table.is_some()
            || stack.idempotency_table.is_some()
            || stack.dead_letter_queue_url.is_some()
        {
            return Err(ForgetError::BothStores);
        }
        // Opening creates a missing file: a mistyped path must not look like an empty store.
        if !path.is_file() {
            return Err(ForgetError::NoLocalFile(path.clone()));
        }
        Ok(Self::local(Db::open(path)?, path.display().to_string()))
    }

    /// The stores of a `cks serve` file, `shown` as its path.
    fn local(db: Db, shown: String) -> Self {
        Self {
            records: Box::new(LocalRecords {
                store: SqliteIdempotencyStore::new(db.clone()),
                path: shown.clone(),
            }),
            customers: Box::new(SqliteCustomerStore::new(db.clone())),
            customers_name: format!("identity map in {shown}"),
            dead_letters: Box::new(LocalLetters {
                queue: SqliteQueue::new(db),
                path: shown,
            }),
        }
    }

    /// The stack's resources, all found before anything is removed: a missing output stops
    /// the command with nothing done.
    async fn deployed(args: &ForgetArgs) -> Result<Self, ForgetError> {
        let deployed = Deployed::connect(args.stack.clone()).await?;
        let records = deployed.idempotency().await?;
        let customers = deployed.customers(&args.customers_table).await?;
        let queue = DeadLetterQueue::new(deployed.sqs(), deployed.dead_letter_queue_url().await?);
        Ok(Self {
            records: Box::new(records),
            customers_name: format!("customers table {}", customers.table()),
            customers: Box::new(customers),
            dead_letters: Box::new(QueueLetters {
                queue,
                max: args.max.max(1),
                held: Vec::new(),
                capped: false,
            }),
        })
    }
}

/// What a run found and did. Keys are `site#id`; dead letters are message ids (row ids for
/// `--local`). Nothing here is personal data beyond those ids.
#[derive(Debug, Default)]
struct Report {
    records: Vec<String>,
    customers: Vec<String>,
    dead_letters: BTreeSet<String>,
    /// Records a worker holds: kept, with the lease's expiry.
    busy: Vec<(String, OffsetDateTime)>,
    /// Records whose webhook could not be judged (no envelope, or an unreadable one).
    unchecked_records: Vec<String>,
    unchecked_dead_letters: BTreeSet<String>,
    /// Someone else's webhooks that name the email in another field.
    named_elsewhere: BTreeSet<String>,
    /// A dead-letter pass stopped at `--max`: some letters were not read.
    dead_letters_capped: bool,
    failed: usize,
}

/// The envelope a record keeps, if it has a readable one.
fn envelope_of(record: &IdempotencyRecord) -> Option<WebhookEnvelope> {
    let received = record.received.as_ref()?;
    WebhookEnvelope::from_json(&received.envelope).ok()
}

struct Forget<'a> {
    stores: &'a mut Stores,
    subject: Subject,
    dry_run: bool,
    report: Report,
}

impl Forget<'_> {
    /// The report, and the subject as the stores taught it (its customers and sites).
    async fn run(mut self) -> Result<(Report, Subject), ForgetError> {
        let records = self.stores.records.every_record().await?;
        let judged: Vec<(IdempotencyRecord, Option<WebhookEnvelope>)> = records
            .into_iter()
            .map(|record| {
                let envelope = envelope_of(&record);
                (record, envelope)
            })
            .collect();
        for envelope in judged.iter().filter_map(|(_, e)| e.as_ref()) {
            self.subject.learn(envelope);
        }
        self.dead_letters().await?;
        self.records(&judged).await;
        self.customers().await;
        Ok((self.report, self.subject))
    }

    /// Passes over the dead letters until one removes nothing (one pass on a dry run).
    async fn dead_letters(&mut self) -> Result<(), ForgetError> {
        loop {
            let letters = self.stores.dead_letters.take().await?;
            let judged: Vec<(Letter, Option<WebhookEnvelope>)> = letters
                .into_iter()
                .map(|letter| {
                    let envelope = WebhookEnvelope::from_json(&letter.body).ok();
                    (letter, envelope)
                })
                .collect();
            for envelope in judged.iter().filter_map(|(_, e)| e.as_ref()) {
                self.subject.learn(envelope);
            }
            let mut chosen = BTreeSet::new();
            for (letter, envelope) in &judged {
                match envelope {
                    None => {
                        self.report.unchecked_dead_letters.insert(letter.id.clone());
                    }
                    Some(e) if self.subject.concerns(e) => {
                        chosen.insert(letter.id.clone());
                    }
                    Some(e) if self.subject.named_elsewhere(e) => {
                        self.report.named_elsewhere.insert(letter.id.clone());
                    }
                    Some(_) => {}
                }
            }
            let remove = if self.dry_run {
                BTreeSet::new()
            } else {
                chosen.clone()
            };
            self.stores.dead_letters.finish(&remove).await?;
            let found_more = !chosen.is_empty();
            self.report.dead_letters.extend(chosen);
            self.report.dead_letters_capped |= self.stores.dead_letters.capped();
            if self.dry_run || !found_more || !self.stores.dead_letters.more_after_removal() {
                return Ok(());
            }
        }
    }

    async fn records(&mut self, judged: &[(IdempotencyRecord, Option<WebhookEnvelope>)]) {
        let mut chosen = Vec::new();
        for (record, envelope) in judged {
            let key = key_text(&record.key);
            match envelope {
                None => self.report.unchecked_records.push(key),
                Some(e) if self.subject.concerns(e) => chosen.push(record),
                Some(e) if self.subject.named_elsewhere(e) => {
                    self.report.named_elsewhere.insert(key);
                }
                Some(_) => {}
            }
        }
        let bar = progress::bar(chosen.len() as u64, "removing records");
        let store = self.stores.records.store();
        for record in chosen {
            let key = key_text(&record.key);
            let now = OffsetDateTime::now_utc();
            let outcome = if self.dry_run {
                Ok(live_lease(record, now)
                    .map_or(Deleted::Removed, |until| Deleted::Leased { until }))
            } else {
                store.delete(&record.key, now).await
            };
            match outcome {
                Ok(Deleted::Removed) => self.report.records.push(key),
                // Expired (TTL) since the scan: nothing left to remove.
                Ok(Deleted::Absent) => {}
                Ok(Deleted::Leased { until }) => self.report.busy.push((key, until)),
                Err(source) => {
                    let error = ForgetError::Store {
                        store: self.stores.records.name(),
                        source,
                    };
                    bar.suspend(|| {
                        eprintln!("error: {key}: {}", redact_emails(&error.to_string()))
                    });
                    self.report.failed += 1;
                }
            }
            progress::advance(&bar);
        }
        bar.finish_and_clear();
    }

    async fn customers(&mut self) {
        for key in self.subject.customer_keys() {
            let outcome = if self.dry_run {
                self.stores.customers.get(&key).await.map(|s| s.is_some())
            } else {
                self.stores.customers.forget(&key).await
            };
            match outcome {
                Ok(true) => self.report.customers.push(key.storage_key()),
                Ok(false) => {}
                Err(source) => {
                    let error = ForgetError::Store {
                        store: self.stores.customers_name.clone(),
                        source,
                    };
                    eprintln!(
                        "error: {}: {}",
                        key.storage_key(),
                        redact_emails(&error.to_string())
                    );
                    self.report.failed += 1;
                }
            }
        }
    }
}

/// What stays, and why (the same words in text and JSON).
const KEPT: &str = "the seen markers of these webhooks (seen#<site>#<webhook id>: the key and an expiry, no personal data), so a later delivery of one is not applied again";
const NOT_TOUCHED: &str = "Keap (the contact is the Keap account owner's to erase), webhooks still waiting on the main queue, and table backups (they roll off within 35 days)";

fn view(report: &Report, subject: &Subject, dry_run: bool) -> serde_json::Value {
    json!({
        "dry_run": dry_run,
        "person": match subject.person() {
            Person::Email(_) => "email",
            Person::CustomerId(_) => "customer_id",
        },
        "records": report.records,
        "customers": report.customers,
        "dead_letters": report.dead_letters,
        "records_busy": report.busy.iter().map(|(key, until)| json!({
            "record": key,
            "lease_until": rfc3339(*until),
        })).collect::<Vec<_>>(),
        "records_unchecked": report.unchecked_records,
        "dead_letters_unchecked": report.unchecked_dead_letters,
        "named_elsewhere": report.named_elsewhere,
        "dead_letters_capped": report.dead_letters_capped,
        "failed": report.failed,
        "kept": KEPT,
        "not_touched": NOT_TOUCHED,
    })
}

fn counted<'a>(items: impl ExactSizeIterator<Item = &'a String>) -> String {
    let count = items.len();
    let list: Vec<&str> = items.map(String::as_str).collect();
    if count == 0 {
        "0".into()
    } else {
        format!("{count}: {}", list.join(", "))
    }
}

fn text(report: &Report, subject: &Subject, dry_run: bool) -> String {
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut lines = vec![
        format!(
            "idempotency records: {verb} {}",
            counted(report.records.iter())
        ),
        format!("identity map: {verb} {}", counted(report.customers.iter())),
        format!(
            "dead letters: {verb} {}",
            counted(report.dead_letters.iter())
        ),
        format!("kept: {KEPT}"),
        format!("not touched: {NOT_TOUCHED}"),
    ];
    if let Person::Email(_) = subject.person() {
        if subject.customer_keys().is_empty() {
            lines.push("note: no stored webhook gives this email's customer id (records expire after RECORD_TTL_DAYS); if Chargify knows the customer, `cks forget <customer id>` also removes the identity-map entry".into());
        }
    }
    if let Person::CustomerId(id) = subject.person() {
        if subject.customer_keys().is_empty() {
            lines.push(format!("note: no site found in the records or dead letters; pass --site (or CKS_SITE) to remove the identity-map entry of customer {id}"));
        }
    }
    if !report.unchecked_records.is_empty() {
        lines.push(format!(
            "note: records without a readable envelope could not be checked (they expire after RECORD_TTL_DAYS): {}",
            counted(report.unchecked_records.iter())
        ));
    }
    if !report.unchecked_dead_letters.is_empty() {
        lines.push(format!(
            "note: dead letters that are not webhook envelopes could not be checked (they expire after 14 days): {}",
            counted(report.unchecked_dead_letters.iter())
        ));
    }
    if report.dead_letters_capped {
        lines.push("note: a pass over the dead-letter queue stopped at --max messages; run again with a larger --max to read them all".into());
    }
    if !report.named_elsewhere.is_empty() {
        lines.push(format!(
            "note: other customers' webhooks name the email in another field (cc_emails, a memo); not removed, they are those customers' and expire by themselves: {}",
            counted(report.named_elsewhere.iter())
        ));
    }
    lines.join("\n")
}

pub async fn run(args: ForgetArgs) -> Result<(), ForgetError> {
    // Checked before any call: a typo should not cost a table scan.
    let person = Person::parse(&args.person)?;
    let mut stores = Stores::open(&args).await?;
    let (report, subject) = Forget {
        stores: &mut stores,
        subject: Subject::new(person, args.site.clone()),
        dry_run: args.dry_run,
        report: Report::default(),
    }
    .run()
    .await?;
    if args.json {
        println!(
            "{}",
            redact_emails(&view(&report, &subject, args.dry_run).to_string())
        );
    } else {
        println!("{}", redact_emails(&text(&report, &subject, args.dry_run)));
    }
    if report.failed > 0 {
        return Err(ForgetError::Incomplete(report.failed));
    }
    if !report.busy.is_empty() {
        return Err(ForgetError::Busy(report.busy));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_db;
    use shared::fixtures;
    use shared::idempotency::{Begin, IdempotencyKey, Lease, Received};
    use shared::identity::{CustomerKey, Locked};
    use shared::queue::{DeadLetter, RecordControl};
    use std::time::Duration;

    const MIN: Duration = Duration::from_secs(60);
    const TTL: Duration = Duration::from_secs(35 * 24 * 3600);

    fn envelope(id: &str, customer: &str, email: &str) -> WebhookEnvelope {
        let body = fixtures::derive(
            fixtures::SIGNUP_SUCCESS,
            id,
            "signup_success",
            &[
                ("payload[subscription][customer][id]", customer),
                ("payload[subscription][customer][email]", email),
            ],
        );
        fixtures::envelope(&body).expect("a webhook")
    }

    struct Local {
        _dir: tempfile::TempDir,
        db: Db,
        records: SqliteIdempotencyStore,
        customers: SqliteCustomerStore,
        queue: SqliteQueue,
        stores: Stores,
    }

    impl Local {
        fn new() -> Self {
            let (dir, db) = temp_db();
            Self {
                _dir: dir,
                db: db.clone(),
                records: SqliteIdempotencyStore::new(db.clone()),
                customers: SqliteCustomerStore::new(db.clone()),
                queue: SqliteQueue::new(db.clone()),
                stores: Stores::local(db, "local.sqlite3".into()),
            }
        }

        /// A record of `envelope`, completed (with its seen marker) unless `hold`: then a
        /// worker's live lease.
        async fn record(&self, envelope: &WebhookEnvelope, hold: bool) -> Lease {
            let now = OffsetDateTime::now_utc();
            let key = IdempotencyKey::new(&envelope.site, &envelope.webhook_id);
            let begun = self
                .records
                .begin(&key, "h", &Received::of(envelope), now, MIN, TTL)
                .await;
            let Ok(Begin::Started(lease)) = begun else {
                panic!("begin {key:?}: {begun:?}");
            };
            if !hold {
                self.records.mark_seen(&key, now, TTL).await.expect("mark");
                self.records
                    .complete(&lease, "ok", None, now, TTL)
                    .await
                    .expect("complete");
            }
            lease
        }

        async fn map_entry(&self, customer: &str) {
            let key = CustomerKey::new("acme-test", customer);
            let now = OffsetDateTime::now_utc();
            let Ok(Locked::Held(mut state)) = self.customers.lock(&key, "t", now, MIN).await else {
                panic!("lock {key:?}");
            };
            state.contact_id = Some(1);
            self.customers
                .save(&key, "t", &state, true)
                .await
                .expect("save");
        }

        async fn dead_letter(&self, envelope: &WebhookEnvelope) {
            self.queue
                .dead_letter(&DeadLetter {
                    body: envelope.to_json(),
                    group_id: envelope.message_group_id(),
                    deduplication_id: envelope.deduplication_id(),
                    reason: "Keap refused jane@example.com".into(),
                    code: "keap_permanent".into(),
                })
                .await
                .expect("dead letter");
        }

        async fn forget(&mut self, person: &str, dry_run: bool) -> Report {
            let person = Person::parse(person).expect("a person");
            let (report, _) = Forget {
                stores: &mut self.stores,
                subject: Subject::new(person, None),
                dry_run,
                report: Report::default(),
            }
            .run()
            .await
            .expect("forget runs");
            report
        }

        async fn has_record(&self, id: &str) -> bool {
            let key = IdempotencyKey::new("acme-test", id);
            self.records.get(&key).await.expect("get").is_some()
        }

        async fn has_customer(&self, id: &str) -> bool {
            let key = CustomerKey::new("acme-test", id);
            self.customers.get(&key).await.expect("get").is_some()
        }

        async fn dead_letter_ids(&self) -> Vec<String> {
            let rows = self.queue.dead_letter_bodies().await.expect("dead letters");
            rows.iter()
                .filter_map(|(_, body)| WebhookEnvelope::from_json(body).ok())
                .map(|e| e.webhook_id)
                .collect()
        }
    }

    /// The engine on the local adapters: Jane (customer 15) by email, across an email change,
    /// her dead letter without a record, a record a worker holds, a record it cannot read;
    /// Bob (16) untouched until asked for by customer id.
    #[tokio::test]
    async fn forgets_one_person_in_the_local_file_and_nobody_else() {
        let mut local = Local::new();
        local
            .record(&envelope("1", "15", "Jane%40Example.com"), false)
            .await;
        local
            .record(&envelope("2", "15", "jane.old%40example.com"), false)
            .await;
        let held = local
            .record(&envelope("3", "15", "jane%40example.com"), true)
            .await;
        local
            .dead_letter(&envelope("4", "15", "JANE%40example.com"))
            .await;
        local
            .record(&envelope("10", "16", "bob%40example.com"), false)
            .await;
        local
            .dead_letter(&envelope("11", "16", "bob%40example.com"))
            .await;
        local.map_entry("15").await;
        local.map_entry("16").await;
        local
            .db
            .write(|tx| {
                tx.execute(
                "INSERT INTO idempotency (key, site, webhook_id, status, payload_hash, steps_done,
                 attempts, expires_at_ns) VALUES ('acme-test#99', 'acme-test', '99', 'COMPLETED',
                 'h', '[]', 1, 0)",
                [],
            )
            })
            .await
            .expect("a record from before envelopes were kept");

        let dry = local.forget("jane@EXAMPLE.com", true).await;
        assert_eq!(dry.records, ["acme-test#1", "acme-test#2"]);
        assert_eq!(dry.busy.len(), 1);
        assert_eq!(dry.customers, ["acme-test#15"]);
        assert_eq!(dry.dead_letters.len(), 1);
        assert_eq!(dry.unchecked_records, ["acme-test#99"]);
        assert!(local.has_record("1").await && local.has_record("2").await);
        assert!(local.has_customer("15").await);
        assert_eq!(
            local.dead_letter_ids().await,
            ["4", "11"],
            "a dry run deletes nothing"
        );

        let done = local.forget("jane@EXAMPLE.com", false).await;
        assert_eq!(done.records, dry.records);
        assert_eq!(done.customers, dry.customers);
        assert_eq!(done.dead_letters, dry.dead_letters);
        assert_eq!(done.busy[0].0, "acme-test#3", "a worker's record is kept");
        assert_eq!(done.failed, 0);
        assert!(!local.has_record("1").await && !local.has_record("2").await);
        assert!(local.has_record("3").await);
        let seen = IdempotencyKey::new("acme-test", "1");
        assert_eq!(
            local.records.seen(&seen, OffsetDateTime::now_utc()).await,
            Ok(true),
            "the seen marker stays"
        );
        assert!(!local.has_customer("15").await);
        assert!(local.has_customer("16").await && local.has_record("10").await);
        assert_eq!(local.dead_letter_ids().await, ["11"]);
        let shown = text(
            &done,
            &Subject::new(Person::CustomerId("15".into()), None),
            false,
        );
        assert!(!shown.to_lowercase().contains("example.com"), "{shown}");

        // The worker let go: the next run removes its record, and then nothing is left.
        local
            .records
            .release(&held, "Keap 400")
            .await
            .expect("release");
        let rest = local.forget("jane@example.com", false).await;
        assert_eq!(rest.records, ["acme-test#3"]);
        assert!(rest.busy.is_empty());
        let nothing = local.forget("jane@example.com", false).await;
        assert!(nothing.records.is_empty() && nothing.customers.is_empty());
        assert!(nothing.dead_letters.is_empty() && nothing.busy.is_empty());

        // Bob by customer id, on the one site seen.
        let bob = local.forget("16", false).await;
        assert_eq!(bob.records, ["acme-test#10"]);
        assert_eq!(bob.customers, ["acme-test#16"]);
        assert_eq!(bob.dead_letters.len(), 1);
        assert!(local.dead_letter_ids().await.is_empty());
    }
}

//! `cks backfill`: syncs every existing Chargify subscription to Keap as a snapshot, with
//! bulk tag calls, a resumable cursor and a progress bar whose ETA follows Keap's quota. The
//! engine is `shared::backfill`; this module wires the ports and draws the progress.
//!
//! Stores: `--local FILE` uses the SQLite file of `cks serve` (idempotency records, identity
//! map, and a `backfill_cursors` table); otherwise the stack's DynamoDB tables
//! (`--idempotency-table`/`--customers-table`, or `IDEMPOTENCY_TABLE`/`CUSTOMERS_TABLE` as
//! the processor reads them), with the cursor as an item of the idempotency table.

use crate::keap_mode;
use crate::store::cursor::SqliteCursorStore;
use crate::store::idempotency::SqliteIdempotencyStore;
use crate::store::identity::SqliteCustomerStore;
use crate::store::{Db, DbError};
use indicatif::ProgressBar;
use shared::backfill::{
    Backfill, BackfillError, BackfillQuery, BackfillSettings, Eta, Finish, Outcome, Progress,
    StopReason, Totals,
};
use shared::chargify::api::ChargifySettings;
use shared::config::{ConfigError, Secret, Vars, CUSTOMERS_TABLE, IDEMPOTENCY_TABLE};
use shared::cursor_store::{CursorStore, DynamoDbCursorStore};
use shared::dynamodb::Table;
use shared::idempotency::{DynamoDbIdempotencyStore, IdempotencyStore};
use shared::identity::{
    CustomerStore, DynamoDbCustomerStore, DynamoDbNameLocks, InMemoryNameLocks, NameLocks,
};
use shared::keap::{Crm, Directory, InMemoryCrm};
use shared::rules::{RuleSet, RulesError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Exit code of a run that stopped at a page boundary and can be resumed.
pub const EXIT_STOPPED: u8 = 3;

/// Bound on each AWS call (Secrets Manager, DynamoDB).
const AWS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct BackfillArgs {
    /// Only these Chargify states, comma-separated (one pass each): `active,past_due`.
    /// Default: every state.
    #[arg(long, value_delimiter = ',')]
    state: Vec<String>,
    /// Only subscriptions to this Chargify product id.
    #[arg(long, value_name = "ID")]
    product: Option<i64>,
    /// Only subscriptions changed at or after this RFC 3339 time; give it in the site's time
    /// zone (or earlier): Chargify reads the filter in that zone.
    #[arg(long, value_name = "TIME")]
    updated_since: Option<String>,
    /// Continue the stored run with the same filters after its last page done.
    #[arg(long)]
    resume: bool,
    /// Plan and count the Keap calls; change nothing in Keap or in the stores.
    #[arg(long)]
    dry_run: bool,
    /// Never make more than N Keap calls in this run: stop, resumably, at the last
    /// subscription it can pay for (a page is cut short where needed).
    #[arg(long, value_name = "N")]
    max_keap_calls: Option<u64>,
    /// Use the SQLite file of `cks serve` for the records, map and cursor.
    #[arg(long, value_name = "FILE")]
    local: Option<PathBuf>,
    /// DynamoDB idempotency table (default: `IDEMPOTENCY_TABLE`, else the stack's
    /// `IdempotencyTableName` output); also holds the cursor.
    #[arg(long, value_name = "NAME")]
    idempotency_table: Option<String>,
    /// DynamoDB identity-map table (default: `CUSTOMERS_TABLE`, else the stack's
    /// `CustomersTableName` output).
    #[arg(long, value_name = "NAME")]
    customers_table: Option<String>,
    /// CloudFormation stack whose outputs name the tables, when they are not given.
    #[arg(long, env = "CKS_STACK", value_name = "NAME")]
    stack: Option<String>,
    /// Customers whose contact is written at once (the Keap pace is the real limit).
    #[arg(long, default_value_t = 4, value_name = "N")]
    concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillCliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Backfill(#[from] BackfillError),
    #[error("--updated-since `{0}` is not an RFC 3339 time (2026-01-31T00:00:00-05:00)")]
    BadTime(String),
    #[error("no Keap credentials (KEAP_API_KEY, KEAP_API_KEY_SECRET_ARN or the OAuth variables): set them, or pass --dry-run to count the calls without sending any")]
    NoKeap,
    #[error("where are the records? pass --local FILE (the SQLite file of cks serve), --stack NAME (or CKS_STACK), or the tables with --idempotency-table and --customers-table (or IDEMPOTENCY_TABLE and CUSTOMERS_TABLE)")]
    NoStores,
    #[error(transparent)]
    Stack(#[from] crate::ops::OpsError),
    #[error("--local and DynamoDB tables were both given; choose one")]
    BothStores,
}

pub async fn run(args: BackfillArgs) -> Result<ExitCode, BackfillCliError> {
    shared::telemetry::init(shared::telemetry::metrics::function::CLI);
    let updated_since = args
        .updated_since
        .as_deref()
        .map(|t| {
            OffsetDateTime::parse(t, &Rfc3339).map_err(|_| BackfillCliError::BadTime(t.into()))
        })
        .transpose()?;
    let query = BackfillQuery {
        states: args
            .state
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        product_id: args.product,
        updated_since,
    };
    let vars = Vars::from_env();
    let rules = RuleSet::from_vars(&vars)?;
    let chargify_settings = ChargifySettings::from_vars(&vars)?;
    // Only a secret ARN or the DynamoDB tables need AWS.
    let needs_aws = args.local.is_none() || matches!(chargify_settings.api_key, Secret::Arn(_));
    let aws = if needs_aws {
        shared::aws::sdk_config(AWS_TIMEOUT, None).await
    } else {
        shared::aws::offline_config()
    };
    let chargify = chargify_settings.build(&aws).await?;
    let (keap_settings, client) = keap_mode::client(&vars).await?;

    // Keap: the real client, or for a dry run an in-memory one that only counts.
    let dry_crm = InMemoryCrm::new();
    for label in rules.custom_field_labels() {
        dry_crm.add_custom_field(&label);
    }
    let (crm, meter): (&dyn Crm, &dyn shared::backfill::KeapMeter) = match (&client, args.dry_run) {
        (Some(client), false) => (client, client),
        (None, false) => return Err(BackfillCliError::NoKeap),
        (_, true) => (&dry_crm, &dry_crm),
    };
    let stores = Stores::open(&args, &vars, &aws).await?;
    let directory = Directory::new(stores.locks.clone());
    let mode = if args.dry_run {
        "DRY RUN: nothing is sent to Keap or written to the stores; the calls are counted"
            .to_owned()
    } else {
        keap_mode::describe(&keap_settings, true)
    };
    eprintln!("Keap: {mode}");
    eprintln!("Chargify: site {}", chargify_settings.site);
    eprintln!("Stores: {}", stores.describe);

    let settings = BackfillSettings {
        dry_run: args.dry_run,
        max_keap_calls: args.max_keap_calls,
        concurrency: args.concurrency.max(1),
        ..BackfillSettings::default()
    };
    // First Ctrl-C: stop after the page in hand (resumable); a second one ends at once.
    let interrupt = settings.interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping after the page in hand (Ctrl-C again to quit now)");
            interrupt.store(true, Ordering::Relaxed);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let bar = Bar::new();
    let engine = Backfill {
        site: &chargify_settings.site,
        rules: &rules,
        chargify: &chargify,
        crm,
        meter,
        directory: &directory,
        idempotency: stores.idempotency.as_ref(),
        customers: stores.customers.as_ref(),
        cursors: stores.cursors.as_ref(),
        settings,
        progress: &bar,
    };
    let outcome = engine.run(query, args.resume).await;
    bar.bar.finish_and_clear();
    let outcome = outcome?;
    println!("{}", summary(&outcome, args.dry_run));
    Ok(match outcome.finish {
        Finish::Complete => ExitCode::SUCCESS,
        Finish::Stopped(_) => ExitCode::from(EXIT_STOPPED),
    })
}

struct Stores {
    idempotency: Box<dyn IdempotencyStore>,
    customers: Box<dyn CustomerStore>,
    /// The tag-creation lock shared with the deployed processors (DynamoDB), or this
    /// process's own (SQLite: one process).
    locks: Arc<dyn NameLocks>,
    cursors: Box<dyn CursorStore>,
    describe: String,
}

impl Stores {
    async fn open(
        args: &BackfillArgs,
        vars: &Vars,
        aws: &aws_config::SdkConfig,
    ) -> Result<Self, BackfillCliError> {
        let tables = (
            args.idempotency_table
                .clone()
                .or_else(|| vars.value(IDEMPOTENCY_TABLE)),
            args.customers_table
                .clone()
                .or_else(|| vars.value(CUSTOMERS_TABLE)),
        );
        if args.local.is_some()
            && (args.idempotency_table.is_some() || args.customers_table.is_some())
        {
            return Err(BackfillCliError::BothStores);
        }
        // The processor's variables may simply be set in the shell: --local wins over them.
        match (&args.local, tables) {
            (Some(path), _) => {
                let db = Db::open(path)?;
                Ok(Self {
                    idempotency: Box::new(SqliteIdempotencyStore::new(db.clone())),
                    customers: Box::new(SqliteCustomerStore::new(db.clone())),
                    locks: Arc::new(InMemoryNameLocks::new()),
                    cursors: Box::new(SqliteCursorStore::new(db)),
                    describe: format!(
                        "{} (SQLite; the cursor in backfill_cursors)",
                        path.display()
                    ),
                })
            }
            (None, (Some(idempotency), Some(customers))) => {
                Ok(Self::dynamodb(aws, &idempotency, &customers))
            }
            (None, (idempotency, customers)) => {
                let Some(stack) = args.stack.clone() else {
                    return Err(BackfillCliError::NoStores);
                };
                let deployed = crate::ops::stack::Deployed::connect(crate::ops::StackArgs {
                    stack,
                    queue_url: None,
                    dead_letter_queue_url: None,
                    idempotency_table: None,
                })
                .await?;
                use crate::ops::stack::{CUSTOMERS_OUTPUT, TABLE_OUTPUT};
                let idempotency = deployed
                    .resource(&idempotency, TABLE_OUTPUT, "--idempotency-table")
                    .await?;
                let customers = deployed
                    .resource(&customers, CUSTOMERS_OUTPUT, "--customers-table")
                    .await?;
                Ok(Self::dynamodb(deployed.aws(), &idempotency, &customers))
            }
        }
    }

    fn dynamodb(aws: &aws_config::SdkConfig, idempotency: &str, customers: &str) -> Self {
        let table = |name: &str| Table::new(shared::dynamodb::client(aws), name);
        Self {
            idempotency: Box::new(DynamoDbIdempotencyStore::new(table(idempotency))),
            customers: Box::new(DynamoDbCustomerStore::new(table(customers))),
            locks: Arc::new(DynamoDbNameLocks::new(table(customers))),
            cursors: Box::new(DynamoDbCursorStore::new(table(idempotency))),
            describe: format!(
                "DynamoDB {idempotency} (records and the cursor), {customers} (identity map)"
            ),
        }
    }
}

/// The progress bar (the ops commands' style), on stderr and only on a terminal.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new() -> Self {
        Self {
            bar: crate::ops::progress::bar(0, "subscriptions"),
        }
    }
}

impl Progress for Bar {
    fn started(&self, total: Option<u64>, _totals: &Totals) {
        if let Some(total) = total {
            self.bar.set_length(total);
        }
    }

    fn page_done(&self, run: &Totals, eta: &Eta) {
        self.bar.set_position(run.seen);
        let eta_text = eta
            .seconds
            .map(|s| format!("ETA {}", human(Duration::from_secs_f64(s))))
            .unwrap_or_else(|| "ETA unknown".into());
        let quota = eta
            .quota_left
            .map(|q| format!(", Keap quota left {q}"))
            .unwrap_or_default();
        self.bar.set_message(format!(
            "subscriptions | {} Keap calls ({:.2}/contact){quota} | {eta_text}{}",
            run.keap_calls,
            eta.calls_per_contact,
            if eta.quota_short {
                " (quota runs out first)"
            } else {
                ""
            }
        ));
    }

    fn warn(&self, message: &str) {
        self.bar.suspend(|| eprintln!("warning: {message}"));
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The final line: counts only, never a customer's data.
fn summary(outcome: &Outcome, dry_run: bool) -> String {
    let what = match (&outcome.finish, dry_run) {
        (Finish::Complete, true) => "backfill dry run complete".to_owned(),
        (Finish::Complete, false) => "backfill complete".to_owned(),
        (Finish::Stopped(reason), _) => format!(
            "backfill stopped ({}; continue with --resume and the same filters)",
            match reason {
                StopReason::MaxKeapCalls { limit, .. } => format!("--max-keap-calls {limit} reached"),
                StopReason::QuotaLow { left, page_needs } => format!(
                    "Keap's daily quota left ({left}) is below a page's {page_needs} calls; resume after 00:00 UTC"
                ),
                StopReason::Interrupted => "interrupted".to_owned(),
            }
        ),
    };
    let line = |t: &Totals| {
        format!(
            "seen={} applied={} duplicates={} stale={} ignored={} failed={} keap_calls={} calls_per_contact={} 429s={}",
            t.seen,
            t.applied,
            t.duplicates,
            t.stale,
            t.ignored,
            t.failed,
            t.keap_calls,
            t.calls_per_contact()
                .map(|c| format!("{c:.3}"))
                .unwrap_or_else(|| "-".into()),
            t.throttled
        )
    };
    let mut text = format!(
        "{what}: {} elapsed={:.1}s",
        line(&outcome.run),
        outcome.elapsed.as_secs_f64()
    );
    if outcome.total != outcome.run {
        text.push_str(&format!(
            "\nbackfill so far (all runs): {}",
            line(&outcome.total)
        ));
    }
    text
}

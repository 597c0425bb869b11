//! `cks reconcile`: one reconciler run from the operator's machine, with the very code the
//! scheduled Lambda runs (`shared::reconcile` wired by `ReconcilerSettings::build`). Resources
//! come from the stack's outputs (or flags), the Chargify settings and, when set, the shared
//! keys from the environment (`CHARGIFY_SITE`, `CHARGIFY_API_KEY`…, `CHARGIFY_SHARED_KEYS`),
//! else the stack's `SharedKeysSecretArn`.

use super::stack::{Deployed, SHARED_KEYS_OUTPUT};
use super::{OpsError, StackArgs};
use shared::config::{
    ConfigError, ReconcilerSettings, Vars, CHARGIFY_SHARED_KEYS, CHARGIFY_SHARED_KEYS_SECRET_ARN,
    CUSTOMERS_TABLE, IDEMPOTENCY_TABLE, QUEUE_URL,
};
use shared::reconcile::cursor::parse_day;
use shared::reconcile::ReconcileError;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// The identity-map table (instead of the stack's `CustomersTableName` output).
    #[arg(long, value_name = "NAME")]
    pub customers_table: Option<String>,
    /// List failed and paused webhooks created on or after this day (YYYY-MM-DD, the site's
    /// zone) instead of the stored cursor.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub since_date: Option<String>,
    /// Walk events after this id instead of the stored cursor.
    #[arg(long, value_name = "ID")]
    pub since_event_id: Option<i64>,
    /// List and decide; send nothing, replay nothing, move no cursor.
    #[arg(long)]
    pub dry_run: bool,
    /// Send webhooks whose stored signature no key verifies to Chargify's replay.
    #[arg(long)]
    pub replay_unverified: bool,
    /// Most pages per list (failed, paused, events) in this run.
    #[arg(long, default_value_t = 50)]
    pub max_pages: u32,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileCliError {
    #[error(transparent)]
    Ops(#[from] OpsError),
    #[error("{0} (the Chargify settings come from the environment: docs/chargify-client.md)")]
    Config(#[from] ConfigError),
    #[error("--since-date `{0}` is not a day like 2026-11-27")]
    BadDate(String),
    #[error("reconcile run stopped: {0}")]
    Run(#[from] ReconcileError),
}

/// An operator's run may take its time; cursors are saved per page either way.
const RUN_LIMIT: Duration = Duration::from_secs(3600);

pub async fn run(args: ReconcileArgs) -> Result<(), ReconcileCliError> {
    let since_date = match &args.since_date {
        None => None,
        Some(text) => {
            Some(parse_day(text).ok_or_else(|| ReconcileCliError::BadDate(text.clone()))?)
        }
    };
    let deployed = Deployed::connect(args.stack.clone()).await?;
    // The stack's resources are laid over the environment; the shared keys too, unless the
    // environment names them.
    let mut vars = Vars::from_env()
        .with(QUEUE_URL, deployed.queue_url().await?)
        .with(IDEMPOTENCY_TABLE, deployed.idempotency_table().await?)
        .with(
            CUSTOMERS_TABLE,
            deployed.customers_table(&args.customers_table).await?,
        );
    if vars.value(CHARGIFY_SHARED_KEYS).is_none()
        && vars.value(CHARGIFY_SHARED_KEYS_SECRET_ARN).is_none()
    {
        vars = vars.with(
            CHARGIFY_SHARED_KEYS_SECRET_ARN,
            deployed
                .resource(&None, SHARED_KEYS_OUTPUT, CHARGIFY_SHARED_KEYS)
                .await?,
        );
    }
    let mut settings = ReconcilerSettings::from_vars(&vars)?;
    settings.run.dry_run = args.dry_run;
    settings.run.replay_unverified |= args.replay_unverified;
    settings.run.max_pages = args.max_pages.max(1);
    settings.run.since_date = since_date;
    settings.run.since_event_id = args.since_event_id;
    let reconciler = settings.build(deployed.aws()).await?;
    let report = reconciler.run(Instant::now() + RUN_LIMIT).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        return Ok(());
    }
    let verb = if report.dry_run {
        "would enqueue"
    } else {
        "enqueued"
    };
    println!(
        "failed/paused webhooks: {} listed, {verb} {}, {} already processed, {} signature failed, {} replayed by Chargify, {} unusable",
        report.webhooks_listed,
        report.webhooks_enqueued,
        report.webhooks_already_processed,
        report.webhooks_signature_failed,
        report.webhooks_replayed,
        report.webhooks_unusable
    );
    println!(
        "events: {} seen; snapshots {verb} {}, {} already applied, {} covered by recovered webhooks, {} failed",
        report.events_seen,
        report.snapshots_enqueued,
        report.snapshots_already_applied,
        report.snapshots_covered_by_webhooks,
        report.snapshots_failed
    );
    if !report.needs_attention.is_empty() {
        println!(
            "needs attention (webhook ids; see docs/operations.md, Reconcile): {:?}",
            report.needs_attention
        );
    }
    if let Some(why) = &report.stopped_early {
        println!("stopped early ({why}); run it again to go on from the saved cursors");
    }
    Ok(())
}

//! `cks`: operator commands for chargify-keap-sync. This file only parses and dispatches;
//! each command group lives in its own module (add a group as a new variant of [`Group`]
//! and a module with its own `run`).

mod backfill;
mod keap_auth;
mod keap_mode;
mod ops;
mod plan;
mod rules_check;
mod send;
mod serve;
mod store;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cks",
    version,
    about = "Operator commands for chargify-keap-sync"
)]
struct Cli {
    #[command(subcommand)]
    group: Group,
}

#[derive(Subcommand)]
enum Group {
    /// Keap: the one-time OAuth authorisation.
    #[command(subcommand)]
    Keap(keap_auth::KeapCommand),
    /// Run ingest, a durable SQLite queue and the processor in one local process.
    Serve(serve::ServeArgs),
    /// Show the Keap actions the rules produce for one webhook body.
    Plan(plan::PlanArgs),
    /// Sign a bundled sample webhook with the local key and post it.
    Send(send::SendArgs),
    /// Rules: validate the file and check it against Keap.
    #[command(subcommand)]
    Rules(rules_check::RulesCommand),
    /// A webhook's idempotency record in the deployed stack: status, steps done, errors.
    Status(ops::status::StatusArgs),
    /// Send webhooks stored in their records to the deployed queue again.
    Replay(ops::replay::ReplayArgs),
    /// The deployed dead-letter queue: list or redrive.
    #[command(subcommand)]
    Dlq(ops::dlq::DlqCommand),
    /// Remove one person's records, identity-map entries and dead letters (not Keap's contact).
    Forget(ops::forget::ForgetArgs),
    /// Sync every existing Chargify subscription to Keap (resumable, bulk tags).
    Backfill(backfill::BackfillArgs),
    /// Recover webhooks Chargify failed or paused, and events whose state never arrived.
    Reconcile(ops::reconcile::ReconcileArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.group {
        Group::Keap(command) => keap_auth::run(command).await.map_err(|e| e.to_string()),
        Group::Serve(args) => serve::run(args).await.map_err(|e| e.to_string()),
        Group::Plan(args) => plan::run(args).map_err(|e| e.to_string()),
        Group::Send(args) => send::run(args).await.map_err(|e| e.to_string()),
        Group::Rules(command) => rules_check::run(command).await.map_err(|e| e.to_string()),
        Group::Status(args) => ops::status::run(args).await.map_err(|e| e.to_string()),
        Group::Replay(args) => ops::replay::run(args).await.map_err(|e| e.to_string()),
        Group::Dlq(command) => ops::dlq::run(command).await.map_err(|e| e.to_string()),
        // Its errors may quote a store's answer: no email reaches the terminal unredacted.
        Group::Forget(args) => ops::forget::run(args)
            .await
            .map_err(|e| shared::telemetry::redact_emails(&e.to_string())),
        Group::Backfill(args) => match backfill::run(args).await {
            Ok(code) => return code,
            Err(e) => Err(e.to_string()),
        },
        Group::Reconcile(args) => ops::reconcile::run(args).await.map_err(|e| e.to_string()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

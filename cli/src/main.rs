//! `cks`: operator commands for chargify-keap-sync. This file only parses and dispatches;
//! each command group lives in its own module (add a group as a new variant of [`Group`]
//! and a module with its own `run`).

mod keap_auth;

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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.group {
        Group::Keap(command) => keap_auth::run(command).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

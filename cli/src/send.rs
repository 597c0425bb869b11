//! `cks send [<sample>]`: signs a bundled Chargify body with the local shared key, as
//! Chargify does, and posts it to a running `cks serve` (or any ingest URL); with no sample
//! named, the whole story of one customer in order.

use crate::serve::{DEMO_SHARED_KEY, WEBHOOK_PATH};
use shared::chargify::signature::{sign, SIGNATURE_HEADER};
use shared::fixtures;
use std::time::Duration;

/// Bound on each POST.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct SendArgs {
    /// A sample name (see `cks send --list`); none sends the whole story in order.
    sample: Option<String>,
    /// Where to post.
    #[arg(long, default_value_t = format!("http://127.0.0.1:3000{WEBHOOK_PATH}"))]
    url: String,
    /// The shared key to sign with (default: CHARGIFY_SHARED_KEYS when it is one plain key,
    /// else the demo key).
    #[arg(long)]
    key: Option<String>,
    /// List the samples and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no sample called {0:?}; `cks send --list` shows them")]
    UnknownSample(String),
    #[error("cannot post to {url}: {source}; is `cks serve` running there?")]
    Post { url: String, source: reqwest::Error },
    #[error("{refused} of {sent} webhooks were not accepted (answer other than 200)")]
    Refused { refused: usize, sent: usize },
}

pub async fn run(args: SendArgs) -> Result<(), SendError> {
    if args.list {
        for (name, _) in fixtures::samples() {
            println!("{name}");
        }
        return Ok(());
    }
    let bodies = match &args.sample {
        Some(name) => vec![(
            name.clone(),
            fixtures::sample(name).ok_or_else(|| SendError::UnknownSample(name.clone()))?,
        )],
        None => fixtures::story()
            .into_iter()
            .map(|(name, body)| (name.to_owned(), body))
            .collect(),
    };
    let key = args.key.unwrap_or_else(default_key);
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|source| SendError::Post {
            url: args.url.clone(),
            source,
        })?;
    let mut refused = 0;
    for (name, body) in &bodies {
        let response = client
            .post(&args.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header(SIGNATURE_HEADER, sign(&key, body.as_bytes()))
            .body(body.clone())
            .send()
            .await
            .map_err(|source| SendError::Post {
                url: args.url.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        let answer = response.text().await.unwrap_or_default();
        println!("{name}: {status} {answer}");
        if status != 200 {
            refused += 1;
        }
    }
    if refused > 0 {
        return Err(SendError::Refused {
            refused,
            sent: bodies.len(),
        });
    }
    Ok(())
}

/// The server's key when it is a single plain key (no `site=` binding, no list), else the
/// demo key the server uses by default.
fn default_key() -> String {
    let vars = shared::config::Vars::from_env();
    match vars.text(shared::config::CHARGIFY_SHARED_KEYS) {
        Some(spec) if !spec.contains([',', '=', '{', '\n']) => spec.trim().to_owned(),
        _ => DEMO_SHARED_KEY.to_owned(),
    }
}

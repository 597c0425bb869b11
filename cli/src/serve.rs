//! `cks serve`: the whole pipeline in one process with no AWS account. Chargify's POST goes
//! through the same [`IngestService`] as the ingest Lambda (same checks, same answers) into
//! the SQLite queue; a dispatcher receives from it and hands each message group (one
//! customer) to one of `--workers` workers, which runs the same [`process_batch`] as the
//! processor Lambda, with the same rules, against Keap or a dry-run stand-in. Groups run in
//! parallel and each group in order, as the Lambda's concurrent invocations do with a FIFO
//! queue; the workers share one Keap client, so one rate limit, and one customer's slow
//! answers or throttles hold only that customer's worker.
//!
//! What a crash keeps: a webhook answered 200 is committed to SQLite first; a record being
//! processed when the process dies stays hidden until its visibility timeout expires and is
//! then received again, and the idempotency records (in the same file) stop a second
//! application of what had already been done.

use crate::keap_mode;
use crate::store::idempotency::SqliteIdempotencyStore;
use crate::store::identity::SqliteCustomerStore;
use crate::store::queue::SqliteQueue;
use crate::store::{Db, DbError};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use shared::chargify::signature::KeySetError;
use shared::chargify::signature::SIGNATURE_QUERY_PARAM;
use shared::chargify::SharedKeySet;
use shared::config::{ConfigError, Vars, CHARGIFY_SHARED_KEYS};
use shared::envelope::{WebhookEnvelope, MAX_BODY_BYTES};
use shared::identity::InMemoryNameLocks;
use shared::ingest::{InboundRequest, IngestReply, IngestService, Outcome};
use shared::keap::{Crm, Directory, InMemoryCrm};
use shared::processor::{process_batch, BatchRecord, BatchResult, Limits, Processor};
use shared::queue::RecordControl;
use shared::rules::{RuleSet, RulesError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The path Chargify is pointed at.
pub const WEBHOOK_PATH: &str = "/webhooks/chargify";

/// The demo key used when `CHARGIFY_SHARED_KEYS` is not set.
pub use shared::fixtures::DEMO_SHARED_KEY;

/// How long a received record stays hidden; a record whose worker died comes back after it.
/// The batch's deadline (and so the idempotency lease) is the same time, as in Lambda where
/// the function timeout is below the queue's visibility timeout.
pub const VISIBILITY_TIMEOUT_VAR: &str = "CKS_VISIBILITY_TIMEOUT_SECS";
const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);

/// Test knob, unset in normal use: `after_receive:<ms>` or `before_settle:<ms>` makes the
/// worker wait there, so a test can kill the process with records in flight (before any
/// Keap call, or after the Keap calls and the idempotency record but before the queue
/// forgets the message).
pub const TEST_PAUSE_VAR: &str = "CKS_TEST_PAUSE";

/// Sleep between polls of an empty queue.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Records per batch, as the SQS event source mapping's batch size: here the most of one
/// group a worker takes at once.
const BATCH_SIZE: usize = 10;

/// Workers when `--workers` is not given.
const DEFAULT_WORKERS: u16 = 4;

/// Bodies are read up to this size and handed to ingest, which refuses anything above
/// [`MAX_BODY_BYTES`] with its own 413; beyond it the server answers the same 413 without
/// reading on, so a huge upload cannot exhaust memory.
const READ_LIMIT: usize = 4 * 1024 * 1024;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (keep it on loopback unless a tunnel fronts it).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The SQLite file holding the queue, the idempotency records and the identity map.
    #[arg(long, default_value = ".cks/local.sqlite3")]
    db: PathBuf,
    /// Customers (message groups) processed at once, each in order; all share one Keap
    /// client and so one rate limit.
    #[arg(long, default_value_t = DEFAULT_WORKERS, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{CHARGIFY_SHARED_KEYS}: {0}")]
    Keys(#[from] KeySetError),
    #[error("rules: {0}")]
    Rules(#[from] RulesError),
    #[error("Keap settings: {0}")]
    Keap(#[from] ConfigError),
    #[error("{name} must be a whole number of seconds from 11 to 43200 (records need more than 10 s each), not {value:?}")]
    Visibility { name: &'static str, value: String },
    #[error("cannot listen on {addr}: {source}; is another server using it? choose another with --listen")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server stopped: {0}")]
    Server(std::io::Error),
    #[error("refusing to listen on {addr} with the demo key {DEMO_SHARED_KEY:?}: anyone who reads this repository could post webhooks to it; set {CHARGIFY_SHARED_KEYS} to your site's Site Shared Key, or listen on 127.0.0.1")]
    DemoKeyOffLoopback { addr: SocketAddr },
}

/// The demo key is published in this repository: a server holding it may only be reached
/// from this machine. Checked on the parsed keys (by fingerprint), so setting the demo key
/// explicitly is refused too.
fn refuse_demo_key_off_loopback(keys: &SharedKeySet, listen: SocketAddr) -> Result<(), ServeError> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    let demo = SharedKeySet::parse(DEMO_SHARED_KEY)?;
    let demo_fingerprint = demo.keys().first().map(|k| k.fingerprint().to_owned());
    let holds_demo = keys
        .keys()
        .iter()
        .any(|k| Some(k.fingerprint()) == demo_fingerprint.as_deref());
    if holds_demo {
        return Err(ServeError::DemoKeyOffLoopback { addr: listen });
    }
    Ok(())
}

struct Timing {
    visibility: Duration,
    pause_after_receive: Duration,
    pause_before_settle: Duration,
}

impl Timing {
    fn from_vars(vars: &Vars) -> Result<Self, ServeError> {
        // Set but blank is refused too: a blank timeout is a mistake, not a default.
        let visibility = match vars.raw(VISIBILITY_TIMEOUT_VAR) {
            Some(value) => match value.trim().parse::<u64>() {
                Ok(secs @ 11..=43_200) => Duration::from_secs(secs),
                _ => {
                    return Err(ServeError::Visibility {
                        name: VISIBILITY_TIMEOUT_VAR,
                        value: value.to_owned(),
                    })
                }
            },
            None => DEFAULT_VISIBILITY_TIMEOUT,
        };
        let pause = vars.raw(TEST_PAUSE_VAR).unwrap_or_default();
        let pause_at = |point: &str| {
            pause
                .strip_prefix(point)
                .and_then(|rest| rest.strip_prefix(':'))
                .and_then(|ms| ms.trim().parse().ok())
                .map(Duration::from_millis)
                .unwrap_or_default()
        };
        Ok(Self {
            visibility,
            pause_after_receive: pause_at("after_receive"),
            pause_before_settle: pause_at("before_settle"),
        })
    }
}

pub async fn run(args: ServeArgs) -> Result<(), ServeError> {
    shared::telemetry::init(shared::telemetry::metrics::function::CLI);
    let vars = Vars::from_env();
    let timing = Timing::from_vars(&vars)?;
    let key_spec = match vars.text(CHARGIFY_SHARED_KEYS) {
        Some(spec) => spec.to_owned(),
        None => {
            eprintln!("WARNING: {CHARGIFY_SHARED_KEYS} is not set; using the demo key {DEMO_SHARED_KEY:?}. Anyone who knows it can post webhooks here: set your site's key before exposing this server.");
            DEMO_SHARED_KEY.to_owned()
        }
    };
    let keys = SharedKeySet::parse(&key_spec)?;
    refuse_demo_key_off_loopback(&keys, args.listen)?;
    let rules = Arc::new(RuleSet::from_vars(&vars)?);
    let (keap_settings, client) = keap_mode::client(&vars).await?;
    eprintln!(
        "Keap: {}",
        keap_mode::describe(&keap_settings, client.is_some())
    );
    let (crm, dry_run): (Arc<dyn Crm>, Option<Arc<InMemoryCrm>>) = match client {
        Some(client) => (Arc::new(client), None),
        None => {
            let crm = Arc::new(InMemoryCrm::dry_run(&rules.custom_field_labels()));
            (crm.clone(), Some(crm))
        }
    };
    let db = Db::open(&args.db)?;
    let queue = SqliteQueue::new(db.clone());
    let processor = Arc::new(Processor {
        rules,
        crm,
        // One process: the directory's own lock is enough for creating a tag once.
        directory: Arc::new(Directory::new(Arc::new(InMemoryNameLocks::new()))),
        idempotency: Arc::new(SqliteIdempotencyStore::new(db.clone())),
        customers: Arc::new(SqliteCustomerStore::new(db)),
        settings: Limits::default(),
    });

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Server)?;
    eprintln!(
        "Store: {} (queue, dead letters, idempotency records, identity map)",
        args.db.display()
    );
    // After a restart this says what is still to do and what was given up on.
    match (queue.depth().await, queue.dead_letters().await) {
        (Ok(depth), Ok(letters)) => {
            eprintln!(
                "Queue: {depth} waiting or in flight, {} dead letters",
                letters.len()
            );
            for letter in letters {
                eprintln!(
                    "  dead letter {} ({}): {} [{}]",
                    letter.deduplication_id, letter.group_id, letter.reason, letter.code
                );
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot read the local queue's state")
        }
    }
    eprintln!("Workers: {} (customers processed at once)", args.workers);
    eprintln!("Listening: POST http://{addr}{WEBHOOK_PATH}");

    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(dispatch(
        Arc::new(Worker {
            queue: queue.clone(),
            control: Arc::new(queue.clone()),
            processor,
            dry_run,
            calls_shown: std::sync::Mutex::new(0),
            timing,
        }),
        usize::from(args.workers),
        stop_rx.clone(),
    ));
    let app = axum::Router::new()
        .route(WEBHOOK_PATH, axum::routing::any(webhook))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(Arc::new(IngestService::new(keys, queue)));
    let mut http_stop = stop_rx;
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|stop| *stop).await;
    });
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("Stopping: finishing the batch in hand (a record cut short is received again after restart)");
        let _ = stop_tx.send(true);
    });
    let served = server.await;
    if let Err(e) = worker.await {
        tracing::error!(error = %e, "worker loop ended abnormally");
    }
    served.map_err(ServeError::Server)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `POST /webhooks/chargify`: the ingest Lambda's handler over axum.
async fn webhook(
    State(service): State<Arc<IngestService<SqliteQueue>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let reply = match axum::body::to_bytes(body, READ_LIMIT).await {
        Ok(bytes) => {
            let query = query_signatures(&uri);
            service
                .handle(InboundRequest {
                    method: &method,
                    headers: &headers,
                    query_signatures: query.iter().map(String::as_str).collect(),
                    body: &bytes,
                })
                .await
        }
        Err(_) => {
            let reply = IngestReply {
                outcome: Outcome::TooLarge {
                    bytes: declared.unwrap_or(READ_LIMIT + 1),
                },
                webhook_id: None,
                event: None,
            };
            tracing::info!(
                outcome = reply.outcome.code(),
                status = reply.status(),
                limit = MAX_BODY_BYTES,
                "webhook refused unread"
            );
            reply
        }
    };
    let mut response = Response::builder()
        .status(StatusCode::from_u16(reply.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (name, value) in reply.headers() {
        response = response.header(name, value);
    }
    response
        .body(Body::from(reply.body()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Values of the `signature_hmac_sha_256` query parameter, percent-decoded.
fn query_signatures(uri: &Uri) -> Vec<String> {
    let Some(query) = uri.query() else {
        return Vec::new();
    };
    let Ok(url) = reqwest::Url::parse(&format!("http://local/?{query}")) else {
        return Vec::new();
    };
    url.query_pairs()
        .filter(|(k, _)| k == SIGNATURE_QUERY_PARAM)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// What every worker shares: the queue, one processor (so one Keap client and one rate
/// limit) and the dry run's call log.
struct Worker {
    queue: SqliteQueue,
    control: Arc<dyn RecordControl>,
    processor: Arc<Processor>,
    dry_run: Option<Arc<InMemoryCrm>>,
    /// Dry-run calls already printed.
    calls_shown: std::sync::Mutex<usize>,
    timing: Timing,
}

/// Polls the queue and hands each group's run of records to a worker, at most `workers` at
/// once, until stopped; then waits for the runs in hand. A group is received only while a
/// worker is free for it, so its records' visibility timeout runs while they are worked on,
/// not while they wait for a worker.
async fn dispatch(worker: Arc<Worker>, workers: usize, mut stop: watch::Receiver<bool>) {
    let mut running = tokio::task::JoinSet::new();
    while !*stop.borrow() {
        while let Some(done) = running.try_join_next() {
            log_worker_end(done);
        }
        let free = workers.saturating_sub(running.len());
        if free == 0 {
            tokio::select! {
                _ = stop.changed() => {}
                Some(done) = running.join_next() => log_worker_end(done),
            }
            continue;
        }
        let runs = match worker
            .queue
            .receive(free, BATCH_SIZE, worker.timing.visibility)
            .await
        {
            Ok(runs) => runs,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the local queue; retrying");
                Vec::new()
            }
        };
        if runs.is_empty() {
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                Some(done) = running.join_next(), if !running.is_empty() => log_worker_end(done),
            }
            continue;
        }
        for records in runs {
            running.spawn(Arc::clone(&worker).run(records));
        }
    }
    while let Some(done) = running.join_next().await {
        log_worker_end(done);
    }
}

fn log_worker_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        // A record's panic is caught inside process_batch; this is the worker's own.
        tracing::error!(error = %e, "a worker ended abnormally; its records come back after the visibility timeout");
    }
}

impl Worker {
    /// One group's run of records, in order, then settled.
    async fn run(self: Arc<Self>, records: Vec<BatchRecord>) {
        let ids: Vec<&str> = records
            .iter()
            .filter_map(|r| r.message_id.as_deref())
            .collect();
        tracing::info!(records = records.len(), message_ids = ?ids, "batch received");
        if !self.timing.pause_after_receive.is_zero() {
            tokio::time::sleep(self.timing.pause_after_receive).await;
        }
        let deadline = Instant::now() + self.timing.visibility;
        let result = process_batch(
            Arc::clone(&self.processor),
            Arc::clone(&self.control),
            records.clone(),
            deadline,
        )
        .await;
        // As the processor Lambda does per invocation: the EMF lines go to stdout with the
        // logs, and the recorder never holds more than a batch's histogram values (it keeps
        // at most 100 and complains past that).
        shared::telemetry::flush_metrics();
        if let Some(crm) = &self.dry_run {
            let mut shown = self.calls_shown.lock().unwrap_or_else(|p| p.into_inner());
            *shown = show_dry_run_calls(crm, *shown);
        }
        show_outcomes(&records, &result);
        if !self.timing.pause_before_settle.is_zero() {
            tracing::info!("pausing before settling the batch (test knob)");
            tokio::time::sleep(self.timing.pause_before_settle).await;
        }
        if let Err(e) = self.queue.settle(&records, &result.failed).await {
            // Unsettled records come back after the visibility timeout; idempotency makes
            // their second run a no-op.
            tracing::error!(error = %e, "cannot settle the batch in the local queue");
        }
    }
}

/// Prints the Keap calls a dry run made since `from`; returns the new count.
fn show_dry_run_calls(crm: &InMemoryCrm, from: usize) -> usize {
    let state = crm.state();
    for call in state.calls.iter().skip(from) {
        eprintln!("  would call Keap: {} {}", call.operation, call.detail);
    }
    state.calls.len()
}

/// One line per record: webhook id, event, outcome (ids and event keys only: no personal data).
fn show_outcomes(records: &[BatchRecord], result: &BatchResult) {
    for (record, outcome) in records.iter().zip(&result.outcomes) {
        let (id, event) = record
            .body
            .as_deref()
            .and_then(|b| WebhookEnvelope::from_json(b).ok())
            .map(|e| (e.webhook_id, e.event))
            .unwrap_or_else(|| ("?".into(), "?".into()));
        eprintln!("processed webhook {id} {event}: {outcome}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_query_signatures_only() {
        let uri: Uri =
            "/webhooks/chargify?a=1&signature_hmac_sha_256=ab%63d&signature_hmac_sha_256=ef"
                .parse()
                .unwrap();
        assert_eq!(query_signatures(&uri), ["abcd", "ef"]);
        assert!(query_signatures(&"/webhooks/chargify".parse().unwrap()).is_empty());
    }

    #[test]
    fn the_demo_key_is_refused_off_loopback_only() {
        let any: SocketAddr = "0.0.0.0:3000".parse().expect("address");
        let lan: SocketAddr = "192.168.1.20:3000".parse().expect("address");
        let loopback: SocketAddr = "127.0.0.1:3000".parse().expect("address");
        let v6_loopback: SocketAddr = "[::1]:3000".parse().expect("address");
        let keys = |spec: &str| SharedKeySet::parse(spec).expect("keys");
        let demo = keys(DEMO_SHARED_KEY);
        for addr in [any, lan] {
            assert!(matches!(
                refuse_demo_key_off_loopback(&demo, addr),
                Err(ServeError::DemoKeyOffLoopback { .. })
            ));
            // Listed beside a real key, it still opens the server to anyone.
            let both = keys(&format!("site-key,{DEMO_SHARED_KEY}"));
            assert!(refuse_demo_key_off_loopback(&both, addr).is_err());
            assert!(refuse_demo_key_off_loopback(&keys("site-key"), addr).is_ok());
        }
        for addr in [loopback, v6_loopback] {
            assert!(refuse_demo_key_off_loopback(&demo, addr).is_ok());
        }
        let message = ServeError::DemoKeyOffLoopback { addr: any }.to_string();
        assert!(message.contains(CHARGIFY_SHARED_KEYS), "{message}");
    }
}

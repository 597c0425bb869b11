//! Ingest CPU work per webhook: verify the signature, parse the form, build the FIFO message,
//! for the real 7.7 KB `payment_success` body from the Maxio spec.
//!
//! `cargo bench -p shared --bench ingest` runs criterion, then times the same work in a plain
//! loop next to a Python standard-library baseline (`ingest_baseline.py`) measured in the same
//! run, and prints both, their ratio, and the size of the release arm64 `bootstrap` if one was
//! built (`cargo lambda build --release --arm64 --bin ingest`).
//! Targets: at most 20 µs per webhook, at least 25× the baseline, a bootstrap of at most 6 MB.

use criterion::Criterion;
use http::{HeaderMap, HeaderValue, Method};
use shared::chargify::signature::{sign, SIGNATURE_HEADER};
use shared::chargify::{SharedKeySet, SignatureCandidate, SignatureSource, Webhook};
use shared::envelope::WebhookEnvelope;
use shared::fixtures::PAYMENT_SUCCESS;
use shared::ingest::{InboundRequest, IngestService, Prepared};
use shared::queue::InMemoryQueue;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str = "bench-shared-key";

fn service() -> IngestService<InMemoryQueue> {
    let keys = SharedKeySet::parse(KEY).unwrap_or_else(|e| panic!("keys: {e}"));
    IngestService::new(keys, InMemoryQueue::new())
}

fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let sig = sign(KEY, PAYMENT_SUCCESS.as_bytes());
    headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&sig).unwrap_or_else(|e| panic!("header: {e}")),
    );
    headers
}

fn prepare_once(service: &IngestService<InMemoryQueue>, headers: &HeaderMap) -> usize {
    let request = InboundRequest {
        method: &Method::POST,
        headers,
        query_signatures: Vec::new(),
        body: black_box(PAYMENT_SUCCESS.as_bytes()),
    };
    match service.prepare(&request) {
        Prepared::Send { message, .. } => message.body.len(),
        Prepared::Reply(reply) => panic!("benchmark body refused: {}", reply.body()),
    }
}

/// Best mean over 5 runs of `n` iterations, like Python's `min(timeit.repeat(...))`.
fn best_ns_per_iter(n: u32, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .fold(f64::INFINITY, f64::min)
}

fn python_ns_per_webhook(body_file: &Path) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ingest_baseline.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(body_file)
        .arg(KEY)
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "baseline failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn bootstrap_sizes() -> Vec<(PathBuf, u64)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [
        "target/lambda/ingest/bootstrap",
        ".aws-sam/build/IngestFunction/bootstrap",
    ]
    .iter()
    .map(|p| root.join(p))
    .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m.len())))
    .collect()
}

fn main() {
    let service = service();
    let headers = headers();

    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    criterion.bench_function("ingest/prepare/payment_success_7.7KB", |b| {
        b.iter(|| prepare_once(&service, &headers))
    });
    // The stages, to see where the time goes.
    let keys = SharedKeySet::parse(KEY).unwrap_or_else(|e| panic!("keys: {e}"));
    let sig = sign(KEY, PAYMENT_SUCCESS.as_bytes());
    let candidate = [SignatureCandidate {
        source: SignatureSource::Header,
        value: &sig,
    }];
    criterion.bench_function("ingest/stage/verify_hmac", |b| {
        b.iter(|| {
            keys.verify(black_box(PAYMENT_SUCCESS.as_bytes()), &candidate, None)
                .is_ok()
        })
    });
    // Reference only: the same HMAC in ring's assembly (ring is already linked for TLS).
    // On x86_64 without SHA extensions, sha2's portable code is about half its speed; on
    // Graviton (arm64) both use the CPU's SHA-256 instructions.
    let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    let sig_bytes = hex::decode(&sig).unwrap_or_else(|e| panic!("hex: {e}"));
    criterion.bench_function("ingest/reference/verify_hmac_ring", |b| {
        b.iter(|| {
            ring::hmac::verify(&ring_key, black_box(PAYMENT_SUCCESS.as_bytes()), &sig_bytes).is_ok()
        })
    });
    criterion.bench_function("ingest/stage/parse_webhook", |b| {
        b.iter(|| Webhook::parse(black_box(PAYMENT_SUCCESS.as_bytes())).map(|w| w.id.len()))
    });
    let webhook =
        Webhook::parse(PAYMENT_SUCCESS.as_bytes()).unwrap_or_else(|e| panic!("parse: {e}"));
    criterion.bench_function("ingest/stage/envelope_json", |b| {
        b.iter(|| {
            WebhookEnvelope::new(
                &webhook,
                PAYMENT_SUCCESS.to_owned(),
                &keys.keys()[0],
                SignatureSource::Header,
                time::OffsetDateTime::now_utc(),
            )
            .to_json()
            .len()
        })
    });
    criterion.final_summary();

    let rust_ns = best_ns_per_iter(20_000, || {
        black_box(prepare_once(&service, &headers));
    });
    let body_file = std::env::temp_dir().join("chargify-keap-sync-bench-body.txt");
    let python_ns = std::fs::write(&body_file, PAYMENT_SUCCESS)
        .ok()
        .and_then(|()| python_ns_per_webhook(&body_file));

    println!();
    println!(
        "ingest per webhook ({} byte payment_success body)",
        PAYMENT_SUCCESS.len()
    );
    println!(
        "  rust   (verify + parse + envelope): {:>9.2} µs   target <= 20 µs",
        rust_ns / 1000.0
    );
    match python_ns {
        Some(py) => {
            println!(
                "  python (hmac + parse_qsl + json):    {:>9.2} µs",
                py / 1000.0
            );
            println!(
                "  ratio python / rust:                 {:>9.1} x   target >= 25 x",
                py / rust_ns
            );
        }
        None => println!("  python baseline: not run (python3 missing or failed)"),
    }
    let sizes = bootstrap_sizes();
    if sizes.is_empty() {
        println!("  bootstrap: none built; run `cargo lambda build --release --arm64 --bin ingest` first");
    }
    for (path, bytes) in sizes {
        println!(
            "  bootstrap {}: {:.2} MB ({} bytes)   target <= 6 MB",
            path.display(),
            bytes as f64 / 1_000_000.0,
            bytes
        );
    }
}

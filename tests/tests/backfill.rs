//! `cks backfill` end to end: 10,000 subscriptions in the Chargify stand-in synced by the real
//! binary into the Keap stand-in (strict contract, spike arrest enforced above the client's
//! pace, a service key's 30,000-call daily quota in its headers), with the SQLite stores of
//! `--local`. The run is stopped by `--max-keap-calls` and resumed; the Keap calls per
//! contact are printed and must stay at or under 1.2, with no 429 and no contract violation,
//! and the final Keap state must hold every contact once with its right tags, each tag
//! applied to each contact exactly once. A third run with a state filter finds only
//! duplicates and makes no Keap call. Needs no moto. Every wait is bounded.

use integration_tests::backfill_world::{self, customer_id, state_of, state_tag, PACE};
use integration_tests::chargify_standin::ChargifyStandIn;
use integration_tests::cks_binary;
use integration_tests::keap_standin::KeapStandIn;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const SUBSCRIPTIONS: i64 = 10_000;
const STOP_AFTER_CALLS: u64 = 4_000;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    /// `key=value` of the first summary line (this run's counts).
    fn count(&self, key: &str) -> f64 {
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with("backfill "))
            .unwrap_or_else(|| panic!("no summary line: {}\n{}", self.stdout, self.stderr));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.trim_end_matches('s').parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    }
}

async fn backfill(db: &Path, chargify: &ChargifyStandIn, keap: &KeapStandIn, args: &[&str]) -> Run {
    let binary = tokio::task::spawn_blocking(cks_binary)
        .await
        .expect("cks builds");
    let started = Instant::now();
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("backfill")
        .arg("--local")
        .arg(db)
        .args(args)
        .kill_on_drop(true)
        .env("CHARGIFY_SITE", "acme")
        .env("CHARGIFY_API_KEY", "standin-api-key")
        .env("CHARGIFY_BASE_URL", chargify.base_url())
        .env("KEAP_API_KEY", "sak-backfill")
        .env("KEAP_BASE_URL", keap.base_url())
        .env("KEAP_REQUESTS_PER_SECOND", PACE.to_string())
        .env("RUST_LOG", "warn")
        .env_remove("CHARGIFY_API_KEY_SECRET_ARN")
        .env_remove("CHARGIFY_REGION")
        .env_remove("KEAP_API_KEY_SECRET_ARN")
        .env_remove("KEAP_CLIENT_ID")
        .env_remove("KEAP_OAUTH_CLIENT_SECRET_ARN")
        .env_remove("RULES_TOML")
        .env_remove("IDEMPOTENCY_TABLE")
        .env_remove("CUSTOMERS_TABLE");
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .expect("cks backfill finishes within 4 minutes")
        .expect("cks runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscriptions_cost_at_most_1_2_keap_calls_each_and_resume_after_a_stop() {
    let chargify = backfill_world::chargify(SUBSCRIPTIONS, |_| None).await;
    let keap = backfill_world::keap().await;
    let dir = std::env::temp_dir().join(format!("cks-backfill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("local.sqlite3");

    // 1. Stopped by the call limit, at a page boundary, resumably (exit 3).
    let first = backfill(
        &db,
        &chargify,
        &keap,
        &["--max-keap-calls", &STOP_AFTER_CALLS.to_string()],
    )
    .await;
    assert_eq!(first.code, Some(3), "{}\n{}", first.stdout, first.stderr);
    assert!(
        first.stdout.contains("--max-keap-calls 4000 reached"),
        "{}",
        first.stdout
    );
    let first_calls = first.count("keap_calls");
    assert!(
        first_calls <= STOP_AFTER_CALLS as f64,
        "{first_calls} calls"
    );
    let first_applied = first.count("applied");
    assert!(first_applied >= 1000.0 && first_applied < SUBSCRIPTIONS as f64);

    // 2. Resumed: the rest, nothing twice.
    let second = backfill(&db, &chargify, &keap, &["--resume"]).await;
    assert_eq!(second.code, Some(0), "{}\n{}", second.stdout, second.stderr);
    assert_eq!(
        second.count("applied") + first_applied,
        SUBSCRIPTIONS as f64
    );
    assert_eq!(second.count("duplicates"), 0.0, "the resume redid no page");
    assert_eq!(second.count("failed"), 0.0);

    let violations = keap.violations();
    assert_eq!(
        keap.noop_calls(),
        Vec::<String>::new(),
        "a Keap call that changed nothing"
    );
    let (total_calls, throttled) = {
        let s = keap.state();
        (s.calls.len(), s.throttled)
    };
    let per_contact = total_calls as f64 / SUBSCRIPTIONS as f64;
    println!(
        "backfill of {SUBSCRIPTIONS} subscriptions: {total_calls} Keap calls ({per_contact:.3} per contact), {throttled} 429s; run 1 {:.1} s ({} calls, stopped), run 2 {:.1} s ({} calls)",
        first.took.as_secs_f64(),
        first_calls,
        second.took.as_secs_f64(),
        second.count("keap_calls"),
    );
    println!(
        "{}",
        first
            .stdout
            .lines()
            .find(|l| l.starts_with("backfill "))
            .unwrap_or("")
    );
    println!(
        "{}",
        second
            .stdout
            .lines()
            .filter(|l| l.starts_with("backfill "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        per_contact <= 1.2,
        "{per_contact:.3} Keap calls per contact"
    );
    assert_eq!(
        first_calls + second.count("keap_calls"),
        total_calls as f64,
        "the summary counts every call Keap saw"
    );
    assert_eq!(throttled, 0, "no 429");
    assert_eq!(second.count("429s"), 0.0);
    assert!(
        violations.is_empty(),
        "{:?}",
        &violations[..violations.len().min(3)]
    );

    // Every contact once, with its state tag and the plan tag; each tag applied to each
    // contact once (a bulk call per tag, never a per-contact one).
    {
        let s = keap.state();
        let tag_names: BTreeMap<i64, String> = s
            .tags
            .iter()
            .map(|(id, t)| (*id, t["name"].as_str().unwrap_or_default().to_owned()))
            .collect();
        let mut by_email: BTreeMap<String, i64> = BTreeMap::new();
        for (id, contact) in &s.contacts {
            let email = contact["email_addresses"][0]["email"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                by_email.insert(email, *id).is_none(),
                "one contact per email"
            );
        }
        assert_eq!(by_email.len(), SUBSCRIPTIONS as usize);
        for i in 0..SUBSCRIPTIONS {
            let id = by_email[&format!("customer{}@example.com", customer_id(i))];
            let names: BTreeSet<&str> = s
                .contact_tags
                .get(&id)
                .into_iter()
                .flatten()
                .map(|t| tag_names[t].as_str())
                .collect();
            assert_eq!(
                names,
                BTreeSet::from([state_tag(state_of(i)), "Plan: basic"]),
                "customer {i}"
            );
        }
        let mut applied: BTreeMap<(String, i64), u32> = BTreeMap::new();
        for call in &s.calls {
            if call.method == "POST" && call.path.starts_with("/v1/contacts/") {
                panic!("a per-contact tag call: {}", call.path);
            }
            if call.method == "POST" && call.path.starts_with("/v1/tags/") {
                let tag = call.path.split('/').nth(3).unwrap_or_default().to_owned();
                for contact in call
                    .body
                    .as_ref()
                    .map(|b| &b["ids"])
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    *applied
                        .entry((tag.clone(), contact.as_i64().unwrap_or_default()))
                        .or_default() += 1;
                }
            }
        }
        assert_eq!(applied.len(), 2 * SUBSCRIPTIONS as usize);
        assert!(
            applied.values().all(|n| *n == 1),
            "a tag applied twice to a contact"
        );
    }

    // 3. Again, filtered by state: only duplicates, no Keap call.
    let calls_before = keap.state().calls.len();
    let third = backfill(&db, &chargify, &keap, &["--state", "past_due,canceled"]).await;
    assert_eq!(third.code, Some(0), "{}\n{}", third.stdout, third.stderr);
    assert_eq!(third.count("seen"), 2_000.0);
    assert_eq!(third.count("duplicates"), 2_000.0);
    assert_eq!(
        keap.state().calls.len(),
        calls_before,
        "no Keap call for duplicates"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

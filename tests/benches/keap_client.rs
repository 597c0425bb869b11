//! Keap client figures against the stand-in (127.0.0.1, no moto):
//!
//! - calls one typical sync makes (upsert the contact with its company and a custom field
//!   by label, apply a tag, remove a tag, achieve a goal) on an empty account, with cold caches
//!   on an account that has the records, and with warm caches (target: 4, one per operation);
//! - throughput when the stand-in enforces Keap's spike arrest for a service account key
//!   (10 calls in any one-second window, else the real spike-arrest 429): 200 calls through
//!   one client, then 4 tasks sharing one client, as a fraction of the 10/s limit measured from
//!   the stand-in's arrival times (target: at least 0.90, and no 429).
//!
//! `cargo bench -p integration-tests --bench keap_client`; about 45 s, nearly all of it the
//! rate limit.

use integration_tests::keap_standin::KeapStandIn;
use serde_json::json;
use shared::keap::{
    Address, ContactFields, Credential, Crm, IfMissing, KeapClient, KeapClientConfig,
};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A service account key's spike limit, calls per second.
const LIMIT: u32 = 10;
const CALLS: usize = 200;
const TASKS: usize = 4;

fn client(keap: &KeapStandIn) -> KeapClient {
    let mut config = KeapClientConfig::new(keap.base_url(), Credential::ApiKey("sak-bench".into()));
    config.requests_per_second = NonZeroU32::new(LIMIT).expect("non-zero");
    KeapClient::new(config).expect("client")
}

/// One subscription's worth of Keap work, names resolved through the client's directory.
async fn typical_sync(crm: &KeapClient) {
    let directory = crm.directory();
    let plan = directory
        .custom_field_id(crm, "Plan")
        .await
        .expect("custom field");
    let fields = ContactFields {
        given_name: Some("Jane".into()),
        family_name: Some("Doe".into()),
        company: Some("Acme, Inc.".into()),
        address: Some(Address {
            locality: Some("Pleasantville".into()),
            region: Some("NC".into()),
            country_code: Some("US".into()),
            ..Address::default()
        }),
        custom_fields: vec![(plan, json!("pro-monthly"))],
        ..ContactFields::default()
    };
    let contact = crm
        .upsert_contact_by_email("jane@example.com", &fields)
        .await
        .expect("upsert");
    let active = directory
        .ensure_tag(crm, "Billing: Active", IfMissing::Create)
        .await
        .expect("tag")[0];
    let past_due = directory
        .ensure_tag(crm, "Billing: Past due", IfMissing::Create)
        .await
        .expect("tag")[0];
    crm.apply_tags(contact.id, &[active]).await.expect("apply");
    crm.remove_tags(contact.id, &[past_due])
        .await
        .expect("remove");
    crm.achieve_goal(contact.id, "chargify", "signup")
        .await
        .expect("goal");
}

/// Calls the stand-in receives for one sync.
async fn calls_for(keap: &KeapStandIn, crm: &KeapClient) -> usize {
    let before = keap.state().calls.len();
    typical_sync(crm).await;
    keap.state().calls.len() - before
}

struct Throughput {
    rate: f64,
    throttled: u32,
    calls: usize,
    elapsed: Duration,
}

/// `tasks` tasks sharing one client make `CALLS` calls in all against a stand-in that
/// enforces the spike limit. The rate is what the stand-in saw: answered calls over the time
/// from the first arrival to the last.
async fn throughput(tasks: usize) -> Throughput {
    let keap = KeapStandIn::start().await;
    {
        let mut state = keap.state();
        state.spike_limit = Some(LIMIT as usize);
        // A per-minute budget the run cannot halve, so the client's per-minute pacing stays
        // out of it: this measures the per-second limit alone (a key's 240 a minute would
        // make any run over 24 s a per-minute test).
        state.minute_budget = (100_000, 100_000);
        state.custom_fields.push((7, "Plan".into()));
    }
    let crm = Arc::new(client(&keap));
    let start = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let crm = Arc::clone(&crm);
            tokio::spawn(async move {
                for _ in 0..CALLS / tasks {
                    crm.custom_fields().await.expect("call");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let elapsed = start.elapsed();
    let state = keap.state();
    let answered: Vec<Instant> = state.calls.iter().map(|c| c.at).collect::<Vec<_>>();
    let span = answered
        .last()
        .zip(answered.first())
        .map(|(last, first)| last.duration_since(*first))
        .unwrap_or_default();
    let ok = answered.len() - state.throttled as usize;
    Throughput {
        rate: (ok.saturating_sub(1)) as f64 / span.as_secs_f64(),
        throttled: state.throttled,
        calls: state.calls.len(),
        elapsed,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let keap = KeapStandIn::start().await;
        {
            let mut state = keap.state();
            state.custom_fields.push((7, "Plan".into()));
            state.campaign_goals.push(("chargify".into(), "signup".into()));
        }
        let first = client(&keap);
        let empty = calls_for(&keap, &first).await;
        let warm = calls_for(&keap, &first).await;
        let cold = calls_for(&keap, &client(&keap)).await;
        assert!(keap.violations().is_empty(), "{:?}", keap.violations());

        println!("Keap client benchmark (stand-in on 127.0.0.1)");
        println!();
        println!("  calls for one sync (upsert + apply tag + remove tag + goal)");
        println!("  {:<44} {:>5}", "empty account (finds and creates all)", empty);
        println!("  {:<44} {:>5}", "cold caches, records exist", cold);
        println!(
            "  {:<44} {:>5}   ({:.2}x of cold; target 4)",
            "warm caches",
            warm,
            warm as f64 / cold as f64
        );
        println!();
        println!(
            "  throughput, stand-in enforcing {LIMIT} calls in any 1 s (spike arrest), {CALLS} calls"
        );
        println!(
            "  {:<20} {:>8} {:>10} {:>6} {:>7} {:>9}",
            "", "req/s", "of limit", "429s", "calls", "elapsed"
        );
        for tasks in [1, TASKS] {
            let t = throughput(tasks).await;
            let label = if tasks == 1 {
                "1 task".to_owned()
            } else {
                format!("{tasks} tasks, 1 client")
            };
            println!(
                "  {:<20} {:>8.2} {:>9.1}% {:>6} {:>7} {:>8.1}s",
                label,
                t.rate,
                100.0 * t.rate / f64::from(LIMIT),
                t.throttled,
                t.calls,
                t.elapsed.as_secs_f64()
            );
        }
        println!("  targets: at least 90% of the limit, no 429");
    });
}

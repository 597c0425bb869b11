//! Processor cost per event type: DynamoDB writes (idempotency records and identity map) and
//! Keap calls, with warm tag and custom-field caches, for one customer's billing story.
//!
//! `cargo bench -p shared --bench processor` prints the table. The ports are the in-memory
//! adapters, whose one-write-per-call semantics match the DynamoDB adapters (one conditional
//! `UpdateItem` per `begin`, `record_step`, `mark_seen`, `complete`, `lock`, `save`).
//! Targets: per applied event, 3 idempotency writes (the lease, the seen marker, the
//! completion) plus 2 per goal or note (its intent before the call, done after it); 2
//! identity-map writes (the customer's lease, the final save) plus 1 before goals or notes
//! (what Keap holds, saved before they fire) and 1 for a new contact (the email it is being
//! created by); at most 3 Keap calls for a signup with warm caches.

use shared::envelope::WebhookEnvelope;
use shared::fixtures;
use shared::idempotency::InMemoryIdempotencyStore;
use shared::identity::InMemoryCustomerStore;
use shared::keap::{Directory, InMemoryCrm};
use shared::processor::{Limits, Processed, Processor};
use shared::rules::RuleSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn story_for(customer: &str, email: &str, id_prefix: &str) -> Vec<(String, String)> {
    let mut steps: Vec<(String, String)> = fixtures::story()
        .into_iter()
        .map(|(name, body)| (name.to_owned(), body))
        .collect();
    steps.push((
        "plan_change".into(),
        fixtures::derive(
            &steps[5].1,
            "1008",
            "subscription_product_change",
            &[
                ("payload[previous_product][handle]", "handle_6a9273b8a"),
                ("payload[subscription][product][handle]", "pro-annual"),
                (
                    "payload[subscription][updated_at]",
                    "2012-11-02%2009%3A00%3A00%20-0400",
                ),
            ],
        ),
    ));
    steps.push((
        "customer_update".into(),
        fixtures::derive(
            fixtures::CUSTOMER_UPDATE,
            "1009",
            "customer_update",
            &[
                ("payload[site][subdomain]", "acme-test"),
                ("payload[customer][id]", "15"),
            ],
        ),
    ));
    steps.push((
        "statement_settled".into(),
        fixtures::STATEMENT_SETTLED.to_owned(),
    ));
    steps
        .into_iter()
        .map(|(name, body)| {
            let body = body
                .replace("customer][id]=15", &format!("customer][id]={customer}"))
                .replace("john%40example.com", email);
            let body = match body.split_once('&') {
                Some((id, rest)) => format!(
                    "{}{}&{rest}",
                    id.replacen("id=", &format!("id={id_prefix}"), 1),
                    ""
                ),
                None => body,
            };
            (name, body)
        })
        .collect()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let rules = Arc::new(RuleSet::default_rules().unwrap_or_else(|e| panic!("rules: {e}")));
    let crm = Arc::new(InMemoryCrm::new());
    for label in rules.custom_field_labels() {
        crm.add_custom_field(&label);
    }
    let idempotency = Arc::new(InMemoryIdempotencyStore::new());
    let customers = Arc::new(InMemoryCustomerStore::new());
    let processor = Processor {
        rules,
        crm: crm.clone(),
        directory: Arc::new(Directory::new(Arc::new(
            shared::identity::InMemoryNameLocks::new(),
        ))),
        idempotency: idempotency.clone(),
        customers: customers.clone(),
        settings: Limits::default(),
    };
    let run = |body: &str| -> (Processed, Duration) {
        let envelope: WebhookEnvelope =
            fixtures::envelope(body).unwrap_or_else(|| panic!("not a webhook: {body}"));
        let start = Instant::now();
        let out = runtime
            .block_on(processor.process(&envelope, Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("processing failed: {e}"));
        (out, start.elapsed())
    };

    // Warm the caches with another customer's story, as a running function would have.
    for (_, body) in story_for("900", "warm%40example.com", "9") {
        run(&body);
    }

    println!("processor cost per event (warm caches, one customer's story, in order)\n");
    println!(
        "{:<18} {:<10} {:>11} {:>13} {:>11}  keap operations",
        "event", "outcome", "keap calls", "idemp. writes", "ident. writes"
    );
    let mut over_budget = false;
    let mut signup_calls = 0;
    for (name, body) in story_for("15", "john%40example.com", "") {
        let calls_before = crm.call_count();
        let idem_before = idempotency.writes();
        let ident_before = customers.writes();
        let (outcome, _) = run(&body);
        let calls = crm.call_count() - calls_before;
        let operations: Vec<&str> = crm.state().calls[calls_before..]
            .iter()
            .map(|c| c.operation)
            .collect();
        let idem = idempotency.writes() - idem_before;
        let ident = customers.writes() - ident_before;
        let steps = operations
            .iter()
            .filter(|o| matches!(**o, "achieve_goal" | "create_note"))
            .count() as u64;
        let new_contact = operations.contains(&"upsert_contact");
        if outcome.outcome() == "applied" {
            over_budget |=
                idem > 3 + 2 * steps || ident > 2 + u64::from(steps > 0) + u64::from(new_contact);
        } else {
            over_budget |= idem + ident > 0;
        }
        if name == "signup" {
            signup_calls = calls;
        }
        println!(
            "{:<18} {:<10} {:>11} {:>13} {:>11}  {}",
            name,
            outcome.outcome(),
            calls,
            idem,
            ident,
            operations.join(", ")
        );
    }
    // A redelivery of the signup: one read-back of the record, no write, no Keap call.
    let signup = story_for("15", "john%40example.com", "").remove(0).1;
    let calls_before = crm.call_count();
    let idem_before = idempotency.writes();
    let (outcome, _) = run(&signup);
    println!(
        "{:<18} {:<10} {:>11} {:>13} {:>11}",
        "signup (again)",
        outcome.outcome(),
        crm.call_count() - calls_before,
        idempotency.writes() - idem_before,
        0
    );

    // CPU per event with in-memory ports (no network), for reference.
    let bodies = story_for("16", "timing%40example.com", "5");
    let start = Instant::now();
    let mut n = 0u32;
    for round in 0..200 {
        for (_, body) in &bodies {
            let body = body.replacen("id=", &format!("id={round}x"), 1);
            run(&body);
            n += 1;
        }
    }
    let per_event = start.elapsed() / n;

    println!();
    println!(
        "targets: idempotency writes per applied event <= 3 + 2 per goal or note, identity-map writes <= 2 + 1 with goals or notes + 1 for a new contact ({}); signup Keap calls with warm caches <= 3 ({signup_calls}: {})",
        if over_budget { "NOT met" } else { "met" },
        if signup_calls <= 3 { "met" } else { "NOT met" },
    );
    println!(
        "processing CPU with in-memory ports: {:.1} µs per event ({n} events)",
        per_event.as_secs_f64() * 1e6
    );
}

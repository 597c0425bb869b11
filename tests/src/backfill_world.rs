//! The account a backfill meets, shared by `tests/tests/backfill.rs` (the `cks backfill`
//! binary) and `benches/keap_quota.rs` (the engine in process): subscriptions in the Chargify
//! stand-in in five states, and the Keap stand-in with the rules' custom fields, enforcing
//! spike arrest above the client's pace and reporting a service key's daily quota.

use crate::chargify_standin::{ChargifyStandIn, NewSubscription};
use crate::keap_standin::KeapStandIn;

/// The client's pace, under the stand-in's spike limit: fast enough for a run of under a
/// minute, and a 429 would show the pacing is wrong.
pub const PACE: u32 = 400;
pub const SPIKE_LIMIT: usize = 500;

/// The state of the `i`th subscription: 60% active, then 10% each past due, canceled,
/// trialing and on hold.
pub fn state_of(i: i64) -> &'static str {
    match i % 10 {
        0..=5 => "active",
        6 => "past_due",
        7 => "canceled",
        8 => "trialing",
        _ => "on_hold",
    }
}

/// The default rules' tag for a subscription state.
pub fn state_tag(state: &str) -> &'static str {
    match state {
        "active" => "Billing: Active",
        "past_due" => "Billing: Past Due",
        "canceled" => "Billing: Canceled",
        "trialing" => "Billing: Trialing",
        _ => "Billing: On Hold",
    }
}

/// The Chargify customer id of the `i`th subscription (its email is
/// `customer{id}@example.com`).
pub fn customer_id(i: i64) -> i64 {
    100_000 + i
}

/// The Chargify stand-in with `count` subscriptions in [`state_of`]'s states; the `i`th
/// customer's organisation is `organization(i)` (none when it gives `None`).
pub async fn chargify(count: i64, organization: impl Fn(i64) -> Option<String>) -> ChargifyStandIn {
    let chargify = ChargifyStandIn::start().await;
    for i in 0..count {
        let id = chargify.add_subscription(NewSubscription::new(customer_id(i), state_of(i)));
        if let Some(name) = organization(i) {
            if let Some(sub) = chargify.state().subscriptions.get_mut(&id) {
                sub["customer"]["organization"] = name.into();
            }
        }
    }
    chargify
}

/// The Keap stand-in with the default rules' custom fields, spike arrest at [`SPIKE_LIMIT`]
/// and a service key's 30,000-call daily quota in its headers. The per-minute budget is not
/// what a backfill run is about (a key's 240 a minute would make it a 40-minute run).
pub async fn keap() -> KeapStandIn {
    let keap = KeapStandIn::start().await;
    {
        let mut s = keap.state();
        s.spike_limit = Some(SPIKE_LIMIT);
        s.minute_budget = (1_000_000, 1_000_000);
        s.daily_budget = (30_000, 30_000);
    }
    let rules = shared::rules::RuleSet::default_rules().expect("rules");
    keap.add_custom_fields(rules.custom_field_labels(), 500);
    keap
}

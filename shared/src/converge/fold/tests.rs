//! The convergence property at its core: folding a customer's webhooks in any order, with
//! repeats, leaves every value as the in-order fold does.

use super::*;
use crate::chargify::Webhook;
use crate::fixtures::history::{histories, weather, Rng, Sent};
use crate::rules::RuleSet;

fn plans(rules: &RuleSet, sent: &[Sent]) -> Vec<Plan> {
    sent.iter()
        .map(|s| {
            let webhook = Webhook::parse(s.body.as_bytes()).expect("generated bodies parse");
            rules
                .plan(&webhook, "acme")
                .expect("default rules plan them")
        })
        .collect()
}

/// Target key → final value, and the final versions.
fn end(plans: &[Plan]) -> (BTreeMap<String, Desired>, BTreeMap<String, Version>) {
    let mut fold = Fold::new(CustomerState::default());
    for plan in plans {
        fold.add(plan);
    }
    let values = fold
        .winners
        .into_iter()
        .map(|(key, w)| (key, w.desired))
        .collect();
    (values, fold.state.clocks)
}

#[test]
fn any_delivery_order_with_repeats_folds_to_the_in_order_values() {
    let rules = RuleSet::default_rules().expect("default rules");
    let seed = 20_261_130;
    let mut rng = Rng::new(seed);
    let all = histories(&mut rng, 1, 300);
    let mut deliveries = 0;
    for (n, history) in all.iter().enumerate() {
        let expected = end(&plans(&rules, history));
        for _ in 0..5 {
            let delivered = weather(&mut rng, history);
            let got = end(&plans(&rules, &delivered));
            assert_eq!(
                got,
                expected,
                "seed {seed}, history {n}: delivered {:?}",
                delivered.iter().map(|s| s.id).collect::<Vec<_>>()
            );
            deliveries += 1;
        }
    }
    assert_eq!(deliveries, 1500);
}

#[test]
fn a_late_state_change_is_stale_and_its_goal_is_skipped_but_a_late_signup_fires() {
    let rules = RuleSet::default_rules().expect("default rules");
    let mut rng = Rng::new(3);
    let mut next = 1;
    let start = time::macros::datetime!(2026-02-01 09:00:00 UTC);
    // Find a history with a past-due state change followed by a recovery.
    let (history, late) = (0..200)
        .find_map(|c| {
            let h = crate::fixtures::history::customer_history(&mut rng, c, &mut next, start, 8);
            let i = h.iter().position(|s| {
                s.event == "subscription_state_change" && s.body.contains("state]=past_due")
            })?;
            h[i + 1..]
                .iter()
                .any(|s| s.event == "subscription_state_change" && s.body.contains("state]=active"))
                .then_some((h.clone(), i))
        })
        .expect("a history with a recovery");
    let plans = plans(&rules, &history);
    let mut fold = Fold::new(CustomerState::default());
    for (i, plan) in plans.iter().enumerate() {
        if i != late {
            fold.add(plan);
        }
    }
    let verdict = fold.add(&plans[late]);
    assert!(verdict.is_stale(), "{verdict:?}");
    assert!(verdict.stale_rules.contains("state change"));
    assert!(
        verdict.steps.iter().all(|(_, fire)| !fire),
        "no dunning goal"
    );

    // The signup, delivered last, writes what nothing newer wrote (its ids) and fires.
    let mut fold = Fold::new(CustomerState::default());
    for plan in &plans[1..] {
        fold.add(plan);
    }
    let signup = fold.add(&plans[0]);
    assert!(signup.won > 0, "the ids are written: {signup:?}");
    assert!(
        signup.steps.iter().all(|(_, fire)| *fire),
        "on_stale = fire"
    );
    assert!(fold
        .winners
        .contains_key(&Target::Field("Chargify Customer ID".into()).key()));
}

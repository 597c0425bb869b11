//! Folding webhooks over a customer's state: which writes win, which rules are stale, which
//! goals and notes fire.

use super::state::CustomerState;
use super::target::{ContactAttr, Desired, Target, Version};
use crate::keap::Address;
use crate::rules::{Action, ContactDetails, OnStale, Plan};
use std::collections::{BTreeMap, BTreeSet};

/// One value a plan writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The rule that asks for it.
    pub rule: String,
    pub target: Target,
    pub desired: Desired,
    pub version: Version,
}

/// The values `plan` writes, in action order (a later write of a target wins over an earlier
/// one of the same plan). Contact data is versioned by the customer's `updated_at`; custom
/// fields and tags by the subscription's, each falling back on the other when the body lacks
/// it.
pub fn writes_of(plan: &Plan) -> Vec<Write> {
    let subscription_time = plan.subscription.as_ref().and_then(|s| s.updated_at);
    let contact_version = Version::new(
        plan.customer_updated_at.or(subscription_time),
        &plan.webhook_id,
    );
    let version = Version::new(
        subscription_time.or(plan.customer_updated_at),
        &plan.webhook_id,
    );
    let mut writes = Vec::new();
    for planned in &plan.actions {
        let mut push = |target: Target, desired: Desired, version: Version| {
            writes.push(Write {
                rule: planned.rule.clone(),
                target,
                desired,
                version,
            })
        };
        match &planned.action {
            Action::UpsertContact => {
                for (attr, desired) in contact_values(&plan.contact) {
                    push(Target::Contact(attr), desired, contact_version);
                }
            }
            Action::SetFields { fields } => {
                for (label, value) in fields {
                    push(
                        Target::Field(label.clone()),
                        Desired::Text(value.clone()),
                        version,
                    );
                }
            }
            Action::ApplyTags { tags } => {
                for tag in tags {
                    push(Target::Tag(tag.clone()), Desired::Tag(true), version);
                }
            }
            Action::RemoveTags { tags } => {
                for tag in tags {
                    push(Target::Tag(tag.clone()), Desired::Tag(false), version);
                }
            }
            Action::KeepOneTag { keep, others, .. } => {
                for tag in others {
                    push(Target::Tag(tag.clone()), Desired::Tag(false), version);
                }
                push(Target::Tag(keep.clone()), Desired::Tag(true), version);
            }
            Action::AchieveGoal { .. } | Action::AddNote { .. } => {}
        }
    }
    writes
}

/// The `[contact]` values of a plan, one per contact attribute it renders.
fn contact_values(details: &ContactDetails) -> Vec<(ContactAttr, Desired)> {
    let text = |v: &Option<String>| v.clone().map(Desired::Text);
    [
        (ContactAttr::Email, text(&details.email)),
        (ContactAttr::GivenName, text(&details.given_name)),
        (ContactAttr::FamilyName, text(&details.family_name)),
        (ContactAttr::Company, text(&details.company)),
        (ContactAttr::Phone, text(&details.phone)),
        (ContactAttr::Address, address(details).map(Desired::Address)),
        (ContactAttr::OptInReason, text(&details.opt_in_reason)),
    ]
    .into_iter()
    .filter_map(|(attr, value)| Some((attr, value?)))
    .collect()
}

/// The billing address, or none. Keap refuses a region without a country code, and wants
/// ISO 3166-1 alpha-3 codes where Chargify sends alpha-2.
fn address(details: &ContactDetails) -> Option<Address> {
    let country_code = details
        .country
        .as_deref()
        .and_then(crate::keap::country::keap_country_code);
    let address = Address {
        line1: details.line1.clone(),
        line2: details.line2.clone(),
        locality: details.locality.clone(),
        region: details.region.clone().filter(|_| country_code.is_some()),
        postal_code: details.postal_code.clone(),
        country_code: country_code.map(str::to_owned),
    };
    (address != Address::default()).then_some(address)
}

/// The value a run of webhooks leaves a target with, and the change that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Winner {
    pub target: Target,
    pub desired: Desired,
    pub version: Version,
}

/// What one webhook came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Writes at least as new as the value held: applied (perhaps at no cost, if Keap holds
    /// the value already).
    pub won: usize,
    /// Writes older than the value held: skipped.
    pub superseded: usize,
    /// Rules with writes, every one of them superseded.
    pub stale_rules: BTreeSet<String>,
    /// Index (in `plan.actions`) of each goal or note, and whether it fires.
    pub steps: Vec<(usize, bool)>,
}

impl Verdict {
    /// Some write was superseded and none won: the webhook changed nothing.
    pub fn is_stale(&self) -> bool {
        self.won == 0 && self.superseded > 0
    }
}

/// Webhooks folded, in order, over a customer's state.
#[derive(Debug, Clone)]
pub struct Fold {
    /// The state after every webhook folded so far (clocks advanced; the mirror is left to
    /// whoever makes the Keap calls).
    pub state: CustomerState,
    /// Target key → the value the folded webhooks leave it with.
    pub winners: BTreeMap<String, Winner>,
}

impl Fold {
    pub fn new(state: CustomerState) -> Self {
        Self {
            state,
            winners: BTreeMap::new(),
        }
    }

    /// Folds one more webhook's plan.
    pub fn add(&mut self, plan: &Plan) -> Verdict {
        let mut verdict = Verdict::default();
        // Per rule: (writes, writes superseded).
        let mut per_rule: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for write in writes_of(plan) {
            let key = write.target.key();
            let superseded = self
                .state
                .clocks
                .get(&key)
                .is_some_and(|held| *held > write.version);
            let counts = per_rule.entry(write.rule.clone()).or_default();
            counts.0 += 1;
            if superseded {
                counts.1 += 1;
                verdict.superseded += 1;
                continue;
            }
            verdict.won += 1;
            self.state.clocks.insert(key.clone(), write.version);
            self.winners.insert(
                key,
                Winner {
                    target: write.target,
                    desired: write.desired,
                    version: write.version,
                },
            );
        }
        verdict.stale_rules = per_rule
            .into_iter()
            .filter(|(_, (writes, superseded))| *writes > 0 && writes == superseded)
            .map(|(rule, _)| rule)
            .collect();
        for (index, planned) in plan.actions.iter().enumerate() {
            if planned.action.is_step() {
                let stale = verdict.stale_rules.contains(&planned.rule);
                verdict
                    .steps
                    .push((index, !stale || planned.on_stale == OnStale::Fire));
            }
        }
        if verdict.won > 0 {
            if let Some(sub) = &plan.subscription {
                if let Some(at) = sub.updated_at {
                    self.state.note_subscription(&sub.id, at);
                }
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests;

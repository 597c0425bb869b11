//! The rules file as written (TOML): what an operator edits. [`super::RuleSet`] validates it
//! and compiles its templates; nothing here is trusted until then.

pub use super::action::{
    ActionSpec, KeepOneSpec, NoteSpec, SetFieldsSpec, TagListSpec, TagRefSpec, UpsertSpec,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The only format version this build reads.
pub const RULES_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    pub version: u32,
    /// Create a tag named by a rule when Keap has none with that name.
    #[serde(default = "yes")]
    pub create_missing_tags: bool,
    /// What to do with a custom field whose label the Keap account does not have.
    #[serde(default)]
    pub missing_custom_fields: MissingFieldPolicy,
    pub contact: ContactMapping,
    /// Group name → (key → tag). See [`ActionSpec::KeepOneTag`].
    #[serde(default)]
    pub tag_groups: BTreeMap<String, BTreeMap<String, TagRefSpec>>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingFieldPolicy {
    /// Leave the field out, log a warning and count it (a new Keap account still syncs).
    #[default]
    Skip,
    /// Fail the webhook permanently: it goes to the dead-letter queue with the reason.
    Fail,
}

/// Templates for the Keap contact of the webhook's customer. Every field but `email` is
/// optional; a template that renders empty leaves the Keap field as it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactMapping {
    pub email: String,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub company: Option<String>,
    pub phone: Option<String>,
    pub address_line1: Option<String>,
    pub address_line2: Option<String>,
    pub locality: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 as Chargify sends it; converted to Keap's alpha-3.
    pub country: Option<String>,
    pub opt_in_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// Chargify event keys this rule answers.
    pub events: Vec<String>,
    #[serde(default)]
    pub when: Filter,
    #[serde(default)]
    pub on_stale: OnStale,
    /// Overrides the per-kind default of [`OnUncertain`] for this rule's goals and notes.
    #[serde(default)]
    pub on_uncertain: Option<OnUncertain>,
    pub actions: Vec<ActionSpec>,
}

/// Optional narrowing: each non-empty list must contain the event's value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default)]
    pub state: Vec<String>,
    /// The event's subscription state must not be one of these (an absent state passes).
    #[serde(default)]
    pub state_not: Vec<String>,
    #[serde(default)]
    pub previous_state: Vec<String>,
    #[serde(default)]
    pub product_handle: Vec<String>,
    #[serde(default)]
    pub product_family: Vec<String>,
}

/// What a rule's goals and notes do when the webhook is stale: every value the rule writes
/// is already held in Keap from a newer Chargify change. The writes themselves never go back
/// in time, whatever this says (each value keeps the Chargify time it was written at).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStale {
    /// Skip them: a late `past_due` must not start dunning for a customer who paid since.
    #[default]
    #[serde(alias = "skip_all")]
    Skip,
    /// Fire them anyway: for events that happen once in a customer's life (a signup), whose
    /// campaign should start even when a later change arrived first.
    #[serde(alias = "apply_others")]
    Fire,
}

/// What a retry does with a goal or note whose Keap call was sent but whose success was never
/// recorded (the process died in between): Keap has no idempotency keys, so the call may or
/// may not have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUncertain {
    /// Assume it happened: at most once (the default for goals, which start campaigns).
    Skip,
    /// Send it again: at least once (the default for notes, where a duplicate is harmless).
    Repeat,
}

//! The rules file as written (TOML): what an operator edits. [`super::RuleSet`] validates it
//! and compiles its templates; nothing here is trusted until then.

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
    pub actions: Vec<ActionSpec>,
}

/// Optional narrowing: each non-empty list must contain the event's value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default)]
    pub state: Vec<String>,
    #[serde(default)]
    pub previous_state: Vec<String>,
    #[serde(default)]
    pub product_handle: Vec<String>,
    #[serde(default)]
    pub product_family: Vec<String>,
}

/// What the rule's other actions do when the event is older than the subscription state
/// already applied. Billing-state actions never run for a stale event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStale {
    /// Run the actions that are not about billing state (tags like "Payment Failed", notes).
    #[default]
    ApplyOthers,
    /// Run nothing.
    SkipAll,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionSpec {
    /// Write the `[contact]` fields (the first event of a customer always does).
    UpsertContact(UpsertSpec),
    /// Custom fields by label, from templates.
    SetFields(SetFieldsSpec),
    ApplyTags(TagListSpec),
    RemoveTags(TagListSpec),
    /// Apply the group's tag for `key` and remove the group's other tags.
    KeepOneTag(KeepOneSpec),
    /// `integration/call_name` (a template).
    AchieveGoal(String),
    AddNote(NoteSpec),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertSpec {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFieldsSpec {
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub billing_state: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TagListSpec {
    Tags(Vec<TagRefSpec>),
    Detailed {
        tags: Vec<TagRefSpec>,
        #[serde(default)]
        billing_state: bool,
    },
}

impl TagListSpec {
    pub fn tags(&self) -> &[TagRefSpec] {
        match self {
            Self::Tags(tags) | Self::Detailed { tags, .. } => tags,
        }
    }

    pub fn billing_state(&self) -> bool {
        matches!(
            self,
            Self::Detailed {
                billing_state: true,
                ..
            }
        )
    }
}

/// A tag by Keap id, or by name (a template).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TagRefSpec {
    Id(i64),
    Name(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepOneSpec {
    pub group: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteSpec {
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub billing_state: bool,
}

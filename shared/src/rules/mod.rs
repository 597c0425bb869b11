//! Rules as data: which Keap changes each Chargify webhook makes. The file format is
//! [`file::RulesFile`] (TOML, documented in docs/rules.md); [`RuleSet`] is a validated, compiled
//! file; [`plan`] turns a webhook into the Keap actions it asks for, as a pure function.
//!
//! The shipped default (`shared/rules/default.toml`) is compiled in; deployments override it
//! with `RULES_TOML` (see [`RuleSet::from_vars`]).

pub mod action;
pub mod file;
pub mod plan;
pub mod template;

pub use action::{Action, TagRef};
pub use file::{MissingFieldPolicy, OnStale, OnUncertain, RulesFile, RULES_VERSION};
pub use plan::{ContactDetails, Plan, PlanError, PlannedAction, SubscriptionVersion};
pub use template::{TemplateError, Templates, Text};

use crate::chargify::webhook::{is_internal_event, EVENT_KEYS};
use action::CompiledAction;
use file::{Filter, TagRefSpec};
use std::collections::BTreeMap;

/// The rules shipped with this build.
pub const DEFAULT_RULES: &str = include_str!("../../rules/default.toml");

/// Environment variable holding a whole rules file that replaces the default.
pub const RULES_TOML_VAR: &str = "RULES_TOML";

/// Why a rules file cannot be used. Each message names the rule and what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("rules file is not valid: {0}")]
    Syntax(String),
    #[error(
        "rules file version {found} is not supported; this build reads version {RULES_VERSION}"
    )]
    Version { found: u32 },
    #[error(
        "rule {rule:?}: unknown Chargify event {event:?} (the known event keys are EVENT_KEYS in shared/src/chargify/webhook.rs)"
    )]
    UnknownEvent { rule: String, event: String },
    #[error("rule {rule:?} names no events")]
    NoEvents { rule: String },
    #[error(
        "rule {rule:?}: keep_one_tag uses tag group {group:?}, which [tag_groups] does not define"
    )]
    UnknownGroup { rule: String, group: String },
    #[error("tag group {group:?}: {detail}")]
    BadGroup { group: String, detail: String },
    #[error("rule {rule:?}: goal {goal:?} must be `integration/call_name`")]
    BadGoal { rule: String, goal: String },
    #[error("rule {rule:?}: {detail}")]
    BadAction { rule: String, detail: String },
    #[error("two rules are named {0:?}; names must be unique (they appear in logs and records)")]
    DuplicateName(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub name: String,
    pub events: Vec<String>,
    pub when: Filter,
    pub on_stale: OnStale,
    pub on_uncertain: Option<OnUncertain>,
    pub actions: Vec<CompiledAction>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledContact {
    pub email: Text,
    pub fields: Vec<(ContactField, Text)>,
}

/// The contact fields the `[contact]` table maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContactField {
    GivenName,
    FamilyName,
    Company,
    Phone,
    Line1,
    Line2,
    Locality,
    Region,
    PostalCode,
    Country,
    OptInReason,
}

/// A validated rules file with compiled templates.
#[derive(Debug)]
pub struct RuleSet {
    pub(crate) templates: Templates,
    pub create_missing_tags: bool,
    pub missing_custom_fields: MissingFieldPolicy,
    pub(crate) contact: CompiledContact,
    /// Group → key → tag. Group tags are fixed (no templates), so the other tags of a group
    /// are known without rendering anything.
    pub(crate) groups: BTreeMap<String, BTreeMap<String, TagRef>>,
    pub(crate) rules: Vec<CompiledRule>,
}

impl RuleSet {
    /// The rules compiled into this build.
    pub fn default_rules() -> Result<Self, RulesError> {
        Self::from_toml(DEFAULT_RULES)
    }

    /// `RULES_TOML` when set and not blank, else the default.
    pub fn from_env() -> Result<Self, RulesError> {
        Self::from_vars(&crate::config::Vars::from_env())
    }

    /// `RULES_TOML` of `vars` when set and not blank, else the default. The text is compiled
    /// as set, so a syntax error's line and column are those of the variable's value.
    pub fn from_vars(vars: &crate::config::Vars) -> Result<Self, RulesError> {
        match vars.text(RULES_TOML_VAR) {
            Some(text) => Self::from_toml(text),
            None => Self::default_rules(),
        }
    }

    pub fn from_toml(text: &str) -> Result<Self, RulesError> {
        let file: RulesFile =
            toml::from_str(text).map_err(|e| RulesError::Syntax(e.to_string()))?;
        Self::compile(file)
    }

    pub fn compile(file: RulesFile) -> Result<Self, RulesError> {
        if file.version != RULES_VERSION {
            return Err(RulesError::Version {
                found: file.version,
            });
        }
        let mut templates = Templates::new();
        let contact = compile_contact(&mut templates, &file.contact)?;
        let mut groups = BTreeMap::new();
        for (group, tags) in &file.tag_groups {
            let mut compiled = BTreeMap::new();
            for (key, tag) in tags {
                let tag = match tag {
                    TagRefSpec::Id(id) => TagRef::Id(*id),
                    TagRefSpec::Name(name) if name.contains("{{") || name.contains("{%") => {
                        return Err(RulesError::BadGroup {
                            group: group.clone(),
                            detail: format!("tag for {key:?} is a template; group tags must be fixed names or ids"),
                        })
                    }
                    TagRefSpec::Name(name) if name.trim().is_empty() => {
                        return Err(RulesError::BadGroup {
                            group: group.clone(),
                            detail: format!("tag for {key:?} is empty"),
                        })
                    }
                    TagRefSpec::Name(name) => TagRef::Name(name.trim().to_owned()),
                };
                compiled.insert(key.clone(), tag);
            }
            groups.insert(group.clone(), compiled);
        }
        let mut rules = Vec::new();
        for rule in &file.rules {
            if rules.iter().any(|r: &CompiledRule| r.name == rule.name) {
                return Err(RulesError::DuplicateName(rule.name.clone()));
            }
            if rule.events.is_empty() {
                return Err(RulesError::NoEvents {
                    rule: rule.name.clone(),
                });
            }
            for event in &rule.events {
                if !EVENT_KEYS.contains(&event.as_str()) && !is_internal_event(event) {
                    return Err(RulesError::UnknownEvent {
                        rule: rule.name.clone(),
                        event: event.clone(),
                    });
                }
            }
            let mut actions = Vec::new();
            for (i, spec) in rule.actions.iter().enumerate() {
                actions.push(CompiledAction::compile(
                    spec,
                    &rule.name,
                    i,
                    &mut templates,
                    &groups,
                )?);
            }
            rules.push(CompiledRule {
                name: rule.name.clone(),
                events: rule.events.clone(),
                when: rule.when.clone(),
                on_stale: rule.on_stale,
                on_uncertain: rule.on_uncertain,
                actions,
            });
        }
        Ok(Self {
            templates,
            create_missing_tags: file.create_missing_tags,
            missing_custom_fields: file.missing_custom_fields,
            contact,
            groups,
            rules,
        })
    }

    /// Every fixed tag name the rules use (group tags and literal tag names), for `rules check`.
    pub fn fixed_tag_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .groups
            .values()
            .flat_map(|g| g.values())
            .filter_map(|t| match t {
                TagRef::Name(n) => Some(n.clone()),
                TagRef::Id(_) => None,
            })
            .collect();
        for rule in &self.rules {
            for action in &rule.actions {
                names.extend(action.literal_tag_names());
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// Every custom-field label the rules set, for `rules check`.
    pub fn custom_field_labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| &r.actions)
            .filter_map(|a| match a {
                CompiledAction::SetFields(fields) => Some(fields.iter().map(|(l, _)| l.clone())),
                _ => None,
            })
            .flatten()
            .collect();
        labels.sort();
        labels.dedup();
        labels
    }

    /// Every goal the rules fire (`integration/call_name`, or the template's source when the
    /// goal is rendered per webhook), for `rules check`.
    pub fn goals(&self) -> Vec<String> {
        let mut goals: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| &r.actions)
            .filter_map(|a| match a {
                CompiledAction::AchieveGoal(Text::Literal(goal)) => Some(goal.clone()),
                CompiledAction::AchieveGoal(Text::Template { source, .. }) => Some(source.clone()),
                _ => None,
            })
            .collect();
        goals.sort();
        goals.dedup();
        goals
    }

    /// The events some rule answers.
    pub fn handled_events(&self) -> Vec<&str> {
        let mut events: Vec<&str> = self
            .rules
            .iter()
            .flat_map(|r| r.events.iter().map(String::as_str))
            .collect();
        events.sort_unstable();
        events.dedup();
        events
    }

    /// See [`plan::plan`].
    pub fn plan(&self, webhook: &crate::chargify::Webhook, site: &str) -> Result<Plan, PlanError> {
        plan::plan(webhook, site, self)
    }
}

fn compile_contact(
    templates: &mut Templates,
    spec: &file::ContactMapping,
) -> Result<CompiledContact, RulesError> {
    let email = templates.compile("[contact] email", &spec.email)?;
    let mut fields = Vec::new();
    let mapped = [
        (ContactField::GivenName, "given_name", &spec.given_name),
        (ContactField::FamilyName, "family_name", &spec.family_name),
        (ContactField::Company, "company", &spec.company),
        (ContactField::Phone, "phone", &spec.phone),
        (ContactField::Line1, "address_line1", &spec.address_line1),
        (ContactField::Line2, "address_line2", &spec.address_line2),
        (ContactField::Locality, "locality", &spec.locality),
        (ContactField::Region, "region", &spec.region),
        (ContactField::PostalCode, "postal_code", &spec.postal_code),
        (ContactField::Country, "country", &spec.country),
        (
            ContactField::OptInReason,
            "opt_in_reason",
            &spec.opt_in_reason,
        ),
    ];
    for (field, name, source) in mapped {
        if let Some(source) = source {
            fields.push((
                field,
                templates.compile(&format!("[contact] {name}"), source)?,
            ));
        }
    }
    Ok(CompiledContact { email, fields })
}

/// `integration/call_name` → its parts, each 1–100 of A–Z a–z 0–9 _ - (a path segment
/// Keap's goal endpoint takes without escaping).
pub fn split_goal(goal: &str) -> Option<(&str, &str)> {
    let (integration, call_name) = goal.split_once('/')?;
    let ok = |s: &str| {
        (1..=100).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    (ok(integration) && ok(call_name)).then_some((integration, call_name))
}

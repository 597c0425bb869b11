//! One rule action, from the file to Keap: [`ActionSpec`] is what the rules file says,
//! [`CompiledAction`] the same with its templates checked at load, and [`Action`] what it asks
//! of Keap for one webhook. A new kind of action is one variant in each, here, and its Keap
//! call in `crate::apply`.

use super::template::{TemplateError, Templates, Text};
use super::{split_goal, RulesError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An action as written in the rules file.
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
    /// Obsolete: every value now keeps its own Chargify time. Accepted so older files load.
    #[serde(default)]
    pub billing_state: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TagListSpec {
    Tags(Vec<TagRefSpec>),
    Detailed {
        tags: Vec<TagRefSpec>,
        /// Obsolete (see [`SetFieldsSpec::billing_state`]); accepted so older files load.
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
    /// Obsolete (see [`SetFieldsSpec::billing_state`]); accepted so older files load.
    #[serde(default)]
    pub billing_state: bool,
}

/// A tag by Keap id or by exact name (resolved through the tag directory).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum TagRef {
    Id(i64),
    Name(String),
}

impl std::fmt::Display for TagRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "#{id}"),
            Self::Name(name) => write!(f, "{name:?}"),
        }
    }
}

/// One Keap change asked for by one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Action {
    /// Write the `[contact]` fields of the webhook's customer.
    UpsertContact,
    /// Custom fields by label.
    SetFields {
        fields: Vec<(String, String)>,
    },
    ApplyTags {
        tags: Vec<TagRef>,
    },
    RemoveTags {
        tags: Vec<TagRef>,
    },
    /// Apply `keep`, remove the group's `others`.
    KeepOneTag {
        group: String,
        keep: TagRef,
        others: Vec<TagRef>,
    },
    AchieveGoal {
        integration: String,
        call_name: String,
    },
    AddNote {
        title: String,
        body: String,
    },
}

impl Action {
    /// Goals and notes happen again if sent again (Keap has no idempotency keys): each is a
    /// step, recorded in the webhook's idempotency record. Everything else is a value written
    /// to Keap, which converges (see `crate::converge`).
    pub fn is_step(&self) -> bool {
        matches!(self, Self::AchieveGoal { .. } | Self::AddNote { .. })
    }
}

/// A tag reference whose name may be a template.
#[derive(Debug, Clone)]
pub(crate) enum CompiledTag {
    Id(i64),
    Name(Text),
}

/// An action with its templates compiled and checked.
#[derive(Debug, Clone)]
pub(crate) enum CompiledAction {
    UpsertContact,
    SetFields(Vec<(String, Text)>),
    ApplyTags(Vec<CompiledTag>),
    RemoveTags(Vec<CompiledTag>),
    KeepOneTag { group: String, key: Text },
    AchieveGoal(Text),
    AddNote { title: Text, body: Text },
}

/// What rendering an action gave: the action, nothing (every value rendered empty), or a note
/// for the operator (a state with no tag in its group).
pub(crate) enum Rendered {
    Action(Action),
    Nothing,
    Note(String),
}

impl CompiledAction {
    /// Checks and compiles `spec`, the `index`th action (0-based) of rule `rule`.
    pub(crate) fn compile(
        spec: &ActionSpec,
        rule: &str,
        index: usize,
        templates: &mut Templates,
        groups: &BTreeMap<String, BTreeMap<String, TagRef>>,
    ) -> Result<Self, RulesError> {
        let at = |what: &str| format!("rule {rule:?} action {} {what}", index + 1);
        let tags = |templates: &mut Templates, list: &TagListSpec| {
            let mut tags = Vec::new();
            for (j, tag) in list.tags().iter().enumerate() {
                tags.push(match tag {
                    TagRefSpec::Id(id) => CompiledTag::Id(*id),
                    TagRefSpec::Name(name) => {
                        CompiledTag::Name(templates.compile(&at(&format!("tag {}", j + 1)), name)?)
                    }
                });
            }
            Ok::<_, TemplateError>(tags)
        };
        Ok(match spec {
            ActionSpec::UpsertContact(_) => Self::UpsertContact,
            ActionSpec::SetFields(spec) => {
                let mut fields = Vec::new();
                for (label, source) in &spec.fields {
                    if label.trim().is_empty() {
                        return Err(RulesError::BadAction {
                            rule: rule.to_owned(),
                            detail: "set_fields has an empty field label".into(),
                        });
                    }
                    let text = templates.compile(&at(&format!("field {label:?}")), source)?;
                    fields.push((label.trim().to_owned(), text));
                }
                Self::SetFields(fields)
            }
            ActionSpec::ApplyTags(list) => Self::ApplyTags(tags(templates, list)?),
            ActionSpec::RemoveTags(list) => Self::RemoveTags(tags(templates, list)?),
            ActionSpec::KeepOneTag(spec) => {
                if !groups.contains_key(&spec.group) {
                    return Err(RulesError::UnknownGroup {
                        rule: rule.to_owned(),
                        group: spec.group.clone(),
                    });
                }
                Self::KeepOneTag {
                    group: spec.group.clone(),
                    key: templates.compile(&at("key"), &spec.key)?,
                }
            }
            ActionSpec::AchieveGoal(goal) => {
                let text = templates.compile(&at("goal"), goal)?;
                let well_formed = match &text {
                    Text::Literal(goal) => split_goal(goal).is_some(),
                    Text::Template { .. } => goal.contains('/'),
                };
                if !well_formed {
                    return Err(RulesError::BadGoal {
                        rule: rule.to_owned(),
                        goal: goal.clone(),
                    });
                }
                Self::AchieveGoal(text)
            }
            ActionSpec::AddNote(spec) => Self::AddNote {
                title: templates.compile(&at("note title"), &spec.title)?,
                body: templates.compile(&at("note body"), &spec.body)?,
            },
        })
    }

    /// This action for one webhook, whose template context is `ctx`.
    pub(crate) fn render(
        &self,
        rule: &str,
        templates: &Templates,
        groups: &BTreeMap<String, BTreeMap<String, TagRef>>,
        ctx: &minijinja::Value,
    ) -> Result<Rendered, super::PlanError> {
        let render = |t: &Text| templates.render(t, ctx);
        let tags = |tags: &[CompiledTag]| -> Result<Vec<TagRef>, TemplateError> {
            let mut out = Vec::new();
            for tag in tags {
                match tag {
                    CompiledTag::Id(id) => out.push(TagRef::Id(*id)),
                    CompiledTag::Name(text) => {
                        let name = render(text)?;
                        // "Plan: " with no product handle names no tag.
                        if !name.is_empty() && !name.ends_with(':') {
                            out.push(TagRef::Name(name));
                        }
                    }
                }
            }
            Ok(out)
        };
        let some = |action: Option<Action>| action.map_or(Rendered::Nothing, Rendered::Action);
        Ok(match self {
            Self::UpsertContact => Rendered::Action(Action::UpsertContact),
            Self::SetFields(fields) => {
                let mut values = Vec::new();
                for (label, text) in fields {
                    let value = render(text)?;
                    if !value.is_empty() {
                        values.push((label.clone(), value));
                    }
                }
                some((!values.is_empty()).then_some(Action::SetFields { fields: values }))
            }
            Self::ApplyTags(list) => {
                let tags = tags(list)?;
                some((!tags.is_empty()).then_some(Action::ApplyTags { tags }))
            }
            Self::RemoveTags(list) => {
                let tags = tags(list)?;
                some((!tags.is_empty()).then_some(Action::RemoveTags { tags }))
            }
            Self::KeepOneTag { group, key } => {
                let key = render(key)?;
                let members = groups.get(group);
                match members.and_then(|m| m.get(&key)) {
                    Some(keep) => Rendered::Action(Action::KeepOneTag {
                        group: group.clone(),
                        keep: keep.clone(),
                        others: members
                            .into_iter()
                            .flat_map(|m| m.values())
                            .filter(|t| *t != keep)
                            .cloned()
                            .collect(),
                    }),
                    None => Rendered::Note(format!(
                        "rule {rule:?}: tag group {group:?} has no tag for {key:?}; its tags are left as they are"
                    )),
                }
            }
            Self::AchieveGoal(text) => {
                let goal = render(text)?;
                let Some((integration, call_name)) = split_goal(&goal) else {
                    return Err(super::PlanError::BadGoal {
                        rule: rule.to_owned(),
                        goal,
                    });
                };
                Rendered::Action(Action::AchieveGoal {
                    integration: integration.to_owned(),
                    call_name: call_name.to_owned(),
                })
            }
            Self::AddNote { title, body } => {
                let title = render(title)?;
                let body = render(body)?;
                some(
                    (!title.is_empty() || !body.is_empty())
                        .then_some(Action::AddNote { title, body }),
                )
            }
        })
    }

    /// The fixed tag names this action names (for `rules check`).
    pub(crate) fn literal_tag_names(&self) -> Vec<String> {
        match self {
            Self::ApplyTags(tags) | Self::RemoveTags(tags) => tags
                .iter()
                .filter_map(|t| match t {
                    CompiledTag::Name(Text::Literal(name)) => Some(name.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

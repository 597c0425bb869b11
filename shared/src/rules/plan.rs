//! `plan(webhook, rules)`: the Keap actions a webhook asks for. Pure: no I/O, no clock, so
//! the processor, the CLI's `plan` and the tests all see the same answer for the same body.

use super::template::{context, context_json, parse_chargify_time, TemplateError, Text};
use super::{split_goal, CompiledAction, CompiledTag, ContactField, OnStale, RuleSet};
use crate::chargify::Webhook;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

/// A tag by Keap id or by exact name (resolved through the tag directory).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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

/// One Keap change.
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
    /// Goals and notes happen again if sent again (Keap has no idempotency keys), so each
    /// is recorded as done the moment it succeeds.
    pub fn is_repeatable(&self) -> bool {
        !matches!(self, Self::AchieveGoal { .. } | Self::AddNote { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedAction {
    pub rule: String,
    pub action: Action,
    /// Changes billing-state tags or fields: never applied from a stale event.
    pub billing_state: bool,
    pub on_stale: OnStale,
}

impl Serialize for OnStale {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            OnStale::ApplyOthers => "apply_others",
            OnStale::SkipAll => "skip_all",
        })
    }
}

/// The `[contact]` mapping rendered for this webhook; `None` = leave as it is in Keap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContactDetails {
    pub email: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub company: Option<String>,
    pub phone: Option<String>,
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub locality: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    /// As Chargify sends it (ISO 3166-1 alpha-2, usually).
    pub country: Option<String>,
    pub opt_in_reason: Option<String>,
}

/// Which subscription state an event reports, and as of when (for the stale-event guard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionVersion {
    pub id: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
    pub state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub webhook_id: String,
    pub event: String,
    pub site: String,
    /// Names of the rules that matched, in file order.
    pub rules: Vec<String>,
    /// Chargify customer id, the key of the identity map.
    pub customer_id: Option<String>,
    pub contact: ContactDetails,
    pub subscription: Option<SubscriptionVersion>,
    pub actions: Vec<PlannedAction>,
    /// Things the operator should know (a state with no tag in its group, say).
    pub notes: Vec<String>,
}

impl Plan {
    /// Nothing to do in Keap: the webhook is acknowledged and counted.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// The actions to run, given whether the event is older than the state already applied.
    pub fn effective_actions(&self, stale: bool) -> Vec<&PlannedAction> {
        self.actions
            .iter()
            .filter(|a| !stale || (!a.billing_state && a.on_stale == OnStale::ApplyOthers))
            .collect()
    }
}

/// A webhook the rules cannot turn into actions. Permanent: the same body fails the same way.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("rule {rule:?} produced goal {goal:?}, which is not `integration/call_name`")]
    BadGoal { rule: String, goal: String },
}

/// The Keap actions the rules ask for, for a verified webhook of `site`.
pub fn plan(webhook: &Webhook, site: &str, rules: &RuleSet) -> Result<Plan, PlanError> {
    let json = context_json(webhook, site);
    let ctx = context(webhook, site);
    let text = |path: &[&str]| -> Option<String> {
        let mut value = &json;
        for key in path {
            value = value.get(key)?;
        }
        value
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let state = text(&["subscription", "state"]);
    let previous_state = text(&["subscription", "previous_state"]);
    let product_handle = text(&["product", "handle"]);
    let product_family = text(&["product_family", "handle"]);
    let matches = |allowed: &[String], value: &Option<String>| {
        allowed.is_empty() || value.as_ref().is_some_and(|v| allowed.contains(v))
    };

    let mut plan = Plan {
        webhook_id: webhook.id.clone(),
        event: webhook.event.clone(),
        site: site.to_owned(),
        rules: Vec::new(),
        customer_id: text(&["customer", "id"]).or_else(|| webhook.customer_id.clone()),
        contact: ContactDetails::default(),
        subscription: text(&["subscription", "id"]).map(|id| SubscriptionVersion {
            id,
            updated_at: text(&["subscription", "updated_at"])
                .as_deref()
                .and_then(parse_chargify_time),
            state: state.clone(),
        }),
        actions: Vec::new(),
        notes: Vec::new(),
    };

    for rule in &rules.rules {
        let applies = rule.events.contains(&webhook.event)
            && matches(&rule.when.state, &state)
            && matches(&rule.when.previous_state, &previous_state)
            && matches(&rule.when.product_handle, &product_handle)
            && matches(&rule.when.product_family, &product_family);
        if !applies {
            continue;
        }
        plan.rules.push(rule.name.clone());
        for action in &rule.actions {
            let render = |t: &Text| rules.templates.render(t, &ctx);
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
            let (action, billing_state) = match action {
                CompiledAction::UpsertContact => (Some(Action::UpsertContact), false),
                CompiledAction::SetFields {
                    fields,
                    billing_state,
                } => {
                    let mut values = Vec::new();
                    for (label, text) in fields {
                        let value = render(text)?;
                        if !value.is_empty() {
                            values.push((label.clone(), value));
                        }
                    }
                    let action =
                        (!values.is_empty()).then_some(Action::SetFields { fields: values });
                    (action, *billing_state)
                }
                CompiledAction::ApplyTags {
                    tags: list,
                    billing_state,
                } => {
                    let tags = tags(list)?;
                    (
                        (!tags.is_empty()).then_some(Action::ApplyTags { tags }),
                        *billing_state,
                    )
                }
                CompiledAction::RemoveTags {
                    tags: list,
                    billing_state,
                } => {
                    let tags = tags(list)?;
                    (
                        (!tags.is_empty()).then_some(Action::RemoveTags { tags }),
                        *billing_state,
                    )
                }
                CompiledAction::KeepOneTag { group, key } => {
                    let key = render(key)?;
                    let members = rules.groups.get(group);
                    match members.and_then(|m| m.get(&key)) {
                        Some(keep) => {
                            let others = members
                                .into_iter()
                                .flat_map(|m| m.values())
                                .filter(|t| *t != keep)
                                .cloned()
                                .collect();
                            (
                                Some(Action::KeepOneTag {
                                    group: group.clone(),
                                    keep: keep.clone(),
                                    others,
                                }),
                                true,
                            )
                        }
                        None => {
                            plan.notes.push(format!(
                                "rule {:?}: tag group {group:?} has no tag for {key:?}; its tags are left as they are",
                                rule.name
                            ));
                            (None, true)
                        }
                    }
                }
                CompiledAction::AchieveGoal(text) => {
                    let goal = render(text)?;
                    let Some((integration, call_name)) = split_goal(&goal) else {
                        return Err(PlanError::BadGoal {
                            rule: rule.name.clone(),
                            goal,
                        });
                    };
                    (
                        Some(Action::AchieveGoal {
                            integration: integration.to_owned(),
                            call_name: call_name.to_owned(),
                        }),
                        false,
                    )
                }
                CompiledAction::AddNote {
                    title,
                    body,
                    billing_state,
                } => {
                    let title = render(title)?;
                    let body = render(body)?;
                    let action = (!title.is_empty() || !body.is_empty())
                        .then_some(Action::AddNote { title, body });
                    (action, *billing_state)
                }
            };
            if let Some(action) = action {
                plan.actions.push(PlannedAction {
                    rule: rule.name.clone(),
                    action,
                    billing_state,
                    on_stale: rule.on_stale,
                });
            }
        }
    }

    if !plan.actions.is_empty() {
        plan.contact = render_contact(rules, &ctx)?;
    }
    Ok(plan)
}

fn render_contact(
    rules: &RuleSet,
    ctx: &minijinja::Value,
) -> Result<ContactDetails, TemplateError> {
    let render = |t: &Text| -> Result<Option<String>, TemplateError> {
        let value = rules.templates.render(t, ctx)?;
        Ok((!value.is_empty()).then_some(value))
    };
    let mut details = ContactDetails {
        email: render(&rules.contact.email)?,
        ..ContactDetails::default()
    };
    for (field, text) in &rules.contact.fields {
        let value = render(text)?;
        let slot = match field {
            ContactField::GivenName => &mut details.given_name,
            ContactField::FamilyName => &mut details.family_name,
            ContactField::Company => &mut details.company,
            ContactField::Phone => &mut details.phone,
            ContactField::Line1 => &mut details.line1,
            ContactField::Line2 => &mut details.line2,
            ContactField::Locality => &mut details.locality,
            ContactField::Region => &mut details.region,
            ContactField::PostalCode => &mut details.postal_code,
            ContactField::Country => &mut details.country,
            ContactField::OptInReason => &mut details.opt_in_reason,
        };
        *slot = value;
    }
    Ok(details)
}

/// The plan as JSON, with the template context, for `plan --json`.
pub fn explain(webhook: &Webhook, site: &str, plan: &Plan) -> Value {
    serde_json::json!({ "plan": plan, "context": context_json(webhook, site) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn plan_for(body: &str) -> Plan {
        let rules = RuleSet::default_rules().expect("default rules load");
        let webhook = Webhook::parse(body.as_bytes()).expect("fixture parses");
        plan(&webhook, "acme", &rules).expect("plans")
    }

    /// A reference body with its event key replaced and extra fields appended, for the event
    /// types the reference has no body for (they share the subscription payload layout).
    fn variant(body: &str, event: &str, extra: &str) -> String {
        let start = body.find("event=").expect("has event") + "event=".len();
        let end = body[start..].find('&').map_or(body.len(), |i| start + i);
        format!("{}{event}{}{extra}", &body[..start], &body[end..])
    }

    fn name(tag: &str) -> TagRef {
        TagRef::Name(tag.into())
    }

    fn kinds(plan: &Plan) -> Vec<&Action> {
        plan.actions.iter().map(|a| &a.action).collect()
    }

    #[test]
    fn signup_creates_the_contact_with_state_plan_tag_and_goal() {
        let plan = plan_for(fixtures::SIGNUP_SUCCESS);
        assert_eq!(plan.rules, ["signup"]);
        let actions = kinds(&plan);
        assert_eq!(actions[0], &Action::UpsertContact);
        let Action::SetFields { fields } = actions[1] else {
            panic!("fields expected, got {:?}", actions[1]);
        };
        assert!(fields
            .iter()
            .any(|(l, v)| l == "Chargify State" && !v.is_empty()));
        assert!(fields.iter().any(|(l, _)| l == "Chargify MRR"));
        let Action::KeepOneTag { keep, others, .. } = actions[2] else {
            panic!("keep_one_tag expected, got {:?}", actions[2]);
        };
        assert!(matches!(keep, TagRef::Name(n) if n.starts_with("Billing: ")));
        assert_eq!(others.len(), 6);
        assert!(
            matches!(actions[3], Action::ApplyTags { tags } if matches!(&tags[0], TagRef::Name(n) if n.starts_with("Plan: ")))
        );
        assert_eq!(
            actions[4],
            &Action::AchieveGoal {
                integration: "chargify".into(),
                call_name: "signup".into()
            }
        );
        assert!(plan
            .contact
            .email
            .as_deref()
            .is_some_and(|e| e.contains('@')));
        assert!(plan.customer_id.is_some());
        assert!(plan
            .subscription
            .as_ref()
            .is_some_and(|s| s.updated_at.is_some()));
    }

    #[test]
    fn state_change_keeps_exactly_one_state_tag_and_fires_the_state_goal() {
        // The capture moves the subscription from `active` to `inactive`, a state our group has
        // no tag for: the tags stay as they are and the plan says why.
        let plan = plan_for(fixtures::SUBSCRIPTION_STATE_CHANGE);
        assert!(
            plan.notes.iter().any(|n| n.contains("\"inactive\"")),
            "{:?}",
            plan.notes
        );
        assert!(!kinds(&plan)
            .iter()
            .any(|a| matches!(a, Action::KeepOneTag { .. })));

        let canceled = fixtures::SUBSCRIPTION_STATE_CHANGE.replace(
            "payload[subscription][state]=inactive",
            "payload[subscription][state]=canceled",
        );
        let plan = plan_for(&canceled);
        let actions = kinds(&plan);
        assert!(actions.contains(&&Action::KeepOneTag {
            group: "billing_state".into(),
            keep: name("Billing: Canceled"),
            others: [
                "Billing: Active",
                "Billing: Expired",
                "Billing: On Hold",
                "Billing: Past Due",
                "Billing: Trialing",
                "Billing: Unpaid"
            ]
            .into_iter()
            .map(name)
            .collect(),
        }));
        assert!(actions.contains(&&Action::AchieveGoal {
            integration: "chargify".into(),
            call_name: "canceled".into()
        }));
        assert!(plan.actions.iter().filter(|a| a.billing_state).count() >= 2);
    }

    #[test]
    fn payment_failure_tags_and_fires_the_goal_and_payment_success_clears_the_tag() {
        let plan = plan_for(fixtures::PAYMENT_FAILURE);
        assert_eq!(
            kinds(&plan),
            [
                &Action::ApplyTags {
                    tags: vec![name("Billing: Payment Failed")]
                },
                &Action::AchieveGoal {
                    integration: "chargify".into(),
                    call_name: "payment_failed".into()
                }
            ]
        );
        for body in [
            fixtures::PAYMENT_SUCCESS.to_owned(),
            variant(fixtures::PAYMENT_FAILURE, "renewal_success", ""),
        ] {
            let plan = plan_for(&body);
            assert_eq!(
                kinds(&plan),
                [&Action::RemoveTags {
                    tags: vec![name("Billing: Payment Failed")]
                }]
            );
        }
    }

    #[test]
    fn trial_end_notice_tags_and_fires_the_goal() {
        let body = variant(fixtures::SIGNUP_SUCCESS, "trial_end_notice", "");
        assert_eq!(
            kinds(&plan_for(&body)),
            [
                &Action::ApplyTags {
                    tags: vec![name("Billing: Trial Ending")]
                },
                &Action::AchieveGoal {
                    integration: "chargify".into(),
                    call_name: "trial_ending".into()
                }
            ]
        );
    }

    #[test]
    fn product_change_swaps_the_plan_tags() {
        let body = variant(
            fixtures::PAYMENT_FAILURE,
            "subscription_product_change",
            "&payload[previous_product][handle]=basic&payload[previous_product][name]=Basic",
        );
        let plan = plan_for(&body);
        let actions = kinds(&plan);
        assert!(actions.contains(&&Action::RemoveTags {
            tags: vec![name("Plan: basic")]
        }));
        assert!(actions.contains(&&Action::ApplyTags {
            tags: vec![name("Plan: handle_6a9273b8a")]
        }));
        assert!(plan.actions.iter().all(|a| a.billing_state));
    }

    #[test]
    fn customer_update_writes_the_contact_fields() {
        let plan = plan_for(fixtures::CUSTOMER_UPDATE);
        assert_eq!(kinds(&plan), [&Action::UpsertContact]);
        assert!(plan.contact.email.is_some());
        assert!(plan.contact.given_name.is_some());
        assert!(plan.subscription.is_none());
    }

    #[test]
    fn other_events_plan_nothing() {
        for body in [fixtures::TEST, fixtures::STATEMENT_SETTLED] {
            let plan = plan_for(body);
            assert!(plan.is_empty(), "{:?}", plan.actions);
            assert!(plan.rules.is_empty());
            assert_eq!(plan.contact, ContactDetails::default());
        }
    }

    #[test]
    fn a_stale_event_keeps_only_the_actions_that_are_not_about_billing_state() {
        let canceled = fixtures::SUBSCRIPTION_STATE_CHANGE.replace(
            "payload[subscription][state]=inactive",
            "payload[subscription][state]=canceled",
        );
        let plan = plan_for(&canceled);
        let fresh = plan.effective_actions(false);
        let stale = plan.effective_actions(true);
        assert_eq!(fresh.len(), plan.actions.len());
        assert!(stale.iter().all(|a| !a.billing_state));
        assert!(stale.len() < fresh.len());
    }

    #[test]
    fn filters_narrow_a_rule_to_states_and_products() {
        let text = DEFAULT_RULES_WITH_FILTER;
        let rules = RuleSet::from_toml(text).expect("loads");
        let webhook = Webhook::parse(fixtures::PAYMENT_FAILURE.as_bytes()).expect("parses");
        let plan = plan(&webhook, "acme", &rules).expect("plans");
        assert_eq!(plan.rules, ["pro only"]);
        let other = fixtures::PAYMENT_FAILURE.replace("handle_6a9273b8a", "basic");
        let webhook = Webhook::parse(other.as_bytes()).expect("parses");
        assert!(plan_is_empty(&webhook, &rules));
    }

    fn plan_is_empty(webhook: &Webhook, rules: &RuleSet) -> bool {
        plan(webhook, "acme", rules).expect("plans").is_empty()
    }

    const DEFAULT_RULES_WITH_FILTER: &str = r#"
version = 1
[contact]
email = "{{ customer.email }}"
[[rules]]
name = "pro only"
events = ["payment_failure"]
when = { state = ["active"], product_handle = ["handle_6a9273b8a"], product_family = ["acme-online"] }
actions = [{ add_note = { title = "Payment failed", body = "{{ transaction.memo }}" } }]
"#;

    use super::super::{RulesError, DEFAULT_RULES};

    /// The Maxio spec's subscription example in `state`, as a snapshot body.
    fn snapshot_in(state: &str) -> String {
        let mut raw: Value =
            serde_json::from_str(fixtures::API_SUBSCRIPTION).expect("fixture is JSON");
        raw["subscription"]["state"] = Value::String(state.into());
        crate::chargify::snapshot::snapshot_body(
            "snapshot-15236915-1",
            "acme",
            &raw["subscription"],
        )
    }

    #[test]
    fn a_snapshot_sets_contact_fields_and_exactly_one_state_tag_and_fires_nothing() {
        let group = [
            ("trialing", "Billing: Trialing"),
            ("active", "Billing: Active"),
            ("past_due", "Billing: Past Due"),
            ("canceled", "Billing: Canceled"),
            ("expired", "Billing: Expired"),
            ("on_hold", "Billing: On Hold"),
            ("unpaid", "Billing: Unpaid"),
        ];
        for (state, tag) in group {
            let plan = plan_for(&snapshot_in(state));
            assert_eq!(plan.rules, ["snapshot"], "{state}");
            assert_eq!(plan.event, "subscription_snapshot");
            assert_eq!(plan.customer_id.as_deref(), Some("14714298"));
            assert_eq!(plan.contact.email.as_deref(), Some("curtis@example.com"));
            assert_eq!(plan.contact.locality.as_deref(), Some("Boulder"));
            let version = plan.subscription.as_ref().expect("a subscription");
            assert_eq!(version.id, "15236915");
            assert_eq!(
                version.updated_at,
                Some(time::macros::datetime!(2016-11-14 15:24:41 -05:00))
            );
            let actions = kinds(&plan);
            assert_eq!(actions[0], &Action::UpsertContact);
            let Action::SetFields { fields } = actions[1] else {
                panic!("fields expected, got {:?}", actions[1]);
            };
            assert!(fields.contains(&("Chargify State".into(), state.into())));
            assert!(fields.contains(&("Chargify Plan".into(), "$10 Basic Plan".into())));
            assert!(fields.contains(&("Chargify Subscription ID".into(), "15236915".into())));
            let Action::KeepOneTag { keep, others, .. } = actions[2] else {
                panic!("keep_one_tag expected, got {:?}", actions[2]);
            };
            assert_eq!(keep, &name(tag));
            assert_eq!(others.len(), 6);
            assert!(!others.contains(keep));
            assert_eq!(
                actions[3],
                &Action::ApplyTags {
                    tags: vec![name("Plan: basic")]
                }
            );
            assert_eq!(actions.len(), 4, "{state}: {actions:?}");
            assert!(plan
                .actions
                .iter()
                .all(|a| a.action.is_repeatable() && a.on_stale == OnStale::SkipAll));
        }
        // A transient or unknown state has no tag: the contact is still brought in line.
        for state in ["assessing", "some_future_state"] {
            let plan = plan_for(&snapshot_in(state));
            assert!(!kinds(&plan)
                .iter()
                .any(|a| matches!(a, Action::KeepOneTag { .. })));
            assert_eq!(kinds(&plan)[0], &Action::UpsertContact);
        }
    }

    #[test]
    fn the_default_rules_load_and_name_their_tags_and_fields() {
        let rules = RuleSet::from_toml(DEFAULT_RULES).expect("default rules load");
        assert!(rules
            .fixed_tag_names()
            .contains(&"Billing: Payment Failed".to_owned()));
        assert!(rules
            .custom_field_labels()
            .contains(&"Chargify State".to_owned()));
        assert!(rules.handled_events().contains(&"trial_end_notice"));
    }

    #[test]
    fn bad_rules_files_are_refused_with_a_reason() {
        let base = "version = 1\n[contact]\nemail = \"{{ customer.email }}\"\n";
        type Expect = fn(&RulesError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("[[rules]]\nname = \"x\"\nevents = [\"signup_sucess\"]\nactions = []\n", |e| {
                matches!(e, RulesError::UnknownEvent { event, .. } if event == "signup_sucess")
            }),
            ("[[rules]]\nname = \"x\"\nevents = [\"signup_success\"]\nactions = [{ apply_tags = [\"{{ custmer.id }}\"] }]\n", |e| {
                matches!(e, RulesError::Template(TemplateError::UnknownName { .. }))
            }),
            ("[[rules]]\nname = \"x\"\nevents = [\"signup_success\"]\nactions = [{ keep_one_tag = { group = \"nope\", key = \"a\" } }]\n", |e| {
                matches!(e, RulesError::UnknownGroup { .. })
            }),
            ("[[rules]]\nname = \"x\"\nevents = [\"signup_success\"]\nactions = [{ achieve_goal = \"no-slash\" }]\n", |e| {
                matches!(e, RulesError::BadGoal { .. })
            }),
            ("[[rules]]\nname = \"x\"\nevents = [\"signup_success\"]\nactions = [{ fire_rocket = {} }]\n", |e| {
                matches!(e, RulesError::Syntax(_))
            }),
        ];
        for (rules, expected) in cases {
            let err = RuleSet::from_toml(&format!("{base}{rules}")).expect_err(rules);
            assert!(expected(&err), "{rules} gave {err}");
            assert!(!err.to_string().is_empty());
        }
        assert!(matches!(
            RuleSet::from_toml("version = 2\n[contact]\nemail = \"x\"\n"),
            Err(RulesError::Version { found: 2 })
        ));
    }
}

//! `plan(webhook, rules)`: the Keap actions a webhook asks for. Pure: no I/O, no clock, so
//! the processor, the CLI's `plan` and the tests all see the same answer for the same body.

use super::action::Rendered;
use super::file::Filter;
use super::template::{context, context_json, parse_chargify_time, TemplateError, Text};
use super::{Action, CompiledRule, ContactField, OnStale, OnUncertain, RuleSet};
use crate::chargify::Webhook;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedAction {
    pub rule: String,
    pub action: Action,
    /// For goals and notes: whether they fire when the webhook is stale.
    pub on_stale: OnStale,
    /// For goals and notes: what a retry does when the call's outcome is unknown.
    pub on_uncertain: OnUncertain,
}

impl Serialize for OnStale {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            OnStale::Skip => "skip",
            OnStale::Fire => "fire",
        })
    }
}

impl Serialize for OnUncertain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            OnUncertain::Skip => "skip",
            OnUncertain::Repeat => "repeat",
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

/// Which subscription an event reports, in which state, as of when.
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
    /// `customer.updated_at`: when Chargify last changed the contact data this body carries.
    #[serde(with = "time::serde::rfc3339::option")]
    pub customer_updated_at: Option<OffsetDateTime>,
    /// When the event happened, as well as the body tells: the transaction's `created_at`,
    /// else the subscription's `updated_at`, else the customer's. `None` when it carries none.
    #[serde(with = "time::serde::rfc3339::option")]
    pub event_time: Option<OffsetDateTime>,
    pub actions: Vec<PlannedAction>,
    /// Things the operator should know (a state with no tag in its group, say).
    pub notes: Vec<String>,
}

impl Plan {
    /// Nothing to do in Keap: the webhook is acknowledged and counted.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
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

/// The Keap actions the rules ask for, for a verified webhook of `site`: the rules that match,
/// in file order, each rendering its actions against the webhook's template context.
pub fn plan(webhook: &Webhook, site: &str, rules: &RuleSet) -> Result<Plan, PlanError> {
    // Built once: the JSON answers the filters and clocks, its template form the templates.
    let json = context_json(webhook, site);
    let ctx = context(&json);
    let facts = Facts::of(&json);
    let mut plan = facts.plan_header(webhook, site);
    for rule in &rules.rules {
        if rule.events.contains(&webhook.event) && facts.pass(&rule.when) {
            plan.rules.push(rule.name.clone());
            add_actions(&mut plan, rule, rules, &ctx)?;
        }
    }
    if !plan.actions.is_empty() {
        plan.contact = render_contact(rules, &ctx)?;
    }
    Ok(plan)
}

/// What the filters and the plan's clocks read of a webhook's context.
struct Facts {
    state: Option<String>,
    previous_state: Option<String>,
    product_handle: Option<String>,
    product_family: Option<String>,
    subscription_id: Option<String>,
    customer_id: Option<String>,
    subscription_updated_at: Option<OffsetDateTime>,
    customer_updated_at: Option<OffsetDateTime>,
    transaction_created_at: Option<OffsetDateTime>,
}

impl Facts {
    fn of(json: &Value) -> Self {
        // A value at `path`, trimmed; blank is absent.
        let text = |path: &[&str]| -> Option<String> {
            let mut value = json;
            for key in path {
                value = value.get(key)?;
            }
            value
                .as_str()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let time = |path: &[&str]| text(path).as_deref().and_then(parse_chargify_time);
        Self {
            state: text(&["subscription", "state"]),
            previous_state: text(&["subscription", "previous_state"]),
            product_handle: text(&["product", "handle"]),
            product_family: text(&["product_family", "handle"]),
            subscription_id: text(&["subscription", "id"]),
            customer_id: text(&["customer", "id"]),
            subscription_updated_at: time(&["subscription", "updated_at"]),
            customer_updated_at: time(&["customer", "updated_at"]),
            transaction_created_at: time(&["transaction", "created_at"]),
        }
    }

    /// Whether a rule's `when` lets this webhook through (an empty list allows anything).
    fn pass(&self, when: &Filter) -> bool {
        let matches = |allowed: &[String], value: &Option<String>| {
            allowed.is_empty() || value.as_ref().is_some_and(|v| allowed.contains(v))
        };
        let excluded = |denied: &[String], value: &Option<String>| {
            value.as_ref().is_some_and(|v| denied.contains(v))
        };
        matches(&when.state, &self.state)
            && !excluded(&when.state_not, &self.state)
            && matches(&when.previous_state, &self.previous_state)
            && matches(&when.product_handle, &self.product_handle)
            && matches(&when.product_family, &self.product_family)
    }

    /// The plan before any rule: which webhook, customer and subscription, and its clocks.
    fn plan_header(&self, webhook: &Webhook, site: &str) -> Plan {
        Plan {
            webhook_id: webhook.id.clone(),
            event: webhook.event.clone(),
            site: site.to_owned(),
            rules: Vec::new(),
            customer_id: self
                .customer_id
                .clone()
                .or_else(|| webhook.customer_id.clone()),
            contact: ContactDetails::default(),
            subscription: self.subscription_id.clone().map(|id| SubscriptionVersion {
                id,
                updated_at: self.subscription_updated_at,
                state: self.state.clone(),
            }),
            customer_updated_at: self.customer_updated_at,
            event_time: self
                .transaction_created_at
                .or(self.subscription_updated_at)
                .or(self.customer_updated_at),
            actions: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// A matching rule's actions, rendered against `ctx`, added to `plan` in the rule's order.
fn add_actions(
    plan: &mut Plan,
    rule: &CompiledRule,
    rules: &RuleSet,
    ctx: &minijinja::Value,
) -> Result<(), PlanError> {
    for action in &rule.actions {
        match action.render(&rule.name, &rules.templates, &rules.groups, ctx)? {
            Rendered::Action(action) => {
                let on_uncertain = rule.on_uncertain.unwrap_or(match action {
                    // A goal starts or moves a campaign: never twice (at most once).
                    Action::AchieveGoal { .. } => OnUncertain::Skip,
                    // A note is for people: a duplicate shows as one and harms nothing.
                    _ => OnUncertain::Repeat,
                });
                plan.actions.push(PlannedAction {
                    rule: rule.name.clone(),
                    action,
                    on_stale: rule.on_stale,
                    on_uncertain,
                });
            }
            Rendered::Note(note) => plan.notes.push(note),
            Rendered::Nothing => {}
        }
    }
    Ok(())
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
    use crate::rules::TagRef;

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
        // Leaving the trial (here: canceled) clears the trial notice's tag.
        assert_eq!(plan.rules, ["state change", "trial over"]);
        assert!(actions.contains(&&Action::RemoveTags {
            tags: vec![name("Billing: Trial Ending")]
        }));
        let trialing = fixtures::SUBSCRIPTION_STATE_CHANGE.replace(
            "payload[subscription][state]=inactive",
            "payload[subscription][state]=trialing",
        );
        assert_eq!(plan_for(&trialing).rules, ["state change"]);
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
    fn plans_carry_the_clocks_and_the_step_policies() {
        let signup = plan_for(fixtures::SIGNUP_SUCCESS);
        let sub = signup.subscription.as_ref().expect("a subscription");
        assert_eq!(
            sub.updated_at,
            Some(time::macros::datetime!(2012-09-09 11:38:33 -04:00))
        );
        assert_eq!(
            signup.customer_updated_at,
            Some(time::macros::datetime!(2012-09-09 11:38:32 -04:00))
        );
        assert_eq!(signup.event_time, sub.updated_at);
        let goal = signup
            .actions
            .iter()
            .find(|a| a.action.is_step())
            .expect("the signup goal");
        assert_eq!(
            goal.on_stale,
            OnStale::Fire,
            "a signup's goal fires even late"
        );
        assert_eq!(goal.on_uncertain, OnUncertain::Skip, "goals: at most once");

        let failure = plan_for(fixtures::PAYMENT_FAILURE);
        assert_eq!(
            failure.event_time,
            Some(time::macros::datetime!(2012-09-09 11:38:33 -04:00)),
            "a payment's time is its transaction's"
        );
        let goal = failure
            .actions
            .iter()
            .find(|a| a.action.is_step())
            .expect("goal");
        assert_eq!(
            goal.on_stale,
            OnStale::Skip,
            "a late failure starts no dunning"
        );

        let rules = RuleSet::from_toml(DEFAULT_RULES_WITH_FILTER).expect("loads");
        let webhook = Webhook::parse(fixtures::PAYMENT_FAILURE.as_bytes()).expect("parses");
        let note = plan(&webhook, "acme", &rules).expect("plans");
        assert_eq!(
            note.actions[0].on_uncertain,
            OnUncertain::Repeat,
            "notes: at least once"
        );
    }

    #[test]
    fn older_rules_files_still_load() {
        let text = r#"
version = 1
[contact]
email = "{{ customer.email }}"
[[rules]]
name = "old"
events = ["subscription_state_change"]
on_stale = "apply_others"
actions = [
  { set_fields = { billing_state = true, fields = { "State" = "{{ subscription.state }}" } } },
  { remove_tags = { tags = ["X"], billing_state = true } },
  { add_note = { title = "t", body = "b", billing_state = true } },
]
[[rules]]
name = "older"
events = ["signup_success"]
on_stale = "skip_all"
on_uncertain = "repeat"
actions = [{ achieve_goal = "a/b" }]
"#;
        let rules = RuleSet::from_toml(text).expect("obsolete keys are accepted");
        let webhook = Webhook::parse(fixtures::SIGNUP_SUCCESS.as_bytes()).expect("parses");
        let plan = plan(&webhook, "acme", &rules).expect("plans");
        assert_eq!(plan.actions[0].on_stale, OnStale::Skip);
        assert_eq!(plan.actions[0].on_uncertain, OnUncertain::Repeat);
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
            let trialing = state == "trialing";
            if trialing {
                assert_eq!(plan.rules, ["snapshot"]);
            } else {
                assert_eq!(plan.rules, ["snapshot", "trial over"], "{state}");
            }
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
            if trialing {
                assert_eq!(actions.len(), 4, "{state}: {actions:?}");
            } else {
                assert_eq!(
                    actions[4],
                    &Action::RemoveTags {
                        tags: vec![name("Billing: Trial Ending")]
                    }
                );
                assert_eq!(actions.len(), 5, "{state}: {actions:?}");
            }
            assert!(plan.actions.iter().all(|a| !a.action.is_step()));
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

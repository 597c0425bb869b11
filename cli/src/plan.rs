//! `cks plan <file|->`: the Keap actions the rules produce for one webhook body, without
//! touching anything. Uses the processor's own `plan` (pure), so what it shows is what the
//! processor would do (short of the stale-event guard, which needs the stored state).

use shared::chargify::{Webhook, WebhookError};
use shared::envelope::NO_SITE;
use shared::rules::plan::{explain, Plan, PlanError};
use shared::rules::{Action, OnStale, OnUncertain};
use shared::rules::{RuleSet, RulesError};
use std::io::Read;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PlanArgs {
    /// A webhook body as Chargify posts it (form-encoded), or `-` for standard input.
    input: PathBuf,
    /// Print the plan and its template context as JSON.
    #[arg(long)]
    json: bool,
    /// The site subdomain to plan for (default: the body's `payload[site][subdomain]`).
    #[arg(long)]
    site: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanCmdError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a Chargify webhook body: {0} (expected the raw form-encoded POST body)")]
    Webhook(#[from] WebhookError),
    #[error("rules: {0}")]
    Rules(#[from] RulesError),
    #[error("the rules cannot plan this webhook: {0}")]
    Plan(#[from] PlanError),
}

pub fn run(args: PlanArgs) -> Result<(), PlanCmdError> {
    let body = read_input(&args.input)?;
    let rules = RuleSet::from_env()?;
    let webhook = Webhook::parse(&body)?;
    let site = args
        .site
        .or_else(|| webhook.site_subdomain.clone())
        .unwrap_or_else(|| NO_SITE.to_owned());
    let plan = rules.plan(&webhook, &site)?;
    if args.json {
        let json = explain(&webhook, &site, &plan);
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    } else {
        print!("{}", render(&plan));
    }
    Ok(())
}

fn read_input(path: &PathBuf) -> Result<Vec<u8>, PlanCmdError> {
    let read = |source| PlanCmdError::Read {
        path: path.clone(),
        source,
    };
    if path.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).map_err(read)?;
        Ok(body)
    } else {
        std::fs::read(path).map_err(read)
    }
}

/// The plan as a heading, a table (rule, action, details, ordered by, kind) and
/// the plan's notes. The contact's values are not shown (personal data stays out of
/// terminals and CI logs); `--json` has them.
pub fn render(plan: &Plan) -> String {
    let mut out = format!(
        "webhook {} ({}) for site {}, customer {}\n",
        plan.webhook_id,
        plan.event,
        plan.site,
        plan.customer_id.as_deref().unwrap_or("-")
    );
    if plan.is_empty() {
        out.push_str("no rule asks for a Keap change: the webhook is acknowledged and counted\n");
    } else {
        out.push_str(&format!("rules matched: {}\n\n", plan.rules.join(", ")));
        let mut rows = vec![[
            "rule".to_owned(),
            "action".to_owned(),
            "details".to_owned(),
            "ordered by".to_owned(),
            "kind".to_owned(),
        ]];
        for planned in &plan.actions {
            let (action, details) = describe(&planned.action);
            let clock = match &planned.action {
                _ if planned.action.is_step() => "-",
                Action::UpsertContact => "customer.updated_at",
                _ => "subscription.updated_at",
            };
            let kind = if planned.action.is_step() {
                format!(
                    "step, once (stale: {}; uncertain: {})",
                    match planned.on_stale {
                        OnStale::Skip => "skip",
                        OnStale::Fire => "fire",
                    },
                    match planned.on_uncertain {
                        OnUncertain::Skip => "skip",
                        OnUncertain::Repeat => "repeat",
                    }
                )
            } else {
                "value (newest wins)".to_owned()
            };
            rows.push([
                planned.rule.clone(),
                action.to_owned(),
                details,
                clock.to_owned(),
                kind,
            ]);
        }
        out.push_str(&table(&rows));
    }
    for note in &plan.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(action: &Action) -> (&'static str, String) {
    match action {
        Action::UpsertContact => (
            "upsert_contact",
            "the customer's contact, by email ([contact] mapping)".into(),
        ),
        Action::SetFields { fields } => (
            "set_fields",
            fields
                .iter()
                .map(|(label, value)| format!("{label} = {value:?}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Action::ApplyTags { tags } => ("apply_tags", list(tags)),
        Action::RemoveTags { tags } => ("remove_tags", list(tags)),
        Action::KeepOneTag {
            group,
            keep,
            others,
        } => (
            "keep_one_tag",
            format!(
                "group {group}: apply {keep}, remove the other {}",
                others.len()
            ),
        ),
        Action::AchieveGoal {
            integration,
            call_name,
        } => ("achieve_goal", format!("{integration}/{call_name}")),
        Action::AddNote { title, .. } => ("add_note", format!("{title:?}")),
    }
}

/// Left-aligned columns separated by two spaces, with a rule under the header.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String; N]| {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        format!("{}\n", cells.join("  ").trim_end())
    };
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        out.push_str(&line(row));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("{}\n", rule.join("  ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::fixtures;

    fn plan_of(body: &str) -> Plan {
        let rules = RuleSet::default_rules().expect("default rules");
        let webhook = Webhook::parse(body.as_bytes()).expect("parses");
        let site = webhook.site_subdomain.clone().unwrap_or_default();
        rules.plan(&webhook, &site).expect("plans")
    }

    #[test]
    fn every_sample_renders_its_actions_without_personal_data() {
        for (name, body) in fixtures::samples() {
            let plan = plan_of(&body);
            let text = render(&plan);
            assert!(
                text.starts_with(&format!("webhook {} ", plan.webhook_id)),
                "{name}"
            );
            for planned in &plan.actions {
                assert!(text.contains(&planned.rule), "{name}: {text}");
                assert!(text.contains(describe(&planned.action).0), "{name}: {text}");
            }
            if let Some(email) = &plan.contact.email {
                assert!(!text.contains(email.as_str()), "{name} shows the email");
            }
            if plan.is_empty() {
                assert!(text.contains("no rule asks for a Keap change"), "{name}");
            }
        }
    }

    #[test]
    fn signup_shows_the_goal_as_a_step_and_values_with_their_clock() {
        let text = render(&plan_of(fixtures::SIGNUP_SUCCESS));
        let goal = text
            .lines()
            .find(|l| l.contains("achieve_goal"))
            .expect("a goal row");
        assert!(
            goal.contains("step, once (stale: fire; uncertain: skip)"),
            "{goal}"
        );
        let tag = text
            .lines()
            .find(|l| l.contains("keep_one_tag"))
            .expect("a tag row");
        assert!(tag.contains("subscription.updated_at"), "{tag}");
        assert!(tag.contains("value (newest wins)"), "{tag}");
        assert!(text.contains("rule  "), "header row: {text}");
    }
}

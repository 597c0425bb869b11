//! Goals and notes: a webhook's steps, fired once each across retries and crashes. Each is
//! recorded in the webhook's idempotency record as an intent before its Keap call and as done
//! after it, so a later attempt skips a step done and knows one that may have been sent
//! (its rule's `on_uncertain` then says whether to send it again).

use super::{ApplyError, Writer};
use crate::idempotency::{IdempotencyStore, Lease};
use crate::keap::ContactId;
use crate::rules::{Action, OnUncertain, Plan};

/// What [`fire_steps`] did with one webhook's steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCounts {
    pub goals: usize,
    pub notes: usize,
    /// Goals and notes an earlier attempt already did.
    pub done_before: usize,
    /// Goals and notes skipped because their rule was stale.
    pub stale: usize,
    /// Goals and notes found sent but not recorded done: skipped or sent again, as the
    /// rule's `on_uncertain` says.
    pub uncertain_skipped: usize,
    pub uncertain_repeated: usize,
}

/// One webhook's goals and notes, in plan order, for `contact`. `steps` are the fold's verdict
/// on them (plan action index, fires); `lease` is the webhook's, whose record keeps the
/// intents and the steps done.
pub async fn fire_steps(
    idempotency: &dyn IdempotencyStore,
    writer: &Writer<'_>,
    contact: Option<ContactId>,
    plan: &Plan,
    steps: &[(usize, bool)],
    lease: &mut Lease,
) -> Result<StepCounts, ApplyError> {
    let mut counts = StepCounts::default();
    let webhook_id = plan.webhook_id.as_str();
    for &(index, fire) in steps {
        let planned = &plan.actions[index];
        let step = step_key(index, &planned.action);
        if lease.is_done(&step) {
            counts.done_before += 1;
            continue;
        }
        if !fire {
            counts.stale += 1;
            tracing::info!(
                webhook_id,
                step = step.as_str(),
                rule = planned.rule.as_str(),
                "stale: newer values already held, so this step is skipped (on_stale = skip)"
            );
            continue;
        }
        let Some(contact) = contact else {
            return Err(ApplyError::NoContact(
                "a goal or note is due but the customer has no Keap contact".into(),
            ));
        };
        let kind = match planned.action {
            Action::AchieveGoal { .. } => "goal",
            _ => "note",
        };
        let intent = intent_key(&step);
        if lease.is_done(&intent) {
            let decision = match planned.on_uncertain {
                OnUncertain::Skip => "skipped",
                OnUncertain::Repeat => "repeated",
            };
            tracing::warn!(
                webhook_id,
                step = step.as_str(),
                decision,
                "an earlier attempt sent this step but died before recording it; Keap may or may not have it (on_uncertain)"
            );
            crate::telemetry::metrics::uncertain_step(kind, decision);
            if planned.on_uncertain == OnUncertain::Skip {
                counts.uncertain_skipped += 1;
                idempotency.record_step(lease, &step).await?;
                lease.steps_done.insert(step);
                continue;
            }
            counts.uncertain_repeated += 1;
        } else {
            idempotency.record_step(lease, &intent).await?;
            lease.steps_done.insert(intent);
        }
        writer
            .fire_step(contact, &planned.action, webhook_id)
            .await?;
        idempotency.record_step(lease, &step).await?;
        lease.steps_done.insert(step);
        match kind {
            "goal" => counts.goals += 1,
            _ => counts.notes += 1,
        }
    }
    Ok(counts)
}

/// Stable name of a goal or note step: its place in the plan and what it does.
pub fn step_key(index: usize, action: &Action) -> String {
    match action {
        Action::AchieveGoal {
            integration,
            call_name,
        } => format!("{index}:goal:{integration}/{call_name}"),
        Action::AddNote { .. } => format!("{index}:note"),
        other => format!("{index}:{other:?}"),
    }
}

/// The marker a step's intent is recorded under, before its Keap call.
fn intent_key(step: &str) -> String {
    format!("intent:{step}")
}

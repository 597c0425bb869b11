//! Runs a plan against Keap: resolves the contact (identity map first, else upsert by email),
//! writes contact fields and custom fields in that same call, merges every tag action into at
//! most one apply and one remove call, then fires goals and adds notes, recording each of
//! those as done the moment it succeeds.

use super::failure::ProcessError;
use crate::idempotency::{IdempotencyStore, Lease};
use crate::identity::{ClockUpdate, CustomerKey, CustomerRecord, CustomerStore};
use crate::keap::{
    Address, ContactFields, ContactId, Crm, Directory, IfMissing, KeapError, LookupError, TagId,
};
use crate::rules::{Action, MissingFieldPolicy, Plan, PlannedAction, RuleSet, TagRef};
use std::collections::BTreeSet;

/// What one webhook did in Keap, for the log line and the idempotency record's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub contact_id: Option<ContactId>,
    pub contact_written: bool,
    pub tags_applied: usize,
    pub tags_removed: usize,
    pub goals: usize,
    pub notes: usize,
    /// Steps skipped because an earlier attempt already did them.
    pub steps_skipped: usize,
    pub stale: bool,
    pub fields_skipped: Vec<String>,
    /// The step recorded by the completing write instead of its own (see `run`).
    pub final_step: Option<String>,
}

impl Applied {
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(id) = self.contact_id {
            parts.push(format!(
                "contact {id}{}",
                if self.contact_written { " written" } else { "" }
            ));
        }
        if self.tags_applied > 0 || self.tags_removed > 0 {
            parts.push(format!(
                "tags +{} -{}",
                self.tags_applied, self.tags_removed
            ));
        }
        if self.goals > 0 {
            parts.push(format!("goals {}", self.goals));
        }
        if self.notes > 0 {
            parts.push(format!("notes {}", self.notes));
        }
        if self.steps_skipped > 0 {
            parts.push(format!("{} steps already done", self.steps_skipped));
        }
        if self.stale {
            parts.push("stale: billing state left alone".into());
        }
        if parts.is_empty() {
            "nothing to change".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Everything a run needs, borrowed from the processor.
pub(crate) struct Run<'a> {
    pub rules: &'a RuleSet,
    pub crm: &'a dyn Crm,
    pub directory: &'a Directory,
    pub idempotency: &'a dyn IdempotencyStore,
    pub customers: &'a dyn CustomerStore,
}

impl Run<'_> {
    /// Applies `plan` under `lease`. Returns what was done; the caller completes the record.
    pub async fn apply(&self, plan: &Plan, lease: &Lease) -> Result<Applied, ProcessError> {
        let customer_key = plan
            .customer_id
            .as_ref()
            .map(|id| CustomerKey::new(&plan.site, id));
        let record = match &customer_key {
            Some(key) => self.customers.get(key).await?,
            None => None,
        };
        let clock = plan
            .subscription
            .as_ref()
            .and_then(|s| s.updated_at.map(|at| (s.id.as_str(), at)));
        let stale = match (&record, clock) {
            (Some(record), Some((subscription, at))) => record.is_stale(subscription, at),
            _ => false,
        };
        let actions = plan.effective_actions(stale);
        let mut applied = Applied {
            stale,
            ..Applied::default()
        };
        if actions.is_empty() {
            return Ok(applied);
        }

        let contact = self
            .write_contact(plan, &actions, record.as_ref(), &mut applied)
            .await?;
        applied.contact_id = Some(contact.id);

        self.write_tags(
            &actions,
            contact.id,
            contact.tag_ids.as_deref(),
            &mut applied,
        )
        .await?;

        // Remember the contact (and the billing state's time) before goals fire, so a goal
        // failure never costs the mapping. One write, and none when nothing changed.
        if let Some(key) = &customer_key {
            let advances_clock = clock.filter(|_| actions.iter().any(|a| a.billing_state));
            let known = record.as_ref().and_then(|r| r.contact_id) == Some(contact.id);
            let needs_write = !known || advances_clock.is_some();
            if needs_write
                && self.customers.save(key, contact.id, advances_clock).await? == ClockUpdate::Stale
            {
                tracing::warn!(
                    webhook_id = plan.webhook_id.as_str(),
                    "a newer billing state was applied meanwhile; clock left alone"
                );
            }
        }

        self.fire_steps(plan, &actions, contact.id, lease, &mut applied)
            .await?;
        Ok(applied)
    }

    /// Writes the contact (one call: upsert by email, or update the mapped contact by id)
    /// unless no action asks for it; returns its id and, when Keap listed them, its tags.
    /// The backfill uses it for the per-contact part of a snapshot.
    pub(crate) async fn write_contact(
        &self,
        plan: &Plan,
        actions: &[&PlannedAction],
        record: Option<&CustomerRecord>,
        applied: &mut Applied,
    ) -> Result<KnownContact, ProcessError> {
        let wants_write = actions
            .iter()
            .any(|a| matches!(a.action, Action::UpsertContact | Action::SetFields { .. }));
        let mapped = record.and_then(|r| r.contact_id);
        if let (Some(id), false) = (mapped, wants_write) {
            return Ok(KnownContact { id, tag_ids: None });
        }
        let fields = self.contact_fields(plan, actions, applied).await?;
        if let Some(id) = mapped {
            match self.crm.update_contact(id, &fields).await {
                Ok(contact) => {
                    applied.contact_written = true;
                    return Ok(KnownContact {
                        id: contact.id,
                        tag_ids: contact.tag_ids,
                    });
                }
                // Merged or deleted in Keap: find the customer again by email, below.
                Err(KeapError::NotFound { .. }) => tracing::warn!(
                    webhook_id = plan.webhook_id.as_str(),
                    contact_id = id,
                    "mapped Keap contact no longer exists; upserting by email"
                ),
                Err(e) => return Err(e.into()),
            }
        }
        let Some(email) = plan.contact.email.as_deref() else {
            return Err(ProcessError::NoContact(format!(
                "customer {:?} has no Keap contact yet and the webhook carries no email",
                plan.customer_id
            )));
        };
        let contact = self.crm.upsert_contact_by_email(email, &fields).await?;
        applied.contact_written = true;
        Ok(KnownContact {
            id: contact.id,
            tag_ids: contact.tag_ids,
        })
    }

    /// The `[contact]` mapping plus every `set_fields` value, custom fields resolved by label.
    async fn contact_fields(
        &self,
        plan: &Plan,
        actions: &[&PlannedAction],
        applied: &mut Applied,
    ) -> Result<ContactFields, ProcessError> {
        let details = &plan.contact;
        let mut fields = ContactFields {
            email: details.email.clone(),
            given_name: details.given_name.clone(),
            family_name: details.family_name.clone(),
            phone: details.phone.clone(),
            company: details.company.clone(),
            opt_in_reason: details.opt_in_reason.clone(),
            address: address(details),
            ..ContactFields::default()
        };
        for action in actions {
            let Action::SetFields { fields: values } = &action.action else {
                continue;
            };
            for (label, value) in values {
                match self.directory.custom_field_id(self.crm, label).await {
                    Ok(id) => {
                        fields.custom_fields.retain(|(existing, _)| *existing != id);
                        fields
                            .custom_fields
                            .push((id, serde_json::Value::String(value.clone())));
                    }
                    Err(LookupError::MissingCustomField { label })
                        if self.rules.missing_custom_fields == MissingFieldPolicy::Skip =>
                    {
                        tracing::warn!(
                            label = label.as_str(),
                            "Keap has no custom field with this label; value skipped (create the field or change the rules)"
                        );
                        crate::telemetry::metrics::custom_field_skipped();
                        applied.fields_skipped.push(label);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(fields)
    }

    async fn write_tags(
        &self,
        actions: &[&PlannedAction],
        contact: ContactId,
        current: Option<&[TagId]>,
        applied: &mut Applied,
    ) -> Result<(), ProcessError> {
        let (apply, remove) = self.tag_changes(actions, current).await?;
        if !apply.is_empty() {
            let ids: Vec<TagId> = apply.into_iter().collect();
            self.crm.apply_tags(contact, &ids).await?;
            applied.tags_applied = ids.len();
        }
        if !remove.is_empty() {
            let ids: Vec<TagId> = remove.into_iter().collect();
            self.crm.remove_tags(contact, &ids).await?;
            applied.tags_removed = ids.len();
        }
        Ok(())
    }

    /// The tags to apply and to remove for `actions`, resolved to ids (creating a missing
    /// tag when the rules allow), later actions winning, and without what `current` (the
    /// contact's tags, when Keap listed them) already says. No tag is written here: the
    /// processor writes them per contact, the backfill in bulk per tag.
    pub(crate) async fn tag_changes(
        &self,
        actions: &[&PlannedAction],
        current: Option<&[TagId]>,
    ) -> Result<(BTreeSet<TagId>, BTreeSet<TagId>), ProcessError> {
        // Later actions win: "apply A" then "remove A" leaves A removed.
        let mut apply: BTreeSet<TagId> = BTreeSet::new();
        let mut remove: BTreeSet<TagId> = BTreeSet::new();
        for action in actions {
            let (to_apply, to_remove): (Vec<&TagRef>, Vec<&TagRef>) = match &action.action {
                Action::ApplyTags { tags } => (tags.iter().collect(), Vec::new()),
                Action::RemoveTags { tags } => (Vec::new(), tags.iter().collect()),
                Action::KeepOneTag { keep, others, .. } => (vec![keep], others.iter().collect()),
                _ => continue,
            };
            for tag in to_apply {
                let if_missing = if self.rules.create_missing_tags {
                    IfMissing::Create
                } else {
                    IfMissing::Fail
                };
                let id = self.tag_id(tag, if_missing).await?;
                remove.remove(&id);
                apply.insert(id);
            }
            for tag in to_remove {
                // A tag that does not exist is on no contact: nothing to remove.
                match self.tag_id(tag, IfMissing::Fail).await {
                    Ok(id) => {
                        apply.remove(&id);
                        remove.insert(id);
                    }
                    Err(LookupError::MissingTag { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // When Keap told us the contact's tags, skip what is already so (saves calls).
        if let Some(current) = current {
            apply.retain(|id| !current.contains(id));
            remove.retain(|id| current.contains(id));
        }
        Ok((apply, remove))
    }

    async fn tag_id(&self, tag: &TagRef, if_missing: IfMissing) -> Result<TagId, LookupError> {
        match tag {
            TagRef::Id(id) => Ok(*id),
            TagRef::Name(name) => self.directory.tag_id(self.crm, name, if_missing).await,
        }
    }

    /// Goals and notes, each recorded as done when it succeeds. The last one is recorded by
    /// the completing write instead (one write fewer per typical event); a crash between the
    /// Keap call and that write repeats it, exactly as it would with its own write.
    pub(crate) async fn fire_steps(
        &self,
        plan: &Plan,
        actions: &[&PlannedAction],
        contact: ContactId,
        lease: &Lease,
        applied: &mut Applied,
    ) -> Result<(), ProcessError> {
        let steps: Vec<(usize, &Action)> = actions
            .iter()
            .map(|a| &a.action)
            .enumerate()
            .filter(|(_, a)| !a.is_repeatable())
            .collect();
        let last = steps.len().saturating_sub(1);
        for (n, (index, action)) in steps.iter().enumerate() {
            let step = step_key(*index, action);
            if lease.is_done(&step) {
                applied.steps_skipped += 1;
                continue;
            }
            match action {
                Action::AchieveGoal {
                    integration,
                    call_name,
                } => {
                    let hits = self
                        .crm
                        .achieve_goal(contact, integration, call_name)
                        .await?;
                    if !hits.iter().any(|h| h.success) {
                        // Not an error: no published campaign listens for this goal yet.
                        tracing::info!(
                            webhook_id = plan.webhook_id.as_str(),
                            goal = format!("{integration}/{call_name}"),
                            "goal achieved but no campaign listens for it"
                        );
                    }
                    applied.goals += 1;
                }
                Action::AddNote { title, body } => {
                    self.crm.create_note(contact, title, body).await?;
                    applied.notes += 1;
                }
                _ => continue,
            }
            if n == last {
                applied.final_step = Some(step);
            } else {
                self.idempotency.record_step(lease, &step).await?;
            }
        }
        Ok(())
    }
}

/// The contact id and, when Keap's answer listed them, its tags.
pub(crate) struct KnownContact {
    pub id: ContactId,
    pub tag_ids: Option<Vec<TagId>>,
}

/// Stable name of a non-repeatable step: its place in the plan and what it does.
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

/// The billing address, or none. Keap refuses a region without a country code, and wants
/// ISO 3166-1 alpha-3 codes where Chargify sends alpha-2.
fn address(details: &crate::rules::ContactDetails) -> Option<Address> {
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

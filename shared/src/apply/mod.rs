//! The steps shared by the processor and the backfill: the Keap calls that make Keap hold
//! what `crate::converge` decided for one customer, and nothing Keap holds already, then the
//! customer's goals and notes. The processor runs them for one customer's webhooks at a time,
//! the backfill for a page of snapshots with the tags in bulk; what each does around them
//! (leases, the customer's lock, retries and dead letters, the page's budget) is its own.
//!
//! Ports: the [`Crm`] for every Keap call; the [`Directory`] for names to ids (it creates a
//! missing tag under the shared [`NameLocks`](crate::identity::NameLocks)); the
//! [`IdempotencyStore`](crate::idempotency::IdempotencyStore) in which [`fire_steps`] records
//! each goal and note. The customer's [`CustomerState`] comes in and goes out as a value: the
//! caller reads and saves it through its `CustomerStore`.
//!
//! Per customer: [`Writer::write_contact`] resolves the contact (the identity map's id, else an
//! upsert by email) and writes, in one call, every winning contact value and custom field
//! the mirror does not show as held; [`Writer::tag_changes`] works out the tag ids to apply
//! and remove (one call each, [`Writer::write_tags`], or the backfill's bulk calls); the
//! mirror is corrected from every answer that lists the contact's tags or values
//! ([`readback`]). Then [`fire_steps`] fires each goal and note due ([`Writer::fire_step`]),
//! recorded once each.

mod steps;

pub use steps::{fire_steps, step_key, StepCounts};

mod readback;

use crate::converge::{digest, holds, ContactAttr, CustomerState, Desired, Target, Winner};
use crate::idempotency::StoreError;
use crate::keap::{
    Contact, ContactFields, ContactId, Crm, Directory, IfMissing, KeapError, LookupError, TagId,
};
use crate::rules::{Action, MissingFieldPolicy, RuleSet, TagRef};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// Why Keap could not be brought in line.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Keap(#[from] KeapError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("no Keap contact can be chosen: {0}")]
    NoContact(String),
    /// A goal's or note's record could not be written.
    #[error("idempotency or identity store: {0}")]
    Store(#[from] StoreError),
}

impl ApplyError {
    /// Stable name for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Keap(e) => e.code(),
            Self::Lookup(e) => e.code(),
            Self::NoContact(_) => "no_contact",
            Self::Store(e) => e.code(),
        }
    }

    /// Retrying cannot help, and the failure is about this customer alone: Keap refused its
    /// contact, or nothing names one. A missing tag or custom field (the rules or the Keap
    /// account), the credentials, the quota, the network or a store fail every customer alike
    /// or pass later.
    pub fn is_permanent_for_customer(&self) -> bool {
        match self {
            Self::Keap(e) => e.is_permanent(),
            Self::NoContact(_) => true,
            Self::Lookup(_) | Self::Store(_) => false,
        }
    }
}

/// What the calls did, for the log line and the record's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub contact_id: Option<ContactId>,
    /// The contact was written (created or updated).
    pub contact_written: bool,
    /// Contact values and custom fields sent.
    pub values_written: usize,
    pub tags_applied: usize,
    pub tags_removed: usize,
    /// Winning values Keap already held: no call.
    pub unchanged: usize,
    /// Custom fields the rules name but Keap lacks (skipped).
    pub fields_skipped: Vec<String>,
}

/// The tag calls one contact needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagChanges {
    pub apply: BTreeSet<TagId>,
    pub remove: BTreeSet<TagId>,
}

impl TagChanges {
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.remove.is_empty()
    }

    /// The contact's tags in the mirror once these calls succeeded.
    pub fn done(&self, state: &mut CustomerState) {
        if let Some(tags) = state.tags.as_mut() {
            tags.extend(&self.apply);
            tags.retain(|id| !self.remove.contains(id));
        }
    }
}

/// Makes the calls, for one Keap account.
pub struct Writer<'a> {
    pub crm: &'a dyn Crm,
    pub directory: &'a Directory,
    pub rules: &'a RuleSet,
}

impl Writer<'_> {
    /// The contact's id, written with every winning contact value and custom field Keap does
    /// not hold (one call, or none when nothing differs and the contact is known). `email`
    /// finds or creates the contact when the identity map has none. Updates `state` (contact
    /// id, mirror) and `report`.
    pub async fn write_contact(
        &self,
        state: &mut CustomerState,
        winners: &BTreeMap<String, Winner>,
        email: Option<&str>,
        now: OffsetDateTime,
        report: &mut Report,
    ) -> Result<ContactId, ApplyError> {
        let (fields, sent) = self.changed_fields(state, winners, report).await?;
        if let Some(id) = state.contact_id {
            if sent.is_empty() {
                report.contact_id = Some(id);
                return Ok(id);
            }
            match self.crm.update_contact(id, &fields).await {
                Ok(contact) => {
                    self.written(state, winners, &sent, &contact, now, report);
                    return Ok(contact.id);
                }
                // Merged or deleted in Keap: found again by email, below.
                Err(KeapError::NotFound { .. }) => {
                    tracing::warn!(
                        contact_id = id,
                        "mapped Keap contact no longer exists; upserting by email"
                    );
                    state.contact_id = None;
                    state.mirror.clear();
                    state.tags = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some(email) = Self::upsert_email(winners, email) else {
            return Err(ApplyError::NoContact(
                "the customer has no Keap contact yet and no webhook carries an email".into(),
            ));
        };
        // A contact found again or new: everything winning is sent, whatever the mirror said.
        let (fields, sent) = self.all_fields(winners, report).await?;
        let contact = self.crm.upsert_contact_by_email(email, &fields).await?;
        state.contact_id = Some(contact.id);
        state.creating = None;
        self.written(state, winners, &sent, &contact, now, report);
        Ok(contact.id)
    }

    /// The email [`Self::write_contact`] finds or creates an unmapped contact by: the winning
    /// one, else `fallback` (the newest a webhook carries).
    fn upsert_email<'e>(
        winners: &'e BTreeMap<String, Winner>,
        fallback: Option<&'e str>,
    ) -> Option<&'e str> {
        winner_text(winners, ContactAttr::Email).or(fallback)
    }

    /// Before [`Self::write_contact`], for a customer with no contact yet: maps the contact
    /// an interrupted attempt created ([`Self::find_interrupted_creation`]), else notes in
    /// `state` the email the write will find or create the contact by. Returns whether the
    /// caller must save `state` before the write: the note must be stored before Keap can
    /// create anything, so that a crash between Keap's answer and the final save cannot lead
    /// the customer's next email to a second contact.
    pub async fn before_creating(
        &self,
        state: &mut CustomerState,
        winners: &BTreeMap<String, Winner>,
        email: Option<&str>,
    ) -> Result<bool, ApplyError> {
        if state.contact_id.is_some() {
            return Ok(false);
        }
        self.find_interrupted_creation(state).await?;
        if state.contact_id.is_some() {
            return Ok(false);
        }
        let Some(email) = Self::upsert_email(winners, email) else {
            return Ok(false);
        };
        state.creating = Some(email.to_owned());
        Ok(true)
    }

    /// After an attempt stopped between an upsert and saving its answer
    /// ([`CustomerState::creating`] set, no contact id): finds the contact that upsert may
    /// have created, by the email it was sent with, and maps it, so the customer's next email
    /// does not create a second contact. The mirror starts empty: everything winning is
    /// written to it.
    async fn find_interrupted_creation(&self, state: &mut CustomerState) -> Result<(), ApplyError> {
        let Some(email) = state.creating.clone() else {
            return Ok(());
        };
        if state.contact_id.is_some() {
            state.creating = None;
            return Ok(());
        }
        let found = self.crm.find_contacts_by_email(&email).await?;
        // Keap's upsert by email picks an existing contact when several share it; the
        // oldest is the one this system maps everywhere else too.
        if let Some(id) = found.iter().map(|c| c.id).min() {
            tracing::info!(
                contact_id = id,
                "found the contact an interrupted attempt created; mapping it rather than creating another"
            );
            state.contact_id = Some(id);
            state.mirror.clear();
            state.tags = None;
        }
        state.creating = None;
        Ok(())
    }

    /// After a contact write: the mirror holds what was sent, and the contact's tags as Keap
    /// listed them.
    fn written(
        &self,
        state: &mut CustomerState,
        winners: &BTreeMap<String, Winner>,
        sent: &[String],
        contact: &Contact,
        now: OffsetDateTime,
        report: &mut Report,
    ) {
        report.contact_id = Some(contact.id);
        report.contact_written = true;
        report.values_written += sent.len();
        for key in sent {
            if let Some(held) = winners.get(key).and_then(|w| digest(&w.desired)) {
                state.mirror.insert(key.clone(), held);
            }
        }
        if let Some(tag_ids) = &contact.tag_ids {
            state.tags = Some(tag_ids.iter().copied().collect());
            state.mirror_read_at = Some(now);
        }
        // A write's answer carries no custom fields (they come only when asked for).
        self.check_values(state, contact, false, sent);
    }

    /// Forgets the mirror's values `contact` shows Keap no longer holding (changed or
    /// cleared by hand), so the next event that sets one writes it again.
    fn check_values(
        &self,
        state: &mut CustomerState,
        contact: &Contact,
        custom_fields_listed: bool,
        just_written: &[String],
    ) {
        let Some(fields) = &contact.fields else {
            return;
        };
        let shown = readback::Shown {
            fields,
            custom_fields_listed,
        };
        let forgotten = readback::forget_values_not_held(state, &shown, just_written, |label| {
            self.directory.known_custom_field_id(label)
        });
        if !forgotten.is_empty() {
            tracing::info!(
                contact_id = contact.id,
                values = forgotten.join(",").as_str(),
                "Keap no longer holds values this system wrote (changed by hand?); the next event that sets them writes them again"
            );
        }
    }

    /// Contact values and custom fields among the winners that Keap does not hold.
    async fn changed_fields(
        &self,
        state: &CustomerState,
        winners: &BTreeMap<String, Winner>,
        report: &mut Report,
    ) -> Result<(ContactFields, Vec<String>), ApplyError> {
        let changed: BTreeMap<&String, &Winner> = winners
            .iter()
            .filter(|(key, w)| {
                let held = holds(state.mirror.get(*key), &w.desired);
                let value = !matches!(w.target, Target::Tag(_));
                if held && value {
                    report.unchanged += 1;
                }
                value && !held
            })
            .collect();
        self.fields(changed, report).await
    }

    /// Every contact value and custom field among the winners.
    async fn all_fields(
        &self,
        winners: &BTreeMap<String, Winner>,
        report: &mut Report,
    ) -> Result<(ContactFields, Vec<String>), ApplyError> {
        let all = winners
            .iter()
            .filter(|(_, w)| !matches!(w.target, Target::Tag(_)))
            .collect();
        self.fields(all, report).await
    }

    async fn fields(
        &self,
        values: BTreeMap<&String, &Winner>,
        report: &mut Report,
    ) -> Result<(ContactFields, Vec<String>), ApplyError> {
        let mut fields = ContactFields::default();
        let mut sent = Vec::new();
        for (key, winner) in values {
            let text = match &winner.desired {
                Desired::Text(text) => Some(text.clone()),
                _ => None,
            };
            match (&winner.target, &winner.desired) {
                (Target::Contact(ContactAttr::Address), Desired::Address(address)) => {
                    fields.address = Some(address.clone());
                }
                (Target::Contact(ContactAttr::Company), _) => {
                    // Keap links a contact to a company record by id: found or created once
                    // per name and instance, through the shared directory.
                    let name = text.unwrap_or_default();
                    let name = name.trim();
                    if name.is_empty() {
                        continue;
                    }
                    fields.company_id = Some(self.directory.company_id(self.crm, name).await?);
                }
                (Target::Contact(attr), _) => {
                    let slot = match attr {
                        ContactAttr::Email => &mut fields.email,
                        ContactAttr::GivenName => &mut fields.given_name,
                        ContactAttr::FamilyName => &mut fields.family_name,
                        ContactAttr::Company => continue,
                        ContactAttr::Phone => &mut fields.phone,
                        ContactAttr::OptInReason => &mut fields.opt_in_reason,
                        ContactAttr::Address => continue,
                    };
                    *slot = text;
                }
                (Target::Field(label), _) => {
                    match self.directory.custom_field_id(self.crm, label).await {
                        Ok(id) => fields
                            .custom_fields
                            .push((id, serde_json::Value::String(text.unwrap_or_default()))),
                        Err(LookupError::MissingCustomField { label })
                            if self.rules.missing_custom_fields == MissingFieldPolicy::Skip =>
                        {
                            tracing::warn!(
                                label = label.as_str(),
                                "Keap has no custom field with this label; value skipped (create the field or change the rules)"
                            );
                            crate::telemetry::metrics::custom_field_skipped();
                            report.fields_skipped.push(label);
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                (Target::Tag(_), _) => continue,
            }
            sent.push(key.clone());
        }
        Ok((fields, sent))
    }

    /// The ids of tag `tag` the contact carries, from the mirror's tag list: `None` when the
    /// list is unknown or holds an id the directory cannot name (even after reading the tag
    /// list again: a tag created since).
    async fn on_contact(
        &self,
        state: &CustomerState,
        tag: &TagRef,
    ) -> Result<Option<Vec<TagId>>, ApplyError> {
        let Some(tags) = &state.tags else {
            return Ok(None);
        };
        match tag {
            TagRef::Id(id) => Ok(Some(tags.iter().copied().filter(|t| t == id).collect())),
            TagRef::Name(name) => {
                let ids: Vec<TagId> = tags.iter().copied().collect();
                if !self.directory.learn_ids(self.crm, &ids).await? {
                    return Ok(None);
                }
                Ok(Some(
                    ids.into_iter()
                        .filter(|id| self.directory.name_of(*id).as_deref() == Some(name))
                        .collect(),
                ))
            }
        }
    }

    /// The tag ids to apply and remove so that the contact carries what the winning tag
    /// targets say, given the mirror's tag list: a tag known present is not applied again,
    /// one known absent is not removed. A name with several tags in Keap applies the lowest
    /// id and removes the others. When the contact's tags are unknown (read them first with
    /// [`Self::refresh`]), a tag is removed blindly (Keap ignores removing a tag a contact
    /// lacks) by every id its name has.
    pub async fn tag_changes(
        &self,
        state: &CustomerState,
        winners: &BTreeMap<String, Winner>,
        report: &mut Report,
    ) -> Result<TagChanges, ApplyError> {
        let mut changes = TagChanges::default();
        let if_missing = if self.rules.create_missing_tags {
            IfMissing::Create
        } else {
            IfMissing::Fail
        };
        for winner in winners.values() {
            let (Target::Tag(tag), Desired::Tag(on)) = (&winner.target, &winner.desired) else {
                continue;
            };
            let held = self.on_contact(state, tag).await?;
            if *on {
                let ids = match tag {
                    TagRef::Id(id) => vec![*id],
                    TagRef::Name(name) => {
                        self.directory
                            .ensure_tag(self.crm, name, if_missing)
                            .await?
                    }
                };
                let Some((&canonical, others)) = ids.split_first() else {
                    continue;
                };
                match &held {
                    Some(held) if held.as_slice() == [canonical] => {
                        report.unchanged += 1;
                    }
                    Some(held) => {
                        changes
                            .apply
                            .extend((!held.contains(&canonical)).then_some(canonical));
                        changes
                            .remove
                            .extend(held.iter().filter(|id| **id != canonical));
                    }
                    None => {
                        changes.apply.insert(canonical);
                        changes.remove.extend(others);
                    }
                }
            } else {
                let ids = match (held, tag) {
                    (Some(held), _) if held.is_empty() => {
                        report.unchanged += 1;
                        continue;
                    }
                    (Some(held), _) => held,
                    (None, TagRef::Id(id)) => vec![*id],
                    (None, TagRef::Name(name)) => self.directory.tag_ids(self.crm, name).await?,
                };
                changes.remove.extend(ids);
            }
        }
        // A tag both applied (as a name's lowest id) and removed (as another name's id):
        // applying wins, as the later write of the same contact would.
        let apply = changes.apply.clone();
        changes.remove.retain(|id| !apply.contains(id));
        Ok(changes)
    }

    /// One apply call and one remove call for `contact`; the mirror follows.
    pub async fn write_tags(
        &self,
        contact: ContactId,
        changes: TagChanges,
        state: &mut CustomerState,
        report: &mut Report,
    ) -> Result<(), ApplyError> {
        if !changes.apply.is_empty() {
            let ids: Vec<TagId> = changes.apply.iter().copied().collect();
            self.crm.apply_tags(contact, &ids).await?;
            report.tags_applied += ids.len();
        }
        if !changes.remove.is_empty() {
            let ids: Vec<TagId> = changes.remove.iter().copied().collect();
            self.crm.remove_tags(contact, &ids).await?;
            report.tags_removed += ids.len();
        }
        changes.done(state);
        Ok(())
    }

    /// Reads the contact back and corrects the mirror of its tags and values: a retry, a
    /// periodic check for changes made by hand in Keap, or a contact whose tags were never
    /// listed.
    pub async fn refresh(
        &self,
        state: &mut CustomerState,
        now: OffsetDateTime,
    ) -> Result<(), ApplyError> {
        let Some(id) = state.contact_id else {
            return Ok(());
        };
        match self.crm.get_contact(id).await {
            Ok(contact) => {
                if let Some(tag_ids) = &contact.tag_ids {
                    state.tags = Some(tag_ids.iter().copied().collect());
                }
                // `get_contact` asks for the custom fields: every value can be checked.
                self.check_values(state, &contact, true, &[]);
                state.mirror_read_at = Some(now);
                Ok(())
            }
            // Merged or deleted: the contact write finds it again by email.
            Err(KeapError::NotFound { .. }) => {
                state.mirror.clear();
                state.tags = None;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fires a goal or adds a note for `contact`.
    pub async fn fire_step(
        &self,
        contact: ContactId,
        action: &Action,
        webhook_id: &str,
    ) -> Result<(), ApplyError> {
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
                        webhook_id,
                        goal = format!("{integration}/{call_name}"),
                        "goal achieved but no campaign listens for it"
                    );
                }
            }
            Action::AddNote { title, body } => {
                self.crm.create_note(contact, title, body).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A winning contact text value.
fn winner_text(winners: &BTreeMap<String, Winner>, attr: ContactAttr) -> Option<&str> {
    match winners
        .get(&Target::Contact(attr).key())
        .map(|w| &w.desired)
    {
        Some(Desired::Text(text)) => Some(text),
        _ => None,
    }
}

//! An in-memory Keap behind the [`Crm`] port: unit tests, benchmarks of call counts, and the
//! local mode's dry runs (where it stands in for Keap and every call is logged, none sent).
//! The HTTP adapter is tested against the stand-in server in `tests/`, never against this.

use super::crm::{
    Company, Contact, ContactFields, ContactId, Crm, CustomField, GoalHit, KeapMeter, Tag, TagId,
};
use super::errors::KeapError;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// One call the CRM received: operation name and a short description (no personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmCall {
    pub operation: &'static str,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct CrmState {
    pub contacts: BTreeMap<ContactId, (ContactFields, BTreeSet<TagId>)>,
    pub tags: BTreeMap<TagId, String>,
    pub companies: BTreeMap<i64, String>,
    pub custom_fields: Vec<CustomField>,
    /// `(contact, integration, call_name)` per goal achieved.
    pub goals: Vec<(ContactId, String, String)>,
    /// `(contact, title)` per note.
    pub notes: Vec<(ContactId, String)>,
    pub calls: Vec<CrmCall>,
    /// Failures served, in order, instead of the next calls' answers.
    pub faults: VecDeque<KeapError>,
    /// `(operation, failure)`: the next call of that operation fails.
    pub scheduled: Vec<(&'static str, KeapError)>,
    next_id: i64,
}

#[derive(Debug)]
pub struct InMemoryCrm {
    state: Mutex<CrmState>,
    /// Log each call at info level (dry-run mode).
    announce: bool,
}

impl Default for InMemoryCrm {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryCrm {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(CrmState {
                next_id: 1000,
                ..CrmState::default()
            }),
            announce: false,
        }
    }

    /// A CRM for dry runs: every call is logged as "would call Keap", nothing is sent.
    /// Custom fields named by the rules exist, so the plan can be shown in full.
    pub fn dry_run(custom_field_labels: &[String]) -> Self {
        let crm = Self {
            announce: true,
            ..Self::new()
        };
        for label in custom_field_labels {
            crm.add_custom_field(label);
        }
        crm
    }

    pub fn state(&self) -> MutexGuard<'_, CrmState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_custom_field(&self, label: &str) -> i64 {
        let mut state = self.state();
        state.next_id += 1;
        let id = state.next_id;
        state.custom_fields.push(CustomField {
            id,
            label: label.to_owned(),
        });
        id
    }

    pub fn fail_next(&self, error: KeapError) {
        self.state().faults.push_back(error);
    }

    /// Fails the next call of `operation` (as named in [`CrmCall`]) with `error`.
    pub fn fail_next_call_to(&self, operation: &'static str, error: KeapError) {
        self.state().scheduled.push((operation, error));
    }

    /// Calls received so far, by operation.
    pub fn call_count(&self) -> usize {
        self.state().calls.len()
    }

    /// Tag names on a contact.
    pub fn tag_names(&self, contact: ContactId) -> BTreeSet<String> {
        let state = self.state();
        state
            .contacts
            .get(&contact)
            .map(|(_, tags)| {
                tags.iter()
                    .filter_map(|id| state.tags.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn enter(
        &self,
        operation: &'static str,
        detail: String,
    ) -> Result<MutexGuard<'_, CrmState>, KeapError> {
        let mut state = self.state();
        if self.announce {
            tracing::info!(
                operation,
                detail = detail.as_str(),
                "dry run: would call Keap"
            );
        }
        state.calls.push(CrmCall { operation, detail });
        if let Some(pos) = state.scheduled.iter().position(|(op, _)| *op == operation) {
            return Err(state.scheduled.remove(pos).1);
        }
        match state.faults.pop_front() {
            Some(fault) => Err(fault),
            None => Ok(state),
        }
    }
}

fn merge(into: &mut ContactFields, from: &ContactFields) {
    macro_rules! take {
        ($($f:ident),*) => { $( if from.$f.is_some() { into.$f = from.$f.clone(); } )* };
    }
    take!(
        email,
        given_name,
        family_name,
        phone,
        address,
        company_id,
        opt_in_reason
    );
    for (id, value) in &from.custom_fields {
        into.custom_fields.retain(|(existing, _)| existing != id);
        into.custom_fields.push((*id, value.clone()));
    }
}

fn contact(id: ContactId, fields: &ContactFields, tags: &BTreeSet<TagId>) -> Contact {
    Contact {
        id,
        email: fields.email.clone(),
        tag_ids: Some(tags.iter().copied().collect()),
        company_id: fields.company_id,
        fields: Some(fields.clone()),
    }
}

fn not_found(what: String) -> KeapError {
    KeapError::NotFound {
        reason: what,
        request_id: None,
    }
}

impl KeapMeter for InMemoryCrm {
    fn calls(&self) -> u64 {
        self.call_count() as u64
    }
}

#[async_trait]
impl Crm for InMemoryCrm {
    async fn upsert_contact_by_email(
        &self,
        email: &str,
        fields: &ContactFields,
    ) -> Result<Contact, KeapError> {
        let mut state = self.enter("upsert_contact", "PUT /v1/contacts (by email)".into())?;
        let existing = state
            .contacts
            .iter()
            .find(|(_, (f, _))| f.email.as_deref() == Some(email))
            .map(|(id, _)| *id);
        let id = match existing {
            Some(id) => id,
            None => {
                state.next_id += 1;
                let id = state.next_id;
                state
                    .contacts
                    .insert(id, (ContactFields::default(), BTreeSet::new()));
                id
            }
        };
        let entry = state.contacts.entry(id).or_default();
        merge(&mut entry.0, fields);
        entry.0.email = Some(email.to_owned());
        Ok(contact(id, &entry.0, &entry.1))
    }

    async fn get_contact(&self, id: ContactId) -> Result<Contact, KeapError> {
        let state = self.enter("get_contact", format!("GET /v1/contacts/{id}"))?;
        let (fields, tags) = state
            .contacts
            .get(&id)
            .ok_or_else(|| not_found(format!("contact {id}")))?;
        Ok(contact(id, fields, tags))
    }

    async fn find_contacts_by_email(&self, email: &str) -> Result<Vec<Contact>, KeapError> {
        let state = self.enter("find_contacts", "GET /v1/contacts?email=…".into())?;
        Ok(state
            .contacts
            .iter()
            .filter(|(_, (f, _))| f.email.as_deref() == Some(email))
            .map(|(id, (f, t))| contact(*id, f, t))
            .collect())
    }

    async fn update_contact(
        &self,
        id: ContactId,
        fields: &ContactFields,
    ) -> Result<Contact, KeapError> {
        let mut state = self.enter("update_contact", format!("PATCH /v1/contacts/{id}"))?;
        let entry = state
            .contacts
            .get_mut(&id)
            .ok_or_else(|| not_found(format!("contact {id}")))?;
        merge(&mut entry.0, fields);
        Ok(contact(id, &entry.0, &entry.1))
    }

    async fn list_tags(&self) -> Result<Vec<Tag>, KeapError> {
        let state = self.enter("list_tags", "GET /v1/tags".into())?;
        Ok(state
            .tags
            .iter()
            .map(|(id, n)| Tag {
                id: *id,
                name: n.clone(),
            })
            .collect())
    }

    async fn find_tags_by_name(&self, name: &str) -> Result<Vec<Tag>, KeapError> {
        let state = self.enter("find_tags", format!("GET /v1/tags?name={name}"))?;
        Ok(state
            .tags
            .iter()
            .filter(|(_, n)| n.as_str() == name)
            .map(|(id, n)| Tag {
                id: *id,
                name: n.clone(),
            })
            .collect())
    }

    async fn create_tag(&self, name: &str) -> Result<Tag, KeapError> {
        let mut state = self.enter("create_tag", format!("POST /v1/tags {name:?}"))?;
        state.next_id += 1;
        let id = state.next_id;
        state.tags.insert(id, name.to_owned());
        Ok(Tag {
            id,
            name: name.to_owned(),
        })
    }

    async fn apply_tags(&self, contact: ContactId, tags: &[TagId]) -> Result<(), KeapError> {
        let mut state = self.enter(
            "apply_tags",
            format!("POST /v1/contacts/{contact}/tags {tags:?}"),
        )?;
        let state = &mut *state;
        let known: Vec<TagId> = tags
            .iter()
            .copied()
            .filter(|t| state.tags.contains_key(t))
            .collect();
        let (_, on_contact) = state
            .contacts
            .get_mut(&contact)
            .ok_or_else(|| not_found(format!("contact {contact}")))?;
        if known.len() != tags.len() {
            return Err(KeapError::ItemsRefused {
                failures: tags
                    .iter()
                    .filter(|t| !known.contains(t))
                    .map(|t| (*t, "TAG_ID_NOT_FOUND".into()))
                    .collect(),
            });
        }
        on_contact.extend(known);
        Ok(())
    }

    async fn remove_tags(&self, contact: ContactId, tags: &[TagId]) -> Result<(), KeapError> {
        let mut state = self.enter(
            "remove_tags",
            format!("DELETE /v1/contacts/{contact}/tags?ids={tags:?}"),
        )?;
        let (_, on_contact) = state
            .contacts
            .get_mut(&contact)
            .ok_or_else(|| not_found(format!("contact {contact}")))?;
        for tag in tags {
            on_contact.remove(tag);
        }
        Ok(())
    }

    async fn apply_tag_to_contacts(
        &self,
        tag: TagId,
        contacts: &[ContactId],
    ) -> Result<(), KeapError> {
        let mut state = self.enter(
            "apply_tag_to_contacts",
            format!("POST /v1/tags/{tag}/contacts ({} contacts)", contacts.len()),
        )?;
        for id in contacts {
            if let Some((_, tags)) = state.contacts.get_mut(id) {
                tags.insert(tag);
            }
        }
        Ok(())
    }

    async fn remove_tag_from_contacts(
        &self,
        tag: TagId,
        contacts: &[ContactId],
    ) -> Result<(), KeapError> {
        let mut state = self.enter(
            "remove_tag_from_contacts",
            format!(
                "DELETE /v1/tags/{tag}/contacts?ids=… ({} contacts)",
                contacts.len()
            ),
        )?;
        for id in contacts {
            if let Some((_, tags)) = state.contacts.get_mut(id) {
                tags.remove(&tag);
            }
        }
        Ok(())
    }

    async fn achieve_goal(
        &self,
        contact: ContactId,
        integration: &str,
        call_name: &str,
    ) -> Result<Vec<GoalHit>, KeapError> {
        let mut state = self.enter(
            "achieve_goal",
            format!("POST /v1/campaigns/goals/{integration}/{call_name} contact {contact}"),
        )?;
        state
            .goals
            .push((contact, integration.to_owned(), call_name.to_owned()));
        Ok(Vec::new())
    }

    async fn create_note(
        &self,
        contact: ContactId,
        title: &str,
        _body: &str,
    ) -> Result<i64, KeapError> {
        let mut state = self.enter("create_note", format!("POST /v1/notes contact {contact}"))?;
        state.notes.push((contact, title.to_owned()));
        state.next_id += 1;
        Ok(state.next_id)
    }

    async fn list_companies(&self) -> Result<Vec<Company>, KeapError> {
        let state = self.enter("list_companies", "GET /v1/companies".into())?;
        Ok(state
            .companies
            .iter()
            .map(|(id, n)| Company {
                id: *id,
                name: n.clone(),
            })
            .collect())
    }

    async fn find_companies_by_name(&self, name: &str) -> Result<Vec<Company>, KeapError> {
        let state = self.enter("find_companies", "GET /v1/companies?company_name=…".into())?;
        Ok(state
            .companies
            .iter()
            .filter(|(_, n)| n.as_str() == name)
            .map(|(id, n)| Company {
                id: *id,
                name: n.clone(),
            })
            .collect())
    }

    async fn create_company(&self, name: &str) -> Result<Company, KeapError> {
        let mut state = self.enter("create_company", "POST /v1/companies".into())?;
        state.next_id += 1;
        let id = state.next_id;
        state.companies.insert(id, name.to_owned());
        Ok(Company {
            id,
            name: name.to_owned(),
        })
    }

    async fn custom_fields(&self) -> Result<Vec<CustomField>, KeapError> {
        let state = self.enter("custom_fields", "GET /v1/contacts/model".into())?;
        Ok(state.custom_fields.clone())
    }
}

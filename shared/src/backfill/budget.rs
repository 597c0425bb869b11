//! `--max-keap-calls` as a hard limit: the run never sends more requests to Keap.
//!
//! Two parts. Before a page, [`worst_case`] prices it call by call from its plans and what
//! the directory knows, and the run takes the longest prefix of the page it can pay for (the
//! cursor records the subscriptions done within their second, so a page cut short resumes
//! exactly). And every call goes through [`Budgeted`], which refuses one the budget cannot
//! cover with all its retries: a page that costs more than priced (a contact deleted in Keap
//! and upserted again, say) stops the run there instead of passing the limit; its work is
//! redone by the next run at no extra effect.

use super::KeapMeter;
use crate::keap::{
    Company, Contact, ContactFields, ContactId, Crm, CustomField, Directory, GoalHit, KeapError,
    Tag, TagId,
};
use crate::rules::{Action, Plan, TagRef};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

/// The Keap requests `plans` (a prefix of a page, in order) will cost, given what the
/// directory knows: per customer one contact write; per new company name a create, and the
/// account's company list once; per tag id the page's bulk apply and remove; per tag name the
/// account lacks, to apply, a look-up, a look-up under the creation lock and a create (and
/// then its bulk calls), or, only to remove, a look-up; the tag list and the custom-field
/// model if not read yet. A contact deleted in Keap since the identity map saw it costs one
/// more (an upsert after the update): [`Budgeted`] refuses that call if it would pass the
/// limit.
pub fn worst_case<'a>(plans: impl IntoIterator<Item = &'a Plan>, directory: &Directory) -> u64 {
    let mut customers = BTreeSet::new();
    let mut companies = BTreeSet::new();
    let mut tag_ids = BTreeSet::new();
    let mut applied_unknown = BTreeSet::new();
    let mut removed_unknown = BTreeSet::new();
    for plan in plans {
        customers.insert(
            plan.customer_id
                .clone()
                .unwrap_or_else(|| plan.webhook_id.clone()),
        );
        if let Some(company) = plan.contact.company.as_deref().map(str::trim) {
            if !company.is_empty() && !directory.knows_company(company) {
                companies.insert(company.to_owned());
            }
        }
        for action in &plan.actions {
            let (applied, removed): (Vec<&TagRef>, Vec<&TagRef>) = match &action.action {
                Action::ApplyTags { tags } => (tags.iter().collect(), Vec::new()),
                Action::RemoveTags { tags } => (Vec::new(), tags.iter().collect()),
                Action::KeepOneTag { keep, others, .. } => (vec![keep], others.iter().collect()),
                _ => continue,
            };
            for (tag, apply) in applied
                .into_iter()
                .map(|t| (t, true))
                .chain(removed.into_iter().map(|t| (t, false)))
            {
                match tag {
                    TagRef::Id(id) => {
                        tag_ids.insert(*id);
                    }
                    TagRef::Name(name) => match directory.known(name) {
                        Some(ids) => tag_ids.extend(ids),
                        None if apply => {
                            applied_unknown.insert(name.clone());
                        }
                        None => {
                            removed_unknown.insert(name.clone());
                        }
                    },
                }
            }
        }
    }
    let removed_only = removed_unknown.difference(&applied_unknown).count() as u64;
    let mut cost = customers.len() as u64
        + companies.len() as u64
        + 2 * tag_ids.len() as u64
        + 5 * applied_unknown.len() as u64
        + removed_only;
    if !companies.is_empty() && !directory.companies_listed() {
        cost += 1;
    }
    if !directory.tags_listed() {
        cost += 1;
    }
    if !directory.fields_read() {
        cost += 1;
    }
    cost
}

/// Pages a whole-account list is allowed for: 10,000 tags or companies. A larger account
/// listed in the run's last requests could pass the limit by its extra pages.
const LIST_PAGES: u64 = 10;

/// The error a refused call answers: transient for the engine (the run stops at the last
/// page done), told apart by [`Budgeted::refused`].
fn spent(limit: u64) -> KeapError {
    KeapError::Transient {
        status: 0,
        reason: format!("the run's --max-keap-calls budget of {limit} requests is spent"),
        request_id: None,
    }
}

/// A [`Crm`] that refuses a call once `limit` requests (counted by `meter` since `base`)
/// could be passed by it and its retries.
pub struct Budgeted<'a> {
    pub inner: &'a dyn Crm,
    pub meter: &'a dyn KeapMeter,
    /// The meter's count when the run began.
    pub base: u64,
    pub limit: Option<u64>,
    refused: AtomicBool,
}

impl<'a> Budgeted<'a> {
    pub fn new(inner: &'a dyn Crm, meter: &'a dyn KeapMeter, limit: Option<u64>) -> Self {
        Self {
            inner,
            meter,
            base: meter.calls(),
            limit,
            refused: AtomicBool::new(false),
        }
    }

    /// Whether a call was refused for the budget.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    fn admit(&self) -> Result<(), KeapError> {
        self.admit_pages(1)
    }

    /// A call of up to `pages` requests (a paged list), each with its retries.
    fn admit_pages(&self, pages: u64) -> Result<(), KeapError> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let used = self.meter.calls().saturating_sub(self.base);
        if used + pages * self.meter.max_requests_per_call() <= limit {
            return Ok(());
        }
        self.refused.store(true, Ordering::Relaxed);
        Err(spent(limit))
    }
}

#[async_trait]
impl Crm for Budgeted<'_> {
    async fn upsert_contact_by_email(
        &self,
        email: &str,
        fields: &ContactFields,
    ) -> Result<Contact, KeapError> {
        self.admit()?;
        self.inner.upsert_contact_by_email(email, fields).await
    }
    async fn get_contact(&self, id: ContactId) -> Result<Contact, KeapError> {
        self.admit()?;
        self.inner.get_contact(id).await
    }
    async fn find_contacts_by_email(&self, email: &str) -> Result<Vec<Contact>, KeapError> {
        self.admit()?;
        self.inner.find_contacts_by_email(email).await
    }
    async fn update_contact(
        &self,
        id: ContactId,
        fields: &ContactFields,
    ) -> Result<Contact, KeapError> {
        self.admit()?;
        self.inner.update_contact(id, fields).await
    }
    async fn list_tags(&self) -> Result<Vec<Tag>, KeapError> {
        self.admit_pages(LIST_PAGES)?;
        self.inner.list_tags().await
    }
    async fn find_tags_by_name(&self, name: &str) -> Result<Vec<Tag>, KeapError> {
        self.admit()?;
        self.inner.find_tags_by_name(name).await
    }
    async fn create_tag(&self, name: &str) -> Result<Tag, KeapError> {
        self.admit()?;
        self.inner.create_tag(name).await
    }
    async fn apply_tags(&self, contact: ContactId, tags: &[TagId]) -> Result<(), KeapError> {
        self.admit()?;
        self.inner.apply_tags(contact, tags).await
    }
    async fn remove_tags(&self, contact: ContactId, tags: &[TagId]) -> Result<(), KeapError> {
        self.admit()?;
        self.inner.remove_tags(contact, tags).await
    }
    async fn apply_tag_to_contacts(
        &self,
        tag: TagId,
        contacts: &[ContactId],
    ) -> Result<(), KeapError> {
        self.admit()?;
        self.inner.apply_tag_to_contacts(tag, contacts).await
    }
    async fn remove_tag_from_contacts(
        &self,
        tag: TagId,
        contacts: &[ContactId],
    ) -> Result<(), KeapError> {
        self.admit()?;
        self.inner.remove_tag_from_contacts(tag, contacts).await
    }
    async fn achieve_goal(
        &self,
        contact: ContactId,
        integration: &str,
        call_name: &str,
    ) -> Result<Vec<GoalHit>, KeapError> {
        self.admit()?;
        self.inner
            .achieve_goal(contact, integration, call_name)
            .await
    }
    async fn create_note(
        &self,
        contact: ContactId,
        title: &str,
        body: &str,
    ) -> Result<i64, KeapError> {
        self.admit()?;
        self.inner.create_note(contact, title, body).await
    }
    async fn custom_fields(&self) -> Result<Vec<CustomField>, KeapError> {
        self.admit()?;
        self.inner.custom_fields().await
    }
    async fn list_companies(&self) -> Result<Vec<Company>, KeapError> {
        self.admit_pages(LIST_PAGES)?;
        self.inner.list_companies().await
    }
    async fn find_companies_by_name(&self, name: &str) -> Result<Vec<Company>, KeapError> {
        self.admit()?;
        self.inner.find_companies_by_name(name).await
    }
    async fn create_company(&self, name: &str) -> Result<Company, KeapError> {
        self.admit()?;
        self.inner.create_company(name).await
    }
}

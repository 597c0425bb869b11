//! The CRM port: the Keap operations the processor and CLI need, in domain terms. The REST v1
//! adapter is [`super::client::KeapClient`]; tests and the dry-run mode can stand in for it.

use super::errors::KeapError;
use async_trait::async_trait;
use serde_json::Value;

/// A Keap contact id (v1 ids are 64-bit integers).
pub type ContactId = i64;
/// A Keap tag id.
pub type TagId = i64;
/// A Keap company id.
pub type CompanyId = i64;

/// Most contact ids one bulk tag call carries. Keap's spec states no limit; the ids of a
/// removal travel in the URL (`ids=1&ids=2…`, about 11 bytes each), so 200 (one Chargify
/// page) keeps it near 2 KB, well under any proxy's URL limit.
pub const MAX_BULK_TAG_CONTACTS: usize = 200;

/// What we write on a contact. `None` leaves a field as it is in Keap ("only the values
/// provided" are updated). Also what a contact answer carried, read back
/// ([`Contact::fields`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactFields {
    pub email: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
    /// The organisation's name (Chargify's `organization`), when the caller has not resolved
    /// it to [`Self::company_id`]: the client then finds the company by this exact name, or
    /// creates it. Blank is the same as `None`.
    pub company: Option<String>,
    /// The company record to link (Keap links a contact to a company by id only). Wins over
    /// [`Self::company`].
    pub company_id: Option<CompanyId>,
    /// Custom field id → value (text, number or date as JSON).
    pub custom_fields: Vec<(i64, Value)>,
    pub opt_in_reason: Option<String>,
}

/// A billing address. Keap requires `country_code` whenever `region` is sent, so the client
/// sends a region only with a country it knows (see `country_code`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub locality: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 as Chargify sends it (`US`) or alpha-3 (`USA`); the client sends
    /// Keap alpha-3 ([`super::country::keap_country_code`]). A code it does not know is dropped
    /// together with `region`: Keap refuses a region without a country, and a wrong country
    /// is worse than none.
    pub country_code: Option<String>,
}

/// A contact as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    pub id: ContactId,
    pub email: Option<String>,
    /// The contact's tags when Keap's answer listed them; `None` when it did not say (an
    /// empty list is a contact with no tags).
    pub tag_ids: Option<Vec<TagId>>,
    pub company_id: Option<CompanyId>,
    /// The values the answer carried: email, names, phone, the billing address (else the
    /// first), the company's name as Keap answered it, and custom field id → value (unset
    /// fields, `null` in Keap's answer, are left out). Read leniently: a value of an
    /// unexpected type is `None`. `None` when the answer carried none of them. Keap sends
    /// custom fields only when asked; `get_contact` asks.
    pub fields: Option<ContactFields>,
}

/// A tag as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub id: TagId,
    pub name: String,
}

/// A company as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Company {
    pub id: CompanyId,
    pub name: String,
}

/// One campaign an API goal reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalHit {
    pub campaign_id: i64,
    pub goal_id: i64,
    pub success: bool,
    pub message: String,
}

/// A custom field of the contact model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomField {
    pub id: i64,
    pub label: String,
}

#[async_trait]
pub trait Crm: Send + Sync {
    /// Creates or updates the contact with this email (`duplicate_option: Email`).
    async fn upsert_contact_by_email(
        &self,
        email: &str,
        fields: &ContactFields,
    ) -> Result<Contact, KeapError>;
    /// The contact with its custom fields ([`Contact::fields`]).
    async fn get_contact(&self, id: ContactId) -> Result<Contact, KeapError>;
    /// Contacts whose primary email is `email`, lowest id first: when Keap holds several
    /// (it allows duplicates), the oldest contact is the one we keep in step.
    async fn find_contacts_by_email(&self, email: &str) -> Result<Vec<Contact>, KeapError>;
    async fn update_contact(
        &self,
        id: ContactId,
        fields: &ContactFields,
    ) -> Result<Contact, KeapError>;
    /// Every tag of the account (`GET /v1/tags`), page by page up to a bound of 100,000.
    async fn list_tags(&self) -> Result<Vec<Tag>, KeapError>;
    /// Every tag whose name is exactly `name` (Keap does not keep names unique).
    async fn find_tags_by_name(&self, name: &str) -> Result<Vec<Tag>, KeapError>;
    async fn create_tag(&self, name: &str) -> Result<Tag, KeapError>;
    /// Applies tags; succeeds only if every tag reports `SUCCESS` or `DUPLICATE`.
    async fn apply_tags(&self, contact: ContactId, tags: &[TagId]) -> Result<(), KeapError>;
    async fn remove_tags(&self, contact: ContactId, tags: &[TagId]) -> Result<(), KeapError>;
    /// Applies one tag to many contacts in one call (`POST /v1/tags/{tagId}/contacts`, at
    /// most [`MAX_BULK_TAG_CONTACTS`] ids; the backfill's bulk step); fails if any contact is
    /// refused. Applying a tag a contact has is `DUPLICATE`, a success: safe to repeat.
    async fn apply_tag_to_contacts(
        &self,
        tag: TagId,
        contacts: &[ContactId],
    ) -> Result<(), KeapError>;
    /// Removes one tag from many contacts in one call (`DELETE /v1/tags/{tagId}/contacts?ids=`,
    /// at most [`MAX_BULK_TAG_CONTACTS`] ids). Removing a tag a contact lacks changes nothing:
    /// safe to repeat.
    async fn remove_tag_from_contacts(
        &self,
        tag: TagId,
        contacts: &[ContactId],
    ) -> Result<(), KeapError>;
    async fn achieve_goal(
        &self,
        contact: ContactId,
        integration: &str,
        call_name: &str,
    ) -> Result<Vec<GoalHit>, KeapError>;
    async fn create_note(
        &self,
        contact: ContactId,
        title: &str,
        body: &str,
    ) -> Result<i64, KeapError>;
    async fn custom_fields(&self) -> Result<Vec<CustomField>, KeapError>;
    /// Every company of the account (`GET /v1/companies`), paged like [`Crm::list_tags`].
    async fn list_companies(&self) -> Result<Vec<Company>, KeapError>;
    /// Companies whose name is exactly `name`, lowest id first. Keap does not keep company
    /// names unique; callers link contacts to the first (oldest), like contacts by email.
    async fn find_companies_by_name(&self, name: &str) -> Result<Vec<Company>, KeapError>;
    async fn create_company(&self, name: &str) -> Result<Company, KeapError>;
}

/// What a run that budgets its Keap calls (the backfill's `--max-keap-calls` and quota stop)
/// reads of an adapter: its own count of requests, retries included (what Keap's quota
/// counts), and the budgets Keap reports. Beside [`Crm`] so each adapter implements both.
pub trait KeapMeter: Send + Sync {
    /// Requests sent so far.
    fn calls(&self) -> u64;
    /// 429 answers so far.
    fn throttled(&self) -> u64 {
        0
    }
    /// The daily quota left, as Keap's last answer reported it.
    fn daily_quota_left(&self) -> Option<u64> {
        None
    }
    /// The client's pace, calls per second.
    fn pace(&self) -> Option<f64> {
        None
    }
    /// The most requests one call can make (its retries included).
    fn max_requests_per_call(&self) -> u64 {
        1
    }
}

//! Names to ids for one Keap account ("container"): tag name → tag ids, company name →
//! company id, custom-field label → field id.
//!
//! **Tags** are loaded once with one paged list of every tag of the account (a cold instance
//! pays one call, not one per name), then kept; a name the list lacks is looked up again,
//! uncached, every time it is needed, since another instance may have created it since: a
//! missing tag is never cached as missing. Keap does not keep tag names unique, so a name
//! maps to all its ids, lowest (oldest) first: the caller applies the lowest and removes the
//! others. A tag is created only under a lock shared by every instance ([`NameLocks`]), after
//! one more uncached look-up, so two instances missing the same tag create it once. Tags named
//! by id in the rules are used as given.
//!
//! **Custom fields** come from the contact model, read once; a label it lacks reads it again
//! at most once per [`DEFAULT_TTL`] (a field created in Keap shows up without a restart).
//!
//! **Companies**: the name comes from the customer's billing record, not from the rules, so a
//! missing company is always created, and several of one name resolve to the lowest id (the
//! oldest, the same rule as contacts by email). A backfill loads them all first
//! ([`Directory::load_companies`]), so a name the list lacks is created with no look-up.

use super::crm::{CompanyId, Crm, TagId};
use super::errors::KeapError;
use crate::idempotency::{new_token, StoreError};
use crate::identity::{tag_creation_lock, NameLocks};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// How long a custom-field model read stands before a missing label reads it again, and how
/// often the whole tag list may be read again when a contact carries ids it lacks.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// How long the tag-creation lock lasts: longer than a look-up and a create (two Keap calls
/// with their timeouts), short enough that a crashed holder delays others briefly.
const CREATION_LOCK: Duration = Duration::from_secs(60);

/// How long a worker waits for another instance to finish creating a tag.
const CREATION_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("Keap has no tag named `{name}` and the rules do not allow creating it (create_missing_tags = false); create it in Keap or allow creation")]
    MissingTag { name: String },
    #[error("Keap has no custom field labelled `{label}` on contacts; create it in Keap or fix the rules")]
    MissingCustomField { label: String },
    #[error(
        "another worker has been creating the tag `{name}` for over {waited:?}; retried later"
    )]
    CreationPending { name: String, waited: Duration },
    #[error(transparent)]
    Keap(#[from] KeapError),
    #[error("tag-creation lock: {0}")]
    Store(#[from] StoreError),
}

impl LookupError {
    /// Stable name for logs, metrics and the dead-letter `FailureCode`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingTag { .. } => "tag_missing",
            Self::MissingCustomField { .. } => "custom_field_missing",
            Self::CreationPending { .. } => "tag_creation_pending",
            Self::Keap(e) => e.code(),
            Self::Store(e) => e.code(),
        }
    }
}

/// Whether a tag that does not exist may be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    Create,
    Fail,
}

/// The tags of the account as last listed: name → ids (lowest first).
#[derive(Debug, Default)]
struct Tags {
    by_name: HashMap<String, Vec<TagId>>,
    /// Every id listed or looked up, with its name.
    names: HashMap<TagId, String>,
    /// When the whole list was last read (`None`: never).
    listed_at: Option<Instant>,
    /// Names already reported as having duplicates (reported once per process).
    reported: BTreeSet<String>,
}

impl Tags {
    fn put(&mut self, name: &str, mut ids: Vec<TagId>) {
        ids.sort_unstable();
        ids.dedup();
        for id in &ids {
            self.names.insert(*id, name.to_owned());
        }
        if ids.is_empty() {
            self.by_name.remove(name);
        } else {
            self.by_name.insert(name.to_owned(), ids);
        }
    }
}

pub struct Directory {
    ttl: Duration,
    tags: Mutex<Tags>,
    companies: Mutex<HashMap<String, CompanyId>>,
    /// Every company of the account is in `companies` (a backfill listed them).
    companies_complete: Mutex<bool>,
    /// List every company at the first name not cached, instead of looking names up one by
    /// one (a backfill: many companies, each met once).
    list_companies_first: std::sync::atomic::AtomicBool,
    fields: Mutex<Option<(HashMap<String, i64>, Instant)>>,
    /// Held while the tag list, a missing name or the field model is being read, so that
    /// concurrent tasks of one instance read it once.
    loading: tokio::sync::Mutex<()>,
    locks: Arc<dyn NameLocks>,
}

impl Directory {
    /// An empty directory; `locks` is shared by every instance that writes the same Keap
    /// account.
    pub fn new(locks: Arc<dyn NameLocks>) -> Self {
        Self::with_ttl(locks, DEFAULT_TTL)
    }

    pub fn with_ttl(locks: Arc<dyn NameLocks>, ttl: Duration) -> Self {
        Self {
            ttl,
            tags: Mutex::new(Tags::default()),
            companies: Mutex::new(HashMap::new()),
            companies_complete: Mutex::new(false),
            list_companies_first: std::sync::atomic::AtomicBool::new(false),
            fields: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
            locks,
        }
    }

    /// Reads every tag of the account, if it was never read (one paged call).
    pub async fn load_tags(&self, crm: &dyn Crm) -> Result<(), KeapError> {
        if lock(&self.tags).listed_at.is_some() {
            return Ok(());
        }
        let _one = self.loading.lock().await;
        if lock(&self.tags).listed_at.is_some() {
            return Ok(());
        }
        self.list_tags(crm).await
    }

    async fn list_tags(&self, crm: &dyn Crm) -> Result<(), KeapError> {
        let listed = crm.list_tags().await?;
        let mut by_name: HashMap<String, Vec<TagId>> = HashMap::new();
        for tag in listed {
            by_name.entry(tag.name).or_default().push(tag.id);
        }
        let mut tags = lock(&self.tags);
        tags.by_name.clear();
        tags.names.clear();
        for (name, ids) in by_name {
            tags.put(&name, ids);
        }
        tags.listed_at = Some(Instant::now());
        Ok(())
    }

    /// Reads the whole tag list again when `ids` holds an id it lacks (a tag created since by
    /// another instance or by hand), at most once per TTL. Returns whether every id is now
    /// known.
    pub async fn learn_ids(&self, crm: &dyn Crm, ids: &[TagId]) -> Result<bool, KeapError> {
        self.load_tags(crm).await?;
        let unknown = |tags: &Tags| ids.iter().any(|id| !tags.names.contains_key(id));
        {
            let tags = lock(&self.tags);
            if !unknown(&tags) {
                return Ok(true);
            }
            if tags.listed_at.is_some_and(|at| at.elapsed() < self.ttl) {
                return Ok(false);
            }
        }
        let _one = self.loading.lock().await;
        self.list_tags(crm).await?;
        Ok(!unknown(&lock(&self.tags)))
    }

    /// Every id of the tag named `name`, lowest first; empty when Keap has none. A name the
    /// list lacks is looked up (uncached) every time.
    pub async fn tag_ids(&self, crm: &dyn Crm, name: &str) -> Result<Vec<TagId>, KeapError> {
        self.load_tags(crm).await?;
        if let Some(ids) = self.known(name) {
            return Ok(ids);
        }
        self.look_up(crm, name).await
    }

    /// Whether the account's tag list was read.
    pub fn tags_listed(&self) -> bool {
        lock(&self.tags).listed_at.is_some()
    }

    /// Whether the account's company list was read.
    pub fn companies_listed(&self) -> bool {
        *lock(&self.companies_complete)
    }

    /// Whether the company named `name` is known (listed, looked up or created).
    pub fn knows_company(&self, name: &str) -> bool {
        lock(&self.companies).contains_key(name)
    }

    /// Whether the custom-field model was read.
    pub fn fields_read(&self) -> bool {
        lock(&self.fields).is_some()
    }

    /// The id of the custom field labelled `label`, if the model was read; never a call.
    pub fn known_custom_field_id(&self, label: &str) -> Option<i64> {
        lock(&self.fields)
            .as_ref()
            .and_then(|(fields, _)| fields.get(label).copied())
    }

    /// The name of tag `id`, if the list (or a look-up) has seen it.
    pub fn name_of(&self, id: TagId) -> Option<String> {
        lock(&self.tags).names.get(&id).cloned()
    }

    /// The ids of `name` the list knows, without any call.
    pub fn known(&self, name: &str) -> Option<Vec<TagId>> {
        let mut tags = lock(&self.tags);
        let ids = tags.by_name.get(name).cloned()?;
        if ids.len() > 1 && tags.reported.insert(name.to_owned()) {
            tracing::warn!(
                tag = name,
                ids = ?ids,
                "Keap holds several tags with this name; the lowest id is applied and the others removed from contacts (merge them in Keap)"
            );
            crate::telemetry::metrics::duplicate_tag_names();
        }
        Some(ids)
    }

    async fn look_up(&self, crm: &dyn Crm, name: &str) -> Result<Vec<TagId>, KeapError> {
        let ids: Vec<TagId> = crm
            .find_tags_by_name(name)
            .await?
            .into_iter()
            .map(|t| t.id)
            .collect();
        lock(&self.tags).put(name, ids);
        Ok(self.known(name).unwrap_or_default())
    }

    /// The ids of the tag named `name` for applying it (lowest first; the first is the one
    /// to apply): looked up, uncached, when the list lacks it, and created under the shared
    /// creation lock when Keap has none and `if_missing` allows.
    pub async fn ensure_tag(
        &self,
        crm: &dyn Crm,
        name: &str,
        if_missing: IfMissing,
    ) -> Result<Vec<TagId>, LookupError> {
        let ids = self.tag_ids(crm, name).await?;
        if !ids.is_empty() {
            return Ok(ids);
        }
        if if_missing == IfMissing::Fail {
            return Err(LookupError::MissingTag {
                name: name.to_owned(),
            });
        }
        let lock_name = tag_creation_lock(name);
        // One holder per attempt, not per process: two tasks of one instance exclude each
        // other too.
        let holder = new_token();
        let started = Instant::now();
        loop {
            let now = OffsetDateTime::now_utc();
            match self
                .locks
                .try_lock(&lock_name, &holder, now, CREATION_LOCK)
                .await?
            {
                None => break,
                Some(_) if started.elapsed() >= CREATION_WAIT => {
                    return Err(LookupError::CreationPending {
                        name: name.to_owned(),
                        waited: started.elapsed(),
                    })
                }
                Some(_) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let ids = self.look_up(crm, name).await?;
                    if !ids.is_empty() {
                        return Ok(ids);
                    }
                }
            }
        }
        let created = async {
            // Another instance may have created it between our look-up and the lock.
            let ids = self.look_up(crm, name).await?;
            if !ids.is_empty() {
                return Ok(ids);
            }
            let tag = crm.create_tag(name).await?;
            tracing::info!(tag = name, id = tag.id, "tag created in Keap");
            lock(&self.tags).put(name, vec![tag.id]);
            Ok::<_, KeapError>(vec![tag.id])
        }
        .await;
        if let Err(e) = self.locks.unlock(&lock_name, &holder).await {
            tracing::warn!(error = %e, "could not release the tag-creation lock; it expires by itself");
        }
        Ok(created?)
    }

    /// The id of the company named exactly `name`, created in Keap when it has none.
    pub async fn company_id(&self, crm: &dyn Crm, name: &str) -> Result<CompanyId, KeapError> {
        if let Some(id) = lock(&self.companies).get(name) {
            return Ok(*id);
        }
        let _one = self.loading.lock().await;
        if let Some(id) = lock(&self.companies).get(name) {
            return Ok(*id);
        }
        let listing = self
            .list_companies_first
            .load(std::sync::atomic::Ordering::Relaxed);
        if listing && !*lock(&self.companies_complete) {
            self.list_companies(crm).await?;
            if let Some(id) = lock(&self.companies).get(name) {
                return Ok(*id);
            }
        }
        let complete = *lock(&self.companies_complete);
        // `find_companies_by_name` answers lowest id first.
        let found = if complete {
            None
        } else {
            crm.find_companies_by_name(name)
                .await?
                .first()
                .map(|c| c.id)
        };
        let id = match found {
            Some(id) => id,
            None => crm.create_company(name).await?.id,
        };
        lock(&self.companies).insert(name.to_owned(), id);
        Ok(id)
    }

    /// From now on, the first company name not cached reads every company of the account
    /// (one paged call), so that each name the account lacks then costs one create and no
    /// look-up. A run that meets no new company makes no call for it.
    pub fn list_companies_on_first_use(&self) {
        self.list_companies_first
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads every company of the account (one paged call) now.
    pub async fn load_companies(&self, crm: &dyn Crm) -> Result<(), KeapError> {
        let _one = self.loading.lock().await;
        self.list_companies(crm).await
    }

    async fn list_companies(&self, crm: &dyn Crm) -> Result<(), KeapError> {
        let listed = crm.list_companies().await?;
        let mut companies = lock(&self.companies);
        let mut oldest: HashMap<String, CompanyId> = HashMap::new();
        for company in listed {
            let id = oldest.entry(company.name).or_insert(company.id);
            *id = (*id).min(company.id);
        }
        companies.extend(oldest);
        *lock(&self.companies_complete) = true;
        Ok(())
    }

    pub async fn custom_field_id(&self, crm: &dyn Crm, label: &str) -> Result<i64, LookupError> {
        let missing = || LookupError::MissingCustomField {
            label: label.to_owned(),
        };
        let fresh = {
            let cached = lock(&self.fields);
            match cached.as_ref() {
                Some((fields, at)) => {
                    if let Some(id) = fields.get(label) {
                        return Ok(*id);
                    }
                    at.elapsed() < self.ttl
                }
                None => false,
            }
        };
        if fresh {
            return Err(missing());
        }
        let _one = self.loading.lock().await;
        if let Some((fields, at)) = lock(&self.fields).as_ref() {
            if let Some(id) = fields.get(label) {
                return Ok(*id);
            }
            if at.elapsed() < self.ttl {
                return Err(missing());
            }
        }
        let fields: HashMap<String, i64> = crm
            .custom_fields()
            .await?
            .into_iter()
            .map(|f| (f.label, f.id))
            .collect();
        let id = fields.get(label).copied();
        *lock(&self.fields) = Some((fields, Instant::now()));
        id.ok_or_else(missing)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::InMemoryNameLocks;
    use crate::keap::InMemoryCrm;

    fn directory() -> Directory {
        Directory::new(Arc::new(InMemoryNameLocks::new()))
    }

    #[tokio::test]
    async fn one_list_serves_every_name_and_a_missing_name_is_looked_up_each_time() {
        let crm = InMemoryCrm::new();
        let active = crm.create_tag("Billing: Active").await.unwrap().id;
        let dir = directory();
        assert_eq!(
            dir.tag_ids(&crm, "Billing: Active").await.unwrap(),
            [active]
        );
        let calls = crm.call_count();
        assert_eq!(
            dir.tag_ids(&crm, "Billing: Active").await.unwrap(),
            [active]
        );
        assert_eq!(crm.call_count(), calls, "a listed name costs nothing");
        assert!(dir
            .tag_ids(&crm, "Billing: Unpaid")
            .await
            .unwrap()
            .is_empty());
        assert!(dir
            .tag_ids(&crm, "Billing: Unpaid")
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            crm.call_count(),
            calls + 2,
            "a missing name is never cached"
        );
        // Created elsewhere (another instance): found on the next look-up.
        let unpaid = crm.create_tag("Billing: Unpaid").await.unwrap().id;
        assert_eq!(
            dir.tag_ids(&crm, "Billing: Unpaid").await.unwrap(),
            [unpaid]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_directories_sharing_the_lock_create_a_missing_tag_once() {
        let crm = Arc::new(InMemoryCrm::new());
        let locks: Arc<dyn NameLocks> = Arc::new(InMemoryNameLocks::new());
        let (a, b) = (
            Arc::new(Directory::new(locks.clone())),
            Arc::new(Directory::new(locks)),
        );
        let runs = (0..8).map(|i| {
            let dir = if i % 2 == 0 { a.clone() } else { b.clone() };
            let crm = crm.clone();
            tokio::spawn(async move {
                dir.ensure_tag(crm.as_ref(), "Billing: Expired", IfMissing::Create)
                    .await
            })
        });
        let mut ids = BTreeSet::new();
        for run in runs {
            ids.extend(run.await.unwrap().unwrap());
        }
        assert_eq!(ids.len(), 1, "one tag for everyone");
        let named = crm
            .state()
            .tags
            .values()
            .filter(|n| *n == "Billing: Expired")
            .count();
        assert_eq!(named, 1);
        assert!(matches!(
            a.ensure_tag(crm.as_ref(), "Nope", IfMissing::Fail).await,
            Err(LookupError::MissingTag { .. })
        ));
    }

    #[tokio::test]
    async fn duplicates_resolve_lowest_first_and_unknown_ids_reload_the_list() {
        let crm = InMemoryCrm::new();
        let first = crm.create_tag("Billing: Active").await.unwrap().id;
        let dir = directory();
        dir.load_tags(&crm).await.unwrap();
        let second = crm.create_tag("Billing: Active").await.unwrap().id;
        assert_eq!(dir.known("Billing: Active"), Some(vec![first]));
        // A contact carries `second`, unknown to the list read at start.
        let ttl0 = Directory::with_ttl(Arc::new(InMemoryNameLocks::new()), Duration::ZERO);
        ttl0.load_tags(&crm).await.unwrap();
        let third = crm.create_tag("Billing: Active").await.unwrap().id;
        assert!(ttl0.learn_ids(&crm, &[third]).await.unwrap());
        assert_eq!(
            ttl0.known("Billing: Active"),
            Some(vec![first, second, third])
        );
        assert!(
            !dir.learn_ids(&crm, &[third]).await.unwrap(),
            "at most once per TTL"
        );
    }

    #[tokio::test]
    async fn companies_listed_first_cost_one_create_each() {
        let crm = InMemoryCrm::new();
        let acme = crm.create_company("Acme").await.unwrap().id;
        let dir = directory();
        dir.load_companies(&crm).await.unwrap();
        let calls = crm.call_count();
        assert_eq!(dir.company_id(&crm, "Acme").await.unwrap(), acme);
        let globex = dir.company_id(&crm, "Globex").await.unwrap();
        assert_ne!(globex, acme);
        assert_eq!(crm.call_count(), calls + 1, "one create, no find");
    }
}

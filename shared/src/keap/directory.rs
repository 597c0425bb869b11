//! Names to ids, cached: tag name → tag id, company name → company id and custom-field
//! label → field id, per Keap account ("container"), each entry for a TTL.
//!
//! Keap does not keep tag names unique, so a name that matches two tags is an error to fix in
//! Keap or in the rules (refer to the tag by id), never a guess. A missing tag is created
//! only when the caller allows it. Companies differ: the name comes from the customer's
//! billing record, not from our rules, so a missing company is always created and several of
//! one name resolve to the lowest id (the oldest, the same rule as contacts by email).

use super::crm::{CompanyId, Crm, TagId};
use super::errors::KeapError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default time an id stays cached. Ids never change in Keap; the TTL only bounds how long
/// a tag deleted and recreated by hand keeps resolving to the old id.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("Keap has {ids:?} tags named `{name}`; names are not unique in Keap, so refer to the tag by id in the rules or merge the tags")]
    AmbiguousTag { name: String, ids: Vec<TagId> },
    #[error("Keap has no tag named `{name}` and this rule does not allow creating it; create it in Keap or allow creation")]
    MissingTag { name: String },
    #[error("Keap has no custom field labelled `{label}` on contacts; create it in Keap or fix the rules")]
    MissingCustomField { label: String },
    #[error(transparent)]
    Keap(#[from] KeapError),
}

/// Whether a tag that does not exist may be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    Create,
    Fail,
}

pub struct Directory {
    ttl: Duration,
    tags: Names,
    companies: Names,
    fields: Mutex<Option<(HashMap<String, i64>, Instant)>>,
    /// Names Keap had no tag for, when looked up. Cached too: removing a tag that does not
    /// exist is the common case (six of a state group's seven tags on every state change),
    /// and a tag we create ourselves leaves this set at once.
    missing_tags: Mutex<HashMap<String, Instant>>,
    /// Held while a name missing from the cache is looked up (and perhaps created), so that
    /// two tasks resolving the same new name create it once. Misses are rare once warm.
    misses: tokio::sync::Mutex<()>,
}

/// Name → id, each entry valid for the directory's TTL.
#[derive(Default)]
struct Names(Mutex<HashMap<String, (i64, Instant)>>);

impl Names {
    fn get(&self, name: &str, ttl: Duration) -> Option<i64> {
        lock(&self.0)
            .get(name)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(id, _)| *id)
    }

    fn put(&self, name: &str, id: i64) {
        lock(&self.0).insert(name.to_owned(), (id, Instant::now()));
    }
}

impl Directory {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            tags: Names::default(),
            companies: Names::default(),
            fields: Mutex::new(None),
            missing_tags: Mutex::new(HashMap::new()),
            misses: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn tag_id(
        &self,
        crm: &dyn Crm,
        name: &str,
        if_missing: IfMissing,
    ) -> Result<TagId, LookupError> {
        if let Some(id) = self.tags.get(name, self.ttl) {
            return Ok(id);
        }
        let _one_at_a_time = self.misses.lock().await;
        if let Some(id) = self.tags.get(name, self.ttl) {
            return Ok(id);
        }
        let known_missing = lock(&self.missing_tags)
            .get(name)
            .is_some_and(|at| at.elapsed() < self.ttl);
        let found = if known_missing {
            Vec::new()
        } else {
            crm.find_tags_by_name(name).await?
        };
        let id = match (found.as_slice(), if_missing) {
            ([only], _) => only.id,
            ([], IfMissing::Create) => {
                let id = crm.create_tag(name).await?.id;
                lock(&self.missing_tags).remove(name);
                id
            }
            ([], IfMissing::Fail) => {
                lock(&self.missing_tags).insert(name.to_owned(), Instant::now());
                return Err(LookupError::MissingTag {
                    name: name.to_owned(),
                });
            }
            (many, _) => {
                return Err(LookupError::AmbiguousTag {
                    name: name.to_owned(),
                    ids: many.iter().map(|t| t.id).collect(),
                })
            }
        };
        self.tags.put(name, id);
        Ok(id)
    }

    /// The id of the company named exactly `name`, created in Keap when it has none.
    pub async fn company_id(&self, crm: &dyn Crm, name: &str) -> Result<CompanyId, KeapError> {
        if let Some(id) = self.companies.get(name, self.ttl) {
            return Ok(id);
        }
        let _one_at_a_time = self.misses.lock().await;
        if let Some(id) = self.companies.get(name, self.ttl) {
            return Ok(id);
        }
        // `find_companies_by_name` answers lowest id first.
        let id = match crm.find_companies_by_name(name).await?.first() {
            Some(oldest) => oldest.id,
            None => crm.create_company(name).await?.id,
        };
        self.companies.put(name, id);
        Ok(id)
    }

    pub async fn custom_field_id(&self, crm: &dyn Crm, label: &str) -> Result<i64, LookupError> {
        {
            let cached = lock(&self.fields);
            if let Some((fields, at)) = cached.as_ref() {
                if at.elapsed() < self.ttl {
                    return fields.get(label).copied().ok_or_else(|| {
                        LookupError::MissingCustomField {
                            label: label.to_owned(),
                        }
                    });
                }
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
        id.ok_or_else(|| LookupError::MissingCustomField {
            label: label.to_owned(),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

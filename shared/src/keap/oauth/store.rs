//! The token store port: where the one live Keap token pair is kept, shared by every worker.
//!
//! Keap rotates the refresh token on every refresh and kills the old one at once, so the pair
//! must live in one place all workers read, and every change to it is a conditional write:
//! a worker takes a lease before it refreshes, and stores the new pair only while it still
//! holds that lease and nobody has stored a newer pair (the version it read).

use async_trait::async_trait;
use std::sync::Mutex;
use time::OffsetDateTime;

/// An access token and the refresh token that replaces it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub access_expires_at: OffsetDateTime,
}

impl std::fmt::Debug for TokenPair {
    // Both tokens are credentials: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("access_expires_at", &self.access_expires_at)
            .finish()
    }
}

/// A worker's claim to be the one refreshing. It always expires, so a crashed holder only
/// delays the others until then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub expires_at: OffsetDateTime,
}

/// What the store holds for one Keap app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub pair: TokenPair,
    /// Goes up by one with every pair stored; a changed version means "someone refreshed".
    pub version: u64,
    pub lease: Option<Lease>,
}

impl TokenRecord {
    /// The lease, if someone other than an expired holder has it at `now`.
    pub fn live_lease(&self, now: OffsetDateTime) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.expires_at > now)
    }
}

/// The store could not be read or written (not a failed condition: that is `Ok(false)`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct StoreError {
    pub detail: String,
}

impl From<StoreError> for super::super::KeapError {
    fn from(e: StoreError) -> Self {
        Self::TokenStore { detail: e.detail }
    }
}

/// One token pair (one Keap app or tenant) in a shared store. Every write is atomic; the
/// conditional ones answer `Ok(false)` when their condition does not hold.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// The current record, read consistently; `None` before the first authorisation.
    async fn load(&self) -> Result<Option<TokenRecord>, StoreError>;

    /// Takes the refresh lease until `until`, if the record is still at `version` and no live
    /// lease exists at `now`.
    async fn acquire_lease(
        &self,
        version: u64,
        holder: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Stores the refreshed pair as `version + 1` and drops the lease, in one write, if the
    /// record is still at `version` and `holder` still holds the lease.
    async fn complete_refresh(
        &self,
        version: u64,
        holder: &str,
        pair: &TokenPair,
    ) -> Result<bool, StoreError>;

    /// Drops the lease if `holder` holds it (after a failed refresh, so others need not wait
    /// for it to expire).
    async fn release_lease(&self, holder: &str) -> Result<bool, StoreError>;

    /// Stores a pair from a new authorisation, whatever is there (a person re-authorised),
    /// as the next version, without a lease. Returns the new version.
    async fn replace(&self, pair: &TokenPair) -> Result<u64, StoreError>;
}

/// The store in memory: unit tests, and a local run with a single process.
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    record: Mutex<Option<TokenRecord>>,
}

impl MemoryTokenStore {
    pub fn new(record: Option<TokenRecord>) -> Self {
        Self {
            record: Mutex::new(record),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Option<TokenRecord>) -> T) -> T {
        f(&mut self.record.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn load(&self) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.with(|r| r.clone()))
    }

    async fn acquire_lease(
        &self,
        version: u64,
        holder: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        Ok(self.with(|r| match r {
            Some(record) if record.version == version && record.live_lease(now).is_none() => {
                record.lease = Some(Lease {
                    holder: holder.to_owned(),
                    expires_at: until,
                });
                true
            }
            _ => false,
        }))
    }

    async fn complete_refresh(
        &self,
        version: u64,
        holder: &str,
        pair: &TokenPair,
    ) -> Result<bool, StoreError> {
        Ok(self.with(|r| match r {
            Some(record)
                if record.version == version
                    && record.lease.as_ref().is_some_and(|l| l.holder == holder) =>
            {
                *record = TokenRecord {
                    pair: pair.clone(),
                    version: version + 1,
                    lease: None,
                };
                true
            }
            _ => false,
        }))
    }

    async fn release_lease(&self, holder: &str) -> Result<bool, StoreError> {
        Ok(self.with(|r| match r {
            Some(record) if record.lease.as_ref().is_some_and(|l| l.holder == holder) => {
                record.lease = None;
                true
            }
            _ => false,
        }))
    }

    async fn replace(&self, pair: &TokenPair) -> Result<u64, StoreError> {
        Ok(self.with(|r| {
            let version = r.as_ref().map_or(0, |old| old.version) + 1;
            *r = Some(TokenRecord {
                pair: pair.clone(),
                version,
                lease: None,
            });
            version
        }))
    }
}

//! The bearer token a Keap call sends, kept fresh by one worker at a time.
//!
//! Every refresh kills the refresh token it spends, so concurrent workers (Lambda instances)
//! that each refreshed would lock the integration out: the one that refreshed second spends a
//! token already dead. The protocol:
//!
//! 1. Use the stored access token while more than [`RefreshPolicy::refresh_before`] of it is
//!    left (and it was not just rejected).
//! 2. Otherwise take the refresh lease with a conditional write (record still at the version
//!    read, no live lease). The lease always expires, so a crashed holder cannot block others
//!    for longer than [`RefreshPolicy::lease`].
//! 3. The holder spends the refresh token at Keap and stores the new pair as the next
//!    version, dropping the lease in the same conditional write, before it uses the pair.
//! 4. Workers without the lease keep using a still-valid access token, or re-read the store
//!    (bounded, short polls) until a newer version appears.
//! 5. On `invalid_grant` the holder re-reads the store: a different refresh token there means
//!    someone else rotated it, so that pair is used; the refused one still there means the
//!    authorisation is gone ([`KeapError::ReauthorisationNeeded`]). Nothing stale is written.

use super::endpoint::TokenIssuer;
use super::store::{TokenPair, TokenRecord, TokenStore};
use crate::keap::errors::KeapError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Timings of the refresh protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Refresh once less than this is left of the access token. Keap's tokens last 24 h;
    /// refreshing in the last hour leaves time for a slow or failed refresh.
    pub refresh_before: Duration,
    /// How long a refresh lease lasts. Must exceed the token endpoint's timeout, so the
    /// holder can always store the pair it obtained.
    pub lease: Duration,
    /// How often a worker waiting for another's refresh re-reads the store.
    pub poll: Duration,
    /// How long a worker waits for another's refresh before answering a transient error;
    /// longer than the lease, so a crashed holder's lease expires inside the wait.
    pub max_wait: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            refresh_before: Duration::from_secs(3600),
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(250),
            max_wait: Duration::from_secs(40),
        }
    }
}

/// What a worker does with the record it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The stored access token is good to send.
    Use,
    /// Another worker holds a live lease: wait for its new pair.
    Wait,
    /// Take the lease and refresh.
    Refresh,
}

/// Below this much life left, a token is not sent even while another worker refreshes.
const STILL_VALID_MARGIN: Duration = Duration::from_secs(60);

fn left(expires_at: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(expires_at - now).unwrap_or(Duration::ZERO)
}

fn step(
    record: &TokenRecord,
    rejected: Option<&str>,
    now: OffsetDateTime,
    policy: &RefreshPolicy,
) -> Step {
    let was_rejected = rejected == Some(record.pair.access_token.as_str());
    let life = left(record.pair.access_expires_at, now);
    if !was_rejected && life > policy.refresh_before {
        return Step::Use;
    }
    if record.live_lease(now).is_none() {
        return Step::Refresh;
    }
    if !was_rejected && life > STILL_VALID_MARGIN {
        Step::Use
    } else {
        Step::Wait
    }
}

/// Fresh bearer tokens for one Keap app, from a shared [`TokenStore`].
pub struct OAuthTokens {
    store: Arc<dyn TokenStore>,
    issuer: Arc<dyn TokenIssuer>,
    policy: RefreshPolicy,
    /// Names this worker in the lease; unique per process and instance.
    holder: String,
    /// The last token this worker used, so most calls read no store.
    cached: Mutex<Option<(String, OffsetDateTime)>>,
}

impl std::fmt::Debug for OAuthTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthTokens")
            .field("holder", &self.holder)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// How a refresh by the lease holder ended, when it did not give a token.
enum Refused {
    /// Keap answered `invalid_grant` for this refresh token.
    Grant(String),
    Other(KeapError),
}

impl OAuthTokens {
    pub fn new(
        store: Arc<dyn TokenStore>,
        issuer: Arc<dyn TokenIssuer>,
        policy: RefreshPolicy,
    ) -> Self {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        let holder = format!(
            "pid{}-{nanos:x}-{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            store,
            issuer,
            policy,
            holder,
            cached: Mutex::new(None),
        }
    }

    /// An access token with more than `refresh_before` left, refreshing it if needed.
    pub async fn access_token(&self) -> Result<String, KeapError> {
        let now = OffsetDateTime::now_utc();
        let cached = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((token, expires_at)) = cached {
            if left(expires_at, now) > self.policy.refresh_before {
                return Ok(token);
            }
        }
        self.resolve(None).await
    }

    /// A token to replace one Keap answered 401 to: a newer one if another worker already
    /// refreshed, else a refresh through the lease.
    pub async fn replace_rejected(&self, rejected: &str) -> Result<String, KeapError> {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.resolve(Some(rejected)).await
    }

    async fn resolve(&self, rejected: Option<&str>) -> Result<String, KeapError> {
        let started = Instant::now();
        let mut refused: Option<String> = None;
        loop {
            let now = OffsetDateTime::now_utc();
            let record =
                self.store
                    .load()
                    .await?
                    .ok_or_else(|| KeapError::ReauthorisationNeeded {
                        reason: "the token store holds no token pair yet".into(),
                    })?;
            if refused.as_deref() == Some(record.pair.refresh_token.as_str()) {
                tracing::error!(
                    version = record.version,
                    "Keap refused the stored refresh token; re-authorisation needed"
                );
                return Err(KeapError::ReauthorisationNeeded {
                    reason: "Keap answered invalid_grant to the stored refresh token, and no worker has stored a newer one".into(),
                });
            }
            match step(&record, rejected, now, &self.policy) {
                Step::Use => return Ok(self.remember(&record.pair)),
                Step::Wait => {}
                Step::Refresh => {
                    let until =
                        now.saturating_add(self.policy.lease.try_into().unwrap_or_default());
                    if self
                        .store
                        .acquire_lease(record.version, &self.holder, until, now)
                        .await?
                    {
                        match self.refresh_holding_lease(&record).await {
                            Ok(pair) => return Ok(self.remember(&pair)),
                            // Re-read at once: someone may have rotated the pair.
                            Err(Refused::Grant(token)) => {
                                refused = Some(token);
                                continue;
                            }
                            Err(Refused::Other(e)) => return Err(e),
                        }
                    }
                }
            }
            if started.elapsed() >= self.policy.max_wait {
                return Err(KeapError::RefreshPending {
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(self.policy.poll).await;
        }
    }

    /// Spends the stored refresh token and stores the new pair before anyone uses it.
    async fn refresh_holding_lease(&self, record: &TokenRecord) -> Result<TokenPair, Refused> {
        match self.issuer.refresh(&record.pair.refresh_token).await {
            Ok(pair) => {
                let stored = self
                    .store
                    .complete_refresh(record.version, &self.holder, &pair)
                    .await
                    .map_err(|e| Refused::Other(e.into()))?;
                if stored {
                    tracing::info!(
                        version = record.version + 1,
                        "refreshed the Keap access token"
                    );
                    Ok(pair)
                } else {
                    // Only when the refresh outlived the lease: the endpoint's timeout is kept
                    // well under the lease so that this does not happen.
                    tracing::error!(
                        version = record.version,
                        "lost the refresh lease before storing the new Keap token pair"
                    );
                    Err(Refused::Other(KeapError::TokenStore {
                        detail: "the refresh lease expired before the new token pair was stored; if Keap answers invalid_grant next, re-authorise".into(),
                    }))
                }
            }
            Err(error) => {
                // Let the next worker try at once rather than after the lease expires. A
                // failed release only delays it until then.
                if let Err(e) = self.store.release_lease(&self.holder).await {
                    tracing::warn!(error = %e, "could not release the refresh lease");
                }
                match error {
                    KeapError::InvalidGrant { reason } => {
                        tracing::warn!(%reason, version = record.version, "Keap refused the refresh token; re-reading the store");
                        Err(Refused::Grant(record.pair.refresh_token.clone()))
                    }
                    other => Err(Refused::Other(other)),
                }
            }
        }
    }

    fn remember(&self, pair: &TokenPair) -> String {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((pair.access_token.clone(), pair.access_expires_at));
        pair.access_token.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{Lease, MemoryTokenStore};
    use super::*;
    use async_trait::async_trait;
    use std::sync::atomic::AtomicU32;

    /// Keap's rotation in miniature: each refresh token works once.
    struct Rotating {
        current: Mutex<String>,
        refreshes: AtomicU32,
    }

    #[async_trait]
    impl TokenIssuer for Rotating {
        async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, KeapError> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if *current != refresh_token {
                return Err(KeapError::InvalidGrant {
                    reason: "HTTP 400 invalid_grant: Invalid refresh token".into(),
                });
            }
            let n = self.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
            *current = format!("refresh-{n}");
            Ok(pair(&format!("access-{n}"), &current, 24 * 3600))
        }
    }

    fn pair(access: &str, refresh: &str, life_secs: i64) -> TokenPair {
        TokenPair {
            access_token: access.into(),
            refresh_token: refresh.into(),
            access_expires_at: OffsetDateTime::now_utc() + time::Duration::seconds(life_secs),
        }
    }

    fn record(life_secs: i64, lease: Option<Lease>) -> TokenRecord {
        TokenRecord {
            pair: pair("access-0", "refresh-0", life_secs),
            version: 1,
            lease,
        }
    }

    fn fast() -> RefreshPolicy {
        RefreshPolicy {
            poll: Duration::from_millis(5),
            max_wait: Duration::from_secs(5),
            ..RefreshPolicy::default()
        }
    }

    fn setup(record: TokenRecord, keap_refresh: &str) -> (Arc<MemoryTokenStore>, Arc<Rotating>) {
        (
            Arc::new(MemoryTokenStore::new(Some(record))),
            Arc::new(Rotating {
                current: Mutex::new(keap_refresh.into()),
                refreshes: AtomicU32::new(0),
            }),
        )
    }

    #[test]
    fn the_step_follows_life_left_leases_and_rejections() {
        let policy = RefreshPolicy::default();
        let now = OffsetDateTime::now_utc();
        let other = Some(Lease {
            holder: "other".into(),
            expires_at: now + time::Duration::seconds(10),
        });
        let stale = Some(Lease {
            holder: "crashed".into(),
            expires_at: now - time::Duration::seconds(1),
        });
        assert_eq!(step(&record(7200, None), None, now, &policy), Step::Use);
        assert_eq!(step(&record(1800, None), None, now, &policy), Step::Refresh);
        assert_eq!(
            step(&record(1800, other.clone()), None, now, &policy),
            Step::Use
        );
        assert_eq!(
            step(&record(-5, other.clone()), None, now, &policy),
            Step::Wait
        );
        assert_eq!(step(&record(-5, stale), None, now, &policy), Step::Refresh);
        assert_eq!(
            step(&record(7200, None), Some("access-0"), now, &policy),
            Step::Refresh
        );
        assert_eq!(
            step(&record(7200, other), Some("access-0"), now, &policy),
            Step::Wait
        );
        assert_eq!(
            step(&record(7200, None), Some("older-token"), now, &policy),
            Step::Use
        );
    }

    #[tokio::test]
    async fn concurrent_workers_refresh_once() {
        let (store, keap) = setup(record(-1, None), "refresh-0");
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let tokens = OAuthTokens::new(store.clone(), keap.clone(), fast());
                tokio::spawn(async move { tokens.access_token().await })
            })
            .collect();
        for worker in workers {
            assert_eq!(worker.await.expect("join").expect("token"), "access-1");
        }
        assert_eq!(keap.refreshes.load(Ordering::SeqCst), 1);
        let stored = store.load().await.expect("load").expect("record");
        assert_eq!((stored.version, stored.lease), (2, None));
    }

    #[tokio::test]
    async fn a_dead_refresh_token_asks_for_reauthorisation_and_writes_nothing() {
        let (store, keap) = setup(record(-1, None), "refresh-elsewhere");
        let tokens = OAuthTokens::new(store.clone(), keap.clone(), fast());
        let err = tokens.access_token().await.expect_err("dead");
        assert!(
            matches!(err, KeapError::ReauthorisationNeeded { .. }),
            "{err}"
        );
        assert!(!err.is_transient());
        assert!(err.to_string().contains("cks keap exchange-code"));
        let stored = store.load().await.expect("load").expect("record");
        assert_eq!((stored.version, stored.lease), (1, None));
        assert_eq!(stored.pair.refresh_token, "refresh-0");
    }

    #[tokio::test]
    async fn an_empty_store_asks_for_authorisation() {
        let store = Arc::new(MemoryTokenStore::default());
        let (_, keap) = setup(record(0, None), "x");
        let tokens = OAuthTokens::new(store, keap, fast());
        assert!(matches!(
            tokens.access_token().await,
            Err(KeapError::ReauthorisationNeeded { .. })
        ));
    }

    #[tokio::test]
    async fn a_live_lease_on_an_expired_token_is_waited_for_within_bounds() {
        let lease = Lease {
            holder: "stuck".into(),
            expires_at: OffsetDateTime::now_utc() + time::Duration::seconds(60),
        };
        let (store, keap) = setup(record(-1, Some(lease)), "refresh-0");
        let policy = RefreshPolicy {
            max_wait: Duration::from_millis(50),
            ..fast()
        };
        let tokens = OAuthTokens::new(store, keap.clone(), policy);
        let err = tokens.access_token().await.expect_err("pending");
        assert!(matches!(err, KeapError::RefreshPending { .. }), "{err}");
        assert!(err.is_transient());
        assert_eq!(keap.refreshes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_fresh_token_is_served_from_memory() {
        let (store, keap) = setup(record(7200, None), "refresh-0");
        let tokens = OAuthTokens::new(store.clone(), keap, fast());
        assert_eq!(tokens.access_token().await.expect("token"), "access-0");
        store
            .replace(&pair("access-new", "refresh-new", 7200))
            .await
            .expect("replace");
        assert_eq!(tokens.access_token().await.expect("cached"), "access-0");
        assert_eq!(
            tokens.replace_rejected("access-0").await.expect("re-read"),
            "access-new"
        );
    }
}

//! Keap OAuth against the stand-in's token endpoint and the token table in DynamoDB (moto):
//! concurrent workers refresh once, a rotated or dead refresh token is handled as
//! `docs/keap-auth.md` says, a crashed worker's lease is taken over, a revoked access token
//! costs one refresh and one retry, and `cks keap exchange-code` stores the first pair.

use async_trait::async_trait;
use integration_tests::keap_standin::{Fault, KeapStandIn};
use integration_tests::{aws_config_for, dynamodb_client, moto_endpoint, unique_name};
use shared::config::Vars;
use shared::keap::oauth::{
    ClientCredentials, DynamoDbTokenStore, KeapTokenEndpoint, OAuthTokens, RefreshPolicy,
    StoreError, TokenIssuer, TokenPair, TokenRecord, TokenStore,
};
use shared::keap::settings::{self, KeapSettings};
use shared::keap::{Credential, Crm, KeapClient, KeapClientConfig, KeapError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const KEY: &str = "keap-oauth";
const DAY: Duration = Duration::from_secs(86_400);

/// A fresh token table like the stack's: partition key `pk` (string), on demand.
async fn token_table() -> (aws_sdk_dynamodb::Client, String) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let client = dynamodb_client(&moto_endpoint()).await;
    let table = unique_name("keap-tokens");
    client
        .create_table()
        .table_name(&table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create table {table}: {e:?}"));
    (client, table)
}

fn client_credentials(keap: &KeapStandIn) -> ClientCredentials {
    let s = keap.state();
    ClientCredentials {
        client_id: s.oauth.client_id.clone(),
        client_secret: s.oauth.client_secret.clone(),
    }
}

fn endpoint(keap: &KeapStandIn) -> KeapTokenEndpoint {
    KeapTokenEndpoint::new(
        keap.token_url(),
        client_credentials(keap),
        Duration::from_secs(5),
    )
    .expect("endpoint")
}

/// One worker (one Lambda instance): its own client, sharing only the store.
fn worker(keap: &KeapStandIn, store: Arc<dyn TokenStore>) -> KeapClient {
    let policy = RefreshPolicy {
        poll: Duration::from_millis(100),
        max_wait: Duration::from_secs(10),
        ..RefreshPolicy::default()
    };
    let tokens = OAuthTokens::new(store, Arc::new(endpoint(keap)), policy);
    let mut config = KeapClientConfig::new(keap.base_url(), Credential::OAuth(Arc::new(tokens)));
    config.max_wait = Duration::from_secs(3);
    KeapClient::new(config).expect("client")
}

async fn stored(store: &dyn TokenStore) -> TokenRecord {
    store.load().await.expect("load").expect("a record")
}

fn bearers(keap: &KeapStandIn) -> Vec<Option<String>> {
    keap.state()
        .calls
        .iter()
        .filter(|c| c.path != "/token")
        .map(|c| c.bearer.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_workers_with_an_expired_token_refresh_once() {
    let keap = KeapStandIn::start().await;
    let (dynamodb, table) = token_table().await;
    let store = DynamoDbTokenStore::new(dynamodb, &table, KEY);
    let first = keap.grant_tokens(Duration::ZERO);
    assert_eq!(store.replace(&first).await.expect("seed"), 1);

    // Built the way the functions build it: settings, then build.
    let credentials = client_credentials(&keap);
    let vars: HashMap<&str, String> = HashMap::from([
        (settings::KEAP_CLIENT_ID, credentials.client_id),
        (settings::KEAP_CLIENT_SECRET, credentials.client_secret),
        (settings::KEAP_TOKEN_TABLE, table.clone()),
        (settings::KEAP_TOKEN_URL_VAR, keap.token_url()),
        (settings::KEAP_BASE_URL_VAR, keap.base_url()),
    ]);
    let settings = KeapSettings::from_vars(&Vars::from_pairs(vars)).expect("settings");
    let aws = aws_config_for(&moto_endpoint()).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let crm = settings
            .build(&aws)
            .await
            .expect("client")
            .expect("OAuth is configured");
        tasks.push(tokio::spawn(async move { crm.custom_fields().await }));
    }
    for task in tasks {
        task.await
            .expect("join")
            .expect("every worker's call succeeds");
    }

    assert_eq!(keap.refreshes(), 1, "exactly one refresh at Keap");
    assert_eq!(keap.state().oauth.refused_refreshes, 0);
    let record = stored(&store).await;
    assert_eq!((record.version, record.lease), (2, None));
    assert_eq!(
        Some(record.pair.refresh_token.as_str()),
        keap.state().oauth.refresh_token.as_deref()
    );
    let sent = bearers(&keap);
    assert_eq!(sent.len(), 8);
    assert!(
        sent.iter()
            .all(|b| b.as_deref() == Some(record.pair.access_token.as_str())),
        "nobody sent the expired token: {sent:?}"
    );
    assert!(keap.violations().is_empty(), "{:?}", keap.violations());
}

/// The store with another worker in it: right after we take the lease, that worker spends
/// the refresh token at Keap and stores its new pair (say, an instance of the previous
/// deployment that did not wait for the lease).
struct RotatedUnderneath {
    inner: DynamoDbTokenStore,
    other_worker: KeapTokenEndpoint,
    rotated: AtomicBool,
}

#[async_trait]
impl TokenStore for RotatedUnderneath {
    async fn load(&self) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.load().await
    }
    async fn acquire_lease(
        &self,
        version: u64,
        holder: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let taken = self
            .inner
            .acquire_lease(version, holder, until, now)
            .await?;
        if taken && !self.rotated.swap(true, Ordering::SeqCst) {
            let record = stored(&self.inner).await;
            let pair = self
                .other_worker
                .refresh(&record.pair.refresh_token)
                .await
                .map_err(|e| StoreError {
                    detail: format!("the other worker's refresh failed: {e}"),
                })?;
            self.inner.replace(&pair).await?;
        }
        Ok(taken)
    }
    async fn complete_refresh(
        &self,
        version: u64,
        holder: &str,
        pair: &TokenPair,
    ) -> Result<bool, StoreError> {
        self.inner.complete_refresh(version, holder, pair).await
    }
    async fn release_lease(&self, holder: &str) -> Result<bool, StoreError> {
        self.inner.release_lease(holder).await
    }
    async fn replace(&self, pair: &TokenPair) -> Result<u64, StoreError> {
        self.inner.replace(pair).await
    }
}

#[tokio::test]
async fn a_refresh_token_rotated_by_another_worker_is_read_back_not_reauthorised() {
    let keap = KeapStandIn::start().await;
    let (dynamodb, table) = token_table().await;
    let inner = DynamoDbTokenStore::new(dynamodb, &table, KEY);
    inner
        .replace(&keap.grant_tokens(Duration::ZERO))
        .await
        .expect("seed");
    let store = Arc::new(RotatedUnderneath {
        inner,
        other_worker: endpoint(&keap),
        rotated: AtomicBool::new(false),
    });
    let crm = worker(&keap, store.clone());

    crm.custom_fields()
        .await
        .expect("the call succeeds with the other worker's pair");

    assert!(store.rotated.load(Ordering::SeqCst));
    assert_eq!(
        keap.refreshes(),
        1,
        "only the other worker's refresh succeeded"
    );
    assert_eq!(
        keap.state().oauth.refused_refreshes,
        1,
        "ours was refused once, not retried"
    );
    let record = stored(store.as_ref()).await;
    assert_eq!(
        (record.version, record.lease),
        (2, None),
        "the other worker's pair stays"
    );
    assert_eq!(bearers(&keap), [Some(record.pair.access_token.clone())]);
    assert!(keap.violations().is_empty(), "{:?}", keap.violations());
}

#[tokio::test]
async fn a_dead_refresh_token_needs_reauthorisation_and_leaves_the_store_alone() {
    let keap = KeapStandIn::start().await;
    let (dynamodb, table) = token_table().await;
    let store = Arc::new(DynamoDbTokenStore::new(dynamodb, &table, KEY));
    let dead = keap.grant_tokens(Duration::ZERO);
    // Keap's chain moved on (a lost copy, a restored backup): the stored one is dead.
    keap.grant_tokens(DAY);
    store.replace(&dead).await.expect("seed");
    let before = stored(store.as_ref()).await;
    let crm = worker(&keap, store.clone());

    let err = crm.custom_fields().await.expect_err("no way to refresh");
    assert!(
        matches!(err, KeapError::ReauthorisationNeeded { .. }),
        "{err}"
    );
    assert!(!err.is_transient(), "permanent: a person must act");
    assert!(err.to_string().contains("cks keap exchange-code"), "{err}");
    assert_eq!(
        keap.state().oauth.refused_refreshes,
        1,
        "one attempt, no loop"
    );
    assert_eq!(
        stored(store.as_ref()).await,
        before,
        "nothing stale written"
    );
    assert!(bearers(&keap).is_empty(), "no API call with a dead token");

    // What docs/keap-auth.md says to do: authorise again, and the workers carry on.
    store
        .replace(&keap.grant_tokens(DAY))
        .await
        .expect("re-authorised");
    crm.custom_fields().await.expect("works again");
    assert_eq!(keap.refreshes(), 0);
    assert!(keap.violations().is_empty(), "{:?}", keap.violations());
}

#[tokio::test]
async fn a_crashed_workers_lease_is_taken_over_once_it_expires() {
    let keap = KeapStandIn::start().await;
    let (dynamodb, table) = token_table().await;
    for (key, lease_left_ms) in [("lease-expired", -10_000i64), ("lease-expiring", 1_500)] {
        let store = Arc::new(DynamoDbTokenStore::new(dynamodb.clone(), &table, key));
        store
            .replace(&keap.grant_tokens(Duration::ZERO))
            .await
            .expect("seed");
        let now = OffsetDateTime::now_utc();
        // The crashed worker took the lease and never came back.
        let until = now + time::Duration::milliseconds(lease_left_ms);
        let past = now - time::Duration::seconds(60);
        assert!(store
            .acquire_lease(1, "crashed-worker", until, past)
            .await
            .expect("lease"));
        let refreshes = keap.refreshes();
        let started = Instant::now();

        worker(&keap, store.clone())
            .custom_fields()
            .await
            .expect("taken over");

        assert_eq!(keap.refreshes(), refreshes + 1, "{key}");
        if lease_left_ms > 0 {
            assert!(
                started.elapsed() >= Duration::from_millis(1_000),
                "{key}: waited for the live lease, {:?}",
                started.elapsed()
            );
        }
        let record = stored(store.as_ref()).await;
        assert_eq!((record.version, record.lease), (2, None), "{key}");
    }
    assert_eq!(keap.state().oauth.refused_refreshes, 0);
    assert!(keap.violations().is_empty(), "{:?}", keap.violations());
}

#[tokio::test]
async fn a_revoked_access_token_costs_one_refresh_and_one_retry() {
    let keap = KeapStandIn::start().await;
    let (dynamodb, table) = token_table().await;
    let store = Arc::new(DynamoDbTokenStore::new(dynamodb, &table, KEY));
    store.replace(&keap.grant_tokens(DAY)).await.expect("seed");
    let crm = worker(&keap, store.clone());
    crm.custom_fields().await.expect("fresh token");
    assert_eq!(keap.refreshes(), 0, "a fresh token is not refreshed");

    keap.revoke_access_tokens();
    crm.custom_fields().await.expect("refreshed and retried");
    assert_eq!(keap.refreshes(), 1);
    let sent = bearers(&keap);
    assert_eq!(sent.len(), 3, "ok, 401, retry: {sent:?}");
    assert_ne!(sent[1], sent[2]);
    assert_eq!(stored(store.as_ref()).await.version, 2);

    // A second 401 right after the refresh is permanent.
    keap.inject(Fault::Unauthorized);
    keap.inject(Fault::Unauthorized);
    let err = crm.custom_fields().await.expect_err("twice refused");
    assert!(matches!(err, KeapError::Unauthorized { .. }), "{err}");
    assert!(!err.is_transient());
    assert_eq!(keap.refreshes(), 2, "one refresh per call, not a loop");
    assert_eq!(bearers(&keap).len(), 5);
    assert!(keap.violations().is_empty(), "{:?}", keap.violations());
}

/// `cks` against moto with only the Keap settings in `env` (none inherited).
async fn cks(env: &[(&str, String)], args: &[&str]) -> (bool, String, String) {
    let mut vars: Vec<(&str, Option<&str>)> = [
        settings::KEAP_CLIENT_ID,
        settings::KEAP_CLIENT_SECRET,
        settings::KEAP_TOKEN_TABLE,
        settings::KEAP_TOKEN_URL_VAR,
        settings::KEAP_API_KEY,
        settings::KEAP_API_KEY_SECRET_ARN,
        settings::KEAP_OAUTH_CLIENT_SECRET_ARN,
        settings::KEAP_TOKEN_KEY,
    ]
    .into_iter()
    .map(|name| (name, None))
    .collect();
    vars.extend(
        env.iter()
            .map(|(name, value)| (*name, Some(value.as_str()))),
    );
    let run = integration_tests::run_cks(args, &vars).await;
    (run.ok, run.stdout, run.stderr)
}

#[tokio::test]
async fn cks_keap_exchange_code_stores_the_first_pair() {
    let keap = KeapStandIn::start().await;
    let (dynamodb, table) = token_table().await;
    let credentials = client_credentials(&keap);
    let env = [
        (settings::KEAP_CLIENT_ID, credentials.client_id.clone()),
        (
            settings::KEAP_CLIENT_SECRET,
            credentials.client_secret.clone(),
        ),
        (settings::KEAP_TOKEN_TABLE, table.clone()),
        (settings::KEAP_TOKEN_URL_VAR, keap.token_url()),
    ];
    let redirect = "https://ops.example.com/keap/callback";

    let (ok, url, _) = cks(
        &env,
        &[
            "keap",
            "authorize-url",
            "--redirect-uri",
            redirect,
            "--state",
            "s1",
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(
        url.trim(),
        "https://accounts.infusionsoft.com/app/oauth/authorize?client_id=standin-client-id&redirect_uri=https%3A%2F%2Fops.example.com%2Fkeap%2Fcallback&response_type=code&scope=full&state=s1"
    );

    let code = keap.authorise(redirect);
    let exchange = [
        "keap",
        "exchange-code",
        "--code",
        &code,
        "--redirect-uri",
        redirect,
    ];
    let (ok, out, err) = cks(&env, &exchange).await;
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(&table) && out.contains("version 1"), "{out}");
    let store = DynamoDbTokenStore::new(dynamodb, &table, KEY);
    let record = stored(&store).await;
    assert_eq!(record.version, 1);
    assert_eq!(
        Some(record.pair.refresh_token.as_str()),
        keap.state().oauth.refresh_token.as_deref()
    );
    assert!(!out.contains(&record.pair.access_token) && !out.contains(&record.pair.refresh_token));
    assert!(record.pair.access_expires_at > OffsetDateTime::now_utc() + time::Duration::hours(23));
    assert_eq!(keap.state().oauth.exchanges, 1);

    // A used code is refused, says why, exits non-zero, and leaves the pair alone.
    let (ok, _, err) = cks(&env, &exchange).await;
    assert!(!ok);
    assert!(err.contains("invalid_grant"), "{err}");
    assert_eq!(stored(&store).await, record);
    // Without OAuth settings it says what to set.
    let (ok, _, err) = cks(&[], &exchange).await;
    assert!(!ok);
    assert!(err.contains("KEAP_CLIENT_ID"), "{err}");
    assert!(keap.violations().is_empty(), "{:?}", keap.violations());
}

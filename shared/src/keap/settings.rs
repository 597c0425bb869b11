//! How the Keap client authenticates, from the environment (locally) or Secrets Manager
//! (in AWS): an API key, or OAuth2 with the token pair in DynamoDB, or nothing at all, which
//! the caller turns into a dry run.

use super::client::KeapClient;
use super::oauth::{
    ClientCredentials, DynamoDbTokenStore, KeapTokenEndpoint, OAuthTokens, RefreshPolicy,
    KEAP_TOKEN_URL,
};
use super::transport::{Credential, KeapClientConfig, KEAP_BASE_URL};
use crate::config::{ConfigError, Secret, Vars};
use std::sync::Arc;
use std::time::Duration;

pub const KEAP_API_KEY: &str = "KEAP_API_KEY";
pub const KEAP_API_KEY_SECRET_ARN: &str = "KEAP_API_KEY_SECRET_ARN";
pub const KEAP_CLIENT_ID: &str = "KEAP_CLIENT_ID";
pub const KEAP_CLIENT_SECRET: &str = "KEAP_CLIENT_SECRET";
pub const KEAP_OAUTH_CLIENT_SECRET_ARN: &str = "KEAP_OAUTH_CLIENT_SECRET_ARN";
pub const KEAP_TOKEN_TABLE: &str = "KEAP_TOKEN_TABLE";
pub const KEAP_TOKEN_KEY: &str = "KEAP_TOKEN_KEY";
pub const KEAP_TOKEN_URL_VAR: &str = "KEAP_TOKEN_URL";
pub const KEAP_BASE_URL_VAR: &str = "KEAP_BASE_URL";
pub const KEAP_REQUESTS_PER_SECOND: &str = "KEAP_REQUESTS_PER_SECOND";

/// The token table item used when `KEAP_TOKEN_KEY` is not set.
pub const DEFAULT_TOKEN_KEY: &str = "keap-oauth";

/// Bound on one call to Keap's token endpoint: well under the refresh lease (30 s), so a
/// refresh that got an answer can always store it while it still holds the lease.
pub const TOKEN_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the OAuth pair lives and how to renew it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSettings {
    pub client: Secret<ClientCredentials>,
    pub token_table: String,
    pub token_key: String,
    pub token_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeapAuth {
    /// Nothing configured: the caller runs without Keap (dry run).
    None,
    ApiKey(Secret),
    OAuth(OAuthSettings),
}

/// Most `KEAP_REQUESTS_PER_SECOND` against Keap (an OAuth app's spike limit).
pub const MAX_REQUESTS_PER_SECOND: u32 = 25;
/// Most against a Keap stand-in on 127.0.0.1 or localhost (tests only).
pub const MAX_LOCAL_REQUESTS_PER_SECOND: u32 = 1000;

/// `http://127.0.0.1…` or `http://localhost…`: a stand-in, never Keap.
fn is_loopback(base_url: &str) -> bool {
    let rest = base_url.strip_prefix("http://").unwrap_or_default();
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    host == "127.0.0.1" || host == "localhost"
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeapSettings {
    pub base_url: String,
    pub auth: KeapAuth,
    /// Client-side ceiling per process (`KEAP_REQUESTS_PER_SECOND`, default 10, at most 25).
    /// Keap's limit is per key or app across all processes: divide it by the concurrency.
    pub requests_per_second: std::num::NonZeroU32,
}

/// The JSON secret behind `KEAP_OAUTH_CLIENT_SECRET_ARN`.
#[derive(serde::Deserialize)]
struct ClientSecretJson {
    client_id: String,
    client_secret: String,
}

impl KeapSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let present = |names: &[&'static str]| -> Vec<&'static str> {
            names
                .iter()
                .copied()
                .filter(|n| vars.value(n).is_some())
                .collect()
        };
        let key_vars = present(&[KEAP_API_KEY, KEAP_API_KEY_SECRET_ARN]);
        let oauth_vars = present(&[
            KEAP_CLIENT_ID,
            KEAP_CLIENT_SECRET,
            KEAP_OAUTH_CLIENT_SECRET_ARN,
        ]);
        if !key_vars.is_empty() && !oauth_vars.is_empty() {
            return Err(ConfigError::Conflict {
                set: [key_vars, oauth_vars].concat().join(", "),
                fix: "use an API key (KEAP_API_KEY or KEAP_API_KEY_SECRET_ARN) or OAuth (KEAP_CLIENT_ID + KEAP_CLIENT_SECRET, or KEAP_OAUTH_CLIENT_SECRET_ARN), not both".into(),
            });
        }
        let auth = if let Some(key) = vars.secret(KEAP_API_KEY, KEAP_API_KEY_SECRET_ARN)? {
            KeapAuth::ApiKey(key)
        } else if !oauth_vars.is_empty() {
            KeapAuth::OAuth(Self::oauth_from(vars)?)
        } else {
            KeapAuth::None
        };
        let base_url = vars
            .value(KEAP_BASE_URL_VAR)
            .unwrap_or_else(|| KEAP_BASE_URL.to_owned());
        // The ceiling protects Keap's spike limits; a stand-in on this machine has its own
        // (the backfill test runs 10,000 contacts through one at hundreds a second).
        let ceiling = if is_loopback(&base_url) {
            MAX_LOCAL_REQUESTS_PER_SECOND
        } else {
            MAX_REQUESTS_PER_SECOND
        };
        let requests_per_second = vars
            .bounded(KEAP_REQUESTS_PER_SECOND, &(1..=ceiling), |text| {
                format!("`{text}` is not a whole number from 1 to {ceiling} (Keap's spike limit is 10/s for a key, 25/s for an OAuth app)")
            })?
            .and_then(std::num::NonZeroU32::new)
            .unwrap_or(std::num::NonZeroU32::MIN.saturating_add(9));
        Ok(Self {
            base_url,
            auth,
            requests_per_second,
        })
    }

    fn oauth_from(vars: &Vars) -> Result<OAuthSettings, ConfigError> {
        let client = match (
            vars.value(KEAP_CLIENT_ID),
            vars.value(KEAP_CLIENT_SECRET),
            vars.value(KEAP_OAUTH_CLIENT_SECRET_ARN),
        ) {
            (Some(client_id), Some(client_secret), None) => Secret::Inline(ClientCredentials {
                client_id,
                client_secret,
            }),
            (None, None, Some(arn)) => Secret::Arn(arn),
            (Some(_), None, None) => {
                return Err(ConfigError::Missing(
                    KEAP_CLIENT_SECRET,
                    "KEAP_CLIENT_ID is set: set KEAP_CLIENT_SECRET to the app's client secret too",
                ))
            }
            (None, Some(_), None) => {
                return Err(ConfigError::Missing(
                    KEAP_CLIENT_ID,
                    "KEAP_CLIENT_SECRET is set: set KEAP_CLIENT_ID to the app's client id too",
                ))
            }
            _ => {
                return Err(ConfigError::Conflict {
                    set: format!("{KEAP_OAUTH_CLIENT_SECRET_ARN} and {KEAP_CLIENT_ID}/{KEAP_CLIENT_SECRET}"),
                    fix: "set KEAP_CLIENT_ID + KEAP_CLIENT_SECRET (local) or KEAP_OAUTH_CLIENT_SECRET_ARN (AWS), not both".into(),
                })
            }
        };
        let token_table = vars.required(
            KEAP_TOKEN_TABLE,
            "OAuth keeps the token pair in DynamoDB: set it to the token table's name",
        )?;
        Ok(OAuthSettings {
            client,
            token_table,
            token_key: vars
                .value(KEAP_TOKEN_KEY)
                .unwrap_or_else(|| DEFAULT_TOKEN_KEY.to_owned()),
            token_url: vars
                .value(KEAP_TOKEN_URL_VAR)
                .unwrap_or_else(|| KEAP_TOKEN_URL.to_owned()),
        })
    }

    /// The OAuth settings, for commands that only make sense with OAuth.
    pub fn oauth(&self) -> Result<&OAuthSettings, ConfigError> {
        match &self.auth {
            KeapAuth::OAuth(oauth) => Ok(oauth),
            _ => Err(ConfigError::Missing(
                KEAP_CLIENT_ID,
                "this needs OAuth: set KEAP_CLIENT_ID + KEAP_CLIENT_SECRET (or KEAP_OAUTH_CLIENT_SECRET_ARN) and KEAP_TOKEN_TABLE, and no API key",
            )),
        }
    }
}

impl OAuthSettings {
    /// The app's client id and secret, reading Secrets Manager once when they live there.
    pub async fn client_credentials(
        &self,
        aws: &aws_config::SdkConfig,
    ) -> Result<ClientCredentials, ConfigError> {
        self.client
            .read(aws, |arn, text| {
                // serde's message could quote the secret's content: say what is wanted instead.
                let json: ClientSecretJson =
                    serde_json::from_str(&text).map_err(|_| ConfigError::Invalid {
                        name: KEAP_OAUTH_CLIENT_SECRET_ARN,
                        reason: format!("secret {arn} must be JSON {{\"client_id\": \"…\", \"client_secret\": \"…\"}}"),
                    })?;
                Ok(ClientCredentials {
                    client_id: json.client_id,
                    client_secret: json.client_secret,
                })
            })
            .await
    }

    pub async fn token_endpoint(
        &self,
        aws: &aws_config::SdkConfig,
    ) -> Result<KeapTokenEndpoint, ConfigError> {
        let client = self.client_credentials(aws).await?;
        Ok(KeapTokenEndpoint::new(
            &self.token_url,
            client,
            TOKEN_ENDPOINT_TIMEOUT,
        )?)
    }

    pub fn token_store(&self, aws: &aws_config::SdkConfig) -> DynamoDbTokenStore {
        DynamoDbTokenStore::new(
            aws_sdk_dynamodb::Client::new(aws),
            &self.token_table,
            &self.token_key,
        )
    }
}

impl KeapSettings {
    /// A ready Keap client, or `None` when no credentials are configured (dry run). Secrets
    /// are read here, once.
    pub async fn build(
        &self,
        aws: &aws_config::SdkConfig,
    ) -> Result<Option<KeapClient>, ConfigError> {
        let credential = match &self.auth {
            KeapAuth::None => return Ok(None),
            KeapAuth::ApiKey(key) => Credential::ApiKey(key.read_trimmed(aws).await?),
            KeapAuth::OAuth(oauth) => Credential::OAuth(Arc::new(OAuthTokens::new(
                Arc::new(oauth.token_store(aws)),
                Arc::new(oauth.token_endpoint(aws).await?),
                RefreshPolicy::default(),
            ))),
        };
        let mut config = KeapClientConfig::new(&self.base_url, credential);
        config.requests_per_second = self.requests_per_second;
        Ok(Some(KeapClient::new(config)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<KeapSettings, ConfigError> {
        KeapSettings::from_vars(&Vars::from_pairs(vars.iter().copied()))
    }

    fn message(vars: &[(&str, &str)]) -> String {
        settings(vars)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn nothing_set_means_no_credentials_not_an_error() {
        let s = settings(&[]).expect("valid");
        assert_eq!(s.auth, KeapAuth::None);
        assert_eq!(s.base_url, KEAP_BASE_URL);
        // A token table alone (the stack may always set it) does not choose OAuth.
        assert_eq!(
            settings(&[(KEAP_TOKEN_TABLE, "t")]).expect("valid").auth,
            KeapAuth::None
        );
    }

    #[test]
    fn the_pace_ceiling_is_keaps_except_for_a_local_stand_in() {
        let pace = |url: &str, rate: &str| {
            settings(&[(KEAP_BASE_URL_VAR, url), (KEAP_REQUESTS_PER_SECOND, rate)])
                .map(|s| s.requests_per_second.get())
                .ok()
        };
        assert_eq!(pace(KEAP_BASE_URL, "25"), Some(25));
        assert_eq!(pace(KEAP_BASE_URL, "26"), None);
        assert_eq!(pace("http://127.0.0.1.example.com/crm/rest", "300"), None);
        assert_eq!(pace("http://127.0.0.1:4321/crm/rest", "300"), Some(300));
        assert_eq!(pace("http://localhost:4321", "1000"), Some(1000));
        assert_eq!(pace("http://localhost:4321", "1001"), None);
    }

    #[test]
    fn reads_each_mode() {
        let s = settings(&[
            (KEAP_API_KEY, " sak-1 "),
            (KEAP_BASE_URL_VAR, "http://127.0.0.1:1/crm/rest"),
        ])
        .expect("valid");
        assert_eq!(s.auth, KeapAuth::ApiKey(Secret::Inline("sak-1".into())));
        assert_eq!(s.base_url, "http://127.0.0.1:1/crm/rest");
        let s = settings(&[(KEAP_API_KEY_SECRET_ARN, "arn:key")]).expect("valid");
        assert_eq!(s.auth, KeapAuth::ApiKey(Secret::Arn("arn:key".into())));

        let s = settings(&[
            (KEAP_CLIENT_ID, "id"),
            (KEAP_CLIENT_SECRET, "secret"),
            (KEAP_TOKEN_TABLE, "tokens"),
        ])
        .expect("valid");
        let oauth = s.oauth().expect("oauth");
        assert_eq!(oauth.token_key, DEFAULT_TOKEN_KEY);
        assert_eq!(oauth.token_url, KEAP_TOKEN_URL);
        assert_eq!(oauth.token_table, "tokens");
        let s = settings(&[
            (KEAP_OAUTH_CLIENT_SECRET_ARN, "arn:client"),
            (KEAP_TOKEN_TABLE, "tokens"),
            (KEAP_TOKEN_KEY, "tenant-b"),
            (KEAP_TOKEN_URL_VAR, "http://127.0.0.1:1/token"),
        ])
        .expect("valid");
        let oauth = s.oauth().expect("oauth");
        assert_eq!(oauth.client, Secret::Arn("arn:client".into()));
        assert_eq!(
            (oauth.token_key.as_str(), oauth.token_url.as_str()),
            ("tenant-b", "http://127.0.0.1:1/token")
        );
    }

    #[test]
    fn each_mistake_names_its_variables() {
        let both = message(&[
            (KEAP_API_KEY, "k"),
            (KEAP_CLIENT_ID, "id"),
            (KEAP_CLIENT_SECRET, "s"),
            (KEAP_TOKEN_TABLE, "t"),
        ]);
        assert!(
            both.contains("KEAP_API_KEY, KEAP_CLIENT_ID, KEAP_CLIENT_SECRET are all set"),
            "{both}"
        );
        assert!(
            message(&[(KEAP_API_KEY, "k"), (KEAP_API_KEY_SECRET_ARN, "a")])
                .contains("only one of KEAP_API_KEY")
        );
        assert!(message(&[(KEAP_CLIENT_ID, "id"), (KEAP_TOKEN_TABLE, "t")])
            .starts_with("KEAP_CLIENT_SECRET is not set"));
        assert!(
            message(&[(KEAP_CLIENT_SECRET, "s"), (KEAP_TOKEN_TABLE, "t")])
                .starts_with("KEAP_CLIENT_ID is not set")
        );
        assert!(
            message(&[(KEAP_CLIENT_ID, "id"), (KEAP_CLIENT_SECRET, "s")])
                .starts_with("KEAP_TOKEN_TABLE is not set")
        );
        assert!(message(&[
            (KEAP_CLIENT_ID, "id"),
            (KEAP_CLIENT_SECRET, "s"),
            (KEAP_OAUTH_CLIENT_SECRET_ARN, "arn"),
            (KEAP_TOKEN_TABLE, "t")
        ])
        .contains("not both"));
        let err = settings(&[(KEAP_API_KEY, "k")])
            .expect("valid")
            .oauth()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("this needs OAuth"), "{err}");
    }

    #[test]
    fn debug_never_prints_keys_or_client_secrets() {
        for vars in [
            &[(KEAP_API_KEY, "hunter2-key")][..],
            &[
                (KEAP_CLIENT_ID, "id"),
                (KEAP_CLIENT_SECRET, "hunter2-secret"),
                (KEAP_TOKEN_TABLE, "t"),
            ][..],
        ] {
            let text = format!("{:?}", settings(vars).expect("valid"));
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}

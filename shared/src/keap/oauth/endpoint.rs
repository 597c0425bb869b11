//! Keap's OAuth2 token endpoint: the one-time code exchange and the
//! refresh, and the URL a person opens to authorise the app.
//!
//! Parameters always travel in the form body, never the query string: Keap answers
//! `invalid_grant` to a refresh token sent in the query.

use super::store::TokenPair;
use crate::keap::errors::KeapError;
use async_trait::async_trait;
use serde::Deserialize;
use std::time::Duration;
use time::OffsetDateTime;

/// Keap's token endpoint.
pub const KEAP_TOKEN_URL: &str = "https://api.infusionsoft.com/token";
/// Where a person grants the app access.
pub const KEAP_AUTHORIZE_URL: &str = "https://accounts.infusionsoft.com/app/oauth/authorize";

/// The app's OAuth client id and secret (Keap developer portal).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for ClientCredentials {
    // The id is not secret and helps tell apps apart; the secret is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// What the token endpoint answers.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
}

/// Turns a refresh token into a new pair. Keap's endpoint is [`KeapTokenEndpoint`]; unit
/// tests stand in for it.
#[async_trait]
pub trait TokenIssuer: Send + Sync {
    /// Spends `refresh_token` (Keap kills it at once) and answers the new pair.
    async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, KeapError>;
}

pub struct KeapTokenEndpoint {
    http: reqwest::Client,
    url: String,
    client: ClientCredentials,
}

impl KeapTokenEndpoint {
    /// `timeout` bounds each call; it must stay well under the refresh lease, so a slow
    /// answer cannot outlive the lease and leave the new pair unstorable.
    pub fn new(
        url: impl Into<String>,
        client: ClientCredentials,
        timeout: Duration,
    ) -> Result<Self, KeapError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| KeapError::Network {
                detail: e.to_string(),
            })?;
        Ok(Self {
            http,
            url: url.into(),
            client,
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client.client_id
    }

    /// The one-time exchange of the code Keap sent to `redirect_uri` after a person
    /// authorised the app.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
    ) -> Result<TokenPair, KeapError> {
        let form = [
            ("client_id", self.client.client_id.as_str()),
            ("client_secret", self.client.client_secret.as_str()),
            ("code", code),
            ("grant_type", "authorization_code"),
            ("redirect_uri", redirect_uri),
        ];
        self.post(self.http.post(&self.url).form(&form)).await
    }

    async fn post(&self, request: reqwest::RequestBuilder) -> Result<TokenPair, KeapError> {
        use crate::telemetry::metrics::{keap_call, CallStatus};
        // Token calls count against nothing in Keap's API quota, but a failing token endpoint
        // is worth seeing next to the API calls.
        const OPERATION: &str = "oauth_token";
        let response = request.send().await.map_err(|e| {
            keap_call(OPERATION, CallStatus::Network);
            KeapError::Network {
                detail: format!(
                    "Keap token endpoint: {}",
                    super::super::transport::without_url(&e)
                ),
            }
        })?;
        let status = response.status().as_u16();
        keap_call(OPERATION, CallStatus::Http(status));
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| KeapError::Network {
            detail: format!(
                "Keap token endpoint: {}",
                super::super::transport::without_url(&e)
            ),
        })?;
        let now = OffsetDateTime::now_utc();
        if !(200..300).contains(&status) {
            return Err(KeapError::from_response(status, &headers, &bytes, now));
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&bytes).map_err(|e| KeapError::Network {
                // serde's message names the missing field, never the tokens.
                detail: format!("unreadable answer from Keap's token endpoint ({e})"),
            })?;
        let lifetime = i64::try_from(answer.expires_in).unwrap_or(i64::MAX);
        Ok(TokenPair {
            access_token: answer.access_token,
            refresh_token: answer.refresh_token,
            access_expires_at: now.saturating_add(time::Duration::seconds(lifetime)),
        })
    }
}

#[async_trait]
impl TokenIssuer for KeapTokenEndpoint {
    async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, KeapError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        let request = self
            .http
            .post(&self.url)
            .basic_auth(&self.client.client_id, Some(&self.client.client_secret))
            .form(&form);
        self.post(request).await
    }
}

/// The page a person opens to authorise the app; Keap then redirects to `redirect_uri` with
/// `?code=…&state=…`.
pub fn authorize_url(
    client_id: &str,
    redirect_uri: &str,
    state: Option<&str>,
) -> Result<String, KeapError> {
    let mut params = vec![
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("response_type", "code"),
        ("scope", "full"),
    ];
    if let Some(state) = state {
        params.push(("state", state));
    }
    reqwest::Url::parse_with_params(KEAP_AUTHORIZE_URL, &params)
        .map(String::from)
        .map_err(|e| KeapError::Permanent {
            status: 0,
            reason: format!("could not build the authorisation URL ({e})"),
            request_id: None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorize_url_encodes_every_parameter() {
        let url =
            authorize_url("abc 123", "https://example.com/cb?x=1&y=2", Some("s/1")).expect("url");
        assert_eq!(
            url,
            "https://accounts.infusionsoft.com/app/oauth/authorize?client_id=abc+123&redirect_uri=https%3A%2F%2Fexample.com%2Fcb%3Fx%3D1%26y%3D2&response_type=code&scope=full&state=s%2F1"
        );
        assert!(!authorize_url("id", "https://e.com/cb", None)
            .expect("url")
            .contains("state="));
    }

    #[test]
    fn debug_hides_the_client_secret() {
        let client = ClientCredentials {
            client_id: "app-id".into(),
            client_secret: "hunter2".into(),
        };
        let text = format!("{client:?}");
        assert!(
            text.contains("app-id") && !text.contains("hunter2"),
            "{text}"
        );
    }
}

//! The stand-in's OAuth2 token endpoint (`POST /token`) and its bearer tokens, as Keap does
//! them: the code exchange checks `client_secret` in the form body, the
//! refresh checks HTTP Basic client authentication, every refresh rotates the refresh token
//! and the old one dies at once (`400 invalid_grant`), and parameters in the query string
//! are refused.

use super::{lock, KeapStandIn, State};
use crate::keap_contract::Violation;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use shared::keap::oauth::TokenPair;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The stand-in's OAuth app and the token chain it issued.
#[derive(Debug)]
pub struct OAuthState {
    pub client_id: String,
    pub client_secret: String,
    /// `expires_in` of the access tokens it issues.
    pub token_lifetime: Duration,
    /// Access tokens that work, and when each stops working.
    pub access_tokens: BTreeMap<String, Instant>,
    /// The one refresh token that works now; each refresh replaces it.
    pub refresh_token: Option<String>,
    /// Authorisation codes not yet exchanged, with their `redirect_uri`.
    pub codes: BTreeMap<String, String>,
    /// Successful refreshes.
    pub refreshes: u32,
    /// Refreshes answered `invalid_grant`.
    pub refused_refreshes: u32,
    /// Successful code exchanges.
    pub exchanges: u32,
    serial: u64,
}

impl Default for OAuthState {
    fn default() -> Self {
        Self {
            client_id: "standin-client-id".into(),
            client_secret: "standin-client-secret".into(),
            token_lifetime: Duration::from_secs(86_400),
            access_tokens: BTreeMap::new(),
            refresh_token: None,
            codes: BTreeMap::new(),
            refreshes: 0,
            refused_refreshes: 0,
            exchanges: 0,
            serial: 0,
        }
    }
}

impl OAuthState {
    fn next(&mut self, kind: &str) -> String {
        self.serial += 1;
        format!("standin-{kind}-{}", self.serial)
    }

    /// A new access token and a new refresh token; the previous refresh token dies.
    fn issue(&mut self, lifetime: Duration) -> (String, String) {
        let access = self.next("access");
        let refresh = self.next("refresh");
        self.access_tokens
            .insert(access.clone(), Instant::now() + lifetime);
        self.refresh_token = Some(refresh.clone());
        (access, refresh)
    }

    pub fn access_token_works(&self, token: &str) -> bool {
        self.access_tokens
            .get(token)
            .is_some_and(|dies| *dies > Instant::now())
    }
}

impl KeapStandIn {
    /// `http://127.0.0.1:<port>/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// A code, as if a person had just authorised the app and Keap redirected them to
    /// `redirect_uri`.
    pub fn authorise(&self, redirect_uri: &str) -> String {
        let mut s = self.state();
        let code = s.oauth.next("code");
        s.oauth.codes.insert(code.clone(), redirect_uri.to_owned());
        code
    }

    /// A token chain as if a code had been exchanged, with an access token that lives
    /// `lifetime` (zero: already expired). Tests put it in the token store.
    pub fn grant_tokens(&self, lifetime: Duration) -> TokenPair {
        let (access_token, refresh_token) = self.state().oauth.issue(lifetime);
        TokenPair {
            access_token,
            refresh_token,
            access_expires_at: time::OffsetDateTime::now_utc()
                + time::Duration::try_from(lifetime).unwrap_or_default(),
        }
    }

    /// Every access token stops working (revoked before its expiry).
    pub fn revoke_access_tokens(&self) {
        self.state().oauth.access_tokens.clear();
    }

    /// Successful refreshes so far.
    pub fn refreshes(&self) -> u32 {
        self.state().oauth.refreshes
    }
}

/// Answers `POST /token`.
pub(super) fn serve(
    state: &Mutex<State>,
    method: &str,
    query: Option<&str>,
    authorization: Option<&str>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let mut s = lock(state);
    let outcome = answer(&mut s.oauth, method, query, authorization, body);
    let (status, answer, recorded) = match outcome {
        Ok((status, answer, operation)) => (status, answer, Ok(operation)),
        Err((status, answer, reason)) => (status, answer, Err(Violation::TokenRequest { reason })),
    };
    s.calls.push(super::Call {
        method: method.to_owned(),
        path: "/token".into(),
        query: query.map(str::to_owned),
        body: None,
        outcome: recorded,
        api_key: None,
        bearer: None,
        at: std::time::Instant::now(),
    });
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

type Answer = (u16, Value, String);

/// `Ok` for requests a correct client makes (even when Keap refuses the grant), `Err` for
/// requests Keap's documentation says are wrong.
fn answer(
    oauth: &mut OAuthState,
    method: &str,
    query: Option<&str>,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<Answer, Answer> {
    let wrong = |status: u16, error: &str, reason: &str| {
        (
            status,
            json!({"error": error, "error_description": reason}),
            reason.to_owned(),
        )
    };
    if method != "POST" {
        return Err(wrong(
            405,
            "invalid_request",
            "the token endpoint takes POST only",
        ));
    }
    if query.is_some_and(|q| !q.is_empty()) {
        // Keap answers invalid_grant to a refresh token in the query string.
        return Err(wrong(
            400,
            "invalid_grant",
            "parameters belong in the form body, not the query string",
        ));
    }
    let form = shared::chargify::FormBody::parse(body)
        .map_err(|_| wrong(400, "invalid_request", "the body is not a form"))?;
    let field = |name: &str| form.get_non_empty(name).map(str::to_owned);
    match field("grant_type").as_deref() {
        Some("refresh_token") => {
            let client = basic_auth(authorization).ok_or_else(|| {
                wrong(
                    401,
                    "invalid_client",
                    "a refresh authenticates the client with HTTP Basic",
                )
            })?;
            if client != (oauth.client_id.clone(), oauth.client_secret.clone()) {
                return Err(wrong(401, "invalid_client", "Invalid client credentials"));
            }
            let presented = field("refresh_token")
                .ok_or_else(|| wrong(400, "invalid_request", "refresh_token is missing"))?;
            if oauth.refresh_token.as_deref() != Some(presented.as_str()) {
                oauth.refused_refreshes += 1;
                return Ok((
                    400,
                    json!({"error": "invalid_grant", "error_description": "Invalid refresh token"}),
                    "token:refresh_token (refused)".into(),
                ));
            }
            oauth.refreshes += 1;
            let lifetime = oauth.token_lifetime;
            Ok((
                200,
                token_answer(oauth.issue(lifetime), lifetime),
                "token:refresh_token".into(),
            ))
        }
        Some("authorization_code") => {
            let (Some(id), Some(secret), Some(code), Some(redirect_uri)) = (
                field("client_id"),
                field("client_secret"),
                field("code"),
                field("redirect_uri"),
            ) else {
                return Err(wrong(
                    400,
                    "invalid_request",
                    "the exchange needs client_id, client_secret, code and redirect_uri",
                ));
            };
            if (id, secret) != (oauth.client_id.clone(), oauth.client_secret.clone()) {
                return Err(wrong(401, "invalid_client", "Invalid client credentials"));
            }
            if oauth.codes.get(&code) != Some(&redirect_uri) {
                return Ok((
                    400,
                    json!({"error": "invalid_grant", "error_description": "Invalid authorization code"}),
                    "token:authorization_code (refused)".into(),
                ));
            }
            oauth.codes.remove(&code);
            oauth.exchanges += 1;
            let lifetime = oauth.token_lifetime;
            Ok((
                200,
                token_answer(oauth.issue(lifetime), lifetime),
                "token:authorization_code".into(),
            ))
        }
        _ => Err(wrong(
            400,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        )),
    }
}

fn token_answer((access, refresh): (String, String), lifetime: Duration) -> Value {
    json!({
        "access_token": access,
        "refresh_token": refresh,
        "expires_in": lifetime.as_secs(),
        "token_type": "bearer",
        "scope": "full|standin.infusionsoft.com",
    })
}

/// `(client_id, client_secret)` from `Authorization: Basic …`.
fn basic_auth(header: Option<&str>) -> Option<(String, String)> {
    let encoded = header?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Keap's answer to an expired, revoked or unknown bearer token (Apigee's fault shape).
pub(super) fn invalid_access_token(state: &Mutex<State>) -> Response<Full<Bytes>> {
    super::respond(
        state,
        401,
        json!({"fault": {"faultstring": "Invalid access token", "detail": {"errorcode": "oauth.v2.InvalidAccessToken"}}}),
    )
}

//! Where the Chargify REST client points and how it authenticates, from the environment
//! (locally) or Secrets Manager (in AWS). Same conventions as the Keap settings.

use super::client::{ChargifyClient, ChargifyClientConfig, Region};
use crate::chargify::signature::is_valid_subdomain;
use crate::config::{read_secret, ConfigError};
use crate::keap::settings::SecretSource;

pub const CHARGIFY_SITE: &str = "CHARGIFY_SITE";
pub const CHARGIFY_REGION: &str = "CHARGIFY_REGION";
pub const CHARGIFY_API_KEY: &str = "CHARGIFY_API_KEY";
pub const CHARGIFY_API_KEY_SECRET_ARN: &str = "CHARGIFY_API_KEY_SECRET_ARN";
/// Tests and local runs only: replaces the host the site and region choose.
pub const CHARGIFY_BASE_URL: &str = "CHARGIFY_BASE_URL";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargifySettings {
    pub site: String,
    pub region: Region,
    pub api_key: SecretSource<String>,
    pub base_url_override: Option<String>,
}

impl ChargifySettings {
    /// Reads the settings through `var` (the process environment, or a map in tests).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let site = set(CHARGIFY_SITE).ok_or(ConfigError::Missing(
            CHARGIFY_SITE,
            "set it to the Chargify site's subdomain (`acme` for acme.chargify.com)",
        ))?;
        if !is_valid_subdomain(&site) {
            return Err(ConfigError::Invalid {
                name: CHARGIFY_SITE,
                reason: format!("`{site}` is not a subdomain (a–z, 0–9 and -, as in acme for acme.chargify.com)"),
            });
        }
        let region = match set(CHARGIFY_REGION)
            .map(|r| r.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("us") => Region::Us,
            Some("eu") => Region::Eu,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: CHARGIFY_REGION,
                    reason: format!(
                    "`{other}` is neither `us` (*.chargify.com) nor `eu` (*.ebilling.maxio.com)"
                ),
                })
            }
        };
        let api_key = match (set(CHARGIFY_API_KEY), set(CHARGIFY_API_KEY_SECRET_ARN)) {
            (Some(key), None) => SecretSource::Inline(key),
            (None, Some(arn)) => SecretSource::Arn(arn),
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict {
                    set: format!("{CHARGIFY_API_KEY}, {CHARGIFY_API_KEY_SECRET_ARN}"),
                    fix: "set only one of CHARGIFY_API_KEY (local) and CHARGIFY_API_KEY_SECRET_ARN (AWS)",
                })
            }
            (None, None) => {
                return Err(ConfigError::Missing(
                    CHARGIFY_API_KEY,
                    "set it (or CHARGIFY_API_KEY_SECRET_ARN) to a Chargify API key (Config → Integrations → API keys)",
                ))
            }
        };
        let base_url_override = match set(CHARGIFY_BASE_URL) {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return Err(ConfigError::Invalid {
                    name: CHARGIFY_BASE_URL,
                    reason: format!("`{url}` is not an http(s) URL; leave it unset outside tests"),
                })
            }
            other => other,
        };
        Ok(Self {
            site,
            region,
            api_key,
            base_url_override,
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The override, else the site's host in its region.
    pub fn base_url(&self) -> String {
        self.base_url_override
            .clone()
            .unwrap_or_else(|| self.region.base_url(&self.site))
    }
}

/// A ready client. The secret, if any, is read here, once.
pub async fn build_client(
    settings: &ChargifySettings,
    aws: &aws_config::SdkConfig,
) -> Result<ChargifyClient, ConfigError> {
    let key = match &settings.api_key {
        SecretSource::Inline(key) => key.clone(),
        SecretSource::Arn(arn) => read_secret(arn, aws).await?.trim().to_owned(),
    };
    ChargifyClient::new(ChargifyClientConfig::new(settings.base_url(), key)).map_err(|e| {
        ConfigError::Invalid {
            name: CHARGIFY_BASE_URL,
            reason: format!("could not set up the Chargify client: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<ChargifySettings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ChargifySettings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn site_region_and_key_choose_the_host() {
        let us = settings(&[(CHARGIFY_SITE, "acme"), (CHARGIFY_API_KEY, "k")]).expect("valid");
        assert_eq!(us.base_url(), "https://acme.chargify.com");
        assert_eq!(us.api_key, SecretSource::Inline("k".into()));
        let eu = settings(&[
            (CHARGIFY_SITE, "acme"),
            (CHARGIFY_REGION, "EU"),
            (CHARGIFY_API_KEY_SECRET_ARN, "arn:x"),
        ])
        .expect("valid");
        assert_eq!(eu.base_url(), "https://acme.ebilling.maxio.com");
        assert_eq!(eu.api_key, SecretSource::Arn("arn:x".into()));
        let local = settings(&[
            (CHARGIFY_SITE, "acme"),
            (CHARGIFY_API_KEY, "k"),
            (CHARGIFY_BASE_URL, "http://127.0.0.1:9"),
        ])
        .expect("valid");
        assert_eq!(local.base_url(), "http://127.0.0.1:9");
        assert!(!format!("{local:?}").contains("\"k\""));
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(CHARGIFY_API_KEY, "k")], CHARGIFY_SITE),
            (
                &[(CHARGIFY_SITE, "Acme.com"), (CHARGIFY_API_KEY, "k")],
                CHARGIFY_SITE,
            ),
            (&[(CHARGIFY_SITE, "acme")], CHARGIFY_API_KEY),
            (
                &[
                    (CHARGIFY_SITE, "acme"),
                    (CHARGIFY_API_KEY, "k"),
                    (CHARGIFY_REGION, "asia"),
                ],
                CHARGIFY_REGION,
            ),
            (
                &[
                    (CHARGIFY_SITE, "acme"),
                    (CHARGIFY_API_KEY, "k"),
                    (CHARGIFY_API_KEY_SECRET_ARN, "arn:x"),
                ],
                CHARGIFY_API_KEY_SECRET_ARN,
            ),
            (
                &[
                    (CHARGIFY_SITE, "acme"),
                    (CHARGIFY_API_KEY, "k"),
                    (CHARGIFY_BASE_URL, "acme"),
                ],
                CHARGIFY_BASE_URL,
            ),
        ];
        for (vars, name) in cases {
            let error = settings(vars).expect_err("refused").to_string();
            assert!(error.contains(name), "{error} should name {name}");
        }
    }
}

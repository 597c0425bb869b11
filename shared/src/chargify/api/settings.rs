//! Where the Chargify REST client points and how it authenticates, from the environment
//! (locally) or Secrets Manager (in AWS). Same conventions as the Keap settings.

use super::client::{ChargifyClient, ChargifyClientConfig, Region};
use crate::chargify::signature::is_valid_subdomain;
use crate::config::{ConfigError, Secret, Vars};

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
    pub api_key: Secret,
    pub base_url_override: Option<String>,
}

impl ChargifySettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let site = vars.required(
            CHARGIFY_SITE,
            "set it to the Chargify site's subdomain (`acme` for acme.chargify.com)",
        )?;
        if !is_valid_subdomain(&site) {
            return Err(ConfigError::Invalid {
                name: CHARGIFY_SITE,
                reason: format!("`{site}` is not a subdomain (a–z, 0–9 and -, as in acme for acme.chargify.com)"),
            });
        }
        let region = match vars
            .value(CHARGIFY_REGION)
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
        let api_key = vars
            .secret(CHARGIFY_API_KEY, CHARGIFY_API_KEY_SECRET_ARN)?
            .ok_or(ConfigError::Missing(
                CHARGIFY_API_KEY,
                "set it (or CHARGIFY_API_KEY_SECRET_ARN) to a Chargify API key (Config → Integrations → API keys)",
            ))?;
        let base_url_override = match vars.value(CHARGIFY_BASE_URL) {
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

    /// The override, else the site's host in its region.
    pub fn base_url(&self) -> String {
        self.base_url_override
            .clone()
            .unwrap_or_else(|| self.region.base_url(&self.site))
    }

    /// A ready client. The secret, if any, is read here, once.
    pub async fn build(&self, aws: &aws_config::SdkConfig) -> Result<ChargifyClient, ConfigError> {
        let key = self.api_key.read_trimmed(aws).await?;
        ChargifyClient::new(ChargifyClientConfig::new(self.base_url(), key)).map_err(|e| {
            ConfigError::Invalid {
                name: CHARGIFY_BASE_URL,
                reason: format!("could not set up the Chargify client: {e}"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<ChargifySettings, ConfigError> {
        ChargifySettings::from_vars(&Vars::from_pairs(vars.iter().copied()))
    }

    #[test]
    fn site_region_and_key_choose_the_host() {
        let us = settings(&[(CHARGIFY_SITE, "acme"), (CHARGIFY_API_KEY, "k")]).expect("valid");
        assert_eq!(us.base_url(), "https://acme.chargify.com");
        assert_eq!(us.api_key, Secret::Inline("k".into()));
        let eu = settings(&[
            (CHARGIFY_SITE, "acme"),
            (CHARGIFY_REGION, "EU"),
            (CHARGIFY_API_KEY_SECRET_ARN, "arn:x"),
        ])
        .expect("valid");
        assert_eq!(eu.base_url(), "https://acme.ebilling.maxio.com");
        assert_eq!(eu.api_key, Secret::Arn("arn:x".into()));
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

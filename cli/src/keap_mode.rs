//! Which Keap the local commands talk to: the real one when credentials are configured (the
//! same variables and `KeapSettings::build` as the processor Lambda), else none (dry run).

use shared::config::{ConfigError, Secret, Vars};
use shared::keap::settings::{KeapAuth, KeapSettings};
use shared::keap::KeapClient;
use std::time::Duration;

/// Bound on AWS calls (Secrets Manager, the DynamoDB token table) made to get credentials.
const AWS_TIMEOUT: Duration = Duration::from_secs(10);

/// The Keap client, or `None` for a dry run, and the settings it came from.
pub async fn client(vars: &Vars) -> Result<(KeapSettings, Option<KeapClient>), ConfigError> {
    let settings = KeapSettings::from_vars(vars)?;
    // An inline key (or none) needs no AWS.
    let aws = match &settings.auth {
        KeapAuth::None | KeapAuth::ApiKey(Secret::Inline(_)) => shared::aws::offline_config(),
        _ => shared::aws::sdk_config(AWS_TIMEOUT, None).await,
    };
    let client = settings.build(&aws).await?;
    Ok((settings, client))
}

/// How the mode is announced (no secret in it).
pub fn describe(settings: &KeapSettings, live: bool) -> String {
    if !live {
        return "DRY RUN: no Keap credentials (KEAP_API_KEY or the OAuth variables); every Keap call is printed, none is sent".into();
    }
    let how = match &settings.auth {
        KeapAuth::ApiKey(_) => "API key",
        KeapAuth::OAuth(_) => "OAuth",
        KeapAuth::None => "no credentials",
    };
    format!("LIVE: changes Keap at {} ({how})", settings.base_url)
}

//! Which Keap the local commands talk to: the real one when credentials are configured (the
//! same variables and `build_client` as the processor Lambda), else none (dry run).

use shared::config::ConfigError;
use shared::keap::settings::{build_client, KeapAuth, KeapSettings, SecretSource};
use shared::keap::KeapClient;
use std::time::Duration;

/// Bound on AWS calls (Secrets Manager, the DynamoDB token table) made to get credentials.
const AWS_TIMEOUT: Duration = Duration::from_secs(10);

/// The Keap client, or `None` for a dry run, and the settings it came from.
pub async fn client_from_env() -> Result<(KeapSettings, Option<KeapClient>), ConfigError> {
    let settings = KeapSettings::from_env()?;
    // An inline key (or none) needs no AWS: skip the SDK's credential and region discovery,
    // which probes instance metadata on a laptop.
    let aws = match &settings.auth {
        KeapAuth::None | KeapAuth::ApiKey(SecretSource::Inline(_)) => {
            aws_config::SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .build()
        }
        _ => shared::entrypoints::aws_config(AWS_TIMEOUT, None).await,
    };
    let client = build_client(&settings, &aws).await?;
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

//! AWS wiring shared by the Lambda functions, `cks` and the tests: the SDK's HTTPS client,
//! its configuration (timeouts, region), and the one read of a Secrets Manager secret.

use crate::config::ConfigError;
use std::time::Duration;

/// The HTTPS client every AWS SDK client uses: rustls over ring. The SDK's default (rustls
/// over aws-lc) adds about 2 MB to each bootstrap and a C build to every compile; ring is
/// also what rustls used for years, and it carries assembly SHA-256 on arm64 and x86_64.
pub fn https_client() -> aws_sdk_sqs::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// AWS SDK configuration from the standard chain (credentials, region, and `AWS_ENDPOINT_URL`
/// for emulators), with a bound on each call so a slow AWS dependency becomes an error we
/// answer rather than a Lambda timeout. Lambda always sets `AWS_REGION`; elsewhere the region
/// falls back to `fallback_region`, then `us-east-1` (any region works with an emulator).
pub async fn sdk_config(
    operation_timeout: Duration,
    fallback_region: Option<String>,
) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(operation_timeout / 2)
        .operation_timeout(operation_timeout)
        .build();
    // The loader resolves the region itself (environment, profile, instance metadata) with our
    // HTTP client; building a RegionProviderChain by hand would make one without it.
    let loader = || {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(https_client())
            .timeout_config(timeouts.clone())
    };
    let config = loader().load().await;
    if config.region().is_some() {
        return config;
    }
    let region = fallback_region.unwrap_or_else(|| "us-east-1".to_owned());
    tracing::info!(
        region = region.as_str(),
        "no AWS region configured; using a fallback"
    );
    loader()
        .region(aws_config::Region::new(region))
        .load()
        .await
}

/// The region in an SQS queue URL (`https://sqs.eu-west-1.amazonaws.com/123/q.fifo`).
pub fn region_of_queue_url(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let mut labels = host.split('.');
    match (labels.next(), labels.next()) {
        (Some("sqs"), Some(region)) if region.contains('-') => Some(region.to_owned()),
        _ => None,
    }
}

/// Configuration for a run that makes no AWS call (a local `cks` run with inline keys): the
/// default chain would look for credentials and a region, which probes instance metadata on
/// a laptop and waits for it to time out.
pub fn offline_config() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build()
}

/// The text of a Secrets Manager secret, read once (at cold start). Every secret of
/// [`crate::config::Secret`] is read here.
pub async fn read_secret(arn: &str, aws: &aws_config::SdkConfig) -> Result<String, ConfigError> {
    let client = aws_sdk_secretsmanager::Client::new(aws);
    let unreadable = |detail: String| ConfigError::SecretUnreadable {
        arn: arn.to_owned(),
        detail,
    };
    let output = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| {
            // A secret created without a value has no AWSCURRENT version: Secrets Manager
            // answers ResourceNotFound "…can't find the specified secret value…".
            let no_value = e.as_service_error().is_some_and(|service| {
                service.is_resource_not_found_exception()
                    && service
                        .meta()
                        .message()
                        .is_some_and(|m| m.contains("secret value"))
            });
            if no_value {
                return ConfigError::SecretHasNoValue {
                    arn: arn.to_owned(),
                };
            }
            unreadable(aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string())
        })?;
    match output.secret_string() {
        Some(text) if !text.trim().is_empty() => Ok(text.to_owned()),
        Some(_) => Err(ConfigError::SecretHasNoValue {
            arn: arn.to_owned(),
        }),
        None => Err(unreadable(
            "the secret has no SecretString (binary secrets are not supported)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::region_of_queue_url;

    #[test]
    fn reads_the_region_of_aws_queue_urls_only() {
        let aws = "https://sqs.eu-west-1.amazonaws.com/123456789012/webhooks.fifo";
        assert_eq!(region_of_queue_url(aws).as_deref(), Some("eu-west-1"));
        assert_eq!(
            region_of_queue_url("http://127.0.0.1:5000/123456789012/q.fifo"),
            None
        );
        assert_eq!(region_of_queue_url("not a url"), None);
    }
}

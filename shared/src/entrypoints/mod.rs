//! Entry points: wire configuration, AWS clients and the use cases into a Lambda runtime.
//! The functions' `main.rs` files call these and nothing else.

pub mod ingest_lambda;
pub mod processor_lambda;
pub mod reconciler_lambda;

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
pub async fn aws_config(
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

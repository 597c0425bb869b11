//! Entry points: wire configuration, AWS clients and the use cases into a Lambda runtime.
//! The functions' `main.rs` files call these and nothing else.

pub mod ingest_lambda;
pub mod processor_lambda;

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
/// answer rather than a Lambda timeout.
pub async fn aws_config(operation_timeout: Duration) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(operation_timeout / 2)
        .operation_timeout(operation_timeout)
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https_client())
        .timeout_config(timeouts)
        .load()
        .await
}

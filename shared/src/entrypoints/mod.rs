//! Entry points: wire configuration, AWS clients and the use cases into a Lambda runtime.
//! The functions' `main.rs` files call these and nothing else.

pub mod ingest_lambda;
pub mod processor_lambda;

use std::time::Duration;

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
        .timeout_config(timeouts)
        .load()
        .await
}

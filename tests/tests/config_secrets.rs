//! Shared keys from Secrets Manager (moto), and the fail-fast start of a misconfigured binary.

use integration_tests::{aws_config_for, create_secret, moto_endpoint, repo_root};
use shared::chargify::signature::sign;
use shared::chargify::{SignatureCandidate, SignatureSource};
use shared::config::{load_shared_keys, ConfigError, Secret};
use std::process::Command;

#[tokio::test]
async fn keys_load_from_a_secret_in_either_format() {
    let config = aws_config_for(&moto_endpoint()).await;
    let body = b"id=1&event=x&payload[site][subdomain]=acme";
    for spec in [
        "old-key,new-key",
        r#"{"keys":["old-key"],"sites":{"acme":["new-key"]}}"#,
    ] {
        let arn = create_secret("keys", spec).await;
        let keys = load_shared_keys(&Secret::Arn(arn), &config)
            .await
            .expect("keys load");
        assert_eq!(keys.keys().len(), 2, "{spec}");
        let sig = sign("new-key", body);
        let candidate = [SignatureCandidate {
            source: SignatureSource::Header,
            value: &sig,
        }];
        assert!(
            keys.verify(body, &candidate, Some("acme")).is_ok(),
            "{spec}"
        );
    }
}

#[tokio::test]
async fn an_unreadable_or_invalid_secret_is_a_clear_start_error() {
    let config = aws_config_for(&moto_endpoint()).await;
    let missing =
        Secret::Arn("arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf".into());
    let err = load_shared_keys(&missing, &config)
        .await
        .expect_err("no such secret");
    assert!(matches!(err, ConfigError::SecretUnreadable { .. }), "{err}");
    assert!(
        err.to_string().contains("secretsmanager:GetSecretValue"),
        "{err}"
    );

    let arn = create_secret("empty-entry", "acme=").await;
    let err = load_shared_keys(&Secret::Arn(arn), &config)
        .await
        .expect_err("bad spec");
    assert!(err.to_string().contains("contains `=`"), "{err}");
    assert!(
        !err.to_string().contains("acme="),
        "the secret text is not echoed: {err}"
    );
}

#[tokio::test]
async fn a_secret_the_stack_created_empty_says_how_to_fill_it() {
    let config = aws_config_for(&moto_endpoint()).await;
    // As CloudFormation creates it: a secret with no value (no AWSCURRENT version).
    let client = aws_sdk_secretsmanager::Client::new(&config);
    let arn = client
        .create_secret()
        .name(format!("empty-{}", std::process::id()))
        .send()
        .await
        .expect("create an empty secret")
        .arn
        .expect("arn");
    let err = load_shared_keys(&Secret::Arn(arn.clone()), &config)
        .await
        .expect_err("no value yet");
    assert!(matches!(err, ConfigError::SecretHasNoValue { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("put-secret-value --secret-id {arn}")),
        "{text}"
    );
}

#[test]
fn a_misconfigured_binary_stops_at_once_naming_the_fix() {
    let output = Command::new("cargo")
        .current_dir(repo_root())
        .args(["run", "--quiet", "--package", "ingest", "--bin", "ingest"])
        .env_remove("QUEUE_URL")
        .env("CHARGIFY_SHARED_KEYS", "some-key")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9") // never reached
        .output()
        .expect("cargo run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("QUEUE_URL is not set"), "{text}");
    assert!(
        !text.contains("some-key"),
        "keys never reach the log: {text}"
    );
}

//! [`Secret`]: where a key or a client secret comes from.

use super::ConfigError;

/// A secret given inline (local runs: the value itself) or as the ARN of a Secrets Manager
/// secret holding it (AWS: the stack's `*_SECRET_ARN` variables). `T` is what the secret is
/// once read: its text, or a structure such as Keap's OAuth client credentials.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret<T = String> {
    Inline(T),
    Arn(String),
}

impl<T> std::fmt::Debug for Secret<T> {
    // The inline form is key material: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
            Self::Arn(arn) => f.debug_tuple("Arn").field(arn).finish(),
        }
    }
}

impl<T: Clone> Secret<T> {
    /// The value: the inline one as given, or the secret's text read once from Secrets
    /// Manager and made a `T` by `parse` (which gets the ARN, to name it in its errors).
    pub async fn read(
        &self,
        aws: &aws_config::SdkConfig,
        parse: impl FnOnce(&str, String) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigError> {
        match self {
            Self::Inline(value) => Ok(value.clone()),
            Self::Arn(arn) => parse(arn, crate::aws::read_secret(arn, aws).await?),
        }
    }
}

impl Secret {
    /// The secret's text, surrounding spaces removed: an API key pasted into Secrets
    /// Manager with a newline still works.
    pub async fn read_trimmed(&self, aws: &aws_config::SdkConfig) -> Result<String, ConfigError> {
        self.read(aws, |_, text| Ok(text.trim().to_owned())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_an_inline_value() {
        assert_eq!(
            format!("{:?}", Secret::Inline("hunter2".to_owned())),
            "Inline(<redacted>)"
        );
        assert_eq!(
            format!("{:?}", Secret::<String>::Arn("arn:x".into())),
            "Arn(\"arn:x\")"
        );
    }

    #[tokio::test]
    async fn an_inline_value_is_read_without_aws() {
        let aws = crate::aws::offline_config();
        let read = Secret::Inline("k".to_owned())
            .read(&aws, |_, _| unreachable!("no secret to parse"))
            .await;
        assert_eq!(read.ok().as_deref(), Some("k"));
    }
}

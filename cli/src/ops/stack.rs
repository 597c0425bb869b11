//! Finding the deployed resources: the stack's outputs (`DescribeStacks`, read once and only
//! when a flag does not name the resource), AWS configuration from the default chain, and a
//! credentials check up front so a missing login is one clear line, not an SDK error later.

use super::{OpsError, StackArgs, AWS_TIMEOUT};
use aws_sdk_cloudformation::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::config::ProvideCredentials;
use shared::dynamodb::Table;
use shared::idempotency::DynamoDbIdempotencyStore;
use shared::identity::DynamoDbCustomerStore;
use std::collections::HashMap;
use tokio::sync::OnceCell;

/// The stack outputs the commands read (names as in `template.yaml`).
pub const QUEUE_OUTPUT: &str = "WebhookQueueUrl";
pub const DEAD_LETTER_OUTPUT: &str = "DeadLetterQueueUrl";
pub const TABLE_OUTPUT: &str = "IdempotencyTableName";
pub const CUSTOMERS_OUTPUT: &str = "CustomersTableName";
pub const SHARED_KEYS_OUTPUT: &str = "SharedKeysSecretArn";

/// The deployed stack, as far as the commands need it.
pub struct Deployed {
    args: StackArgs,
    aws: aws_config::SdkConfig,
    outputs: OnceCell<HashMap<String, String>>,
}

impl Deployed {
    /// AWS configuration from the default chain (`AWS_PROFILE`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`…) and a check that it finds credentials.
    pub async fn connect(args: StackArgs) -> Result<Self, OpsError> {
        let aws = shared::aws::sdk_config(AWS_TIMEOUT, None).await;
        let Some(provider) = aws.credentials_provider() else {
            return Err(OpsError::NoCredentials {
                detail: "no credentials provider is configured".into(),
            });
        };
        if let Err(e) = provider.provide_credentials().await {
            return Err(OpsError::NoCredentials {
                detail: e.to_string(),
            });
        }
        Ok(Self {
            args,
            aws,
            outputs: OnceCell::new(),
        })
    }

    fn region(&self) -> String {
        self.aws
            .region()
            .map(ToString::to_string)
            .unwrap_or_else(|| "(none)".into())
    }

    async fn outputs(&self) -> Result<&HashMap<String, String>, OpsError> {
        self.outputs
            .get_or_try_init(|| async {
                let stack = &self.args.stack;
                let client = aws_sdk_cloudformation::Client::new(&self.aws);
                let answer = client.describe_stacks().stack_name(stack).send().await;
                let output = match answer {
                    Ok(output) => output,
                    // CloudFormation says "Stack with id X does not exist" as a ValidationError.
                    Err(e)
                        if e.as_service_error().is_some_and(|s| {
                            s.code() == Some("ValidationError")
                                && s.message().is_some_and(|m| m.contains("does not exist"))
                        }) =>
                    {
                        return Err(OpsError::StackNotFound {
                            stack: stack.clone(),
                            region: self.region(),
                        })
                    }
                    Err(e) => {
                        return Err(OpsError::Stack {
                            stack: stack.clone(),
                            detail: DisplayErrorContext(&e).to_string(),
                        })
                    }
                };
                let Some(found) = output.stacks().first() else {
                    return Err(OpsError::StackNotFound {
                        stack: stack.clone(),
                        region: self.region(),
                    });
                };
                Ok(found
                    .outputs()
                    .iter()
                    .filter_map(|o| {
                        Some((o.output_key()?.to_owned(), o.output_value()?.to_owned()))
                    })
                    .collect())
            })
            .await
    }

    /// `given`, else the stack's `output` (`flag` names the flag that would replace it).
    pub async fn resource(
        &self,
        given: &Option<String>,
        output: &'static str,
        flag: &'static str,
    ) -> Result<String, OpsError> {
        if let Some(value) = given {
            return Ok(value.clone());
        }
        self.outputs()
            .await?
            .get(output)
            .cloned()
            .ok_or_else(|| OpsError::OutputMissing {
                stack: self.args.stack.clone(),
                output,
                flag,
            })
    }

    pub async fn queue_url(&self) -> Result<String, OpsError> {
        self.resource(&self.args.queue_url, QUEUE_OUTPUT, "--queue-url")
            .await
    }

    pub async fn dead_letter_queue_url(&self) -> Result<String, OpsError> {
        self.resource(
            &self.args.dead_letter_queue_url,
            DEAD_LETTER_OUTPUT,
            "--dead-letter-queue-url",
        )
        .await
    }

    /// The idempotency store on the stack's table, with our DynamoDB retry policy.
    pub async fn idempotency(&self) -> Result<DynamoDbIdempotencyStore, OpsError> {
        let table = self
            .resource(
                &self.args.idempotency_table,
                TABLE_OUTPUT,
                "--idempotency-table",
            )
            .await?;
        Ok(DynamoDbIdempotencyStore::new(Table::from_config(
            &self.aws, table,
        )))
    }

    /// The AWS configuration the stack was found with.
    pub fn aws(&self) -> &aws_config::SdkConfig {
        &self.aws
    }

    /// The identity-map table: `given` (`--customers-table`), else the stack's
    /// `CustomersTableName` output.
    pub async fn customers_table(&self, given: &Option<String>) -> Result<String, OpsError> {
        self.resource(given, CUSTOMERS_OUTPUT, "--customers-table")
            .await
    }

    /// The identity map on [`Self::customers_table`], with our DynamoDB retry policy.
    pub async fn customers(
        &self,
        given: &Option<String>,
    ) -> Result<DynamoDbCustomerStore, OpsError> {
        let table = self.customers_table(given).await?;
        Ok(DynamoDbCustomerStore::new(Table::from_config(
            &self.aws, table,
        )))
    }

    pub async fn idempotency_table(&self) -> Result<String, OpsError> {
        self.resource(
            &self.args.idempotency_table,
            TABLE_OUTPUT,
            "--idempotency-table",
        )
        .await
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.aws)
    }
}

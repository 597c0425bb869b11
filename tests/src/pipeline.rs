//! The deployed pipeline over real wire protocols, in one test process: ingest puts signed
//! webhooks on an SQS FIFO queue in moto, the processor's Lambda handler runs each batch as
//! the event source mapping would deliver it, with its idempotency records and identity map
//! in DynamoDB (moto), against the Keap stand-in. Used by the processor's end-to-end tests
//! and by the ops commands' tests (which fill the queues and the table with it).

use crate::keap_standin::KeapStandIn;
use crate::{delete_succeeded, processor_resources, receive_as_lambda_event, ProcessorResources};
use lambda_http::http::{HeaderMap, HeaderValue, Method};
use shared::chargify::signature::{sign, SIGNATURE_HEADER};
use shared::chargify::SharedKeySet;
use shared::dynamodb::Table;
use shared::entrypoints::processor_lambda::handle;
use shared::idempotency::DynamoDbIdempotencyStore;
use shared::identity::DynamoDbCustomerStore;
use shared::identity::DynamoDbNameLocks;
use shared::ingest::{InboundRequest, IngestService};
use shared::keap::{Credential, Directory, KeapClient, KeapClientConfig};
use shared::processor::{Limits, Processor};
use shared::queue::{RecordControl, SqsRecordControl, SqsWebhookQueue};
use shared::rules::RuleSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The site shared key the pipeline's ingest verifies with.
pub const KEY: &str = "e2e-shared-key";

pub struct Pipeline {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub dead_letter_url: String,
    pub idempotency_table: String,
    pub customers_table: String,
    pub keap: KeapStandIn,
    pub idempotency: Arc<DynamoDbIdempotencyStore>,
    pub processor: Arc<Processor>,
    pub control: Arc<dyn RecordControl>,
    pub ingest: IngestService<SqsWebhookQueue>,
}

impl Pipeline {
    /// On fresh resources in moto.
    pub async fn start(rules: RuleSet) -> Self {
        Self::on(rules, processor_resources("e2e").await).await
    }

    /// On the given resources (made by a CloudFormation stack in moto, say).
    pub async fn on(rules: RuleSet, resources: ProcessorResources) -> Self {
        let ProcessorResources {
            sqs,
            dynamodb,
            queue_url,
            dead_letter_url,
            idempotency_table,
            customers_table,
        } = resources;
        let keap = KeapStandIn::start().await;
        keap.add_custom_fields(rules.custom_field_labels(), 100);
        let mut config =
            KeapClientConfig::new(keap.base_url(), Credential::ApiKey("sak-e2e".into()));
        config.max_wait = Duration::from_secs(2);
        config.max_retries = 1;
        let crm = KeapClient::new(config).expect("client");
        let idempotency = Arc::new(DynamoDbIdempotencyStore::new(Table::new(
            dynamodb.clone(),
            &idempotency_table,
        )));
        let processor = Arc::new(Processor {
            rules: Arc::new(rules),
            crm: Arc::new(crm),
            directory: Arc::new(Directory::new(Arc::new(DynamoDbNameLocks::new(
                Table::new(dynamodb.clone(), &customers_table),
            )))),
            idempotency: idempotency.clone(),
            customers: Arc::new(DynamoDbCustomerStore::new(Table::new(
                dynamodb,
                &customers_table,
            ))),
            settings: Limits::default(),
        });
        let control: Arc<dyn RecordControl> = Arc::new(SqsRecordControl::new(
            sqs.clone(),
            &queue_url,
            &dead_letter_url,
        ));
        let keys = SharedKeySet::parse(KEY).expect("key");
        let ingest = IngestService::new(keys, SqsWebhookQueue::new(sqs.clone(), &queue_url));
        Self {
            sqs,
            queue_url,
            dead_letter_url,
            idempotency_table,
            customers_table,
            keap,
            idempotency,
            processor,
            control,
            ingest,
        }
    }

    /// Posts a signed webhook through ingest; returns the HTTP status ingest answered.
    pub async fn post(&self, body: &str) -> u16 {
        post_signed(&self.ingest, KEY, body).await
    }

    /// One Lambda invocation: receive a batch, run the handler, delete what succeeded.
    /// Returns the failed message ids, or `None` when the queue had nothing visible.
    pub async fn invoke(&self) -> Option<Vec<String>> {
        let event = receive_as_lambda_event(&self.sqs, &self.queue_url, 60).await;
        if event.records.is_empty() {
            return None;
        }
        let response = handle(
            self.processor.clone(),
            self.control.clone(),
            event.clone(),
            Instant::now() + Duration::from_secs(60),
        )
        .await
        .expect("every failed record has an id");
        let failed: Vec<String> = response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        delete_succeeded(&self.sqs, &self.queue_url, &event, &failed).await;
        Some(failed)
    }

    /// Invokes until the queue shows nothing (bounded).
    pub async fn drain_through_processor(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for _ in 0..20 {
            match self.invoke().await {
                Some(f) => failed.extend(f),
                None => break,
            }
        }
        failed
    }

    /// The goals Keap saw achieved, as `integration/call name`, in order.
    pub fn goals(&self) -> Vec<String> {
        self.keap
            .state()
            .goals
            .iter()
            .map(|(i, c, _)| format!("{i}/{c}"))
            .collect()
    }

    pub fn assert_no_violations(&self) {
        let violations = self.keap.violations();
        assert!(
            violations.is_empty(),
            "requests the spec refuses: {violations:#?}"
        );
    }
}

/// Posts `body` through `ingest`, signed with `key` in the header as Chargify signs it;
/// returns the HTTP status ingest answered.
pub async fn post_signed(ingest: &IngestService<SqsWebhookQueue>, key: &str, body: &str) -> u16 {
    let mut headers = HeaderMap::new();
    headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&sign(key, body.as_bytes())).expect("header"),
    );
    ingest
        .handle(InboundRequest {
            method: &Method::POST,
            headers: &headers,
            query_signatures: Vec::new(),
            body: body.as_bytes(),
        })
        .await
        .status()
}

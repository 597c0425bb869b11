//! The ingest function: API Gateway HTTP API (payload v2) or a Lambda function URL in front
//! of [`IngestService`].

use crate::config::{load_shared_keys, IngestSettings};
use crate::ingest::{query_signatures, InboundRequest, IngestService};
use crate::queue::{SqsWebhookQueue, WebhookQueue};
use crate::telemetry;
use lambda_http::{service_fn, Body, Error, Request, RequestExt, Response};
use std::sync::Arc;

/// Cold start: configuration, keys (Secrets Manager is read here, once), SQS client; then
/// serve invocations. A configuration error ends the process with a message naming the fix.
pub async fn run() -> Result<(), Error> {
    telemetry::init("ingest");
    let settings = IngestSettings::from_env().inspect_err(|e| {
        tracing::error!(error = %e, "ingest cannot start: configuration");
    })?;
    let aws = super::aws_config(settings.sqs_timeout).await;
    let keys = load_shared_keys(&settings.keys, &aws)
        .await
        .inspect_err(|e| {
            tracing::error!(error = %e, "ingest cannot start: shared keys");
        })?;
    tracing::info!(
        keys = keys.keys().len(),
        queue_url = settings.queue_url.as_str(),
        "ingest ready"
    );
    let queue = SqsWebhookQueue::new(aws_sdk_sqs::Client::new(&aws), settings.queue_url);
    let service = Arc::new(IngestService::new(keys, queue));
    lambda_http::run(service_fn(move |request: Request| {
        let service = Arc::clone(&service);
        async move { handle(&service, request).await }
    }))
    .await
}

/// One invocation. Never fails: every outcome is an HTTP answer.
pub async fn handle<Q: WebhookQueue>(
    service: &IngestService<Q>,
    request: Request,
) -> Result<Response<Body>, Error> {
    let params = request.query_string_parameters();
    let mut signatures: Vec<String> = params
        .all(crate::chargify::signature::SIGNATURE_QUERY_PARAM)
        .unwrap_or_default()
        .into_iter()
        .map(str::to_owned)
        .collect();
    if signatures.is_empty() {
        // Events that carry only a raw query string (no parsed parameters).
        signatures = query_signatures(request.uri().query());
    }
    // lambda_http has already base64-decoded an `isBase64Encoded` body into Body::Binary.
    let body: &[u8] = request.body().as_ref();
    let reply = service
        .handle(InboundRequest {
            method: request.method(),
            headers: request.headers(),
            query_signatures: signatures.iter().map(String::as_str).collect(),
            body,
        })
        .await;
    telemetry::flush_metrics();
    let mut response = Response::builder()
        .status(reply.status())
        .header("content-type", "application/json");
    if reply.status() == 405 {
        response = response.header("allow", "POST");
    }
    Ok(response.body(Body::from(reply.body()))?)
}

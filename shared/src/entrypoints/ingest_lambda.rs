//! The ingest function: API Gateway HTTP API (payload v2) or a Lambda function URL in front
//! of [`IngestService`].

use crate::aws;
use crate::config::{ConfigError, IngestSettings};
use crate::ingest::{InboundRequest, IngestService};
use crate::queue::{SqsWebhookQueue, WebhookQueue};
use crate::telemetry;
use lambda_http::request::LambdaRequest;
use lambda_http::{
    service_fn, Adapter, Body, Error, LambdaEvent, Request, RequestExt, Response, Service,
};
use std::sync::Arc;

/// Cold start, then serve invocations. A configuration error ends the process with a
/// message naming the fix.
pub async fn run() -> Result<(), Error> {
    telemetry::init(telemetry::metrics::function::INGEST);
    let service = Arc::new(cold_start().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let service = Arc::clone(&service);
        async move {
            let LambdaEvent { payload, context } = event;
            // lambda_http panics on a body flagged base64 that is not; API Gateway never sends
            // one, but a direct invocation can. Such a body is passed on as the text it is, so
            // it fails signature verification (401) like any other altered body.
            let payload: LambdaRequest = serde_json::from_value(repair_base64_flag(payload))?;
            let mut adapter =
                Adapter::from(service_fn(|request: Request| handle(&service, request)));
            adapter.call(LambdaEvent::new(payload, context)).await
        }
    }))
    .await
}

/// Configuration, keys (Secrets Manager is read here, once), SQS client.
async fn cold_start() -> Result<IngestService<SqsWebhookQueue>, ConfigError> {
    let settings = IngestSettings::from_env().inspect_err(|e| {
        tracing::error!(error = %e, "ingest cannot start: configuration");
    })?;
    let aws = aws::sdk_config(
        settings.sqs_timeout,
        aws::region_of_queue_url(&settings.queue_url),
    )
    .await;
    settings.build(&aws).await.inspect_err(|e| {
        tracing::error!(error = %e, "ingest cannot start: shared keys");
    })
}

/// Clears `isBase64Encoded` when the body does not decode as base64 (see [`run`]).
fn repair_base64_flag(mut event: serde_json::Value) -> serde_json::Value {
    use base64::Engine;
    let flagged = event
        .get("isBase64Encoded")
        .and_then(serde_json::Value::as_bool)
        == Some(true);
    let decodes = event
        .get("body")
        .and_then(serde_json::Value::as_str)
        .is_none_or(|body| {
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .is_ok()
        });
    if flagged && !decodes {
        tracing::warn!("event body is flagged base64 but is not; treating it as text");
        event["isBase64Encoded"] = serde_json::Value::Bool(false);
    }
    event
}

/// One invocation. Never fails: every outcome is an HTTP answer.
pub async fn handle<Q: WebhookQueue>(
    service: &IngestService<Q>,
    request: Request,
) -> Result<Response<Body>, Error> {
    // lambda_http fills these from `rawQueryString` when the event has one, else from
    // `queryStringParameters`, so both event shapes are covered here.
    let params = request.query_string_parameters();
    let signatures = params
        .all(crate::chargify::signature::SIGNATURE_QUERY_PARAM)
        .unwrap_or_default();
    // lambda_http has already base64-decoded an `isBase64Encoded` body into Body::Binary.
    let body: &[u8] = request.body().as_ref();
    let reply = service
        .handle(InboundRequest {
            method: request.method(),
            headers: request.headers(),
            query_signatures: signatures,
            body,
        })
        .await;
    telemetry::flush_metrics();
    let mut response = Response::builder().status(reply.status());
    for (name, value) in reply.headers() {
        response = response.header(name, value);
    }
    Ok(response.body(Body::from(reply.body()))?)
}

#[cfg(test)]
mod tests {
    use super::repair_base64_flag;
    use serde_json::json;

    #[test]
    fn only_an_undecodable_base64_body_loses_its_flag() {
        let bad = json!({"body": "not base64!", "isBase64Encoded": true});
        assert_eq!(repair_base64_flag(bad)["isBase64Encoded"], false);
        let good = json!({"body": "aWQ9MQ==", "isBase64Encoded": true});
        assert_eq!(repair_base64_flag(good)["isBase64Encoded"], true);
        let text = json!({"body": "id=1&event=x", "isBase64Encoded": false});
        assert_eq!(repair_base64_flag(text.clone()), text);
        let empty = json!({"isBase64Encoded": true});
        assert_eq!(repair_base64_flag(empty)["isBase64Encoded"], true);
    }
}

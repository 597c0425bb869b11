//! The processor function's entry point (SQS FIFO trigger with `ReportBatchItemFailures`).
//!
//! Until the rules engine and Keap client land (issues 3 and 4), it reads each envelope and
//! hands every record back as failed, so a queue wired to it by mistake loses nothing: the
//! messages return to the queue and, after the redrive limit, rest in the dead-letter queue.
//! `template.yaml` does not wire it to the queue yet.

use crate::envelope::WebhookEnvelope;
use crate::telemetry;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, Error, LambdaEvent};

pub async fn run() -> Result<(), Error> {
    telemetry::init("processor");
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        let response = handle(event.payload);
        telemetry::flush_metrics();
        Ok::<_, Error>(response)
    }))
    .await
}

/// Reports every record with a message id as a batch item failure; see the module note.
pub fn handle(event: SqsEvent) -> SqsBatchResponse {
    let mut failures = Vec::new();
    for record in event.records {
        let Some(message_id) = record.message_id.filter(|id| !id.is_empty()) else {
            // An empty id cannot be reported: Lambda would fail the whole batch.
            continue;
        };
        match record.body.as_deref().map(WebhookEnvelope::from_json) {
            Some(Ok(envelope)) => tracing::warn!(
                message_id = message_id.as_str(),
                webhook_id = envelope.webhook_id.as_str(),
                event = envelope.event.as_str(),
                "processing not implemented yet; message returned to the queue"
            ),
            Some(Err(e)) => {
                tracing::error!(message_id = message_id.as_str(), error = %e, "unreadable message")
            }
            None => tracing::error!(message_id = message_id.as_str(), "message without a body"),
        }
        metrics::counter!("RecordsReturned").increment(1);
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = message_id;
        failures.push(failure);
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}

#[cfg(test)]
mod tests {
    use super::handle;
    use aws_lambda_events::sqs::{SqsEvent, SqsMessage};

    fn record(id: Option<&str>, body: &str) -> SqsMessage {
        let mut message = SqsMessage::default();
        message.message_id = id.map(str::to_owned);
        message.body = Some(body.to_owned());
        message
    }

    #[test]
    fn every_record_goes_back_except_those_without_an_id() {
        let mut event = SqsEvent::default();
        event.records = vec![
            record(Some("m1"), "{not an envelope"),
            record(Some(""), "{}"),
            record(None, "{}"),
            record(Some("m2"), "{}"),
        ];
        let ids: Vec<String> = handle(event)
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        assert_eq!(ids, ["m1", "m2"]);
    }
}

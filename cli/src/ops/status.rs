//! `cks status <webhook-id>`: a webhook's idempotency record: its status, attempts, lease,
//! the steps done (goals, notes), the last error, and the delivery it keeps. Personal data
//! stays out unless asked: the raw body (emails, names, addresses) only with `--show-body`,
//! and email addresses in the error text are redacted without it.

use super::stack::Deployed;
use super::{key_text, records, rfc3339, OpsError, StackArgs, WebhookArgs};
use serde_json::{json, Value};
use shared::envelope::WebhookEnvelope;
use shared::idempotency::{IdempotencyRecord, RecordStatus};
use shared::telemetry::redact_emails;
use time::OffsetDateTime;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The Chargify webhook id (`id=` in its body), or `site#id`.
    pub webhook_id: String,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    /// Print the record as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also print the webhook's raw body (it holds the customer's personal data).
    #[arg(long)]
    pub show_body: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

pub async fn run(args: StatusArgs) -> Result<(), OpsError> {
    let deployed = Deployed::connect(args.stack).await?;
    let store = deployed.idempotency().await?;
    let record = records::find(&store, &args.webhook_id, args.webhook.site.as_deref()).await?;
    let view = view(&record, args.show_body, OffsetDateTime::now_utc());
    if args.json {
        println!("{view}");
    } else {
        print!("{}", text(&view));
    }
    Ok(())
}

/// What the lease means now, in words.
fn lease_text(record: &IdempotencyRecord, now: OffsetDateTime) -> String {
    match (record.status, record.lease_expires_at) {
        (RecordStatus::Completed, _) | (_, None) => "none".into(),
        (RecordStatus::Failed, _) => "released: the next delivery retakes it at once".into(),
        (RecordStatus::InProgress, Some(at)) if at >= now => {
            format!("held until {} (a worker is on it)", rfc3339(at))
        }
        (RecordStatus::InProgress, Some(at)) => format!(
            "expired at {} (the worker stopped; the next delivery retakes it)",
            rfc3339(at)
        ),
    }
}

/// The record as JSON: the `--json` output, and what the text output prints.
fn view(record: &IdempotencyRecord, show_body: bool, now: OffsetDateTime) -> Value {
    let received = record.received.as_ref();
    let envelope = received.and_then(|r| WebhookEnvelope::from_json(&r.envelope).ok());
    let error = record.last_error.as_deref().map(|e| {
        if show_body {
            e.to_owned()
        } else {
            redact_emails(e)
        }
    });
    let mut view = json!({
        "webhook": key_text(&record.key),
        "site": record.key.site,
        "webhook_id": record.key.webhook_id,
        "status": record.status.as_str(),
        "attempts": record.attempts,
        "lease": lease_text(record, now),
        "lease_expires_at": record.lease_expires_at.map(rfc3339),
        "steps_done": record.steps_done,
        "summary": record.summary,
        "last_error": error,
        "event": received.map(|r| r.event.clone()),
        "received_at": received.map(|r| rfc3339(r.received_at)),
        "subscription_id": envelope.as_ref().and_then(|e| e.subscription_id.clone()),
        "customer_id": envelope.as_ref().and_then(|e| e.customer_id.clone()),
        "envelope_stored": received.is_some(),
        "envelope_bytes": received.map(|r| r.envelope.len()),
        "record_expires_at": rfc3339(record.expires_at),
    });
    if show_body {
        view["raw_body"] = json!(envelope.map(|e| e.raw_body));
    }
    view
}

fn text(view: &Value) -> String {
    let field = |name: &str| super::field(view, name);
    let steps = match view["steps_done"].as_array() {
        Some(steps) if !steps.is_empty() => steps
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".into(),
    };
    let envelope = if view["envelope_stored"] == json!(true) {
        format!(
            "stored ({} bytes); `cks replay` can send it again",
            field("envelope_bytes")
        )
    } else {
        "not stored (record written before envelopes were kept): replay from Chargify".into()
    };
    let mut out = String::new();
    for (label, value) in [
        ("webhook", field("webhook")),
        ("event", field("event")),
        ("received", field("received_at")),
        ("customer", field("customer_id")),
        ("subscription", field("subscription_id")),
        ("status", field("status")),
        ("attempts", field("attempts")),
        ("lease", field("lease")),
        ("steps done", steps),
        ("summary", field("summary")),
        ("last error", field("last_error")),
        ("envelope", envelope),
        ("kept until", field("record_expires_at")),
    ] {
        out.push_str(&format!("{label:<13} {value}\n"));
    }
    if let Some(body) = view["raw_body"].as_str() {
        out.push_str(&format!("{:<13} {body}\n", "body"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::idempotency::{IdempotencyKey, Received};
    use std::collections::BTreeSet;

    #[test]
    fn personal_data_shows_only_when_asked() {
        let envelope = shared::fixtures::envelope(shared::fixtures::SIGNUP_SUCCESS).expect("env");
        let record = IdempotencyRecord {
            key: IdempotencyKey::new("acme-test", "5"),
            status: RecordStatus::Failed,
            payload_hash: "h".into(),
            steps_done: BTreeSet::from(["2:goal:chargify/signup".to_owned()]),
            attempts: 2,
            lease_expires_at: Some(OffsetDateTime::UNIX_EPOCH),
            summary: None,
            last_error: Some("Keap refused john@example.com".into()),
            expires_at: OffsetDateTime::UNIX_EPOCH,
            received: Some(Received::of(&envelope)),
        };
        let now = OffsetDateTime::now_utc();
        let plain = text(&view(&record, false, now));
        assert!(plain.contains("2:goal:chargify/signup"), "{plain}");
        assert!(plain.contains("FAILED"), "{plain}");
        assert!(plain.contains("signup_success"), "{plain}");
        assert!(!plain.contains("john@example.com"), "{plain}");
        assert!(!plain.contains("example.com"), "{plain}");
        let shown = text(&view(&record, true, now));
        assert!(shown.contains("john@example.com"), "{shown}");
        assert!(shown.contains("payload[subscription]"), "{shown}");
    }
}

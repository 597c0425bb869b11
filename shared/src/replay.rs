//! Operator replays and dead-letter redrives, as pure decisions: which records `cks replay`
//! sends again, what it sends, and how a dead letter goes back to the main queue. `cks`
//! makes the AWS calls (`cli/src/ops/`); the processor's idempotency records make every
//! resend safe.
//!
//! The semantics:
//! - A record that is not completed (failed, dead-lettered, or with an expired lease) is
//!   simply sent again: the processor retakes it and skips the goals and notes already done.
//! - A completed record is refused unless forced; forcing reopens it first
//!   ([`crate::idempotency::IdempotencyStore::reopen`]), so the processor applies the plan
//!   again (contact, fields, tags) without repeating a goal or a note, and the stale-event
//!   guard still keeps an old event from overriding newer billing state.
//! - A resend carries a new deduplication id: SQS FIFO drops a message whose id it saw in the
//!   last 5 minutes, which would swallow a replay of a webhook ingest just sent.

use crate::envelope::{EnvelopeError, WebhookEnvelope};
use crate::idempotency::{IdempotencyRecord, RecordStatus};
use crate::ingest::outbound_message;
use crate::queue::OutboundMessage;
use time::OffsetDateTime;

/// SQS's longest `MessageDeduplicationId`.
pub const MAX_DEDUPLICATION_ID: usize = 128;

/// The message attributes the processor adds to a dead letter; a redrive drops them, so a
/// message that fails again carries only its new reason.
pub const FAILURE_ATTRIBUTES: [&str; 2] = ["FailureReason", "FailureCode"];

/// What `cks replay` does with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send the stored envelope again. `lease_until` is set when a worker holds a live
    /// lease: the copy waits for it (and then finds the record done, or retakes it).
    Send {
        lease_until: Option<OffsetDateTime>,
    },
    /// Forced replay of a completed record: reopen it, then send.
    ReopenThenSend,
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it was applied already (COMPLETED); pass --force to apply it again (goals and notes already done are not repeated)")]
    Completed,
    #[error("its record holds no envelope (written before envelopes were kept); replay it from Chargify instead")]
    NoEnvelope,
}

pub fn decide(record: &IdempotencyRecord, force: bool, now: OffsetDateTime) -> Decision {
    if record.received.is_none() {
        return Decision::Refuse(Refusal::NoEnvelope);
    }
    match record.status {
        RecordStatus::Completed if force => Decision::ReopenThenSend,
        RecordStatus::Completed => Decision::Refuse(Refusal::Completed),
        RecordStatus::InProgress => Decision::Send {
            lease_until: record.lease_expires_at.filter(|at| *at >= now),
        },
        RecordStatus::Failed => Decision::Send { lease_until: None },
    }
}

/// Whether `replay --since` picks the record: received at or after `since`, with an
/// envelope, and not completed (completed ones too when forced).
pub fn selected_since(record: &IdempotencyRecord, since: OffsetDateTime, force: bool) -> bool {
    record
        .received
        .as_ref()
        .is_some_and(|r| r.received_at >= since)
        && (force || record.status != RecordStatus::Completed)
}

/// A deduplication id for a resend of a message whose id was `original`: `original`, what the
/// resend is (`replay`, `redrive`) and the run's id, so one run's SDK retries are still
/// deduplicated while another run, or a later replay, is not swallowed. Over SQS's 128
/// characters (a long site name) the original part is replaced by its hash.
pub fn fresh_deduplication_id(original: &str, purpose: &str, run: &str) -> String {
    let id = format!("{original}:{purpose}-{run}");
    if id.len() <= MAX_DEDUPLICATION_ID {
        return id;
    }
    let hash = crate::idempotency::payload_hash(original);
    let id = format!("{}:{purpose}-{run}", &hash[..32]);
    id[..id.floor_char_boundary(MAX_DEDUPLICATION_ID)].to_owned()
}

/// The message that replays a stored envelope: exactly what ingest sent (body, group, event
/// and version attributes) but with a fresh deduplication id.
pub fn replay_message(envelope_json: &str, run: &str) -> Result<OutboundMessage, EnvelopeError> {
    let envelope = WebhookEnvelope::from_json(envelope_json)?;
    let mut message = outbound_message(&envelope);
    message.deduplication_id = fresh_deduplication_id(&message.deduplication_id, "replay", run);
    Ok(message)
}

/// A dead letter as read back from the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterMessage {
    pub message_id: String,
    pub body: String,
    /// The FIFO group it was sent with (SQS's `MessageGroupId`).
    pub group_id: Option<String>,
    pub deduplication_id: Option<String>,
    /// String message attributes, `FailureReason` and `FailureCode` among them.
    pub attributes: Vec<(String, String)>,
}

impl DeadLetterMessage {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The envelope in the body, when it is one (a dead letter may be an unreadable message).
    pub fn envelope(&self) -> Option<WebhookEnvelope> {
        WebhookEnvelope::from_json(&self.body).ok()
    }
}

/// The message that moves a dead letter back to the main queue: body unchanged, its own
/// group (else the envelope's, else one of its own, so it blocks no customer), the attributes
/// but the failure ones, and a fresh deduplication id (see [`fresh_deduplication_id`]).
pub fn redrive_message(letter: &DeadLetterMessage, run: &str) -> OutboundMessage {
    let envelope = letter.envelope();
    let group_id = letter
        .group_id
        .clone()
        .filter(|g| !g.is_empty())
        .or_else(|| envelope.as_ref().map(WebhookEnvelope::message_group_id))
        .unwrap_or_else(|| format!("redrive:{}", letter.message_id));
    let original = letter
        .deduplication_id
        .clone()
        .or_else(|| envelope.as_ref().map(WebhookEnvelope::deduplication_id))
        .unwrap_or_else(|| letter.message_id.clone());
    OutboundMessage {
        group_id,
        deduplication_id: fresh_deduplication_id(&original, "redrive", run),
        body: letter.body.clone(),
        attributes: letter
            .attributes
            .iter()
            .filter(|(k, _)| !FAILURE_ATTRIBUTES.contains(&k.as_str()))
            .cloned()
            .collect(),
    }
}

/// Why a `--since` value was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--since {0:?} is neither an RFC 3339 time (2026-11-27T09:00:00Z) nor a duration back from now (90s, 30m, 2h, 7d)")]
pub struct BadSince(pub String);

/// `--since`: an RFC 3339 time, or a duration back from `now` (`90s`, `30m`, `2h`, `7d`).
pub fn parse_since(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, BadSince> {
    let bad = || BadSince(text.to_owned());
    let text = text.trim();
    if let Ok(at) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(at);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let count: i64 = digits.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => time::Duration::SECOND,
        "m" => time::Duration::MINUTE,
        "h" => time::Duration::HOUR,
        "d" => time::Duration::DAY,
        _ => return Err(bad()),
    };
    unit.checked_mul(i32::try_from(count).map_err(|_| bad())?)
        .and_then(|back| now.checked_sub(back))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use crate::idempotency::{IdempotencyKey, Received};
    use std::collections::BTreeSet;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-27 10:00 UTC);

    fn record(status: RecordStatus, received: Option<OffsetDateTime>) -> IdempotencyRecord {
        IdempotencyRecord {
            key: IdempotencyKey::new("acme", "1"),
            status,
            payload_hash: "h".into(),
            steps_done: BTreeSet::new(),
            attempts: 1,
            lease_expires_at: None,
            summary: None,
            last_error: None,
            expires_at: NOW,
            received: received.map(|at| Received {
                event: "signup_success".into(),
                received_at: at,
                envelope: "{}".into(),
            }),
        }
    }

    #[test]
    fn completed_records_need_force_and_others_are_sent() {
        let at = Some(NOW);
        let completed = record(RecordStatus::Completed, at);
        assert_eq!(
            decide(&completed, false, NOW),
            Decision::Refuse(Refusal::Completed)
        );
        assert_eq!(decide(&completed, true, NOW), Decision::ReopenThenSend);
        let failed = record(RecordStatus::Failed, at);
        assert_eq!(
            decide(&failed, false, NOW),
            Decision::Send { lease_until: None }
        );
        let mut held = record(RecordStatus::InProgress, at);
        held.lease_expires_at = Some(NOW + time::Duration::MINUTE);
        assert_eq!(
            decide(&held, false, NOW),
            Decision::Send {
                lease_until: Some(NOW + time::Duration::MINUTE)
            }
        );
        held.lease_expires_at = Some(NOW - time::Duration::MINUTE);
        assert_eq!(
            decide(&held, false, NOW),
            Decision::Send { lease_until: None },
            "an expired lease is no obstacle"
        );
        assert_eq!(
            decide(&record(RecordStatus::Failed, None), true, NOW),
            Decision::Refuse(Refusal::NoEnvelope)
        );
    }

    #[test]
    fn since_picks_unfinished_records_received_from_then_on() {
        let since = NOW - time::Duration::HOUR;
        let cases = [
            (RecordStatus::Failed, Some(since), false, true),
            (
                RecordStatus::Failed,
                Some(since - time::Duration::SECOND),
                false,
                false,
            ),
            (RecordStatus::InProgress, Some(NOW), false, true),
            (RecordStatus::Completed, Some(NOW), false, false),
            (RecordStatus::Completed, Some(NOW), true, true),
            (RecordStatus::Failed, None, true, false),
        ];
        for (status, received, force, want) in cases {
            assert_eq!(
                selected_since(&record(status, received), since, force),
                want,
                "{status:?} {received:?} force={force}"
            );
        }
    }

    #[test]
    fn a_replay_is_ingest_s_message_with_a_new_deduplication_id() {
        let envelope = fixtures::envelope(fixtures::SIGNUP_SUCCESS).expect("envelope");
        let original = outbound_message(&envelope);
        let replay = replay_message(&envelope.to_json(), "run1").expect("replay");
        assert_eq!(replay.group_id, original.group_id);
        assert_eq!(replay.body, original.body);
        assert_eq!(replay.attributes, original.attributes);
        assert_eq!(
            replay.deduplication_id,
            format!("{}:replay-run1", original.deduplication_id)
        );
        assert_ne!(
            replay_message(&envelope.to_json(), "run2")
                .expect("replay")
                .deduplication_id,
            replay.deduplication_id,
            "each run sends a message SQS will not drop as a duplicate"
        );
        assert!(replay_message("not json", "r").is_err());
    }

    #[test]
    fn deduplication_ids_stay_within_sqs_limit() {
        let long = format!("{}:123", "s".repeat(200));
        let id = fresh_deduplication_id(&long, "redrive", "0123456789ab");
        assert!(id.len() <= MAX_DEDUPLICATION_ID, "{id}");
        assert!(id.ends_with(":redrive-0123456789ab"), "{id}");
        assert_ne!(
            id,
            fresh_deduplication_id("other", "redrive", "0123456789ab")
        );
    }

    #[test]
    fn a_redrive_keeps_body_and_group_and_drops_the_failure() {
        let envelope = fixtures::envelope(fixtures::SIGNUP_SUCCESS).expect("envelope");
        let letter = DeadLetterMessage {
            message_id: "m1".into(),
            body: envelope.to_json(),
            group_id: Some("acme-test:cus:15".into()),
            deduplication_id: Some("acme-test:5".into()),
            attributes: vec![
                ("FailureCode".into(), "keap_permanent".into()),
                ("FailureReason".into(), "Keap 400".into()),
                ("event".into(), "signup_success".into()),
            ],
        };
        let message = redrive_message(&letter, "r1");
        assert_eq!(message.body, letter.body);
        assert_eq!(message.group_id, "acme-test:cus:15");
        assert_eq!(message.deduplication_id, "acme-test:5:redrive-r1");
        assert_eq!(
            message.attributes,
            [("event".to_owned(), "signup_success".to_owned())]
        );
        // No group or id on the letter: the envelope's, else the message's own.
        let bare = DeadLetterMessage {
            group_id: None,
            deduplication_id: None,
            ..letter.clone()
        };
        assert_eq!(
            redrive_message(&bare, "r").group_id,
            envelope.message_group_id()
        );
        let unreadable = DeadLetterMessage {
            body: "garbage".into(),
            ..bare
        };
        let message = redrive_message(&unreadable, "r");
        assert_eq!(message.group_id, "redrive:m1");
        assert_eq!(message.deduplication_id, "m1:redrive-r");
    }

    #[test]
    fn since_reads_rfc_3339_and_durations_back_from_now() {
        assert_eq!(
            parse_since("2026-11-27T09:00:00Z", NOW),
            Ok(datetime!(2026-11-27 09:00 UTC))
        );
        assert_eq!(parse_since("2h", NOW), Ok(NOW - time::Duration::hours(2)));
        assert_eq!(
            parse_since("90s", NOW),
            Ok(NOW - time::Duration::seconds(90))
        );
        assert_eq!(
            parse_since("30m", NOW),
            Ok(NOW - time::Duration::minutes(30))
        );
        assert_eq!(parse_since("7d", NOW), Ok(NOW - time::Duration::days(7)));
        for bad in [
            "",
            "2",
            "h",
            "2w",
            "-2h",
            "2h30m",
            "yesterday",
            "99999999999d",
        ] {
            assert_eq!(parse_since(bad, NOW), Err(BadSince(bad.into())), "{bad}");
        }
    }
}

//! What the identity map keeps per Chargify customer.

use super::target::Version;
use crate::keap::{ContactId, TagId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// One customer as the identity map knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerState {
    /// The Keap contact kept in step with this customer.
    pub contact_id: Option<ContactId>,
    /// Target key → the version of the change that last decided its value.
    pub clocks: BTreeMap<String, Version>,
    /// Value target key → digest of the value Keap holds, as far as known (absent: unknown).
    pub mirror: BTreeMap<String, String>,
    /// The contact's tag ids as Keap last listed them, with our own tag calls since; `None`:
    /// unknown.
    pub tags: Option<BTreeSet<TagId>>,
    /// Subscription id → the newest `updated_at` applied: the reconciler skips a subscription
    /// already at its Chargify `updated_at`.
    pub subscriptions: BTreeMap<String, OffsetDateTime>,
    /// When the mirror was last read back from Keap in full.
    pub mirror_read_at: Option<OffsetDateTime>,
    /// The email a contact is being found or created by, saved before the call and cleared
    /// with its answer: set with no `contact_id`, an attempt stopped between the two (a
    /// crash) and Keap may hold a contact this state does not name yet. The only personal
    /// data the identity map keeps, and only for that moment.
    pub creating: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stored customer state is unreadable ({0}); inspect the identity map item")]
pub struct StateError(String);

/// The stored form: compact JSON, times as integers.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    clocks: BTreeMap<String, Version>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    mirror: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tags: Option<BTreeSet<TagId>>,
    /// Nanoseconds since the epoch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    subscriptions: BTreeMap<String, i64>,
    /// Seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mirror_read_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    creating: Option<String>,
}

fn nanos(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

impl CustomerState {
    /// Everything but the contact id, which adapters store in its own attribute (operators
    /// and older readers look it up there).
    pub fn to_json(&self) -> String {
        let wire = Wire {
            clocks: self.clocks.clone(),
            mirror: self.mirror.clone(),
            tags: self.tags.clone(),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(s, at)| (s.clone(), nanos(*at)))
                .collect(),
            mirror_read_at: self.mirror_read_at.map(|t| t.unix_timestamp()),
            creating: self.creating.clone(),
        };
        // A map of strings and integers always serialises.
        serde_json::to_string(&wire).unwrap_or_else(|_| "{}".into())
    }

    /// [`Self::to_json`] read back, with `contact_id` from its own attribute.
    pub fn from_json(contact_id: Option<ContactId>, text: &str) -> Result<Self, StateError> {
        let wire: Wire = serde_json::from_str(text).map_err(|e| StateError(e.to_string()))?;
        let mut subscriptions = BTreeMap::new();
        for (id, ns) in wire.subscriptions {
            let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
                .map_err(|e| StateError(format!("subscription {id}: {e}")))?;
            subscriptions.insert(id, at);
        }
        let mirror_read_at = wire
            .mirror_read_at
            .map(OffsetDateTime::from_unix_timestamp)
            .transpose()
            .map_err(|e| StateError(e.to_string()))?;
        Ok(Self {
            contact_id,
            clocks: wire.clocks,
            mirror: wire.mirror,
            tags: wire.tags,
            subscriptions,
            mirror_read_at,
            creating: wire.creating,
        })
    }

    /// Takes what `keap` knows of Keap (the contact, the value digests, the tags, when they
    /// were read, a creation in flight), keeping this state's versions: the calls' outcome
    /// over the fold's clocks.
    pub fn take_mirror(&mut self, keap: &CustomerState) {
        self.contact_id = keap.contact_id;
        self.mirror = keap.mirror.clone();
        self.tags = keap.tags.clone();
        self.mirror_read_at = keap.mirror_read_at;
        self.creating = keap.creating.clone();
    }

    /// Whether subscription `id` was applied as of `updated_at` or later.
    pub fn has_applied(&self, subscription: &str, updated_at: OffsetDateTime) -> bool {
        self.subscriptions
            .get(subscription)
            .is_some_and(|at| *at >= updated_at)
    }

    /// Moves subscription `id`'s clock to `updated_at` if that is newer.
    pub fn note_subscription(&mut self, subscription: &str, updated_at: OffsetDateTime) {
        let at = self
            .subscriptions
            .entry(subscription.to_owned())
            .or_insert(updated_at);
        if *at < updated_at {
            *at = updated_at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_to_the_nanosecond() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_790_000_000_123_456_789).unwrap();
        let mut state = CustomerState {
            contact_id: Some(7),
            ..CustomerState::default()
        };
        state
            .clocks
            .insert("tag:A".into(), Version::new(Some(at), "12"));
        state.tags = Some([3, 9].into());
        state.mirror.insert("field:P".into(), "ab".into());
        state.note_subscription("s1", at);
        state.mirror_read_at = Some(OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap());
        state.creating = Some("jane@example.com".into());
        let back = CustomerState::from_json(Some(7), &state.to_json()).unwrap();
        assert_eq!(back, state);
        assert!(back.has_applied("s1", at));
        assert!(!back.has_applied("s1", at + time::Duration::nanoseconds(1)));
        assert_eq!(
            CustomerState::from_json(None, "{}").unwrap(),
            CustomerState::default()
        );
        assert!(CustomerState::from_json(None, "[").is_err());
    }
}

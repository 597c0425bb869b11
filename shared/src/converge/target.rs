//! What a rule writes ([`Target`], [`Desired`]), how the mirror tells what Keap holds
//! ([`digest`]) and the order of changes ([`Version`]).

use crate::keap::Address;
use crate::rules::TagRef;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The order of Chargify changes: Chargify's time of the change, then the webhook id.
///
/// A webhook with no time for a kind of value (a body without `updated_at`) sorts before any
/// timed change, so it can fill a value but never overwrite a timed one. Two changes of one
/// instant are ordered by webhook id (numeric ids compare as numbers; the system's own
/// snapshot ids count as 0), so the order is total and the end state never depends on which
/// arrived first. A retry of the same webhook has the same version: it is never older than
/// itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "(Option<i64>, u64)", into = "(Option<i64>, u64)")]
pub struct Version {
    /// Nanoseconds since the Unix epoch.
    pub at: Option<i64>,
    pub seq: u64,
}

impl Version {
    pub fn new(at: Option<OffsetDateTime>, webhook_id: &str) -> Self {
        Self {
            at: at.map(|t| i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)),
            seq: webhook_id.parse().unwrap_or(0),
        }
    }

    /// The Chargify time, when the webhook carried one.
    pub fn time(&self) -> Option<OffsetDateTime> {
        self.at
            .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).ok())
    }
}

impl From<(Option<i64>, u64)> for Version {
    fn from((at, seq): (Option<i64>, u64)) -> Self {
        Self { at, seq }
    }
}

impl From<Version> for (Option<i64>, u64) {
    fn from(v: Version) -> Self {
        (v.at, v.seq)
    }
}

/// A contact field the `[contact]` mapping writes. The billing address is one value: Keap
/// keeps it as one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContactAttr {
    Email,
    GivenName,
    FamilyName,
    Company,
    Phone,
    Address,
    OptInReason,
}

impl ContactAttr {
    pub const ALL: [ContactAttr; 7] = [
        Self::Email,
        Self::GivenName,
        Self::FamilyName,
        Self::Company,
        Self::Phone,
        Self::Address,
        Self::OptInReason,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::GivenName => "given_name",
            Self::FamilyName => "family_name",
            Self::Company => "company",
            Self::Phone => "phone",
            Self::Address => "address",
            Self::OptInReason => "opt_in_reason",
        }
    }
}

/// One value a rule writes on a contact.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Contact(ContactAttr),
    /// A custom field, by label.
    Field(String),
    Tag(TagRef),
}

impl Target {
    /// The key in the identity map: `contact:<name>`, `field:<label>`, `tag:<name>` or
    /// `tag#<id>`.
    pub fn key(&self) -> String {
        match self {
            Self::Contact(attr) => format!("contact:{}", attr.name()),
            Self::Field(label) => format!("field:{label}"),
            Self::Tag(TagRef::Name(name)) => format!("tag:{name}"),
            Self::Tag(TagRef::Id(id)) => format!("tag#{id}"),
        }
    }

    /// [`Self::key`] read back; `None` for a key this build does not know.
    pub fn parse(key: &str) -> Option<Self> {
        if let Some(id) = key.strip_prefix("tag#") {
            return id.parse().ok().map(|id| Self::Tag(TagRef::Id(id)));
        }
        if let Some(name) = key.strip_prefix("tag:") {
            return Some(Self::Tag(TagRef::Name(name.to_owned())));
        }
        if let Some(label) = key.strip_prefix("field:") {
            return Some(Self::Field(label.to_owned()));
        }
        let name = key.strip_prefix("contact:")?;
        ContactAttr::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .map(Self::Contact)
    }
}

/// What a rule wants a target to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    Text(String),
    Address(Address),
    /// A tag on (true) or off (false) the contact.
    Tag(bool),
}

/// A short, stable fingerprint of a value: the first 8 bytes of its SHA-256, in hex. Enough
/// to tell "the same value again" from "another value" for one field of one contact, and the
/// identity map keeps no personal data in clear. `None` for a tag (not a value).
pub fn digest(desired: &Desired) -> Option<String> {
    use sha2::Digest;
    let text = match desired {
        Desired::Text(text) => text.clone(),
        Desired::Address(a) => [
            &a.line1,
            &a.line2,
            &a.locality,
            &a.region,
            &a.postal_code,
            &a.country_code,
        ]
        .map(|part| part.as_deref().unwrap_or_default())
        .join("\u{1f}"),
        Desired::Tag(_) => return None,
    };
    let hash = sha2::Sha256::digest(text.as_bytes());
    Some(hex::encode(&hash[..8]))
}

/// Whether the mirror's digest `held` shows Keap holding `desired` already.
pub fn holds(held: Option<&String>, desired: &Desired) -> bool {
    held.is_some_and(|h| digest(desired).as_ref() == Some(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_time_then_webhook_id_and_untimed_changes_come_first() {
        let t = |s: i64| OffsetDateTime::from_unix_timestamp(s).ok();
        let a = Version::new(t(100), "7");
        let b = Version::new(t(100), "9");
        let c = Version::new(t(101), "1");
        let untimed = Version::new(None, "99");
        assert!(a < b && b < c);
        assert!(untimed < a);
        assert_eq!(a, Version::new(t(100), "7"), "a retry is never older");
        assert_eq!(Version::new(t(5), "snapshot-1-5").seq, 0);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Version>(&json).unwrap(), c);
        assert_eq!(c.time(), t(101));
    }

    #[test]
    fn target_keys_round_trip() {
        let targets = [
            Target::Contact(ContactAttr::Email),
            Target::Contact(ContactAttr::Address),
            Target::Field("Chargify Plan".into()),
            Target::Tag(TagRef::Name("Billing: Active".into())),
            Target::Tag(TagRef::Name("tag#weird: name".into())),
            Target::Tag(TagRef::Id(42)),
        ];
        for target in targets {
            assert_eq!(
                Target::parse(&target.key()),
                Some(target.clone()),
                "{target:?}"
            );
        }
        assert_eq!(Target::parse("contact:nope"), None);
    }

    #[test]
    fn the_mirror_holds_a_value_by_its_digest() {
        let value = Desired::Text("Pro".into());
        let held = digest(&value);
        assert!(holds(held.as_ref(), &value));
        assert!(!holds(held.as_ref(), &Desired::Text("Basic".into())));
        assert!(!holds(None, &value));
        assert_eq!(digest(&Desired::Tag(true)), None);
    }
}

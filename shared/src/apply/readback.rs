//! Correcting the mirror's values from what a Keap answer shows.
//!
//! The mirror keeps, per contact value and custom field, the digest of what this system last
//! wrote, so an event that sets the same value again costs no call. A value someone changed
//! or cleared by hand in Keap would then never be written back. Whenever an answer shows the
//! contact's values, each mirror entry Keap no longer holds is forgotten, so the next event
//! that sets it writes it again.
//!
//! In the answer to one of our writes, only a clear difference forgets an entry: Keap stores
//! some values in its own form (phone numbers, addresses, company links, dates), and
//! forgetting an entry Keap does hold would cost one write that changes nothing, again at
//! every write. So names and text custom fields are compared by digest, a date on its day, a
//! number in its usual spellings, and the others only for presence: an email (Keap may change
//! its case), phone, address or company removed by hand is written back, one edited by hand
//! is not until the rules set another value. The opt-in reason cannot be read back at all.
//!
//! A read-back ([`Shown::exact`]) checks those too, as written: it comes after a retry, when
//! a write of ours may have reached Keap after the mirror was saved (a process killed between
//! Keap's answer and the save leaves Keap with a value the mirror does not know), and every
//! `MIRROR_MAX_AGE_DAYS`. A value Keap keeps in its own form then costs one more write, at most
//! once per read-back; presence alone would let the mirror vouch for a value Keap lost.

use crate::converge::{digest, ContactAttr, CustomerState, Desired, Target};
use crate::keap::ContactFields;
use serde_json::Value;

/// What one answer lets the mirror be checked against.
pub struct Shown<'a> {
    pub fields: &'a ContactFields,
    /// Whether the answer lists custom fields (Keap leaves them out unless asked; a contact
    /// read with them asked for and none listed has none set).
    pub custom_fields_listed: bool,
    /// A read-back: email, phone, address and company must show as written, not only be
    /// present (see the module docs).
    pub exact: bool,
}

/// Forgets the mirror entries `shown` proves Keap does not hold, except those in `keep`
/// (values the same call just wrote). `field_id` names a custom field's id by label, from
/// what is known without a call. Returns the keys forgotten.
pub fn forget_values_not_held(
    state: &mut CustomerState,
    shown: &Shown<'_>,
    keep: &[String],
    field_id: impl Fn(&str) -> Option<i64>,
) -> Vec<String> {
    let fields = shown.fields;
    let mut forgotten = Vec::new();
    state.mirror.retain(|key, held| {
        if keep.contains(key) {
            return true;
        }
        let still_held = match Target::parse(key) {
            Some(Target::Contact(attr)) => match attr {
                ContactAttr::Email if shown.exact => fields.email.as_deref().is_some_and(|e| {
                    text_held(held, Some(e)) || text_held(held, Some(&e.to_lowercase()))
                }),
                ContactAttr::Email => fields.email.as_deref().is_some_and(|e| !e.is_empty()),
                ContactAttr::GivenName => text_held(held, fields.given_name.as_deref()),
                ContactAttr::FamilyName => text_held(held, fields.family_name.as_deref()),
                ContactAttr::Phone if shown.exact => text_held(held, fields.phone.as_deref()),
                ContactAttr::Phone => fields.phone.as_deref().is_some_and(|p| !p.is_empty()),
                ContactAttr::Address if shown.exact => fields
                    .address
                    .as_ref()
                    .is_some_and(|a| digest(&Desired::Address(a.clone())).as_deref() == Some(held)),
                ContactAttr::Address => fields.address.is_some(),
                // A read-back names the company only by id when Keap leaves the name out;
                // the name is then all that can be compared, when shown.
                ContactAttr::Company if shown.exact => match fields.company.as_deref() {
                    Some(name) => text_held(held, Some(name)),
                    None => fields.company_id.is_some(),
                },
                ContactAttr::Company => fields.company_id.is_some() || fields.company.is_some(),
                ContactAttr::OptInReason => true,
            },
            Some(Target::Field(label)) if shown.custom_fields_listed => {
                match field_id(&label) {
                    Some(id) => custom_field_held(
                        held,
                        fields
                            .custom_fields
                            .iter()
                            .find(|(field, _)| *field == id)
                            .map(|(_, value)| value),
                    ),
                    // The model is not loaded: nothing can be said without a call.
                    None => true,
                }
            }
            _ => true,
        };
        if !still_held {
            forgotten.push(key.clone());
        }
        still_held
    });
    forgotten
}

fn text_digest(text: &str) -> Option<String> {
    digest(&Desired::Text(text.to_owned()))
}

fn text_held(held: &str, keap: Option<&str>) -> bool {
    keap.is_some_and(|value| {
        text_digest(value).as_deref() == Some(held)
            || text_digest(value.trim()).as_deref() == Some(held)
    })
}

/// A custom field's value as Keap answers it: text as written, a number in any of its JSON
/// spellings, a date with or without the time Keap may add to it.
fn custom_field_held(held: &str, keap: Option<&Value>) -> bool {
    match keap {
        None | Some(Value::Null) => false,
        Some(Value::String(text)) => {
            text_held(held, Some(text))
                || text
                    .get(..10)
                    .filter(|day| text.len() > 10 && is_date(day))
                    .is_some_and(|day| text_held(held, Some(day)))
        }
        Some(Value::Number(n)) => text_held(held, Some(&n.to_string())) || number_spelled(held, n),
        // Another shape (a list of options, an object): not compared.
        Some(_) => true,
    }
}

/// Whether a number answered by Keap is the one written as text in another spelling (`5`
/// written, `5.0` answered): the mirror only has a digest, so the usual spellings are tried.
fn number_spelled(held: &str, n: &serde_json::Number) -> bool {
    let Some(f) = n.as_f64() else {
        return true;
    };
    let mut spellings = vec![format!("{f}"), format!("{f:.2}")];
    if f.fract() == 0.0 && f.abs() < 1e15 {
        spellings.push(format!("{}", f as i64));
    }
    spellings.iter().any(|s| text_held(held, Some(s)))
}

fn is_date(text: &str) -> bool {
    time::Date::parse(
        text,
        &time::macros::format_description!("[year]-[month]-[day]"),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keap::Address;

    fn state_holding(values: &[(&str, &str)]) -> CustomerState {
        let mut state = CustomerState::default();
        for (key, text) in values {
            let held = text_digest(text).unwrap_or_default();
            state.mirror.insert((*key).to_owned(), held);
        }
        state
    }

    const FIELD_PLAN: i64 = 12;
    const FIELD_SINCE: i64 = 13;
    const FIELD_SEATS: i64 = 14;

    fn ids(label: &str) -> Option<i64> {
        match label {
            "Plan" => Some(FIELD_PLAN),
            "Since" => Some(FIELD_SINCE),
            "Seats" => Some(FIELD_SEATS),
            _ => None,
        }
    }

    fn keys(state: &CustomerState) -> Vec<&str> {
        state.mirror.keys().map(String::as_str).collect()
    }

    #[test]
    fn values_changed_or_cleared_by_hand_are_forgotten_the_rest_kept() {
        let mut state = state_holding(&[
            ("contact:email", "jane@example.com"),
            ("contact:given_name", "Jane"),
            ("contact:family_name", "Doe"),
            ("contact:phone", "555-0100"),
            ("contact:address", "whatever"),
            ("contact:company", "Acme"),
            ("field:Plan", "Gold"),
            ("field:Since", "2026-01-31"),
            ("field:Seats", "5"),
            ("field:Unknown", "x"),
        ]);
        let fields = ContactFields {
            // Another case: kept (emails are only checked for presence).
            email: Some("Jane@Example.com".into()),
            // Edited by hand.
            given_name: Some("Janet".into()),
            // Cleared by hand.
            family_name: None,
            // Keap's own spelling of the number written: kept.
            phone: Some("(555) 0100".into()),
            address: Some(Address::default()),
            company_id: None,
            company: None,
            custom_fields: vec![
                (FIELD_PLAN, Value::String("Silver".into())),
                (
                    FIELD_SINCE,
                    Value::String("2026-01-31T00:00:00.000Z".into()),
                ),
                (FIELD_SEATS, serde_json::json!(5.0)),
            ],
            ..ContactFields::default()
        };
        let shown = Shown {
            fields: &fields,
            custom_fields_listed: true,
            exact: false,
        };
        let forgotten = forget_values_not_held(&mut state, &shown, &[], ids);
        assert_eq!(
            forgotten,
            [
                "contact:company",
                "contact:family_name",
                "contact:given_name",
                "field:Plan"
            ]
        );
        assert_eq!(
            keys(&state),
            [
                "contact:address",
                "contact:email",
                "contact:phone",
                "field:Seats",
                "field:Since",
                "field:Unknown"
            ]
        );
    }

    #[test]
    fn a_read_back_forgets_what_is_present_but_not_as_written() {
        // The mirror holds what the last saved state wrote; Keap shows an older write of
        // ours that reached it after the save (the process was killed in between).
        let written = Address {
            line1: Some("1 New St".into()),
            country_code: Some("USA".into()),
            ..Address::default()
        };
        let mut state = state_holding(&[
            ("contact:email", "jane@example.com"),
            ("contact:phone", "555-555-1234"),
            ("contact:company", "Acme"),
        ]);
        state.mirror.insert(
            "contact:address".into(),
            digest(&Desired::Address(written.clone())).unwrap_or_default(),
        );
        let older = ContactFields {
            email: Some("jane.old@example.com".into()),
            phone: Some("555-0103".into()),
            address: Some(Address {
                line1: Some("9 Old Rd".into()),
                ..written.clone()
            }),
            company: Some("Acme Old".into()),
            ..ContactFields::default()
        };
        let shown = |fields, exact| Shown {
            fields,
            custom_fields_listed: true,
            exact,
        };
        // A write's answer only checks presence: all four kept.
        let mut answer = state.clone();
        assert!(forget_values_not_held(&mut answer, &shown(&older, false), &[], ids).is_empty());
        // A read-back: all four forgotten, so the next event writes them again.
        let mut read_back = state.clone();
        assert_eq!(
            forget_values_not_held(&mut read_back, &shown(&older, true), &[], ids),
            [
                "contact:address",
                "contact:company",
                "contact:email",
                "contact:phone"
            ]
        );
        // As written (the email in Keap's lower case): all kept.
        let same = ContactFields {
            email: Some("Jane@Example.com".to_lowercase()),
            phone: Some("555-555-1234".into()),
            address: Some(written),
            company: Some("Acme".into()),
            ..ContactFields::default()
        };
        let mut read_back = state.clone();
        assert!(forget_values_not_held(&mut read_back, &shown(&same, true), &[], ids).is_empty());
        assert_eq!(read_back, state);
    }

    #[test]
    fn unlisted_custom_fields_and_values_just_written_are_kept() {
        let mut state = state_holding(&[("field:Plan", "Gold"), ("contact:given_name", "Jane")]);
        let fields = ContactFields::default();
        let shown = Shown {
            fields: &fields,
            custom_fields_listed: false,
            exact: false,
        };
        let forgotten =
            forget_values_not_held(&mut state, &shown, &["contact:given_name".into()], ids);
        assert!(forgotten.is_empty());
        assert_eq!(keys(&state), ["contact:given_name", "field:Plan"]);
        // Listed and absent: cleared by hand.
        let shown = Shown {
            fields: &fields,
            custom_fields_listed: true,
            exact: false,
        };
        assert_eq!(
            forget_values_not_held(&mut state, &shown, &[], ids),
            ["contact:given_name", "field:Plan"]
        );
    }
}

//! Forgetting one person (`cks forget`), as pure decisions: which stored webhooks are about
//! them and which identity-map entries are theirs. `cks` reads and deletes
//! (`cli/src/ops/forget.rs`); what is removed and what is kept is in docs/data.md.
//!
//! A person is named by an email address or by a Chargify customer id:
//! - by customer id, a webhook is theirs when its envelope's `customer_id` is that id;
//! - by email, when the customer email of its body (`…[customer][email]`) is that address;
//!   the customer id of each such webhook then names them too, so their webhooks sent under
//!   an earlier address are found as well.
//!
//! Emails are compared on the decoded form body, whole and in any case, never as a substring
//! of the raw body: Chargify sends `jane%40example.com` (and `%2B` for a `+`), `Jane@Example.com`
//! is the same address, and `ann@example.com` is not `jo-ann@example.com`. The address in
//! another field of someone else's webhook (their `cc_emails`, a memo) does not make that
//! webhook the person's: it is reported ([`Subject::named_elsewhere`]), not removed.

use crate::chargify::webhook::{is_id, MAX_ID_LEN};
use crate::chargify::FormBody;
use crate::envelope::WebhookEnvelope;
use crate::identity::CustomerKey;
use crate::telemetry::is_word_boundary;
use std::collections::BTreeSet;

/// Whom to forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Person {
    /// An email address, lower-cased.
    Email(String),
    /// A Chargify customer id (`payload[…][customer][id]`).
    CustomerId(String),
}

/// The argument names nobody. It is not repeated in the message: it may be personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("name the person by email address (with an @) or by Chargify customer id (1–{MAX_ID_LEN} of A–Z a–z 0–9 . _ -); the argument is neither")]
pub struct BadPerson;

impl Person {
    /// An email when the text has an `@`, else a customer id.
    pub fn parse(text: &str) -> Result<Self, BadPerson> {
        let text = text.trim();
        match text.split_once('@') {
            Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !text.contains(is_word_boundary) =>
            {
                Ok(Self::Email(text.to_lowercase()))
            }
            Some(_) => Err(BadPerson),
            None if is_id(text) => Ok(Self::CustomerId(text.to_owned())),
            None => Err(BadPerson),
        }
    }
}

/// Where a webhook body names an email address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mention {
    /// As the email of the webhook's customer: the webhook is about them.
    Customer,
    /// Only in another field (someone else's `cc_emails`, a memo).
    Elsewhere,
    Absent,
}

/// The keys of a body holding its customer's email: `payload[subscription][customer][email]`,
/// `payload[customer][email]`, and the same under any other object Chargify nests a customer in.
const CUSTOMER_EMAIL_KEY_END: &str = "[customer][email]";

/// Where `raw_body` (a form-encoded webhook body) names `email`. A body that is not a form
/// names nobody: ingest refuses those, so no stored webhook has one.
pub fn mention(raw_body: &str, email: &str) -> Mention {
    let Ok(form) = FormBody::parse(raw_body.as_bytes()) else {
        return Mention::Absent;
    };
    let email = email.trim().to_lowercase();
    let mut found = Mention::Absent;
    for (key, value) in form.pairs() {
        if key.ends_with(CUSTOMER_EMAIL_KEY_END) && value.trim().to_lowercase() == email {
            return Mention::Customer;
        }
        let named = value
            .split(is_word_boundary)
            .any(|word| word.to_lowercase() == email);
        if named {
            found = Mention::Elsewhere;
        }
    }
    found
}

/// What is known of the person while the stored webhooks are read: feed every envelope to
/// [`Subject::learn`] first, then ask [`Subject::concerns`] of each.
#[derive(Debug, Clone)]
pub struct Subject {
    person: Person,
    /// Only this site (`--site`), else every site.
    site: Option<String>,
    /// The person's customers found in the webhooks.
    customers: BTreeSet<CustomerKey>,
    /// The sites of the webhooks seen.
    sites: BTreeSet<String>,
}

impl Subject {
    pub fn new(person: Person, site: Option<String>) -> Self {
        Self {
            person,
            site,
            customers: BTreeSet::new(),
            sites: BTreeSet::new(),
        }
    }

    pub fn person(&self) -> &Person {
        &self.person
    }

    fn on_site(&self, envelope: &WebhookEnvelope) -> bool {
        self.site.as_ref().is_none_or(|site| *site == envelope.site)
    }

    /// The webhook names the person itself (their customer id, or their email as its
    /// customer's).
    fn names_person(&self, envelope: &WebhookEnvelope) -> bool {
        match &self.person {
            Person::CustomerId(id) => envelope.customer_id.as_ref() == Some(id),
            Person::Email(email) => mention(&envelope.raw_body, email) == Mention::Customer,
        }
    }

    /// Notes the webhook's site, and its customer when it names the person.
    pub fn learn(&mut self, envelope: &WebhookEnvelope) {
        if !self.on_site(envelope) {
            return;
        }
        self.sites.insert(envelope.site.clone());
        if let Some(id) = envelope.customer_id.as_ref() {
            if self.names_person(envelope) {
                self.customers
                    .insert(CustomerKey::new(envelope.site.as_str(), id.as_str()));
            }
        }
    }

    /// Whether the webhook is about the person: it names them, or its customer is theirs.
    pub fn concerns(&self, envelope: &WebhookEnvelope) -> bool {
        let theirs = || {
            envelope.customer_id.as_ref().is_some_and(|id| {
                self.customers
                    .contains(&CustomerKey::new(envelope.site.as_str(), id.as_str()))
            })
        };
        self.on_site(envelope) && (theirs() || self.names_person(envelope))
    }

    /// Whether the webhook is someone else's but names the person's email in another field.
    pub fn named_elsewhere(&self, envelope: &WebhookEnvelope) -> bool {
        match &self.person {
            Person::Email(email) => {
                self.on_site(envelope)
                    && !self.concerns(envelope)
                    && mention(&envelope.raw_body, email) == Mention::Elsewhere
            }
            Person::CustomerId(_) => false,
        }
    }

    /// The identity-map entries to remove: each customer of the person found, and for a
    /// customer id given, that id on `--site`, else on every site seen.
    pub fn customer_keys(&self) -> BTreeSet<CustomerKey> {
        let mut keys = self.customers.clone();
        if let Person::CustomerId(id) = &self.person {
            let sites = match &self.site {
                Some(site) => BTreeSet::from([site.clone()]),
                None => self.sites.clone(),
            };
            keys.extend(
                sites
                    .into_iter()
                    .map(|site| CustomerKey::new(site, id.as_str())),
            );
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    /// A signup of customer `customer` with email `email` (form-encoded), webhook `id`.
    fn signup(id: &str, customer: &str, email: &str, more: &[(&str, &str)]) -> WebhookEnvelope {
        let mut fields = vec![
            ("payload[subscription][customer][id]", customer),
            ("payload[subscription][customer][email]", email),
        ];
        fields.extend_from_slice(more);
        let body = fixtures::derive(fixtures::SIGNUP_SUCCESS, id, "signup_success", &fields);
        fixtures::envelope(&body).expect("a webhook")
    }

    #[test]
    fn an_email_is_matched_decoded_whole_and_in_any_case() {
        let body = |email: &str| {
            fixtures::derive(
                fixtures::SIGNUP_SUCCESS,
                "1",
                "signup_success",
                &[("payload[subscription][customer][email]", email)],
            )
        };
        for (stored, asked, expected) in [
            ("jane%40example.com", "jane@example.com", Mention::Customer),
            ("Jane%40Example.COM", "jane@example.com", Mention::Customer),
            (
                "jane%40example.com",
                " JANE@example.com ",
                Mention::Customer,
            ),
            (
                "jane%2Bbill%40example.com",
                "jane+bill@example.com",
                Mention::Customer,
            ),
            ("jane%40example.com", "jane%40example.com", Mention::Absent),
            ("jo-ann%40example.com", "ann@example.com", Mention::Absent),
            ("ann%40example.com.au", "ann@example.com", Mention::Absent),
        ] {
            assert_eq!(
                mention(&body(stored), asked),
                expected,
                "{stored} asked as {asked}"
            );
        }
        // The raw body holds the encoded form only: a substring search for the address
        // would not have found it.
        assert!(!body("jane%40example.com").contains("jane@example.com"));
        // The top-level customer of customer_update, and a body that is not a form.
        assert_eq!(
            mention(fixtures::CUSTOMER_UPDATE, "JOHN@example.com"),
            Mention::Customer
        );
        assert_eq!(
            mention("\u{0}%FF%FE=1", "john@example.com"),
            Mention::Absent
        );
    }

    #[test]
    fn an_email_in_another_field_is_elsewhere() {
        let cc = fixtures::derive(
            fixtures::PAYMENT_SUCCESS,
            "2",
            "payment_success",
            &[(
                "payload[subscription][customer][cc_emails]",
                "billing%40acme.test%2C%20Jane%40Example.com",
            )],
        );
        assert_eq!(mention(&cc, "jane@example.com"), Mention::Elsewhere);
        assert_eq!(mention(&cc, "billing@acme.test"), Mention::Elsewhere);
        assert_eq!(mention(&cc, "pookie999@example.com"), Mention::Customer);
        assert_eq!(mention(&cc, "ane@example.com"), Mention::Absent);
    }

    #[test]
    fn a_person_is_an_email_or_a_customer_id_and_nothing_else() {
        assert_eq!(
            Person::parse(" Jane@Example.com "),
            Ok(Person::Email("jane@example.com".into()))
        );
        assert_eq!(Person::parse("15"), Ok(Person::CustomerId("15".into())));
        for bad in [
            "",
            "@example.com",
            "jane@",
            "jane doe@example.com",
            "Jane Doe",
            "a#b",
        ] {
            assert_eq!(Person::parse(bad), Err(BadPerson), "{bad:?}");
        }
        assert!(!BadPerson.to_string().contains("Jane"));
    }

    #[test]
    fn an_email_finds_the_customer_and_then_all_of_its_webhooks() {
        let person = signup("1", "15", "Jane%40Example.com", &[]);
        // The same customer before an email change: found through the customer id.
        let earlier = signup("2", "15", "jane.old%40example.com", &[]);
        let other = signup(
            "3",
            "16",
            "bob%40example.com",
            &[(
                "payload[subscription][customer][cc_emails]",
                "jane%40example.com",
            )],
        );
        let elsewhere_site = {
            let mut envelope = signup("4", "15", "jane%40example.com", &[]);
            envelope.site = "other-site".into();
            envelope
        };
        let all = [&person, &earlier, &other, &elsewhere_site];

        let mut subject = Subject::new(
            Person::parse("jane@example.com").expect("email"),
            Some("acme-test".into()),
        );
        for envelope in all {
            subject.learn(envelope);
        }
        let concerned: Vec<&str> = all
            .iter()
            .filter(|e| subject.concerns(e))
            .map(|e| e.webhook_id.as_str())
            .collect();
        assert_eq!(concerned, ["1", "2"]);
        assert!(subject.named_elsewhere(&other), "bob's cc names her");
        assert!(!subject.named_elsewhere(&person));
        assert_eq!(
            subject.customer_keys(),
            BTreeSet::from([CustomerKey::new("acme-test", "15")])
        );

        // Without --site, every site's customer of that email.
        let mut everywhere = Subject::new(Person::parse("jane@example.com").expect("email"), None);
        for envelope in all {
            everywhere.learn(envelope);
        }
        assert!(everywhere.concerns(&elsewhere_site));
        assert_eq!(
            everywhere.customer_keys(),
            BTreeSet::from([
                CustomerKey::new("acme-test", "15"),
                CustomerKey::new("other-site", "15")
            ])
        );
    }

    #[test]
    fn a_customer_id_is_forgotten_on_every_site_seen_or_on_the_one_given() {
        let mut subject = Subject::new(Person::CustomerId("16".into()), None);
        let theirs = signup("3", "16", "bob%40example.com", &[]);
        let someone_else = signup("1", "15", "jane%40example.com", &[]);
        subject.learn(&theirs);
        subject.learn(&someone_else);
        assert!(subject.concerns(&theirs));
        assert!(!subject.concerns(&someone_else));
        assert!(!subject.named_elsewhere(&someone_else));
        assert_eq!(
            subject.customer_keys(),
            BTreeSet::from([CustomerKey::new("acme-test", "16")])
        );
        // Nothing stored at all: only a given site names the entry.
        let nothing = Subject::new(Person::CustomerId("16".into()), None);
        assert!(nothing.customer_keys().is_empty());
        let given = Subject::new(Person::CustomerId("16".into()), Some("acme".into()));
        assert_eq!(
            given.customer_keys(),
            BTreeSet::from([CustomerKey::new("acme", "16")])
        );
    }
}

//! The Keap stand-in's state as [`KeapView`], to compare with the in-memory reference run of
//! the convergence tests. Contacts are keyed by the Chargify customer id the rules write in
//! the "Chargify Customer ID" custom field (every history starts with a signup, which writes
//! it), so no identity map is needed: the view reads Keap alone, as a user would.

use crate::keap_standin::KeapStandIn;
use serde_json::Value;
use shared::fixtures::view::{duplicate_names, ContactView, GoalCounts, KeapView};
use std::collections::BTreeMap;

/// The custom field that names a contact's Chargify customer.
pub const CUSTOMER_FIELD: &str = "Chargify Customer ID";

fn text(value: &Value) -> Option<String> {
    value.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// The stand-in's contacts and goals as a [`KeapView`] and goal counts.
pub fn standin_view(keap: &KeapStandIn) -> (KeapView, GoalCounts) {
    let state = keap.state();
    let labels: BTreeMap<i64, &str> = state
        .custom_fields
        .iter()
        .map(|(id, label)| (*id, label.as_str()))
        .collect();
    let tag_names: BTreeMap<i64, String> = state
        .tags
        .iter()
        .filter_map(|(id, tag)| Some((*id, tag["name"].as_str()?.to_owned())))
        .collect();
    let mut view = KeapView {
        contact_count: state.contacts.len(),
        duplicate_tag_names: duplicate_names(tag_names.values().map(String::as_str)),
        ..KeapView::default()
    };
    let mut customer_of: BTreeMap<i64, String> = BTreeMap::new();
    for (id, contact) in &state.contacts {
        let fields: BTreeMap<String, String> = contact
            .get("custom_fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| {
                let label = labels.get(&f["id"].as_i64()?)?;
                Some(((*label).to_owned(), text(&f["content"])?))
            })
            .collect();
        let email = contact
            .get("email_addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|e| e["field"] == "EMAIL1"))
            .and_then(|e| text(&e["email"]));
        let phone = contact
            .get("phone_numbers")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|p| text(&p["number"]));
        let address = contact
            .get("addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .map(|a| {
                [
                    "line1",
                    "line2",
                    "locality",
                    "region",
                    "postal_code",
                    "country_code",
                ]
                .map(|k| a[k].as_str().unwrap_or_default().to_owned())
                .join("|")
            });
        let company = contact
            .get("company")
            .and_then(|c| c["id"].as_i64())
            .and_then(|c| state.companies.get(&c))
            .and_then(|c| text(&c["company_name"]));
        let tags = state
            .contact_tags
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|t| tag_names.get(t).cloned())
            .collect();
        let customer = fields
            .get(CUSTOMER_FIELD)
            .cloned()
            .unwrap_or_else(|| format!("contact {id} with no {CUSTOMER_FIELD}"));
        customer_of.insert(*id, customer.clone());
        view.contacts.insert(
            customer,
            ContactView {
                email,
                given_name: contact.get("given_name").and_then(text),
                family_name: contact.get("family_name").and_then(text),
                phone,
                address,
                company,
                fields,
                tags,
            },
        );
    }
    let mut goals = GoalCounts::new();
    for (integration, call, contact) in &state.goals {
        let customer = customer_of.get(contact).cloned().unwrap_or_default();
        *goals
            .entry((customer, format!("{integration}/{call}")))
            .or_default() += 1;
    }
    (view, goals)
}

//! Keap's REST v1 contract as a checker: does a request match an operation of the vendored
//! spec (`shared/fixtures/keap/keap-rest-v1.trimmed.openapi.json`), with a body its schema
//! accepts? The Keap stand-in answers 400 to anything this refuses.
//!
//! Stricter than Keap in one way, on purpose: the spec's object
//! schemas do not forbid unknown properties, and Keap silently drops them (a misspelt
//! `givenname` loses the data), so here every object schema gets
//! `additionalProperties: false`. And looser in one: `custom_fields[].content` is typed
//! `object` but holds text, numbers and dates, so any JSON value is accepted there.

use serde_json::{Map, Value};

const CONTRACT: &str = include_str!("../../shared/fixtures/keap/keap-rest-v1.trimmed.openapi.json");

/// Why a request breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    NoSuchOperation {
        method: String,
        path: String,
    },
    BadPathParameter {
        name: String,
        value: String,
    },
    UnknownQueryParameter {
        operation: String,
        name: String,
    },
    MissingQueryParameter {
        operation: String,
        name: String,
    },
    MissingBody {
        operation: String,
    },
    UnexpectedBody {
        operation: String,
    },
    BodyNotJson {
        operation: String,
    },
    BodySchema {
        operation: String,
        errors: Vec<String>,
    },
    /// A call to the OAuth token endpoint that Keap's documentation says is wrong.
    TokenRequest {
        reason: String,
    },
}

struct Operation {
    id: String,
    method: String,
    segments: Vec<String>,
    /// Path parameters declared as integers.
    integer_params: Vec<String>,
    query: Vec<(String, bool)>,
    body: Option<(jsonschema::Validator, bool)>,
}

/// The vendored contract, compiled once.
pub struct KeapContract {
    operations: Vec<Operation>,
}

impl KeapContract {
    pub fn load() -> Self {
        let spec: Value = serde_json::from_str(CONTRACT).expect("the vendored Keap spec is JSON");
        let mut operations = Vec::new();
        let paths = spec["paths"].as_object().expect("spec has paths");
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                let Some(id) = op.get("operationId").and_then(Value::as_str) else {
                    continue;
                };
                let params = op
                    .get("parameters")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let of_kind = |kind: &str| {
                    params
                        .iter()
                        .filter(move |p| p["in"] == kind)
                        .map(|p| (p["name"].as_str().unwrap_or_default().to_owned(), p))
                        .collect::<Vec<_>>()
                };
                let integer_params = of_kind("path")
                    .into_iter()
                    .filter(|(_, p)| p["schema"]["type"] == "integer")
                    .map(|(name, _)| name)
                    .collect();
                let query = of_kind("query")
                    .into_iter()
                    .map(|(name, p)| (name, p["required"] == true))
                    .collect();
                let body = op
                    .pointer("/requestBody/content/application~1json/schema")
                    .map(|schema| {
                        let strict = strict_schema(schema.clone());
                        let validator = jsonschema::draft4::new(&strict)
                            .unwrap_or_else(|e| panic!("{id}: schema does not compile: {e}"));
                        (
                            validator,
                            op.pointer("/requestBody/required") == Some(&Value::Bool(true)),
                        )
                    });
                operations.push(Operation {
                    id: id.to_owned(),
                    method: method.to_ascii_uppercase(),
                    segments: path.split('/').map(str::to_owned).collect(),
                    integer_params,
                    query,
                    body,
                });
            }
        }
        Self { operations }
    }

    /// Checks one request; returns the operation id it matched.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<&str, Violation> {
        let op = self.find(method, path)?;
        let query_names: Vec<String> = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').map_or(p, |(k, _)| k).to_owned())
            .collect();
        for name in &query_names {
            if !op.query.iter().any(|(declared, _)| declared == name) {
                return Err(Violation::UnknownQueryParameter {
                    operation: op.id.clone(),
                    name: name.clone(),
                });
            }
        }
        for (name, required) in &op.query {
            if *required && !query_names.contains(name) {
                return Err(Violation::MissingQueryParameter {
                    operation: op.id.clone(),
                    name: name.clone(),
                });
            }
        }
        let body = body.filter(|b| !b.is_empty());
        match (&op.body, body) {
            (None, Some(_)) => Err(Violation::UnexpectedBody {
                operation: op.id.clone(),
            }),
            (Some((_, true)), None) => Err(Violation::MissingBody {
                operation: op.id.clone(),
            }),
            (_, None) => Ok(&op.id),
            (Some((validator, _)), Some(bytes)) => {
                let json: Value =
                    serde_json::from_slice(bytes).map_err(|_| Violation::BodyNotJson {
                        operation: op.id.clone(),
                    })?;
                let errors: Vec<String> = validator
                    .iter_errors(&json)
                    .map(|e| format!("{} at {}", e, e.instance_path()))
                    .collect();
                if errors.is_empty() {
                    Ok(&op.id)
                } else {
                    Err(Violation::BodySchema {
                        operation: op.id.clone(),
                        errors,
                    })
                }
            }
        }
    }

    fn find(&self, method: &str, path: &str) -> Result<&Operation, Violation> {
        let segments: Vec<&str> = path.split('/').collect();
        // A literal segment beats a template (`/v1/contacts/model` is not `/v1/contacts/{id}`).
        let mut best: Option<(&Operation, usize)> = None;
        for op in self.operations.iter().filter(|op| op.method == method) {
            if op.segments.len() != segments.len() {
                continue;
            }
            let matches = op
                .segments
                .iter()
                .zip(&segments)
                .all(|(template, actual)| template == actual || template.starts_with('{'));
            if !matches {
                continue;
            }
            let literals = op.segments.iter().filter(|s| !s.starts_with('{')).count();
            if best.is_none_or(|(_, n)| literals > n) {
                best = Some((op, literals));
            }
        }
        let op = best
            .map(|(op, _)| op)
            .ok_or_else(|| Violation::NoSuchOperation {
                method: method.to_owned(),
                path: path.to_owned(),
            })?;
        for (template, actual) in op.segments.iter().zip(&segments) {
            let name = template.trim_start_matches('{').trim_end_matches('}');
            if template.starts_with('{')
                && op.integer_params.iter().any(|p| p == name)
                && actual.parse::<i64>().is_err()
            {
                return Err(Violation::BadPathParameter {
                    name: name.to_owned(),
                    value: (*actual).to_owned(),
                });
            }
        }
        Ok(op)
    }
}

/// OpenAPI 3.0 schema → strict JSON Schema draft 4: `additionalProperties: false` on every
/// object with properties, `nullable` as a `null` type, and `content` of custom fields open.
fn strict_schema(mut schema: Value) -> Value {
    tighten(&mut schema);
    schema
}

fn tighten(node: &mut Value) {
    let Some(map) = node.as_object_mut() else {
        if let Some(items) = node.as_array_mut() {
            items.iter_mut().for_each(tighten);
        }
        return;
    };
    if map.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(t)) = map.get("type").cloned() {
            map.insert(
                "type".into(),
                Value::Array(vec![Value::String(t), Value::String("null".into())]),
            );
        }
    }
    map.remove("nullable");
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        if let Some(content) = props.get_mut("content") {
            // Keap stores text, numbers and dates in custom field `content`.
            *content = Value::Object(Map::new());
        }
        map.entry("additionalProperties")
            .or_insert(Value::Bool(false));
    }
    for value in map.values_mut() {
        tighten(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_calls_domain_notes_shows() {
        let contract = KeapContract::load();
        let upsert = br#"{"duplicate_option":"Email","email_addresses":[{"email":"jane@example.com","field":"EMAIL1"}],"given_name":"Jane","family_name":"Doe","custom_fields":[{"id":42,"content":"pro-monthly"}],"opt_in_reason":"Customer purchased subscription via Chargify"}"#;
        assert_eq!(
            contract.check("PUT", "/v1/contacts", None, Some(upsert)),
            Ok("createOrUpdateContactUsingPUT")
        );
        assert_eq!(
            contract.check(
                "POST",
                "/v1/contacts/12/tags",
                None,
                Some(br#"{"tagIds":[123,456]}"#)
            ),
            Ok("applyTagsToContactIdUsingPOST")
        );
        assert_eq!(
            contract.check("DELETE", "/v1/contacts/12/tags", Some("ids=1%2C2"), None),
            Ok("removeTagsFromContactUsingDELETE")
        );
        assert_eq!(
            contract.check(
                "POST",
                "/v1/campaigns/goals/chargify/signup",
                None,
                Some(br#"{"contact_id":12}"#)
            ),
            Ok("createAchieveApiGoalEventUsingPOST")
        );
        assert_eq!(
            contract.check("GET", "/v1/contacts/model", None, None),
            Ok("retrieveContactModelUsingGET")
        );
        assert_eq!(
            contract.check(
                "GET",
                "/v1/contacts/12",
                Some("optional_properties=custom_fields"),
                None
            ),
            Ok("getContactUsingGET")
        );
    }

    #[test]
    fn refuses_what_keap_would_refuse_or_silently_drop() {
        let contract = KeapContract::load();
        let misspelt = br#"{"duplicate_option":"Email","email_addresses":[{"email":"a@b.c","field":"EMAIL1"}],"givenname":"Jane"}"#;
        assert!(matches!(
            contract.check("PUT", "/v1/contacts", None, Some(misspelt)),
            Err(Violation::BodySchema { .. })
        ));
        let bad_enum = br#"{"duplicate_option":"Phone","email_addresses":[{"email":"a@b.c","field":"EMAIL1"}]}"#;
        assert!(matches!(
            contract.check("PUT", "/v1/contacts", None, Some(bad_enum)),
            Err(Violation::BodySchema { .. })
        ));
        assert!(matches!(
            contract.check(
                "POST",
                "/v1/contacts/12/tags",
                None,
                Some(br#"{"tagIds":["123"]}"#)
            ),
            Err(Violation::BodySchema { .. })
        ));
        assert!(matches!(
            contract.check(
                "POST",
                "/v1/contacts/abc/tags",
                None,
                Some(br#"{"tagIds":[1]}"#)
            ),
            Err(Violation::BadPathParameter { .. })
        ));
        assert!(matches!(
            contract.check("DELETE", "/v1/contacts/12/tags", None, None),
            Err(Violation::MissingQueryParameter { .. })
        ));
        assert!(matches!(
            contract.check("GET", "/v1/contacts/12", Some("fields=id"), None),
            Err(Violation::UnknownQueryParameter { .. })
        ));
        assert!(matches!(
            contract.check("POST", "/v1/notes", None, None),
            Err(Violation::MissingBody { .. })
        ));
        assert!(matches!(
            contract.check("POST", "/v1/notes", None, Some(b"not json")),
            Err(Violation::BodyNotJson { .. })
        ));
        assert!(matches!(
            contract.check("POST", "/v2/contacts", None, Some(b"{}")),
            Err(Violation::NoSuchOperation { .. })
        ));
    }
}

//! CloudWatch Embedded Metric Format, checked against the specification
//! (CloudWatch User Guide, "Specification: Embedded metric format"): the shape by a JSON
//! Schema written from the spec's rules, and the cross-references a schema cannot express
//! (every dimension and metric a directive names is a top-level member of the right type) in
//! code. CloudWatch drops a document that breaks either silently, so the functions' real
//! output is run through [`validate`] by the binary tests.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Units CloudWatch accepts (`MetricDatum.Unit`).
const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Limits from the specification.
pub const MAX_DIMENSIONS_PER_SET: usize = 30;
pub const MAX_METRICS_PER_DIRECTIVE: usize = 100;
pub const MAX_VALUES_PER_METRIC: usize = 100;

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["_aws"],
        "properties": {
            "_aws": {
                "type": "object",
                "required": ["Timestamp", "CloudWatchMetrics"],
                "properties": {
                    // Milliseconds since the epoch, an integer.
                    "Timestamp": { "type": "integer", "minimum": 0 },
                    "CloudWatchMetrics": {
                        "type": "array",
                        "minItems": 1,
                        "items": { "$ref": "#/definitions/directive" }
                    }
                }
            }
        },
        "definitions": {
            "directive": {
                "type": "object",
                "required": ["Namespace", "Dimensions", "Metrics"],
                "properties": {
                    "Namespace": { "type": "string", "minLength": 1, "maxLength": 255 },
                    // An array of dimension sets; each set an array of member names.
                    "Dimensions": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "array",
                            "maxItems": MAX_DIMENSIONS_PER_SET,
                            "uniqueItems": true,
                            "items": { "type": "string", "minLength": 1, "maxLength": 255 }
                        }
                    },
                    "Metrics": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_METRICS_PER_DIRECTIVE,
                        "items": {
                            "type": "object",
                            "required": ["Name"],
                            "properties": {
                                "Name": { "type": "string", "minLength": 1, "maxLength": 1024 },
                                "Unit": { "enum": UNITS },
                                "StorageResolution": { "enum": [1, 60] }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// Every way `document` breaks the specification; empty when it is a valid EMF document.
pub fn problems(document: &Value) -> Vec<String> {
    let validator = match jsonschema::draft7::new(&schema()) {
        Ok(v) => v,
        Err(e) => return vec![format!("the EMF schema does not compile: {e}")],
    };
    let mut found: Vec<String> = validator
        .iter_errors(document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if !found.is_empty() {
        return found;
    }
    let Some(root) = document.as_object() else {
        return vec!["not an object".into()];
    };
    if let Some(ms) = document["_aws"]["Timestamp"].as_u64() {
        // Seconds or microseconds would be off by a factor of a thousand either way.
        const YEAR_2001_MS: u64 = 978_307_200_000;
        const YEAR_2100_MS: u64 = 4_102_444_800_000;
        if !(YEAR_2001_MS..YEAR_2100_MS).contains(&ms) {
            found.push(format!(
                "Timestamp {ms} is not milliseconds since the epoch"
            ));
        }
    }
    for directive in document["_aws"]["CloudWatchMetrics"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for set in directive["Dimensions"].as_array().into_iter().flatten() {
            for key in set
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                match root.get(key) {
                    Some(Value::String(v)) if !v.is_empty() && v.len() <= 1024 => {}
                    Some(Value::String(_)) => {
                        found.push(format!("dimension {key}: value empty or over 1024"))
                    }
                    Some(other) => found.push(format!("dimension {key} is not a string: {other}")),
                    None => found.push(format!("dimension {key} is not a top-level member")),
                }
            }
        }
        for metric in directive["Metrics"].as_array().into_iter().flatten() {
            let Some(name) = metric["Name"].as_str() else {
                continue;
            };
            match root.get(name) {
                Some(Value::Number(_)) => {}
                Some(Value::Array(values)) => {
                    if values.is_empty() || values.len() > MAX_VALUES_PER_METRIC {
                        found.push(format!("metric {name}: {} values", values.len()));
                    }
                    if !values.iter().all(Value::is_number) {
                        found.push(format!("metric {name}: a value is not a number"));
                    }
                }
                Some(other) => found.push(format!("metric {name} is not numeric: {other}")),
                None => found.push(format!("metric {name} is not a top-level member")),
            }
        }
    }
    found
}

/// One metric as CloudWatch would extract it: name, unit, namespace, one dimension set with
/// its values, and the values.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub namespace: String,
    pub name: String,
    pub unit: Option<String>,
    pub dimensions: BTreeMap<String, String>,
    pub values: Vec<f64>,
}

/// The EMF documents among `log`'s lines (JSON objects with an `_aws` member), each checked
/// with [`problems`]; panics naming the line and what is wrong with it.
pub fn documents(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(|v| v.get("_aws").is_some())
        .inspect(|doc| {
            let found = problems(doc);
            assert!(found.is_empty(), "invalid EMF document {doc}: {found:?}");
        })
        .collect()
}

/// Every metric the documents publish, once per dimension set.
pub fn extract(documents: &[Value]) -> Vec<Extracted> {
    let mut out = Vec::new();
    for doc in documents {
        let root: &Map<String, Value> = match doc.as_object() {
            Some(root) => root,
            None => continue,
        };
        for directive in doc["_aws"]["CloudWatchMetrics"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let namespace = directive["Namespace"].as_str().unwrap_or_default();
            for set in directive["Dimensions"].as_array().into_iter().flatten() {
                let dimensions: BTreeMap<String, String> = set
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|k| {
                        let v = root.get(k).and_then(Value::as_str).unwrap_or_default();
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                for metric in directive["Metrics"].as_array().into_iter().flatten() {
                    let name = metric["Name"].as_str().unwrap_or_default();
                    let values = match root.get(name) {
                        Some(Value::Array(a)) => a.iter().filter_map(Value::as_f64).collect(),
                        Some(v) => v.as_f64().into_iter().collect(),
                        None => Vec::new(),
                    };
                    out.push(Extracted {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        unit: metric["Unit"].as_str().map(str::to_owned),
                        dimensions: dimensions.clone(),
                        values,
                    });
                }
            }
        }
    }
    out
}

/// The sum of every value of `name` published with exactly `dimensions`.
pub fn total(metrics: &[Extracted], name: &str, dimensions: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = dimensions
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    metrics
        .iter()
        .filter(|m| m.name == name && m.dimensions == wanted)
        .flat_map(|m| m.values.iter())
        .sum()
}

/// The dimension-key sets `name` was published with.
pub fn dimension_sets(metrics: &[Extracted], name: &str) -> Vec<Vec<String>> {
    let mut sets: Vec<Vec<String>> = metrics
        .iter()
        .filter(|m| m.name == name)
        .map(|m| m.dimensions.keys().cloned().collect())
        .collect();
    sets.sort();
    sets.dedup();
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        json!({
            "_aws": {
                "Timestamp": 1_764_236_400_000_u64,
                "CloudWatchMetrics": [{
                    "Namespace": "ChargifyKeapSync",
                    "Dimensions": [["Function", "Event"]],
                    "Metrics": [{"Name": "WebhooksReceived", "Unit": "Count"}, {"Name": "Lag"}]
                }]
            },
            "Function": "ingest",
            "Event": "signup_success",
            "WebhooksReceived": 2,
            "Lag": [1.5, 20.0]
        })
    }

    #[test]
    fn a_document_by_the_spec_passes_and_is_extracted() {
        assert_eq!(problems(&valid()), Vec::<String>::new());
        let metrics = extract(&[valid()]);
        assert_eq!(
            total(
                &metrics,
                "WebhooksReceived",
                &[("Function", "ingest"), ("Event", "signup_success")]
            ),
            2.0
        );
        assert_eq!(
            total(&metrics, "WebhooksReceived", &[("Function", "ingest")]),
            0.0
        );
        assert_eq!(
            dimension_sets(&metrics, "Lag"),
            [vec!["Event".to_owned(), "Function".to_owned()]]
        );
    }

    #[test]
    fn each_rule_of_the_spec_is_enforced() {
        let broken = |f: &dyn Fn(&mut Value)| {
            let mut doc = valid();
            f(&mut doc);
            problems(&doc)
        };
        let cases: Vec<(&str, Vec<String>)> = vec![
            (
                "no _aws",
                broken(&|d| drop(d.as_object_mut().map(|o| o.remove("_aws")))),
            ),
            (
                "seconds",
                broken(&|d| d["_aws"]["Timestamp"] = json!(1_764_236_400)),
            ),
            (
                "float time",
                broken(&|d| d["_aws"]["Timestamp"] = json!(1.5)),
            ),
            (
                "dimension missing",
                broken(&|d| drop(d.as_object_mut().map(|o| o.remove("Event")))),
            ),
            ("dimension number", broken(&|d| d["Event"] = json!(3))),
            (
                "metric missing",
                broken(&|d| drop(d.as_object_mut().map(|o| o.remove("Lag")))),
            ),
            (
                "metric text",
                broken(&|d| d["WebhooksReceived"] = json!("2")),
            ),
            ("101 values", broken(&|d| d["Lag"] = json!(vec![1.0; 101]))),
            (
                "bad unit",
                broken(&|d| {
                    d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = json!("Counts")
                }),
            ),
            (
                "no namespace",
                broken(&|d| d["_aws"]["CloudWatchMetrics"][0]["Namespace"] = json!("")),
            ),
            (
                "flat dimensions",
                broken(&|d| d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] = json!(["Function"])),
            ),
            (
                "31 dimensions",
                broken(&|d| {
                    let keys: Vec<String> = (0..31).map(|i| format!("D{i}")).collect();
                    for k in &keys {
                        d[k.as_str()] = json!("x");
                    }
                    d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] = json!([keys]);
                }),
            ),
            (
                "101 metrics",
                broken(&|d| {
                    let names: Vec<Value> =
                        (0..101).map(|i| json!({"Name": format!("M{i}")})).collect();
                    for i in 0..101 {
                        d[format!("M{i}").as_str()] = json!(1);
                    }
                    d["_aws"]["CloudWatchMetrics"][0]["Metrics"] = Value::Array(names);
                }),
            ),
        ];
        for (case, found) in cases {
            assert!(!found.is_empty(), "{case}: accepted");
        }
    }
}

//! Chargify's `application/x-www-form-urlencoded` webhook body.
//!
//! Chargify flattens a nested hash into bracket keys (`payload[subscription][customer][id]=15`).
//! Public parsers get this wrong in ways that lose data (domain-notes §1.2, §1.11), so the rules
//! here are deliberate:
//! - split on `&`, then each pair on the **first** `=`, and only then decode: values may carry `%3D`;
//! - decode `+` as a space, then percent-decode; a bad `%` escape is kept literally (lenient, as
//!   browsers are), but bytes that do not decode to UTF-8 are an error, not silently replaced;
//! - `key=` is an empty value and stays distinct from a key that is absent;
//! - repeated keys are all kept, in order (un-indexed arrays such as
//!   `payload[subscription][product][public_signup_pages][id]`);
//! - indexed keys (`…[transactions][0][id]`) become arrays in [`FormBody::to_json`].

use serde_json::{Map, Value};
use std::ops::Range;

/// Why a body is not a form we can read. Each maps to HTTP 400 at the ingest edge.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    #[error("body is not UTF-8 text (byte {valid_up_to} is invalid); a form body is ASCII")]
    NotText { valid_up_to: usize },
    #[error("pair {index} decodes to bytes that are not UTF-8")]
    NotUtf8 { index: usize },
}

/// A decoded form body: every pair in arrival order.
///
/// All decoded text lives in one buffer and pairs are ranges into it: a 7 KB webhook has
/// ~150 pairs, and two allocations per pair were most of the parse time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FormBody {
    text: String,
    pairs: Vec<(Range<usize>, Range<usize>)>,
}

impl FormBody {
    /// Parses a raw body. Never panics, whatever the bytes (a proptest checks this).
    pub fn parse(raw: &[u8]) -> Result<Self, FormError> {
        let body = std::str::from_utf8(raw).map_err(|e| FormError::NotText {
            valid_up_to: e.valid_up_to(),
        })?;
        let mut text = String::with_capacity(raw.len());
        let mut pairs = Vec::with_capacity(raw.len() / 24);
        let mut scratch = Vec::new();
        for (index, segment) in body.split('&').enumerate() {
            if segment.is_empty() {
                // `a=1&&b=2` or a trailing `&`: nothing was sent here.
                continue;
            }
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            let key =
                decode_into(&mut text, &mut scratch, key).ok_or(FormError::NotUtf8 { index })?;
            let value =
                decode_into(&mut text, &mut scratch, value).ok_or(FormError::NotUtf8 { index })?;
            pairs.push((key, value));
        }
        Ok(Self { text, pairs })
    }

    /// All pairs, in the order they arrived.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs
            .iter()
            .map(|(k, v)| (&self.text[k.clone()], &self.text[v.clone()]))
    }

    /// The first value sent for `key`: `Some("")` for `key=`, `None` when the key is absent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Like [`get`](Self::get), but an empty value counts as absent: for ids, where
    /// `payload[subscription][customer][id]=` carries nothing usable.
    pub fn get_non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// Every value sent for `key`, in order (repeated un-indexed keys).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs().filter(move |(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The body as a nested JSON tree, for rules and templates: bracket keys become objects,
    /// repeated keys become arrays, objects whose keys are exactly `0..n` become arrays, and
    /// every leaf stays a string (Chargify sends no other type).
    ///
    /// When a key is used both as a leaf and as a parent (`a=1&a[b]=2`), the parent wins and
    /// the leaf value is kept under the key `""` so nothing is dropped.
    pub fn to_json(&self) -> Value {
        let mut root = Map::new();
        for (key, value) in self.pairs() {
            let path = key_path(key);
            insert(&mut root, &path, value.to_owned());
        }
        let mut root = Value::Object(root);
        indexed_objects_to_arrays(&mut root);
        root
    }
}

/// Appends the decoded form of one key or value to `text` and returns its range: `+` is a
/// space, `%XX` a byte, and a `%` not followed by two hex digits stays literal. `None` when the
/// decoded bytes are not UTF-8. Hand-written rather than `percent_encoding::percent_decode`,
/// whose byte-at-a-time iterator and per-call allocation made parsing 3× slower; the crate
/// still checks this decoder in the round-trip property test.
fn decode_into(text: &mut String, scratch: &mut Vec<u8>, raw: &str) -> Option<Range<usize>> {
    let start = text.len();
    let special = |b: &u8| matches!(b, b'%' | b'+');
    let Some(first) = raw.bytes().position(|b| special(&b)) else {
        // Common case: nothing to decode, and no second UTF-8 check needed.
        text.push_str(raw);
        return Some(start..text.len());
    };
    let raw = raw.as_bytes();
    let bytes = scratch;
    bytes.clear();
    bytes.extend_from_slice(&raw[..first]);
    let mut i = first;
    while i < raw.len() {
        match raw[i] {
            b'+' => {
                bytes.push(b' ');
                i += 1;
            }
            b'%' => match (
                raw.get(i + 1).and_then(hex_value),
                raw.get(i + 2).and_then(hex_value),
            ) {
                (Some(hi), Some(lo)) => {
                    bytes.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    bytes.push(b'%');
                    i += 1;
                }
            },
            _ => {
                // Copy the run up to the next escape in one go.
                let run = raw[i..].iter().position(special).unwrap_or(raw.len() - i);
                bytes.extend_from_slice(&raw[i..i + run]);
                i += run;
            }
        }
    }
    text.push_str(std::str::from_utf8(bytes).ok()?);
    Some(start..text.len())
}

fn hex_value(byte: &u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Splits `payload[a][b]` into `["payload", "a", "b"]`. A key that is not well formed
/// (unbalanced brackets, text after a `]`) is one literal segment: better an odd key than a
/// value filed under the wrong parent. A trailing `[]` (Rails' array marker) is dropped, so
/// its values collect like any repeated key.
fn key_path(key: &str) -> Vec<&str> {
    let Some(open) = key.find('[') else {
        return vec![key];
    };
    if open == 0 {
        return vec![key];
    }
    let mut path = vec![&key[..open]];
    let mut rest = &key[open..];
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return vec![key];
        };
        let Some(close) = inner.find(']') else {
            return vec![key];
        };
        let segment = &inner[..close];
        if segment.contains('[') {
            return vec![key];
        }
        path.push(segment);
        rest = &inner[close + 1..];
    }
    if path.len() > 1 && path.last() == Some(&"") {
        path.pop();
    }
    path
}

fn insert(node: &mut Map<String, Value>, path: &[&str], value: String) {
    let Some((head, tail)) = path.split_first() else {
        return;
    };
    if tail.is_empty() {
        match node.get_mut(*head) {
            None => {
                node.insert((*head).to_owned(), Value::String(value));
            }
            Some(Value::Array(values)) => values.push(Value::String(value)),
            Some(Value::Object(children)) => add_leaf_beside_children(children, value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::String(value)]);
            }
        }
        return;
    }
    let child = node
        .entry((*head).to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        // A leaf (or repeated leaf) already sits where a parent is needed: keep it under "".
        let leaf = child.take();
        let mut children = Map::new();
        children.insert(String::new(), leaf);
        *child = Value::Object(children);
    }
    if let Value::Object(children) = child {
        insert(children, tail, value);
    }
}

fn add_leaf_beside_children(children: &mut Map<String, Value>, value: String) {
    match children.get_mut("") {
        None => {
            children.insert(String::new(), Value::String(value));
        }
        Some(Value::Array(values)) => values.push(Value::String(value)),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, Value::String(value)]);
        }
    }
}

fn indexed_objects_to_arrays(value: &mut Value) {
    match value {
        Value::Object(children) => {
            for child in children.values_mut() {
                indexed_objects_to_arrays(child);
            }
            if let Some(array) = as_indexed_array(children) {
                *value = Value::Array(array);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(indexed_objects_to_arrays),
        _ => {}
    }
}

/// `{"0": a, "1": b}` → `[a, b]`; anything else (gaps, `"01"`, other keys) stays an object.
fn as_indexed_array(children: &mut Map<String, Value>) -> Option<Vec<Value>> {
    if children.is_empty() {
        return None;
    }
    let n = children.len();
    let all_indices = (0..n).all(|i| children.contains_key(i.to_string().as_str()));
    if !all_indices {
        return None;
    }
    Some(
        (0..n)
            .filter_map(|i| children.remove(i.to_string().as_str()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_on_the_first_equals_before_decoding() {
        let form = FormBody::parse(b"a=b%3Dc=d&x%3Dy=1").expect("parses");
        assert_eq!(form.get("a"), Some("b=c=d"));
        assert_eq!(form.get("x=y"), Some("1"));
    }

    #[test]
    fn keeps_brackets_literal_and_decodes_values() {
        let form = FormBody::parse(
            b"payload[subscription][customer][email]=john%40example.com&payload[c][org]=Acme%2C%20Inc.",
        )
        .expect("parses");
        assert_eq!(
            form.get("payload[subscription][customer][email]"),
            Some("john@example.com")
        );
        assert_eq!(form.get("payload[c][org]"), Some("Acme, Inc."));
    }

    #[test]
    fn plus_is_a_space_and_encoded_plus_is_a_plus() {
        let form = FormBody::parse(b"n=John+Doe&e=a%2Bb%40example.com").expect("parses");
        assert_eq!(form.get("n"), Some("John Doe"));
        assert_eq!(form.get("e"), Some("a+b@example.com"));
    }

    #[test]
    fn empty_values_are_not_absent_keys() {
        let form = FormBody::parse(b"payload[subscription][canceled_at]=&flag").expect("parses");
        assert_eq!(form.get("payload[subscription][canceled_at]"), Some(""));
        assert_eq!(form.get("flag"), Some(""));
        assert_eq!(form.get("payload[subscription][expires_at]"), None);
        assert_eq!(
            form.get_non_empty("payload[subscription][canceled_at]"),
            None
        );
    }

    #[test]
    fn repeated_keys_are_all_kept_in_order() {
        let form =
            FormBody::parse(b"p[pages][id]=1&p[pages][id]=2&p[pages][id]=3").expect("parses");
        assert_eq!(
            form.get_all("p[pages][id]").collect::<Vec<_>>(),
            ["1", "2", "3"]
        );
        assert_eq!(form.get("p[pages][id]"), Some("1"));
        assert_eq!(
            form.to_json(),
            json!({"p": {"pages": {"id": ["1", "2", "3"]}}})
        );
    }

    #[test]
    fn indexed_keys_become_arrays() {
        let form = FormBody::parse(
            b"payload[statement][transactions][0][id]=7&payload[statement][transactions][1][id]=8\
              &payload[statement][transactions][0][kind]=charge",
        )
        .expect("parses");
        assert_eq!(
            form.to_json(),
            json!({"payload": {"statement": {"transactions": [
                {"id": "7", "kind": "charge"}, {"id": "8"}
            ]}}})
        );
    }

    #[test]
    fn sparse_indices_stay_an_object() {
        let form = FormBody::parse(b"a[0]=x&a[2]=y").expect("parses");
        assert_eq!(form.to_json(), json!({"a": {"0": "x", "2": "y"}}));
    }

    #[test]
    fn a_leaf_and_a_parent_at_one_key_lose_nothing() {
        let form = FormBody::parse(b"a=1&a[b]=2&a=3").expect("parses");
        assert_eq!(form.to_json(), json!({"a": {"": ["1", "3"], "b": "2"}}));
    }

    #[test]
    fn malformed_bracket_keys_are_literal() {
        for key in ["a[b", "a]b", "[a]", "a[b]c", "a[b[c]]"] {
            let body = format!("{key}=v");
            let form = FormBody::parse(body.as_bytes()).expect("parses");
            assert_eq!(form.to_json(), json!({ key: "v" }), "key {key}");
        }
    }

    #[test]
    fn bad_percent_escapes_are_kept_literally() {
        let form = FormBody::parse(b"a=100%&b=%zz&c=%4").expect("parses");
        assert_eq!(form.get("a"), Some("100%"));
        assert_eq!(form.get("b"), Some("%zz"));
        assert_eq!(form.get("c"), Some("%4"));
    }

    #[test]
    fn invalid_utf8_is_an_error_not_a_replacement() {
        assert_eq!(
            FormBody::parse(b"a=\xff"),
            Err(FormError::NotText { valid_up_to: 2 })
        );
        assert_eq!(
            FormBody::parse(b"ok=1&a=%FF"),
            Err(FormError::NotUtf8 { index: 1 })
        );
    }

    #[test]
    fn multibyte_text_survives() {
        let form = FormBody::parse("n=Jos%C3%A9&m=café".as_bytes()).expect("parses");
        assert_eq!(form.get("n"), Some("José"));
        assert_eq!(form.get("m"), Some("café"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(form) = FormBody::parse(&raw) {
                let _ = form.to_json();
            }
        }

        #[test]
        fn never_panics_on_form_like_text(raw in "[a-z\\[\\]=&%+0-9A-F]{0,200}") {
            if let Ok(form) = FormBody::parse(raw.as_bytes()) {
                let _ = form.to_json();
            }
        }

        #[test]
        fn decodes_like_the_percent_encoding_crate(raw in "[a-zA-Z0-9%+ .]{0,60}") {
            let expected = percent_encoding::percent_decode(raw.replace('+', " ").as_bytes())
                .decode_utf8()
                .map(|v| v.into_owned());
            let body = format!("k={raw}");
            let ours = FormBody::parse(body.as_bytes()).map(|f| f.get("k").map(str::to_owned));
            match expected {
                Ok(value) => proptest::prop_assert_eq!(ours, Ok(Some(value))),
                Err(_) => proptest::prop_assert!(ours.is_err()),
            }
        }

        #[test]
        fn encoded_values_round_trip(value in "\\PC{0,40}") {
            let encoded: String = percent_encoding::utf8_percent_encode(&value, percent_encoding::NON_ALPHANUMERIC).collect();
            let body = format!("k={encoded}");
            let form = FormBody::parse(body.as_bytes()).expect("encoded text parses");
            proptest::prop_assert_eq!(form.get("k"), Some(value.as_str()));
        }
    }
}

//! Chargify's `application/x-www-form-urlencoded` webhook body.
//!
//! Chargify flattens a nested hash into bracket keys (`payload[subscription][customer][id]=15`).
//! Public form parsers get this wrong in ways that lose data (splitting on every `=`, decoding
//! before splitting, keeping only the last of a repeated key), so the rules here are
//! deliberate:
//! - split on `&`, then each pair on the **first** `=`, and only then decode: values may carry `%3D`;
//! - decode `+` as a space, then percent-decode; a bad `%` escape is kept literally (lenient, as
//!   browsers are), but bytes that do not decode to UTF-8 are an error, not silently replaced;
//! - `key=` is an empty value and stays distinct from a key that is absent;
//! - repeated keys are all kept, in order (un-indexed arrays such as
//!   `payload[subscription][product][public_signup_pages][id]`);
//! - indexed keys (`…[transactions][0][id]`) become arrays in [`FormBody::to_json`].
//!
//! A body's shape is bounded before anything walks it as a tree: [`FormBody::check_limits`]
//! refuses more than [`MAX_FORM_FIELDS`] pairs or a key nested more than [`MAX_FORM_DEPTH`]
//! brackets deep, and [`FormBody::to_json`] never builds a tree deeper than that, whatever
//! it is given. Building, walking and dropping a `serde_json::Value` all recurse once per
//! level, so a signed body of 5,000 nested brackets (15 KB) would otherwise overflow the
//! stack and abort the process.

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

/// Deepest bracket nesting of a key (`payload[subscription][customer][id]` is 3). Chargify's
/// reference bodies (shared/fixtures/chargify) nest at most 4 deep
/// (`payload[subscription][product][product_family][id]`); 32 leaves room for any payload
/// Chargify may add while keeping every walk of the tree a few dozen frames deep.
pub const MAX_FORM_DEPTH: usize = 32;

/// Most pairs in one body. The largest reference body (`payment_success`, 7.7 KB) has 144;
/// ten thousand is far above any webhook and still a cheap tree.
pub const MAX_FORM_FIELDS: usize = 10_000;

/// Bounds on a body's shape ([`FormBody::check_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormLimits {
    /// Deepest bracket nesting accepted.
    pub max_depth: usize,
    /// Most pairs accepted.
    pub max_fields: usize,
}

impl FormLimits {
    /// [`MAX_FORM_DEPTH`] and [`MAX_FORM_FIELDS`]: what ingest and the processor enforce.
    pub const WEBHOOK: Self = Self {
        max_depth: MAX_FORM_DEPTH,
        max_fields: MAX_FORM_FIELDS,
    };
}

impl Default for FormLimits {
    fn default() -> Self {
        Self::WEBHOOK
    }
}

/// Why a body's shape is refused. No Chargify webhook comes near either limit, so such a body
/// is malformed or hostile: ingest answers 400, and a record on the queue that carries one
/// belongs in the dead-letter queue (retrying cannot change it).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FormLimitError {
    #[error("field {index} is nested {depth} brackets deep, above the limit of {limit}; no Chargify webhook nests that deep, so the body is refused")]
    TooDeep {
        index: usize,
        depth: usize,
        limit: usize,
    },
    #[error("body has {fields} fields, above the limit of {limit}; no Chargify webhook has that many, so the body is refused")]
    TooManyFields { fields: usize, limit: usize },
}

impl FormLimitError {
    /// Stable name for logs, metrics (ingest's `IngestRefused` reason) and dead letters.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooDeep { .. } => "body_too_deep",
            Self::TooManyFields { .. } => "body_too_many_fields",
        }
    }
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

    /// Number of pairs (repeated keys count each time).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Whether the body's shape is within `limits`: at most `max_fields` pairs, no key nested
    /// deeper than `max_depth`. One pass over the keys, no tree built: call it before
    /// anything else reads the body.
    pub fn check_limits(&self, limits: FormLimits) -> Result<(), FormLimitError> {
        if self.pairs.len() > limits.max_fields {
            return Err(FormLimitError::TooManyFields {
                fields: self.pairs.len(),
                limit: limits.max_fields,
            });
        }
        for (index, (key, _)) in self.pairs().enumerate() {
            let depth = key_depth(key);
            if depth > limits.max_depth {
                return Err(FormLimitError::TooDeep {
                    index,
                    depth,
                    limit: limits.max_depth,
                });
            }
        }
        Ok(())
    }

    /// The body as a nested JSON tree, for rules and templates: bracket keys become objects,
    /// repeated keys become arrays, objects whose keys are exactly `0..n` become arrays, and
    /// every leaf stays a string (Chargify sends no other type).
    ///
    /// When a key is used both as a leaf and as a parent (`a=1&a[b]=2`), the parent wins and
    /// the leaf value is kept under the key `""` so nothing is dropped.
    ///
    /// Safe on any body, whatever [`Self::check_limits`] would say: a key nested deeper than
    /// [`MAX_FORM_DEPTH`] is kept whole as one top-level key (like a malformed key), so the
    /// tree is never deeper than `MAX_FORM_DEPTH + 1` and its size grows with the body's
    /// length. Callers still refuse such bodies with `check_limits`; this only guarantees
    /// that one which slipped through cannot crash the process.
    pub fn to_json(&self) -> Value {
        let mut root = Map::new();
        for (key, value) in self.pairs() {
            let path = if key_depth(key) > MAX_FORM_DEPTH {
                vec![key]
            } else {
                key_path(key)
            };
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
    let mut path = Vec::new();
    if !bracket_segments(key, |segment| path.push(segment)) {
        return vec![key];
    }
    if path.len() > 1 && path.last() == Some(&"") {
        path.pop();
    }
    path
}

/// Brackets below the top-level name of `key` as [`key_path`] splits it (`a[b][c]` is 2, a
/// malformed key 0), counted without allocating.
fn key_depth(key: &str) -> usize {
    let (mut segments, mut last_empty) = (0usize, false);
    if !bracket_segments(key, |segment| {
        segments += 1;
        last_empty = segment.is_empty();
    }) {
        return 0;
    }
    if segments > 1 && last_empty {
        segments -= 1;
    }
    segments.saturating_sub(1)
}

/// Calls `each` with the name and then every bracket segment of `key`, in order; `false`
/// (after any number of calls) when the key is not well formed. A key without brackets is
/// one segment.
fn bracket_segments<'a>(key: &'a str, mut each: impl FnMut(&'a str)) -> bool {
    let Some(open) = key.find('[') else {
        each(key);
        return true;
    };
    if open == 0 {
        return false;
    }
    each(&key[..open]);
    let mut rest = &key[open..];
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return false;
        };
        let Some(close) = inner.find(']') else {
            return false;
        };
        let segment = &inner[..close];
        if segment.contains('[') {
            return false;
        }
        each(segment);
        rest = &inner[close + 1..];
    }
    true
}

/// Files `value` at `path` under `root`, walking down in a loop (no recursion).
fn insert(root: &mut Map<String, Value>, path: &[&str], value: String) {
    let Some((leaf, parents)) = path.split_last() else {
        return;
    };
    let mut node = root;
    for head in parents {
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
        let Value::Object(children) = child else {
            return;
        };
        node = children;
    }
    match node.get_mut(*leaf) {
        None => {
            node.insert((*leaf).to_owned(), Value::String(value));
        }
        Some(Value::Array(values)) => values.push(Value::String(value)),
        Some(Value::Object(children)) => add_leaf_beside_children(children, value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, Value::String(value)]);
        }
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

/// Turns every object keyed exactly `0..n` into an array, children first. Recursive, one
/// frame per level: [`FormBody::to_json`] builds no tree deeper than `MAX_FORM_DEPTH + 1`,
/// and arrays there hold only strings.
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

    /// Levels of the tree (a leaf is 1), and its nodes, counted with a stack of our own: the
    /// measuring must not recurse either.
    fn depth_and_nodes(value: &Value) -> (usize, usize) {
        let (mut deepest, mut nodes) = (0, 0);
        let mut stack = vec![(value, 1)];
        while let Some((node, depth)) = stack.pop() {
            nodes += 1;
            deepest = deepest.max(depth);
            match node {
                Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
                Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
                _ => {}
            }
        }
        (deepest, nodes)
    }

    /// `payload[a][a]…=v` with `levels` brackets, beside a webhook's id and event.
    fn nested(levels: usize) -> String {
        format!(
            "id=1&event=signup_success&payload{}=v",
            "[a]".repeat(levels)
        )
    }

    /// What any body's tree must satisfy: no deeper than the limit allows, and no more nodes
    /// than its keys have segments (plus the root and one array per repeated key).
    fn assert_bounded(form: &FormBody) -> Result<(), proptest::test_runner::TestCaseError> {
        let json = form.to_json();
        let (depth, nodes) = depth_and_nodes(&json);
        proptest::prop_assert!(depth <= MAX_FORM_DEPTH + 2, "depth {depth}");
        let segments: usize = form.pairs().map(|(k, _)| key_path(k).len()).sum();
        proptest::prop_assert!(
            nodes <= 1 + 2 * segments + form.len(),
            "{nodes} nodes from {segments} segments"
        );
        Ok(())
    }

    #[test]
    fn the_reference_bodies_are_far_inside_the_limits() {
        let mut deepest = ("", 0);
        let mut largest = ("", 0);
        for (name, body) in crate::fixtures::ALL {
            let form = FormBody::parse(body.as_bytes()).expect("parses");
            assert_eq!(form.check_limits(FormLimits::WEBHOOK), Ok(()), "{name}");
            let depth = form.pairs().map(|(k, _)| key_depth(k)).max().unwrap_or(0);
            if depth > deepest.1 {
                deepest = (name, depth);
            }
            if form.len() > largest.1 {
                largest = (name, form.len());
            }
        }
        println!(
            "reference bodies: deepest {} ({} brackets), largest {} ({} fields); limits {MAX_FORM_DEPTH} and {MAX_FORM_FIELDS}",
            deepest.0, deepest.1, largest.0, largest.1
        );
        // The figures MAX_FORM_DEPTH's and MAX_FORM_FIELDS's docs quote.
        assert_eq!(deepest.1, 4);
        assert_eq!(largest, ("payment_success", 144));
    }

    #[test]
    fn the_limits_are_inclusive_and_say_which_was_passed() {
        let at = FormBody::parse(nested(MAX_FORM_DEPTH).as_bytes()).expect("parses");
        assert_eq!(at.check_limits(FormLimits::WEBHOOK), Ok(()));
        let over = FormBody::parse(nested(MAX_FORM_DEPTH + 1).as_bytes()).expect("parses");
        let err = over
            .check_limits(FormLimits::WEBHOOK)
            .expect_err("too deep");
        assert_eq!(
            err,
            FormLimitError::TooDeep {
                index: 2,
                depth: MAX_FORM_DEPTH + 1,
                limit: MAX_FORM_DEPTH
            }
        );
        assert_eq!(err.code(), "body_too_deep");
        // A trailing `[]` and a malformed key add no level, as to_json files them.
        let marker = format!(
            "a{}[]=1&{}=2",
            "[b]".repeat(MAX_FORM_DEPTH),
            "[x]".repeat(50)
        );
        let form = FormBody::parse(marker.as_bytes()).expect("parses");
        assert_eq!(form.check_limits(FormLimits::WEBHOOK), Ok(()));

        let fields = |n: usize| "f=1&".repeat(n);
        let full = FormBody::parse(fields(MAX_FORM_FIELDS).as_bytes()).expect("parses");
        assert_eq!(full.check_limits(FormLimits::WEBHOOK), Ok(()));
        let err = FormBody::parse(fields(MAX_FORM_FIELDS + 1).as_bytes())
            .expect("parses")
            .check_limits(FormLimits::WEBHOOK)
            .expect_err("too many");
        assert_eq!(
            err,
            FormLimitError::TooManyFields {
                fields: MAX_FORM_FIELDS + 1,
                limit: MAX_FORM_FIELDS
            }
        );
        assert_eq!(err.code(), "body_too_many_fields");
    }

    #[test]
    fn deeply_nested_bodies_are_refused_and_to_json_stays_shallow() {
        for levels in [5_000, 20_000] {
            let body = nested(levels);
            let form = FormBody::parse(body.as_bytes()).expect("parses");
            assert!(matches!(
                form.check_limits(FormLimits::WEBHOOK),
                Err(FormLimitError::TooDeep { depth, .. }) if depth == levels
            ));
            let json = form.to_json();
            let (depth, _) = depth_and_nodes(&json);
            assert!(depth <= MAX_FORM_DEPTH + 2, "{levels}: depth {depth}");
            // The deep key is kept whole, not lost.
            let key = format!("payload{}", "[a]".repeat(levels));
            assert_eq!(json[key.as_str()], "v");
            // The rules' template context is built from this tree, and dropping it walks it
            // too: neither may overflow.
            let webhook = crate::chargify::Webhook::from_form(form).expect("a webhook");
            let context = crate::rules::template::context_json(&webhook, "acme");
            assert_eq!(context["event"], "signup_success");
            drop(json);
        }
    }

    #[test]
    fn a_hundred_thousand_fields_are_refused_and_to_json_copes() {
        let body = format!("id=1&event=signup_success{}", "&a".repeat(100_000));
        let form = FormBody::parse(body.as_bytes()).expect("parses");
        assert_eq!(
            form.check_limits(FormLimits::WEBHOOK),
            Err(FormLimitError::TooManyFields {
                fields: 100_002,
                limit: MAX_FORM_FIELDS
            })
        );
        let json = form.to_json();
        assert_eq!(json["a"].as_array().map(Vec::len), Some(100_000));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(form) = FormBody::parse(&raw) {
                let _ = form.check_limits(FormLimits::WEBHOOK);
                assert_bounded(&form)?;
            }
        }

        #[test]
        fn never_panics_on_form_like_text(raw in "[a-z\\[\\]=&%+0-9A-F]{0,200}") {
            if let Ok(form) = FormBody::parse(raw.as_bytes()) {
                let _ = form.check_limits(FormLimits::WEBHOOK);
                assert_bounded(&form)?;
            }
        }

        #[test]
        fn nesting_of_any_depth_is_judged_and_bounded(
            levels in 0usize..3_000,
            segment in "[a-z0-9]{0,3}",
            others in proptest::collection::vec("[a-c]{1,2}(\\[[a-c0-2]{0,2}\\]){0,4}", 0..20),
        ) {
            let mut body = format!("p{}=v", format!("[{segment}]").repeat(levels));
            for key in &others {
                body.push_str(&format!("&{key}=x"));
            }
            let form = FormBody::parse(body.as_bytes()).expect("ASCII parses");
            // `[]` last is Rails' array marker, not a level.
            let depth = if segment.is_empty() && levels > 0 { levels - 1 } else { levels };
            let refused = matches!(
                form.check_limits(FormLimits::WEBHOOK),
                Err(FormLimitError::TooDeep { .. })
            );
            proptest::prop_assert_eq!(refused, depth > MAX_FORM_DEPTH);
            assert_bounded(&form)?;
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(16))]

        #[test]
        fn field_counts_of_any_size_are_judged_and_bounded(
            fields in 0usize..30_000,
            keys in proptest::collection::vec("[a-c](\\[[0-2]\\]){0,2}", 1..8),
        ) {
            let body: Vec<String> = (0..fields).map(|i| format!("{}={i}", keys[i % keys.len()])).collect();
            let form = FormBody::parse(body.join("&").as_bytes()).expect("ASCII parses");
            proptest::prop_assert_eq!(form.len(), fields);
            let refused = matches!(
                form.check_limits(FormLimits::WEBHOOK),
                Err(FormLimitError::TooManyFields { .. })
            );
            proptest::prop_assert_eq!(refused, fields > MAX_FORM_FIELDS);
            assert_bounded(&form)?;
        }
    }

    proptest::proptest! {

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

//! Personal data out of log lines: text from outside (Keap's and Chargify's error messages,
//! serde's messages about their JSON) can quote an email address, a name or an address.

/// `text` with every email address replaced by `<email>`, for log lines that carry text from
/// outside (a Keap error message may quote the address it refused). Personal data stays out
/// of CloudWatch; the dead-letter queue keeps the full reason for the operator.
pub fn redact_emails(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let looks_like_email = word
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
        if looks_like_email {
            out.push_str("<email>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_word_boundary(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Whether `c` ends a word that may be an email address: whitespace, quotes, brackets and
/// list punctuation (`a@x.com, b@y.com`, `<a@x.com>`, `"a@x.com"`).
pub fn is_word_boundary(c: char) -> bool {
    c.is_whitespace() || "\"'<>()[]{},;:".contains(c)
}

/// A serde_json error about JSON from outside, without the values it quotes. serde's
/// messages name the offending value (`invalid type: string "Jane Doe", expected i64`), and a
/// Chargify or Keap answer that does not fit is often a customer's record; the kind of error,
/// the field names and the position stay, which is what a fix needs.
pub fn redact_serde_error(error: &serde_json::Error) -> String {
    redact_emails(&redact_quoted_values(&error.to_string()))
}

/// Every `"…"` string replaced by `"<redacted>"`, and the backquoted value after `integer`,
/// `floating point`, `character` or `variant` by `<redacted>` (field names, which serde also
/// backquotes, are the schema's and stay).
fn redact_quoted_values(message: &str) -> String {
    const VALUE_WORDS: &[&str] = &["integer ", "point ", "character ", "variant "];
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // A JSON-style string literal: skip to its closing quote, past escapes.
                let mut escaped = false;
                for inner in chars.by_ref() {
                    match (escaped, inner) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"<redacted>\"");
            }
            '`' if VALUE_WORDS.iter().any(|w| out.ends_with(w)) => {
                for inner in chars.by_ref() {
                    if inner == '`' {
                        break;
                    }
                }
                out.push_str("`<redacted>`");
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses_are_replaced_and_the_rest_kept() {
        assert_eq!(
            redact_emails("Keap refused \"john.doe@example.com\" (Invalid email)"),
            "Keap refused \"<email>\" (Invalid email)"
        );
        assert_eq!(redact_emails("a@b.co, c@d.org"), "<email>, <email>");
        assert_eq!(redact_emails("no address @ here"), "no address @ here");
    }

    #[test]
    fn serde_errors_keep_their_kind_and_fields_but_not_the_values() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Customer {
            id: i64,
            state: State,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum State {
            Active,
        }
        let error = |json: &str| {
            let e = serde_json::from_str::<Customer>(json).expect_err("does not fit");
            (e.to_string(), redact_serde_error(&e))
        };
        let (raw, redacted) =
            error(r#"{"id": "Jane \"JD\" Doe <jane@example.com>", "state": "active"}"#);
        assert!(raw.contains("Jane"), "{raw}");
        assert_eq!(
            redacted,
            "invalid type: string \"<redacted>\", expected i64 at line 1 column 43"
        );
        let (_, redacted) = error(r#"{"id": 5, "state": "jane.doe@example.com"}"#);
        assert!(
            redacted.starts_with("unknown variant `<redacted>`, expected `active`"),
            "{redacted}"
        );
        assert!(!redacted.contains("jane"), "{redacted}");
        let (_, redacted) = error(r#"{"state": "active"}"#);
        assert_eq!(redacted, "missing field `id` at line 1 column 19");
        let (_, redacted) = error(r#"{"id": 5.5, "state": "active"}"#);
        assert!(
            redacted.contains("floating point `<redacted>`"),
            "{redacted}"
        );
    }
}

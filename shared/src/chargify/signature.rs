//! Chargify webhook signatures: `hex(HMAC-SHA256(site shared key, raw body))`.
//!
//! Several keys can be live at once: during a rotation both the old and the new Site Shared
//! Key must verify, and one deployment can serve several Chargify sites, each with its own
//! keys. Nothing in the body is trusted before a key verifies; once one has, a key bound to a
//! site must agree with the site the body names (see [`Verified::site_conflict`]).
//!
//! The cost of a request is bounded by the keys, not by what the request sends: each key's
//! HMAC over the body is computed once and compared with every candidate signature, so an
//! unauthenticated request costs at most one HMAC per configured key, however many
//! signatures it carries.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Header Chargify signs with. Lambda events deliver header names lower-cased; `http`'s
/// `HeaderMap` looks names up case-insensitively either way.
pub const SIGNATURE_HEADER: &str = "x-chargify-webhook-signature-hmac-sha-256";
/// Query parameter for Chargify's `{signature_hmac_sha_256}` URL replacement variable.
pub const SIGNATURE_QUERY_PARAM: &str = "signature_hmac_sha_256";

/// One configured shared key, keyed once so each request only clones the HMAC state.
#[derive(Clone)]
pub struct SharedKey {
    /// `None`: valid for any site. `Some(subdomain)`: only for that Chargify site.
    site: Option<String>,
    /// Position among the keys of the same scope, for the `label`.
    index: usize,
    fingerprint: String,
    mac: HmacSha256,
}

impl SharedKey {
    fn new(site: Option<String>, index: usize, secret: &str) -> Result<Self, KeySetError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(KeySetError::EmptyKey {
                scope: site.clone().unwrap_or_else(|| "*".into()),
            });
        }
        // Any key length is valid for HMAC; the error branch cannot happen but is mapped
        // rather than unwrapped.
        let mac =
            HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| KeySetError::EmptyKey {
                scope: site.clone().unwrap_or_else(|| "*".into()),
            })?;
        // A short SHA-256 prefix tells an operator which key is in use during a rotation
        // without revealing anything usable about the key itself.
        let fingerprint = hex::encode(&Sha256::digest(secret.as_bytes())[..4]);
        Ok(Self {
            site,
            index,
            fingerprint,
            mac,
        })
    }

    /// `acme#1` (second key of site `acme`) or `*#0` (first key valid for any site).
    pub fn label(&self) -> String {
        format!("{}#{}", self.site.as_deref().unwrap_or("*"), self.index)
    }

    pub fn site(&self) -> Option<&str> {
        self.site.as_deref()
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// HMAC-SHA256 of `body` under this key: the one pass over the body a key costs.
    fn tag(&self, body: &[u8]) -> Tag {
        let mut mac = self.mac.clone();
        mac.update(body);
        Tag(mac.finalize())
    }
}

impl fmt::Debug for SharedKey {
    // Never print key material, not even in a debug dump.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKey")
            .field("label", &self.label())
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// A key's HMAC of one body, compared with candidate signatures in constant time.
struct Tag(hmac::digest::CtOutput<HmacSha256>);

impl Tag {
    fn matches(&self, signature: &[u8]) -> bool {
        // Decoded candidates are 32 bytes (see `decode_signature`); any other length is no
        // match. CtOutput's equality is constant-time.
        hmac::digest::Output::<HmacSha256>::try_from(signature)
            .is_ok_and(|candidate| self.0 == hmac::digest::CtOutput::new(candidate))
    }
}

/// The keys that may sign a webhook.
#[derive(Clone, Debug)]
pub struct SharedKeySet {
    keys: Vec<SharedKey>,
}

/// A configuration of shared keys that cannot be used. Raised at cold start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeySetError {
    #[error("no Chargify shared key is configured; set CHARGIFY_SHARED_KEYS or CHARGIFY_SHARED_KEYS_SECRET_ARN")]
    NoKeys,
    #[error(
        "an empty shared key was configured for site scope `{scope}`; remove it or fill it in"
    )]
    EmptyKey { scope: String },
    #[error("site `{site}` in the key configuration is not a valid Chargify subdomain")]
    BadSite { site: String },
    #[error("the key configuration starts with `{{` but is not valid JSON ({reason}); expected {{\"keys\":[…],\"sites\":{{\"subdomain\":[…]}}}}")]
    BadJson { reason: String },
    #[error("entry {position} of the comma-separated key list contains `=` but is not `subdomain=key` (one `=`, a lower-case Chargify subdomain before it, a key after it); a key that itself contains `=` must be given in the JSON form {{\"keys\":[\"…\"]}}")]
    AmbiguousEquals { position: usize },
}

/// One entry of the comma-separated form: `key` (any site) or `subdomain=key`. An entry with
/// `=` that is not exactly that is refused: a key containing `=` (base64 padding, say) would
/// otherwise be split into a site and a key, or silently bound to a "site" that is the key's
/// first half. `position` counts entries from 1, for the error.
fn site_and_key(position: usize, entry: &str) -> Result<(Option<String>, String), KeySetError> {
    let Some((site, key)) = entry.split_once('=') else {
        return Ok((None, entry.to_owned()));
    };
    let site = site.trim();
    if key.contains('=') || key.trim().is_empty() || !is_valid_subdomain(site) {
        return Err(KeySetError::AmbiguousEquals {
            position: position + 1,
        });
    }
    Ok((Some(site.to_owned()), key.to_owned()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDocument {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    sites: std::collections::BTreeMap<String, Vec<String>>,
}

impl SharedKeySet {
    /// Parses a key specification, from `CHARGIFY_SHARED_KEYS` or a Secrets Manager secret:
    /// - a comma-separated list; each entry is `key` (any site) or `subdomain=key`;
    /// - or JSON: `{"keys": ["k1", "k2"], "sites": {"acme": ["k3"]}}`.
    pub fn parse(spec: &str) -> Result<Self, KeySetError> {
        let spec = spec.trim();
        let mut entries: Vec<(Option<String>, String)> = Vec::new();
        if spec.starts_with('{') {
            let doc: KeyDocument =
                serde_json::from_str(spec).map_err(|e| KeySetError::BadJson {
                    // serde's message can quote the offending value, which may be a key:
                    // report only what kind of error and where.
                    reason: format!(
                        "{:?} error at line {} column {}",
                        e.classify(),
                        e.line(),
                        e.column()
                    ),
                })?;
            entries.extend(doc.keys.into_iter().map(|k| (None, k)));
            for (site, keys) in doc.sites {
                entries.extend(keys.into_iter().map(|k| (Some(site.clone()), k)));
            }
        } else {
            for (position, entry) in spec.split(',').filter(|e| !e.trim().is_empty()).enumerate() {
                entries.push(site_and_key(position, entry)?);
            }
        }
        Self::from_entries(entries)
    }

    fn from_entries(entries: Vec<(Option<String>, String)>) -> Result<Self, KeySetError> {
        let mut keys: Vec<SharedKey> = Vec::with_capacity(entries.len());
        for (site, secret) in entries {
            if let Some(site) = &site {
                if !is_valid_subdomain(site) {
                    return Err(KeySetError::BadSite { site: site.clone() });
                }
            }
            let index = keys.iter().filter(|k| k.site == site).count();
            keys.push(SharedKey::new(site, index, &secret)?);
        }
        if keys.is_empty() {
            return Err(KeySetError::NoKeys);
        }
        Ok(Self { keys })
    }

    pub fn keys(&self) -> &[SharedKey] {
        &self.keys
    }

    /// Tries every candidate signature against every key, computing each key's HMAC of the
    /// body once. `site_hint` (the subdomain the still-untrusted body claims) only orders the
    /// search; it grants nothing.
    pub fn verify<'a>(
        &'a self,
        body: &[u8],
        candidates: &[SignatureCandidate<'_>],
        site_hint: Option<&str>,
    ) -> Result<Verified<'a>, SignatureError> {
        self.verify_with(candidates, site_hint, |key| key.tag(body))
    }

    /// [`Self::verify`] with the HMAC computation passed in, so a test can count it.
    fn verify_with<'a>(
        &'a self,
        candidates: &[SignatureCandidate<'_>],
        site_hint: Option<&str>,
        mut tag_of: impl FnMut(&SharedKey) -> Tag,
    ) -> Result<Verified<'a>, SignatureError> {
        if candidates.is_empty() {
            return Err(SignatureError::Missing);
        }
        let decoded: Vec<(SignatureSource, Vec<u8>)> = candidates
            .iter()
            .filter_map(|c| decode_signature(c.value).map(|bytes| (c.source, bytes)))
            .collect();
        if decoded.is_empty() {
            return Err(SignatureError::Malformed);
        }
        let hinted = self
            .keys
            .iter()
            .filter(|k| k.site.is_some() && k.site.as_deref() == site_hint);
        let others = self
            .keys
            .iter()
            .filter(|k| !(k.site.is_some() && k.site.as_deref() == site_hint));
        for key in hinted.chain(others) {
            let tag = tag_of(key);
            for (source, signature) in &decoded {
                if tag.matches(signature) {
                    return Ok(Verified {
                        key,
                        source: *source,
                    });
                }
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// Where a signature was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureSource {
    Header,
    QueryParameter,
    /// Not a signature: a snapshot the processor's own side fetched from Chargify's API with
    /// the API key (see `chargify::snapshot`). Ingest never produces it.
    ChargifyApi,
}

/// A signature presented by the request, not yet checked.
#[derive(Clone, Copy, Debug)]
pub struct SignatureCandidate<'a> {
    pub source: SignatureSource,
    pub value: &'a str,
}

/// The key that verified a body.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a> {
    pub key: &'a SharedKey,
    pub source: SignatureSource,
}

impl Verified<'_> {
    /// A key bound to site `a` verified a body that says it comes from site `b`: whoever
    /// holds site `a`'s key is speaking for site `b`. Returns the two sites when so.
    pub fn site_conflict<'b>(&'b self, body_site: Option<&'b str>) -> Option<(&'b str, &'b str)> {
        match (self.key.site(), body_site) {
            (Some(bound), Some(claimed)) if bound != claimed => Some((bound, claimed)),
            _ => None,
        }
    }
}

/// Why a request's signature was refused. All map to HTTP 401.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("no signature: send header X-Chargify-Webhook-Signature-Hmac-Sha-256 or query parameter signature_hmac_sha_256")]
    Missing,
    #[error("signature is not a 64-character hex HMAC-SHA256")]
    Malformed,
    #[error("signature does not match any configured shared key (is the Site Shared Key, not the API key, configured?)")]
    Mismatch,
}

impl SignatureError {
    /// Stable name for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "signature_missing",
            Self::Malformed => "signature_malformed",
            Self::Mismatch => "signature_mismatch",
        }
    }
}

fn decode_signature(value: &str) -> Option<Vec<u8>> {
    let value = value.trim();
    if value.len() != 64 {
        return None;
    }
    // hex::decode accepts either case, which makes the comparison case-insensitive.
    hex::decode(value).ok()
}

/// Chargify subdomains are DNS labels.
pub fn is_valid_subdomain(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= 63
        && site
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Hex HMAC-SHA256 of `body` with `key`: what Chargify sends. Used to sign test webhooks
/// and the bundled samples.
pub fn sign(key: &str, body: &[u8]) -> String {
    // new_from_slice cannot fail for HMAC; an empty fallback keeps this total.
    match HmacSha256::new_from_slice(key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> SignatureCandidate<'_> {
        SignatureCandidate {
            source: SignatureSource::Header,
            value,
        }
    }

    // The example from Chargify's webhook documentation: key `123`.
    const DOC_BODY: &[u8] = b"payload[chargify]=testing&event=test";
    const DOC_SIG: &str = "19826d51b9f866b26eda1f154de192593360f8d0bcb63df8a28540a5dcf733f1";
    const TEST_BODY: &[u8] = b"id=123456&event=test&payload[chargify]=testing";
    const TEST_SIG: &str = "f8c4861ec8d655e5144483801474d69c691ae070062a3d8642eda7250a7f2284";

    #[test]
    fn official_vectors_sign_and_verify() {
        assert_eq!(sign("123", DOC_BODY), DOC_SIG);
        assert_eq!(sign("123", TEST_BODY), TEST_SIG);
        let keys = SharedKeySet::parse("123").expect("keys");
        assert!(keys.verify(DOC_BODY, &[header(DOC_SIG)], None).is_ok());
        assert!(keys.verify(TEST_BODY, &[header(TEST_SIG)], None).is_ok());
    }

    #[test]
    fn upper_case_hex_verifies() {
        let keys = SharedKeySet::parse("123").expect("keys");
        let upper = DOC_SIG.to_ascii_uppercase();
        assert!(keys.verify(DOC_BODY, &[header(&upper)], None).is_ok());
    }

    #[test]
    fn one_changed_byte_fails() {
        let keys = SharedKeySet::parse("123").expect("keys");
        let tampered = b"payload[chargify]=testinG&event=test";
        assert_eq!(
            keys.verify(tampered, &[header(DOC_SIG)], None).err(),
            Some(SignatureError::Mismatch)
        );
        assert_eq!(
            SharedKeySet::parse("124")
                .expect("keys")
                .verify(DOC_BODY, &[header(DOC_SIG)], None)
                .err(),
            Some(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_are_told_apart() {
        let keys = SharedKeySet::parse("123").expect("keys");
        assert_eq!(
            keys.verify(DOC_BODY, &[], None).err(),
            Some(SignatureError::Missing)
        );
        for bad in [
            "",
            "abc",
            &DOC_SIG[..63],
            "zz".repeat(32).as_str(),
            "3df5f2c8d2bfd40d8a8d72cb9e7fe56c",
        ] {
            assert_eq!(
                keys.verify(DOC_BODY, &[header(bad)], None).err(),
                Some(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn rotation_accepts_old_and_new_keys() {
        let keys = SharedKeySet::parse("old-key, 123").expect("keys");
        let verified = keys
            .verify(DOC_BODY, &[header(DOC_SIG)], None)
            .expect("new key verifies");
        assert_eq!(verified.key.label(), "*#1");
        let old_sig = sign("old-key", DOC_BODY);
        let verified = keys
            .verify(DOC_BODY, &[header(&old_sig)], None)
            .expect("old key verifies");
        assert_eq!(verified.key.label(), "*#0");
    }

    #[test]
    fn any_candidate_may_verify() {
        let keys = SharedKeySet::parse("123").expect("keys");
        let wrong = "0".repeat(64);
        let verified = keys
            .verify(
                DOC_BODY,
                &[
                    header(&wrong),
                    SignatureCandidate {
                        source: SignatureSource::QueryParameter,
                        value: DOC_SIG,
                    },
                ],
                None,
            )
            .expect("query verifies");
        assert_eq!(verified.source, SignatureSource::QueryParameter);
    }

    #[test]
    fn per_site_keys_are_bound_to_their_site() {
        let keys = SharedKeySet::parse("acme=123,other=456").expect("keys");
        let verified = keys
            .verify(DOC_BODY, &[header(DOC_SIG)], Some("other"))
            .expect("acme's key verifies even with a wrong hint");
        assert_eq!(verified.key.label(), "acme#0");
        assert_eq!(verified.site_conflict(Some("acme")), None);
        assert_eq!(verified.site_conflict(None), None);
        assert_eq!(
            verified.site_conflict(Some("other")),
            Some(("acme", "other"))
        );
    }

    #[test]
    fn json_spec_and_errors() {
        let keys = SharedKeySet::parse(r#"{"keys":["a","b"],"sites":{"acme":["123","x"]}}"#)
            .expect("keys");
        let labels: Vec<String> = keys.keys().iter().map(SharedKey::label).collect();
        assert_eq!(labels, ["*#0", "*#1", "acme#0", "acme#1"]);
        assert_eq!(SharedKeySet::parse("").err(), Some(KeySetError::NoKeys));
        assert_eq!(SharedKeySet::parse(" , ").err(), Some(KeySetError::NoKeys));
        assert_eq!(
            SharedKeySet::parse(r#"{"sites":{"acme":[" "]}}"#).err(),
            Some(KeySetError::EmptyKey {
                scope: "acme".into()
            })
        );
        assert_eq!(
            SharedKeySet::parse(r#"{"sites":{"Bad Site":["k"]}}"#).err(),
            Some(KeySetError::BadSite {
                site: "Bad Site".into()
            })
        );
        assert!(matches!(
            SharedKeySet::parse(r#"{"key":["a"]}"#),
            Err(KeySetError::BadJson { .. })
        ));
    }

    #[test]
    fn an_entry_with_an_ambiguous_equals_is_refused() {
        for (spec, position) in [
            ("acme=", 1),
            ("good,YWJjZA==", 2),
            ("acme=k=ey", 1),
            ("Bad Site=k", 1),
            ("a,b,QUJD=", 3),
        ] {
            assert_eq!(
                SharedKeySet::parse(spec).err(),
                Some(KeySetError::AmbiguousEquals { position }),
                "{spec}"
            );
        }
        let message = KeySetError::AmbiguousEquals { position: 2 }.to_string();
        assert!(message.contains("JSON"), "{message}");
        // The unambiguous forms: `subdomain=key`, and any key at all in JSON.
        let keys = SharedKeySet::parse(" acme = k1 ,k2").expect("keys");
        let labels: Vec<String> = keys.keys().iter().map(SharedKey::label).collect();
        assert_eq!(labels, ["acme#0", "*#0"]);
        let keys = SharedKeySet::parse(r#"{"keys":["YWJjZA=="]}"#).expect("keys");
        assert!(keys
            .verify(b"x", &[header(&sign("YWJjZA==", b"x"))], None)
            .is_ok());
    }

    #[test]
    fn a_request_costs_at_most_one_hmac_per_key_whatever_it_sends() {
        let keys = SharedKeySet::parse("k1,k2,acme=k3").expect("keys");
        let body = DOC_BODY;
        let wrong: Vec<String> = (0..4).map(|i| format!("{i:064x}")).collect();
        let mut candidates: Vec<SignatureCandidate<'_>> = wrong.iter().map(|w| header(w)).collect();
        let mut macs = 0;
        let result = keys.verify_with(&candidates, None, |key| {
            macs += 1;
            key.tag(body)
        });
        assert_eq!(result.err(), Some(SignatureError::Mismatch));
        assert_eq!(
            macs,
            keys.keys().len(),
            "one HMAC per key, not per candidate"
        );
        // The same bound when the last candidate of the last key verifies.
        let good = sign("k3", body);
        candidates.push(SignatureCandidate {
            source: SignatureSource::QueryParameter,
            value: &good,
        });
        let mut macs = 0;
        let verified = keys
            .verify_with(&candidates, None, |key| {
                macs += 1;
                key.tag(body)
            })
            .expect("k3 verifies");
        assert_eq!(verified.key.label(), "acme#0");
        assert_eq!(verified.source, SignatureSource::QueryParameter);
        assert_eq!(macs, 3);
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let keys = SharedKeySet::parse("super-secret-key").expect("keys");
        let dump = format!("{keys:?}");
        assert!(!dump.contains("super-secret-key"), "{dump}");
        assert!(dump.contains("*#0"));
    }
}

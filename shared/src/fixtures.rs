//! Real Chargify webhook bodies (see `shared/fixtures/chargify/README.md` for their sources),
//! compiled in so tests, benchmarks and local samples share one copy.

pub const TEST: &str = include_str!("../fixtures/chargify/test.txt");
pub const SIGNUP_SUCCESS: &str = include_str!("../fixtures/chargify/signup_success.txt");
pub const SUBSCRIPTION_STATE_CHANGE: &str =
    include_str!("../fixtures/chargify/subscription_state_change.txt");
pub const PAYMENT_FAILURE: &str = include_str!("../fixtures/chargify/payment_failure.txt");
pub const PAYMENT_SUCCESS: &str = include_str!("../fixtures/chargify/payment_success.txt");
pub const CUSTOMER_UPDATE: &str = include_str!("../fixtures/chargify/customer_update.txt");
pub const STATEMENT_SETTLED: &str = include_str!("../fixtures/chargify/statement_settled.txt");

/// Every bundled body, by event key.
pub const ALL: &[(&str, &str)] = &[
    ("test", TEST),
    ("signup_success", SIGNUP_SUCCESS),
    ("subscription_state_change", SUBSCRIPTION_STATE_CHANGE),
    ("payment_failure", PAYMENT_FAILURE),
    ("payment_success", PAYMENT_SUCCESS),
    ("customer_update", CUSTOMER_UPDATE),
    ("statement_settled", STATEMENT_SETTLED),
];

/// The envelope ingest would queue for `body`, verified by a demo key (tests, benchmarks and
/// the local samples). `None` when `body` is not a webhook.
pub fn envelope(body: &str) -> Option<crate::envelope::WebhookEnvelope> {
    let webhook = crate::chargify::Webhook::parse(body.as_bytes()).ok()?;
    let keys = crate::chargify::SharedKeySet::parse("local-dev-shared-key").ok()?;
    let key = keys.keys().first()?;
    Some(crate::envelope::WebhookEnvelope::new(
        &webhook,
        body.to_owned(),
        key,
        crate::chargify::SignatureSource::Header,
        time::OffsetDateTime::now_utc(),
    ))
}

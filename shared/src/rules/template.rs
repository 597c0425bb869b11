//! Rule templates: MiniJinja over the webhook payload, with the shortcuts and filters the
//! rules file documents. Templates are compiled and checked once, at cold start; rendering a
//! checked template cannot refer to a variable the context lacks.

use crate::chargify::Webhook;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// Top-level names a template may use. Anything else is a typo caught at cold start.
pub const CONTEXT_NAMES: &[&str] = &[
    "payload",
    "event",
    "webhook_id",
    "site",
    "customer",
    "subscription",
    "product",
    "product_family",
    "previous_product",
    "transaction",
];

/// A piece of text from the rules file: fixed, or a compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Literal(String),
    Template { name: String, source: String },
}

/// Why a template is unusable; the message names the rule and field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("{at}: template does not parse: {detail}")]
    Syntax { at: String, detail: String },
    #[error("{at}: template uses `{name}`, which is not one of {}", CONTEXT_NAMES.join(", "))]
    UnknownName { at: String, name: String },
    #[error("{at}: template failed on this webhook: {detail}")]
    Render { at: String, detail: String },
}

/// The compiled templates of one rules file.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        // A field some event types lack (`customer.organization` on a test webhook) renders
        // empty instead of failing the whole webhook; names are checked at compile time.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.add_filter("cents", cents);
        env.add_filter("date", date);
        env.add_filter("datetime", datetime);
        env.add_filter("mrr", mrr);
        Self { env }
    }

    /// Compiles `source`, found at `at` (for messages), e.g. `rule "signup" / apply_tags[0]`.
    pub fn compile(&mut self, at: &str, source: &str) -> Result<Text, TemplateError> {
        if !source.contains("{{") && !source.contains("{%") {
            return Ok(Text::Literal(source.to_owned()));
        }
        let name = at.to_owned();
        self.env
            .add_template_owned(name.clone(), source.to_owned())
            .map_err(|e| TemplateError::Syntax {
                at: at.to_owned(),
                detail: e.to_string(),
            })?;
        let template = self
            .env
            .get_template(&name)
            .map_err(|e| TemplateError::Syntax {
                at: at.to_owned(),
                detail: e.to_string(),
            })?;
        let mut unknown: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|n| {
                !CONTEXT_NAMES.contains(&n.as_str()) && !BUILTIN_FUNCTIONS.contains(&n.as_str())
            })
            .collect();
        unknown.sort();
        if let Some(name) = unknown.into_iter().next() {
            return Err(TemplateError::UnknownName {
                at: at.to_owned(),
                name,
            });
        }
        Ok(Text::Template {
            name,
            source: source.to_owned(),
        })
    }

    /// Renders to trimmed text; empty means "no value".
    pub fn render(&self, text: &Text, context: &minijinja::Value) -> Result<String, TemplateError> {
        match text {
            Text::Literal(s) => Ok(s.trim().to_owned()),
            Text::Template { name, .. } => {
                let template = self
                    .env
                    .get_template(name)
                    .map_err(|e| TemplateError::Render {
                        at: name.clone(),
                        detail: e.to_string(),
                    })?;
                template
                    .render(context)
                    .map(|s| s.trim().to_owned())
                    .map_err(|e| TemplateError::Render {
                        at: name.clone(),
                        detail: e.to_string(),
                    })
            }
        }
    }
}

/// MiniJinja's global functions, allowed in templates.
const BUILTIN_FUNCTIONS: &[&str] = &["range", "dict", "namespace", "loop"];

/// The values templates see, from [`context_json`] (built once per webhook by `plan`).
pub fn context(json: &Value) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(json))
}

/// The values templates see for one webhook, as JSON (also `plan --json`).
pub fn context_json(webhook: &Webhook, site: &str) -> Value {
    let body = webhook.form.to_json();
    let payload = body.get("payload").cloned().unwrap_or(Value::Null);
    let subscription = payload.get("subscription").cloned().unwrap_or(Value::Null);
    let pick = |from_subscription: &str, top: &str| {
        subscription
            .get(from_subscription)
            .or_else(|| payload.get(top))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let customer = pick("customer", "customer");
    let product = pick("product", "product");
    let product_family = product
        .get("product_family")
        .cloned()
        .unwrap_or(Value::Null);
    let previous_product = payload
        .get("previous_product")
        .cloned()
        .unwrap_or(Value::Null);
    let transaction = payload.get("transaction").cloned().unwrap_or(Value::Null);
    let mut map = Map::new();
    map.insert("event".into(), Value::String(webhook.event.clone()));
    map.insert("webhook_id".into(), Value::String(webhook.id.clone()));
    map.insert("site".into(), Value::String(site.to_owned()));
    map.insert("customer".into(), customer);
    map.insert("subscription".into(), subscription);
    map.insert("product".into(), product);
    map.insert("product_family".into(), product_family);
    map.insert("previous_product".into(), previous_product);
    map.insert("transaction".into(), transaction);
    map.insert("payload".into(), payload);
    Value::Object(map)
}

/// Parses a Chargify timestamp: the webhook form `2012-09-09 11:38:32 -0400`, or RFC 3339
/// as the REST API sends it.
pub fn parse_chargify_time(text: &str) -> Option<OffsetDateTime> {
    let text = text.trim();
    let webhook_form = format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
    );
    OffsetDateTime::parse(text, webhook_form)
        .or_else(|_| OffsetDateTime::parse(text, &Rfc3339))
        .ok()
}

fn as_text(value: &minijinja::Value) -> String {
    if value.is_undefined() || value.is_none() {
        String::new()
    } else {
        value.to_string()
    }
}

/// `9900` → `"99.00"`; empty stays empty; anything else that is not a whole number fails.
fn cents(value: minijinja::Value) -> Result<String, minijinja::Error> {
    let text = as_text(&value);
    let text = text.trim();
    if text.is_empty() {
        return Ok(String::new());
    }
    let cents: i64 = text.parse().map_err(|_| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("`cents` needs a whole number of cents, not {text:?}"),
        )
    })?;
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    Ok(format!("{sign}{}.{:02}", cents / 100, cents % 100))
}

/// Chargify time → `YYYY-MM-DD` in the time's own offset (Keap date fields take a date).
fn date(value: minijinja::Value) -> Result<String, minijinja::Error> {
    format_time(value, format_description!("[year]-[month]-[day]"))
}

/// Chargify time → RFC 3339 in UTC.
fn datetime(value: minijinja::Value) -> Result<String, minijinja::Error> {
    let text = as_text(&value);
    if text.trim().is_empty() {
        return Ok(String::new());
    }
    let time = parse_chargify_time(&text).ok_or_else(|| bad_time(&text))?;
    time.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

fn format_time(
    value: minijinja::Value,
    format: &[time::format_description::BorrowedFormatItem<'_>],
) -> Result<String, minijinja::Error> {
    let text = as_text(&value);
    if text.trim().is_empty() {
        return Ok(String::new());
    }
    let time = parse_chargify_time(&text).ok_or_else(|| bad_time(&text))?;
    time.format(format)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

fn bad_time(text: &str) -> minijinja::Error {
    minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("not a Chargify time: {text:?}"),
    )
}

/// Monthly recurring revenue of a product (`{{ product | mrr }}`), as `"99.00"`: the price
/// spread over the billing interval (`month` or `day`; a day is 1/30.4375 of a month).
fn mrr(product: minijinja::Value) -> Result<String, minijinja::Error> {
    let field = |name: &str| {
        product
            .get_attr(name)
            .ok()
            .map(|v| as_text(&v))
            .unwrap_or_default()
    };
    let price = field("price_in_cents");
    if price.trim().is_empty() {
        return Ok(String::new());
    }
    let price: f64 = price.trim().parse().map_err(|_| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("`mrr` needs product.price_in_cents to be a number, not {price:?}"),
        )
    })?;
    let interval = field("interval")
        .trim()
        .parse::<f64>()
        .unwrap_or(1.0)
        .max(1.0);
    let months = match field("interval_unit").trim() {
        "day" => interval / 30.4375,
        _ => interval,
    };
    let monthly_cents = (price / months).round() as i64;
    cents(minijinja::Value::from(monthly_cents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn render(source: &str, body: &str) -> Result<String, TemplateError> {
        let mut templates = Templates::new();
        let text = templates.compile("test", source)?;
        let webhook = Webhook::parse(body.as_bytes()).expect("fixture parses");
        templates.render(&text, &context(&context_json(&webhook, "acme")))
    }

    #[test]
    fn shortcuts_find_the_customer_wherever_the_event_keeps_it() {
        let from_subscription = render("{{ customer.email }}", fixtures::SIGNUP_SUCCESS);
        assert!(from_subscription.expect("renders").contains('@'));
        let from_top = render("{{ customer.email }}", fixtures::CUSTOMER_UPDATE).expect("renders");
        assert!(from_top.contains('@'), "{from_top}");
        assert_eq!(
            render("{{ product.handle }}", fixtures::PAYMENT_FAILURE).expect("renders"),
            "handle_6a9273b8a"
        );
    }

    #[test]
    fn filters_format_money_and_dates() {
        let body = fixtures::PAYMENT_FAILURE;
        assert_eq!(
            render("{{ product.price_in_cents | cents }}", body).unwrap(),
            "99.00"
        );
        assert_eq!(render("{{ product | mrr }}", body).unwrap(), "99.00");
        assert_eq!(
            render("{{ subscription.next_assessment_at | date }}", body).unwrap(),
            "2012-10-09"
        );
        assert_eq!(
            render("{{ subscription.updated_at | datetime }}", body).unwrap(),
            "2012-09-09T15:49:44Z"
        );
        // Missing values render empty rather than failing the webhook.
        assert_eq!(
            render("{{ subscription.expires_at | date }}", body).unwrap(),
            ""
        );
        assert_eq!(render("{{ transaction.nothing.here }}", body).unwrap(), "");
    }

    #[test]
    fn typos_and_bad_syntax_are_caught_at_compile_time() {
        let mut templates = Templates::new();
        assert!(matches!(
            templates.compile("r", "{{ custommer.email }}"),
            Err(TemplateError::UnknownName { name, .. }) if name == "custommer"
        ));
        assert!(matches!(
            templates.compile("r", "{{ customer.email "),
            Err(TemplateError::Syntax { .. })
        ));
        assert_eq!(
            templates.compile("r", "Billing: Active").unwrap(),
            Text::Literal("Billing: Active".into())
        );
    }

    #[test]
    fn a_bad_value_for_a_filter_is_a_render_error() {
        let err = render("{{ customer.email | cents }}", fixtures::SIGNUP_SUCCESS).unwrap_err();
        assert!(matches!(err, TemplateError::Render { .. }), "{err}");
    }

    #[test]
    fn chargify_times_parse_in_both_forms() {
        let a = parse_chargify_time("2012-09-09 11:49:44 -0400").unwrap();
        let b = parse_chargify_time("2012-09-09T15:49:44Z").unwrap();
        assert_eq!(a, b);
        assert!(parse_chargify_time("yesterday").is_none());
    }
}

//! Logs and metrics: one JSON object per line on stdout, which CloudWatch Logs indexes, and
//! CloudWatch Embedded Metric Format documents for the metrics of [`metrics`] (the catalogue).
//!
//! Both kinds of line are JSON objects written straight to stdout. A Lambda function with
//! `LogFormat: JSON` passes an application line that is already a JSON object through as it
//! is (no second encoding), so CloudWatch still finds the EMF documents in them; a line
//! without a `level` member (every EMF line) counts as INFO for Lambda's log-level filter,
//! which is why the stack never sets `ApplicationLogLevel` above INFO (docs/deploy.md, "Logs and tracing").

pub mod metrics;

#[cfg(test)]
pub(crate) mod capture;

use std::sync::OnceLock;

/// CloudWatch namespace of every metric the functions emit.
pub const METRICS_NAMESPACE: &str = "ChargifyKeapSync";

static METRICS: OnceLock<Option<&'static metrics_cloudwatch_embedded::Collector>> = OnceLock::new();

/// Installs the JSON log subscriber and the EMF metrics recorder, once per process.
/// `RUST_LOG` sets the level (`error`, `warn`, `info`, `debug`, `trace`; default `info`).
/// `function` becomes the `Function` metric dimension (one of [`metrics::function`]).
pub fn init(function: &'static str) {
    let level = log_level(std::env::var("RUST_LOG").ok().as_deref());
    // try_init: a second call (tests, a local server embedding both functions) is harmless.
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_max_level(level)
        .with_writer(std::io::stdout)
        .try_init();
    METRICS.get_or_init(|| {
        metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(METRICS_NAMESPACE)
            .with_dimension("Function", function)
            .init()
            .map_err(
                |e| tracing::warn!(error = %e, "metrics recorder not installed; metrics are off"),
            )
            .ok()
            .inspect(|_| metrics::describe_units())
    });
}

/// A plain level rather than a full filter expression: the regex engine behind per-target
/// filters would add about a megabyte to every Lambda bootstrap.
fn log_level(value: Option<&str>) -> tracing::Level {
    value
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(tracing::Level::INFO)
}

/// Writes the metrics recorded since the last flush as one EMF line. Called at the end of
/// each invocation, so a frozen Lambda environment loses nothing.
pub fn flush_metrics() {
    if let Some(Some(collector)) = METRICS.get() {
        if let Err(e) = collector.flush(std::io::stdout()) {
            tracing::warn!(error = %e, "could not write metrics");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_level;
    use tracing::Level;

    #[test]
    fn rust_log_sets_the_level_and_defaults_to_info() {
        assert_eq!(log_level(None), Level::INFO);
        assert_eq!(log_level(Some("debug")), Level::DEBUG);
        assert_eq!(log_level(Some(" WARN ")), Level::WARN);
        assert_eq!(log_level(Some("shared=debug,info")), Level::INFO);
    }
}

/// `text` with every email address replaced by `<email>`, for log lines that carry text from
/// outside (a Keap error message may quote the address it refused). Personal data stays out
/// of CloudWatch; the dead-letter queue keeps the full reason for the operator.
pub fn redact_emails(text: &str) -> String {
    let is_boundary = |c: char| c.is_whitespace() || "\"'<>()[]{},;:".contains(c);
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
        if is_boundary(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_emails;

    #[test]
    fn email_addresses_are_replaced_and_the_rest_kept() {
        assert_eq!(
            redact_emails("Keap refused \"john.doe@example.com\" (Invalid email)"),
            "Keap refused \"<email>\" (Invalid email)"
        );
        assert_eq!(redact_emails("a@b.co, c@d.org"), "<email>, <email>");
        assert_eq!(redact_emails("no address @ here"), "no address @ here");
    }
}

//! Logs and metrics: one JSON object per line on stdout, which CloudWatch Logs indexes, and
//! CloudWatch Embedded Metric Format documents for the metrics of [`metrics`] (the catalogue).
//!
//! Both kinds of line are JSON objects written straight to stdout. A Lambda function with
//! `LogFormat: JSON` passes an application line that is already a JSON object through as it
//! is (no second encoding), so CloudWatch still finds the EMF documents in them; a line
//! without a `level` member (every EMF line) counts as INFO for Lambda's log-level filter,
//! which is why the stack never sets `ApplicationLogLevel` above INFO (docs/deploy.md, "Logs and tracing").

pub mod invocation;
pub mod metrics;
mod redact;

pub use redact::{is_word_boundary, redact_emails, redact_serde_error};

#[cfg(test)]
pub(crate) mod capture;

use std::sync::OnceLock;

/// CloudWatch namespace of every metric the functions emit.
pub const METRICS_NAMESPACE: &str = "ChargifyKeapSync";

static METRICS: OnceLock<Option<&'static metrics_cloudwatch_embedded::Collector>> = OnceLock::new();

/// Installs the JSON log subscriber and the EMF metrics recorder, once per process.
/// `RUST_LOG` sets the level (`error`, `warn`, `info`, `debug`, `trace`; default `info`).
/// `function` becomes the `Function` metric dimension (one of [`metrics::function`]), and the
/// `function_name` of each log line unless Lambda names the function (`AWS_LAMBDA_FUNCTION_NAME`).
pub fn init(function: &'static str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let vars = crate::config::Vars::from_env();
    let level = log_level(vars.raw(RUST_LOG));
    let function_name = function_name(&vars, function);
    let cold = invocation::ColdStart::default();
    let format = tracing_subscriber::fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false);
    // The level filters the lines written, not the runtime's invocation span: at `warn` a
    // warning still carries its request id.
    let lines = tracing_subscriber::fmt::layer()
        .json()
        .event_format(invocation::WithInvocation::new(
            format,
            function_name,
            cold.clone(),
        ))
        .with_writer(std::io::stdout)
        .with_filter(tracing_subscriber::filter::LevelFilter::from_level(level));
    let spans =
        invocation::InvocationLayer::new(cold).with_filter(tracing_subscriber::filter::filter_fn(
            |meta| meta.is_span() && meta.name() == invocation::INVOCATION_SPAN,
        ));
    // try_init: a second call (tests, a local server embedding both functions) is harmless.
    let _ = tracing_subscriber::registry()
        .with(spans)
        .with(lines)
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

/// The log level's variable.
pub const RUST_LOG: &str = "RUST_LOG";
/// The function's name as Lambda (and `cargo lambda`) sets it.
pub const AWS_LAMBDA_FUNCTION_NAME: &str = "AWS_LAMBDA_FUNCTION_NAME";

/// The `function_name` of each log line: Lambda's name for the function, else `function`.
fn function_name(vars: &crate::config::Vars, function: &str) -> String {
    vars.text(AWS_LAMBDA_FUNCTION_NAME)
        .unwrap_or(function)
        .to_owned()
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
    use super::*;
    use crate::config::Vars;
    use tracing::Level;

    #[test]
    fn rust_log_sets_the_level_and_defaults_to_info() {
        assert_eq!(log_level(None), Level::INFO);
        assert_eq!(log_level(Some("debug")), Level::DEBUG);
        assert_eq!(log_level(Some(" WARN ")), Level::WARN);
        assert_eq!(log_level(Some("shared=debug,info")), Level::INFO);
    }

    #[test]
    fn lambdas_function_name_wins_unless_blank() {
        let named = Vars::from_pairs([(AWS_LAMBDA_FUNCTION_NAME, "stack-Ingest-1")]);
        assert_eq!(function_name(&named, "ingest"), "stack-Ingest-1");
        let blank = Vars::from_pairs([(AWS_LAMBDA_FUNCTION_NAME, " ")]);
        assert_eq!(function_name(&blank, "ingest"), "ingest");
        assert_eq!(function_name(&Vars::default(), "ingest"), "ingest");
    }
}

//! Logs and metrics: one JSON object per line on stdout, which CloudWatch Logs indexes, and
//! CloudWatch Embedded Metric Format documents for the counters.

use std::sync::OnceLock;

/// CloudWatch namespace of every metric the functions emit.
pub const METRICS_NAMESPACE: &str = "ChargifyKeapSync";

static METRICS: OnceLock<Option<&'static metrics_cloudwatch_embedded::Collector>> = OnceLock::new();

/// Installs the JSON log subscriber (level from `RUST_LOG`, default `info`) and the EMF
/// metrics recorder, once per process. `function` becomes the `Function` metric dimension.
pub fn init(function: &'static str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // try_init: a second call (tests, a local server embedding both functions) is harmless.
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
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
    });
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

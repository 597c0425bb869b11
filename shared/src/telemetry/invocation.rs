//! The invocation on every log line, under the keys AWS Lambda Powertools' Logger uses:
//! `function_name`, `function_request_id`, `cold_start` and `xray_trace_id`. An operator goes
//! from a REPORT line (its `requestId`), an API Gateway access log line (`lambdaRequestId`) or
//! an X-Ray trace to every line the invocation wrote, and back.
//!
//! `lambda_runtime::run` runs each invocation inside a span named [`INVOCATION_SPAN`] whose
//! fields are the request id and, when the invocation is traced, the X-Ray trace id.
//! [`InvocationLayer`] keeps those fields on the span when it opens and notes whether it is the
//! process's first invocation (the cold start); [`WithInvocation`] writes them into each JSON
//! line logged inside the span. Lines written outside any invocation (during the cold start
//! itself, before the first one) carry the function name and `cold_start: true`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The name of the span `lambda_runtime` opens around each invocation.
pub const INVOCATION_SPAN: &str = "Lambda runtime invoke";

/// What a line logged inside an invocation says about it.
#[derive(Clone, Debug, Default)]
struct Invocation {
    request_id: Option<String>,
    xray_trace_id: Option<String>,
    cold_start: bool,
}

impl Visit for Invocation {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "requestId" => self.request_id = Some(value.to_owned()),
            "xrayTraceId" => self.xray_trace_id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // The runtime records both as strings; a Debug value would arrive quoted.
        let text = format!("{value:?}");
        self.record_str(field, text.trim_matches('"'));
    }
}

/// Whether the process has not yet started an invocation: shared by the layer, which clears
/// it at the first invocation span, and the formatter, which reports it outside invocations.
#[derive(Clone, Debug)]
pub struct ColdStart(Arc<AtomicBool>);

impl Default for ColdStart {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

/// Keeps the runtime's invocation fields on the invocation span.
#[derive(Debug, Default)]
pub struct InvocationLayer {
    cold: ColdStart,
}

impl InvocationLayer {
    pub fn new(cold: ColdStart) -> Self {
        Self { cold }
    }
}

impl<S> Layer<S> for InvocationLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != INVOCATION_SPAN {
            return;
        }
        let mut invocation = Invocation {
            cold_start: self.cold.0.swap(false, Ordering::Relaxed),
            ..Invocation::default()
        };
        attrs.record(&mut invocation);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(invocation);
        }
    }
}

/// A JSON event format with the invocation's fields put first in each object.
pub struct WithInvocation<F> {
    inner: F,
    function_name: String,
    cold: ColdStart,
}

impl<F> WithInvocation<F> {
    pub fn new(inner: F, function_name: impl Into<String>, cold: ColdStart) -> Self {
        Self {
            inner,
            function_name: function_name.into(),
            cold,
        }
    }

    /// `"function_name":…,"cold_start":…[,"function_request_id":…][,"xray_trace_id":…]`.
    fn fields(&self, invocation: Option<&Invocation>) -> String {
        let quoted = |s: &str| serde_json::Value::from(s).to_string();
        let cold_start = match invocation {
            Some(invocation) => invocation.cold_start,
            None => self.cold.0.load(Ordering::Relaxed),
        };
        let mut out = format!(
            "\"function_name\":{},\"cold_start\":{cold_start}",
            quoted(&self.function_name)
        );
        let invocation = invocation.cloned().unwrap_or_default();
        if let Some(id) = &invocation.request_id {
            out.push_str(&format!(",\"function_request_id\":{}", quoted(id)));
        }
        if let Some(trace) = &invocation.xray_trace_id {
            out.push_str(&format!(",\"xray_trace_id\":{}", quoted(trace)));
        }
        out
    }
}

impl<S, N, F> FormatEvent<S, N> for WithInvocation<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let invocation = ctx.event_scope().and_then(|scope| {
            scope
                .from_root()
                .find_map(|span| span.extensions().get::<Invocation>().cloned())
        });
        // The inner format writes one JSON object; anything else is passed on untouched.
        let Some(rest) = line.strip_prefix('{') else {
            return writer.write_str(&line);
        };
        let separator = if rest.trim_start().starts_with('}') {
            ""
        } else {
            ","
        };
        write!(
            writer,
            "{{{}{separator}{rest}",
            self.fields(invocation.as_ref())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;
    use tracing_subscriber::layer::SubscriberExt;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn json(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    fn subscriber(lines: &Lines) -> impl Subscriber + Send + Sync {
        let cold = ColdStart::default();
        let writer = lines.clone();
        let format = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false);
        tracing_subscriber::registry()
            .with(InvocationLayer::new(cold.clone()))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(WithInvocation::new(format, "ingest-fn", cold))
                    .with_writer(move || writer.clone()),
            )
    }

    #[test]
    fn lines_carry_the_request_id_trace_id_and_whether_it_is_the_cold_start() {
        let lines = Lines::default();
        tracing::subscriber::with_default(subscriber(&lines), || {
            tracing::info!("ready");
            let first = tracing::info_span!(
                "Lambda runtime invoke",
                requestId = "req-1",
                xrayTraceId = "Root=1-5759e988-bd862e3fe1be46a994272793"
            );
            first.in_scope(|| {
                // Nested spans, as the AWS SDK opens per call, keep the invocation's fields.
                tracing::info_span!("send_message").in_scope(|| tracing::warn!(n = 1, "inside"))
            });
            tracing::info_span!("Lambda runtime invoke", requestId = "req-2")
                .in_scope(|| tracing::info!("second"));
        });
        let lines = lines.json();
        assert_eq!(lines.len(), 3, "{lines:?}");
        for line in &lines {
            assert_eq!(line["function_name"], "ingest-fn", "{line}");
            assert!(line["timestamp"].is_string() && line["message"].is_string());
        }
        // Before the first invocation: the cold start itself, no request.
        assert_eq!(lines[0]["cold_start"], true);
        assert!(lines[0].get("function_request_id").is_none());
        assert_eq!(lines[1]["function_request_id"], "req-1");
        assert_eq!(lines[1]["cold_start"], true);
        assert_eq!(
            lines[1]["xray_trace_id"],
            "Root=1-5759e988-bd862e3fe1be46a994272793"
        );
        assert_eq!(lines[1]["n"], 1);
        assert_eq!(lines[2]["function_request_id"], "req-2");
        assert_eq!(lines[2]["cold_start"], false);
        assert!(lines[2].get("xray_trace_id").is_none());
    }

    #[test]
    fn field_values_are_json_escaped() {
        let format = WithInvocation::new((), "f", ColdStart::default());
        assert_eq!(
            format.fields(None),
            "\"function_name\":\"f\",\"cold_start\":true"
        );
        let quoted = WithInvocation::new((), "a\"b", ColdStart::default()).fields(None);
        let parsed: serde_json::Value =
            serde_json::from_str(&format!("{{{quoted}}}")).expect("escaped");
        assert_eq!(parsed["function_name"], "a\"b");
    }
}

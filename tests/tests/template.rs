//! `template.yaml` read as data (no AWS): every alarm the issue asks for exists, watches the
//! metric the code emits with exactly its dimensions, statistic, threshold and comparison, and
//! notifies the topic; every function has its Errors and Throttles alarms; the dashboard shows
//! every alarm and every alarm's metric; the runbook in docs/operations.md has an entry per
//! alarm; logs, tracing, outputs and the samconfig example are as documented.

use integration_tests::repo_root;
use serde_norway::Value;
use shared::telemetry::metrics::name;
use shared::telemetry::METRICS_NAMESPACE;
use std::collections::BTreeSet;

fn template() -> Value {
    let text = std::fs::read_to_string(repo_root().join("template.yaml")).expect("template.yaml");
    serde_norway::from_str(&text).expect("template.yaml parses as YAML")
}

/// A scalar or an intrinsic as text: `!Ref X` → `${X}`, `!GetAtt X.Y` → `${X.Y}`, `!Sub s` →
/// `s`, numbers as written. So `Value: !Ref IngestFunction` compares equal to the dashboard's
/// `${IngestFunction}`.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Tagged(tagged) => {
            let inner = &tagged.value;
            match tagged.tag.to_string().as_str() {
                "!Ref" => format!("${{{}}}", text(inner)),
                "!GetAtt" => match inner {
                    Value::Sequence(parts) => format!(
                        "${{{}}}",
                        parts.iter().map(text).collect::<Vec<_>>().join(".")
                    ),
                    other => format!("${{{}}}", text(other)),
                },
                "!Sub" => text(inner),
                tag => format!("{tag} {inner:?}"),
            }
        }
        other => format!("{other:?}"),
    }
}

fn resources(template: &Value) -> Vec<(String, &Value)> {
    template["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .map(|(k, v)| (text(k), v))
        .collect()
}

fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    resources(template)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .collect()
}

fn parameter_default(template: &Value, name: &str) -> String {
    text(&template["Parameters"][name]["Default"])
}

/// What one alarm must watch. `threshold` is a number, or `${Parameter}` whose default is
/// `default`.
struct Expected {
    id: &'static str,
    namespace: &'static str,
    metric: &'static str,
    dimensions: &'static [(&'static str, &'static str)],
    statistic: &'static str,
    threshold: &'static str,
    default: Option<&'static str>,
    comparison: &'static str,
    missing: &'static str,
}

impl Expected {
    fn sorted_dimensions(&self) -> Vec<(String, String)> {
        let mut dims: Vec<(String, String)> = self
            .dimensions
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        dims.sort();
        dims
    }
}

const GE: &str = "GreaterThanOrEqualToThreshold";
const GT: &str = "GreaterThanThreshold";

/// One alarm watching `metric` with `missing` data not breaching and a literal threshold;
/// [`Expected::param`] and [`Expected::missing`] adjust the rest.
fn alarm(
    id: &'static str,
    (namespace, metric): (&'static str, &'static str),
    dimensions: &'static [(&'static str, &'static str)],
    (statistic, comparison, threshold): (&'static str, &'static str, &'static str),
) -> Expected {
    Expected {
        id,
        namespace,
        metric,
        dimensions,
        statistic,
        threshold,
        default: None,
        comparison,
        missing: "notBreaching",
    }
}

impl Expected {
    /// The threshold is a parameter (`${Name}`) whose default must be `default`.
    fn param(mut self, default: &'static str) -> Self {
        self.default = Some(default);
        self
    }
    fn missing(mut self, missing: &'static str) -> Self {
        self.missing = missing;
        self
    }
}

fn expected() -> Vec<Expected> {
    const INGEST: &[(&str, &str)] = &[("FunctionName", "${IngestFunction}")];
    const PROCESSOR: &[(&str, &str)] = &[("FunctionName", "${ProcessorFunction}")];
    const RECONCILER: &[(&str, &str)] = &[("FunctionName", "${ReconcilerFunction}")];
    const EMF_INGEST: &[(&str, &str)] = &[("Function", "ingest")];
    const EMF_PROCESSOR: &[(&str, &str)] = &[("Function", "processor")];
    let lambda = |metric| ("AWS/Lambda", metric);
    let ours = |metric| (METRICS_NAMESPACE, metric);
    vec![
        alarm(
            "DeadLetterQueueAlarm",
            ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
            &[("QueueName", "${DeadLetterQueue.QueueName}")],
            ("Maximum", GE, "1"),
        ),
        alarm(
            "QueueAgeAlarm",
            ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
            &[("QueueName", "${WebhookQueue.QueueName}")],
            ("Maximum", GT, "${QueueAgeAlarmSeconds}"),
        )
        .param("900"),
        alarm(
            "IngestErrorsAlarm",
            lambda("Errors"),
            INGEST,
            ("Sum", GT, "0"),
        ),
        alarm(
            "IngestThrottlesAlarm",
            lambda("Throttles"),
            INGEST,
            ("Sum", GT, "0"),
        ),
        alarm(
            "ProcessorErrorsAlarm",
            lambda("Errors"),
            PROCESSOR,
            ("Sum", GT, "0"),
        ),
        alarm(
            "ProcessorThrottlesAlarm",
            lambda("Throttles"),
            PROCESSOR,
            ("Sum", GT, "0"),
        ),
        alarm(
            "IngestApi5xxAlarm",
            ("AWS/ApiGateway", "5xx"),
            &[("ApiId", "${WebhookApi}"), ("Stage", "$default")],
            ("Sum", GT, "0"),
        ),
        alarm(
            "IngestSignatureMismatchAlarm",
            ours(name::SIGNATURE_FAILURES),
            EMF_INGEST,
            ("Sum", GE, "${SignatureFailureAlarmThreshold}"),
        )
        .param("3"),
        alarm(
            "IngestQueueFailuresAlarm",
            ours(name::ENQUEUE_FAILURES),
            EMF_INGEST,
            ("Sum", GE, "1"),
        ),
        alarm(
            "KeapReauthorisationAlarm",
            ours(name::KEAP_REAUTHORISATION_NEEDED),
            EMF_PROCESSOR,
            ("Sum", GE, "1"),
        ),
        alarm(
            "KeapDailyQuotaAlarm",
            ours(name::KEAP_DAILY_QUOTA_REMAINING_PERCENT),
            EMF_PROCESSOR,
            ("Minimum", "LessThanThreshold", "${KeapQuotaAlarmPercent}"),
        )
        .param("10")
        .missing("ignore"),
        alarm(
            "ProcessorDurationAlarm",
            lambda("Duration"),
            PROCESSOR,
            ("Maximum", GT, "48000"),
        ),
        alarm(
            "ReconcilerErrorsAlarm",
            lambda("Errors"),
            RECONCILER,
            ("Sum", GT, "0"),
        ),
        alarm(
            "ReconcilerThrottlesAlarm",
            lambda("Throttles"),
            RECONCILER,
            ("Sum", GT, "0"),
        ),
        alarm(
            "ReconcilerDurationAlarm",
            lambda("Duration"),
            RECONCILER,
            ("Maximum", GT, "240000"),
        ),
    ]
}

fn dimensions_of(alarm: &Value) -> Vec<(String, String)> {
    let mut dims: Vec<(String, String)> = alarm["Properties"]["Dimensions"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|d| (text(&d["Name"]), text(&d["Value"])))
        .collect();
    dims.sort();
    dims
}

#[test]
fn every_alarm_watches_the_right_metric_and_notifies_the_topic() {
    let template = template();
    let alarms = of_type(&template, "AWS::CloudWatch::Alarm");
    let ids: BTreeSet<String> = alarms.iter().map(|(id, _)| id.clone()).collect();
    let wanted: BTreeSet<String> = expected().iter().map(|e| e.id.to_owned()).collect();
    assert_eq!(
        ids, wanted,
        "alarms in the template vs the alarms this test knows"
    );
    for e in expected() {
        let alarm = &template["Resources"][e.id];
        let p = &alarm["Properties"];
        assert_eq!(text(&p["Namespace"]), e.namespace, "{}", e.id);
        assert_eq!(text(&p["MetricName"]), e.metric, "{}", e.id);
        let dims = e.sorted_dimensions();
        assert_eq!(dimensions_of(alarm), dims, "{}: dimensions", e.id);
        assert_eq!(text(&p["Statistic"]), e.statistic, "{}", e.id);
        assert_eq!(text(&p["Threshold"]), e.threshold, "{}", e.id);
        if let Some(default) = e.default {
            let param = e.threshold.trim_start_matches("${").trim_end_matches('}');
            assert_eq!(parameter_default(&template, param), default, "{param}");
        }
        assert_eq!(text(&p["ComparisonOperator"]), e.comparison, "{}", e.id);
        assert_eq!(text(&p["TreatMissingData"]), e.missing, "{}", e.id);
        for actions in ["AlarmActions", "OKActions"] {
            let targets: Vec<String> = p[actions]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            assert_eq!(targets, ["${AlarmTopic}"], "{}: {actions}", e.id);
        }
        assert!(
            !text(&p["AlarmDescription"]).is_empty(),
            "{}: description",
            e.id
        );
    }
}

#[test]
fn every_function_has_errors_and_throttles_alarms() {
    let template = template();
    let alarms = of_type(&template, "AWS::CloudWatch::Alarm");
    let functions = of_type(&template, "AWS::Serverless::Function");
    assert!(functions.len() >= 2);
    for (function, _) in functions {
        for metric in ["Errors", "Throttles"] {
            let found = alarms.iter().any(|(_, a)| {
                text(&a["Properties"]["Namespace"]) == "AWS/Lambda"
                    && text(&a["Properties"]["MetricName"]) == metric
                    && dimensions_of(a) == [("FunctionName".to_owned(), format!("${{{function}}}"))]
            });
            assert!(found, "{function} has no {metric} alarm");
        }
    }
}

#[test]
fn duration_alarms_are_eighty_percent_of_their_function_timeout() {
    let template = template();
    for (function, alarm) in [
        ("ProcessorFunction", "ProcessorDurationAlarm"),
        ("ReconcilerFunction", "ReconcilerDurationAlarm"),
    ] {
        let timeout: f64 = text(&template["Resources"][function]["Properties"]["Timeout"])
            .parse()
            .expect("numeric Timeout");
        let threshold: f64 = text(&template["Resources"][alarm]["Properties"]["Threshold"])
            .parse()
            .expect("numeric threshold");
        assert_eq!(threshold, timeout * 1000.0 * 0.8, "{alarm}");
    }
}

#[test]
fn the_reconciler_runs_on_a_schedule_it_can_turn_off_with_least_privilege() {
    let template = template();
    let reconciler = &template["Resources"]["ReconcilerFunction"]["Properties"];
    let schedule = &reconciler["Events"]["Schedule"];
    assert_eq!(schedule["Type"].as_str(), Some("Schedule"));
    assert_eq!(
        text(&schedule["Properties"]["Schedule"]),
        "${ReconcileSchedule}"
    );
    assert_eq!(
        parameter_default(&template, "ReconcileSchedule"),
        "rate(15 minutes)"
    );
    assert!(
        format!("{:?}", schedule["Properties"]["State"]).contains("ReconcileOn"),
        "the schedule follows ReconcileEnabled"
    );
    let actions: BTreeSet<String> = reconciler["Policies"][0]["Statement"]
        .as_sequence()
        .expect("statements")
        .iter()
        .flat_map(|st| match &st["Action"] {
            Value::Sequence(list) => list.iter().map(text).collect::<Vec<_>>(),
            one => vec![text(one)],
        })
        .collect();
    let expected: BTreeSet<String> = [
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "sqs:SendMessage",
        "secretsmanager:GetSecretValue",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(actions, expected);
    let env = &reconciler["Environment"]["Variables"];
    for name in [
        "QUEUE_URL",
        "CHARGIFY_SHARED_KEYS_SECRET_ARN",
        "IDEMPOTENCY_TABLE",
        "CUSTOMERS_TABLE",
        "CHARGIFY_SITE",
        "CHARGIFY_API_KEY_SECRET_ARN",
    ] {
        assert!(!matches!(env[name], Value::Null), "{name} is not set");
    }
}

#[test]
fn the_email_subscription_exists_only_with_an_address() {
    let template = template();
    let subscription = &template["Resources"]["AlarmEmailSubscription"];
    assert_eq!(text(&subscription["Condition"]), "HasAlarmEmail");
    assert_eq!(
        text(&subscription["Properties"]["TopicArn"]),
        "${AlarmTopic}"
    );
    assert_eq!(
        text(&subscription["Properties"]["Endpoint"]),
        "${AlarmEmail}"
    );
    let condition = format!("{:?}", template["Conditions"]["HasAlarmEmail"]);
    assert!(
        condition.contains("!Not")
            && condition.contains("!Equals")
            && condition.contains("AlarmEmail"),
        "{condition}"
    );
    assert_eq!(parameter_default(&template, "AlarmEmail"), "");
    // An AWS managed key would stop CloudWatch from publishing: the topic has its own.
    let key = text(&template["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"]);
    assert_eq!(key, "${AlarmTopicKey}");
}

/// A dashboard metric row: namespace, name, sorted dimension pairs.
type MetricRow = (String, String, Vec<(String, String)>);

/// The dashboard body with the numeric parameters (unquoted in the JSON) replaced by their
/// defaults; every other `${…}` stays inside its string.
fn dashboard(template: &Value) -> serde_json::Value {
    let mut body = text(&template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]);
    for param in [
        "SignatureFailureAlarmThreshold",
        "QueueAgeAlarmSeconds",
        "KeapQuotaAlarmPercent",
    ] {
        body = body.replace(
            &format!("${{{param}}}"),
            &parameter_default(template, param),
        );
    }
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("dashboard body is not JSON: {e}"))
}

#[test]
fn the_dashboard_shows_every_alarm_and_its_metric() {
    let template = template();
    let body = dashboard(&template);
    let widgets = body["widgets"].as_array().expect("widgets");
    let alarm_arns: BTreeSet<String> = widgets
        .iter()
        .filter(|w| w["type"] == "alarm")
        .flat_map(|w| w["properties"]["alarms"].as_array().into_iter().flatten())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    // Metric rows: [namespace, name, key, value, …, {options}?].
    let rows: Vec<MetricRow> = widgets
        .iter()
        .filter(|w| w["type"] == "metric")
        .flat_map(|w| w["properties"]["metrics"].as_array().into_iter().flatten())
        .filter_map(|row| {
            let parts: Vec<&str> = row.as_array()?.iter().filter_map(|v| v.as_str()).collect();
            let (ns, rest) = parts.split_first()?;
            let (name, dims) = rest.split_first()?;
            let mut dims: Vec<(String, String)> = dims
                .chunks(2)
                .filter(|c| c.len() == 2)
                .map(|c| (c[0].to_owned(), c[1].to_owned()))
                .collect();
            dims.sort();
            Some(((*ns).to_owned(), (*name).to_owned(), dims))
        })
        .collect();
    for e in expected() {
        assert!(
            alarm_arns.contains(&format!("${{{}.Arn}}", e.id)),
            "{} missing from the alarm widget",
            e.id
        );
        let dims = e.sorted_dimensions();
        assert!(
            rows.iter()
                .any(|(ns, name, d)| ns == e.namespace && name == e.metric && *d == dims),
            "{}: no widget shows {} {} {:?}",
            e.id,
            e.namespace,
            e.metric,
            dims
        );
    }
    let output = text(&template["Outputs"]["DashboardUrl"]["Value"]);
    assert!(
        output.contains("cloudwatch") && output.contains("${Dashboard}"),
        "{output}"
    );
}

#[test]
fn the_operations_runbook_has_an_entry_for_every_alarm() {
    let operations = std::fs::read_to_string(repo_root().join("docs/operations.md"))
        .expect("docs/operations.md");
    let runbook = operations
        .split("\n## Alarms\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/operations.md has an Alarms section");
    for e in expected() {
        let heading = format!("#### `{}`", e.id);
        let entry = runbook
            .split(&heading)
            .nth(1)
            .unwrap_or_else(|| panic!("docs/operations.md runbook has no {heading}"));
        let entry = entry.split("#### ").next().unwrap_or_default();
        for part in ["**Means**", "**Check**", "**Fix**"] {
            assert!(entry.contains(part), "{}: runbook entry lacks {part}", e.id);
        }
    }
}

#[test]
fn functions_log_json_with_retention_and_optional_tracing() {
    let template = template();
    for (id, function) in of_type(&template, "AWS::Serverless::Function") {
        let logging = &function["Properties"]["LoggingConfig"];
        assert_eq!(text(&logging["LogFormat"]), "JSON", "{id}");
        // EMF lines carry no `level`, so Lambda files them as INFO: a stricter application
        // level would drop every metric.
        let level = text(&logging["ApplicationLogLevel"]);
        assert!(
            ["TRACE", "DEBUG", "INFO"].contains(&level.as_str()),
            "{id}: {level}"
        );
        let group = text(&logging["LogGroup"]);
        let group = group.trim_start_matches("${").trim_end_matches('}');
        let retention = &template["Resources"][group]["Properties"]["RetentionInDays"];
        assert_eq!(text(retention), "${LogRetentionDays}", "{id}");
    }
    assert_eq!(parameter_default(&template, "LogRetentionDays"), "30");
    let tracing = format!("{:?}", template["Globals"]["Function"]["Tracing"]);
    assert!(
        tracing.contains("UseTracing") && tracing.contains("Active"),
        "{tracing}"
    );
    assert_eq!(parameter_default(&template, "EnableTracing"), "false");
}

#[test]
fn outputs_carry_what_operators_and_cks_need() {
    let template = template();
    for output in [
        "WebhookUrl",
        "WebhookQueueUrl",
        "WebhookQueueName",
        "DeadLetterQueueUrl",
        "DeadLetterQueueName",
        "IdempotencyTableName",
        "CustomersTableName",
        "KeapTokenTableName",
        "KeapCredentialsSecretArn",
        "SharedKeysSecretArn",
        "AlarmTopicArn",
        "DashboardUrl",
        "IngestFunctionName",
        "ProcessorFunctionName",
        "IngestLogGroupName",
        "ProcessorLogGroupName",
        "ReconcilerFunctionName",
        "ReconcilerLogGroupName",
    ] {
        assert!(
            !text(&template["Outputs"][output]["Value"]).is_empty(),
            "output {output}"
        );
    }
}

#[test]
fn the_samconfig_example_sets_only_real_parameters() {
    let template = template();
    let example = std::fs::read_to_string(repo_root().join("infra/samconfig.example.toml"))
        .expect("infra/samconfig.example.toml");
    let overrides = example
        .lines()
        .find_map(|l| l.trim().strip_prefix("parameter_overrides = "))
        .expect("parameter_overrides line");
    let names: Vec<&str> = overrides
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter_map(|item| item.trim().trim_matches('"').split('=').next())
        .filter(|n| !n.is_empty())
        .collect();
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        assert!(
            template["Parameters"].get(name).is_some(),
            "samconfig example sets {name}, which the template does not declare"
        );
    }
}

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
    // Active tracing unless turned off: the trace id is on every log line.
    assert_eq!(parameter_default(&template, "EnableTracing"), "true");
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
        "WebhookApiAccessLogGroupName",
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

/// The statements of a function's inline policy, with `!If [condition, a, b]` opened: each
/// statement with the condition it exists under (`None`: always; `Some("UseOAuth")`: only
/// then). A branch that is `!Ref AWS::NoValue` is no statement.
fn statements(function: &Value) -> Vec<(Option<String>, Value)> {
    let mut out = Vec::new();
    for statement in function["Properties"]["Policies"][0]["Statement"]
        .as_sequence()
        .expect("statements")
    {
        match statement {
            Value::Tagged(tagged) if tagged.tag == "!If" => {
                let parts = tagged.value.as_sequence().expect("!If takes a list");
                let condition = text(&parts[0]);
                for (branch, under) in [
                    (&parts[1], condition.clone()),
                    (&parts[2], format!("!{condition}")),
                ] {
                    if text(branch) != "${AWS::NoValue}" {
                        out.push((Some(under), branch.clone()));
                    }
                }
            }
            other => out.push((None, other.clone())),
        }
    }
    out
}

fn actions(statement: &Value) -> BTreeSet<String> {
    match &statement["Action"] {
        Value::Sequence(list) => list.iter().map(text).collect(),
        one => [text(one)].into(),
    }
}

/// Every resource a statement names, as text (`!If` branches included).
fn resources_of(statement: &Value) -> String {
    format!("{:?}", statement["Resource"])
}

#[test]
fn no_secret_value_is_a_parameter_or_an_environment_variable() {
    let template = template();
    let parameters = template["Parameters"].as_mapping().expect("Parameters");
    for (name, parameter) in parameters {
        let name = text(name);
        assert!(
            parameter.get("NoEcho").is_none(),
            "{name}: a NoEcho parameter is a secret passed through CloudFormation"
        );
        let secret_like = ["Key", "Secret", "Password", "Token"]
            .iter()
            .any(|word| name.contains(word));
        assert!(
            !secret_like || name.ends_with("SecretArn"),
            "{name} looks like a secret value; take the ARN of a secret instead"
        );
    }
    // The stack creates its secrets empty: no value goes through CloudFormation.
    let secrets = of_type(&template, "AWS::SecretsManager::Secret");
    assert!(secrets.len() >= 3, "{}", secrets.len());
    for (id, secret) in &secrets {
        let p = &secret["Properties"];
        assert!(
            p.get("SecretString").is_none() && p.get("GenerateSecretString").is_none(),
            "{id} is created with a value"
        );
        assert!(
            text(&secret["Condition"]).starts_with("Create"),
            "{id}: created only when no existing secret ARN is given"
        );
    }
    // Keys and client secret reach the functions only as secret ARNs.
    const INLINE: &[&str] = &[
        "CHARGIFY_SHARED_KEYS",
        "CHARGIFY_API_KEY",
        "KEAP_API_KEY",
        "KEAP_CLIENT_ID",
        "KEAP_CLIENT_SECRET",
    ];
    for (id, function) in of_type(&template, "AWS::Serverless::Function") {
        let env = &function["Properties"]["Environment"]["Variables"];
        for name in INLINE {
            assert!(
                env.get(*name).is_none(),
                "{id} declares {name}: keys are read from Secrets Manager only"
            );
        }
        if let Some(vars) = env.as_mapping() {
            for (name, value) in vars {
                if text(name).ends_with("_SECRET_ARN") {
                    let value = format!("{value:?}");
                    assert!(
                        value.contains("Secret") && value.contains("Existing"),
                        "{id}: {} is the stack's secret or the given one: {value}",
                        text(name)
                    );
                }
            }
        }
    }
}

#[test]
fn token_table_access_exists_only_in_oauth_mode_under_a_stack_key() {
    let template = template();
    let table = &template["Resources"]["KeapTokenTable"];
    assert_eq!(text(&table["Condition"]), "UseOAuth");
    let sse = &table["Properties"]["SSESpecification"];
    assert_eq!(text(&sse["SSEType"]), "KMS");
    assert_eq!(text(&sse["KMSMasterKeyId"]), "${KeapTokenKey}");
    let key = &template["Resources"]["KeapTokenKey"];
    assert_eq!(text(&key["Condition"]), "UseOAuth");
    assert_eq!(key["Properties"]["EnableKeyRotation"].as_bool(), Some(true));
    for (id, function) in of_type(&template, "AWS::Serverless::Function") {
        let env = format!("{:?}", function["Properties"]["Environment"]);
        for (condition, statement) in statements(function) {
            let resources = resources_of(&statement);
            if resources.contains("KeapTokenTable") || resources.contains("KeapTokenKey") {
                assert_eq!(
                    condition.as_deref(),
                    Some("UseOAuth"),
                    "{id}: token table access outside OAuth mode: {statement:?}"
                );
                assert_eq!(id, "ProcessorFunction", "only the processor reads tokens");
            }
        }
        if id != "ProcessorFunction" {
            assert!(!env.contains("KeapTokenTable"), "{id}");
        }
    }
    let processor = &template["Resources"]["ProcessorFunction"];
    let oauth: Vec<BTreeSet<String>> = statements(processor)
        .into_iter()
        .filter(|(c, _)| c.as_deref() == Some("UseOAuth"))
        .map(|(_, s)| actions(&s))
        .collect();
    assert!(
        oauth.iter().any(|a| a.contains("dynamodb:UpdateItem")),
        "{oauth:?}"
    );
    assert!(oauth.iter().any(|a| a.contains("kms:Decrypt")), "{oauth:?}");
    assert_eq!(
        text(&template["Outputs"]["KeapTokenTableName"]["Condition"]),
        "UseOAuth"
    );
}

#[test]
fn the_processor_may_write_exactly_what_its_stores_need() {
    let template = template();
    let processor = &template["Resources"]["ProcessorFunction"];
    let on = |table: &str| -> BTreeSet<String> {
        statements(processor)
            .into_iter()
            .filter(|(_, s)| resources_of(s).contains(&format!("\"{table}.Arn\"")))
            .flat_map(|(_, s)| actions(&s))
            .collect()
    };
    let set = |items: &[&str]| {
        items
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        on("IdempotencyTable"),
        set(&[
            "dynamodb:DeleteItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem"
        ])
    );
    assert_eq!(
        on("CustomersTable"),
        set(&["dynamodb:GetItem", "dynamodb:UpdateItem"])
    );
}

#[test]
fn the_identity_map_survives_stack_deletion_and_replacement() {
    let template = template();
    let customers = &template["Resources"]["CustomersTable"];
    assert_eq!(text(&customers["DeletionPolicy"]), "Retain");
    assert_eq!(text(&customers["UpdateReplacePolicy"]), "Retain");
}

#[test]
fn the_http_api_writes_json_access_logs_kept_as_long_as_the_function_logs() {
    let template = template();
    let settings = &template["Resources"]["WebhookApi"]["Properties"]["AccessLogSettings"];
    let group = text(&settings["DestinationArn"]);
    let group = group
        .trim_start_matches("${")
        .trim_end_matches('}')
        .trim_end_matches(".Arn");
    assert_eq!(
        text(&template["Resources"][group]["Properties"]["RetentionInDays"]),
        "${LogRetentionDays}"
    );
    let format: serde_json::Value = serde_json::from_str(&text(&settings["Format"]))
        .unwrap_or_else(|e| panic!("access log format is not JSON: {e}"));
    let values: BTreeSet<String> = format
        .as_object()
        .expect("a JSON object")
        .values()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    for wanted in [
        "$context.requestId",
        "$context.integration.requestId",
        "$context.status",
        "$context.responseLatency",
        "$context.identity.sourceIp",
    ] {
        assert!(values.contains(wanted), "access log lacks {wanted}");
    }
    // The query string can carry the signature; the body carries personal data.
    let all = format.to_string();
    for never in ["$context.path", "querystring", "$request.body"] {
        assert!(!all.contains(never), "access log records {never}");
    }
}

#[test]
fn ingest_has_reserved_concurrency_from_a_parameter() {
    let template = template();
    let ingest = &template["Resources"]["IngestFunction"]["Properties"];
    let reserved = format!("{:?}", ingest["ReservedConcurrentExecutions"]);
    assert!(
        reserved.contains("IngestReservedConcurrency")
            && reserved.contains("ReserveIngestConcurrency"),
        "{reserved}"
    );
    assert_eq!(
        parameter_default(&template, "IngestReservedConcurrency"),
        "10"
    );
}

#[test]
fn the_processor_gets_its_age_limits_and_the_queue_leaves_giving_up_to_it() {
    let template = template();
    let env = &template["Resources"]["ProcessorFunction"]["Properties"]["Environment"]["Variables"];
    for (variable, parameter, default) in [
        ("MAX_WEBHOOK_AGE_DAYS", "MaxWebhookAgeDays", "4"),
        ("MAX_EVENT_AGE_DAYS", "MaxEventAgeDays", "365"),
        ("SEEN_MARKER_DAYS", "SeenMarkerDays", "400"),
    ] {
        assert_eq!(text(&env[variable]), format!("${{{parameter}}}"));
        assert_eq!(parameter_default(&template, parameter), default);
    }
    let age = &template["Parameters"]["MaxWebhookAgeDays"];
    // Below the queue's 14-day retention, so the processor gives up before SQS drops it.
    assert_eq!(
        (text(&age["MinValue"]), text(&age["MaxValue"])),
        ("1".into(), "13".into())
    );
    let redrive = &template["Resources"]["WebhookQueue"]["Properties"]["RedrivePolicy"];
    assert_eq!(text(&redrive["maxReceiveCount"]), "1000");
}

//! The ops commands (`cks status`, `cks replay`, `cks dlq list|redrive`, `cks forget`) as an
//! operator runs them: the built `cks` binary against moto, on a CloudFormation stack
//! (created in moto with the output names of `template.yaml`) whose queues and tables were
//! filled by a real run of ingest and the processor against the Keap stand-in, including
//! webhooks Keap refused (400) that went to the dead-letter queue. Keap's effects are counted
//! at the stand-in.

use aws_sdk_sqs::types::QueueAttributeName;
use integration_tests::keap_standin::Fault;
use integration_tests::pipeline::Pipeline;
use integration_tests::{
    aws_config_for, drain, dynamodb_client, moto_endpoint, run_cks, sqs_client, unique_name,
    CksRun, ProcessorResources,
};
use serde_json::{json, Value};
use shared::fixtures;
use shared::rules::RuleSet;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A stack with the resources and output names of `template.yaml` that the commands read
/// (queues wired as the stack wires them), and only the outputs named in `outputs`.
async fn create_stack(name: &str, outputs: &[&str]) -> HashMap<String, String> {
    let all_outputs = json!({
        "WebhookQueueUrl": { "Value": { "Ref": "WebhookQueue" } },
        "DeadLetterQueueUrl": { "Value": { "Ref": "DeadLetterQueue" } },
        "IdempotencyTableName": { "Value": { "Ref": "IdempotencyTable" } },
        "CustomersTableName": { "Value": { "Ref": "CustomersTable" } },
    });
    let template = json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            "DeadLetterQueue": {
                "Type": "AWS::SQS::Queue",
                "Properties": { "QueueName": format!("{name}-dlq.fifo"), "FifoQueue": true }
            },
            "WebhookQueue": {
                "Type": "AWS::SQS::Queue",
                "Properties": {
                    "QueueName": format!("{name}.fifo"),
                    "FifoQueue": true,
                    "ContentBasedDeduplication": false,
                    "RedrivePolicy": {
                        "deadLetterTargetArn": { "Fn::GetAtt": ["DeadLetterQueue", "Arn"] },
                        "maxReceiveCount": 5
                    }
                }
            },
            "IdempotencyTable": {
                "Type": "AWS::DynamoDB::Table",
                "Properties": {
                    "BillingMode": "PAY_PER_REQUEST",
                    "AttributeDefinitions": [{ "AttributeName": "pk", "AttributeType": "S" }],
                    "KeySchema": [{ "AttributeName": "pk", "KeyType": "HASH" }],
                    "TimeToLiveSpecification": { "AttributeName": "expires_at", "Enabled": true }
                }
            },
            "CustomersTable": {
                "Type": "AWS::DynamoDB::Table",
                "Properties": {
                    "BillingMode": "PAY_PER_REQUEST",
                    "AttributeDefinitions": [{ "AttributeName": "pk", "AttributeType": "S" }],
                    "KeySchema": [{ "AttributeName": "pk", "KeyType": "HASH" }]
                }
            }
        },
        "Outputs": outputs.iter().map(|o| (o.to_string(), all_outputs[o].clone())).collect::<serde_json::Map<_, _>>(),
    });
    // moto imports its CloudFormation engine on the first stack call, which can take tens of
    // seconds on a busy machine; `tests/run.sh` warms it up, and this client waits longer than
    // the 5 s the other test clients allow, so a slow first call is not a failure.
    let config =
        aws_sdk_cloudformation::config::Builder::from(&aws_config_for(&moto_endpoint()).await)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(std::time::Duration::from_secs(120))
                    .build(),
            )
            .build();
    let client = aws_sdk_cloudformation::Client::from_conf(config);
    client
        .create_stack()
        .stack_name(name)
        .template_body(template.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("create stack {name} in moto: {e:?}"));
    let described = client
        .describe_stacks()
        .stack_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("describe stack {name}: {e:?}"));
    described
        .stacks()
        .first()
        .map(|s| {
            s.outputs()
                .iter()
                .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A stack with every output the commands read, and the pipeline on its queues and tables;
/// returns the stack's name and a DynamoDB client for reading the tables.
async fn stack_with_pipeline(prefix: &str) -> (String, Pipeline, aws_sdk_dynamodb::Client) {
    let endpoint = moto_endpoint();
    let name = unique_name(prefix);
    let outputs = create_stack(
        &name,
        &[
            "WebhookQueueUrl",
            "DeadLetterQueueUrl",
            "IdempotencyTableName",
            "CustomersTableName",
        ],
    )
    .await;
    let dynamodb = dynamodb_client(&endpoint).await;
    let pipeline = Pipeline::on(
        RuleSet::default_rules().expect("rules"),
        ProcessorResources {
            sqs: sqs_client(&endpoint).await,
            queue_url: outputs["WebhookQueueUrl"].clone(),
            dead_letter_url: outputs["DeadLetterQueueUrl"].clone(),
            idempotency_table: outputs["IdempotencyTableName"].clone(),
            customers_table: outputs["CustomersTableName"].clone(),
            dynamodb: dynamodb.clone(),
        },
    )
    .await;
    (name, pipeline, dynamodb)
}

/// `cks` with no stack or site from the environment.
async fn cks(args: &[&str]) -> CksRun {
    run_cks(args, &[("CKS_STACK", None), ("CKS_SITE", None)]).await
}

/// `cks` that must succeed; returns its stdout.
async fn cks_ok(args: &[&str]) -> String {
    let run = cks(args).await;
    assert!(
        run.ok,
        "cks {args:?} failed:\n{}\n{}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// A signup of its own customer (own id and email, so it gets its own Keap contact).
fn signup(webhook_id: &str, customer_id: &str) -> String {
    fixtures::derive(
        fixtures::SIGNUP_SUCCESS,
        webhook_id,
        "signup_success",
        &[
            ("payload[subscription][customer][id]", customer_id),
            (
                "payload[subscription][customer][email]",
                &format!("customer{customer_id}%40example.com"),
            ),
        ],
    )
}

async fn queue_counts(pipeline: &Pipeline, url: &str) -> (String, String) {
    let attributes = pipeline
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .unwrap_or_default();
    let get = |name: QueueAttributeName| attributes.get(&name).cloned().unwrap_or_default();
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Goals Keap saw, per contact.
fn goals_per_contact(pipeline: &Pipeline) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for (_, _, contact) in &pipeline.keap.state().goals {
        *counts.entry(*contact).or_insert(0) += 1;
    }
    counts
}

fn contacts(pipeline: &Pipeline) -> usize {
    pipeline.keap.state().contacts.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_commands_on_a_stack_filled_by_a_real_run() {
    let (name, pipeline, _) = stack_with_pipeline("cks-ops").await;
    let stack = ["--stack", name.as_str()];
    let with_stack = |args: &[&str]| -> Vec<String> {
        args.iter()
            .copied()
            .chain(stack)
            .map(str::to_owned)
            .collect()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cks(&args).await
    };
    let run_ok = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cks_ok(&args).await
    };

    // The run: webhook 5 applies; Keap refuses the contacts of 90 and, later, 91 (400), so
    // both are dead-lettered with their records FAILED.
    assert_eq!(pipeline.post(fixtures::SIGNUP_SUCCESS).await, 200);
    assert!(pipeline.drain_through_processor().await.is_empty());
    pipeline
        .keap
        .inject_on("PUT", "/v1/contacts", Fault::Status(400));
    assert_eq!(pipeline.post(&signup("90", "16")).await, 200);
    assert!(pipeline.drain_through_processor().await.is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = OffsetDateTime::now_utc().format(&Rfc3339).expect("a time");
    tokio::time::sleep(Duration::from_millis(50)).await;
    pipeline
        .keap
        .inject_on("PUT", "/v1/contacts", Fault::Status(400));
    assert_eq!(pipeline.post(&signup("91", "17")).await, 200);
    assert!(pipeline.drain_through_processor().await.is_empty());
    assert!(
        pipeline.keap.state().targeted_faults.is_empty(),
        "both 400s were served"
    );
    assert_eq!(contacts(&pipeline), 1);
    assert_eq!(pipeline.goals(), ["chargify/signup"]);

    // status: found by webhook id alone (a scan), resources from the stack's outputs.
    let status = run_ok(with_stack(&["status", "5"])).await;
    for shown in [
        "acme-test#5",
        "signup_success",
        "COMPLETED",
        "goal:chargify/signup",
    ] {
        assert!(status.contains(shown), "{shown} in:\n{status}");
    }
    let failed = run_ok(with_stack(&[
        "status",
        "90",
        "--site",
        "acme-test",
        "--json",
    ]))
    .await;
    let failed: Value = serde_json::from_str(&failed).expect("one JSON object");
    assert_eq!(failed["status"], "FAILED");
    assert_eq!(failed["event"], "signup_success");
    assert_eq!(failed["envelope_stored"], true);
    assert_eq!(failed["steps_done"], json!([]));
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("400")),
        "{failed}"
    );
    assert!(
        failed.get("raw_body").is_none(),
        "no body unless asked: {failed}"
    );
    assert!(!failed.to_string().contains("example.com"), "{failed}");
    let shown = run_ok(with_stack(&["status", "acme-test#90", "--show-body"])).await;
    assert!(shown.contains("customer16%40example.com"), "{shown}");
    let missing = run(with_stack(&["status", "404"])).await;
    assert!(missing
        .one_error_line()
        .contains("no idempotency record for webhook 404"));

    // dlq list shows both dead letters, twice, and leaves them visible on the queue.
    for _ in 0..2 {
        let listed = run_ok(with_stack(&["dlq", "list"])).await;
        for shown in [
            "acme-test#90",
            "acme-test#91",
            "keap_permanent",
            "2 dead letter(s) listed",
        ] {
            assert!(listed.contains(shown), "{shown} in:\n{listed}");
        }
        assert!(!listed.contains("example.com"), "{listed}");
    }
    assert_eq!(
        queue_counts(&pipeline, &pipeline.dead_letter_url).await,
        ("2".to_owned(), "0".to_owned()),
        "listing consumed nothing and hid nothing"
    );
    // The same with the queue given by flag and no stack at all.
    let by_flag = cks(&[
        "dlq",
        "list",
        "--json",
        "--stack",
        "no-such-stack",
        "--dead-letter-queue-url",
        &pipeline.dead_letter_url,
    ])
    .await;
    assert!(by_flag.ok, "{}", by_flag.stderr);
    let letters = by_flag.json_lines();
    assert_eq!(letters.len(), 2, "{}", by_flag.stdout);
    assert!(letters
        .iter()
        .all(|l| l["failure_code"] == "keap_permanent"));

    // replay --since picks the unfinished records received since then: 91, not 90 or 5.
    let chosen = run_ok(with_stack(&["replay", "--dry-run", "--since", &since])).await;
    assert!(chosen.contains("acme-test#91"), "{chosen}");
    assert!(
        !chosen.contains("acme-test#90") && !chosen.contains("acme-test#5 "),
        "{chosen}"
    );
    assert!(chosen.contains("1 record(s) received since"), "{chosen}");

    // A completed record is refused without --force, and nothing is sent.
    let refused = run(with_stack(&["replay", "5"])).await;
    let line = refused.one_error_line();
    assert!(
        line.contains("acme-test#5") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(pipeline.invoke().await, None, "nothing was sent");

    // The fault is gone: replaying the dead-lettered 90 applies it, once.
    let replayed = run_ok(with_stack(&["replay", "90"])).await;
    assert!(replayed.contains("replayed acme-test#90"), "{replayed}");
    assert!(pipeline.drain_through_processor().await.is_empty());
    assert_eq!(contacts(&pipeline), 2);
    assert_eq!(pipeline.goals().len(), 2);
    let status = run_ok(with_stack(&["status", "90"])).await;
    assert!(status.contains("COMPLETED"), "{status}");

    // dlq redrive: a dry run moves nothing; the redrive empties the queue; the processor then
    // drops 90's letter as a duplicate and applies 91 once.
    let dry = run_ok(with_stack(&["dlq", "redrive", "--dry-run"])).await;
    assert!(dry.contains("2 dead letter(s) would be redriven"), "{dry}");
    assert_eq!(
        queue_counts(&pipeline, &pipeline.dead_letter_url).await,
        ("2".to_owned(), "0".to_owned())
    );
    let moved = run_ok(with_stack(&["dlq", "redrive"])).await;
    assert!(moved.contains("moved 2 dead letter(s)"), "{moved}");
    assert!(drain(&pipeline.sqs, &pipeline.dead_letter_url)
        .await
        .is_empty());
    assert!(pipeline.drain_through_processor().await.is_empty());
    assert_eq!(contacts(&pipeline), 3);
    assert_eq!(
        goals_per_contact(&pipeline)
            .into_values()
            .collect::<Vec<_>>(),
        [1, 1, 1],
        "each webhook's goal fired once"
    );
    let again = run_ok(with_stack(&["dlq", "redrive"])).await;
    assert!(again.contains("moved 0 dead letter(s)"), "{again}");

    // Everything is done: --since finds nothing to replay, unless forced.
    let nothing = run_ok(with_stack(&["replay", "--since", &since])).await;
    assert!(nothing.contains("replayed 0 of 0"), "{nothing}");
    let forced = run_ok(with_stack(&[
        "replay",
        "--force",
        "--dry-run",
        "--since",
        &since,
    ]))
    .await;
    assert!(
        forced.contains("would reopen and send acme-test#91"),
        "{forced}"
    );
    assert!(forced.contains("1 record(s)"), "{forced}");

    // A forced replay of 5 reopens it and applies it again: the contact is read back from
    // Keap and whatever differs is written again, but the goal, a step already done, does
    // not fire twice.
    let calls = pipeline.keap.state().calls.len();
    let forced = run_ok(with_stack(&["replay", "5", "--force"])).await;
    assert!(
        forced.contains("replayed acme-test#5") && forced.contains("reopened"),
        "{forced}"
    );
    let reopened = run_ok(with_stack(&["status", "5"])).await;
    assert!(
        reopened.contains("FAILED") && reopened.contains("reopened by"),
        "{reopened}"
    );
    assert!(pipeline.drain_through_processor().await.is_empty());
    assert!(pipeline.keap.state().calls.len() > calls, "applied again");
    assert_eq!(
        goals_per_contact(&pipeline)
            .into_values()
            .collect::<Vec<_>>(),
        [1, 1, 1]
    );
    let done: Value =
        serde_json::from_str(&run_ok(with_stack(&["status", "5", "--json"])).await).expect("JSON");
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["attempts"], 2);
    pipeline.assert_no_violations();
}

#[tokio::test]
async fn a_missing_stack_output_or_credentials_is_one_line_naming_what_to_set() {
    let absent = unique_name("no-such-stack");
    let run = cks(&["status", "5", "--stack", &absent]).await;
    let line = run.one_error_line();
    assert!(
        line.contains(&format!("stack {absent} not found in region us-east-1"))
            && line.contains("CKS_STACK"),
        "{line}"
    );
    // CKS_STACK names the stack too.
    let run = run_cks(&["dlq", "list"], &[("CKS_STACK", Some(&absent))]).await;
    assert!(run.one_error_line().contains(&absent));

    // A stack without the table's output: the commands that need it say which output and
    // flag; those that do not, work.
    let partial = unique_name("cks-partial");
    create_stack(&partial, &["WebhookQueueUrl", "DeadLetterQueueUrl"]).await;
    let run = cks(&["replay", "5", "--stack", &partial]).await;
    let line = run.one_error_line();
    assert!(
        line.contains("has no output IdempotencyTableName") && line.contains("--idempotency-table"),
        "{line}"
    );
    let listed = cks_ok(&["dlq", "list", "--stack", &partial]).await;
    assert!(listed.contains("0 dead letter(s) listed"), "{listed}");
    // forget needs all three of its resources before it removes anything.
    let run = cks(&["forget", "jane@example.com", "--stack", &partial]).await;
    assert!(run
        .one_error_line()
        .contains("has no output IdempotencyTableName"));
    let run = cks(&[
        "forget",
        "jane@example.com",
        "--stack",
        &partial,
        "--idempotency-table",
        "t",
    ])
    .await;
    let line = run.one_error_line();
    assert!(
        line.contains("has no output CustomersTableName") && line.contains("--customers-table"),
        "{line}"
    );
    let run = cks(&["forget", "jane@example.com", "--stack", &absent]).await;
    let line = run.one_error_line();
    assert!(
        line.contains(&format!("stack {absent} not found")) && line.contains("--customers-table"),
        "{line}"
    );
    // An argument that names nobody is refused before any AWS call, and not repeated.
    let run = cks(&["forget", "Jane Quorra", "--stack", &absent]).await;
    let line = run.one_error_line();
    assert!(
        line.contains("email address") && !line.contains("Quorra"),
        "{line}"
    );

    let run = run_cks(
        &["status", "5", "--stack", &partial],
        &[
            ("AWS_ACCESS_KEY_ID", None),
            ("AWS_SECRET_ACCESS_KEY", None),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                Some("/nonexistent/credentials"),
            ),
            ("AWS_CONFIG_FILE", Some("/nonexistent/config")),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", None),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", None),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", None),
        ],
    )
    .await;
    let line = run.one_error_line();
    assert!(
        line.contains("no AWS credentials found") && line.contains("AWS_PROFILE"),
        "{line}"
    );

    // A --since that means nothing is refused before any AWS call.
    let run = cks(&["replay", "--since", "yesterday", "--stack", &absent]).await;
    assert!(run.one_error_line().contains("--since \"yesterday\""));
}

/// A webhook of customer `customer` (form-encoded `email`, first and last name), posted as
/// `signup_success` with its own webhook id.
fn webhook_of(webhook_id: &str, customer: &str, email: &str, names: (&str, &str)) -> String {
    fixtures::derive(
        fixtures::SIGNUP_SUCCESS,
        webhook_id,
        "signup_success",
        &[
            ("payload[subscription][customer][id]", customer),
            ("payload[subscription][customer][email]", email),
            ("payload[subscription][customer][first_name]", names.0),
            ("payload[subscription][customer][last_name]", names.1),
        ],
    )
}

/// Every item of `table` as its key and the text of all its values.
async fn table_items(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Vec<(String, String)> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = dynamodb
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .consistent_read(true)
            .send()
            .await
            .unwrap_or_else(|e| panic!("scan {table}: {e:?}"));
        for item in page.items() {
            let pk = match item.get("pk") {
                Some(AttributeValue::S(pk)) => pk.clone(),
                other => panic!("an item without a string pk: {other:?}"),
            };
            let values: Vec<String> = item
                .values()
                .map(|value| match value {
                    AttributeValue::S(s) | AttributeValue::N(s) => s.clone(),
                    AttributeValue::Ss(set) => set.join(" "),
                    other => format!("{other:?}"),
                })
                .collect();
            items.push((pk, values.join(" ")));
        }
        start = page.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            return items;
        }
    }
}

/// Jane's personal data: her addresses as typed and as Chargify encodes them, her last name.
const JANE_DATA: [&str; 5] = [
    "jane.doe@example.com",
    "jane.doe%40example.com",
    "jane.old@example.com",
    "jane.old%40example.com",
    "quorra",
];

/// Jane's customer id (7001) in keys, envelopes, bodies and FIFO groups.
const JANE_IDS: [&str; 4] = [
    "acme-test#7001",
    "\"customer_id\":\"7001\"",
    "[customer][id]=7001",
    ":cus:7001",
];

/// The first of `traces` in `text`, in any case.
fn trace_in(text: &str, traces: &[&'static str]) -> Option<&'static str> {
    let text = text.to_lowercase();
    traces.iter().copied().find(|trace| text.contains(trace))
}

/// Any trace of Jane in a stored item or message.
fn names_jane(text: &str) -> Option<&'static str> {
    trace_in(text, &JANE_DATA).or_else(|| trace_in(text, &JANE_IDS))
}

/// `cks forget <email>` on a stack filled by a real run: Jane's records (her current address
/// in two cases, and an earlier address found through her customer id), her identity-map
/// entry and her dead letter go; Bob's stay; Keap is not called; a dry run removes nothing;
/// a second run finds nothing; and a scan of both tables and a drain of the dead-letter queue
/// find no trace of her but the seen markers, which hold only the webhook's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_removes_one_person_and_nothing_else() {
    let (name, pipeline, dynamodb) = stack_with_pipeline("cks-forget").await;
    let (idempotency_table, customers_table) =
        (&pipeline.idempotency_table, &pipeline.customers_table);
    let jane = ("Janelle", "Quorra");
    let bob = ("Roberto", "Smith");

    // Each customer's first webhook is refused by Keap (400): FAILED and dead-lettered.
    // Then each applies one; Jane's last one carries the address she had before.
    for body in [
        webhook_of("2001", "7001", "Jane.Doe%40Example.com", jane),
        webhook_of("2101", "7002", "bob%40example.com", bob),
    ] {
        pipeline
            .keap
            .inject_on("PUT", "/v1/contacts", Fault::Status(400));
        assert_eq!(pipeline.post(&body).await, 200);
        assert!(pipeline.drain_through_processor().await.is_empty());
    }
    for body in [
        webhook_of("2002", "7001", "jane.doe%40example.com", jane),
        webhook_of("2003", "7001", "jane.old%40example.com", jane),
        webhook_of("2102", "7002", "bob%40example.com", bob),
    ] {
        assert_eq!(pipeline.post(&body).await, 200);
        assert!(pipeline.drain_through_processor().await.is_empty());
    }
    assert!(pipeline.keap.state().targeted_faults.is_empty());
    assert_eq!(contacts(&pipeline), 2);
    let keys = |items: &[(String, String)]| -> Vec<String> {
        let mut keys: Vec<String> = items.iter().map(|(pk, _)| pk.clone()).collect();
        keys.sort();
        keys
    };
    // The customers table also holds the tag-creation locks (`lock#…`): no customer's.
    let customer_keys = |items: &[(String, String)]| -> Vec<String> {
        keys(items)
            .into_iter()
            .filter(|pk| !pk.starts_with("lock#"))
            .collect()
    };
    let records_before = table_items(&dynamodb, idempotency_table).await;
    for record in [
        "acme-test#2001",
        "acme-test#2002",
        "acme-test#2003",
        "acme-test#2101",
        "acme-test#2102",
    ] {
        assert!(
            keys(&records_before).contains(&record.to_owned()),
            "{record}"
        );
    }
    assert_eq!(
        customer_keys(&table_items(&dynamodb, customers_table).await),
        ["acme-test#7001", "acme-test#7002"]
    );
    assert_eq!(
        queue_counts(&pipeline, &pipeline.dead_letter_url).await,
        ("2".to_owned(), "0".to_owned())
    );

    let stack = ["--stack", name.as_str()];
    let forget = |extra: &'static [&'static str]| {
        let mut args = vec!["forget", "JANE.DOE@example.com"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&stack);
        async move { cks_ok(&args).await }
    };
    let calls = pipeline.keap.state().calls.len();

    // A dry run lists exactly Jane's, and removes nothing.
    let dry = forget(&["--dry-run"]).await;
    for line in [
        "idempotency records: would remove 3: acme-test#2001, acme-test#2002, acme-test#2003",
        "identity map: would remove 1: acme-test#7001",
        "dead letters: would remove 1: ",
        "kept: the seen markers",
        "not touched: Keap",
    ] {
        assert!(dry.contains(line), "{line} in:\n{dry}");
    }
    // Keys only: the customer key, never her email or name.
    assert!(
        trace_in(&dry, &JANE_DATA).is_none() && !dry.contains("example.com"),
        "{dry}"
    );
    assert_eq!(
        table_items(&dynamodb, idempotency_table).await.len(),
        records_before.len()
    );
    assert_eq!(
        customer_keys(&table_items(&dynamodb, customers_table).await).len(),
        2
    );
    assert_eq!(
        queue_counts(&pipeline, &pipeline.dead_letter_url).await,
        ("2".to_owned(), "0".to_owned()),
        "a dry run consumes and hides nothing"
    );

    // The run: the same, removed.
    let done = forget(&[]).await;
    eprintln!("cks forget printed:\n{done}");
    for line in [
        "idempotency records: removed 3: acme-test#2001, acme-test#2002, acme-test#2003",
        "identity map: removed 1: acme-test#7001",
        "dead letters: removed 1: ",
    ] {
        assert!(done.contains(line), "{line} in:\n{done}");
    }
    assert!(
        trace_in(&done, &JANE_DATA).is_none() && !done.contains("example.com"),
        "{done}"
    );
    assert_eq!(
        pipeline.keap.state().calls.len(),
        calls,
        "Keap is not called"
    );
    assert_eq!(
        contacts(&pipeline),
        2,
        "Keap's contacts are the account owner's"
    );

    // Again, as JSON: nothing left to find.
    let again: Value = serde_json::from_str(&forget(&["--json"]).await).expect("one JSON object");
    assert_eq!(again["dry_run"], false);
    assert_eq!(again["person"], "email");
    for kind in ["records", "customers", "dead_letters", "records_busy"] {
        assert_eq!(again[kind], json!([]), "{kind}: {again}");
    }
    assert_eq!(again["failed"], 0);

    // Bob is untouched.
    let records_after = table_items(&dynamodb, idempotency_table).await;
    for kept in ["acme-test#2101", "acme-test#2102"] {
        assert!(keys(&records_after).contains(&kept.to_owned()), "{kept}");
    }
    assert_eq!(
        customer_keys(&table_items(&dynamodb, customers_table).await),
        ["acme-test#7002"]
    );

    // Nothing about Jane remains, but the seen markers of her applied webhooks: the key and
    // an expiry.
    for (pk, text) in &records_after {
        if let Some(trace) = names_jane(text) {
            panic!("{pk} still names Jane ({trace}): {text}");
        }
        if pk.starts_with("seen#") {
            assert!(!text.contains("example.com"), "{pk}: {text}");
        }
    }
    for marker in ["seen#acme-test#2002", "seen#acme-test#2003"] {
        assert!(
            keys(&records_after).contains(&marker.to_owned()),
            "{marker} is kept"
        );
    }
    for (pk, text) in table_items(&dynamodb, customers_table).await {
        assert!(
            names_jane(&pk).is_none() && names_jane(&text).is_none(),
            "{pk}"
        );
    }
    let letters = drain(&pipeline.sqs, &pipeline.dead_letter_url).await;
    assert_eq!(letters.len(), 1, "Bob's dead letter stays");
    for letter in &letters {
        assert!(
            letter.body.contains("\"webhook_id\":\"2101\""),
            "{}",
            letter.body
        );
        for text in [&letter.body, &letter.group_id, &letter.deduplication_id] {
            assert!(names_jane(text).is_none(), "{text}");
        }
    }
    assert!(drain(&pipeline.sqs, &pipeline.queue_url).await.is_empty());
    pipeline.assert_no_violations();
}

//! Tests of the CloudFormation template `deploy/imagetag.yaml` and of the
//! harness in `tests/support` that deploys it into moto.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{BillingMode, KeySchemaElement, Projection, TableDescription};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Value as Json, json};

use support::{ACCOUNT_ID, Moto, deploy, load_template, template_path, unique_prefix, venv_bin};

const OUTPUTS: &[&str] = &[
    "BucketName",
    "TopicArn",
    "EventsQueueUrl",
    "EventsDeadLetterQueueUrl",
    "TagQueueUrl",
    "TagDeadLetterQueueUrl",
    "IndexQueueUrl",
    "IndexDeadLetterQueueUrl",
    "ImagesTableName",
    "PostingsTableName",
    "TagsTableName",
];

/// Output, role resource and service-account suffix of each IRSA role.
const ROLES: &[(&str, &str, &str)] = &[
    ("IngestRoleArn", "IngestRole", "ingest"),
    ("TaggerRoleArn", "TaggerRole", "tagger"),
    ("IndexerRoleArn", "IndexerRole", "indexer"),
    ("QueryRoleArn", "QueryRole", "query"),
];

/// Each work queue with its dead-letter queue.
const QUEUES: &[(&str, &str)] = &[
    ("EventsQueueUrl", "EventsDeadLetterQueueUrl"),
    ("TagQueueUrl", "TagDeadLetterQueueUrl"),
    ("IndexQueueUrl", "IndexDeadLetterQueueUrl"),
];

#[test]
fn template_passes_cfn_lint() {
    let cfn_lint = venv_bin("cfn-lint");
    let output = Command::new(&cfn_lint)
        .arg(template_path())
        .output()
        .expect("cfn-lint runs");
    assert!(
        output.status.success(),
        "cfn-lint exited with {} (warnings count as failures):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn template_exports_every_output_under_the_prefix() {
    let template = load_template();
    let outputs = template["Outputs"]
        .as_object()
        .expect("template has Outputs");
    let mut expected: Vec<&str> = OUTPUTS.to_vec();
    expected.extend(ROLES.iter().map(|(output, _, _)| *output));
    let mut declared: Vec<&str> = outputs.keys().map(String::as_str).collect();
    declared.sort_unstable();
    expected.sort_unstable();
    assert_eq!(declared, expected);

    for (name, output) in outputs {
        assert_eq!(
            output["Export"]["Name"],
            json!({ "Fn::Sub": format!("${{Prefix}}-{name}") }),
            "export name of output {name}"
        );
    }
    for (output, role, _) in ROLES {
        assert_eq!(outputs[*output]["Condition"], "HasOidc", "output {output}");
        assert_eq!(
            template["Resources"][*role]["Condition"], "HasOidc",
            "{role}"
        );
    }
    for policy in [
        "IngestPolicy",
        "TaggerPolicy",
        "IndexerPolicy",
        "QueryPolicy",
    ] {
        let resource = &template["Resources"][policy];
        assert_eq!(resource["Type"], "AWS::IAM::ManagedPolicy", "{policy}");
        assert!(
            resource.get("Condition").is_none(),
            "{policy} must be unconditional"
        );
    }
}

#[tokio::test]
async fn stack_deploys_into_moto_and_wires_s3_to_sqs() {
    let moto = Moto::start().await;
    let prefix = unique_prefix("deploy");
    let stack = deploy(
        &moto,
        &prefix,
        &[("MaxReceiveCount", "3"), ("TagVisibilityTimeout", "240")],
    )
    .await;
    for output in OUTPUTS {
        assert!(!stack.output(output).is_empty(), "output {output} is empty");
    }
    for (output, _, _) in ROLES {
        assert!(
            !stack.outputs.contains_key(*output),
            "{output} must not exist without an OIDC provider"
        );
    }

    let s3 = moto.s3_client().await;
    let sqs = moto.sqs_client().await;
    let sns = moto.sns_client().await;

    // The policies the harness applied from the template.
    let topic = sns
        .get_topic_attributes()
        .topic_arn(stack.output("TopicArn"))
        .send()
        .await
        .expect("GetTopicAttributes");
    let topic_policy = topic
        .attributes()
        .and_then(|a| a.get("Policy"))
        .expect("topic has a policy");
    assert!(
        topic_policy.contains("s3.amazonaws.com"),
        "topic policy: {topic_policy}"
    );
    let events_queue = queue_attributes(&sqs, stack.output("EventsQueueUrl")).await;
    assert!(
        events_queue["Policy"].contains("sns.amazonaws.com"),
        "queue policy: {}",
        events_queue["Policy"]
    );

    // S3 -> SNS -> SQS, keeping the SNS envelope.
    let bucket = stack.output("BucketName");
    let key = "uploads/deploy smoke.jpg";
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .content_type("image/jpeg")
        .body(ByteStream::from_static(b"not really a jpeg"))
        .send()
        .await
        .expect("PutObject");
    let (envelope, record) =
        wait_for_object_created(&sqs, stack.output("EventsQueueUrl"), key).await;
    assert_eq!(envelope["Type"], "Notification");
    assert_eq!(envelope["TopicArn"], stack.output("TopicArn"));
    assert_eq!(record["s3"]["bucket"]["name"], bucket);

    // Each work queue redrives into its own dead-letter queue.
    for (queue, dead_letter) in QUEUES {
        let attributes = queue_attributes(&sqs, stack.output(queue)).await;
        let dlq = queue_attributes(&sqs, stack.output(dead_letter)).await;
        let redrive: Json = serde_json::from_str(
            attributes
                .get("RedrivePolicy")
                .unwrap_or_else(|| panic!("{queue} has no RedrivePolicy")),
        )
        .expect("RedrivePolicy is JSON");
        assert_eq!(redrive["deadLetterTargetArn"], dlq["QueueArn"], "{queue}");
        assert_eq!(text(&redrive["maxReceiveCount"]), "3", "{queue}");
        assert_eq!(attributes["ReceiveMessageWaitTimeSeconds"], "20", "{queue}");
        assert_eq!(dlq["MessageRetentionPeriod"], "1209600", "{dead_letter}");
        assert!(!dlq.contains_key("RedrivePolicy"), "{dead_letter}");
    }
    let tag_queue = queue_attributes(&sqs, stack.output("TagQueueUrl")).await;
    assert_eq!(tag_queue["VisibilityTimeout"], "240");

    // Tables and their indexes.
    let dynamodb = moto.dynamodb_client().await;
    let images = describe_table(&dynamodb, stack.output("ImagesTableName")).await;
    assert_eq!(keys(images.key_schema()), [("image_id", "HASH")]);
    assert_eq!(
        global_indexes(&images),
        BTreeMap::from([(
            "by-status".to_owned(),
            index(&[("status", "HASH"), ("updated_at", "RANGE")], "ALL")
        )])
    );
    assert_eq!(
        attribute_types(&images),
        types(&[("image_id", "S"), ("status", "S"), ("updated_at", "S")])
    );

    let postings = describe_table(&dynamodb, stack.output("PostingsTableName")).await;
    assert_eq!(
        keys(postings.key_schema()),
        [("term", "HASH"), ("image_id", "RANGE")]
    );
    assert_eq!(
        local_indexes(&postings),
        BTreeMap::from([(
            "by-confidence".to_owned(),
            index(&[("term", "HASH"), ("confidence", "RANGE")], "KEYS_ONLY")
        )])
    );
    assert!(global_indexes(&postings).is_empty());
    assert_eq!(
        attribute_types(&postings),
        types(&[("term", "S"), ("image_id", "S"), ("confidence", "N")])
    );

    let tags = describe_table(&dynamodb, stack.output("TagsTableName")).await;
    assert_eq!(keys(tags.key_schema()), [("term", "HASH")]);
    assert_eq!(
        global_indexes(&tags),
        BTreeMap::from([
            (
                "by-name".to_owned(),
                index(&[("kind", "HASH"), ("name", "RANGE")], "ALL")
            ),
            (
                "by-count".to_owned(),
                index(&[("kind", "HASH"), ("image_count", "RANGE")], "ALL")
            ),
        ])
    );
    assert_eq!(
        attribute_types(&tags),
        types(&[
            ("term", "S"),
            ("kind", "S"),
            ("name", "S"),
            ("image_count", "N")
        ])
    );

    for table in [&images, &postings, &tags] {
        assert_eq!(
            table.billing_mode_summary().and_then(|b| b.billing_mode()),
            Some(&BillingMode::PayPerRequest),
            "{:?}",
            table.table_name()
        );
    }
}

#[tokio::test]
async fn stack_creates_service_roles_when_an_oidc_provider_is_given() {
    let moto = Moto::start().await;
    let prefix = unique_prefix("irsa");
    let issuer = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE";
    let provider = format!("arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{issuer}");
    let stack = deploy(
        &moto,
        &prefix,
        &[("OidcProviderArn", &provider), ("OidcProviderUrl", issuer)],
    )
    .await;
    for (output, role, service) in ROLES {
        assert_eq!(stack.physical_id(role), format!("{prefix}-{service}"));
        assert_eq!(
            stack.output(output),
            format!("arn:aws:iam::{ACCOUNT_ID}:role/{prefix}-{service}")
        );
    }
}

/// Long-polls the queue until the S3 event for `key` arrives, deleting what
/// it reads; returns the SNS envelope and the event record.
async fn wait_for_object_created(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    key: &str,
) -> (Json, Json) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let received = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(5)
            .send()
            .await
            .expect("ReceiveMessage");
        for message in received.messages() {
            let body = message.body().expect("message has a body");
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().expect("receipt handle"))
                .send()
                .await
                .expect("DeleteMessage");
            let envelope: Json = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("message is not JSON ({e}): {body}"));
            assert_eq!(
                envelope["Type"], "Notification",
                "not an SNS envelope: {body}"
            );
            let event: Json = serde_json::from_str(
                envelope["Message"]
                    .as_str()
                    .expect("envelope has a Message"),
            )
            .expect("the SNS Message is an S3 event");
            // S3 sends a test event when the notification configuration is set.
            if event["Event"] == "s3:TestEvent" {
                continue;
            }
            for record in event["Records"].as_array().into_iter().flatten() {
                let name = record["eventName"].as_str().unwrap_or_default();
                let record_key =
                    decode_event_key(record["s3"]["object"]["key"].as_str().unwrap_or_default());
                if name.starts_with("ObjectCreated:") && record_key == key {
                    return (envelope, record.clone());
                }
                seen.push(format!("{name} {record_key}"));
            }
        }
    }
    panic!("no ObjectCreated event for {key} within 60 s; saw {seen:?}")
}

/// S3 event keys are form-URL-encoded: `+` for space, `%XX` for bytes.
fn decode_event_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII escape");
                decoded.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                i += 2;
            }
            byte => decoded.push(byte),
        }
        i += 1;
    }
    String::from_utf8(decoded).expect("event key is UTF-8")
}

async fn queue_attributes(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> HashMap<String, String> {
    sqs.get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes()
        .expect("queue has attributes")
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
        .collect()
}

async fn describe_table(dynamodb: &aws_sdk_dynamodb::Client, name: &str) -> TableDescription {
    dynamodb
        .describe_table()
        .table_name(name)
        .send()
        .await
        .expect("DescribeTable")
        .table()
        .expect("DescribeTable returns the table")
        .clone()
}

fn keys(schema: &[KeySchemaElement]) -> Vec<(&str, &str)> {
    schema
        .iter()
        .map(|k| (k.attribute_name(), k.key_type().as_str()))
        .collect()
}

type Index = (Vec<(String, String)>, String);

fn index(schema: &[(&str, &str)], projection: &str) -> Index {
    (
        schema
            .iter()
            .map(|(name, kind)| ((*name).to_owned(), (*kind).to_owned()))
            .collect(),
        projection.to_owned(),
    )
}

fn described_index(schema: &[KeySchemaElement], projection: Option<&Projection>) -> Index {
    (
        keys(schema)
            .into_iter()
            .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
            .collect(),
        projection
            .and_then(Projection::projection_type)
            .map_or("(none)", |p| p.as_str())
            .to_owned(),
    )
}

fn global_indexes(table: &TableDescription) -> BTreeMap<String, Index> {
    table
        .global_secondary_indexes()
        .iter()
        .map(|i| {
            (
                i.index_name().unwrap_or_default().to_owned(),
                described_index(i.key_schema(), i.projection()),
            )
        })
        .collect()
}

fn local_indexes(table: &TableDescription) -> BTreeMap<String, Index> {
    table
        .local_secondary_indexes()
        .iter()
        .map(|i| {
            (
                i.index_name().unwrap_or_default().to_owned(),
                described_index(i.key_schema(), i.projection()),
            )
        })
        .collect()
}

fn attribute_types(table: &TableDescription) -> BTreeMap<String, String> {
    table
        .attribute_definitions()
        .iter()
        .map(|a| {
            (
                a.attribute_name().to_owned(),
                a.attribute_type().as_str().to_owned(),
            )
        })
        .collect()
}

fn types(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, kind)| ((*name).to_owned(), (*kind).to_owned()))
        .collect()
}

/// A JSON scalar as text, whether it was sent as a number or a string.
fn text(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

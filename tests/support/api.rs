//! Small helpers the fault and hostile-input tests share: JSON GETs, polling
//! for an end state, reading queues without consuming their messages for
//! good, and S3 event notifications made by hand.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Status and JSON body (`Null` when there is none); status 0 when the
/// server did not answer.
pub async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    match http.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            (status, body)
        }
        Err(_) => (0, Value::Null),
    }
}

/// Polls `check` every 250 ms until it returns `Some`; after `patience`
/// panics with `what` and whatever `context` says then (service logs).
pub async fn until<T, F, Fut>(
    what: &str,
    patience: Duration,
    context: impl Fn() -> String,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Visible and in-flight message counts of a queue.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap_or_else(|e| panic!("queue attributes of {url}: {e:?}"));
    let attribute = |name: QueueAttributeName| {
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        attribute(QueueAttributeName::ApproximateNumberOfMessages),
        attribute(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Every message body in a queue, received with a long visibility timeout
/// so each is seen once, then made visible again: nothing is deleted.
pub async fn all_bodies(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut receipts = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(120)
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap_or_else(|e| panic!("receive from {url}: {e:?}"));
        let messages = out.messages();
        if messages.is_empty() {
            break;
        }
        bodies.extend(messages.iter().filter_map(|m| m.body().map(str::to_owned)));
        receipts.extend(
            messages
                .iter()
                .filter_map(|m| m.receipt_handle().map(str::to_owned)),
        );
    }
    for receipt in receipts {
        sqs.change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap_or_else(|e| panic!("release a message of {url}: {e:?}"));
    }
    bodies
}

/// The `image_id`s named by JSON message bodies (tag jobs, index messages).
pub fn image_ids(bodies: &[String]) -> BTreeSet<String> {
    bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter_map(|v| v["image_id"].as_str().map(str::to_owned))
        .collect()
}

/// A raw S3 event notification (as S3 delivers it to a queue without SNS),
/// with an explicit sequencer, form-encoding the key as S3 does.
pub fn s3_event(
    event_name: &str,
    bucket: &str,
    key: &str,
    etag: Option<&str>,
    size: Option<u64>,
    sequencer: &str,
) -> String {
    let mut object = serde_json::json!({
        "key": form_encode(key),
        "sequencer": sequencer,
    });
    if let Some(etag) = etag {
        object["eTag"] = etag.trim_matches('"').into();
    }
    if let Some(size) = size {
        object["size"] = size.into();
    }
    serde_json::json!({
        "Records": [{
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": "2026-01-01T00:00:00.000Z",
            "eventName": event_name,
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": { "name": bucket, "arn": format!("arn:aws:s3:::{bucket}") },
                "object": object,
            }
        }]
    })
    .to_string()
}

/// S3's key encoding in notifications: form encoding (space as `+`).
fn form_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

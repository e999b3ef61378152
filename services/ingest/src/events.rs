//! S3 event notifications in every shape they reach the events queue:
//! wrapped in an SNS envelope or delivered raw, several records per message,
//! the `s3:TestEvent` S3 sends when notifications are configured, and keys
//! form-encoded by AWS (`a/cat+1.jpg`) or fully percent-encoded by moto
//! (`a%2Fcat+1.jpg`).

use chrono::{DateTime, SecondsFormat, Utc};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Created,
    Removed,
}

/// One object event, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectEvent {
    pub kind: EventKind,
    /// The S3 event name, e.g. `ObjectCreated:Put`.
    pub name: String,
    pub bucket: String,
    pub key: String,
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    /// Orders events of one key; comparable as text (see `sequence_of`).
    pub sequence: String,
}

/// What one queue message turned out to hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    Objects(Vec<ObjectEvent>),
    /// `s3:TestEvent`, SNS subscription confirmations and event types this
    /// service does not act on (restore, tagging, ACL …), with a description.
    Ignored(String),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventError {
    #[error("message body is not JSON: {0}")]
    NotJson(String),
    #[error("not an S3 event notification: {0}")]
    Unrecognized(String),
    #[error("S3 event record is malformed: {0}")]
    BadRecord(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SnsEnvelope {
    #[serde(rename = "Type")]
    kind: String,
    message: Option<String>,
}

#[derive(Deserialize)]
struct S3Notification {
    #[serde(rename = "Records")]
    records: Vec<S3Record>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct S3Record {
    event_name: String,
    #[serde(default)]
    event_time: Option<String>,
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: S3Bucket,
    object: S3Object,
}

#[derive(Deserialize)]
struct S3Bucket {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct S3Object {
    key: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    e_tag: Option<String>,
    #[serde(default)]
    version_id: Option<String>,
    #[serde(default)]
    sequencer: Option<String>,
}

/// Parses a message body from the events queue.
pub fn parse(body: &str) -> Result<Notification, EventError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|err| EventError::NotJson(err.to_string()))?;
    if value.get("Type").is_some() && value.get("TopicArn").is_some() {
        let envelope: SnsEnvelope = serde_json::from_value(value)
            .map_err(|err| EventError::Unrecognized(format!("SNS envelope: {err}")))?;
        if envelope.kind != "Notification" {
            return Ok(Notification::Ignored(format!(
                "SNS {} message",
                envelope.kind
            )));
        }
        let inner = envelope
            .message
            .ok_or_else(|| EventError::Unrecognized("SNS notification without Message".into()))?;
        let value: serde_json::Value = serde_json::from_str(&inner)
            .map_err(|err| EventError::NotJson(format!("SNS Message: {err}")))?;
        return parse_s3(value);
    }
    parse_s3(value)
}

fn parse_s3(value: serde_json::Value) -> Result<Notification, EventError> {
    if value.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(Notification::Ignored("s3:TestEvent".into()));
    }
    if value.get("Records").is_none() {
        return Err(EventError::Unrecognized(
            "expected S3 Records or an SNS envelope".into(),
        ));
    }
    let notification: S3Notification =
        serde_json::from_value(value).map_err(|err| EventError::BadRecord(err.to_string()))?;
    let mut events = Vec::new();
    let mut ignored = Vec::new();
    for record in notification.records {
        let name = record
            .event_name
            .strip_prefix("s3:")
            .unwrap_or(&record.event_name)
            .to_owned();
        let kind = if name.starts_with("ObjectCreated:") {
            EventKind::Created
        } else if name.starts_with("ObjectRemoved:") {
            EventKind::Removed
        } else {
            ignored.push(name);
            continue;
        };
        let key = decode_key(&record.s3.object.key)?;
        let sequence = sequence_of(
            record.s3.object.sequencer.as_deref(),
            record.event_time.as_deref(),
        )?;
        events.push(ObjectEvent {
            kind,
            name,
            bucket: record.s3.bucket.name,
            key,
            size: record.s3.object.size,
            etag: record.s3.object.e_tag.filter(|e| !e.is_empty()),
            version_id: record
                .s3
                .object
                .version_id
                .filter(|v| !v.is_empty() && v != "null"),
            sequence,
        });
    }
    if events.is_empty() && !ignored.is_empty() {
        return Ok(Notification::Ignored(format!(
            "event types not acted on: {}",
            ignored.join(", ")
        )));
    }
    Ok(Notification::Objects(events))
}

/// S3 form-encodes keys (space as `+`, a literal `+` as `%2B`); decoding
/// `+` first and then percent-escapes handles that and moto's variant alike.
pub fn decode_key(raw: &str) -> Result<String, EventError> {
    let spaced = raw.replace('+', " ");
    let key = percent_decode_str(&spaced)
        .decode_utf8()
        .map_err(|_| EventError::BadRecord(format!("key is not UTF-8 once decoded: {raw}")))?
        .into_owned();
    if key.is_empty() {
        return Err(EventError::BadRecord("empty object key".into()));
    }
    Ok(key)
}

/// S3's `sequencer` is a hex number of varying length: zero-padded on the
/// left it compares as text. Notifications without it (moto) fall back to
/// the event time; one bucket gets one kind or the other, never both.
pub fn sequence_of(
    sequencer: Option<&str>,
    event_time: Option<&str>,
) -> Result<String, EventError> {
    if let Some(sequencer) = sequencer.filter(|s| !s.is_empty()) {
        if !sequencer.chars().all(|c| c.is_ascii_hexdigit()) || sequencer.len() > 64 {
            return Err(EventError::BadRecord(format!(
                "bad sequencer {sequencer:?}"
            )));
        }
        return Ok(format!("s{:0>64}", sequencer.to_ascii_uppercase()));
    }
    let time = event_time.ok_or_else(|| {
        EventError::BadRecord("record has neither sequencer nor eventTime".into())
    })?;
    let parsed: DateTime<Utc> = DateTime::parse_from_rfc3339(time)
        .map_err(|err| EventError::BadRecord(format!("bad eventTime {time:?}: {err}")))?
        .with_timezone(&Utc);
    Ok(format!(
        "t{}",
        parsed.to_rfc3339_opts(SecondsFormat::Nanos, true)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
    }

    fn objects(body: &str) -> Vec<ObjectEvent> {
        match parse(body) {
            Ok(Notification::Objects(events)) => events,
            other => panic!("expected object events, got {other:?}"),
        }
    }

    #[test]
    fn sns_envelope_from_aws_with_form_encoded_key() {
        let events = objects(&fixture("aws_sns_put.json"));
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.kind, EventKind::Created);
        assert_eq!(event.name, "ObjectCreated:Put");
        assert_eq!(event.bucket, "photos-bucket");
        assert_eq!(event.key, "uploads/cat 1+2 é.jpg");
        assert_eq!(event.size, Some(1024));
        assert_eq!(
            event.etag.as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(event.sequence, format!("s{:0>64}", "0055AED6DCD90281E5"));
    }

    #[test]
    fn raw_delivery_with_several_records_and_a_delete() {
        let events = objects(&fixture("aws_raw_two_records.json"));
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, EventKind::Created);
        assert_eq!(events[0].key, "a/b/dog.png");
        assert_eq!(events[1].kind, EventKind::Removed);
        assert_eq!(events[1].name, "ObjectRemoved:Delete");
        assert_eq!(events[1].size, None);
        assert!(events[0].sequence < events[1].sequence);
    }

    #[test]
    fn moto_envelope_with_fully_percent_encoded_key_and_no_sequencer() {
        let events = objects(&fixture("moto_sns_put.json"));
        assert_eq!(events[0].key, "uploads/cat 1.jpg");
        assert_eq!(events[0].sequence, "t2026-11-22T03:10:11.123456000Z");
    }

    #[test]
    fn test_events_and_subscription_confirmations_are_ignored() {
        assert!(matches!(
            parse(&fixture("aws_test_event.json")),
            Ok(Notification::Ignored(_))
        ));
        let wrapped = serde_json::json!({
            "Type": "Notification",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
            "Message": fixture("aws_test_event.json"),
        });
        assert!(matches!(
            parse(&wrapped.to_string()),
            Ok(Notification::Ignored(_))
        ));
        let confirmation = serde_json::json!({
            "Type": "SubscriptionConfirmation",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
        });
        assert!(matches!(
            parse(&confirmation.to_string()),
            Ok(Notification::Ignored(_))
        ));
    }

    #[test]
    fn other_event_types_are_ignored_not_failed() {
        let body = serde_json::json!({"Records": [{
            "eventName": "ObjectRestore:Completed",
            "eventTime": "2026-01-01T00:00:00.000Z",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}
        }]});
        assert!(matches!(
            parse(&body.to_string()),
            Ok(Notification::Ignored(_))
        ));
    }

    #[test]
    fn malformed_bodies_are_errors_with_reasons() {
        assert!(matches!(parse("not json"), Err(EventError::NotJson(_))));
        assert!(matches!(
            parse("{\"hello\": 1}"),
            Err(EventError::Unrecognized(_))
        ));
        let no_key = serde_json::json!({"Records": [{
            "eventName": "ObjectCreated:Put",
            "eventTime": "2026-01-01T00:00:00.000Z",
            "s3": {"bucket": {"name": "b"}, "object": {}}
        }]});
        assert!(matches!(
            parse(&no_key.to_string()),
            Err(EventError::BadRecord(_))
        ));
        let bad_utf8 = serde_json::json!({"Records": [{
            "eventName": "ObjectCreated:Put",
            "eventTime": "2026-01-01T00:00:00.000Z",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "%FF%FE"}}
        }]});
        assert!(matches!(
            parse(&bad_utf8.to_string()),
            Err(EventError::BadRecord(_))
        ));
    }

    #[test]
    fn sequencers_of_different_lengths_compare_numerically() {
        let short = sequence_of(Some("FF"), None).expect("valid");
        let long = sequence_of(Some("0100"), None).expect("valid");
        assert!(short < long, "0xFF must sort before 0x100");
        let lower = sequence_of(Some("00abc"), None).expect("valid");
        let upper = sequence_of(Some("ABC"), None).expect("valid");
        assert_eq!(lower, upper);
        assert!(sequence_of(Some("xyz"), None).is_err());
    }

    #[test]
    fn event_times_with_different_precision_compare_in_time_order() {
        let a = sequence_of(None, Some("2026-01-01T00:00:00.5Z")).expect("valid");
        let b = sequence_of(None, Some("2026-01-01T00:00:00.123456Z")).expect("valid");
        assert!(b < a);
    }
}

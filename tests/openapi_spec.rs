//! The API's OpenAPI document checked by an independent implementation:
//! `openapi-spec-validator` (from a pinned venv) validates it as OpenAPI
//! 3.1, and the JSON Schema validator it ships with checks real responses of
//! the API, served from the embedded SQLite store, against the schemas the
//! document gives for them.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use chrono::Utc;
use http::{Request, StatusCode};
use imagetag_embedded::SqliteStore;
use imagetag_indexer::IndexerService;
use imagetag_shared::messages::IndexMessage;
use imagetag_shared::model::{
    BoundingBox, Face, ImageFacts, ImageStatus, Instance, Label, ModelInfo, ModerationLabel,
    TagOutput, TextDetection, image_id,
};
use imagetag_shared::ports::{GenerationUpdate, ImageStore, ObjectMeta};
use serde_json::{Value, json};
use tower::ServiceExt;

const REQUIREMENTS: &[&str] = &["openapi-spec-validator==0.9.0"];

const CHECK: &str = r#"
import json, sys
from openapi_spec_validator import validate
from jsonschema import Draft202012Validator

document = json.load(open(sys.argv[1]))
validate(document)
print("document: valid OpenAPI", document["openapi"])
for case in json.load(open(sys.argv[2])):
    content = document["paths"][case["path"]][case["method"]]["responses"][str(case["status"])]["content"]
    schema = dict(content["application/json"]["schema"])
    schema["components"] = document["components"]
    Draft202012Validator.check_schema(schema)
    errors = list(Draft202012Validator(schema).iter_errors(case["body"]))
    for error in errors:
        print(case["method"], case["path"], case["status"], "at", list(error.absolute_path), ":", error.message)
    if errors:
        sys.exit(1)
    print("response ok:", case["method"], case["path"], case["status"])
"#;

async fn tagged_store(dir: &std::path::Path) -> (SqliteStore, String) {
    let store = SqliteStore::open(&dir.join("index.db"), 2).expect("store");
    let id = image_id("local", "photos/dog.jpg");
    let generation = GenerationUpdate {
        image_id: id.clone(),
        bucket: "local".into(),
        key: "photos/dog.jpg".into(),
        sequence: "0001".into(),
        status: ImageStatus::Pending,
        reason: None,
        meta: Some(ObjectMeta {
            size: 2048,
            content_type: Some("image/jpeg".into()),
            etag: Some("abc".into()),
            version_id: None,
        }),
        at: Utc::now(),
    };
    store
        .record_generation(&generation)
        .await
        .expect("generation");
    let area = BoundingBox {
        left: 0.1,
        top: 0.2,
        width: 0.3,
        height: 0.4,
    };
    let message = IndexMessage::Tagged {
        image_id: id.clone(),
        sequence: "0001".into(),
        facts: ImageFacts {
            width: 640,
            height: 480,
            format: "jpeg".into(),
        },
        model: ModelInfo {
            backend: "test".into(),
            version: "1".into(),
        },
        output: TagOutput {
            labels: vec![Label {
                name: "Dog".into(),
                confidence: 97.5,
                parents: vec!["Animal".into()],
                aliases: vec!["Hound".into()],
                categories: vec!["Animals and Pets".into()],
                instances: vec![Instance {
                    bounding_box: area,
                    confidence: 96.0,
                }],
            }],
            text: vec![TextDetection {
                text: "<script>alert(1)</script>".into(),
                confidence: 88.0,
                bounding_box: Some(area),
            }],
            moderation: vec![ModerationLabel {
                name: "Safe".into(),
                confidence: 1.0,
                parent: None,
            }],
            faces: vec![Face {
                bounding_box: area,
                confidence: 99.0,
            }],
        },
    };
    IndexerService::new(store.clone())
        .apply(&message)
        .await
        .expect("indexed");
    (store, id)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body");
    (status, serde_json::from_slice(&bytes).expect("JSON"))
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_and_responses_match_their_schemas() {
    let work = tempfile::tempdir().expect("tempdir");
    let (store, id) = tagged_store(work.path()).await;
    let app = imagetag_query::router(imagetag_query::AppState::new(
        Arc::new(store),
        b"openapi spec test secret, long enough",
    ));
    let (status, document) = get(&app, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);

    let mut cases = Vec::new();
    for (uri, path, status) in [
        ("/v1/images?tags=dog".to_owned(), "/v1/images", 200),
        (format!("/v1/images/{id}"), "/v1/images/{id}", 200),
        ("/v1/tags?prefix=d".to_owned(), "/v1/tags", 200),
        ("/v1/stats".to_owned(), "/v1/stats", 200),
        ("/healthz".to_owned(), "/healthz", 200),
        ("/v1/images?limit=0".to_owned(), "/v1/images", 400),
        (
            format!("/v1/images/{}", "0".repeat(32)),
            "/v1/images/{id}",
            404,
        ),
    ] {
        let (got, body) = get(&app, &uri).await;
        assert_eq!(got.as_u16(), status, "{uri}: {body}");
        cases.push(json!({ "path": path, "method": "get", "status": status, "body": body }));
    }
    // The responses are not trivially valid: the search found the image
    // with its labels, the record carries every kind of detection.
    assert_eq!(cases[0]["body"]["items"][0]["id"], id.as_str());
    assert_eq!(cases[1]["body"]["faces"].as_array().map(Vec::len), Some(1));

    let doc_path = work.path().join("openapi.json");
    let cases_path = work.path().join("cases.json");
    std::fs::write(&doc_path, document.to_string()).expect("write document");
    std::fs::write(&cases_path, Value::Array(cases).to_string()).expect("write cases");
    let venv = support::ensure_pinned_venv("openapi-venv", REQUIREMENTS, &["python"]);
    let output = Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(CHECK)
        .arg(&doc_path)
        .arg(&cases_path)
        .stdin(Stdio::null())
        .output()
        .expect("run the validator");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "validation failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("document: valid OpenAPI 3.1"), "{stdout}");
    assert_eq!(stdout.matches("response ok:").count(), 7, "{stdout}");
}

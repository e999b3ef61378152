//! `GET /openapi.json`: the document the router serves describes exactly the
//! routes it serves, and its schemas describe what the handlers return.

mod memory;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use imagetag_query::{AppState, router};
use imagetag_shared::model::ImageStatus;
use memory::{MemoryStore, label, record};
use serde_json::Value;
use tower::ServiceExt;

async fn fetch(app: &Router, method: Method, uri: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn app() -> Router {
    let store = MemoryStore::default();
    store.insert(record(
        "a.jpg",
        ImageStatus::Tagged,
        vec![label("Dog", 95.0, &["Animals and Pets"])],
        10,
    ));
    router(AppState::new(
        Arc::new(store),
        b"openapi test secret of enough length",
    ))
}

async fn document() -> Value {
    let (status, document) = fetch(&app(), Method::GET, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    document
}

/// `(METHOD, /path/{param})` of every operation in the document.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                found.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_matches_the_library_function() {
    let document = document().await;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        document["openapi"]
    );
    assert_eq!(document["info"]["title"], "imagetag");
    let generated = serde_json::to_value(imagetag_query::openapi()).expect("serializes");
    assert_eq!(document, generated);
    // Every reference points at a schema the document defines.
    let text = document.to_string();
    let schemas = document["components"]["schemas"]
        .as_object()
        .expect("schemas");
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().unwrap_or_default();
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {target}"));
        assert!(schemas.contains_key(name), "dangling reference {target}");
    }
}

/// Every route the router registers is registered through `routes!`, which
/// documents it; a plain `.route(` anywhere in the service would serve an
/// undocumented route.
#[test]
fn no_route_is_registered_without_its_documentation() {
    let sources = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut checked = 0;
    for entry in std::fs::read_dir(sources).expect("src") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source");
            for needle in [".route(", ".route_service(", ".nest(", ".nest_service("] {
                assert!(
                    !text.contains(needle),
                    "{} registers a route with {needle}: use .routes(routes!(handler)) so it is documented",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "read the service's sources");
}

/// The other direction: every documented operation is served (not the
/// router's 404 or 405 fallback), and nothing else is.
#[tokio::test]
async fn every_documented_operation_is_served_and_every_served_route_documented() {
    let app = app();
    let document = document().await;
    let documented = operations(&document);
    let expected: BTreeSet<(String, String)> = [
        ("GET", "/"),
        ("GET", "/index.html"),
        ("GET", "/assets/{name}"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/images"),
        ("GET", "/v1/images/{id}"),
        ("DELETE", "/v1/images/{id}"),
        ("POST", "/v1/images/{id}/retag"),
        ("GET", "/v1/images/{id}/content"),
        ("GET", "/v1/images/{id}/thumbnail"),
        ("GET", "/v1/tags"),
        ("GET", "/v1/stats"),
        ("POST", "/v1/uploads"),
        ("PUT", "/v1/uploads/{token}"),
        ("POST", "/v1/admin/redrive"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented, expected);
    for (method, path) in &documented {
        let uri = path
            .replace("{id}", "0123456789abcdef0123456789abcdef")
            .replace("{name}", "app.js")
            .replace("{token}", "x.y");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let (status, body) = fetch(&app, method.clone(), &uri).await;
        let fallback = (status == StatusCode::NOT_FOUND
            && body["error"]["message"] == "no such resource")
            || status == StatusCode::METHOD_NOT_ALLOWED;
        assert!(
            !fallback,
            "{method} {uri} is documented but not served: {status}"
        );
    }
}

#[tokio::test]
async fn errors_and_write_routes_are_documented() {
    let document = document().await;
    let error = &document["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error"]), "{error}");
    let upload = &document["paths"]["/v1/uploads"]["post"];
    for status in ["201", "400", "401", "403", "429"] {
        assert!(
            upload["responses"][status].is_object(),
            "{status}: {upload}"
        );
    }
    assert_eq!(upload["security"], serde_json::json!([{ "bearer": [] }]));
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Every /v1 operation passes the access check, so each documents its
    // refusals.
    for (method, path) in operations(&document) {
        if path.starts_with("/v1/") {
            let responses = &document["paths"][&path][method.to_lowercase()]["responses"];
            for status in ["401", "429"] {
                assert!(
                    responses[status].is_object(),
                    "{method} {path} lacks {status}"
                );
            }
        }
    }
    let search = &document["paths"]["/v1/images"]["get"];
    let names: BTreeSet<&str> = search["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "tags",
            "match",
            "exclude",
            "min_confidence",
            "category",
            "status",
            "limit",
            "cursor"
        ])
    );
    if let Ok(path) = std::env::var("IMAGETAG_OPENAPI_OUT") {
        std::fs::write(path, serde_json::to_string_pretty(&document).expect("json"))
            .expect("write");
    }
}

//! Access control through the router: API keys, reads closed by
//! configuration, rate limits, body limits, CORS, the write endpoints, and
//! that no credential or presigned URL reaches the logs.

mod memory;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use imagetag_query::auth::keys::{Scope, mint};
use imagetag_query::auth::{AccessPolicy, ApiKeys};
use imagetag_query::operations::{DeadLetters, Operations};
use imagetag_query::ratelimit::{RateLimit, RateLimiter};
use imagetag_query::{AppState, Media, router};
use imagetag_shared::messages::TagJob;
use imagetag_shared::model::{ImageStatus, image_id};
use imagetag_shared::ports::{
    ObjectMeta, ObjectRemover, ObjectStore, PresignedUpload, Queue, QueueMessage, UploadSigner,
};
use imagetag_shared::{PortError, PortResult};
use memory::{MemoryStore, label, record};
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &[u8] = b"access test secret, long enough";

struct Keys {
    writer: String,
    reader: String,
    keys: ApiKeys,
}

fn keys() -> Keys {
    let writer = mint("writer", Scope::Write).expect("mint");
    let reader = mint("reader", Scope::Read).expect("mint");
    let keys = ApiKeys::parse(&format!("{}\n{}\n", writer.line, reader.line)).expect("parse");
    Keys {
        writer: writer.key,
        reader: reader.key,
        keys,
    }
}

fn store() -> Arc<MemoryStore> {
    let store = MemoryStore::default();
    store.insert(record(
        "a.jpg",
        ImageStatus::Tagged,
        vec![label("Dog", 95.0, &["Animals and Pets"])],
        10,
    ));
    store.insert(record("r.txt", ImageStatus::Rejected, vec![], 20));
    Arc::new(store)
}

fn id(key: &str) -> String {
    image_id("photos", key)
}

/// Objects and queues in memory, standing in for the bucket and SQS in
/// these router-level tests (the AWS and embedded adapters are exercised
/// end to end elsewhere).
#[derive(Default)]
struct Recorder {
    objects: Mutex<HashMap<(String, String), Bytes>>,
    deleted: Mutex<Vec<(String, String)>>,
    sent: Mutex<Vec<String>>,
    waiting: Mutex<Vec<String>>,
}

#[async_trait]
impl ObjectStore for Recorder {
    async fn head(&self, _: &str, _: &str) -> PortResult<Option<ObjectMeta>> {
        Ok(None)
    }
    async fn get(&self, bucket: &str, key: &str, _: Option<&str>, _: u64) -> PortResult<Bytes> {
        let objects = self.objects.lock().expect("lock");
        objects
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
            .ok_or_else(|| PortError::NotFound(key.to_owned()))
    }
    async fn put(&self, bucket: &str, key: &str, body: Bytes, _: &str) -> PortResult<()> {
        self.objects
            .lock()
            .expect("lock")
            .insert((bucket.to_owned(), key.to_owned()), body);
        Ok(())
    }
}

#[async_trait]
impl ObjectRemover for Recorder {
    async fn delete(&self, bucket: &str, key: &str) -> PortResult<()> {
        self.deleted
            .lock()
            .expect("lock")
            .push((bucket.to_owned(), key.to_owned()));
        Ok(())
    }
}

#[async_trait]
impl Queue for Recorder {
    async fn receive(&self, max: u32, _: Duration, _: Duration) -> PortResult<Vec<QueueMessage>> {
        let mut waiting = self.waiting.lock().expect("lock");
        let take = waiting.len().min(max as usize);
        Ok(waiting
            .drain(..take)
            .enumerate()
            .map(|(i, body)| QueueMessage {
                id: i.to_string(),
                body,
                receipt: format!("r{i}"),
                attributes: HashMap::new(),
                receive_count: 1,
            })
            .collect())
    }
    async fn send(&self, body: &str, _: &HashMap<String, String>) -> PortResult<()> {
        self.sent.lock().expect("lock").push(body.to_owned());
        Ok(())
    }
    async fn delete(&self, _: &[String]) -> PortResult<()> {
        Ok(())
    }
    async fn change_visibility(&self, _: &str, _: Duration) -> PortResult<()> {
        Ok(())
    }
    async fn ping(&self) -> PortResult<()> {
        Ok(())
    }
}

struct Signer;

#[async_trait]
impl UploadSigner for Signer {
    async fn presign_put(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        _: u64,
        _: Duration,
    ) -> PortResult<PresignedUpload> {
        Ok(PresignedUpload {
            url: format!(
                "https://{bucket}.storage.test/{key}?X-Amz-Signature=presigned-secret-signature"
            ),
            headers: vec![("content-type".into(), content_type.into())],
        })
    }
}

fn media(recorder: &Arc<Recorder>, signer: bool) -> Media {
    Media {
        objects: recorder.clone(),
        bucket: "photos".into(),
        upload_prefix: "uploads/".into(),
        thumbnails: recorder.clone(),
        thumbnail_bucket: "photos".into(),
        thumbnail_prefix: "thumbnails/".into(),
        signer: signer.then(|| Arc::new(Signer) as Arc<dyn UploadSigner>),
        max_upload_bytes: 4096,
        upload_ttl: Duration::from_secs(300),
        secret: SECRET.to_vec(),
    }
}

struct App {
    router: Router,
    recorder: Arc<Recorder>,
}

fn app(policy: AccessPolicy, peer: &str) -> App {
    let recorder = Arc::new(Recorder::default());
    let dead = Arc::new(Recorder::default());
    dead.waiting
        .lock()
        .expect("lock")
        .extend(["one".to_owned(), "two".to_owned()]);
    let state = AppState::new(store(), SECRET)
        .with_media(media(&recorder, false))
        .with_access(policy)
        .with_operations(Operations {
            objects: Some(recorder.clone()),
            tag_jobs: Some(recorder.clone()),
            dead_letters: vec![DeadLetters {
                name: "tag-jobs".into(),
                dead_letter: dead,
                source: recorder.clone(),
            }],
        })
        .with_cors_origins(vec![HeaderValue::from_static("https://photos.example.com")]);
    let peer: SocketAddr = peer.parse().expect("address");
    App {
        router: router(state).layer(MockConnectInfo(peer)),
        recorder,
    }
}

fn policy(keys: &Keys) -> AccessPolicy {
    AccessPolicy {
        keys: keys.keys.clone(),
        ..AccessPolicy::default()
    }
}

async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let body = match body {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value, headers)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn upload_request() -> Value {
    json!({ "filename": "cat.png", "content_type": "image/png", "size": 4 })
}

#[tokio::test]
async fn writes_need_a_key_with_write_rights() {
    let keys = keys();
    let app = app(policy(&keys), "203.0.113.7:5000");
    let remote = "/v1/uploads";
    let refusals = [
        (None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            Some("itk_not-a-key"),
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        ),
        (
            Some(keys.reader.as_str()),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ];
    for (bearer, expected_status, expected_code) in refusals {
        let (status, body, headers) = send(
            &app.router,
            Method::POST,
            remote,
            bearer,
            Some(upload_request()),
        )
        .await;
        assert_eq!(status, expected_status, "{bearer:?}: {body}");
        assert_eq!(code(&body), expected_code, "{bearer:?}");
        if bearer.is_none() {
            assert!(
                headers
                    .get(header::WWW_AUTHENTICATE)
                    .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer"))
            );
        }
    }
    assert!(app.recorder.objects.lock().expect("lock").is_empty());

    // The right key: the whole one-process upload goes through, and the
    // PUT of the bytes needs the key as well.
    let (status, ticket, _) = send(
        &app.router,
        Method::POST,
        remote,
        Some(&keys.writer),
        Some(upload_request()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let url = ticket["upload"]["url"].as_str().expect("url").to_owned();
    let put = |bearer: Option<&str>| {
        let mut request = Request::builder()
            .method(Method::PUT)
            .uri(&url)
            .header(header::CONTENT_TYPE, "image/png");
        if let Some(key) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        request.body(Body::from(&b"\x89PNG"[..])).expect("request")
    };
    let anonymous = app.router.clone().oneshot(put(None)).await.expect("put");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let stored = app
        .router
        .clone()
        .oneshot(put(Some(&keys.writer)))
        .await
        .expect("put");
    assert_eq!(stored.status(), StatusCode::NO_CONTENT);
    let objects = app.recorder.objects.lock().expect("lock");
    let key = ticket["key"].as_str().expect("key");
    assert_eq!(
        objects
            .get(&("photos".to_owned(), key.to_owned()))
            .map(|b| b.to_vec()),
        Some(b"\x89PNG".to_vec())
    );
}

#[tokio::test]
async fn reads_are_open_by_default_and_closed_by_configuration() {
    let keys = keys();
    let open = app(policy(&keys), "203.0.113.7:5000");
    let (status, body, _) =
        send(&open.router, Method::GET, "/v1/images?tags=dog", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["id"], id("a.jpg"));

    let closed = app(
        AccessPolicy {
            auth_reads: true,
            ..policy(&keys)
        },
        "203.0.113.7:5000",
    );
    let (status, body, _) = send(
        &closed.router,
        Method::GET,
        "/v1/images?tags=dog",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "unauthorized");
    let (status, _, _) = send(
        &closed.router,
        Method::GET,
        &format!("/v1/images/{}", id("a.jpg")),
        Some("itk_wrong"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for key in [&keys.reader, &keys.writer] {
        let (status, body, _) = send(
            &closed.router,
            Method::GET,
            "/v1/images?tags=dog",
            Some(key),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["items"][0]["id"], id("a.jpg"));
    }
    // Probes, metrics, the document and the UI stay open.
    for path in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/",
        "/assets/app.js",
    ] {
        let (status, _, _) = send(&closed.router, Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn the_local_machine_is_trusted_only_where_configured() {
    let keys = keys();
    let trusting = AccessPolicy {
        trust_loopback: true,
        ..policy(&keys)
    };
    let local = app(trusting, "127.0.0.1:5000");
    let (status, body, _) = send(
        &local.router,
        Method::POST,
        "/v1/uploads",
        None,
        Some(upload_request()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let trusting = AccessPolicy {
        trust_loopback: true,
        ..policy(&keys)
    };
    let remote = app(trusting, "198.51.100.2:5000");
    let (status, _, _) = send(
        &remote.router,
        Method::POST,
        "/v1/uploads",
        None,
        Some(upload_request()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let untrusting = app(policy(&keys), "127.0.0.1:5000");
    let (status, _, _) = send(
        &untrusting.router,
        Method::POST,
        "/v1/uploads",
        None,
        Some(upload_request()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A forged X-Forwarded-For does not make a remote client local.
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/uploads")
        .header("x-forwarded-for", "127.0.0.1")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(upload_request().to_string()))
        .expect("request");
    let response = remote.router.clone().oneshot(request).await.expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn clients_over_their_burst_get_429_with_retry_after() {
    let keys = keys();
    let limited = || AccessPolicy {
        limiter: Some(RateLimiter::new(
            RateLimit {
                per_second: 0.5,
                burst: 3,
            },
            100,
        )),
        ..policy(&keys)
    };
    let app = app(limited(), "203.0.113.9:4000");
    for _ in 0..3 {
        let (status, _, _) = send(&app.router, Method::GET, "/v1/tags", None, None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, body, headers) = send(&app.router, Method::GET, "/v1/tags", None, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code(&body), "rate_limited");
    assert_eq!(
        headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("2"),
        "one request every 2 s"
    );
    // Failed key guesses count against the address too.
    let (status, _, _) = send(
        &app.router,
        Method::GET,
        "/v1/tags",
        Some("itk_guess"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // A key is its own client; probes are never limited.
    let (status, _, _) = send(
        &app.router,
        Method::GET,
        "/v1/tags",
        Some(&keys.reader),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&app.router, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bodies_over_the_limits_are_413_in_json() {
    let keys = keys();
    let app = app(policy(&keys), "203.0.113.7:5000");
    // The upload limit (4096 bytes here) applies to the bytes of an upload.
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/v1/uploads/anything.sig")
        .header(header::AUTHORIZATION, format!("Bearer {}", keys.writer))
        .header(header::CONTENT_TYPE, "image/png")
        .header(header::CONTENT_LENGTH, 2 * 1024 * 1024)
        .body(Body::from(vec![0u8; 2 * 1024 * 1024]))
        .expect("request");
    let response = app.router.clone().oneshot(request).await.expect("send");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(code(&body), "payload_too_large");
    // And announcing more than the limit is refused before any URL exists.
    let (status, body, _) = send(
        &app.router,
        Method::POST,
        "/v1/uploads",
        Some(&keys.writer),
        Some(json!({ "filename": "big.png", "content_type": "image/png", "size": 4097 })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "too_large");
    let (status, body, _) = send(
        &app.router,
        Method::POST,
        "/v1/uploads",
        Some(&keys.writer),
        Some(json!({ "filename": "page.html", "content_type": "text/html", "size": 10 })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "unsupported_media_type");
}

#[tokio::test]
async fn cors_preflight_allows_configured_origins_with_credentials_headers() {
    let keys = keys();
    let app = app(policy(&keys), "203.0.113.7:5000");
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("/v1/images/{}", id("a.jpg")))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "DELETE")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .body(Body::empty())
            .expect("request")
    };
    let allowed = app
        .router
        .clone()
        .oneshot(preflight("https://photos.example.com"))
        .await
        .expect("send");
    assert!(allowed.status().is_success());
    let headers = allowed.headers();
    assert_eq!(
        headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        Some(&HeaderValue::from_static("https://photos.example.com"))
    );
    let methods = headers
        .get(header::ACCESS_CONTROL_ALLOW_METHODS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(methods.contains("DELETE"), "{methods}");
    let allowed_headers = headers
        .get(header::ACCESS_CONTROL_ALLOW_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    let denied = app
        .router
        .clone()
        .oneshot(preflight("https://evil.example.com"))
        .await
        .expect("send");
    assert_eq!(
        denied.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        None
    );
}

#[tokio::test]
async fn delete_retag_and_redrive_act_through_the_ports() {
    let keys = keys();
    let app = app(policy(&keys), "203.0.113.7:5000");
    let image = format!("/v1/images/{}", id("a.jpg"));
    let retag = format!("{image}/retag");
    for (method, uri) in [
        (Method::DELETE, image.as_str()),
        (Method::POST, retag.as_str()),
        (Method::POST, "/v1/admin/redrive"),
    ] {
        let body = (method == Method::POST).then(|| json!({}));
        let (status, _, _) = send(&app.router, method.clone(), uri, None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        let (status, _, _) = send(&app.router, method.clone(), uri, Some(&keys.reader), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}");
    }
    assert!(app.recorder.deleted.lock().expect("lock").is_empty());
    assert!(app.recorder.sent.lock().expect("lock").is_empty());

    let (status, body, _) = send(&app.router, Method::POST, &retag, Some(&keys.writer), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "retagging");
    let sent = app.recorder.sent.lock().expect("lock").clone();
    let job: TagJob = serde_json::from_str(&sent[0]).expect("a tag job");
    assert_eq!(
        (job.image_id.as_str(), job.key.as_str()),
        (id("a.jpg").as_str(), "a.jpg")
    );
    let rejected = format!("/v1/images/{}/retag", id("r.txt"));
    let (status, body, _) = send(
        &app.router,
        Method::POST,
        &rejected,
        Some(&keys.writer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "not_retaggable");

    let (status, body, _) = send(
        &app.router,
        Method::DELETE,
        &image,
        Some(&keys.writer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        app.recorder.deleted.lock().expect("lock").clone(),
        vec![("photos".to_owned(), "a.jpg".to_owned())]
    );
    let missing = format!("/v1/images/{}", "0".repeat(32));
    let (status, _, _) = send(
        &app.router,
        Method::DELETE,
        &missing,
        Some(&keys.writer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body, _) = send(
        &app.router,
        Method::POST,
        "/v1/admin/redrive",
        Some(&keys.writer),
        Some(json!({ "queue": "nope" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body, _) = send(
        &app.router,
        Method::POST,
        "/v1/admin/redrive",
        Some(&keys.writer),
        Some(json!({ "queue": "tag-jobs" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["moved"]["tag-jobs"], 2);
    let sent = app.recorder.sent.lock().expect("lock").clone();
    assert_eq!(&sent[1..], ["one", "two"]);
}

/// A writer that keeps everything the subscriber prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_key_or_presigned_url_reaches_the_logs() {
    let keys = keys();
    let recorder = Arc::new(Recorder::default());
    let state = AppState::new(store(), SECRET)
        .with_media(media(&recorder, true))
        .with_access(policy(&keys));
    let app = router(state).layer(MockConnectInfo(
        "203.0.113.7:5000".parse::<SocketAddr>().expect("addr"),
    ));
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .json()
        .finish();
    // Global, not per thread: callsites first hit by the other tests of
    // this binary (running in parallel, without a subscriber) would
    // otherwise stay disabled for this one. Their lines land here too, and
    // must not hold secrets either.
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    let (status, ticket, _) = send(
        &app,
        Method::POST,
        "/v1/uploads",
        Some(&keys.writer),
        Some(upload_request()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let url = ticket["upload"]["url"].as_str().expect("url");
    assert!(url.contains("presigned-secret-signature"), "{url}");
    // Presigned uploads: only under the upload prefix, for the configured
    // lifetime (300 s here), with the announced type as a signed header.
    assert!(
        ticket["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("uploads/")),
        "{ticket}"
    );
    let expires =
        chrono::DateTime::parse_from_rfc3339(ticket["expires_at"].as_str().expect("expiry"))
            .expect("RFC 3339");
    let lifetime = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!((290..=300).contains(&lifetime), "{lifetime} s");
    assert_eq!(ticket["upload"]["headers"]["content-type"], "image/png");
    let (status, _, _) = send(
        &app,
        Method::POST,
        "/v1/uploads",
        Some("itk_wrong-guess"),
        Some(upload_request()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(
        logs.contains("request completed"),
        "the requests were logged: {logs}"
    );
    assert!(
        logs.contains("key:writer"),
        "the key's name is logged: {logs}"
    );
    for secret in [
        keys.writer.as_str(),
        "itk_wrong-guess",
        "presigned-secret-signature",
        url,
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
}

//! The API through its router, against the in-memory store.

mod memory;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use imagetag_query::{AppState, router};
use imagetag_shared::model::{ImageStatus, category_term, image_id, tag_term, timestamp};
use memory::{Calls, Failure, MemoryStore, label, record};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tower::ServiceExt;

const SECRET: &[u8] = b"test secret, at least sixteen bytes";

fn app(store: &Arc<MemoryStore>) -> Router {
    router(AppState::new(Arc::<MemoryStore>::clone(store), SECRET))
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value, http::HeaderMap) {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body is readable");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("every response is JSON")
    };
    (status, body, headers)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("valid request");
    let (status, body, _) = send(app, request).await;
    (status, body)
}

fn id(key: &str) -> String {
    image_id("photos", key)
}

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item["id"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn next_cursor(body: &Value) -> Option<String> {
    body["next_cursor"].as_str().map(str::to_owned)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// The curated fixture most tests use (confidences chosen so the expected
/// orders below are easy to read off).
fn fixture() -> Arc<MemoryStore> {
    let store = MemoryStore::default();
    let pets = ["Animals and Pets"];
    let tagged = ImageStatus::Tagged;
    store.insert(record(
        "a.jpg",
        tagged,
        vec![label("Grass", 80.0, &["Nature"]), label("Dog", 95.0, &pets)],
        10,
    ));
    store.insert(record(
        "b.jpg",
        tagged,
        vec![label("Dog", 70.0, &pets), label("Cat", 90.0, &pets)],
        20,
    ));
    store.insert(record(
        "c.jpg",
        tagged,
        vec![label("Cat", 99.0, &pets), label("Sofa", 85.0, &["Home"])],
        30,
    ));
    store.insert(record(
        "d.jpg",
        tagged,
        vec![label("Car", 88.0, &["Vehicles"]), label("Dog", 60.0, &pets)],
        40,
    ));
    store.insert(record(
        "g.jpg",
        tagged,
        vec![label("Cat", 70.0, &pets), label("Dog", 90.0, &pets)],
        50,
    ));
    store.insert(record(
        "h.jpg",
        tagged,
        vec![label("Tree", 50.0, &["Nature"])],
        60,
    ));
    // Indexed, then deleted or re-uploaded: postings linger until the
    // indexer catches up, and must not leak into results.
    store.insert(record("e.jpg", tagged, vec![label("Dog", 97.0, &pets)], 70));
    store.set_status(&id("e.jpg"), ImageStatus::Deleted);
    store.insert(record("f.jpg", tagged, vec![label("Dog", 96.0, &pets)], 80));
    store.set_status(&id("f.jpg"), ImageStatus::Pending);
    store.insert(record("p.jpg", ImageStatus::Pending, vec![], 90));
    let mut rejected = record("r.txt", ImageStatus::Rejected, vec![], 100);
    rejected.reason = Some("not an image".into());
    store.insert(rejected);
    Arc::new(store)
}

fn keys(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| id(k)).collect()
}

/// Follows `next_cursor` to the end, returning every page's body.
async fn all_pages(app: &Router, uri: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let page_uri = match &cursor {
            None => uri.to_owned(),
            Some(cursor) => format!("{uri}&cursor={cursor}"),
        };
        let (status, body) = get(app, &page_uri).await;
        assert_eq!(status, StatusCode::OK, "{page_uri}: {body}");
        cursor = next_cursor(&body);
        pages.push(body);
        if cursor.is_none() {
            return pages;
        }
    }
    panic!("{uri}: pagination did not end");
}

fn concat_ids(pages: &[Value]) -> Vec<String> {
    pages.iter().flat_map(ids).collect()
}

// ------------------------------------------------------------ validation

#[tokio::test]
async fn invalid_parameters_are_json_400s_with_a_code() {
    let app = app(&fixture());
    let long = "x".repeat(101);
    let eleven = "a,b,c,d,e,f,g,h,i,j,k";
    let cases = [
        (format!("/v1/images?tags={eleven}"), "invalid_parameter"),
        (format!("/v1/images?exclude={eleven}"), "invalid_parameter"),
        (format!("/v1/images?tags={long}"), "invalid_parameter"),
        ("/v1/images?tags=a,,b".into(), "invalid_parameter"),
        ("/v1/images?tags=".into(), "invalid_parameter"),
        ("/v1/images?tags=%20%20".into(), "invalid_parameter"),
        ("/v1/images?tags=a&match=some".into(), "invalid_parameter"),
        (
            "/v1/images?tags=a&min_confidence=100.5".into(),
            "invalid_parameter",
        ),
        (
            "/v1/images?tags=a&min_confidence=-1".into(),
            "invalid_parameter",
        ),
        (
            "/v1/images?tags=a&min_confidence=NaN".into(),
            "invalid_parameter",
        ),
        (
            "/v1/images?tags=a&min_confidence=inf".into(),
            "invalid_parameter",
        ),
        (
            "/v1/images?tags=a&min_confidence=high".into(),
            "invalid_parameter",
        ),
        ("/v1/images?limit=0".into(), "invalid_parameter"),
        ("/v1/images?limit=101".into(), "invalid_parameter"),
        ("/v1/images?limit=-1".into(), "invalid_parameter"),
        ("/v1/images?limit=ten".into(), "invalid_parameter"),
        (format!("/v1/images?category={long}"), "invalid_parameter"),
        ("/v1/images?category=".into(), "invalid_parameter"),
        ("/v1/images?status=bogus".into(), "invalid_parameter"),
        (
            "/v1/images?status=pending&tags=dog".into(),
            "invalid_parameter",
        ),
        (
            "/v1/images?status=failed&category=nature".into(),
            "invalid_parameter",
        ),
        (
            "/v1/images?status=deleted&exclude=dog".into(),
            "invalid_parameter",
        ),
        ("/v1/images?colour=red".into(), "invalid_parameter"),
        ("/v1/images?tags=a&tags=b".into(), "invalid_parameter"),
        ("/v1/images?cursor=".into(), "invalid_cursor"),
        (
            "/v1/images?tags=dog&cursor=garbage".into(),
            "invalid_cursor",
        ),
        ("/v1/images/not-an-id".into(), "invalid_parameter"),
        (
            "/v1/images/0123456789ABCDEF0123456789ABCDEF".into(),
            "invalid_parameter",
        ),
        ("/v1/tags?kind=label".into(), "invalid_parameter"),
        ("/v1/tags?limit=0".into(), "invalid_parameter"),
        ("/v1/tags?limit=1001".into(), "invalid_parameter"),
        (format!("/v1/tags?prefix={long}"), "invalid_parameter"),
        ("/v1/tags?sort=name".into(), "invalid_parameter"),
    ];
    for (uri, code) in cases {
        let (status, body) = get(&app, &uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(error_code(&body), code, "{uri}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{uri}: {body}"
        );
    }
}

#[tokio::test]
async fn boundary_values_are_accepted() {
    let app = app(&fixture());
    let hundred = "x".repeat(100);
    let ten = "a,b,c,d,e,f,g,h,i,j";
    for uri in [
        format!("/v1/images?tags={ten}&exclude=k,l,m,n,o,p,q,r,s,t&match=any"),
        format!("/v1/images?tags={hundred}"),
        "/v1/images?tags=dog&min_confidence=0&limit=1".into(),
        "/v1/images?tags=dog&min_confidence=100&limit=100".into(),
        "/v1/images?status=deleted".into(),
        "/v1/tags?limit=1000&prefix=".into(),
    ] {
        let (status, body) = get(&app, &uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_json() {
    let app = app(&fixture());
    let (status, body) = get(&app, "/v2/images").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/images")
        .body(Body::empty())
        .expect("valid request");
    let (status, body, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&body), "method_not_allowed");
}

#[tokio::test]
async fn oversized_bodies_are_refused_in_json() {
    let app = app(&fixture());
    let request = Request::builder()
        .uri("/v1/tags")
        .header(header::CONTENT_LENGTH, 2 * 1024 * 1024)
        .body(Body::from(vec![b'x'; 2 * 1024 * 1024]))
        .expect("valid request");
    let (status, body, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "payload_too_large");
}

// ------------------------------------------------------------- one image

#[tokio::test]
async fn an_image_is_returned_without_index_bookkeeping() {
    let app = app(&fixture());
    let (status, body) = get(&app, &format!("/v1/images/{}", id("a.jpg"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["image_id"], id("a.jpg"));
    assert_eq!(body["key"], "a.jpg");
    assert_eq!(body["status"], "tagged");
    assert_eq!(body["labels"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["updated_at"], timestamp::format(&memory::at(10)));
    assert!(body.get("indexed_terms").is_none(), "{body}");
    assert!(body.get("revision").is_none(), "{body}");
    // Other statuses are visible by id; a tombstone is not.
    let (status, body) = get(&app, &format!("/v1/images/{}", id("r.txt"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["reason"], "not an image");
}

#[tokio::test]
async fn unknown_and_deleted_images_are_json_404s() {
    let app = app(&fixture());
    for key in ["missing.jpg", "e.jpg"] {
        let (status, body) = get(&app, &format!("/v1/images/{}", id(key))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{key}");
        assert_eq!(error_code(&body), "not_found", "{key}");
    }
}

// ----------------------------------------------------- dependency faults

#[tokio::test]
async fn an_unavailable_store_is_a_json_503_and_bad_data_a_500() {
    let store = fixture();
    let app = app(&store);
    store.fail(Failure::Unavailable);
    for uri in [
        "/v1/images?tags=dog".to_owned(),
        "/v1/images?status=pending".to_owned(),
        format!("/v1/images/{}", id("a.jpg")),
        "/v1/tags".to_owned(),
        "/readyz".to_owned(),
    ] {
        let (status, body) = get(&app, &uri).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(error_code(&body), "dependency_unavailable", "{uri}");
        // Adapter detail (table names, endpoints) stays in the logs.
        assert!(!body.to_string().contains("throttled"), "{uri}: {body}");
    }
    let (status, _) = get(&app, "/healthz").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "liveness does not depend on the store"
    );

    store.fail(Failure::Invalid);
    let (status, body) = get(&app, &format!("/v1/images/{}", id("a.jpg"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(&body), "internal");
}

#[tokio::test]
async fn probes_report_liveness_and_readiness() {
    let app = app(&fixture());
    let (status, body) = get(&app, "/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, _) = get(&app, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_slow_store_times_out_with_a_json_503() {
    let store = fixture();
    store.delay(Some(Duration::from_millis(500)));
    let app = router(
        AppState::new(Arc::<MemoryStore>::clone(&store), SECRET)
            .with_request_timeout(Duration::from_millis(50)),
    );
    let (status, body) = get(&app, "/v1/images?tags=dog").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&body), "timeout");
}

// ---------------------------------------------------------------- search

#[tokio::test]
async fn a_single_tag_search_ranks_by_confidence() {
    let app = app(&fixture());
    let (status, body) = get(&app, "/v1/images?tags=DOG").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), keys(&["a.jpg", "g.jpg", "b.jpg", "d.jpg"]));
    let scores: Vec<f64> = body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["score"].as_f64())
        .collect();
    assert_eq!(scores, [95.0, 90.0, 70.0, 60.0]);
    assert_eq!(body["next_cursor"], Value::Null);
    // Labels come best first whatever order they were stored in.
    let first = &body["items"][0];
    assert_eq!(first["labels"][0]["name"], "Dog");
    assert_eq!(first["labels"][1]["name"], "Grass");
    assert_eq!(first["labels"][0]["categories"][0], "Animals and Pets");
    assert_eq!(first["status"], "tagged");
    assert_eq!(first["bucket"], "photos");
    assert_eq!(first["key"], "a.jpg");
    assert_eq!(first["updated_at"], timestamp::format(&memory::at(10)));
    assert!(first.get("facts").is_some() && first.get("reason").is_some());
}

#[tokio::test]
async fn deleted_and_pending_records_are_not_returned() {
    let app = app(&fixture());
    // e.jpg (97) and f.jpg (96) still have dog postings.
    let (_, body) = get(&app, "/v1/images?tags=dog&limit=1").await;
    assert_eq!(ids(&body), keys(&["a.jpg"]));
    let all = concat_ids(&all_pages(&app, "/v1/images?tags=dog&limit=1").await);
    assert!(!all.contains(&id("e.jpg")) && !all.contains(&id("f.jpg")));
    assert_eq!(all.len(), 4);
}

#[tokio::test]
async fn all_match_intersects_and_the_rarest_term_drives() {
    let store = fixture();
    let app = app(&store);
    let (status, body) = get(&app, "/v1/images?tags=dog,cat&match=all").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // cat (3 images) drives, so the order and scores are cat's.
    assert_eq!(ids(&body), keys(&["b.jpg", "g.jpg"]));
    assert_eq!(body["items"][0]["score"], 90.0);
    assert_eq!(body["items"][1]["score"], 70.0);
    // Default mode is all.
    let (_, default) = get(&app, "/v1/images?tags=cat,dog").await;
    assert_eq!(ids(&default), ids(&body));
}

#[tokio::test]
async fn any_match_lists_every_image_once_across_pages() {
    let app = app(&fixture());
    let pages = all_pages(&app, "/v1/images?tags=dog,cat&match=any&limit=1").await;
    // Tag by tag in name order: cat's images, then dog's not already seen.
    assert_eq!(
        concat_ids(&pages),
        keys(&["c.jpg", "b.jpg", "g.jpg", "a.jpg", "d.jpg"])
    );
    assert!(pages.iter().all(|page| ids(page).len() <= 1));
    let pages = all_pages(&app, "/v1/images?tags=dog,cat&match=any&limit=2").await;
    assert_eq!(
        concat_ids(&pages),
        keys(&["c.jpg", "b.jpg", "g.jpg", "a.jpg", "d.jpg"])
    );
}

#[tokio::test]
async fn min_confidence_applies_to_every_tag() {
    let app = app(&fixture());
    let (_, body) = get(&app, "/v1/images?tags=dog&min_confidence=75").await;
    assert_eq!(ids(&body), keys(&["a.jpg", "g.jpg"]));
    // g.jpg's cat (70) does not qualify, so its dog (90) must list it.
    let (_, body) = get(&app, "/v1/images?tags=dog,cat&match=any&min_confidence=80").await;
    assert_eq!(ids(&body), keys(&["c.jpg", "b.jpg", "a.jpg", "g.jpg"]));
    let (_, body) = get(&app, "/v1/images?tags=dog,cat&min_confidence=80").await;
    assert_eq!(ids(&body), Vec::<String>::new());
}

#[tokio::test]
async fn exclude_removes_images_with_the_tag() {
    let app = app(&fixture());
    let (_, body) = get(&app, "/v1/images?tags=dog&exclude=Grass").await;
    assert_eq!(ids(&body), keys(&["g.jpg", "b.jpg", "d.jpg"]));
    // At any confidence: a.jpg's dog is excluded whatever min_confidence says.
    let (_, body) = get(&app, "/v1/images?tags=cat,dog&match=any&exclude=sofa,car").await;
    assert_eq!(ids(&body), keys(&["b.jpg", "g.jpg", "a.jpg"]));
    // Without tags it filters the listing of tagged images.
    let (_, body) = get(&app, "/v1/images?exclude=dog").await;
    assert_eq!(ids(&body), keys(&["h.jpg", "c.jpg"]));
    // A tag both wanted and excluded finds nothing, without reading postings.
    let (_, body) = get(&app, "/v1/images?tags=dog&exclude=dog").await;
    assert_eq!(ids(&body), Vec::<String>::new());
}

#[tokio::test]
async fn category_searches_alone_and_with_tags() {
    let store = fixture();
    let app = app(&store);
    let (status, body) = get(&app, "/v1/images?category=Animals%20and%20Pets").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Ties (b and g at 90) go by id.
    let (first, second) = if id("b.jpg") < id("g.jpg") {
        ("b.jpg", "g.jpg")
    } else {
        ("g.jpg", "b.jpg")
    };
    assert_eq!(
        ids(&body),
        keys(&["c.jpg", "a.jpg", first, second, "d.jpg"])
    );
    let (_, body) = get(&app, "/v1/images?category=nature&tags=dog").await;
    assert_eq!(ids(&body), keys(&["a.jpg"]));
    let (_, body) = get(&app, "/v1/images?category=NATURE&tags=dog,tree&match=any").await;
    assert_eq!(ids(&body), keys(&["a.jpg", "h.jpg"]));
    let (_, body) = get(&app, "/v1/images?category=home&tags=cat&min_confidence=99").await;
    assert_eq!(ids(&body), keys(&["c.jpg"]));
}

#[tokio::test]
async fn status_listings_are_newest_first() {
    let app = app(&fixture());
    let (_, body) = get(&app, "/v1/images?status=pending").await;
    assert_eq!(ids(&body), keys(&["p.jpg", "f.jpg"]));
    assert_eq!(body["items"][0]["score"], Value::Null);
    let (_, body) = get(&app, "/v1/images?status=rejected").await;
    assert_eq!(body["items"][0]["reason"], "not an image");
    let pages = all_pages(&app, "/v1/images?limit=2").await;
    assert_eq!(
        concat_ids(&pages),
        keys(&["h.jpg", "g.jpg", "d.jpg", "c.jpg", "b.jpg", "a.jpg"])
    );
}

#[tokio::test]
async fn a_search_that_cannot_match_reads_no_postings() {
    let store = fixture();
    let app = app(&store);
    for uri in [
        "/v1/images?tags=unicorn",
        "/v1/images?tags=dog,unicorn",
        "/v1/images?category=unicorns",
        "/v1/images?tags=dog&category=unicorns&match=any",
        "/v1/images?tags=dog&exclude=dog",
    ] {
        let before = store.calls.index_reads();
        let (status, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(ids(&body), Vec::<String>::new(), "{uri}");
        assert_eq!(body["next_cursor"], Value::Null, "{uri}");
        assert_eq!(store.calls.index_reads(), before, "{uri} walked an index");
    }
    // The port has no scan; the point is that an empty answer costs one
    // batch of counts and nothing else.
    assert_eq!(Calls::get(&store.calls.get_images), 0);
}

// ----------------------------------------------------------------- cursors

#[tokio::test]
async fn cursors_resume_after_the_last_item_returned() {
    let store = fixture();
    let app = app(&store);
    let (_, first) = get(&app, "/v1/images?tags=dog&limit=2").await;
    assert_eq!(ids(&first), keys(&["a.jpg", "g.jpg"]));
    let cursor = next_cursor(&first).expect("more follow");
    let (_, second) = get(
        &app,
        &format!("/v1/images?tags=dog&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(ids(&second), keys(&["b.jpg", "d.jpg"]));
    // The page size may change between pages; the query may not.
    let (status, third) = get(
        &app,
        &format!("/v1/images?tags=dog&limit=3&cursor={cursor}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&third), keys(&["b.jpg", "d.jpg"]));
}

#[tokio::test]
async fn tampered_and_replayed_cursors_are_refused() {
    let app = app(&fixture());
    let (_, first) = get(&app, "/v1/images?tags=dog&limit=1").await;
    let cursor = next_cursor(&first).expect("more follow");

    // Flip one character of the payload and, separately, of the signature.
    let flip = |text: &str, at: usize| -> String {
        let mut chars: Vec<char> = text.chars().collect();
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect()
    };
    let dot = cursor.find('.').expect("payload.signature");
    for tampered in [
        flip(&cursor, 3),
        flip(&cursor, dot + 3),
        cursor.replace('.', ""),
    ] {
        let (status, body) = get(
            &app,
            &format!("/v1/images?tags=dog&limit=1&cursor={tampered}"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{tampered}");
        assert_eq!(error_code(&body), "invalid_cursor");
    }

    for other in [
        "/v1/images?tags=cat&limit=1",
        "/v1/images?tags=dog&min_confidence=50&limit=1",
        "/v1/images?tags=dog&exclude=grass&limit=1",
        "/v1/images?tags=dog&match=any&limit=1",
        "/v1/images?tags=dog&category=nature&limit=1",
        "/v1/images?limit=1",
    ] {
        let (status, body) = get(&app, &format!("{other}&cursor={cursor}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{other}");
        assert_eq!(error_code(&body), "invalid_cursor", "{other}");
    }

    // Another deployment's key does not validate either.
    let stranger = router(AppState::new(fixture(), b"someone else's secret key"));
    let (status, body) = get(
        &stranger,
        &format!("/v1/images?tags=dog&limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_cursor");

    // Equivalent spellings of the same query share cursors.
    let (status, _) = get(
        &app,
        &format!("/v1/images?tags=%20DOG,dog&limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_examination_budget_bounds_each_request_and_continuing_finds_everything() {
    let store = MemoryStore::default();
    let total = 3000;
    let mut wanted = BTreeSet::new();
    for i in 0..total {
        let confidence = (10_000 - 3 * i) as f32 / 100.0;
        let mut labels = vec![label("common", confidence, &[])];
        // All but five carry "noise"; those five sit at the end of common's
        // postings, so a naive search would walk all 3000 in one request.
        if (2990..2995).contains(&i) {
            wanted.insert(id(&format!("{i}.jpg")));
        } else {
            labels.push(label("noise", 50.0, &[]));
        }
        store.insert(record(
            &format!("{i}.jpg"),
            ImageStatus::Tagged,
            labels,
            i64::from(i),
        ));
    }
    let store = Arc::new(store);
    let app = app(&store);
    let uri = "/v1/images?tags=common&exclude=noise&limit=20";
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    let mut requests = 0;
    let mut short_pages_with_cursor = 0;
    loop {
        let page_uri = match &cursor {
            None => uri.to_owned(),
            Some(cursor) => format!("{uri}&cursor={cursor}"),
        };
        let before = store.calls.examined();
        let (status, body) = get(&app, &page_uri).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let examined = store.calls.examined() - before;
        assert!(examined <= 1000, "one request examined {examined} postings");
        requests += 1;
        found.extend(ids(&body));
        cursor = next_cursor(&body);
        if cursor.is_some() && ids(&body).len() < 20 {
            short_pages_with_cursor += 1;
        }
        if cursor.is_none() || requests > 10 {
            break;
        }
    }
    assert!(
        short_pages_with_cursor >= 2,
        "the budget cut requests short"
    );
    assert!(requests <= 4, "{requests} requests");
    assert_eq!(found.len(), wanted.len(), "no duplicates");
    assert_eq!(found.into_iter().collect::<BTreeSet<_>>(), wanted);
}

// ---------------------------------------------------------------- tags

#[tokio::test]
async fn tags_list_most_used_first_or_by_prefix() {
    let app = app(&fixture());
    let (status, body) = get(&app, "/v1/tags").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["name"].as_str())
        .collect();
    assert_eq!(names, ["dog", "cat", "car", "grass", "sofa", "tree"]);
    assert_eq!(body["items"][0]["image_count"], 6);
    assert_eq!(body["items"][0]["kind"], "tag");

    let (_, body) = get(&app, "/v1/tags?prefix=%20CA&limit=1").await;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["items"][0]["name"], "car");
    let (_, body) = get(&app, "/v1/tags?prefix=ca").await;
    let names: Vec<&str> = body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["name"].as_str())
        .collect();
    assert_eq!(names, ["car", "cat"]);

    let (_, body) = get(&app, "/v1/tags?kind=category&limit=2").await;
    assert_eq!(body["items"][0]["name"], "animals and pets");
    assert_eq!(body["items"][0]["kind"], "category");
    assert_eq!(body["items"][1]["name"], "nature");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(2));
}

// ---------------------------------------------------------------- CORS

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let store = fixture();
    let allowed = HeaderValue::from_static("https://photos.example.com");
    let with_cors = router(
        AppState::new(Arc::<MemoryStore>::clone(&store), SECRET)
            .with_cors_origins(vec![allowed.clone()]),
    );
    let without = app(&store);
    let request = |origin: &str| {
        Request::builder()
            .uri("/v1/tags")
            .header(header::ORIGIN, origin)
            .body(Body::empty())
            .expect("valid request")
    };
    let (_, _, headers) = send(&with_cors, request("https://photos.example.com")).await;
    assert_eq!(
        headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        Some(&allowed)
    );
    let (_, _, headers) = send(&with_cors, request("https://evil.example.com")).await;
    assert_eq!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN), None);
    let (_, _, headers) = send(&without, request("https://photos.example.com")).await;
    assert_eq!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN), None);

    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/images")
        .header(header::ORIGIN, "https://photos.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .body(Body::empty())
        .expect("valid request");
    let (status, _, headers) = send(&with_cors, preflight).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        Some(&allowed)
    );
}

// ------------------------------------------------------ randomized check

const TAGS: [&str; 8] = [
    "cat", "dog", "tree", "car", "sky", "beach", "person", "food",
];
const CATEGORIES: [&str; 3] = ["animals", "nature", "vehicles"];
const STATUSES: [ImageStatus; 5] = [
    ImageStatus::Tagged,
    ImageStatus::Pending,
    ImageStatus::Failed,
    ImageStatus::Rejected,
    ImageStatus::Deleted,
];

fn random_store(rng: &mut StdRng) -> MemoryStore {
    let store = MemoryStore::default();
    for n in 0..250 {
        let key = format!("img-{n}.jpg");
        let mut labels = Vec::new();
        for tag in TAGS {
            if rng.random_bool(0.3) {
                // Coarse confidences make plenty of ties.
                let confidence = if rng.random_bool(0.5) {
                    rng.random_range(50..=100) as f32
                } else {
                    rng.random_range(5000..=10_000) as f32 / 100.0
                };
                let categories: &[&str] = if rng.random_bool(0.5) {
                    &CATEGORIES[rng.random_range(0..CATEGORIES.len())..][..1]
                } else {
                    &[]
                };
                labels.push(label(tag, confidence, categories));
            }
        }
        // Few distinct times, so the status listing has ties too.
        let updated = rng.random_range(0..40);
        let roll = rng.random_range(0..100);
        if roll < 75 {
            store.insert(record(&key, ImageStatus::Tagged, labels, updated));
        } else if roll < 90 {
            // Indexed, then deleted or re-uploaded: postings linger.
            store.insert(record(&key, ImageStatus::Tagged, labels, updated));
            let status = if roll < 82 {
                ImageStatus::Deleted
            } else {
                ImageStatus::Pending
            };
            store.set_status(&id(&key), status);
        } else {
            let status = STATUSES[rng.random_range(1..STATUSES.len())];
            store.insert(record(&key, status, labels, updated));
        }
    }
    store
}

struct RandomQuery {
    tags: Vec<&'static str>,
    exclude: Vec<&'static str>,
    category: Option<&'static str>,
    any: bool,
    min_confidence: f32,
    status: ImageStatus,
    limit: usize,
}

impl RandomQuery {
    fn generate(rng: &mut StdRng) -> Self {
        let pick = |rng: &mut StdRng, n: usize| -> Vec<&'static str> {
            (0..n)
                .map(|_| TAGS[rng.random_range(0..TAGS.len())])
                .collect()
        };
        let status = if rng.random_bool(0.15) {
            STATUSES[rng.random_range(0..STATUSES.len())]
        } else {
            ImageStatus::Tagged
        };
        let tagged = status == ImageStatus::Tagged;
        let tag_count = if tagged { rng.random_range(0..=3) } else { 0 };
        let exclude_count = if tagged { rng.random_range(0..=2) } else { 0 };
        Self {
            tags: pick(rng, tag_count),
            exclude: pick(rng, exclude_count),
            category: (tagged && rng.random_bool(0.3))
                .then(|| CATEGORIES[rng.random_range(0..CATEGORIES.len())]),
            any: rng.random_bool(0.5),
            min_confidence: [0.0, 60.0, 75.0, 90.0][rng.random_range(0..4)],
            status,
            limit: rng.random_range(1..=12),
        }
    }

    fn uri(&self) -> String {
        let mut uri = format!(
            "/v1/images?limit={}&status={}&min_confidence={}&match={}",
            self.limit,
            self.status.as_str(),
            self.min_confidence,
            if self.any { "any" } else { "all" }
        );
        if !self.tags.is_empty() {
            uri.push_str(&format!("&tags={}", self.tags.join(",")));
        }
        if !self.exclude.is_empty() {
            uri.push_str(&format!("&exclude={}", self.exclude.join(",")));
        }
        if let Some(category) = self.category {
            uri.push_str(&format!("&category={category}"));
        }
        uri
    }

    /// The answer by brute force over every record.
    fn expected(&self, store: &MemoryStore) -> BTreeSet<String> {
        let qualifies = |tag: &str, image: &str| {
            store
                .posting(&tag_term(tag), image)
                .is_some_and(|c| c >= self.min_confidence)
        };
        store
            .records()
            .into_iter()
            .filter(|record| record.status == self.status)
            .map(|record| record.image_id)
            .filter(|image| {
                let tags_ok = if self.tags.is_empty() {
                    true
                } else if self.any {
                    self.tags.iter().any(|t| qualifies(t, image))
                } else {
                    self.tags.iter().all(|t| qualifies(t, image))
                };
                let category_ok = self
                    .category
                    .is_none_or(|c| store.posting(&category_term(c), image).is_some());
                let not_excluded = self
                    .exclude
                    .iter()
                    .all(|t| store.posting(&tag_term(t), image).is_none());
                tags_ok && category_ok && not_excluded
            })
            .collect()
    }
}

#[tokio::test]
async fn paginated_results_match_brute_force_on_random_data() {
    let mut rng = StdRng::seed_from_u64(0x1A6E_7A65);
    let store = Arc::new(random_store(&mut rng));
    let budgets = [1, 3, 17, 64, 1000];
    for round in 0..150 {
        let query = RandomQuery::generate(&mut rng);
        let budget = budgets[rng.random_range(0..budgets.len())];
        let app = router(
            AppState::new(Arc::<MemoryStore>::clone(&store), SECRET).with_examine_budget(budget),
        );
        let uri = query.uri();
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..5000 {
            let page_uri = match &cursor {
                None => uri.clone(),
                Some(cursor) => format!("{uri}&cursor={cursor}"),
            };
            let before = store.calls.examined();
            let (status, body) = get(&app, &page_uri).await;
            assert_eq!(status, StatusCode::OK, "round {round}: {page_uri}: {body}");
            assert!(
                store.calls.examined() - before <= budget,
                "round {round}: over budget"
            );
            assert!(
                ids(&body).len() <= query.limit,
                "round {round}: page too long"
            );
            cursor = next_cursor(&body);
            pages.push(body);
            if cursor.is_none() {
                break;
            }
        }
        assert!(
            cursor.is_none(),
            "round {round}: {uri}: pagination did not end"
        );
        let found = concat_ids(&pages);
        let unique: HashSet<&String> = found.iter().collect();
        assert_eq!(
            unique.len(),
            found.len(),
            "round {round}: {uri}: duplicates"
        );
        let found: BTreeSet<String> = found.into_iter().collect();
        assert_eq!(
            found,
            query.expected(&store),
            "round {round}: {uri} (budget {budget})"
        );

        let items: Vec<&Value> = pages
            .iter()
            .flat_map(|page| page["items"].as_array().into_iter().flatten())
            .collect();
        assert!(
            items
                .iter()
                .all(|item| item["status"] == query.status.as_str()),
            "round {round}: {uri}: wrong status"
        );
        // One driver for the whole walk: its confidence never goes up.
        let single_driver = (!query.tags.is_empty() && (!query.any || query.tags.len() == 1))
            || (query.tags.is_empty() && query.category.is_some());
        if single_driver {
            let scores: Vec<f64> = items.iter().filter_map(|i| i["score"].as_f64()).collect();
            assert_eq!(scores.len(), items.len(), "round {round}: scores missing");
            assert!(
                scores.windows(2).all(|w| w[0] >= w[1]),
                "round {round}: {uri}: scores out of order {scores:?}"
            );
        }
        if query.tags.is_empty() && query.category.is_none() {
            let times: Vec<(&str, &str)> = items
                .iter()
                .map(|i| {
                    (
                        i["updated_at"].as_str().unwrap_or_default(),
                        i["id"].as_str().unwrap_or_default(),
                    )
                })
                .collect();
            assert!(
                times.windows(2).all(|w| w[0] > w[1]),
                "round {round}: {uri}: listing out of order"
            );
        }
    }
}

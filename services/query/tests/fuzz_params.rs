//! Property test over the query string: whatever a client sends to the read
//! endpoints — unknown, repeated, huge, negative, non-numeric, unicode or
//! percent-mangled parameters, forged cursors — the answer is a JSON 2xx or
//! 4xx, never a 5xx and never a panic.

mod memory;

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use imagetag_query::{AppState, router};
use imagetag_shared::model::ImageStatus;
use memory::{MemoryStore, label, record};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::ServiceExt;

const KEYS: &[&str] = &[
    "tags",
    "match",
    "exclude",
    "min_confidence",
    "category",
    "status",
    "limit",
    "cursor",
    "prefix",
    "kind",
    "bogus",
    "",
    "tags[]",
    "LIMIT",
];

const PATHS: &[&str] = &[
    "/v1/images",
    "/v1/tags",
    "/v1/images/0123456789abcdef0123456789abcdef",
    "/v1/images/not-an-id",
    "/v1/stats",
];

fn value(rng: &mut StdRng) -> String {
    let pieces: &[&str] = &[
        "dog",
        "cat,dog",
        "all",
        "any",
        "none",
        "-1",
        "0",
        "100",
        "101",
        "1e309",
        "NaN",
        "inf",
        "99999999999999999999",
        "%FF%FE",
        "%00",
        "%2C%2C%2C",
        "ü%20é",
        "<script>",
        "tagged",
        "deleted",
        "pending",
        "eyJ2IjoxfQ.AAAA",
        "a.b.c",
        " ",
        "%",
        "+",
        "😀",
        "category",
    ];
    let mut out = String::new();
    for _ in 0..rng.random_range(0..4) {
        if rng.random_bool(0.15) {
            // Long values, to hit the length limits.
            out.push_str(&"x".repeat(rng.random_range(90..400)));
        } else {
            out.push_str(pieces[rng.random_range(0..pieces.len())]);
        }
        if rng.random_bool(0.3) {
            out.push(',');
        }
    }
    out
}

#[tokio::test]
async fn no_query_string_produces_a_server_error() {
    let store = Arc::new(MemoryStore::default());
    for (i, key) in ["a.jpg", "b.jpg", "c.jpg"].iter().enumerate() {
        store.insert(record(
            key,
            ImageStatus::Tagged,
            vec![
                label("Dog", 90.0 - i as f32, &["Animals and Pets"]),
                label("Cat", 50.0, &[]),
            ],
            i as i64,
        ));
    }
    let app = router(AppState::new(store, b"fuzzing secret of enough length"));
    let mut rng = StdRng::seed_from_u64(0x01a6_e7a6);
    for case in 0..3000 {
        let path = PATHS[rng.random_range(0..PATHS.len())];
        let query: Vec<String> = (0..rng.random_range(0..6))
            .map(|_| {
                format!(
                    "{}={}",
                    KEYS[rng.random_range(0..KEYS.len())],
                    value(&mut rng)
                )
            })
            .collect();
        let uri = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", query.join("&"))
        };
        let Ok(request) = Request::builder().uri(&uri).body(Body::empty()) else {
            continue; // not a valid URI at all: never reaches a server
        };
        let response = app
            .clone()
            .oneshot(request)
            .await
            .expect("infallible router");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("readable body");
        assert!(
            !status.is_server_error(),
            "case {case}: {uri} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(
            serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
            "case {case}: {uri} answered non-JSON: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

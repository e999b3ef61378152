//! Faults on the embedded wiring: `imagetag up` stopped with SIGTERM while
//! it tags a batch finishes (or releases) its in-flight work and exits
//! cleanly; restarted, it indexes every image exactly once. (kill -9
//! mid-scan is covered by `embedded_up.rs`, hostile files by
//! `hostile_input.rs`.)
//!
//! Tagging uses the Rekognition backend against moto, so every image gets
//! the same label and the test controls nothing but the faults.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use imagetag_shared::ports::Queue;
use serde_json::Value;
use support::Moto;
use support::api::{self, get_json, until};
use support::corpus;
use support::up::{LABEL, Up};

const PATIENCE: Duration = Duration::from_secs(180);

/// Waits until search, tag count and stats all say exactly `expected`.
async fn settle(http: &reqwest::Client, up: &Up, expected: &BTreeSet<String>) {
    until(
        "the index to match the folder",
        PATIENCE,
        || up.log(),
        || async {
            let mut keys = BTreeSet::new();
            let mut cursor = String::new();
            loop {
                let mut url = up.url("/v1/images?tags=mobile%20phone&limit=25");
                if !cursor.is_empty() {
                    url.push_str(&format!("&cursor={}", api::urlencode(&cursor)));
                }
                let (status, page) = get_json(http, &url).await;
                if status != 200 {
                    return None;
                }
                for item in page["items"].as_array()? {
                    let key = item["key"].as_str()?.to_owned();
                    assert!(keys.insert(key.clone()), "{key} listed twice");
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = next.to_owned(),
                    None => break,
                }
            }
            let (_, tags) = get_json(http, &up.url("/v1/tags")).await;
            let count = tags["items"]
                .as_array()?
                .iter()
                .find(|t| t["name"] == LABEL)
                .and_then(|t| t["image_count"].as_u64());
            let (_, stats) = get_json(http, &up.url("/v1/stats")).await;
            let exact = &keys == expected
                && count == Some(expected.len() as u64)
                && stats["images"]["tagged"] == expected.len()
                && stats["images"]["pending"] == 0;
            exact.then_some(())
        },
    )
    .await;
}

async fn tagged_count(http: &reqwest::Client, up: &Up) -> u64 {
    let (_, stats): (u16, Value) = get_json(http, &up.url("/v1/stats")).await;
    stats["images"]["tagged"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_batch_stops_cleanly_and_a_restart_indexes_everything_once() {
    let moto = Moto::start().await;
    let root = tempfile::tempdir().expect("temp dir");
    let images = root.path().join("photos");
    let log = root.path().join("up.log");
    std::fs::create_dir_all(images.join("batch")).expect("mkdir");
    let http = api::http();

    let mut expected = BTreeSet::new();
    for i in 0..40u32 {
        let key = format!("batch/img {i:02}.png");
        std::fs::write(images.join(&key), corpus::png(300 + i, 200, i as u8)).expect("write");
        expected.insert(key);
    }

    let mut up = Up::start(&moto, &images, &log, &[]);
    until(
        "the first image indexed",
        PATIENCE,
        || up.log(),
        || async { (tagged_count(&http, &up).await > 0).then_some(()) },
    )
    .await;
    let status = up.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", up.log());
    let said = up.log();
    assert_eq!(
        said.matches("consumer stopped").count(),
        3,
        "each consumer stops cleanly:\n{said}"
    );

    // Nothing was left hidden: every message still queued is visible now,
    // for the next start to take at once (finished work was deleted,
    // unfinished work released). Looking counts as a receive, which only
    // adds one to the messages' receive counts.
    let queues = imagetag_embedded::QueueDb::open(&images.join(".imagetag/queues.db"))
        .expect("open the queue database");
    let mut waiting = 0;
    for name in ["events", "tag-jobs", "index"] {
        let depth = queues.depth(name).await.expect("depth");
        let visible = queues
            .queue(name, None, u32::MAX)
            .receive(10_000, Duration::ZERO, Duration::ZERO)
            .await
            .expect("receive")
            .len() as u64;
        assert_eq!(
            visible, depth,
            "{name}: messages left invisible after SIGTERM"
        );
        waiting += depth;
    }
    eprintln!("{waiting} message(s) waiting after SIGTERM");
    drop(queues);

    // Files added while it is stopped join the batch.
    for i in 40..50u32 {
        let key = format!("batch/img {i:02}.png");
        std::fs::write(images.join(&key), corpus::png(300 + i, 200, i as u8)).expect("write");
        expected.insert(key);
    }
    let up = Up::start(&moto, &images, &log, &[]);
    settle(&http, &up, &expected).await;
    assert!(!up.log().contains("panicked"), "{}", up.log());
}

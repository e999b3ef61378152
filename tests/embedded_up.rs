//! `imagetag up` end to end on a real folder: files copied in, deleted,
//! overwritten and renamed while it runs, and a kill -9 in the middle of the
//! start-up scan. Whatever happens, the index ends exactly in the state of
//! the folder: nothing lost, duplicated or stale.
//!
//! Tagging uses the Rekognition backend against moto so every image gets
//! the same deterministic label; the built-in models have their own tests.

mod support;

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Moto;
use support::services::binary;
use support::up::{LABEL, Up};

fn write_png(path: &Path, seed: u32) {
    let img = image::RgbImage::from_fn(48 + seed % 17, 40, |x, y| {
        image::Rgb([(x * seed) as u8, (y + seed) as u8, seed as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, out.into_inner()).expect("write image");
}

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    let response = http.get(url).send().await.ok()?;
    response.status().is_success().then_some(())?;
    response.json().await.ok()
}

/// Every key the API finds under the label, paging to the end; panics on a
/// key seen twice.
async fn indexed_keys(http: &reqwest::Client, up: &Up) -> Option<BTreeSet<String>> {
    let mut keys = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let mut url = up.url("/v1/images?tags=mobile%20phone&limit=7");
        if !cursor.is_empty() {
            url.push_str("&cursor=");
            url.push_str(&cursor);
        }
        let page = get(http, &url).await?;
        for item in page["items"].as_array()? {
            let key = item["key"].as_str()?.to_owned();
            assert!(keys.insert(key.clone()), "{key} listed twice");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return Some(keys),
        }
    }
}

async fn label_count(http: &reqwest::Client, up: &Up) -> Option<u64> {
    let tags = get(http, &up.url("/v1/tags")).await?;
    Some(
        tags["items"]
            .as_array()?
            .iter()
            .find(|t| t["name"] == LABEL)
            .and_then(|t| t["image_count"].as_u64())
            .unwrap_or(0),
    )
}

/// Waits until the index holds exactly `expected` (keys, counts, stats).
async fn settle(http: &reqwest::Client, up: &Up, expected: &BTreeSet<String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    while Instant::now() < deadline {
        let keys = indexed_keys(http, up).await;
        let count = label_count(http, up).await;
        let stats = get(http, &up.url("/v1/stats")).await;
        let pending = stats.as_ref().and_then(|s| s["images"]["pending"].as_u64());
        if keys.as_ref() == Some(expected)
            && count == Some(expected.len() as u64)
            && pending == Some(0)
            && stats.as_ref().and_then(|s| s["images"]["tagged"].as_u64())
                == Some(expected.len() as u64)
        {
            return;
        }
        last = Some((keys, count, stats));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "{what}: index never matched the folder\nexpected {expected:?}\nlast seen {last:?}\nlog:\n{}",
        up.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_the_folder_through_changes_and_a_kill_9() {
    let moto = Moto::start().await;
    let root = tempfile::tempdir().expect("temp dir");
    let images = root.path().join("photos");
    let log = root.path().join("up.log");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // Thirty images wait in the folder before the first start.
    let mut expected = BTreeSet::new();
    for i in 0..30u32 {
        let key = format!("batch/img {i:02}.png");
        write_png(&images.join(&key), i + 1);
        expected.insert(key);
    }

    // Killed with SIGKILL as soon as the first image is indexed: the scan
    // and the tagging are mid-way.
    let mut up = Up::start(&moto, &images, &log, &["--max-receives", "3"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if label_count(&http, &up).await.unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing indexed:\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    up.kill_9();
    let partial = {
        let restarted = Up::start(&moto, &images, &log, &["--max-receives", "3"]);
        settle(&http, &restarted, &expected, "after kill -9 and restart").await;
        restarted
    };
    let mut up = partial;

    // Live changes: a new file, a delete, an overwrite, a rename, a folder
    // rename, and a file that is not an image.
    write_png(&images.join("new.png"), 99);
    expected.insert("new.png".into());
    std::fs::remove_file(images.join("batch/img 00.png")).expect("delete");
    expected.remove("batch/img 00.png");
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_png(&images.join("batch/img 01.png"), 1234);
    std::fs::rename(images.join("batch/img 02.png"), images.join("renamed.png")).expect("rename");
    expected.remove("batch/img 02.png");
    expected.insert("renamed.png".into());
    std::fs::create_dir_all(images.join("folder")).expect("mkdir");
    write_png(&images.join("folder/inside.png"), 7);
    settle(
        &http,
        &up,
        &{
            let mut e = expected.clone();
            e.insert("folder/inside.png".into());
            e
        },
        "after live changes",
    )
    .await;
    std::fs::rename(images.join("folder"), images.join("moved")).expect("rename folder");
    expected.insert("moved/inside.png".into());
    std::fs::write(images.join("notes.txt"), "not an image").expect("write");
    settle(&http, &up, &expected, "after a folder rename").await;

    let overwritten = imagetag_shared::model::image_id("local", "batch/img 01.png");
    let record = get(&http, &up.url(&format!("/v1/images/{overwritten}")))
        .await
        .expect("record");
    assert_eq!(
        record["facts"]["width"],
        48 + 1234 % 17,
        "the overwrite was re-tagged: {record}"
    );
    let notes = imagetag_shared::model::image_id("local", "notes.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = get(&http, &up.url(&format!("/v1/images/{notes}"))).await
            && r["status"] == "rejected"
        {
            assert!(
                r["reason"].as_str().unwrap_or("").contains("text/plain"),
                "{r}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "notes.txt never rejected:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Changes made while it is down are found by the start-up scan.
    up.kill_9();
    std::fs::remove_file(images.join("new.png")).expect("delete while down");
    expected.remove("new.png");
    write_png(&images.join("while down.png"), 5);
    expected.insert("while down.png".into());
    let up = Up::start(&moto, &images, &log, &["--max-receives", "3"]);
    settle(&http, &up, &expected, "after changes while stopped").await;
    let thumbnail = http
        .get(up.url(&format!(
            "/v1/images/{}/thumbnail",
            imagetag_shared::model::image_id("local", "while down.png")
        )))
        .send()
        .await
        .expect("thumbnail");
    assert_eq!(thumbnail.status(), 200);

    // The CLI against the running API: search, tags, stats and the chart.
    let api = up.url("");
    let cli = |args: &[&str]| {
        let out = Command::new(binary("imagetag"))
            .args(args)
            .env("IMAGETAG_API", &api)
            .output()
            .expect("run the CLI");
        assert!(
            out.status.success(),
            "imagetag {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let found: Value =
        serde_json::from_str(&cli(&["search", "--json", "--limit", "100", LABEL])).expect("json");
    assert_eq!(
        found["items"].as_array().map(Vec::len),
        Some(expected.len())
    );
    let none: Value =
        serde_json::from_str(&cli(&["search", "--json", LABEL, "-phone"])).expect("json");
    assert_eq!(
        none["items"].as_array().map(Vec::len),
        Some(0),
        "the parent tag excludes them all"
    );
    let table = cli(&["tags"]);
    assert!(table.contains(LABEL), "{table}");
    let chart = root.path().join("tags.png");
    let summary = cli(&["stats", "--plot", chart.to_str().expect("utf-8 path")]);
    assert!(
        summary.contains(&format!("{} tagged", expected.len())),
        "{summary}"
    );
    let plot = image::open(&chart).expect("the chart is a PNG");
    assert_eq!(plot.width(), 900);
    let bad = Command::new(binary("imagetag"))
        .args(["search", "--json", "--min-confidence", "500", "x"])
        .env("IMAGETAG_API", &api)
        .output()
        .expect("run the CLI");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("min_confidence"));
}

//! A generated corpus of hostile and broken uploads (see
//! `support/corpus.rs`) through both wirings: the four service binaries on
//! moto, and `imagetag up` on a folder. Every case must end in its defined
//! state — tagged with the right upright dimensions, or rejected with a
//! reason that says why — with the tagger's refusals (and only those) in the
//! tag jobs' dead-letter queue, the index consistent, no panic, every
//! service still ready and the tagger's peak memory bounded.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use imagetag_shared::model::image_id;
use serde_json::Value;
use support::api::{self, get_json, until};
use support::corpus::{self, Case, Expect, Stage};
use support::index::consistent_snapshot;
use support::services::{Pipeline, peak_rss_kib};
use support::up::Up;
use support::{Moto, deploy, unique_prefix};

const PATIENCE: Duration = Duration::from_secs(180);
/// Peak resident memory any service may reach on this corpus. Generous on
/// purpose: it catches a decompression bomb being allocated (gigabytes),
/// not ordinary growth.
const MEMORY_BOUND_KIB: u64 = 1_500 * 1024;

/// Checks one settled record against its case; `None` when it matches.
async fn mismatch(
    http: &reqwest::Client,
    api_base: &str,
    case: &Case,
    id: &str,
    record: &Value,
) -> Option<String> {
    let status = record["status"].as_str().unwrap_or("");
    match &case.expect {
        Expect::Tagged {
            width,
            height,
            red_corner,
        } => {
            if status != "tagged" {
                return Some(format!("expected tagged, got {record}"));
            }
            let stored = (
                record["facts"]["width"].as_u64(),
                record["facts"]["height"].as_u64(),
            );
            if stored != (Some(u64::from(*width)), Some(u64::from(*height))) {
                return Some(format!("expected {width}×{height}, got {stored:?}"));
            }
            if record["labels"].as_array().is_none_or(Vec::is_empty) {
                return Some(format!("tagged without labels: {record}"));
            }
            if let Some(corner) = red_corner {
                let url = format!("{api_base}/v1/images/{id}/thumbnail");
                let bytes = match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.ok()?,
                    other => return Some(format!("thumbnail: {other:?}")),
                };
                let thumbnail = match image::load_from_memory(&bytes) {
                    Ok(image) => image.into_rgb8(),
                    Err(err) => return Some(format!("thumbnail does not decode: {err}")),
                };
                let found = corpus::red_corner(&thumbnail);
                if found != Some(*corner) {
                    return Some(format!(
                        "orientation not applied: red marker at {found:?}, expected {corner:?}"
                    ));
                }
            }
            None
        }
        Expect::Rejected { reason, .. } => {
            let stored = record["reason"].as_str().unwrap_or("");
            if status != "rejected" || !stored.contains(reason) {
                return Some(format!(
                    "expected rejected because of {reason:?}, got {status} {stored:?}"
                ));
            }
            None
        }
    }
}

/// Waits until every case's record has left `pending`, then checks them all
/// and panics listing every case that ended in the wrong state.
async fn check_cases(
    http: &reqwest::Client,
    api_base: &str,
    bucket: &str,
    cases: &[&Case],
    logs: impl Fn() -> String,
) {
    let records: BTreeMap<String, Value> = until(
        "every case to reach an end state",
        PATIENCE,
        &logs,
        || async {
            let mut settled = BTreeMap::new();
            for case in cases {
                let id = image_id(bucket, &case.key);
                let (status, body) = get_json(http, &format!("{api_base}/v1/images/{id}")).await;
                if status != 200 || body["status"] == "pending" {
                    return None;
                }
                settled.insert(case.key.clone(), body);
            }
            Some(settled)
        },
    )
    .await;
    let mut wrong = Vec::new();
    for case in cases {
        let id = image_id(bucket, &case.key);
        if let Some(problem) = mismatch(http, api_base, case, &id, &records[&case.key]).await {
            wrong.push(format!("{:?}: {problem}", case.key));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases ended in the wrong state:\n{}\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n"),
        logs()
    );
}

fn refused_by_tagger(bucket: &str, cases: &[&Case]) -> BTreeSet<String> {
    cases
        .iter()
        .filter(|c| {
            matches!(
                c.expect,
                Expect::Rejected {
                    stage: Stage::Tagger,
                    ..
                }
            )
        })
        .map(|c| image_id(bucket, &c.key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_end_in_defined_states_on_the_aws_wiring() {
    let moto = Moto::start().await;
    let prefix = unique_prefix("hostile");
    let stack = deploy(&moto, &prefix, &[("MaxReceiveCount", "2")]).await;
    let bucket = stack.output("BucketName").to_owned();
    let limit = corpus::SIZE_LIMIT.to_string();
    let mut pipeline = Pipeline::start_with(
        &moto,
        &stack,
        &[("IMAGETAG_MAX_OBJECT_BYTES", limit.as_str())],
    );
    pipeline.serialize_index_commits();
    let http = api::http();
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    let s3 = moto.s3_client().await;
    let sqs = moto.sqs_client().await;

    let all = corpus::cases("corpus/");
    let cases: Vec<&Case> = all.iter().collect();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    for case in &cases {
        s3.put_object()
            .bucket(&bucket)
            .key(&case.key)
            .content_type(case.content_type)
            .body(ByteStream::from(case.body.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {:?}: {e:?}", case.key));
    }
    let logs = || pipeline.logs();
    check_cases(&http, &pipeline.api(""), &bucket, &cases, logs).await;

    // The tagger's refusals, and nothing else, end in the tag jobs' DLQ
    // after the bounded redeliveries; the other queues have no casualties.
    let expected_dead = refused_by_tagger(&bucket, &cases);
    let tag_dlq = stack.output("TagDeadLetterQueueUrl").to_owned();
    until(
        "the tagger's refusals in the tag DLQ",
        PATIENCE,
        logs,
        || async {
            let (visible, hidden) = api::queue_depth(&sqs, &tag_dlq).await;
            (visible + hidden >= expected_dead.len() as u64).then_some(())
        },
    )
    .await;
    let dead = api::image_ids(&api::all_bodies(&sqs, &tag_dlq).await);
    assert_eq!(dead, expected_dead, "tag DLQ");
    for dlq in ["EventsDeadLetterQueueUrl", "IndexDeadLetterQueueUrl"] {
        assert_eq!(
            api::queue_depth(&sqs, stack.output(dlq)).await,
            (0, 0),
            "{dlq} holds messages"
        );
    }

    let snapshot = consistent_snapshot(&moto.dynamodb_client().await, &stack).await;
    let tagged = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Tagged { .. }))
        .count();
    assert_eq!(snapshot.status_count("tagged"), tagged, "{snapshot:?}");
    assert_eq!(
        snapshot.status_count("rejected"),
        cases.len() - tagged,
        "{:?}",
        snapshot.by_status()
    );

    // Nobody panicked, stalled or ballooned: every service is ready and a
    // normal upload after the corpus is tagged as usual.
    assert!(
        pipeline.panics().is_empty(),
        "panics: {:?}",
        pipeline.panics()
    );
    for process in &pipeline.processes {
        let peak = process
            .peak_rss_kib()
            .unwrap_or_else(|| panic!("{} exited\n{}", process.name, pipeline.logs()));
        eprintln!("{} peak RSS: {} MiB", process.name, peak / 1024);
        assert!(
            peak < MEMORY_BOUND_KIB,
            "{} peaked at {peak} KiB",
            process.name
        );
    }
    pipeline.wait_ready(&http, Duration::from_secs(10)).await;
    let after = "after the corpus.png";
    s3.put_object()
        .bucket(&bucket)
        .key(after)
        .content_type("image/png")
        .body(ByteStream::from(corpus::png(50, 40, 99)))
        .send()
        .await
        .expect("PUT after");
    let id = image_id(&bucket, after);
    until("a normal upload after the corpus", PATIENCE, logs, || {
        let url = pipeline.api(&format!("/v1/images/{id}"));
        let http = http.clone();
        async move { (get_json(&http, &url).await.1["status"] == "tagged").then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_files_end_in_defined_states_in_imagetag_up() {
    // moto only answers the Rekognition calls (one deterministic label).
    let moto = Moto::start().await;
    let root = tempfile::tempdir().expect("temp dir");
    let images = root.path().join("photos");
    let data = root.path().join("data");
    let all = corpus::cases("corpus/");
    let cases: Vec<&Case> = all.iter().filter(|c| c.as_file).collect();
    assert!(cases.len() >= 30, "{} file cases", cases.len());
    for case in &cases {
        let path = images.join(&case.key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &case.body)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    let size_limit = corpus::SIZE_LIMIT.to_string();
    let data_dir = data.to_str().expect("utf-8 temp path");
    let flags = [
        "--max-receives",
        "2",
        "--max-object-bytes",
        &size_limit,
        "--data",
        data_dir,
    ];
    let mut up = Up::start(&moto, &images, &root.path().join("up.log"), &flags);
    let base = up.url("");
    let http = api::http();
    let logs = || up.log();
    check_cases(&http, &base, "local", &cases, logs).await;

    // The tagger's refusals wait in the embedded tag jobs' DLQ.
    let expected_dead = refused_by_tagger("local", &cases);
    let queues = imagetag_embedded::queue::QueueDb::open(&data.join("queues.db"))
        .expect("open the queue database");
    until(
        "the tagger's refusals in the DLQ",
        PATIENCE,
        logs,
        || async {
            let depth = queues.depth("tag-jobs-dlq").await.ok()?;
            (depth >= expected_dead.len() as u64).then_some(())
        },
    )
    .await;
    assert_eq!(
        queues.depth("tag-jobs-dlq").await.expect("depth"),
        expected_dead.len() as u64
    );
    for queue in ["events-dlq", "index-dlq", "events", "tag-jobs", "index"] {
        assert_eq!(
            queues.depth(queue).await.expect("depth"),
            0,
            "{queue} is not empty"
        );
    }

    let (_, stats) = get_json(&http, &format!("{base}/v1/stats")).await;
    let tagged = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Tagged { .. }))
        .count();
    assert_eq!(stats["images"]["tagged"], tagged, "{stats}");
    assert_eq!(stats["images"]["rejected"], cases.len() - tagged, "{stats}");

    let log = up.log();
    assert!(!log.contains("panicked"), "a panic:\n{log}");
    let peak = peak_rss_kib(up.pid()).expect("imagetag up is running");
    eprintln!("imagetag up peak RSS: {} MiB", peak / 1024);
    assert!(peak < MEMORY_BOUND_KIB, "imagetag up peaked at {peak} KiB");
    let (status, _) = get_json(&http, &format!("{base}/readyz")).await;
    assert_eq!(status, 200, "not ready after the corpus");
    assert!(up.is_running(), "imagetag up exited");
}

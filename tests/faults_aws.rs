//! Faults on the AWS wiring: the four service binaries on moto, with the
//! CloudFormation stack deployed into it. Each test breaks something — a
//! kill -9 mid-batch, duplicated and out-of-order S3 events, a dependency
//! refusing or throttling for a while, messages that can never succeed, jobs
//! slower than their visibility timeout, SIGTERM mid-work — and then asserts
//! the end state: what the index (read straight from DynamoDB and through
//! the API) and the dead-letter queues contain.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use imagetag_shared::model::image_id;
use serde_json::Value;
use support::api::{self, get_json, s3_event, until, urlencode};
use support::corpus;
use support::index::{IndexSnapshot, consistent_snapshot};
use support::proxy::{Fault, FaultProxy};
use support::services::{ONE_COMMIT_AT_A_TIME, Pipeline, SERVICES, binary};
use support::stack::Stack;
use support::{Moto, deploy, unique_prefix};

const PATIENCE: Duration = Duration::from_secs(180);
const DLQS: [&str; 3] = [
    "EventsDeadLetterQueueUrl",
    "TagDeadLetterQueueUrl",
    "IndexDeadLetterQueueUrl",
];

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) -> String {
    let content_type = if body.starts_with(&[0xFF, 0xD8]) {
        "image/jpeg"
    } else {
        "image/png"
    };
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {key}: {e:?}"))
        .e_tag()
        .unwrap_or_default()
        .to_owned()
}

async fn stats(http: &reqwest::Client, pipeline: &Pipeline) -> Option<Value> {
    let (status, body) = get_json(http, &pipeline.api("/v1/stats")).await;
    (status == 200).then_some(body)
}

fn count(stats: &Value, status: &str) -> u64 {
    stats["images"][status].as_u64().unwrap_or(0)
}

/// Waits until the API reports `tagged` tagged images and none pending.
async fn wait_tagged(http: &reqwest::Client, pipeline: &Pipeline, tagged: u64, what: &str) {
    until(
        what,
        PATIENCE,
        || pipeline.logs(),
        || async {
            let stats = stats(http, pipeline).await?;
            (count(&stats, "tagged") == tagged && count(&stats, "pending") == 0).then_some(())
        },
    )
    .await;
}

async fn wait_status(http: &reqwest::Client, pipeline: &Pipeline, id: &str, status: &str) -> Value {
    let url = pipeline.api(&format!("/v1/images/{id}"));
    until(
        &format!("{id} to be {status}"),
        PATIENCE,
        || pipeline.logs(),
        || async {
            let (code, body) = get_json(http, &url).await;
            (code == 200 && body["status"] == status).then_some(body)
        },
    )
    .await
}

/// Every key a tag search lists, paging to the end; panics on a duplicate.
async fn search_all(http: &reqwest::Client, pipeline: &Pipeline, tag: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = pipeline.api(&format!("/v1/images?tags={}&limit=50", urlencode(tag)));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let (status, body) = get_json(http, &url).await;
        assert_eq!(status, 200, "{url}: {body}");
        for item in body["items"].as_array().expect("items") {
            let key = item["key"].as_str().expect("key").to_owned();
            assert!(keys.insert(key.clone()), "{key} listed twice");
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return keys,
        }
    }
}

/// The label moto's Rekognition gives every image, read from a record.
async fn the_label(http: &reqwest::Client, pipeline: &Pipeline, id: &str) -> String {
    let (_, record) = get_json(http, &pipeline.api(&format!("/v1/images/{id}"))).await;
    record["labels"][0]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no label: {record}"))
        .to_lowercase()
}

async fn tag_count(http: &reqwest::Client, pipeline: &Pipeline, tag: &str) -> Option<u64> {
    let (_, tags) = get_json(http, &pipeline.api("/v1/tags?limit=100")).await;
    tags["items"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == tag)
        .and_then(|t| t["image_count"].as_u64())
}

async fn assert_dlqs_empty(sqs: &aws_sdk_sqs::Client, stack: &Stack, pipeline: &Pipeline) {
    for dlq in DLQS {
        let depth = api::queue_depth(sqs, stack.output(dlq)).await;
        assert_eq!(depth, (0, 0), "{dlq} holds messages\n{}", pipeline.logs());
    }
}

/// The index read from DynamoDB is consistent and holds exactly `keys`, all
/// tagged; the API agrees (search, tag count, stats); no service panicked.
async fn assert_exactly_indexed(
    moto: &Moto,
    stack: &Stack,
    http: &reqwest::Client,
    pipeline: &Pipeline,
    keys: &BTreeSet<String>,
) -> IndexSnapshot {
    let snapshot = consistent_snapshot(&moto.dynamodb_client().await, stack).await;
    let tagged: BTreeSet<String> = snapshot
        .records
        .values()
        .filter(|r| r.status == "tagged")
        .map(|r| r.key.clone())
        .collect();
    assert_eq!(&tagged, keys, "tagged records");
    let first = keys.iter().next().expect("at least one key");
    let first = snapshot.by_key(first).expect("a record");
    let label = the_label(http, pipeline, &first.image_id).await;
    assert_eq!(&search_all(http, pipeline, &label).await, keys, "search");
    assert_eq!(
        tag_count(http, pipeline, &label).await,
        Some(keys.len() as u64),
        "tag count of {label:?}"
    );
    assert_eq!(
        snapshot.counts.get(&format!("tag:{label}")).copied(),
        Some(keys.len() as i64),
        "stored count"
    );
    assert!(
        pipeline.panics().is_empty(),
        "panics: {:?}",
        pipeline.panics()
    );
    snapshot
}

/// A batch on its way in, and how many images were tagged before it.
struct Progress {
    uploads: tokio::task::JoinHandle<()>,
    before: u64,
}

/// Uploads `batch` from a task of its own, so a fault lands while the batch
/// is still arriving and being worked on, and returns once `victim`'s stage
/// has made progress on it.
async fn upload_and_wait_for_progress(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    http: &reqwest::Client,
    pipeline: &Pipeline,
    victim: &str,
    batch: Vec<(String, Vec<u8>)>,
) -> Progress {
    let before = stats(http, pipeline).await.expect("stats");
    let (recorded, tagged) = (
        count(&before, "pending") + count(&before, "tagged"),
        count(&before, "tagged"),
    );
    let uploads = tokio::spawn({
        let s3 = s3.clone();
        let bucket = bucket.to_owned();
        async move {
            for (key, body) in batch {
                put(&s3, &bucket, &key, body).await;
            }
        }
    });
    until(
        &format!("progress before stopping {victim}"),
        PATIENCE,
        || pipeline.logs(),
        || async {
            let now = stats(http, pipeline).await?;
            let progressed = if victim == "ingest" {
                count(&now, "pending") + count(&now, "tagged") > recorded
            } else {
                count(&now, "tagged") > tagged
            };
            progressed.then_some(())
        },
    )
    .await;
    Progress {
        uploads,
        before: tagged,
    }
}

/// Starts `victim` again; the indexer comes back one commit at a time, as
/// moto's non-isolated conditional writes need for exact counts.
fn restart(pipeline: &mut Pipeline, victim: &str) {
    if victim == "indexer" {
        pipeline.serialize_index_commits();
    } else {
        pipeline.spawn(victim);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_or_sigterm_of_each_service_mid_batch_indexes_every_image_exactly_once() {
    let moto = Moto::start().await;
    let stack = deploy(&moto, &unique_prefix("kill"), &[]).await;
    let bucket = stack.output("BucketName").to_owned();
    // Short visibility: what a killed process held reappears in seconds.
    let mut pipeline = Pipeline::start_with(&moto, &stack, &[("IMAGETAG_VISIBILITY_SECONDS", "4")]);
    pipeline.serialize_index_commits();
    let http = api::http();
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    let s3 = moto.s3_client().await;
    let sqs = moto.sqs_client().await;

    let mut keys = BTreeSet::new();
    for (round, victim) in SERVICES.into_iter().enumerate() {
        let batch: Vec<(String, Vec<u8>)> = (0..40u32)
            .map(|i| {
                (
                    format!("{victim}/img {i:02}.png"),
                    corpus::png(200 + i, 150, (round * 40) as u8 + i as u8),
                )
            })
            .collect();
        keys.extend(batch.iter().map(|(key, _)| key.clone()));
        let progress =
            upload_and_wait_for_progress(&s3, &bucket, &http, &pipeline, victim, batch).await;
        let done = stats(&http, &pipeline)
            .await
            .map(|s| count(&s, "tagged"))
            .unwrap_or_default();
        eprintln!(
            "killed {victim} with {} of 40 tagged",
            done.saturating_sub(progress.before)
        );
        pipeline.process(victim).kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        restart(&mut pipeline, victim);
        progress.uploads.await.expect("uploads");
        pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    }

    // SIGTERM mid-batch: the consumer finishes or releases what it holds,
    // so once it has exited nothing of its queue is left invisible.
    for (victim, queue) in [("ingest", "EventsQueueUrl"), ("indexer", "IndexQueueUrl")] {
        let batch: Vec<(String, Vec<u8>)> = (0..20u32)
            .map(|i| {
                (
                    format!("sigterm-{victim}/img {i:02}.png"),
                    corpus::png(180 + i, 120, i as u8),
                )
            })
            .collect();
        keys.extend(batch.iter().map(|(key, _)| key.clone()));
        let progress =
            upload_and_wait_for_progress(&s3, &bucket, &http, &pipeline, victim, batch).await;
        let status = pipeline
            .process(victim)
            .terminate(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{victim} ignored SIGTERM"));
        assert!(status.success(), "{victim} exited with {status:?}");
        let (_, hidden) = api::queue_depth(&sqs, stack.output(queue)).await;
        assert_eq!(hidden, 0, "{victim} left messages invisible after SIGTERM");
        restart(&mut pipeline, victim);
        progress.uploads.await.expect("uploads");
        pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    }

    wait_tagged(&http, &pipeline, keys.len() as u64, "every image tagged").await;
    let snapshot = assert_exactly_indexed(&moto, &stack, &http, &pipeline, &keys).await;
    assert_eq!(
        snapshot.records.len(),
        keys.len(),
        "{:?}",
        snapshot.by_status()
    );
    assert_dlqs_empty(&sqs, &stack, &pipeline).await;
}

/// Sequencers as S3 writes them: hex, compared after zero-padding.
fn sequencer(n: u32) -> String {
    format!("0062E99A88DC40{n:04X}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_late_and_out_of_order_events_leave_the_latest_object_state() {
    let moto = Moto::start().await;
    let prefix = unique_prefix("order");
    let stack = deploy(&moto, &prefix, &[]).await;
    let mut pipeline = Pipeline::start(&moto, &stack);
    pipeline.serialize_index_commits();
    // moto evaluates a conditional UpdateItem and applies it without
    // isolation from concurrent requests, so two generations of one key
    // written at once can both pass their condition (DynamoDB evaluates it
    // atomically). One event at a time keeps the test about ordering, not
    // about that moto limitation.
    pipeline.spawn_with("ingest", &ONE_COMMIT_AT_A_TIME);
    let http = api::http();
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    let s3 = moto.s3_client().await;
    let sqs = moto.sqs_client().await;
    let events_queue = stack.output("EventsQueueUrl").to_owned();
    // A bucket without notifications: the only events are the ones sent
    // here, with S3's sequencers, in the order the test chooses.
    let quiet = format!("{prefix}-quiet");
    s3.create_bucket()
        .bucket(&quiet)
        .send()
        .await
        .expect("quiet bucket");
    let send = |body: String| {
        let sqs = sqs.clone();
        let url = events_queue.clone();
        async move {
            sqs.send_message()
                .queue_url(url)
                .message_body(body)
                .send()
                .await
                .expect("send event");
        }
    };
    let settled = || async {
        for output in ["EventsQueueUrl", "TagQueueUrl", "IndexQueueUrl"] {
            if api::queue_depth(&sqs, stack.output(output)).await != (0, 0) {
                return None;
            }
        }
        Some(())
    };
    let id = |key: &str| image_id(&quiet, key);

    // The same event three times: twice as separate messages, once twice in
    // one message's records.
    let etag = put(&s3, &quiet, "dup.png", corpus::png(61, 41, 1)).await;
    let event = s3_event(
        "ObjectCreated:Put",
        &quiet,
        "dup.png",
        Some(&etag),
        None,
        &sequencer(10),
    );
    send(event.clone()).await;
    send(event.clone()).await;
    let mut doubled: Value = serde_json::from_str(&event).expect("json");
    let record = doubled["Records"][0].clone();
    doubled["Records"]
        .as_array_mut()
        .expect("records")
        .push(record);
    send(doubled.to_string()).await;

    // Older overwrites arriving after the newest was indexed: A, then B,
    // then A again (so the oldest event's ETag matches the object again and
    // only its sequencer shows it is old).
    let a = put(&s3, &quiet, "over.png", corpus::png(30, 20, 2)).await;
    let b = put(&s3, &quiet, "over.png", corpus::png(70, 50, 3)).await;
    let again = put(&s3, &quiet, "over.png", corpus::png(30, 20, 2)).await;
    assert_eq!(a, again, "same bytes, same ETag");
    send(s3_event(
        "ObjectCreated:Put",
        &quiet,
        "over.png",
        Some(&again),
        None,
        &sequencer(22),
    ))
    .await;
    wait_status(&http, &pipeline, &id("over.png"), "tagged").await;
    for (etag, n) in [(&b, 21), (&a, 20)] {
        send(s3_event(
            "ObjectCreated:Put",
            &quiet,
            "over.png",
            Some(etag),
            None,
            &sequencer(n),
        ))
        .await;
    }

    // A delete delivered before the create it follows.
    let gone = put(&s3, &quiet, "gone.png", corpus::png(33, 33, 4)).await;
    s3.delete_object()
        .bucket(&quiet)
        .key("gone.png")
        .send()
        .await
        .expect("delete");
    send(s3_event(
        "ObjectRemoved:Delete",
        &quiet,
        "gone.png",
        None,
        None,
        &sequencer(31),
    ))
    .await;
    send(s3_event(
        "ObjectCreated:Put",
        &quiet,
        "gone.png",
        Some(&gone),
        Some(100),
        &sequencer(30),
    ))
    .await;

    // Create, delete, create again — delivered newest first.
    put(&s3, &quiet, "back.png", corpus::png(20, 20, 5)).await;
    let back = put(&s3, &quiet, "back.png", corpus::png(44, 22, 6)).await;
    for (name, etag, n) in [
        ("ObjectCreated:Put", Some(back.as_str()), 42),
        ("ObjectRemoved:Delete", None, 41),
        (
            "ObjectCreated:Put",
            Some("0123456789abcdef0123456789abcdef"),
            40,
        ),
    ] {
        send(s3_event(
            name,
            &quiet,
            "back.png",
            etag,
            None,
            &sequencer(n),
        ))
        .await;
    }

    // A multipart upload after an empty placeholder PUT: two creation
    // events for one key, delivered at once in either order.
    let placeholder = put(&s3, &quiet, "multi.png", vec![]).await;
    let big = corpus::noise_png(1500, 1400);
    assert!(big.len() > 5 * 1024 * 1024, "two parts need over 5 MiB");
    let upload = s3
        .create_multipart_upload()
        .bucket(&quiet)
        .key("multi.png")
        .content_type("image/png")
        .send()
        .await
        .expect("create multipart");
    let upload_id = upload.upload_id().expect("upload id").to_owned();
    let mut parts = Vec::new();
    for (number, chunk) in big.chunks(5 * 1024 * 1024).enumerate() {
        let number = number as i32 + 1;
        let part = s3
            .upload_part()
            .bucket(&quiet)
            .key("multi.png")
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .expect("upload part");
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(part.e_tag().unwrap_or_default())
                .build(),
        );
    }
    let completed = s3
        .complete_multipart_upload()
        .bucket(&quiet)
        .key("multi.png")
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete multipart");
    let multipart_etag = completed.e_tag().unwrap_or_default().to_owned();
    assert!(
        multipart_etag.contains('-'),
        "a multipart ETag: {multipart_etag}"
    );
    send(s3_event(
        "ObjectCreated:CompleteMultipartUpload",
        &quiet,
        "multi.png",
        Some(&multipart_etag),
        Some(big.len() as u64),
        &sequencer(51),
    ))
    .await;
    send(s3_event(
        "ObjectCreated:Put",
        &quiet,
        "multi.png",
        Some(&placeholder),
        Some(0),
        &sequencer(50),
    ))
    .await;

    until("every event handled", PATIENCE, || pipeline.logs(), settled).await;
    let over = wait_status(&http, &pipeline, &id("over.png"), "tagged").await;
    assert_eq!(
        over["facts"]["width"].as_u64(),
        Some(30),
        "the newest object stays: {over}"
    );
    let back = wait_status(&http, &pipeline, &id("back.png"), "tagged").await;
    assert_eq!(back["facts"]["width"], 44, "{back}");
    let multi = wait_status(&http, &pipeline, &id("multi.png"), "tagged").await;
    assert_eq!(
        (multi["facts"]["width"].as_u64(), multi["size"].as_u64()),
        (Some(1500), Some(big.len() as u64)),
        "{multi}"
    );
    wait_status(&http, &pipeline, &id("dup.png"), "tagged").await;
    let (status, body) = get_json(
        &http,
        &pipeline.api(&format!("/v1/images/{}", id("gone.png"))),
    )
    .await;
    assert_eq!(status, 404, "the delete wins over the older create: {body}");

    // The late A was judged by its sequencer (its ETag matched again).
    let ingest_log = pipeline
        .processes
        .iter()
        .find(|p| p.name == "ingest")
        .map(|p| p.log())
        .unwrap_or_default();
    assert!(
        ingest_log
            .lines()
            .any(|l| l.contains("event older than the record") && l.contains("over.png")),
        "the late event for over.png was not recognised as older"
    );

    let keys: BTreeSet<String> = ["dup.png", "over.png", "back.png", "multi.png"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let snapshot = consistent_snapshot(&moto.dynamodb_client().await, &stack).await;
    let gone = snapshot.by_key("gone.png").expect("a tombstone");
    assert_eq!(gone.status, "deleted");
    assert!(gone.sequence.ends_with(&sequencer(31)), "{gone:?}");
    assert_eq!(
        snapshot.by_key("over.png").map(|r| r.sequence.clone()),
        Some(format!("s{:0>64}", sequencer(22)))
    );
    assert_exactly_indexed(&moto, &stack, &http, &pipeline, &keys).await;
    assert_dlqs_empty(&sqs, &stack, &pipeline).await;
}

/// Polls every named service's /readyz until each answers `ready`.
async fn wait_readiness(
    http: &reqwest::Client,
    pipeline: &Pipeline,
    services: &[&str],
    ready: bool,
    what: &str,
) {
    until(
        what,
        PATIENCE,
        || pipeline.logs(),
        || async {
            for service in services {
                if pipeline.is_ready(http, service).await != ready {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_outages_and_throttling_delay_work_but_lose_nothing() {
    let moto = Moto::start().await;
    let stack = deploy(&moto, &unique_prefix("outage"), &[]).await;
    let bucket = stack.output("BucketName").to_owned();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let mut pipeline = Pipeline::start_with(
        &moto,
        &stack,
        &[("AWS_ENDPOINT_URL", proxy.endpoint.as_str())],
    );
    pipeline.serialize_index_commits();
    let http = api::http();
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    let s3 = moto.s3_client().await;
    let sqs = moto.sqs_client().await;
    let consumers = ["ingest", "tagger", "indexer"];

    let mut keys = BTreeSet::new();
    let batch = |name: &str, n: u32| {
        (0..n)
            .map(|i| format!("{name}/img {i:02}.png"))
            .collect::<Vec<_>>()
    };
    // Each phase: the fault, and the services whose readiness it must turn
    // false (the others must stay ready).
    for (phase, fault, affected) in [
        ("down", Fault::Refuse, &SERVICES[..]),
        (
            "dynamodb-throttled",
            Fault::Throttle(
                "DynamoDB_",
                "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            ),
            &["ingest", "indexer", "query"][..],
        ),
        (
            "rekognition-throttled",
            Fault::Throttle("RekognitionService.", "ThrottlingException"),
            &[][..],
        ),
        ("unavailable", Fault::ServiceUnavailable, &SERVICES[..]),
    ] {
        let names = batch(phase, 12);
        let injected_before = proxy.injected();
        let tagged_before = keys.len() as u64;
        let partial = affected.len() < SERVICES.len();
        if partial {
            // Only some calls fail: the fault is on before the batch comes.
            proxy.set(fault);
        }
        for (i, key) in names.iter().enumerate() {
            put(&s3, &bucket, key, corpus::png(120, 90, i as u8)).await;
        }
        if !partial {
            // The fault starts while the batch is on its way through.
            until(
                &format!("the {phase} batch to start"),
                PATIENCE,
                || pipeline.logs(),
                || async {
                    let stats = stats(&http, &pipeline).await?;
                    (count(&stats, "pending") + count(&stats, "tagged") > tagged_before)
                        .then_some(())
                },
            )
            .await;
            proxy.set(fault);
        }
        wait_readiness(
            &http,
            &pipeline,
            affected,
            false,
            &format!("readiness to turn false ({phase})"),
        )
        .await;
        until(
            &format!("a fault injected ({phase})"),
            PATIENCE,
            || pipeline.logs(),
            || async { (proxy.injected() > injected_before).then_some(()) },
        )
        .await;
        for service in SERVICES.iter().filter(|s| !affected.contains(s)) {
            assert!(
                pipeline.is_ready(&http, service).await,
                "{service} does not depend on what fails ({phase}) and stays ready"
            );
        }
        // Held a while longer, so retries run into it for several rounds.
        tokio::time::sleep(Duration::from_secs(6)).await;
        proxy.set(Fault::None);
        wait_readiness(
            &http,
            &pipeline,
            &SERVICES,
            true,
            &format!("readiness to return after {phase}"),
        )
        .await;
        keys.extend(names);
        wait_tagged(
            &http,
            &pipeline,
            keys.len() as u64,
            &format!("the {phase} batch to be tagged"),
        )
        .await;
    }
    eprintln!(
        "proxy: {} requests forwarded, {} faults injected",
        proxy.forwarded(),
        proxy.injected()
    );

    // Transient errors were retried in place, never counted as permanent,
    // never dead-lettered.
    let mut transient = 0.0;
    for (service, queue) in consumers.iter().zip(["events", "tag-jobs", "index"]) {
        let permanent = pipeline
            .metric(
                &http,
                service,
                &format!("imagetag_messages_failed_total{{queue=\"{queue}\",kind=\"permanent\"}}"),
            )
            .await;
        assert_eq!(permanent, 0.0, "{service} counted permanent failures");
        transient += pipeline
            .metric(
                &http,
                service,
                &format!("imagetag_messages_failed_total{{queue=\"{queue}\",kind=\"transient\"}}"),
            )
            .await;
    }
    assert!(transient > 0.0, "no transient failure was retried");
    assert_dlqs_empty(&sqs, &stack, &pipeline).await;
    assert_exactly_indexed(&moto, &stack, &http, &pipeline, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_reasons_and_redriven_after_a_fix() {
    let moto = Moto::start().await;
    let prefix = unique_prefix("poison");
    let stack = deploy(&moto, &prefix, &[("MaxReceiveCount", "2")]).await;
    let bucket = stack.output("BucketName").to_owned();
    // The tagger starts with a 1-megapixel limit; raising it is the fix.
    let mut pipeline = Pipeline::start(&moto, &stack);
    pipeline.spawn_with("tagger", &[("IMAGETAG_MAX_PIXELS", "1000000")]);
    pipeline.serialize_index_commits();
    let http = api::http();
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    let s3 = moto.s3_client().await;
    let sqs = moto.sqs_client().await;
    let queue = |name: &str| stack.output(name).to_owned();

    // Malformed bodies on every queue.
    let bad_event = format!("{prefix}: not an S3 event");
    sqs.send_message()
        .queue_url(queue("EventsQueueUrl"))
        .message_body(&bad_event)
        .send()
        .await
        .expect("send");
    let bad_index = r#"{"type":"tagged","image_id":42}"#.to_owned();
    let orphan = format!(
        r#"{{"type":"unindex","image_id":"{}","sequence":"t1"}}"#,
        image_id(&bucket, "never-uploaded.png")
    );
    for body in [&bad_index, &orphan] {
        sqs.send_message()
            .queue_url(queue("IndexQueueUrl"))
            .message_body(body)
            .send()
            .await
            .expect("send");
    }
    // An undecodable image, an image over the pixel limit.
    put(
        &s3,
        &bucket,
        "broken.jpg",
        b"\xff\xd8\xff\xe0 not really".to_vec(),
    )
    .await;
    put(&s3, &bucket, "big.png", corpus::png(1250, 1000, 9)).await;
    let broken = image_id(&bucket, "broken.jpg");
    let big = image_id(&bucket, "big.png");

    let record = wait_status(&http, &pipeline, &broken, "rejected").await;
    assert!(
        record["reason"]
            .as_str()
            .is_some_and(|r| r.contains("corrupt or truncated jpeg")),
        "{record}"
    );
    let record = wait_status(&http, &pipeline, &big, "rejected").await;
    assert!(
        record["reason"]
            .as_str()
            .is_some_and(|r| r.contains("too large") && r.contains("1250×1000")),
        "{record}"
    );
    let (_, stats) = get_json(&http, &pipeline.api("/v1/stats")).await;
    assert_eq!(count(&stats, "rejected"), 2, "{stats}");

    // Each in its dead-letter queue after the bounded redeliveries.
    let dead = |name: &'static str, n: u64| {
        let sqs = sqs.clone();
        let url = queue(name);
        async move {
            let (visible, hidden) = api::queue_depth(&sqs, &url).await;
            (visible + hidden == n).then_some(())
        }
    };
    until(
        "the events DLQ",
        PATIENCE,
        || pipeline.logs(),
        || dead("EventsDeadLetterQueueUrl", 1),
    )
    .await;
    until(
        "the index DLQ",
        PATIENCE,
        || pipeline.logs(),
        || dead("IndexDeadLetterQueueUrl", 2),
    )
    .await;
    until(
        "the tag DLQ",
        PATIENCE,
        || pipeline.logs(),
        || dead("TagDeadLetterQueueUrl", 2),
    )
    .await;
    assert_eq!(
        api::all_bodies(&sqs, &queue("EventsDeadLetterQueueUrl")).await,
        vec![bad_event.clone()]
    );
    let index_dead: BTreeSet<String> = api::all_bodies(&sqs, &queue("IndexDeadLetterQueueUrl"))
        .await
        .into_iter()
        .collect();
    assert_eq!(index_dead, BTreeSet::from([bad_index, orphan]));
    assert_eq!(
        api::image_ids(&api::all_bodies(&sqs, &queue("TagDeadLetterQueueUrl")).await),
        BTreeSet::from([broken.clone(), big.clone()])
    );
    // Bounded: each poison message was tried exactly MaxReceiveCount times.
    let tagger_log = pipeline.process("tagger").log();
    let attempts = |id: &str| {
        tagger_log
            .lines()
            .filter(|l| l.contains("image refused") && l.contains(id))
            .count()
    };
    assert_eq!(
        (attempts(&broken), attempts(&big)),
        (2, 2),
        "tagger attempts"
    );

    // The fixes: the broken image is uploaded again, whole; the pixel limit
    // goes back to its default. Then the tag DLQ is re-driven.
    put(&s3, &bucket, "broken.jpg", corpus::jpeg(64, 48, 3)).await;
    pipeline
        .process("tagger")
        .terminate(Duration::from_secs(30));
    pipeline.spawn("tagger");
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    // Both tag DLQ messages must be visible again before the redrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    until(
        "the DLQ messages to be visible",
        PATIENCE,
        || pipeline.logs(),
        || async {
            (api::queue_depth(&sqs, &queue("TagDeadLetterQueueUrl")).await == (2, 0)).then_some(())
        },
    )
    .await;
    let redrive = Command::new(binary("imagetag"))
        .args(["redrive", "--from"])
        .arg(queue("TagDeadLetterQueueUrl"))
        .arg("--to")
        .arg(queue("TagQueueUrl"))
        .envs(&pipeline.env)
        .output()
        .expect("run imagetag redrive");
    let said = String::from_utf8_lossy(&redrive.stdout);
    assert!(
        redrive.status.success() && said.contains("moved 2 message(s)"),
        "redrive: {said}\n{}",
        String::from_utf8_lossy(&redrive.stderr)
    );
    let record = wait_status(&http, &pipeline, &big, "tagged").await;
    assert_eq!(record["facts"]["width"], 1250);
    assert!(record["reason"].is_null(), "{record}");
    let record = wait_status(&http, &pipeline, &broken, "tagged").await;
    assert_eq!(record["facts"]["width"], 64);
    until(
        "the tag DLQ to stay empty",
        PATIENCE,
        || pipeline.logs(),
        || async {
            let settled = api::queue_depth(&sqs, &queue("TagQueueUrl")).await == (0, 0);
            let empty = api::queue_depth(&sqs, &queue("TagDeadLetterQueueUrl")).await == (0, 0);
            (settled && empty).then_some(())
        },
    )
    .await;

    // An object gone before the tagger fetched it: the record says so (the
    // job is settled, not dead-lettered: the removal event speaks for the
    // object); putting the object back makes a new generation, tagged.
    pipeline.process("tagger").kill();
    put(&s3, &bucket, "vanishing.png", corpus::png(80, 60, 10)).await;
    let vanishing = image_id(&bucket, "vanishing.png");
    wait_status(&http, &pipeline, &vanishing, "pending").await;
    // Ingest is stopped so the delete's own event waits and the record
    // stays on this generation long enough to show the tagger's verdict.
    pipeline.process("ingest").kill();
    s3.delete_object()
        .bucket(&bucket)
        .key("vanishing.png")
        .send()
        .await
        .expect("delete");
    pipeline.spawn("tagger");
    let record = wait_status(&http, &pipeline, &vanishing, "failed").await;
    assert!(
        record["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no longer exists")),
        "{record}"
    );
    pipeline.spawn("ingest");
    wait_status_gone(&http, &pipeline, &vanishing).await;
    put(&s3, &bucket, "vanishing.png", corpus::png(80, 60, 10)).await;
    wait_status(&http, &pipeline, &vanishing, "tagged").await;

    let keys: BTreeSet<String> = ["big.png", "broken.jpg", "vanishing.png"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_exactly_indexed(&moto, &stack, &http, &pipeline, &keys).await;
    assert_eq!(
        api::queue_depth(&sqs, &queue("TagDeadLetterQueueUrl")).await,
        (0, 0)
    );
}

/// Waits until the API no longer finds the image (deleted).
async fn wait_status_gone(http: &reqwest::Client, pipeline: &Pipeline, id: &str) {
    let url = pipeline.api(&format!("/v1/images/{id}"));
    until(
        &format!("{id} to be deleted"),
        PATIENCE,
        || pipeline.logs(),
        || async { (get_json(http, &url).await.0 == 404).then_some(()) },
    )
    .await;
}

/// Lines of `log` that are the tagger's "image tagged" for `id`.
fn tagged_lines(log: &str, id: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| {
            entry["message"] == "image tagged"
                && entry["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["image_id"] == id))
        })
        .collect()
}

async fn wait_in_flight(http: &reqwest::Client, pipeline: &Pipeline, what: &str) {
    until(
        what,
        PATIENCE,
        || pipeline.logs(),
        || async {
            let n = pipeline
                .metric(
                    http,
                    "tagger",
                    "imagetag_messages_in_flight{queue=\"tag-jobs\"}",
                )
                .await;
            (n >= 1.0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_jobs_stay_invisible_and_sigterm_finishes_or_releases_work() {
    const VISIBILITY_S: u64 = 2;
    let moto = Moto::start().await;
    let stack = deploy(&moto, &unique_prefix("slow"), &[]).await;
    let bucket = stack.output("BucketName").to_owned();
    let visibility = VISIBILITY_S.to_string();
    let mut pipeline = Pipeline::start_with(
        &moto,
        &stack,
        &[("IMAGETAG_VISIBILITY_SECONDS", visibility.as_str())],
    );
    pipeline.serialize_index_commits();
    let http = api::http();
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    let s3 = moto.s3_client().await;
    let sqs = moto.sqs_client().await;
    let tag_queue = stack.output("TagQueueUrl").to_owned();
    // Large enough that decoding, thumbnailing and labelling it takes the
    // (debug-built) tagger several visibility timeouts. A PNG, because JPEGs
    // are decoded at reduced scale and would be done too soon.
    let slow = corpus::png(4000, 3000, 1);

    // A job slower than the visibility timeout is received once: the
    // consumer keeps extending it, so nobody else starts it meanwhile.
    put(&s3, &bucket, "slow a.png", slow.clone()).await;
    let a = image_id(&bucket, "slow a.png");
    wait_status(&http, &pipeline, &a, "tagged").await;
    let lines = tagged_lines(&pipeline.process("tagger").log(), &a);
    assert_eq!(lines.len(), 1, "tagged once: {lines:?}");
    let took = lines[0]["total_ms"].as_u64().unwrap_or(0);
    eprintln!("the slow job took {took} ms against a {VISIBILITY_S} s visibility timeout");
    assert!(
        took > 2 * VISIBILITY_S * 1000,
        "the job ({took} ms) must outlast the visibility timeout for this test to mean anything"
    );
    let received = pipeline
        .metric(
            &http,
            "tagger",
            "imagetag_messages_received_total{queue=\"tag-jobs\"}",
        )
        .await;
    assert_eq!(received, 1.0, "the slow job was received more than once");

    // SIGTERM with a grace period longer than the job: it finishes first.
    pipeline.spawn_with("tagger", &[("IMAGETAG_SHUTDOWN_GRACE_SECONDS", "120")]);
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    put(&s3, &bucket, "slow b.png", slow.clone()).await;
    let b = image_id(&bucket, "slow b.png");
    wait_in_flight(&http, &pipeline, "the tagger to start on slow b").await;
    let status = pipeline
        .process("tagger")
        .terminate(Duration::from_secs(150))
        .expect("the tagger exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let log = pipeline.process("tagger").log();
    assert_eq!(tagged_lines(&log, &b).len(), 1, "finished before exiting");
    wait_status(&http, &pipeline, &b, "tagged").await;
    assert_eq!(api::queue_depth(&sqs, &tag_queue).await, (0, 0));

    // SIGTERM with a short grace period: the job is released, visible at
    // once to the next tagger rather than after its timeout.
    pipeline.spawn_with("tagger", &[("IMAGETAG_SHUTDOWN_GRACE_SECONDS", "1")]);
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    put(&s3, &bucket, "slow c.png", slow).await;
    let c = image_id(&bucket, "slow c.png");
    wait_in_flight(&http, &pipeline, "the tagger to start on slow c").await;
    let stopped = Instant::now();
    let status = pipeline
        .process("tagger")
        .terminate(Duration::from_secs(60))
        .expect("the tagger exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let log = pipeline.process("tagger").log();
    assert!(log.contains("releasing unfinished messages"), "{log}");
    assert!(tagged_lines(&log, &c).is_empty(), "slow c was not finished");
    let (visible, hidden) = api::queue_depth(&sqs, &tag_queue).await;
    assert_eq!(
        (visible, hidden),
        (1, 0),
        "released right away ({:?} after SIGTERM)",
        stopped.elapsed()
    );
    pipeline.spawn("tagger");
    wait_status(&http, &pipeline, &c, "tagged").await;

    let keys: BTreeSet<String> = ["slow a.png", "slow b.png", "slow c.png"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_exactly_indexed(&moto, &stack, &http, &pipeline, &keys).await;
    assert_dlqs_empty(&sqs, &stack, &pipeline).await;
}

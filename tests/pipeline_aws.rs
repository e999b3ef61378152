//! The pipeline end to end on AWS APIs: the CloudFormation template deployed
//! into moto, the four service binaries running as processes, images PUT
//! into the bucket and found through the query API; then a delete, a
//! non-image, an undecodable image and a poison message.

mod support;

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use imagetag_shared::model::image_id;
use serde_json::Value;
use support::api::{get_json, until, urlencode};
use support::corpus::{jpeg, png};
use support::services::Pipeline;
use support::{Moto, deploy, unique_prefix};

const PATIENCE: Duration = Duration::from_secs(90);

/// Polls `check` until it returns `Some`, failing with the services' logs.
async fn eventually<T, F, Fut>(pipeline: &Pipeline, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    until(what, PATIENCE, || pipeline.logs(), check).await
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>, content_type: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {key}: {e:?}"));
}

async fn image_status(http: &reqwest::Client, pipeline: &Pipeline, id: &str) -> (u16, Value) {
    get_json(http, &pipeline.api(&format!("/v1/images/{id}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_pushed_to_the_bucket_become_searchable_and_failures_are_accounted_for() {
    let moto = Moto::start().await;
    let prefix = unique_prefix("e2e");
    let stack = deploy(&moto, &prefix, &[("MaxReceiveCount", "3")]).await;
    let bucket = stack.output("BucketName").to_owned();
    let mut pipeline = Pipeline::start(&moto, &stack);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    pipeline.wait_ready(&http, Duration::from_secs(60)).await;
    let s3 = moto.s3_client().await;

    // Keys with a space, a plus, non-ASCII characters and nesting.
    let images = [
        ("uploads/cat 1.jpg", jpeg(64, 48, 10), "image/jpeg"),
        ("uploads/Ünïcödé café ☕.png", png(32, 32, 20), "image/png"),
        ("uploads/a+b.png", png(40, 20, 30), "image/png"),
        ("top.jpg", jpeg(16, 16, 40), "image/jpeg"),
    ];
    for (key, body, content_type) in &images {
        put(&s3, &bucket, key, body.clone(), content_type).await;
    }

    let mut label = String::new();
    for (key, _, _) in &images {
        let id = image_id(&bucket, key);
        let record = eventually(&pipeline, &format!("{key} to be tagged"), || {
            let http = http.clone();
            let url = pipeline.api(&format!("/v1/images/{id}"));
            async move {
                let (status, body) = get_json(&http, &url).await;
                (status == 200 && body["status"] == "tagged").then_some(body)
            }
        })
        .await;
        assert_eq!(record["key"], *key, "the record keeps the decoded key");
        assert_eq!(record["bucket"], bucket.as_str());
        let labels = record["labels"].as_array().expect("labels array");
        assert!(!labels.is_empty(), "{key} has labels: {record}");
        label = labels[0]["name"].as_str().expect("label name").to_owned();
        assert!(
            record["facts"]["width"].as_u64().unwrap_or(0) > 0,
            "{record}"
        );
        assert_eq!(record["model"]["backend"], "rekognition");
    }

    // moto's Rekognition gives every image the same label, so one tag search
    // finds all of them, paged.
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = pipeline.api(&format!("/v1/images?tags={}&limit=3", urlencode(&label)));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let (status, body) = get_json(&http, &url).await;
        assert_eq!(status, 200, "{body}");
        for item in body["items"].as_array().expect("items") {
            found.push(item["key"].as_str().expect("key").to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    found.sort();
    let mut expected: Vec<String> = images.iter().map(|(k, _, _)| k.to_string()).collect();
    expected.sort();
    assert_eq!(
        found, expected,
        "a tag search finds every image exactly once"
    );

    let tag_count = |body: &Value| {
        body["items"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|t| t["name"].as_str() == Some(&label.to_lowercase()))
            })
            .and_then(|t| t["image_count"].as_u64())
    };
    let (_, tags) = get_json(&http, &pipeline.api("/v1/tags")).await;
    assert_eq!(tag_count(&tags), Some(4), "{tags}");

    // Thumbnails were made by the tagger; originals are served as images.
    let cat_id = image_id(&bucket, "uploads/cat 1.jpg");
    let thumbnail = http
        .get(pipeline.api(&format!("/v1/images/{cat_id}/thumbnail")))
        .send()
        .await
        .expect("thumbnail");
    assert_eq!(thumbnail.status(), 200);
    assert_eq!(thumbnail.headers()["content-type"], "image/jpeg");
    let thumb = image::load_from_memory(&thumbnail.bytes().await.expect("bytes")).expect("a JPEG");
    assert_eq!(
        (thumb.width(), thumb.height()),
        (64, 48),
        "small images keep their size"
    );
    let content = http
        .get(pipeline.api(&format!("/v1/images/{cat_id}/content")))
        .send()
        .await
        .expect("content");
    assert_eq!(content.headers()["content-type"], "image/jpeg");
    assert_eq!(content.bytes().await.expect("bytes").to_vec(), images[0].1);

    // A browser-style upload: ask the API, PUT to the presigned S3 URL.
    let upload_body = png(120, 80, 77);
    let ticket: Value = http
        .post(pipeline.api("/v1/uploads"))
        .bearer_auth(&pipeline.api_key)
        .json(&serde_json::json!({
            "filename": "holiday snap.png",
            "content_type": "image/png",
            "size": upload_body.len(),
        }))
        .send()
        .await
        .expect("upload ticket")
        .json()
        .await
        .expect("ticket json");
    let uploaded_key = ticket["key"].as_str().expect("key").to_owned();
    assert!(uploaded_key.starts_with("uploads/"), "{ticket}");
    let mut request = http.put(ticket["upload"]["url"].as_str().expect("url"));
    for (name, value) in ticket["upload"]["headers"].as_object().expect("headers") {
        request = request.header(name.as_str(), value.as_str().expect("header value"));
    }
    let stored = request
        .body(upload_body.clone())
        .send()
        .await
        .expect("presigned PUT");
    assert!(
        stored.status().is_success(),
        "presigned PUT: {}",
        stored.status()
    );
    let uploaded_id = ticket["image_id"].as_str().expect("image id").to_owned();
    eventually(&pipeline, "the uploaded image to be tagged", || {
        let http = http.clone();
        let url = pipeline.api(&format!("/v1/images/{uploaded_id}"));
        async move {
            let (status, body) = get_json(&http, &url).await;
            (status == 200 && body["status"] == "tagged").then_some(())
        }
    })
    .await;
    // The URL is signed for that object only: its type and length are part
    // of the signature (S3 enforces it; moto does not check signatures).
    let signed: Vec<String> = ticket["upload"]["headers"]
        .as_object()
        .expect("headers")
        .keys()
        .map(|k| k.to_ascii_lowercase())
        .collect();
    assert!(signed.contains(&"content-type".to_owned()), "{ticket}");
    assert!(signed.contains(&"content-length".to_owned()), "{ticket}");
    let url = ticket["upload"]["url"].as_str().expect("url");
    assert!(url.contains("X-Amz-Expires=300"), "short-lived: {url}");
    s3.delete_object()
        .bucket(&bucket)
        .key(&uploaded_key)
        .send()
        .await
        .expect("delete upload");
    eventually(&pipeline, "the upload's deletion", || {
        let http = http.clone();
        let url = pipeline.api(&format!("/v1/images/{uploaded_id}"));
        async move { (get_json(&http, &url).await.0 == 404).then_some(()) }
    })
    .await;

    let (_, stats) = get_json(&http, &pipeline.api("/v1/stats")).await;
    assert_eq!(stats["images"]["tagged"], 4, "{stats}");

    // One upload is one trace: ingest, tagger and indexer log the trace id
    // that travelled with the messages.
    let trace_of = |service: &str, message: &str| -> Option<String> {
        pipeline
            .processes
            .iter()
            .find(|p| p.name == service)
            .map(|p| p.log())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["message"] == message && line_mentions(entry, &cat_id))
            .find_map(|entry| trace_id_of(&entry))
    };
    let ingest_trace = trace_of("ingest", "queued for tagging").expect("ingest logged a trace id");
    assert_eq!(ingest_trace.len(), 32, "{ingest_trace}");
    assert_eq!(
        trace_of("tagger", "image tagged").as_deref(),
        Some(ingest_trace.as_str())
    );
    assert_eq!(
        trace_of("indexer", "indexed").as_deref(),
        Some(ingest_trace.as_str())
    );

    // Every service exposes its Prometheus metrics.
    for (service, expected) in [
        (
            "ingest",
            "imagetag_messages_processed_total{queue=\"events\"}",
        ),
        (
            "tagger",
            "imagetag_images_tagged_total{backend=\"rekognition\"}",
        ),
        ("tagger", "imagetag_tagger_stage_seconds_bucket{"),
        (
            "indexer",
            "imagetag_message_processing_seconds_count{queue=\"index\"}",
        ),
        (
            "query",
            "imagetag_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/images\",status=\"200\"}",
        ),
    ] {
        let port = pipeline
            .processes
            .iter()
            .find(|p| p.name == service)
            .expect("running")
            .health_port;
        let text = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        assert!(
            text.contains(expected),
            "{service} /metrics lacks {expected}:\n{text}"
        );
    }

    // Deleting an object removes it from search, the record and the counts.
    s3.delete_object()
        .bucket(&bucket)
        .key("top.jpg")
        .send()
        .await
        .expect("delete");
    let deleted_id = image_id(&bucket, "top.jpg");
    eventually(&pipeline, "the deleted image to disappear", || {
        let http = http.clone();
        let url = pipeline.api(&format!("/v1/images/{deleted_id}"));
        async move { (get_json(&http, &url).await.0 == 404).then_some(()) }
    })
    .await;
    eventually(&pipeline, "the tag count to drop to 3", || {
        let http = http.clone();
        let url = pipeline.api("/v1/tags");
        let label = label.to_lowercase();
        async move {
            let (_, body) = get_json(&http, &url).await;
            let count = body["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .find(|t| t["name"].as_str() == Some(&label))
                    .and_then(|t| t["image_count"].as_u64())
            });
            (count == Some(3)).then_some(())
        }
    })
    .await;
    let (_, body) = get_json(
        &http,
        &pipeline.api(&format!("/v1/images?tags={}&limit=100", urlencode(&label))),
    )
    .await;
    let keys: Vec<&str> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["key"].as_str())
        .collect();
    assert!(!keys.contains(&"top.jpg"), "{body}");
    assert_eq!(keys.len(), 3, "{body}");

    // Not an image: rejected by ingest with a reason, never tagged.
    put(
        &s3,
        &bucket,
        "uploads/page.html",
        b"<html><script>alert(1)</script></html>".to_vec(),
        "text/html",
    )
    .await;
    let html_id = image_id(&bucket, "uploads/page.html");
    let record = eventually(&pipeline, "the HTML object to be rejected", || {
        let http = http.clone();
        let pipeline = &pipeline;
        let id = html_id.clone();
        async move {
            let (status, body) = image_status(&http, pipeline, &id).await;
            (status == 200 && body["status"] == "rejected").then_some(body)
        }
    })
    .await;
    assert!(
        record["reason"]
            .as_str()
            .unwrap_or("")
            .contains("text/html"),
        "{record}"
    );

    // Says JPEG, is not: the tagger records why, and the job ends in the
    // tag queue's dead-letter queue after the bounded retries.
    put(
        &s3,
        &bucket,
        "uploads/broken.jpg",
        b"\xff\xd8\xff\xe0 definitely not a jpeg".to_vec(),
        "image/jpeg",
    )
    .await;
    let broken_id = image_id(&bucket, "uploads/broken.jpg");
    let record = eventually(&pipeline, "the undecodable image to be rejected", || {
        let http = http.clone();
        let pipeline = &pipeline;
        let id = broken_id.clone();
        async move {
            let (status, body) = image_status(&http, pipeline, &id).await;
            (status == 200 && body["status"] == "rejected").then_some(body)
        }
    })
    .await;
    assert!(
        !record["reason"].as_str().unwrap_or("").is_empty(),
        "{record}"
    );

    let sqs = moto.sqs_client().await;
    let tag_dlq = stack.output("TagDeadLetterQueueUrl").to_owned();
    let dead_job = eventually(
        &pipeline,
        "the undecodable image's job in the tag DLQ",
        || {
            let sqs = sqs.clone();
            let url = tag_dlq.clone();
            let id = broken_id.clone();
            async move {
                receive_bodies(&sqs, &url)
                    .await
                    .into_iter()
                    .find(|b| b.contains(&id))
            }
        },
    )
    .await;
    assert!(dead_job.contains("uploads/broken.jpg"), "{dead_job}");

    // A poison message on the events queue reaches its dead-letter queue.
    let poison = format!("poison-{prefix}: not an S3 event");
    sqs.send_message()
        .queue_url(stack.output("EventsQueueUrl"))
        .message_body(&poison)
        .send()
        .await
        .expect("send poison");
    let events_dlq = stack.output("EventsDeadLetterQueueUrl").to_owned();
    eventually(&pipeline, "the poison message in the events DLQ", || {
        let sqs = sqs.clone();
        let url = events_dlq.clone();
        let poison = poison.clone();
        async move {
            receive_bodies(&sqs, &url)
                .await
                .contains(&poison)
                .then_some(())
        }
    })
    .await;
    let ingest_log = pipeline.process("ingest").log();
    assert!(
        ingest_log.contains("not JSON") && ingest_log.contains("dead-letter"),
        "ingest logs why the poison message failed"
    );

    // The good images are all still there.
    for (key, _, _) in &images[..3] {
        let (status, body) = image_status(&http, &pipeline, &image_id(&bucket, key)).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("tagged")),
            "{key}"
        );
    }
}

/// Whether a JSON log line is about `image_id` (as a field of the event or
/// of one of its spans).
fn line_mentions(entry: &Value, image_id: &str) -> bool {
    entry["image_id"] == image_id
        || entry["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|s| s["image_id"] == image_id))
}

fn trace_id_of(entry: &Value) -> Option<String> {
    entry["spans"]
        .as_array()?
        .iter()
        .find_map(|s| s["trace_id"].as_str().filter(|t| !t.is_empty()))
        .map(str::to_owned)
}

async fn receive_bodies(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .wait_time_seconds(1)
        .send()
        .await
        .map(|out| {
            out.messages()
                .iter()
                .filter_map(|m| m.body().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

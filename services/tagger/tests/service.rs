//! `TaggerService::handle` against in-memory ports and a deterministic
//! backend: what each kind of job sends to the index queue and how it ends.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use image::{ImageFormat, Rgb, RgbImage};
use imagetag_shared::consumer::{HandleError, Handler};
use imagetag_shared::error::{PortError, PortResult};
use imagetag_shared::messages::{IndexMessage, TagJob};
use imagetag_shared::model::{ImageFacts, Label, ModelInfo, TagOutput};
use imagetag_shared::ports::{
    DecodedImage, ObjectMeta, ObjectStore, Queue, QueueMessage, TaggingBackend,
};
use imagetag_shared::telemetry;
use imagetag_tagger::TaggerService;
use imagetag_tagger::decode::{DecodeLimits, Decoder};
use imagetag_tagger::policy::Policy;
use imagetag_tagger::pool::CpuPool;
use opentelemetry::trace::TracerProvider as _;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

const BUCKET: &str = "images";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const MAX_OBJECT_BYTES: u64 = 1024 * 1024;

// ------------------------------------------------------------------ ports

#[derive(Default)]
struct MemoryObjects {
    objects: Mutex<HashMap<String, (Bytes, String)>>,
    gets: Mutex<u32>,
}

impl MemoryObjects {
    fn put_object(&self, key: &str, body: Bytes, etag: &str) {
        self.objects
            .lock()
            .expect("lock")
            .insert(key.to_owned(), (body, etag.to_owned()));
    }

    fn gets(&self) -> u32 {
        *self.gets.lock().expect("lock")
    }
}

#[async_trait]
impl ObjectStore for MemoryObjects {
    async fn head(&self, _bucket: &str, key: &str) -> PortResult<Option<ObjectMeta>> {
        Ok(self
            .objects
            .lock()
            .expect("lock")
            .get(key)
            .map(|(body, etag)| ObjectMeta {
                size: body.len() as u64,
                content_type: None,
                etag: Some(etag.clone()),
                version_id: None,
            }))
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        expected_etag: Option<&str>,
        max_bytes: u64,
    ) -> PortResult<Bytes> {
        *self.gets.lock().expect("lock") += 1;
        let objects = self.objects.lock().expect("lock");
        let Some((body, etag)) = objects.get(key) else {
            return Err(PortError::NotFound(format!("s3://{bucket}/{key}")));
        };
        if expected_etag.is_some_and(|expected| expected != etag) {
            return Err(PortError::Conflict(format!(
                "s3://{bucket}/{key} changed since the event"
            )));
        }
        if body.len() as u64 > max_bytes {
            return Err(PortError::Invalid(format!(
                "object is {} bytes, over the {max_bytes}-byte limit",
                body.len()
            )));
        }
        Ok(body.clone())
    }

    async fn put(&self, _: &str, key: &str, body: Bytes, _: &str) -> PortResult<()> {
        self.put_object(key, body, "\"new\"");
        Ok(())
    }
}

#[derive(Default)]
struct RecordingQueue {
    sent: Mutex<Vec<(IndexMessage, HashMap<String, String>)>>,
    fail_sends: Mutex<bool>,
}

impl RecordingQueue {
    fn sent(&self) -> Vec<(IndexMessage, HashMap<String, String>)> {
        self.sent.lock().expect("lock").clone()
    }
}

#[async_trait]
impl Queue for RecordingQueue {
    async fn receive(&self, _: u32, _: Duration, _: Duration) -> PortResult<Vec<QueueMessage>> {
        Ok(vec![])
    }

    async fn send(&self, body: &str, attributes: &HashMap<String, String>) -> PortResult<()> {
        if *self.fail_sends.lock().expect("lock") {
            return Err(PortError::Unavailable("queue down".into()));
        }
        let message: IndexMessage = serde_json::from_str(body).expect("an IndexMessage body");
        self.sent
            .lock()
            .expect("lock")
            .push((message, attributes.clone()));
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

/// Always answers with the same labels, or with the configured error.
#[derive(Default)]
struct FixedBackend {
    fail_with: Mutex<Option<PortError>>,
    seen: Mutex<Vec<(u32, u32, String)>>,
}

fn label(name: &str, confidence: f32, categories: &[&str]) -> Label {
    Label {
        name: name.into(),
        confidence,
        parents: vec![],
        aliases: vec![],
        categories: categories.iter().map(|c| c.to_string()).collect(),
        instances: vec![],
    }
}

#[async_trait]
impl TaggingBackend for FixedBackend {
    fn name(&self) -> &str {
        "fixed"
    }

    fn version(&self) -> String {
        "1.2".into()
    }

    async fn tag(&self, image: &DecodedImage) -> PortResult<TagOutput> {
        self.seen.lock().expect("lock").push((
            image.rgb.width(),
            image.rgb.height(),
            image.format.clone(),
        ));
        if let Some(err) = self.fail_with.lock().expect("lock").take() {
            return Err(err);
        }
        Ok(TagOutput {
            labels: vec![
                label("Grass", 70.0, &["Nature and Outdoors"]),
                label("Text", 99.0, &[]),
                label("Dog", 95.0, &["Animals and Pets"]),
                label("Blur", 30.0, &[]),
                label("Ball", 60.0, &["Sports"]),
            ],
            ..Default::default()
        })
    }
}

// ---------------------------------------------------------------- fixture

struct Fixture {
    objects: Arc<MemoryObjects>,
    queue: Arc<RecordingQueue>,
    backend: Arc<FixedBackend>,
    service: TaggerService<MemoryObjects, RecordingQueue, FixedBackend>,
}

fn fixture() -> Fixture {
    let objects = Arc::new(MemoryObjects::default());
    let queue = Arc::new(RecordingQueue::default());
    let backend = Arc::new(FixedBackend::default());
    let policy = Policy::from_toml(
        r#"
        exclude_labels = ["text"]
        max_labels = 2
        [profiles."sports/"]
        include_categories = ["sports"]
        "#,
    )
    .expect("policy");
    let service = TaggerService::new(
        objects.clone(),
        queue.clone(),
        backend.clone(),
        Decoder::new(DecodeLimits::default(), CpuPool::new(2)),
        Arc::new(policy),
        MAX_OBJECT_BYTES,
    );
    Fixture {
        objects,
        queue,
        backend,
        service,
    }
}

fn png(width: u32, height: u32) -> Bytes {
    let image = RgbImage::from_pixel(width, height, Rgb([1, 2, 3]));
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .expect("encode");
    Bytes::from(out)
}

fn job(key: &str, etag: &str, size: u64) -> TagJob {
    TagJob {
        image_id: imagetag_shared::model::image_id(BUCKET, key),
        bucket: BUCKET.into(),
        key: key.into(),
        sequence: "0001".into(),
        etag: Some(etag.into()),
        version_id: None,
        size,
        content_type: None,
    }
}

fn message(body: String) -> QueueMessage {
    QueueMessage {
        id: "m-1".into(),
        body,
        receipt: "r-1".into(),
        attributes: HashMap::from([(
            "traceparent".to_owned(),
            format!("00-{TRACE_ID}-00f067aa0ba902b7-01"),
        )]),
        receive_count: 1,
    }
}

fn job_message(job: &TagJob) -> QueueMessage {
    message(serde_json::to_string(job).expect("json"))
}

/// Handles `message` the way the consumer does: inside a span that adopted
/// the trace context of the message, with an OpenTelemetry layer installed
/// so spans carry real trace ids.
async fn handle(fixture: &Fixture, message: &QueueMessage) -> Result<(), HandleError> {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let span = tracing::info_span!("message");
    telemetry::adopt(&span, &message.attributes);
    fixture.service.handle(message).instrument(span).await
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn tags_an_image_applying_the_policy_and_passing_the_trace_on() {
    let fixture = fixture();
    let body = png(40, 30);
    fixture
        .objects
        .put_object("photos/dog.png", body.clone(), "\"e1\"");
    let job = job("photos/dog.png", "\"e1\"", body.len() as u64);

    handle(&fixture, &job_message(&job)).await.expect("tagged");

    let sent = fixture.queue.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (message, attributes) = &sent[0];
    assert_eq!(
        message,
        &IndexMessage::Tagged {
            image_id: job.image_id.clone(),
            sequence: "0001".into(),
            facts: ImageFacts {
                width: 40,
                height: 30,
                format: "png".into(),
            },
            model: ModelInfo {
                backend: "fixed".into(),
                version: "1.2".into(),
            },
            // "Text" excluded (case-insensitively), "Blur" under 50, the
            // rest sorted by confidence and cut to two.
            output: TagOutput {
                labels: vec![
                    label("Dog", 95.0, &["Animals and Pets"]),
                    label("Grass", 70.0, &["Nature and Outdoors"]),
                ],
                ..Default::default()
            },
        }
    );
    let traceparent = attributes.get("traceparent").expect("trace context sent");
    assert!(traceparent.contains(TRACE_ID), "{traceparent}");
    assert!(
        attributes.values().all(|value| !value.is_empty()),
        "SQS refuses empty attribute values: {attributes:?}"
    );
    assert_eq!(
        fixture.backend.seen.lock().expect("lock").as_slice(),
        [(40, 30, "png".to_owned())]
    );
}

#[tokio::test]
async fn profile_of_the_key_prefix_applies() {
    let fixture = fixture();
    let body = png(8, 8);
    fixture
        .objects
        .put_object("sports/match.png", body.clone(), "\"e1\"");

    handle(
        &fixture,
        &job_message(&job("sports/match.png", "\"e1\"", body.len() as u64)),
    )
    .await
    .expect("tagged");

    let sent = fixture.queue.sent();
    let Some((IndexMessage::Tagged { output, .. }, _)) = sent.first() else {
        panic!("expected Tagged, got {sent:?}");
    };
    let names: Vec<&str> = output.labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["Ball"]);
}

#[tokio::test]
async fn undecodable_bytes_are_recorded_as_rejected_and_dead_lettered() {
    let fixture = fixture();
    let body = Bytes::from_static(b"%PDF-1.7 definitely not an image");
    fixture
        .objects
        .put_object("docs/file.jpg", body.clone(), "\"e1\"");
    let job = job("docs/file.jpg", "\"e1\"", body.len() as u64);

    let err = handle(&fixture, &job_message(&job))
        .await
        .expect_err("refused");

    let HandleError::Permanent(reason) = err else {
        panic!("expected Permanent, got {err:?}");
    };
    assert!(reason.contains("not a supported image"), "{reason}");
    let sent = fixture.queue.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].0,
        IndexMessage::Failed {
            image_id: job.image_id,
            sequence: "0001".into(),
            rejected: true,
            reason,
        }
    );
    assert!(
        sent[0]
            .1
            .get("traceparent")
            .is_some_and(|t| t.contains(TRACE_ID))
    );
    assert!(fixture.backend.seen.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn decompression_bomb_is_rejected_with_its_size() {
    let fixture = fixture();
    // A 30000×30000 PNG with a few bytes of image data: refused from the
    // header, before anything is inflated.
    let mut body = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 30_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&30_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut body, b"IHDR", &ihdr);
    png_chunk(
        &mut body,
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1],
    );
    png_chunk(&mut body, b"IEND", &[]);
    let body = Bytes::from(body);
    fixture
        .objects
        .put_object("bomb.png", body.clone(), "\"e1\"");

    let err = handle(
        &fixture,
        &job_message(&job("bomb.png", "\"e1\"", body.len() as u64)),
    )
    .await
    .expect_err("refused");

    assert!(
        matches!(&err, HandleError::Permanent(reason) if reason.contains("30000×30000")),
        "{err:?}"
    );
    assert!(matches!(
        &fixture.queue.sent()[..],
        [(IndexMessage::Failed { rejected: true, .. }, _)]
    ));
}

#[tokio::test]
async fn changed_object_is_acknowledged_without_a_message() {
    let fixture = fixture();
    let body = png(4, 4);
    fixture
        .objects
        .put_object("a.png", body.clone(), "\"newer\"");

    handle(
        &fixture,
        &job_message(&job("a.png", "\"older\"", body.len() as u64)),
    )
    .await
    .expect("acknowledged");

    assert!(fixture.queue.sent().is_empty());
    assert!(fixture.backend.seen.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn vanished_object_is_recorded_and_acknowledged() {
    let fixture = fixture();
    let job = job("gone.png", "\"e1\"", 100);

    handle(&fixture, &job_message(&job))
        .await
        .expect("acknowledged");

    assert_eq!(
        fixture
            .queue
            .sent()
            .into_iter()
            .map(|(message, _)| message)
            .collect::<Vec<_>>(),
        [IndexMessage::Failed {
            image_id: job.image_id,
            sequence: "0001".into(),
            rejected: false,
            reason: "object no longer exists".into(),
        }]
    );
}

#[tokio::test]
async fn oversized_object_is_rejected_without_downloading_it() {
    let fixture = fixture();
    fixture.objects.put_object("big.png", png(4, 4), "\"e1\"");

    let err = handle(
        &fixture,
        &job_message(&job("big.png", "\"e1\"", MAX_OBJECT_BYTES + 1)),
    )
    .await
    .expect_err("refused");

    assert!(
        matches!(&err, HandleError::Permanent(reason) if reason.contains("over the")),
        "{err:?}"
    );
    assert_eq!(fixture.objects.gets(), 0);
    assert!(matches!(
        &fixture.queue.sent()[..],
        [(IndexMessage::Failed { rejected: true, .. }, _)]
    ));
}

#[tokio::test]
async fn object_larger_than_its_job_said_is_rejected_by_the_store() {
    let fixture = fixture();
    let body = Bytes::from(vec![0u8; MAX_OBJECT_BYTES as usize + 1]);
    fixture.objects.put_object("liar.png", body, "\"e1\"");

    let err = handle(&fixture, &job_message(&job("liar.png", "\"e1\"", 10)))
        .await
        .expect_err("refused");

    assert!(matches!(err, HandleError::Permanent(_)), "{err:?}");
    assert!(matches!(
        &fixture.queue.sent()[..],
        [(IndexMessage::Failed { rejected: true, .. }, _)]
    ));
}

#[tokio::test]
async fn malformed_body_fails_permanently() {
    let fixture = fixture();

    let err = handle(&fixture, &message("{\"image_id\": 42".into()))
        .await
        .expect_err("refused");

    let HandleError::Permanent(reason) = err else {
        panic!("expected Permanent, got {err:?}");
    };
    assert!(reason.starts_with("malformed tag job"), "{reason}");
    assert!(fixture.queue.sent().is_empty());
    assert_eq!(fixture.objects.gets(), 0);
}

#[tokio::test]
async fn backend_outage_is_transient_and_sends_nothing() {
    let fixture = fixture();
    let body = png(4, 4);
    fixture.objects.put_object("a.png", body.clone(), "\"e1\"");
    *fixture.backend.fail_with.lock().expect("lock") =
        Some(PortError::Unavailable("throttled".into()));

    let err = handle(
        &fixture,
        &job_message(&job("a.png", "\"e1\"", body.len() as u64)),
    )
    .await
    .expect_err("retried");

    assert!(matches!(err, HandleError::Transient(_)), "{err:?}");
    assert!(fixture.queue.sent().is_empty());
}

#[tokio::test]
async fn backend_refusal_is_recorded_as_failed_not_rejected() {
    let fixture = fixture();
    let body = png(4, 4);
    fixture.objects.put_object("a.png", body.clone(), "\"e1\"");
    *fixture.backend.fail_with.lock().expect("lock") =
        Some(PortError::Invalid("image too small".into()));

    let err = handle(
        &fixture,
        &job_message(&job("a.png", "\"e1\"", body.len() as u64)),
    )
    .await
    .expect_err("refused");

    let HandleError::Permanent(reason) = err else {
        panic!("expected Permanent, got {err:?}");
    };
    assert!(reason.contains("image too small"), "{reason}");
    assert!(matches!(
        &fixture.queue.sent()[..],
        [(
            IndexMessage::Failed {
                rejected: false,
                ..
            },
            _
        )]
    ));
}

#[tokio::test]
async fn index_queue_outage_is_transient() {
    let fixture = fixture();
    let body = png(4, 4);
    fixture.objects.put_object("a.png", body.clone(), "\"e1\"");
    *fixture.queue.fail_sends.lock().expect("lock") = true;

    let err = handle(
        &fixture,
        &job_message(&job("a.png", "\"e1\"", body.len() as u64)),
    )
    .await
    .expect_err("retried");

    assert!(matches!(err, HandleError::Transient(_)), "{err:?}");
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

//! The tagger: for each tag job, fetch the generation of the object the job
//! names, decode it within limits, label it with the configured backend,
//! apply the tagging policy and hand the outcome to the indexer.
//!
//! Every job ends in exactly one of: a `Tagged` or `Failed` message on the
//! index queue (so the record always says what became of the generation), or
//! nothing at all when a newer generation exists and its own job will speak
//! for the object.

pub mod config;
pub mod decode;
pub mod policy;
pub mod pool;
pub mod rekognition;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use imagetag_shared::consumer::{HandleError, Handler};
use imagetag_shared::error::PortError;
use imagetag_shared::messages::{IndexMessage, TagJob};
use imagetag_shared::model::{ImageFacts, ModelInfo};
use imagetag_shared::ports::{ObjectStore, Queue, QueueMessage, TaggingBackend};
use imagetag_shared::{metrics, telemetry};
use tracing::Instrument;

use crate::decode::Decoder;
use crate::policy::Policy;

pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 50 * 1024 * 1024;

/// Where the tagger leaves a small JPEG of every image it tags, so result
/// grids never download originals.
pub struct Thumbnails {
    pub store: Arc<dyn ObjectStore>,
    pub bucket: String,
    /// Keys are `{prefix}{image_id}.jpg`.
    pub prefix: String,
    /// Longest side, in pixels.
    pub max_side: u32,
}

pub struct TaggerService<O: ObjectStore, Q: Queue, B: TaggingBackend> {
    thumbnails: Option<Thumbnails>,
    objects: Arc<O>,
    index_queue: Arc<Q>,
    backend: Arc<B>,
    decoder: Decoder,
    policy: Arc<Policy>,
    max_object_bytes: u64,
}

impl<O: ObjectStore, Q: Queue, B: TaggingBackend> TaggerService<O, Q, B> {
    pub fn new(
        objects: Arc<O>,
        index_queue: Arc<Q>,
        backend: Arc<B>,
        decoder: Decoder,
        policy: Arc<Policy>,
        max_object_bytes: u64,
    ) -> Self {
        Self {
            thumbnails: None,
            objects,
            index_queue,
            backend,
            decoder,
            policy,
            max_object_bytes,
        }
    }

    pub fn with_thumbnails(mut self, thumbnails: Thumbnails) -> Self {
        self.thumbnails = Some(thumbnails);
        self
    }

    /// Makes and stores the thumbnail. A failure costs the grid a picture,
    /// not the image its tags, so it is logged rather than retried.
    async fn store_thumbnail(&self, job: &TagJob, rgb: &image::RgbImage) -> u64 {
        let Some(thumbnails) = &self.thumbnails else {
            return 0;
        };
        let stage = Instant::now();
        let max_side = thumbnails.max_side.max(16);
        let encoded = self
            .decoder
            .pool()
            .run_borrowed(|| thumbnail_jpeg(rgb, max_side))
            .await;
        let result = match encoded {
            Ok(bytes) => {
                let key = format!("{}{}.jpg", thumbnails.prefix, job.image_id);
                thumbnails
                    .store
                    .put(&thumbnails.bucket, &key, bytes.into(), "image/jpeg")
                    .await
                    .map_err(|err| err.to_string())
            }
            Err(err) => Err(err.to_string()),
        };
        if let Err(reason) = result {
            tracing::warn!(%reason, "thumbnail not stored");
        }
        elapsed_ms(stage)
    }

    async fn tag(&self, job: &TagJob) -> Result<(), HandleError> {
        let started = Instant::now();

        // The job already knows the size of this generation: refusing here
        // saves downloading what would be refused anyway.
        if job.size > self.max_object_bytes {
            let reason = format!(
                "object is {} bytes, over the {}-byte limit",
                job.size, self.max_object_bytes
            );
            return self.reject(job, reason).await;
        }

        let stage = Instant::now();
        let bytes = match self
            .objects
            .get(
                &job.bucket,
                &job.key,
                job.etag.as_deref(),
                self.max_object_bytes,
            )
            .await
        {
            Ok(bytes) => bytes,
            Err(PortError::Conflict(reason)) => {
                // The object was replaced after this event; the replacement's
                // own job tags it, and this generation no longer exists.
                tracing::info!(%reason, "object changed since the event; skipping this generation");
                return Ok(());
            }
            Err(PortError::NotFound(_)) => {
                // Deleted since the event. Said explicitly so the record does
                // not wait as pending forever; the indexer ignores it when a
                // newer generation (the delete, a re-upload) is recorded.
                tracing::info!("object no longer exists");
                return self
                    .send_failed(job, false, "object no longer exists")
                    .await;
            }
            // `get` refuses with `Invalid` an object over the size limit.
            Err(PortError::Invalid(reason)) => return self.reject(job, reason).await,
            Err(err) => return Err(HandleError::Transient(err.to_string())),
        };
        let fetch_ms = elapsed_ms(stage);
        let object_bytes = bytes.len();

        let stage = Instant::now();
        let (image, facts) = match self.decoder.decode(bytes).await {
            // The pixels may be a reduced-scale decode; the facts describe
            // the image as stored.
            Ok(decoded) => {
                let facts = ImageFacts {
                    width: decoded.width,
                    height: decoded.height,
                    format: decoded.image.format.clone(),
                };
                (decoded.image, facts)
            }
            Err(err) => {
                tracing::info!(reason = %err, fetch_ms, object_bytes, "image refused");
                return self.reject(job, err.to_string()).await;
            }
        };
        let decode_ms = elapsed_ms(stage);

        let stage = Instant::now();
        let output = match self.backend.tag(&image).await {
            Ok(output) => output,
            Err(err) if err.is_transient() => return Err(HandleError::Transient(err.to_string())),
            Err(err) => {
                // The image decoded but the backend cannot label it (too
                // small for it, say): a failure, not a rejection.
                let reason = format!("{} could not tag the image: {err}", self.backend.name());
                self.send_failed(job, false, &reason).await?;
                return Err(HandleError::Permanent(reason));
            }
        };
        let tag_ms = elapsed_ms(stage);
        let thumbnail_ms = self.store_thumbnail(job, &image.rgb).await;
        // The pixels can be large; they are not needed past this point.
        drop(image);

        let backend_labels = output.labels.len();
        let output = self.policy.apply(&job.key, output);
        let labels = output.labels.len();
        let (width, height) = (facts.width, facts.height);
        let message = IndexMessage::Tagged {
            image_id: job.image_id.clone(),
            sequence: job.sequence.clone(),
            facts,
            model: ModelInfo {
                backend: self.backend.name().to_owned(),
                version: self.backend.version(),
            },
            output,
        };
        self.send(&message).await?;
        for (stage, ms) in [
            ("fetch", fetch_ms),
            ("decode", decode_ms),
            ("tag", tag_ms),
            ("thumbnail", thumbnail_ms),
            ("total", elapsed_ms(started)),
        ] {
            metrics::observe_stage(stage, std::time::Duration::from_millis(ms));
        }
        metrics::metrics()
            .images_tagged
            .get_or_create(&metrics::BackendLabels {
                backend: self.backend.name().to_owned(),
            })
            .inc();
        tracing::info!(
            width,
            height,
            backend_labels,
            labels,
            profile = self.policy.profile_for(&job.key).unwrap_or(""),
            fetch_ms,
            decode_ms,
            tag_ms,
            thumbnail_ms,
            total_ms = elapsed_ms(started),
            "image tagged"
        );
        Ok(())
    }

    /// This generation can never be tagged as it is: the record says why,
    /// and the job fails permanently so it lands in the dead-letter queue,
    /// from where it can be re-driven once a limit or decoder changes.
    async fn reject(&self, job: &TagJob, reason: String) -> Result<(), HandleError> {
        self.send_failed(job, true, &reason).await?;
        Err(HandleError::Permanent(reason))
    }

    async fn send_failed(
        &self,
        job: &TagJob,
        rejected: bool,
        reason: &str,
    ) -> Result<(), HandleError> {
        self.send(&IndexMessage::Failed {
            image_id: job.image_id.clone(),
            sequence: job.sequence.clone(),
            rejected,
            reason: reason.to_owned(),
        })
        .await
    }

    async fn send(&self, message: &IndexMessage) -> Result<(), HandleError> {
        let body = serde_json::to_string(message)
            .map_err(|err| HandleError::Permanent(format!("encoding the index message: {err}")))?;
        // The trace continues at the indexer, beside the body.
        let attributes = telemetry::inject(&tracing::Span::current());
        self.index_queue
            .send(&body, &attributes)
            .await
            .map_err(HandleError::from)
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl<O: ObjectStore, Q: Queue, B: TaggingBackend> Handler for TaggerService<O, Q, B> {
    async fn handle(&self, message: &QueueMessage) -> Result<(), HandleError> {
        let job: TagJob = serde_json::from_str(&message.body).map_err(|err| {
            HandleError::Permanent(format!("malformed tag job (expected a JSON TagJob): {err}"))
        })?;
        let span = tracing::info_span!(
            "tag_job",
            image_id = %job.image_id,
            bucket = %job.bucket,
            key = %job.key,
            sequence = %job.sequence,
        );
        self.tag(&job).instrument(span).await
    }
}

/// A JPEG no larger than `max_side` on its longer side.
pub fn thumbnail_jpeg(rgb: &image::RgbImage, max_side: u32) -> anyhow::Result<Vec<u8>> {
    use fast_image_resize as fr;
    let (width, height) = rgb.dimensions();
    let scale = (max_side as f32 / width.max(height).max(1) as f32).min(1.0);
    let (w, h) = (
        ((width as f32 * scale).round() as u32).max(1),
        ((height as f32 * scale).round() as u32).max(1),
    );
    // The SIMD resizer the models' inputs use: image's own thumbnail filter
    // cost more than the JPEG encoding on multi-megapixel photos.
    let src = fr::images::ImageRef::new(width, height, rgb.as_raw(), fr::PixelType::U8x3)?;
    let mut small = fr::images::Image::new(w, h, fr::PixelType::U8x3);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new().resize(&src, &mut small, &options)?;
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode(
        small.buffer(),
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out.into_inner())
}

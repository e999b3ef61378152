//! Ingest: turns S3 event notifications into image records and tag jobs.
//!
//! For each created object it checks what it can without downloading it
//! (size, content type, name), records the generation idempotently and in
//! order (a redelivered or older event never duplicates or rolls back a
//! record), and hands the object to the tagger — or records why it was
//! rejected. Removed objects become tombstones and lose their postings.

pub mod events;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::Utc;
use imagetag_shared::consumer::{HandleError, Handler};
use imagetag_shared::messages::{IndexMessage, TagJob};
use imagetag_shared::model::{ImageRecord, ImageStatus, image_id};
use imagetag_shared::ports::{
    GenerationUpdate, ImageStore, ObjectMeta, ObjectStore, Queue, QueueMessage, Recorded,
};
use imagetag_shared::telemetry;

use crate::events::{EventKind, Notification, ObjectEvent};

/// File name extensions of the formats the tagger decodes.
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "png", "gif", "webp", "bmp", "tif", "tiff",
];

/// Content types that say nothing about the bytes; the name decides then.
const GENERIC_CONTENT_TYPES: &[&str] = &[
    "application/octet-stream",
    "binary/octet-stream",
    "application/x-www-form-urlencoded",
    "",
];

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Objects larger than this are rejected without being downloaded.
    pub max_object_bytes: u64,
    /// Where the tagger writes thumbnails; events for it are our own output.
    pub thumbnail_prefix: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_object_bytes: 50 * 1024 * 1024,
            thumbnail_prefix: "thumbnails/".into(),
        }
    }
}

pub struct IngestService<O, S, T, X> {
    objects: O,
    images: S,
    tag_queue: T,
    index_queue: X,
    config: IngestConfig,
}

impl<O, S, T, X> IngestService<O, S, T, X>
where
    O: ObjectStore,
    S: ImageStore,
    T: Queue,
    X: Queue,
{
    pub fn new(objects: O, images: S, tag_queue: T, index_queue: X, config: IngestConfig) -> Self {
        Self {
            objects,
            images,
            tag_queue,
            index_queue,
            config,
        }
    }

    async fn apply(&self, event: &ObjectEvent) -> Result<(), HandleError> {
        if !self.config.thumbnail_prefix.is_empty()
            && event.key.starts_with(&self.config.thumbnail_prefix)
        {
            tracing::debug!(key = %event.key, "thumbnail written by the tagger; not an upload");
            return Ok(());
        }
        match event.kind {
            EventKind::Created => self.created(event).await,
            EventKind::Removed => self.removed(event).await,
        }
    }

    async fn created(&self, event: &ObjectEvent) -> Result<(), HandleError> {
        let Some(meta) = self.objects.head(&event.bucket, &event.key).await? else {
            tracing::info!(bucket = %event.bucket, key = %event.key, "object gone before ingest; its removal event settles the record");
            return Ok(());
        };
        if let (Some(seen), Some(now)) = (&event.etag, &meta.etag)
            && trim_etag(seen) != trim_etag(now)
        {
            tracing::info!(bucket = %event.bucket, key = %event.key, "object overwritten since this event; the newer event handles it");
            return Ok(());
        }
        let rejection = rejection_reason(&event.key, &meta, self.config.max_object_bytes);
        let update = GenerationUpdate {
            image_id: image_id(&event.bucket, &event.key),
            bucket: event.bucket.clone(),
            key: event.key.clone(),
            sequence: event.sequence.clone(),
            status: if rejection.is_some() {
                ImageStatus::Rejected
            } else {
                ImageStatus::Pending
            },
            reason: rejection,
            meta: Some(meta),
            at: Utc::now(),
        };
        match self.images.record_generation(&update).await? {
            Recorded::Applied => self.follow_up(&update).await,
            // A redelivery after a crash between the write and the send:
            // send again (the tagger and indexer are idempotent).
            Recorded::Duplicate(existing)
                if matches!(
                    existing.status,
                    ImageStatus::Pending | ImageStatus::Rejected
                ) =>
            {
                self.follow_up(&update).await
            }
            Recorded::Duplicate(existing) => {
                tracing::info!(image_id = %existing.image_id, status = existing.status.as_str(), "event already handled");
                Ok(())
            }
            Recorded::Stale(existing) => {
                log_stale(event, &existing);
                Ok(())
            }
        }
    }

    async fn removed(&self, event: &ObjectEvent) -> Result<(), HandleError> {
        let update = GenerationUpdate {
            image_id: image_id(&event.bucket, &event.key),
            bucket: event.bucket.clone(),
            key: event.key.clone(),
            sequence: event.sequence.clone(),
            status: ImageStatus::Deleted,
            reason: None,
            meta: None,
            at: Utc::now(),
        };
        match self.images.record_generation(&update).await? {
            Recorded::Applied => self.follow_up(&update).await,
            Recorded::Duplicate(existing) if existing.status == ImageStatus::Deleted => {
                self.follow_up(&update).await
            }
            Recorded::Duplicate(_) => Ok(()),
            Recorded::Stale(existing) => {
                log_stale(event, &existing);
                Ok(())
            }
        }
    }

    /// Pending generations go to the tagger; deleted and rejected ones to
    /// the indexer, which drops whatever postings an earlier generation had.
    async fn follow_up(&self, update: &GenerationUpdate) -> Result<(), HandleError> {
        let attributes = telemetry::inject(&tracing::Span::current());
        if update.status == ImageStatus::Pending {
            let meta = update.meta.clone().unwrap_or(ObjectMeta {
                size: 0,
                content_type: None,
                etag: None,
                version_id: None,
            });
            let job = TagJob {
                image_id: update.image_id.clone(),
                bucket: update.bucket.clone(),
                key: update.key.clone(),
                sequence: update.sequence.clone(),
                etag: meta.etag,
                version_id: meta.version_id,
                size: meta.size,
                content_type: meta.content_type,
            };
            send_json(&self.tag_queue, &job, &attributes).await?;
            tracing::info!(image_id = %update.image_id, key = %update.key, "queued for tagging");
        } else {
            let message = IndexMessage::Unindex {
                image_id: update.image_id.clone(),
                sequence: update.sequence.clone(),
            };
            send_json(&self.index_queue, &message, &attributes).await?;
            tracing::info!(
                image_id = %update.image_id,
                key = %update.key,
                status = update.status.as_str(),
                reason = update.reason.as_deref().unwrap_or(""),
                "recorded without tags"
            );
        }
        Ok(())
    }
}

fn log_stale(event: &ObjectEvent, existing: &ImageRecord) {
    tracing::info!(
        image_id = %existing.image_id,
        key = %event.key,
        event = %event.name,
        event_sequence = %event.sequence,
        record_sequence = %existing.sequence,
        "event older than the record; ignored"
    );
}

async fn send_json<Q: Queue, T: serde::Serialize>(
    queue: &Q,
    message: &T,
    attributes: &HashMap<String, String>,
) -> Result<(), HandleError> {
    let body = serde_json::to_string(message)
        .map_err(|err| HandleError::Permanent(format!("encoding message: {err}")))?;
    queue.send(&body, attributes).await?;
    Ok(())
}

fn trim_etag(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// Why an object cannot be an image we tag, judged from its metadata alone;
/// the tagger checks the bytes themselves.
pub fn rejection_reason(key: &str, meta: &ObjectMeta, max_bytes: u64) -> Option<String> {
    if meta.size == 0 {
        return Some("empty object (0 bytes)".into());
    }
    if meta.size > max_bytes {
        return Some(format!(
            "object is {} bytes, over the {max_bytes}-byte limit",
            meta.size
        ));
    }
    let content_type = meta
        .content_type
        .as_deref()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if content_type.starts_with("image/") {
        if content_type == "image/svg+xml" {
            return Some("SVG is a document, not a raster image; it is not tagged".into());
        }
        return None;
    }
    let extension = key
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    let image_name = IMAGE_EXTENSIONS.contains(&extension.as_str());
    if GENERIC_CONTENT_TYPES.contains(&content_type.as_str()) {
        if image_name {
            return None;
        }
        return Some(format!(
            "neither the content type ({}) nor the name says image",
            if content_type.is_empty() {
                "none"
            } else {
                &content_type
            }
        ));
    }
    Some(format!("content type {content_type} is not an image"))
}

#[async_trait]
impl<O, S, T, X> Handler for IngestService<O, S, T, X>
where
    O: ObjectStore,
    S: ImageStore,
    T: Queue,
    X: Queue,
{
    async fn handle(&self, message: &QueueMessage) -> Result<(), HandleError> {
        let notification = events::parse(&message.body).map_err(|err| {
            HandleError::Permanent(format!("events queue message {}: {err}", message.id))
        })?;
        match notification {
            Notification::Ignored(what) => {
                tracing::info!(what = %what, "notification ignored");
                Ok(())
            }
            Notification::Objects(events) => {
                // Records are applied in order; a retry of the message
                // re-applies earlier ones, which the generation check makes
                // harmless.
                for event in &events {
                    self.apply(event).await?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64, content_type: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            size,
            content_type: content_type.map(str::to_owned),
            etag: None,
            version_id: None,
        }
    }

    #[test]
    fn images_by_content_type_or_by_name_pass() {
        assert_eq!(
            rejection_reason("a.bin", &meta(10, Some("image/jpeg")), 100),
            None
        );
        assert_eq!(
            rejection_reason("a.JPG", &meta(10, Some("binary/octet-stream")), 100),
            None
        );
        assert_eq!(rejection_reason("x/y.webp", &meta(10, None), 100), None);
    }

    #[test]
    fn non_images_empty_and_oversized_objects_are_rejected_with_reasons() {
        let reason = |key: &str, m: ObjectMeta| rejection_reason(key, &m, 100).unwrap_or_default();
        assert!(reason("a.jpg", meta(0, Some("image/jpeg"))).contains("empty"));
        assert!(reason("a.jpg", meta(101, Some("image/jpeg"))).contains("limit"));
        assert!(reason("doc.pdf", meta(10, Some("application/pdf"))).contains("application/pdf"));
        assert!(
            reason("page.jpg", meta(10, Some("text/html; charset=utf-8"))).contains("text/html")
        );
        assert!(reason("x.svg", meta(10, Some("image/svg+xml"))).contains("SVG"));
        assert!(reason("archive.zip", meta(10, None)).contains("name"));
    }
}

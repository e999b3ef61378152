//! The write side of the API beyond uploads: deleting an image, re-tagging
//! it, and re-driving dead-lettered messages. Each goes through the same
//! ports the pipeline uses, so the services do the actual work: a deletion
//! is an object deletion (storage sends the event), a re-tag is a tag job
//! on the tagger's queue, a re-drive moves messages back to their queue.

use std::collections::HashMap;
use std::sync::Arc;

use imagetag_shared::messages::TagJob;
use imagetag_shared::model::{ImageRecord, ImageStatus};
use imagetag_shared::ports::{ObjectRemover, Queue, SearchStore};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// A dead-letter queue and the queue its messages go back to.
pub struct DeadLetters {
    /// `events`, `tag-jobs` or `index`: what clients name it by.
    pub name: String,
    pub dead_letter: Arc<dyn Queue>,
    pub source: Arc<dyn Queue>,
}

/// What the write endpoints need; each is optional, and an endpoint whose
/// part is missing answers 404 like any route a deployment does not serve.
#[derive(Default)]
pub struct Operations {
    pub objects: Option<Arc<dyn ObjectRemover>>,
    /// The tagger's queue.
    pub tag_jobs: Option<Arc<dyn Queue>>,
    pub dead_letters: Vec<DeadLetters>,
}

/// What happened to an image the request acted on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub image_id: String,
    /// `deleting` or `retagging`: the pipeline finishes the work.
    pub status: &'static str,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Only this queue (`events`, `tag-jobs` or `index`); all when absent.
    pub queue: Option<String>,
    /// At most this many messages per queue, 1–10000 (default 1000).
    pub max: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RedriveReport {
    /// Messages moved back, by queue.
    pub moved: HashMap<String, usize>,
}

const DEFAULT_REDRIVE: usize = 1000;
const MAX_REDRIVE: usize = 10_000;

impl Operations {
    pub async fn delete(&self, store: &dyn SearchStore, id: &str) -> Result<Accepted, ApiError> {
        let objects = self
            .objects
            .as_ref()
            .ok_or_else(|| ApiError::not_found("this deployment does not delete images"))?;
        let record = live_record(store, id).await?;
        objects.delete(&record.bucket, &record.key).await?;
        tracing::info!(image_id = %id, key = %record.key, "image deletion requested");
        Ok(Accepted {
            image_id: record.image_id,
            status: "deleting",
        })
    }

    pub async fn retag(&self, store: &dyn SearchStore, id: &str) -> Result<Accepted, ApiError> {
        let queue = self
            .tag_jobs
            .as_ref()
            .ok_or_else(|| ApiError::not_found("this deployment does not re-tag images"))?;
        let record = live_record(store, id).await?;
        // The indexer only takes tags for the record's current generation
        // while it is pending or tagged; a rejected or failed generation
        // needs a new upload, not another try at the same bytes.
        if !matches!(record.status, ImageStatus::Tagged | ImageStatus::Pending) {
            return Err(ApiError::conflict(
                "not_retaggable",
                format!(
                    "the image is {}; upload it again to retry",
                    record.status.as_str()
                ),
            ));
        }
        let job = TagJob {
            image_id: record.image_id.clone(),
            bucket: record.bucket.clone(),
            key: record.key.clone(),
            sequence: record.sequence.clone(),
            etag: record.etag.clone(),
            version_id: record.version_id.clone(),
            size: record.size,
            content_type: record.content_type.clone(),
        };
        let body = serde_json::to_string(&job)
            .map_err(|err| ApiError::internal(format!("encoding a tag job: {err}")))?;
        let attributes = imagetag_shared::telemetry::inject(&tracing::Span::current());
        queue.send(&body, &attributes).await?;
        tracing::info!(image_id = %id, "re-tag queued");
        Ok(Accepted {
            image_id: record.image_id,
            status: "retagging",
        })
    }

    pub async fn redrive(&self, request: RedriveRequest) -> Result<RedriveReport, ApiError> {
        if self.dead_letters.is_empty() {
            return Err(ApiError::not_found(
                "this deployment has no dead-letter queues configured",
            ));
        }
        let max = match request.max {
            None => DEFAULT_REDRIVE,
            Some(max) if (1..=MAX_REDRIVE).contains(&max) => max,
            Some(_) => {
                return Err(ApiError::invalid_parameter(format!(
                    "max must be from 1 to {MAX_REDRIVE}"
                )));
            }
        };
        let chosen: Vec<&DeadLetters> = match request.queue.as_deref() {
            None => self.dead_letters.iter().collect(),
            Some(name) => {
                let found: Vec<&DeadLetters> = self
                    .dead_letters
                    .iter()
                    .filter(|d| d.name == name)
                    .collect();
                if found.is_empty() {
                    return Err(ApiError::invalid_parameter(format!(
                        "queue must be one of {}",
                        self.dead_letters
                            .iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                found
            }
        };
        let mut moved = HashMap::new();
        for queue in chosen {
            let count = imagetag_shared::redrive::redrive(
                queue.dead_letter.as_ref(),
                queue.source.as_ref(),
                max,
            )
            .await?;
            tracing::info!(queue = %queue.name, moved = count, "dead letters re-driven");
            moved.insert(queue.name.clone(), count);
        }
        Ok(RedriveReport { moved })
    }
}

async fn live_record(store: &dyn SearchStore, id: &str) -> Result<ImageRecord, ApiError> {
    store
        .get_image(id)
        .await?
        .filter(|record| record.status != ImageStatus::Deleted)
        .ok_or_else(|| ApiError::not_found("no image with this id"))
}

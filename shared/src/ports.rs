//! The ports: small traits the service logic is written against. The AWS
//! adapters (`crate::aws`) implement them for production; embedded adapters
//! implement the same traits for `imagetag up`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::PortResult;
use crate::model::{ImageRecord, ImageStatus, IndexedTerm, TagOutput};

// ---------------------------------------------------------------- objects

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMeta {
    pub size: u64,
    pub content_type: Option<String>,
    pub etag: Option<String>,
    pub version_id: Option<String>,
}

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// `None` when the object does not exist (any more).
    async fn head(&self, bucket: &str, key: &str) -> PortResult<Option<ObjectMeta>>;

    /// Reads the whole object, refusing (`Invalid`) one larger than
    /// `max_bytes` without reading it. With `expected_etag`, a changed object
    /// is a `Conflict`: a newer generation exists and will be handled by its
    /// own event. A missing object is `NotFound`.
    async fn get(
        &self,
        bucket: &str,
        key: &str,
        expected_etag: Option<&str>,
        max_bytes: u64,
    ) -> PortResult<Bytes>;

    async fn put(&self, bucket: &str, key: &str, body: Bytes, content_type: &str)
    -> PortResult<()>;
}

/// Deletes objects, for the API's `DELETE /v1/images/{id}`: removing the
/// object makes storage send the same event any other deletion does, so the
/// pipeline unindexes it the usual way. Separate from `ObjectStore` because
/// only the query service deletes.
#[async_trait]
pub trait ObjectRemover: Send + Sync + 'static {
    /// Deleting an object that is already gone succeeds.
    async fn delete(&self, bucket: &str, key: &str) -> PortResult<()>;
}

// ----------------------------------------------------------------- queues

#[derive(Debug, Clone, PartialEq)]
pub struct QueueMessage {
    pub id: String,
    pub body: String,
    /// Handle for deleting or changing the visibility of this delivery.
    pub receipt: String,
    /// String message attributes (trace context among them).
    pub attributes: HashMap<String, String>,
    /// How many times this message has been received, this time included.
    pub receive_count: u32,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Long-polls for up to `max` messages, hidden for `visibility`.
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> PortResult<Vec<QueueMessage>>;

    async fn send(&self, body: &str, attributes: &HashMap<String, String>) -> PortResult<()>;

    /// Deletes acknowledged deliveries (batched by the adapter).
    async fn delete(&self, receipts: &[String]) -> PortResult<()>;

    /// Extends (or, with zero, ends) the invisibility of a delivery.
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> PortResult<()>;

    /// Cheap reachability check for readiness.
    async fn ping(&self) -> PortResult<()>;
}

// ------------------------------------------------------ tagging backends

/// An image decoded once, shared by every model of a backend.
pub struct DecodedImage {
    /// The original bytes, for backends that take an encoded image.
    pub encoded: Bytes,
    /// Upright (EXIF orientation applied) 8-bit RGB pixels.
    pub rgb: image::RgbImage,
    pub format: String,
}

#[async_trait]
pub trait TaggingBackend: Send + Sync + 'static {
    /// `local`, `rekognition`, … — stored with the tags.
    fn name(&self) -> &str;

    /// Version of the models behind the backend, stored with the tags so a
    /// model upgrade can find what to re-tag.
    fn version(&self) -> String;

    async fn tag(&self, image: &DecodedImage) -> PortResult<TagOutput>;

    async fn ping(&self) -> PortResult<()> {
        Ok(())
    }
}

// ------------------------------------------------------- metadata stores

/// What ingest writes when it learns of a new generation of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationUpdate {
    pub image_id: String,
    pub bucket: String,
    pub key: String,
    pub sequence: String,
    pub status: ImageStatus,
    pub reason: Option<String>,
    pub meta: Option<ObjectMeta>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// The record now holds this generation.
    Applied,
    /// The record already holds this very generation (redelivery).
    Duplicate(Box<ImageRecord>),
    /// The record holds a newer generation; this event is out of date.
    Stale(Box<ImageRecord>),
}

/// Ingest's view: the image records and their generations.
#[async_trait]
pub trait ImageStore: Send + Sync + 'static {
    async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>>;

    /// Writes the object fields and status of a generation unless the record
    /// already holds the same or a newer one. Tags are left alone.
    async fn record_generation(&self, update: &GenerationUpdate) -> PortResult<Recorded>;

    async fn ping(&self) -> PortResult<()>;
}

/// One atomic change of an image's record, postings and tag counts.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexCommit {
    /// The new state; its `revision` must be `expected_revision + 1`.
    pub record: ImageRecord,
    pub expected_revision: u64,
    /// Postings to create or overwrite (new confidence).
    pub put_postings: Vec<IndexedTerm>,
    pub delete_postings: Vec<String>,
    /// Image-count changes per term (+1 new posting, −1 removed posting).
    pub count_deltas: Vec<(String, i64)>,
}

impl IndexCommit {
    /// Number of items the commit touches: stores may bound it (DynamoDB
    /// transactions take at most 100).
    pub fn item_count(&self) -> usize {
        1 + self.put_postings.len() + self.delete_postings.len() + self.count_deltas.len()
    }
}

/// The indexer's view: records, postings and counts, changed atomically.
#[async_trait]
pub trait IndexStore: Send + Sync + 'static {
    async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>>;

    /// Applies the commit if the stored record still has `expected_revision`
    /// and the same `sequence`; otherwise `Conflict` and nothing changes.
    async fn commit(&self, commit: &IndexCommit) -> PortResult<()>;

    /// Largest `IndexCommit::item_count` the store can apply atomically.
    fn max_commit_items(&self) -> usize;

    async fn ping(&self) -> PortResult<()>;
}

/// A posting as the search reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostingHit {
    pub image_id: String,
    pub confidence: f32,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TermKind {
    Tag,
    Category,
}

impl TermKind {
    /// The kind of a posting term and the name it stands for
    /// (`tag:dog` → Tag, `dog`; `cat:animals and pets` → Category, …).
    pub fn split(term: &str) -> (TermKind, &str) {
        match term.strip_prefix(crate::model::CATEGORY_TERM) {
            Some(name) => (TermKind::Category, name),
            None => (
                TermKind::Tag,
                term.strip_prefix(crate::model::TAG_TERM).unwrap_or(term),
            ),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tag => "tag",
            Self::Category => "category",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermCount {
    pub term: String,
    pub kind: TermKind,
    /// The name as users type it (lower case).
    pub name: String,
    pub image_count: u64,
}

/// Position in the by-status listing: the last record returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusCursor {
    pub updated_at: String,
    pub image_id: String,
}

/// The query service's view: everything reads by key or by index.
#[async_trait]
pub trait SearchStore: Send + Sync + 'static {
    async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>>;

    /// Records for the ids that exist, in any order.
    async fn get_images(&self, image_ids: &[String]) -> PortResult<Vec<ImageRecord>>;

    /// Postings of `term` with at least `min_confidence`, best first (ties by
    /// id), starting after `after`. Returns at most `limit` hits and whether
    /// more may follow.
    async fn postings(
        &self,
        term: &str,
        min_confidence: f32,
        after: Option<&PostingHit>,
        limit: usize,
    ) -> PortResult<(Vec<PostingHit>, bool)>;

    /// Confidence of each (term, image) pair that has a posting.
    async fn lookup_postings(
        &self,
        pairs: &[(String, String)],
    ) -> PortResult<HashMap<(String, String), f32>>;

    /// Records with `status`, most recently updated first.
    async fn images_by_status(
        &self,
        status: ImageStatus,
        after: Option<&StatusCursor>,
        limit: usize,
    ) -> PortResult<(Vec<ImageRecord>, bool)>;

    /// Image counts of the given terms (absent terms count 0).
    async fn term_counts(&self, terms: &[String]) -> PortResult<HashMap<String, u64>>;

    /// How many records are in each status (statuses with none may be left
    /// out). Counting can be costly on large tables; callers cache it.
    async fn status_counts(&self) -> PortResult<HashMap<ImageStatus, u64>>;

    /// Terms of `kind`: by name when `prefix` is given, else most used first.
    /// Terms no image uses any more are left out.
    async fn list_terms(
        &self,
        kind: TermKind,
        prefix: Option<&str>,
        limit: usize,
    ) -> PortResult<Vec<TermCount>>;

    async fn ping(&self) -> PortResult<()>;
}

/// A short-lived URL a client can PUT one object to, straight to storage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresignedUpload {
    pub url: String,
    /// Headers the PUT must carry exactly as given (they are signed).
    pub headers: Vec<(String, String)>,
}

/// Issues presigned uploads (S3). Without one, uploads go through the API.
#[async_trait]
pub trait UploadSigner: Send + Sync + 'static {
    async fn presign_put(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        size: u64,
        expires_in: Duration,
    ) -> PortResult<PresignedUpload>;
}

/// Lets a process choose its backend at run time and still hand the service
/// one concrete type.
#[async_trait]
impl TaggingBackend for Box<dyn TaggingBackend> {
    fn name(&self) -> &str {
        self.as_ref().name()
    }

    fn version(&self) -> String {
        self.as_ref().version()
    }

    async fn tag(&self, image: &DecodedImage) -> PortResult<TagOutput> {
        self.as_ref().tag(image).await
    }

    async fn ping(&self) -> PortResult<()> {
        self.as_ref().ping().await
    }
}

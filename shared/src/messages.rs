//! Bodies of the messages on the internal queues. Each is JSON; the trace
//! context travels beside it in message attributes (see `telemetry`).

use serde::{Deserialize, Serialize};

use crate::model::{ImageFacts, ModelInfo, TagOutput};

/// ingest → tagger: tag this generation of this object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagJob {
    pub image_id: String,
    pub bucket: String,
    pub key: String,
    pub sequence: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// → indexer: the outcome for one generation of one object. Only the
/// indexer writes postings and counts, so every path that changes what an
/// image is findable under goes through this queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum IndexMessage {
    /// From the tagger: the tags after the tagging policy.
    Tagged {
        image_id: String,
        sequence: String,
        facts: ImageFacts,
        model: ModelInfo,
        output: TagOutput,
    },
    /// From the tagger: this generation can never be tagged (undecodable,
    /// over a limit, gone). The record keeps the reason.
    Failed {
        image_id: String,
        sequence: String,
        rejected: bool,
        reason: String,
    },
    /// From ingest: the record moved to a state without tags (deleted or
    /// rejected); drop whatever postings the image still has.
    Unindex { image_id: String, sequence: String },
}

impl IndexMessage {
    pub fn image_id(&self) -> &str {
        match self {
            Self::Tagged { image_id, .. }
            | Self::Failed { image_id, .. }
            | Self::Unindex { image_id, .. } => image_id,
        }
    }
}

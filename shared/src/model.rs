//! The image record and its tags, in the shape Amazon Rekognition uses for
//! labels so both tagging backends produce the same documents.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Stable identifier of an object: the same bucket and key always map to the
/// same id, so every event about an object lands on one record.
pub fn image_id(bucket: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bucket.as_bytes());
    hasher.update([0u8]);
    hasher.update(key.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// Search terms are case-insensitive; postings and counts use this form.
pub fn normalize_term(name: &str) -> String {
    name.trim().to_lowercase()
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    /// Accepted by ingest, waiting for the tagger.
    Pending,
    Tagged,
    /// Not an image, or refused by a limit; `reason` says which.
    Rejected,
    /// Looked like an image but could not be tagged; `reason` says why.
    Failed,
    /// The object was removed; kept as a tombstone so a late, older event
    /// cannot bring it back.
    Deleted,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Tagged => "tagged",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Tagged,
            Self::Rejected,
            Self::Failed,
            Self::Deleted,
        ]
        .into_iter()
        .find(|status| status.as_str() == value)
    }
}

/// Relative coordinates in 0..1, origin top-left, as Rekognition reports them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox {
    pub left: f32,
    pub top: f32,
    pub width: f32,
    pub height: f32,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub bounding_box: BoundingBox,
    pub confidence: f32,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    /// 0–100.
    pub confidence: f32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<Instance>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextDetection {
    pub text: String,
    pub confidence: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounding_box: Option<BoundingBox>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModerationLabel {
    pub name: String,
    pub confidence: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Face {
    pub bounding_box: BoundingBox,
    pub confidence: f32,
}

/// What a tagging backend says about one image.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagOutput {
    pub labels: Vec<Label>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<TextDetection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moderation: Vec<ModerationLabel>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faces: Vec<Face>,
}

/// Facts about the decoded image, measured by the tagger.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFacts {
    pub width: u32,
    pub height: u32,
    pub format: String,
}

/// Which backend and model version produced a set of tags.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub backend: String,
    pub version: String,
}

/// The one record per object. Ingest owns the object fields and the
/// generation (`sequence`); the indexer owns the tags.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub image_id: String,
    pub bucket: String,
    pub key: String,
    pub status: ImageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Orders the events of one key (S3's `sequencer`, or the event time
    /// where the notification lacks it); a record never goes backwards.
    pub sequence: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<ImageFacts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelInfo>,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<TextDetection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moderation: Vec<ModerationLabel>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faces: Vec<Face>,
    /// Search terms that currently have postings for this image; the indexer
    /// diffs against it, so re-tagging and deleting never leave strays.
    // Bookkeeping the API strips from what it returns, so it is not
    // part of the documented schema either.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub indexed_terms: Vec<IndexedTerm>,
    /// Bumped by every indexer commit (optimistic concurrency).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub revision: u64,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    /// Sort key of the by-status index, hence the fixed-width format.
    #[serde(with = "timestamp")]
    pub updated_at: DateTime<Utc>,
    #[serde(
        default,
        with = "timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub tagged_at: Option<DateTime<Utc>>,
}

/// RFC 3339 with exactly six fractional digits, so the strings sort in time
/// order wherever they are compared as text (index sort keys, cursors).
pub mod timestamp {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            at: &Option<DateTime<Utc>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => super::serialize(at, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| {
                    DateTime::parse_from_rfc3339(&text)
                        .map(|at| at.with_timezone(&Utc))
                        .map_err(serde::de::Error::custom)
                })
                .transpose()
        }
    }
}

/// One posting: the image is findable under `term` with `confidence`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexedTerm {
    pub term: String,
    pub confidence: f32,
}

/// Prefix of posting terms for labels and for categories.
pub const TAG_TERM: &str = "tag:";
pub const CATEGORY_TERM: &str = "cat:";

pub fn tag_term(name: &str) -> String {
    format!("{TAG_TERM}{}", normalize_term(name))
}

pub fn category_term(name: &str) -> String {
    format!("{CATEGORY_TERM}{}", normalize_term(name))
}

/// The postings an image with these labels should have: one per label name,
/// parent and alias (a search for "dog" finds the golden retriever, one for
/// "cell phone" the mobile phone) and one per category, each with the best
/// confidence among the labels that imply it.
pub fn terms_for_labels(labels: &[Label]) -> Vec<IndexedTerm> {
    let mut best: std::collections::BTreeMap<String, f32> = Default::default();
    for label in labels {
        let mut terms = vec![tag_term(&label.name)];
        terms.extend(label.parents.iter().map(|p| tag_term(p)));
        terms.extend(label.aliases.iter().map(|a| tag_term(a)));
        terms.extend(label.categories.iter().map(|c| category_term(c)));
        for term in terms {
            let entry = best.entry(term).or_insert(label.confidence);
            if label.confidence > *entry {
                *entry = label.confidence;
            }
        }
    }
    // Two decimals are plenty for ranking, and keep the number short and
    // exact where it is stored as an index key.
    best.into_iter()
        .map(|(term, confidence)| IndexedTerm {
            term,
            confidence: (confidence * 100.0).round() / 100.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn image_id_is_stable_and_separates_bucket_from_key() {
        assert_eq!(image_id("b", "k.jpg"), image_id("b", "k.jpg"));
        assert_ne!(image_id("ab", "c"), image_id("a", "bc"));
        assert_eq!(image_id("b", "k").len(), 32);
    }

    #[test]
    fn terms_take_best_confidence_per_category_and_fold_case() {
        let terms = terms_for_labels(&[
            label("Dog", 90.0, &["Animals and Pets"]),
            label("Cat", 95.5, &["Animals and Pets"]),
            label("dog", 40.0, &[]),
        ]);
        assert_eq!(
            terms,
            vec![
                IndexedTerm {
                    term: "cat:animals and pets".into(),
                    confidence: 95.5
                },
                IndexedTerm {
                    term: "tag:cat".into(),
                    confidence: 95.5
                },
                IndexedTerm {
                    term: "tag:dog".into(),
                    confidence: 90.0
                },
            ]
        );
    }

    #[test]
    fn parents_and_aliases_are_searchable_terms() {
        let mut phone = label("Mobile Phone", 99.0, &[]);
        phone.parents = vec!["Phone".into(), "Electronics".into()];
        phone.aliases = vec!["Cell Phone".into()];
        let names: Vec<String> = terms_for_labels(&[phone, label("Phone", 60.0, &[])])
            .into_iter()
            .map(|t| format!("{}={}", t.term, t.confidence))
            .collect();
        assert_eq!(
            names,
            [
                "tag:cell phone=99",
                "tag:electronics=99",
                "tag:mobile phone=99",
                "tag:phone=99"
            ]
        );
    }

    #[test]
    fn status_round_trips_through_its_name() {
        for status in [
            ImageStatus::Pending,
            ImageStatus::Tagged,
            ImageStatus::Deleted,
        ] {
            assert_eq!(ImageStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(ImageStatus::parse("bogus"), None);
    }
}

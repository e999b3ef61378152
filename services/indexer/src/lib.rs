//! Indexer: the single writer of tags, postings and tag counts.
//!
//! Each message describes the outcome for one generation of one image. The
//! indexer applies it only if that generation is still the record's current
//! one, by diffing the postings the image has against the ones it should
//! have and committing record, postings and counts in one conditional
//! transaction. Replays are no-ops, concurrent writers retry, and counts
//! stay exact.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use imagetag_shared::consumer::{HandleError, Handler, backoff};
use imagetag_shared::messages::IndexMessage;
use imagetag_shared::model::{ImageRecord, ImageStatus, IndexedTerm, terms_for_labels};
use imagetag_shared::ports::{IndexCommit, IndexStore, QueueMessage};
use imagetag_shared::{PortError, PortResult};

/// Optimistic-concurrency retries before the message is handed back as a
/// transient failure.
const MAX_CONFLICT_RETRIES: u32 = 8;

pub struct IndexerService<S> {
    store: S,
}

/// What the record should look like after a message, or why nothing changes.
enum Plan {
    Apply(Box<ImageRecord>),
    Skip(&'static str),
}

impl<S: IndexStore> IndexerService<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// Most terms one image may be findable under: a first tagging writes a
    /// posting and a count per term, and both must fit one commit.
    pub fn max_terms(&self) -> usize {
        (self.store.max_commit_items().saturating_sub(1) / 2).max(1)
    }

    pub async fn apply(&self, message: &IndexMessage) -> Result<(), HandleError> {
        let mut attempt = 0;
        loop {
            match self.apply_once(message).await {
                Err(PortError::Conflict(reason)) if attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(%reason, attempt, "index commit lost a race; retrying");
                    tokio::time::sleep(backoff(
                        attempt,
                        Duration::from_millis(20),
                        Duration::from_secs(1),
                    ))
                    .await;
                }
                other => return other.map_err(HandleError::from),
            }
        }
    }

    /// Reads the record, plans the change and commits it; a commit too large
    /// for one transaction first drops the stale postings, then loops.
    async fn apply_once(&self, message: &IndexMessage) -> PortResult<()> {
        loop {
            let image_id = message.image_id();
            let Some(current) = self.store.get_image(image_id).await? else {
                // Ingest writes the record before any message about it is
                // sent, so this message did not come from the pipeline.
                return Err(PortError::Invalid(format!("no image record {image_id}")));
            };
            let target = match self.plan(&current, message) {
                Plan::Skip(why) => {
                    tracing::info!(%image_id, why, "nothing to index");
                    return Ok(());
                }
                Plan::Apply(target) => target,
            };
            let commit = diff(&current, *target);
            if commit.item_count() <= self.store.max_commit_items() {
                self.store.commit(&commit).await?;
                tracing::info!(
                    %image_id,
                    status = commit.record.status.as_str(),
                    added = commit.count_deltas.iter().filter(|(_, d)| *d > 0).count(),
                    removed = commit.delete_postings.len(),
                    terms = commit.record.indexed_terms.len(),
                    "indexed"
                );
                return Ok(());
            }
            self.store
                .commit(&removal_step(
                    &current,
                    &commit,
                    self.store.max_commit_items(),
                ))
                .await?;
        }
    }

    fn plan(&self, current: &ImageRecord, message: &IndexMessage) -> Plan {
        let sequence = match message {
            IndexMessage::Tagged { sequence, .. }
            | IndexMessage::Failed { sequence, .. }
            | IndexMessage::Unindex { sequence, .. } => sequence,
        };
        if &current.sequence != sequence {
            return Plan::Skip("message is for an older generation");
        }
        let mut target = current.clone();
        let now = Utc::now();
        match message {
            IndexMessage::Tagged {
                facts,
                model,
                output,
                ..
            } => {
                // A refused or failed generation can still be tagged: that is
                // a dead-lettered job re-driven after a fix (a raised limit, a
                // backend back in service). Only a deletion is final.
                if current.status == ImageStatus::Deleted {
                    return Plan::Skip("generation is deleted");
                }
                let mut terms = terms_for_labels(&output.labels);
                terms.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
                terms.truncate(self.max_terms());
                terms.sort_by(|a, b| a.term.cmp(&b.term));
                if current.status == ImageStatus::Tagged
                    && current.labels == output.labels
                    && current.indexed_terms == terms
                    && current.facts.as_ref() == Some(facts)
                {
                    return Plan::Skip("already indexed");
                }
                target.status = ImageStatus::Tagged;
                target.reason = None;
                target.facts = Some(facts.clone());
                target.model = Some(model.clone());
                target.labels = output.labels.clone();
                target.text = output.text.clone();
                target.moderation = output.moderation.clone();
                target.faces = output.faces.clone();
                target.indexed_terms = terms;
                target.tagged_at = Some(now);
            }
            IndexMessage::Failed {
                rejected, reason, ..
            } => {
                let status = if *rejected {
                    ImageStatus::Rejected
                } else {
                    ImageStatus::Failed
                };
                if !matches!(current.status, ImageStatus::Pending | ImageStatus::Tagged) {
                    return Plan::Skip("generation already settled");
                }
                target.status = status;
                target.reason = Some(reason.clone());
                clear_tags(&mut target);
            }
            IndexMessage::Unindex { .. } => {
                if !matches!(current.status, ImageStatus::Deleted | ImageStatus::Rejected) {
                    return Plan::Skip("record is not in an untagged state");
                }
                if current.indexed_terms.is_empty() && current.labels.is_empty() {
                    return Plan::Skip("already unindexed");
                }
                clear_tags(&mut target);
            }
        }
        target.updated_at = now;
        Plan::Apply(Box::new(target))
    }
}

fn clear_tags(record: &mut ImageRecord) {
    record.labels.clear();
    record.text.clear();
    record.moderation.clear();
    record.faces.clear();
    record.indexed_terms.clear();
}

/// The commit that takes the stored record to `target`: postings to write
/// (new terms and changed confidences), postings to delete, count changes.
pub fn diff(current: &ImageRecord, mut target: ImageRecord) -> IndexCommit {
    let old: BTreeMap<&str, f32> = current
        .indexed_terms
        .iter()
        .map(|t| (t.term.as_str(), t.confidence))
        .collect();
    let new: BTreeMap<&str, f32> = target
        .indexed_terms
        .iter()
        .map(|t| (t.term.as_str(), t.confidence))
        .collect();
    let put_postings = target
        .indexed_terms
        .iter()
        .filter(|t| old.get(t.term.as_str()) != Some(&t.confidence))
        .cloned()
        .collect();
    let delete_postings: Vec<String> = old
        .keys()
        .filter(|term| !new.contains_key(*term))
        .map(|term| term.to_string())
        .collect();
    let count_deltas = new
        .keys()
        .filter(|term| !old.contains_key(*term))
        .map(|term| (term.to_string(), 1))
        .chain(delete_postings.iter().map(|term| (term.clone(), -1)))
        .collect();
    target.revision = current.revision + 1;
    IndexCommit {
        record: target,
        expected_revision: current.revision,
        put_postings,
        delete_postings,
        count_deltas,
    }
}

/// First half of a change too large for one commit: remove as many stale
/// postings as fit, leaving the record otherwise as it was.
fn removal_step(current: &ImageRecord, full: &IndexCommit, max_items: usize) -> IndexCommit {
    let room = (max_items.saturating_sub(1) / 2).max(1);
    let removing: Vec<String> = full.delete_postings.iter().take(room).cloned().collect();
    let mut record = current.clone();
    record
        .indexed_terms
        .retain(|t: &IndexedTerm| !removing.contains(&t.term));
    record.revision = current.revision + 1;
    record.updated_at = Utc::now();
    IndexCommit {
        record,
        expected_revision: current.revision,
        put_postings: vec![],
        count_deltas: removing.iter().map(|t| (t.clone(), -1)).collect(),
        delete_postings: removing,
    }
}

#[async_trait]
impl<S: IndexStore> Handler for IndexerService<S> {
    async fn handle(&self, message: &QueueMessage) -> Result<(), HandleError> {
        let parsed: IndexMessage = serde_json::from_str(&message.body).map_err(|err| {
            HandleError::Permanent(format!("index message {} is malformed: {err}", message.id))
        })?;
        self.apply(&parsed).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagetag_shared::model::{ImageFacts, Label, ModelInfo, TagOutput};
    use std::collections::HashMap;
    use std::sync::Mutex;

    type Records = HashMap<String, ImageRecord>;
    type Postings = HashMap<(String, String), f32>;
    type Counts = HashMap<String, i64>;

    /// An in-memory `IndexStore` with the port's contract: conditional,
    /// atomic commits and a bounded commit size.
    #[derive(Default)]
    struct MemoryStore {
        state: Mutex<(Records, Postings, Counts)>,
        max_items: usize,
        commits: Mutex<usize>,
    }

    #[async_trait]
    impl IndexStore for MemoryStore {
        async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>> {
            Ok(self.state.lock().expect("lock").0.get(image_id).cloned())
        }

        async fn commit(&self, commit: &IndexCommit) -> PortResult<()> {
            assert!(
                commit.item_count() <= self.max_items,
                "commit over the limit"
            );
            let mut state = self.state.lock().expect("lock");
            let stored = state.0.get(&commit.record.image_id).cloned();
            match stored {
                Some(r)
                    if r.revision == commit.expected_revision
                        && r.sequence == commit.record.sequence => {}
                _ => return Err(PortError::Conflict("changed".into())),
            }
            let id = commit.record.image_id.clone();
            state.0.insert(id.clone(), commit.record.clone());
            for p in &commit.put_postings {
                state.1.insert((p.term.clone(), id.clone()), p.confidence);
            }
            for t in &commit.delete_postings {
                state.1.remove(&(t.clone(), id.clone()));
            }
            for (t, d) in &commit.count_deltas {
                *state.2.entry(t.clone()).or_default() += d;
            }
            *self.commits.lock().expect("lock") += 1;
            Ok(())
        }

        fn max_commit_items(&self) -> usize {
            self.max_items
        }

        async fn ping(&self) -> PortResult<()> {
            Ok(())
        }
    }

    fn pending(id: &str, sequence: &str) -> ImageRecord {
        let now = Utc::now();
        ImageRecord {
            image_id: id.into(),
            bucket: "b".into(),
            key: format!("{id}.jpg"),
            status: ImageStatus::Pending,
            reason: None,
            sequence: sequence.into(),
            etag: None,
            version_id: None,
            size: 10,
            content_type: Some("image/jpeg".into()),
            facts: None,
            model: None,
            labels: vec![],
            text: vec![],
            moderation: vec![],
            faces: vec![],
            indexed_terms: vec![],
            revision: 0,
            created_at: now,
            updated_at: now,
            tagged_at: None,
        }
    }

    fn labels(names: &[(&str, f32)]) -> Vec<Label> {
        names
            .iter()
            .map(|(name, confidence)| Label {
                name: name.to_string(),
                confidence: *confidence,
                parents: vec![],
                aliases: vec![],
                categories: vec![],
                instances: vec![],
            })
            .collect()
    }

    fn tagged(id: &str, sequence: &str, names: &[(&str, f32)]) -> IndexMessage {
        IndexMessage::Tagged {
            image_id: id.into(),
            sequence: sequence.into(),
            facts: ImageFacts {
                width: 4,
                height: 3,
                format: "jpeg".into(),
            },
            model: ModelInfo {
                backend: "test".into(),
                version: "1".into(),
            },
            output: TagOutput {
                labels: labels(names),
                ..Default::default()
            },
        }
    }

    fn service(max_items: usize, records: &[ImageRecord]) -> IndexerService<MemoryStore> {
        let store = MemoryStore {
            max_items,
            ..Default::default()
        };
        for r in records {
            store
                .state
                .lock()
                .expect("lock")
                .0
                .insert(r.image_id.clone(), r.clone());
        }
        IndexerService::new(store)
    }

    fn counts(s: &IndexerService<MemoryStore>) -> BTreeMap<String, i64> {
        s.store
            .state
            .lock()
            .expect("lock")
            .2
            .iter()
            .filter(|(_, c)| **c != 0)
            .map(|(t, c)| (t.clone(), *c))
            .collect()
    }

    fn postings(s: &IndexerService<MemoryStore>) -> BTreeMap<(String, String), f32> {
        s.store
            .state
            .lock()
            .expect("lock")
            .1
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    #[tokio::test]
    async fn tagging_writes_postings_and_counts_once_even_when_replayed() {
        let s = service(100, &[pending("a", "t1"), pending("b", "t1")]);
        let message = tagged("a", "t1", &[("Dog", 90.0), ("Pet", 80.0)]);
        for _ in 0..3 {
            s.apply(&message).await.expect("applies");
        }
        s.apply(&tagged("b", "t1", &[("Dog", 70.0)]))
            .await
            .expect("applies");
        assert_eq!(
            counts(&s),
            BTreeMap::from([("tag:dog".into(), 2), ("tag:pet".into(), 1)])
        );
        assert_eq!(
            *s.store.commits.lock().expect("lock"),
            2,
            "replays must not write"
        );
        let record = s.store.get_image("a").await.expect("ok").expect("exists");
        assert_eq!(record.status, ImageStatus::Tagged);
        assert_eq!(record.revision, 1);
    }

    #[tokio::test]
    async fn retagging_replaces_postings_and_moves_counts() {
        let s = service(100, &[pending("a", "t1")]);
        s.apply(&tagged("a", "t1", &[("Dog", 90.0), ("Pet", 80.0)]))
            .await
            .expect("applies");
        s.apply(&tagged("a", "t1", &[("Cat", 95.0), ("Pet", 60.0)]))
            .await
            .expect("applies");
        assert_eq!(
            counts(&s),
            BTreeMap::from([("tag:cat".into(), 1), ("tag:pet".into(), 1)])
        );
        assert_eq!(
            postings(&s).get(&("tag:pet".into(), "a".into())),
            Some(&60.0)
        );
        assert!(!postings(&s).contains_key(&("tag:dog".into(), "a".into())));
    }

    #[tokio::test]
    async fn messages_for_older_generations_are_ignored() {
        let s = service(100, &[pending("a", "t2")]);
        s.apply(&tagged("a", "t1", &[("Dog", 90.0)]))
            .await
            .expect("ok");
        assert!(counts(&s).is_empty());
        assert_eq!(
            s.store
                .get_image("a")
                .await
                .expect("ok")
                .expect("exists")
                .status,
            ImageStatus::Pending
        );
    }

    #[tokio::test]
    async fn unindex_after_delete_removes_everything_and_failures_record_reasons() {
        let s = service(100, &[pending("a", "t1"), pending("b", "t1")]);
        s.apply(&tagged("a", "t1", &[("Dog", 90.0)]))
            .await
            .expect("ok");
        // Ingest records the delete as a newer generation, then asks to unindex.
        {
            let mut state = s.store.state.lock().expect("lock");
            let record = state.0.get_mut("a").expect("exists");
            record.status = ImageStatus::Deleted;
            record.sequence = "t2".into();
        }
        let unindex = IndexMessage::Unindex {
            image_id: "a".into(),
            sequence: "t2".into(),
        };
        s.apply(&unindex).await.expect("ok");
        s.apply(&unindex).await.expect("replay ok");
        assert!(counts(&s).is_empty());
        assert!(postings(&s).is_empty());

        let failed = IndexMessage::Failed {
            image_id: "b".into(),
            sequence: "t1".into(),
            rejected: true,
            reason: "not a decodable image".into(),
        };
        s.apply(&failed).await.expect("ok");
        let b = s.store.get_image("b").await.expect("ok").expect("exists");
        assert_eq!(b.status, ImageStatus::Rejected);
        assert_eq!(b.reason.as_deref(), Some("not a decodable image"));
    }

    #[tokio::test]
    async fn a_redriven_job_tags_a_refused_generation_but_never_a_deleted_one() {
        let s = service(100, &[pending("a", "t1"), pending("b", "t1")]);
        for id in ["a", "b"] {
            s.apply(&IndexMessage::Failed {
                image_id: id.into(),
                sequence: "t1".into(),
                rejected: true,
                reason: "image is too large".into(),
            })
            .await
            .expect("ok");
        }
        {
            let mut state = s.store.state.lock().expect("lock");
            state.0.get_mut("b").expect("exists").status = ImageStatus::Deleted;
        }
        s.apply(&tagged("a", "t1", &[("Dog", 90.0)]))
            .await
            .expect("ok");
        s.apply(&tagged("b", "t1", &[("Dog", 90.0)]))
            .await
            .expect("ok");
        let a = s.store.get_image("a").await.expect("ok").expect("exists");
        assert_eq!(a.status, ImageStatus::Tagged);
        assert_eq!(a.reason, None);
        let b = s.store.get_image("b").await.expect("ok").expect("exists");
        assert_eq!(b.status, ImageStatus::Deleted);
        assert_eq!(counts(&s), BTreeMap::from([("tag:dog".into(), 1)]));
    }

    #[tokio::test]
    async fn changes_larger_than_one_commit_are_split_and_stay_exact() {
        // A store that takes 11 items per commit allows 5 terms per image;
        // replacing 5 terms by 5 others needs 21 items, so it takes steps.
        let s = service(11, &[pending("a", "t1")]);
        let first: Vec<(String, f32)> = (0..7)
            .map(|i| (format!("old{i}"), 90.0 - i as f32))
            .collect();
        let first: Vec<(&str, f32)> = first.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        s.apply(&tagged("a", "t1", &first)).await.expect("ok");
        assert_eq!(counts(&s).len(), 5, "only the best max_terms are indexed");
        assert!(counts(&s).contains_key("tag:old0") && !counts(&s).contains_key("tag:old6"));
        let second: Vec<(String, f32)> = (0..5).map(|i| (format!("new{i}"), 50.0)).collect();
        let second: Vec<(&str, f32)> = second.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        s.apply(&tagged("a", "t1", &second)).await.expect("ok");
        let expected: BTreeMap<String, i64> = (0..5).map(|i| (format!("tag:new{i}"), 1)).collect();
        assert_eq!(counts(&s), expected);
        assert_eq!(postings(&s).len(), 5);
    }

    #[tokio::test]
    async fn malformed_messages_and_unknown_images_are_permanent_failures() {
        let s = service(100, &[]);
        let message = |body: &str| QueueMessage {
            id: "m".into(),
            body: body.into(),
            receipt: "r".into(),
            attributes: HashMap::new(),
            receive_count: 1,
        };
        assert!(matches!(
            s.handle(&message("{")).await,
            Err(HandleError::Permanent(_))
        ));
        let body = serde_json::to_string(&tagged("zzz", "t1", &[("Dog", 1.0)])).expect("json");
        assert!(matches!(
            s.handle(&message(&body)).await,
            Err(HandleError::Permanent(_))
        ));
    }
}

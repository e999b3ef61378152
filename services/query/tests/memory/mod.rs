//! An in-memory `SearchStore` for the HTTP tests. It follows the port's
//! contract the way the DynamoDB adapter does: postings best first with ties
//! by id, `after` exclusive by position (it need not exist), at most `limit`
//! results, and `more` reported whenever a page was cut at `limit` (DynamoDB
//! returns a LastEvaluatedKey then even when nothing follows). It counts
//! every call so tests can assert how much a request read.

// Each test binary compiles its own copy and uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use imagetag_shared::model::{
    CATEGORY_TERM, ImageRecord, ImageStatus, Label, TAG_TERM, image_id, terms_for_labels, timestamp,
};
use imagetag_shared::ports::{PostingHit, SearchStore, StatusCursor, TermCount, TermKind};
use imagetag_shared::{PortError, PortResult};

#[derive(Debug, Default)]
pub struct Calls {
    pub get_image: AtomicUsize,
    pub get_images: AtomicUsize,
    pub postings: AtomicUsize,
    /// Postings returned by `postings`, summed.
    pub postings_examined: AtomicUsize,
    pub lookup_postings: AtomicUsize,
    pub images_by_status: AtomicUsize,
    /// Records returned by `images_by_status`, summed.
    pub status_examined: AtomicUsize,
    pub term_counts: AtomicUsize,
    pub list_terms: AtomicUsize,
}

impl Calls {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }

    /// Postings and records handed out so far: what the budget bounds.
    pub fn examined(&self) -> usize {
        Self::get(&self.postings_examined) + Self::get(&self.status_examined)
    }

    /// Reads that walk an index rather than fetch keys.
    pub fn index_reads(&self) -> usize {
        Self::get(&self.postings) + Self::get(&self.images_by_status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    None,
    Unavailable,
    Invalid,
}

#[derive(Default)]
struct Data {
    images: BTreeMap<String, ImageRecord>,
    /// term → image id → confidence.
    postings: BTreeMap<String, BTreeMap<String, f32>>,
}

pub struct MemoryStore {
    data: Mutex<Data>,
    pub calls: Calls,
    failure: Mutex<Failure>,
    delay: Mutex<Option<Duration>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            data: Mutex::new(Data::default()),
            calls: Calls::default(),
            failure: Mutex::new(Failure::None),
            delay: Mutex::new(None),
        }
    }
}

pub fn label(name: &str, confidence: f32, categories: &[&str]) -> Label {
    Label {
        name: name.into(),
        confidence,
        parents: vec![],
        aliases: vec![],
        categories: categories.iter().map(|c| c.to_string()).collect(),
        instances: vec![],
    }
}

pub fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + seconds, 0)
        .single()
        .unwrap_or_default()
}

/// A record for `photos/<key>` as the indexer would leave it.
pub fn record(key: &str, status: ImageStatus, labels: Vec<Label>, updated: i64) -> ImageRecord {
    let indexed_terms = if status == ImageStatus::Tagged {
        terms_for_labels(&labels)
    } else {
        vec![]
    };
    ImageRecord {
        image_id: image_id("photos", key),
        bucket: "photos".into(),
        key: key.into(),
        status,
        reason: None,
        sequence: "0001".into(),
        etag: Some("\"etag\"".into()),
        version_id: None,
        size: 1000,
        content_type: Some("image/jpeg".into()),
        facts: None,
        model: None,
        labels,
        text: vec![],
        moderation: vec![],
        faces: vec![],
        indexed_terms,
        revision: 1,
        created_at: at(0),
        updated_at: at(updated),
        tagged_at: None,
    }
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores the record with the postings its `indexed_terms` name.
    pub fn insert(&self, record: ImageRecord) {
        let mut data = self.lock();
        for term in &record.indexed_terms {
            data.postings
                .entry(term.term.clone())
                .or_default()
                .insert(record.image_id.clone(), term.confidence);
        }
        data.images.insert(record.image_id.clone(), record);
    }

    /// Changes a record's status but leaves its postings: what the index
    /// looks like between an upload/deletion and the indexer catching up.
    pub fn set_status(&self, image_id: &str, status: ImageStatus) {
        if let Some(record) = self.lock().images.get_mut(image_id) {
            record.status = status;
        }
    }

    pub fn fail(&self, failure: Failure) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = failure;
    }

    pub fn delay(&self, delay: Option<Duration>) {
        *self.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    pub fn records(&self) -> Vec<ImageRecord> {
        self.lock().images.values().cloned().collect()
    }

    pub fn posting(&self, term: &str, image_id: &str) -> Option<f32> {
        self.lock()
            .postings
            .get(term)
            .and_then(|p| p.get(image_id))
            .copied()
    }

    async fn enter(&self, counter: &AtomicUsize) -> PortResult<()> {
        counter.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        match *self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Failure::None => Ok(()),
            Failure::Unavailable => Err(PortError::Unavailable("table throttled".into())),
            Failure::Invalid => Err(PortError::Invalid("stored record: missing field".into())),
        }
    }
}

fn term_kind(term: &str) -> (TermKind, &str) {
    match term.strip_prefix(CATEGORY_TERM) {
        Some(name) => (TermKind::Category, name),
        None => (TermKind::Tag, term.strip_prefix(TAG_TERM).unwrap_or(term)),
    }
}

#[async_trait]
impl SearchStore for MemoryStore {
    async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>> {
        self.enter(&self.calls.get_image).await?;
        Ok(self.lock().images.get(image_id).cloned())
    }

    async fn get_images(&self, image_ids: &[String]) -> PortResult<Vec<ImageRecord>> {
        self.enter(&self.calls.get_images).await?;
        let data = self.lock();
        let mut ids = image_ids.to_vec();
        ids.sort();
        ids.dedup();
        // "In any order": hand them back reversed to keep callers honest.
        Ok(ids
            .iter()
            .rev()
            .filter_map(|id| data.images.get(id).cloned())
            .collect())
    }

    async fn postings(
        &self,
        term: &str,
        min_confidence: f32,
        after: Option<&PostingHit>,
        limit: usize,
    ) -> PortResult<(Vec<PostingHit>, bool)> {
        self.enter(&self.calls.postings).await?;
        let data = self.lock();
        let mut hits: Vec<PostingHit> = data
            .postings
            .get(term)
            .into_iter()
            .flatten()
            .filter(|(_, confidence)| **confidence >= min_confidence)
            .map(|(id, confidence)| PostingHit {
                image_id: id.clone(),
                confidence: *confidence,
            })
            .collect();
        hits.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then_with(|| a.image_id.cmp(&b.image_id))
        });
        let page: Vec<PostingHit> = hits
            .into_iter()
            .filter(|hit| match after {
                None => true,
                Some(after) => {
                    hit.confidence < after.confidence
                        || (hit.confidence == after.confidence && hit.image_id > after.image_id)
                }
            })
            .take(limit)
            .collect();
        self.calls
            .postings_examined
            .fetch_add(page.len(), Ordering::SeqCst);
        let more = page.len() == limit;
        Ok((page, more))
    }

    async fn lookup_postings(
        &self,
        pairs: &[(String, String)],
    ) -> PortResult<HashMap<(String, String), f32>> {
        self.enter(&self.calls.lookup_postings).await?;
        let data = self.lock();
        Ok(pairs
            .iter()
            .filter_map(|(term, id)| {
                let confidence = data.postings.get(term)?.get(id)?;
                Some(((term.clone(), id.clone()), *confidence))
            })
            .collect())
    }

    async fn images_by_status(
        &self,
        status: ImageStatus,
        after: Option<&StatusCursor>,
        limit: usize,
    ) -> PortResult<(Vec<ImageRecord>, bool)> {
        self.enter(&self.calls.images_by_status).await?;
        let data = self.lock();
        let mut records: Vec<(String, ImageRecord)> = data
            .images
            .values()
            .filter(|r| r.status == status)
            .map(|r| (timestamp::format(&r.updated_at), r.clone()))
            .collect();
        records.sort_by(|(a_at, a), (b_at, b)| {
            b_at.cmp(a_at).then_with(|| b.image_id.cmp(&a.image_id))
        });
        let page: Vec<ImageRecord> = records
            .into_iter()
            .filter(|(at, record)| match after {
                None => true,
                Some(after) => {
                    (at.as_str(), record.image_id.as_str())
                        < (after.updated_at.as_str(), after.image_id.as_str())
                }
            })
            .map(|(_, record)| record)
            .take(limit)
            .collect();
        self.calls
            .status_examined
            .fetch_add(page.len(), Ordering::SeqCst);
        let more = page.len() == limit;
        Ok((page, more))
    }

    async fn term_counts(&self, terms: &[String]) -> PortResult<HashMap<String, u64>> {
        self.enter(&self.calls.term_counts).await?;
        let data = self.lock();
        Ok(terms
            .iter()
            .map(|term| {
                let count = data.postings.get(term).map_or(0, |p| p.len() as u64);
                (term.clone(), count)
            })
            .collect())
    }

    async fn status_counts(&self) -> PortResult<HashMap<ImageStatus, u64>> {
        let mut counts = HashMap::new();
        for record in self.lock().images.values() {
            *counts.entry(record.status).or_insert(0) += 1;
        }
        Ok(counts)
    }

    async fn list_terms(
        &self,
        kind: TermKind,
        prefix: Option<&str>,
        limit: usize,
    ) -> PortResult<Vec<TermCount>> {
        self.enter(&self.calls.list_terms).await?;
        let data = self.lock();
        let mut terms: Vec<TermCount> = data
            .postings
            .iter()
            .filter(|(_, postings)| !postings.is_empty())
            .filter_map(|(term, postings)| {
                let (term_kind, name) = term_kind(term);
                (term_kind == kind && prefix.is_none_or(|p| name.starts_with(p))).then(|| {
                    TermCount {
                        term: term.clone(),
                        kind,
                        name: name.to_owned(),
                        image_count: postings.len() as u64,
                    }
                })
            })
            .collect();
        if prefix.is_none() {
            terms.sort_by(|a, b| {
                b.image_count
                    .cmp(&a.image_count)
                    .then_with(|| a.name.cmp(&b.name))
            });
        }
        terms.truncate(limit);
        Ok(terms)
    }

    async fn ping(&self) -> PortResult<()> {
        self.enter(&self.calls.get_image).await
    }
}

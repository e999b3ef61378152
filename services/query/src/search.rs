//! The search: every read goes by key or by index (postings by confidence,
//! records by status); nothing scans a table.
//!
//! A search with tags or a category is driven by one term's postings, best
//! first. Each page of candidates is checked against the other terms with
//! batched point lookups, then the survivors are loaded and anything not
//! `tagged` any more (a deletion or re-upload the indexer has not caught up
//! with) is dropped. Work per request is bounded by a budget of examined
//! postings; when it runs out, the page returns short with a cursor.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use imagetag_shared::PortResult;
use imagetag_shared::model::{
    ImageFacts, ImageRecord, ImageStatus, Label, category_term, tag_term, timestamp,
};
use imagetag_shared::ports::{PostingHit, SearchStore, StatusCursor};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cursor::{After, CursorCodec, Position};
use crate::error::ApiError;
use crate::params::SearchRequest;

/// Postings (or status-listing records) one request may examine.
pub const DEFAULT_EXAMINE_BUDGET: usize = 1000;
/// Smallest page asked of the store: round trips cost more than a few items.
const MIN_PAGE: usize = 10;
/// Largest page asked of the store (DynamoDB's adapter caps queries there).
const MAX_PAGE: usize = 1000;
/// Keys per `lookup_postings` call that still fit one BatchGetItem.
const LOOKUP_BATCH: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchMode {
    All,
    Any,
}

/// The normalized search, without page size or cursor. Names are
/// normalized, lists sorted and deduplicated (see `params`).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub status: ImageStatus,
    pub mode: MatchMode,
    pub tags: Vec<String>,
    pub exclude: Vec<String>,
    pub category: Option<String>,
    pub min_confidence: f32,
}

impl SearchQuery {
    /// Identifies the query inside cursors. Fields are length-prefixed so no
    /// two different queries can produce the same byte stream.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        field(b"imagetag-query/search/1");
        field(self.status.as_str().as_bytes());
        field(match self.mode {
            MatchMode::All => b"all",
            MatchMode::Any => b"any",
        });
        for list in [&self.tags, &self.exclude] {
            field(&(list.len() as u64).to_be_bytes());
            for name in list {
                field(name.as_bytes());
            }
        }
        match &self.category {
            Some(category) => field(category.as_bytes()),
            None => field(b"\x00none"),
        }
        field(&self.min_confidence.to_bits().to_be_bytes());
        let digest = hasher.finalize();
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &digest[..16],
        )
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImageSummary {
    pub id: String,
    pub bucket: String,
    pub key: String,
    pub status: ImageStatus,
    /// Best first.
    pub labels: Vec<Label>,
    /// Confidence of the term that ranked the result, when one did.
    pub score: Option<f32>,
    #[serde(serialize_with = "timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
    pub facts: Option<ImageFacts>,
    pub reason: Option<String>,
}

impl ImageSummary {
    fn new(record: ImageRecord, score: Option<f32>) -> Self {
        let mut labels = record.labels;
        labels.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then_with(|| a.name.cmp(&b.name))
        });
        Self {
            id: record.image_id,
            bucket: record.bucket,
            key: record.key,
            status: record.status,
            labels,
            score,
            updated_at: record.updated_at,
            facts: record.facts,
            reason: record.reason,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SearchPage {
    pub items: Vec<ImageSummary>,
    pub next_cursor: Option<String>,
}

impl SearchPage {
    fn empty() -> Self {
        Self {
            items: Vec::new(),
            next_cursor: None,
        }
    }
}

/// A condition on a candidate: it must (`wanted`) or must not have a posting
/// of `term`, with at least `threshold` confidence when one is given.
#[derive(Debug, Clone)]
struct Check {
    term: String,
    threshold: Option<f32>,
    wanted: bool,
    /// Image count of the term, to run the most selective checks first.
    count: u64,
}

impl Check {
    fn passes(&self, confidence: Option<f32>) -> bool {
        let qualifies =
            confidence.is_some_and(|c| self.threshold.is_none_or(|threshold| c >= threshold));
        qualifies == self.wanted
    }
}

/// Checks that drop the most candidates first: rare required terms, then
/// common excluded ones.
fn order_checks(mut checks: Vec<Check>) -> Vec<Check> {
    checks.sort_by(|a, b| {
        b.wanted.cmp(&a.wanted).then_with(|| {
            if a.wanted {
                a.count.cmp(&b.count)
            } else {
                b.count.cmp(&a.count)
            }
        })
    });
    checks
}

/// One driver term's postings, walked best first.
#[derive(Debug)]
struct Phase {
    /// The phase number cursors carry.
    id: usize,
    driver: String,
    driver_min: f32,
    /// False when the phase cannot yield anything (no postings, or the tag is
    /// also excluded): it is skipped without a read.
    live: bool,
    checks: Vec<Check>,
}

/// Runs a validated search against the store.
pub async fn search(
    store: &dyn SearchStore,
    codec: &CursorCodec,
    budget: usize,
    request: SearchRequest,
) -> Result<SearchPage, ApiError> {
    let fingerprint = request.query.fingerprint();
    let resume = request
        .cursor
        .as_deref()
        .map(|cursor| codec.decode(cursor, &fingerprint))
        .transpose()?;
    let run = Run {
        store,
        codec,
        fingerprint,
        limit: request.limit,
        budget: budget.max(1),
    };
    let query = &request.query;
    if query.tags.is_empty() && query.category.is_none() {
        run.by_status(query, resume).await
    } else {
        run.by_postings(query, resume).await
    }
}

struct Run<'a> {
    store: &'a dyn SearchStore,
    codec: &'a CursorCodec,
    fingerprint: String,
    limit: usize,
    budget: usize,
}

impl Run<'_> {
    fn cursor(&self, phase: usize, after: Option<After>) -> Option<String> {
        Some(
            self.codec
                .encode(&self.fingerprint, &Position { phase, after }),
        )
    }

    /// Plain listing by status, newest first; only `exclude` can filter it.
    async fn by_status(
        &self,
        query: &SearchQuery,
        resume: Option<Position>,
    ) -> Result<SearchPage, ApiError> {
        let mut after = match resume {
            None => None,
            Some(Position {
                phase: 0,
                after: Some(After::Status(cursor)),
            }) => Some(cursor),
            Some(_) => return Err(ApiError::invalid_cursor("cursor does not fit this query")),
        };
        let checks: Vec<Check> = query
            .exclude
            .iter()
            .map(|name| Check {
                term: tag_term(name),
                threshold: None,
                wanted: false,
                count: 0,
            })
            .collect();
        let mut items = Vec::new();
        let mut budget_left = self.budget;
        let mut round = 0;
        loop {
            if budget_left == 0 {
                let next = after.map(After::Status);
                return Ok(SearchPage {
                    items,
                    next_cursor: self.cursor(0, next),
                });
            }
            let need = self.limit - items.len();
            let size = page_size(need, !checks.is_empty(), round, budget_left);
            let (records, more) = self
                .store
                .images_by_status(query.status, after.as_ref(), size)
                .await?;
            budget_left = budget_left.saturating_sub(records.len());
            // Without a new position there is no way forward; stop rather
            // than ask for the same page again.
            let more = more && !records.is_empty();
            let ids: Vec<&str> = records.iter().map(|r| r.image_id.as_str()).collect();
            let alive = survivors(self.store, &checks, &ids).await?;
            let last = records.last().map(status_cursor);
            let count = records.len();
            let mut records: Vec<Option<ImageRecord>> = records.into_iter().map(Some).collect();
            for index in alive {
                let Some(record) = records[index].take() else {
                    continue;
                };
                // The index is eventually consistent with the record.
                if record.status != query.status {
                    continue;
                }
                let position = status_cursor(&record);
                items.push(ImageSummary::new(record, None));
                if items.len() == self.limit {
                    let has_more = index + 1 < count || more;
                    return Ok(SearchPage {
                        items,
                        next_cursor: if has_more {
                            self.cursor(0, Some(After::Status(position)))
                        } else {
                            None
                        },
                    });
                }
            }
            if let Some(last) = last {
                after = Some(last);
            }
            if !more {
                return Ok(SearchPage {
                    items,
                    next_cursor: None,
                });
            }
            round += 1;
        }
    }

    async fn by_postings(
        &self,
        query: &SearchQuery,
        resume: Option<Position>,
    ) -> Result<SearchPage, ApiError> {
        let Some(phases) = self.plan(query, resume.as_ref()).await? else {
            return Ok(SearchPage::empty());
        };
        let (mut index, mut after) = match resume {
            None => (0, None),
            Some(Position { phase, after }) => {
                let index = phases
                    .iter()
                    .position(|p| p.id == phase)
                    .ok_or_else(|| ApiError::invalid_cursor("cursor does not fit this query"))?;
                let after = match after {
                    None => None,
                    Some(After::Posting(position)) => Some(position.hit()),
                    Some(After::Status(_)) => {
                        return Err(ApiError::invalid_cursor("cursor does not fit this query"));
                    }
                };
                (index, after)
            }
        };
        let mut items = Vec::new();
        let mut budget_left = self.budget;
        while let Some(phase) = phases.get(index) {
            if !phase.live {
                index += 1;
                after = None;
                continue;
            }
            let mut round = 0;
            loop {
                if budget_left == 0 {
                    return Ok(SearchPage {
                        items,
                        next_cursor: self.cursor(phase.id, after.as_ref().map(After::from)),
                    });
                }
                let need = self.limit - items.len();
                let size = page_size(need, !phase.checks.is_empty(), round, budget_left);
                let (hits, more) = self
                    .store
                    .postings(&phase.driver, phase.driver_min, after.as_ref(), size)
                    .await?;
                budget_left = budget_left.saturating_sub(hits.len());
                let more = more && !hits.is_empty();
                if let Some(filled) = self.consume(phase, &hits, &mut items).await? {
                    // Resume right after the last item returned: candidates
                    // examined beyond it are examined again next time.
                    let has_more = filled + 1 < hits.len()
                        || more
                        || phases[index + 1..].iter().any(|p| p.live);
                    return Ok(SearchPage {
                        items,
                        next_cursor: if has_more {
                            self.cursor(phase.id, Some(After::from(&hits[filled])))
                        } else {
                            None
                        },
                    });
                }
                if let Some(last) = hits.last() {
                    after = Some(last.clone());
                }
                if !more {
                    break;
                }
                round += 1;
            }
            index += 1;
            after = None;
        }
        Ok(SearchPage {
            items,
            next_cursor: None,
        })
    }

    /// The phases of a term search, or `None` when term counts already
    /// prove it empty (then no postings are read at all).
    async fn plan(
        &self,
        query: &SearchQuery,
        resume: Option<&Position>,
    ) -> Result<Option<Vec<Phase>>, ApiError> {
        let tag_terms: Vec<String> = query.tags.iter().map(|t| tag_term(t)).collect();
        let exclude_terms: Vec<String> = query.exclude.iter().map(|t| tag_term(t)).collect();
        let category = query.category.as_deref().map(category_term);
        let mut all_terms = tag_terms.clone();
        all_terms.extend(exclude_terms.iter().cloned());
        all_terms.extend(category.iter().cloned());
        let counts = self.store.term_counts(&all_terms).await?;
        let count = |term: &str| counts.get(term).copied().unwrap_or(0);
        let excluded = |term: &String| exclude_terms.contains(term);
        let forbid_excluded = exclude_terms.iter().map(|term| Check {
            term: term.clone(),
            threshold: None,
            wanted: false,
            count: count(term),
        });
        if category.as_deref().is_some_and(|c| count(c) == 0) {
            return Ok(None);
        }
        // With one tag (or only a category) both modes mean the same, and
        // `all` lets the rarer of tag and category drive.
        let mode = if query.tags.len() <= 1 {
            MatchMode::All
        } else {
            query.mode
        };
        match mode {
            MatchMode::All => {
                // Required terms, in the canonical order cursor phases use.
                let mut required: Vec<(String, Option<f32>)> = tag_terms
                    .iter()
                    .map(|t| (t.clone(), Some(query.min_confidence)))
                    .collect();
                required.extend(category.iter().map(|c| (c.clone(), None)));
                if required.iter().any(|(t, _)| count(t) == 0 || excluded(t)) {
                    return Ok(None);
                }
                // The rarest term drives; a resumed search keeps the driver it
                // started with even if counts moved meanwhile.
                let driver = match resume {
                    Some(position) => position.phase,
                    None => (0..required.len())
                        .min_by_key(|&i| count(&required[i].0))
                        .unwrap_or(0),
                };
                let Some((driver_term, driver_min)) = required.get(driver).cloned() else {
                    return Err(ApiError::invalid_cursor("cursor does not fit this query"));
                };
                let mut checks: Vec<Check> = required
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != driver)
                    .map(|(_, (term, threshold))| Check {
                        term: term.clone(),
                        threshold: *threshold,
                        wanted: true,
                        count: count(term),
                    })
                    .collect();
                checks.extend(forbid_excluded);
                Ok(Some(vec![Phase {
                    id: driver,
                    driver: driver_term,
                    // Category postings qualify at any confidence.
                    driver_min: driver_min.unwrap_or(0.0),
                    live: true,
                    checks: order_checks(checks),
                }]))
            }
            MatchMode::Any => {
                let phases = tag_terms
                    .iter()
                    .enumerate()
                    .map(|(i, term)| {
                        let mut checks: Vec<Check> = category
                            .iter()
                            .map(|c| Check {
                                term: c.clone(),
                                threshold: None,
                                wanted: true,
                                count: count(c),
                            })
                            .collect();
                        checks.extend(forbid_excluded.clone());
                        // An image found under an earlier tag was returned
                        // there; skipping it here keeps results unique.
                        checks.extend(tag_terms[..i].iter().map(|earlier| Check {
                            term: earlier.clone(),
                            threshold: Some(query.min_confidence),
                            wanted: false,
                            count: count(earlier),
                        }));
                        Phase {
                            id: i,
                            driver: term.clone(),
                            driver_min: query.min_confidence,
                            live: count(term) > 0 && !excluded(term),
                            checks: order_checks(checks),
                        }
                    })
                    .collect();
                Ok(Some(phases))
            }
        }
    }

    /// Checks and loads a page of candidates in order, appending results
    /// until the page is full. Returns the index of the hit that filled it.
    async fn consume(
        &self,
        phase: &Phase,
        hits: &[PostingHit],
        items: &mut Vec<ImageSummary>,
    ) -> PortResult<Option<usize>> {
        let ids: Vec<&str> = hits.iter().map(|h| h.image_id.as_str()).collect();
        let alive = survivors(self.store, &phase.checks, &ids).await?;
        let mut start = 0;
        while start < alive.len() {
            // Load only as many as could still fit: records are the largest
            // reads of a search.
            let end = (start + self.limit - items.len()).min(alive.len());
            let chunk = &alive[start..end];
            let wanted: Vec<String> = chunk.iter().map(|&i| hits[i].image_id.clone()).collect();
            let mut records: HashMap<String, ImageRecord> = self
                .store
                .get_images(&wanted)
                .await?
                .into_iter()
                .map(|record| (record.image_id.clone(), record))
                .collect();
            for &i in chunk {
                let hit = &hits[i];
                let Some(record) = records.remove(&hit.image_id) else {
                    continue;
                };
                if record.status != ImageStatus::Tagged {
                    continue;
                }
                items.push(ImageSummary::new(record, Some(hit.confidence)));
                if items.len() == self.limit {
                    return Ok(Some(i));
                }
            }
            start = end;
        }
        Ok(None)
    }
}

/// Indices of the candidates that pass every check, in their original order.
/// Checks run a few terms at a time, each round only on the survivors of the
/// previous one, so selective terms cut the lookups of the others.
async fn survivors(
    store: &dyn SearchStore,
    checks: &[Check],
    ids: &[&str],
) -> PortResult<Vec<usize>> {
    let mut alive: Vec<usize> = (0..ids.len()).collect();
    let mut pending = checks;
    while !pending.is_empty() && !alive.is_empty() {
        let take = (LOOKUP_BATCH / alive.len()).clamp(1, pending.len());
        let (now, rest) = pending.split_at(take);
        let pairs: Vec<(String, String)> = now
            .iter()
            .flat_map(|check| {
                alive
                    .iter()
                    .map(|&i| (check.term.clone(), ids[i].to_owned()))
            })
            .collect();
        let found = store.lookup_postings(&pairs).await?;
        alive.retain(|&i| {
            now.iter().all(|check| {
                let key = (check.term.clone(), ids[i].to_owned());
                check.passes(found.get(&key).copied())
            })
        });
        pending = rest;
    }
    Ok(alive)
}

/// How many items to ask the store for. Unfiltered pages lose only the odd
/// stale record, so they ask for what is missing; filtered ones expect
/// rejects and ask for more, doubling each round that still comes up short,
/// so a selective query needs few round trips. Never beyond the budget.
fn page_size(need: usize, filtered: bool, round: u32, budget_left: usize) -> usize {
    let base = if filtered {
        need.saturating_mul(4)
    } else {
        need
    };
    base.max(MIN_PAGE)
        .saturating_mul(1 << round.min(7))
        .min(MAX_PAGE)
        .min(budget_left)
}

fn status_cursor(record: &ImageRecord) -> StatusCursor {
    StatusCursor {
        updated_at: timestamp::format(&record.updated_at),
        image_id: record.image_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_grow_while_filtered_but_stay_within_budget() {
        assert_eq!(page_size(20, false, 0, 1000), 20);
        assert_eq!(page_size(1, false, 0, 1000), MIN_PAGE);
        assert_eq!(page_size(20, true, 0, 1000), 80);
        assert_eq!(page_size(20, true, 2, 1000), 320);
        assert_eq!(page_size(20, true, 30, 5000), MAX_PAGE);
        assert_eq!(page_size(20, true, 0, 7), 7);
    }

    #[test]
    fn checks_run_rare_requirements_first_then_common_exclusions() {
        let check = |term: &str, wanted, count| Check {
            term: term.into(),
            threshold: None,
            wanted,
            count,
        };
        let ordered = order_checks(vec![
            check("x1", false, 5),
            check("r9", true, 9),
            check("x7", false, 7),
            check("r2", true, 2),
        ]);
        let terms: Vec<&str> = ordered.iter().map(|c| c.term.as_str()).collect();
        assert_eq!(terms, ["r2", "r9", "x7", "x1"]);
    }

    #[test]
    fn fingerprints_separate_queries() {
        let query = SearchQuery {
            status: ImageStatus::Tagged,
            mode: MatchMode::All,
            tags: vec!["a".into(), "b".into()],
            exclude: vec![],
            category: None,
            min_confidence: 0.0,
        };
        let mut moved = query.clone();
        moved.tags = vec!["a".into()];
        moved.exclude = vec!["b".into()];
        let mut joined = query.clone();
        joined.tags = vec!["ab".into()];
        let mut any = query.clone();
        any.mode = MatchMode::Any;
        let fingerprints = [&query, &moved, &joined, &any].map(SearchQuery::fingerprint);
        for (i, a) in fingerprints.iter().enumerate() {
            for b in &fingerprints[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(query.fingerprint(), query.clone().fingerprint());
    }
}

//! The metadata ports on SQLite: one file holds image records, postings and
//! tag counts with the same semantics as the DynamoDB tables (conditional
//! generations, atomic index commits, index-driven reads), so the service
//! logic cannot tell them apart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use imagetag_shared::model::{ImageRecord, ImageStatus, timestamp};
use imagetag_shared::ports::{
    GenerationUpdate, ImageStore, IndexCommit, IndexStore, PostingHit, Recorded, SearchStore,
    StatusCursor, TermCount, TermKind,
};
use imagetag_shared::{PortError, PortResult};
use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    image_id   TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    sequence   TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_status ON images (status, updated_at DESC, image_id DESC);
CREATE TABLE IF NOT EXISTS postings (
    term       TEXT NOT NULL,
    image_id   TEXT NOT NULL,
    confidence REAL NOT NULL,
    PRIMARY KEY (term, image_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS postings_by_confidence ON postings (term, confidence DESC, image_id DESC);
CREATE TABLE IF NOT EXISTS terms (
    term        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    image_count INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS terms_by_name ON terms (kind, name);
CREATE INDEX IF NOT EXISTS terms_by_count ON terms (kind, image_count DESC, term);
";

/// The largest commit we accept; SQLite has no such limit, but keeping the
/// DynamoDB one means both wirings index the same terms.
const MAX_COMMIT_ITEMS: usize = 100;

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

fn db_error(err: rusqlite::Error) -> PortError {
    match err {
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            PortError::Unavailable(err.to_string())
        }
        other => PortError::Invalid(format!("sqlite: {other}")),
    }
}

fn open(path: &Path) -> PortResult<Connection> {
    let connection = Connection::open(path).map_err(db_error)?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(db_error)?;
    Ok(connection)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, with `readers`
    /// connections for concurrent reads beside the one writer.
    pub fn open(path: &Path, readers: usize) -> PortResult<Self> {
        let writer = open(path)?;
        writer.execute_batch(SCHEMA).map_err(db_error)?;
        let readers = (0..readers.max(1))
            .map(|_| open(path).map(Mutex::new))
            .collect::<PortResult<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// Records each generation and applies its index commit, all in one
    /// transaction, with the same conditions as `record_generation` and
    /// `commit` one by one (any failure changes nothing). For bulk loads
    /// (imports, benchmarks), where a transaction per image would cost more
    /// than its writes. Generations that are duplicates or stale are an
    /// error here, since their commits would not apply.
    pub async fn apply_batch(&self, batch: Vec<(GenerationUpdate, IndexCommit)>) -> PortResult<()> {
        self.write(move |db| {
            let tx = db.transaction().map_err(db_error)?;
            for (update, commit) in &batch {
                match record_generation_in(&tx, update)? {
                    Recorded::Applied => {}
                    _ => {
                        return Err(PortError::Conflict(format!(
                            "image {} already has generation {} or a newer one",
                            update.image_id, update.sequence
                        )));
                    }
                }
                commit_in(&tx, commit)?;
            }
            tx.commit().map_err(db_error)
        })
        .await
    }

    async fn write<T, F>(&self, work: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> PortResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = inner
                .writer
                .lock()
                .map_err(|_| PortError::Unavailable("writer connection poisoned".into()))?;
            work(&mut connection)
        })
        .await
        .map_err(|err| PortError::Unavailable(format!("database task: {err}")))?
    }

    async fn read<T, F>(&self, work: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> PortResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let slot = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let connection = inner.readers[slot]
                .lock()
                .map_err(|_| PortError::Unavailable("reader connection poisoned".into()))?;
            work(&connection)
        })
        .await
        .map_err(|err| PortError::Unavailable(format!("database task: {err}")))?
    }

    async fn record(&self, image_id: &str) -> PortResult<Option<ImageRecord>> {
        let image_id = image_id.to_owned();
        self.read(move |db| load_record(db, &image_id)).await
    }
}

fn load_record(db: &Connection, image_id: &str) -> PortResult<Option<ImageRecord>> {
    let json: Option<String> = db
        .query_row(
            "SELECT record FROM images WHERE image_id = ?1",
            [image_id],
            |row| row.get(0),
        )
        .optional()
        .map_err(db_error)?;
    json.map(|json| decode(&json)).transpose()
}

fn decode(json: &str) -> PortResult<ImageRecord> {
    serde_json::from_str(json).map_err(|err| PortError::Invalid(format!("stored record: {err}")))
}

fn store_record(db: &Connection, record: &ImageRecord) -> PortResult<()> {
    let json = serde_json::to_string(record).map_err(PortError::invalid)?;
    db.prepare_cached(
        "INSERT INTO images (image_id, status, sequence, revision, updated_at, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (image_id) DO UPDATE SET status = ?2, sequence = ?3, revision = ?4,
             updated_at = ?5, record = ?6",
    )
    .map_err(db_error)?
    .execute(params![
        record.image_id,
        record.status.as_str(),
        record.sequence,
        record.revision as i64,
        timestamp::format(&record.updated_at),
        json
    ])
    .map_err(db_error)?;
    Ok(())
}

fn kind_of(value: &str) -> TermKind {
    if value == TermKind::Category.as_str() {
        TermKind::Category
    } else {
        TermKind::Tag
    }
}

#[async_trait]
impl ImageStore for SqliteStore {
    async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>> {
        self.record(image_id).await
    }

    async fn record_generation(&self, update: &GenerationUpdate) -> PortResult<Recorded> {
        let update = update.clone();
        self.write(move |db| {
            let tx = db.transaction().map_err(db_error)?;
            let recorded = record_generation_in(&tx, &update)?;
            if matches!(recorded, Recorded::Applied) {
                tx.commit().map_err(db_error)?;
            }
            Ok(recorded)
        })
        .await
    }

    async fn ping(&self) -> PortResult<()> {
        self.read(|db| db.execute_batch("SELECT 1").map_err(db_error))
            .await
    }
}

/// Ingest's conditional write of a generation, inside the caller's
/// transaction.
fn record_generation_in(tx: &Connection, update: &GenerationUpdate) -> PortResult<Recorded> {
    let existing = load_record(tx, &update.image_id)?;
    let record = match existing {
        Some(existing) if existing.sequence == update.sequence => {
            return Ok(Recorded::Duplicate(Box::new(existing)));
        }
        Some(existing) if existing.sequence > update.sequence => {
            return Ok(Recorded::Stale(Box::new(existing)));
        }
        Some(mut record) => {
            apply_generation(&mut record, update);
            record
        }
        None => {
            let mut record = ImageRecord {
                image_id: update.image_id.clone(),
                bucket: String::new(),
                key: String::new(),
                status: update.status,
                reason: None,
                sequence: String::new(),
                etag: None,
                version_id: None,
                size: 0,
                content_type: None,
                facts: None,
                model: None,
                labels: vec![],
                text: vec![],
                moderation: vec![],
                faces: vec![],
                indexed_terms: vec![],
                revision: 0,
                created_at: update.at,
                updated_at: update.at,
                tagged_at: None,
            };
            apply_generation(&mut record, update);
            record
        }
    };
    store_record(tx, &record)?;
    Ok(Recorded::Applied)
}

/// The object fields ingest owns; tags are left to the indexer.
fn apply_generation(record: &mut ImageRecord, update: &GenerationUpdate) {
    record.bucket = update.bucket.clone();
    record.key = update.key.clone();
    record.status = update.status;
    record.reason = update.reason.clone();
    record.sequence = update.sequence.clone();
    record.updated_at = update.at;
    let meta = update.meta.clone();
    record.size = meta.as_ref().map(|m| m.size).unwrap_or(0);
    record.content_type = meta.as_ref().and_then(|m| m.content_type.clone());
    record.etag = meta.as_ref().and_then(|m| m.etag.clone());
    record.version_id = meta.and_then(|m| m.version_id);
}

#[async_trait]
impl IndexStore for SqliteStore {
    async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>> {
        self.record(image_id).await
    }

    async fn commit(&self, commit: &IndexCommit) -> PortResult<()> {
        if commit.item_count() > MAX_COMMIT_ITEMS {
            return Err(PortError::Invalid(format!(
                "commit of {} items exceeds the limit",
                commit.item_count()
            )));
        }
        let commit = commit.clone();
        self.write(move |db| {
            let tx = db.transaction().map_err(db_error)?;
            commit_in(&tx, &commit)?;
            tx.commit().map_err(db_error)
        })
        .await
    }

    fn max_commit_items(&self) -> usize {
        MAX_COMMIT_ITEMS
    }

    async fn ping(&self) -> PortResult<()> {
        ImageStore::ping(self).await
    }
}

/// The indexer's conditional commit, inside the caller's transaction.
fn commit_in(tx: &Connection, commit: &IndexCommit) -> PortResult<()> {
    let current: Option<(i64, String)> = tx
        .query_row(
            "SELECT revision, sequence FROM images WHERE image_id = ?1",
            [&commit.record.image_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(db_error)?;
    match current {
        Some((revision, sequence))
            if revision as u64 == commit.expected_revision
                && sequence == commit.record.sequence => {}
        _ => {
            return Err(PortError::Conflict(format!(
                "image {} changed during the index commit",
                commit.record.image_id
            )));
        }
    }
    store_record(tx, &commit.record)?;
    let id = &commit.record.image_id;
    // Cached statements: a commit runs the same few statements per term.
    let mut put = tx
        .prepare_cached(
            "INSERT INTO postings (term, image_id, confidence) VALUES (?1, ?2, ?3)
             ON CONFLICT (term, image_id) DO UPDATE SET confidence = ?3",
        )
        .map_err(db_error)?;
    for posting in &commit.put_postings {
        put.execute(params![posting.term, id, posting.confidence as f64])
            .map_err(db_error)?;
    }
    let mut delete = tx
        .prepare_cached("DELETE FROM postings WHERE term = ?1 AND image_id = ?2")
        .map_err(db_error)?;
    for term in &commit.delete_postings {
        delete.execute(params![term, id]).map_err(db_error)?;
    }
    let mut count = tx
        .prepare_cached(
            "INSERT INTO terms (term, kind, name, image_count) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (term) DO UPDATE SET image_count = image_count + ?4",
        )
        .map_err(db_error)?;
    for (term, delta) in &commit.count_deltas {
        let (kind, name) = TermKind::split(term);
        count
            .execute(params![term, kind.as_str(), name, delta])
            .map_err(db_error)?;
    }
    Ok(())
}

#[async_trait]
impl SearchStore for SqliteStore {
    async fn get_image(&self, image_id: &str) -> PortResult<Option<ImageRecord>> {
        self.record(image_id).await
    }

    async fn get_images(&self, image_ids: &[String]) -> PortResult<Vec<ImageRecord>> {
        let ids = image_ids.to_vec();
        self.read(move |db| {
            let mut statement = db
                .prepare_cached("SELECT record FROM images WHERE image_id = ?1")
                .map_err(db_error)?;
            let mut records = Vec::with_capacity(ids.len());
            let mut seen = std::collections::HashSet::new();
            for id in ids {
                if !seen.insert(id.clone()) {
                    continue;
                }
                let json: Option<String> = statement
                    .query_row([&id], |row| row.get(0))
                    .optional()
                    .map_err(db_error)?;
                if let Some(json) = json {
                    records.push(decode(&json)?);
                }
            }
            Ok(records)
        })
        .await
    }

    async fn postings(
        &self,
        term: &str,
        min_confidence: f32,
        after: Option<&PostingHit>,
        limit: usize,
    ) -> PortResult<(Vec<PostingHit>, bool)> {
        let term = term.to_owned();
        let after = after.cloned();
        let limit = limit.clamp(1, 1000);
        self.read(move |db| {
            // One row more than asked tells whether more follow.
            let fetch = (limit + 1) as i64;
            let mut hits = Vec::with_capacity(limit + 1);
            let map = |row: &rusqlite::Row<'_>| {
                Ok(PostingHit {
                    image_id: row.get(0)?,
                    confidence: row.get::<_, f64>(1)? as f32,
                })
            };
            match &after {
                None => {
                    let mut statement = db
                        .prepare_cached(
                            "SELECT image_id, confidence FROM postings
                             WHERE term = ?1 AND confidence >= ?2
                             ORDER BY confidence DESC, image_id DESC LIMIT ?3",
                        )
                        .map_err(db_error)?;
                    for hit in statement
                        .query_map(params![term, min_confidence as f64, fetch], map)
                        .map_err(db_error)?
                    {
                        hits.push(hit.map_err(db_error)?);
                    }
                }
                Some(after) => {
                    let mut statement = db
                        .prepare_cached(
                            "SELECT image_id, confidence FROM postings
                             WHERE term = ?1 AND confidence >= ?2
                               AND (confidence < ?3 OR (confidence = ?3 AND image_id < ?4))
                             ORDER BY confidence DESC, image_id DESC LIMIT ?5",
                        )
                        .map_err(db_error)?;
                    for hit in statement
                        .query_map(
                            params![
                                term,
                                min_confidence as f64,
                                after.confidence as f64,
                                after.image_id,
                                fetch
                            ],
                            map,
                        )
                        .map_err(db_error)?
                    {
                        hits.push(hit.map_err(db_error)?);
                    }
                }
            }
            let more = hits.len() > limit;
            hits.truncate(limit);
            Ok((hits, more))
        })
        .await
    }

    async fn lookup_postings(
        &self,
        pairs: &[(String, String)],
    ) -> PortResult<HashMap<(String, String), f32>> {
        let pairs = pairs.to_vec();
        self.read(move |db| {
            let mut statement = db
                .prepare_cached("SELECT confidence FROM postings WHERE term = ?1 AND image_id = ?2")
                .map_err(db_error)?;
            let mut found = HashMap::new();
            for (term, id) in pairs {
                let confidence: Option<f64> = statement
                    .query_row(params![term, id], |row| row.get(0))
                    .optional()
                    .map_err(db_error)?;
                if let Some(confidence) = confidence {
                    found.insert((term, id), confidence as f32);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn images_by_status(
        &self,
        status: ImageStatus,
        after: Option<&StatusCursor>,
        limit: usize,
    ) -> PortResult<(Vec<ImageRecord>, bool)> {
        let after = after.cloned();
        let limit = limit.clamp(1, 1000);
        self.read(move |db| {
            let fetch = (limit + 1) as i64;
            let mut records = Vec::with_capacity(limit + 1);
            let (sql, values): (&str, Vec<rusqlite::types::Value>) = match &after {
                None => (
                    "SELECT record FROM images WHERE status = ?1
                     ORDER BY updated_at DESC, image_id DESC LIMIT ?2",
                    vec![status.as_str().to_owned().into(), fetch.into()],
                ),
                Some(cursor) => (
                    "SELECT record FROM images WHERE status = ?1
                       AND (updated_at < ?2 OR (updated_at = ?2 AND image_id < ?3))
                     ORDER BY updated_at DESC, image_id DESC LIMIT ?4",
                    vec![
                        status.as_str().to_owned().into(),
                        cursor.updated_at.clone().into(),
                        cursor.image_id.clone().into(),
                        fetch.into(),
                    ],
                ),
            };
            let mut statement = db.prepare_cached(sql).map_err(db_error)?;
            for json in statement
                .query_map(rusqlite::params_from_iter(values), |row| {
                    row.get::<_, String>(0)
                })
                .map_err(db_error)?
            {
                records.push(decode(&json.map_err(db_error)?)?);
            }
            let more = records.len() > limit;
            records.truncate(limit);
            Ok((records, more))
        })
        .await
    }

    async fn term_counts(&self, terms: &[String]) -> PortResult<HashMap<String, u64>> {
        let terms = terms.to_vec();
        self.read(move |db| {
            let mut statement = db
                .prepare_cached("SELECT image_count FROM terms WHERE term = ?1")
                .map_err(db_error)?;
            let mut counts = HashMap::new();
            for term in terms {
                let count: Option<i64> = statement
                    .query_row([&term], |row| row.get(0))
                    .optional()
                    .map_err(db_error)?;
                counts.insert(term, count.unwrap_or(0).max(0) as u64);
            }
            Ok(counts)
        })
        .await
    }

    async fn status_counts(&self) -> PortResult<HashMap<ImageStatus, u64>> {
        self.read(|db| {
            let mut statement = db
                .prepare_cached("SELECT status, COUNT(*) FROM images GROUP BY status")
                .map_err(db_error)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .map_err(db_error)?;
            let mut counts = HashMap::new();
            for row in rows {
                let (status, count) = row.map_err(db_error)?;
                if let Some(status) = ImageStatus::parse(&status) {
                    counts.insert(status, count.max(0) as u64);
                }
            }
            Ok(counts)
        })
        .await
    }

    async fn list_terms(
        &self,
        kind: TermKind,
        prefix: Option<&str>,
        limit: usize,
    ) -> PortResult<Vec<TermCount>> {
        let prefix = prefix.map(str::to_owned);
        let limit = limit.clamp(1, 10_000) as i64;
        self.read(move |db| {
            let map = |row: &rusqlite::Row<'_>| {
                Ok(TermCount {
                    term: row.get(0)?,
                    kind: kind_of(&row.get::<_, String>(1)?),
                    name: row.get(2)?,
                    image_count: row.get::<_, i64>(3)?.max(0) as u64,
                })
            };
            let mut terms = Vec::new();
            match prefix {
                Some(prefix) => {
                    // A range on the (kind, name) index: every name starting
                    // with `prefix` sorts between it and prefix + U+10FFFF.
                    let upper = format!("{prefix}\u{10FFFF}");
                    let mut statement = db
                        .prepare_cached(
                            "SELECT term, kind, name, image_count FROM terms
                             WHERE kind = ?1 AND name >= ?2 AND name < ?3 AND image_count > 0
                             ORDER BY name LIMIT ?4",
                        )
                        .map_err(db_error)?;
                    for term in statement
                        .query_map(params![kind.as_str(), prefix, upper, limit], map)
                        .map_err(db_error)?
                    {
                        terms.push(term.map_err(db_error)?);
                    }
                }
                None => {
                    let mut statement = db
                        .prepare_cached(
                            "SELECT term, kind, name, image_count FROM terms
                             WHERE kind = ?1 AND image_count > 0
                             ORDER BY image_count DESC, term LIMIT ?2",
                        )
                        .map_err(db_error)?;
                    for term in statement
                        .query_map(params![kind.as_str(), limit], map)
                        .map_err(db_error)?
                    {
                        terms.push(term.map_err(db_error)?);
                    }
                }
            }
            Ok(terms)
        })
        .await
    }

    async fn ping(&self) -> PortResult<()> {
        ImageStore::ping(self).await
    }
}

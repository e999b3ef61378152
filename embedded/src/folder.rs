//! Turns a folder's changes into the S3 event notifications the ingest
//! service already understands: a scan at start-up reconciles what changed
//! while nothing was running, and a watcher reports later creates,
//! overwrites, renames and deletes. What the folder held when last seen is
//! kept in the queue database and updated in the same transaction that
//! enqueues the event, so a crash can neither lose nor repeat a change.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use imagetag_shared::{PortError, PortResult};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rusqlite::{OptionalExtension, params};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bucket::{FileFacts, LocalBucket, file_facts};
use crate::queue::QueueDb;

const STATE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS folder_files (
    key      TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    etag     TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Changes applied per transaction during a scan.
const SCAN_BATCH: usize = 500;
/// Quiet time before watched changes are reconciled, so a file being copied
/// is looked at once it settles rather than at every write. Changes whose
/// last event says the file is complete (closed after writing, renamed into
/// place, removed) do not wait for it.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Watchers can drop events (queue overflow, network file systems); a
/// periodic full scan catches whatever they missed.
const RESCAN_EVERY: Duration = Duration::from_secs(600);

/// S3 form-encodes keys: unreserved characters and `/` stay, space becomes
/// `+`, everything else is percent-encoded.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b' ');

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScanReport {
    pub created: usize,
    pub changed: usize,
    pub removed: usize,
}

impl ScanReport {
    pub fn total(&self) -> usize {
        self.created + self.changed + self.removed
    }
}

#[derive(Clone)]
pub struct FolderSource {
    bucket: LocalBucket,
    db: QueueDb,
    events_queue: String,
}

enum Change {
    Upsert {
        key: String,
        facts: FileFacts,
        new: bool,
    },
    Remove {
        key: String,
    },
}

impl FolderSource {
    pub async fn new(bucket: LocalBucket, db: QueueDb, events_queue: &str) -> PortResult<Self> {
        db.run(|db| {
            db.execute_batch(STATE_SCHEMA)
                .map_err(|err| PortError::Unavailable(err.to_string()))
        })
        .await?;
        Ok(Self {
            bucket,
            db,
            events_queue: events_queue.to_owned(),
        })
    }

    /// Reconciles the whole folder with what was last seen.
    pub async fn scan(&self) -> PortResult<ScanReport> {
        let root = self.bucket.root().to_owned();
        let bucket = self.bucket.clone();
        let on_disk = tokio::task::spawn_blocking(move || walk(&bucket, &root))
            .await
            .map_err(|err| PortError::Unavailable(err.to_string()))??;
        let known: HashMap<String, (i64, i64, String)> = self
            .db
            .run(|db| {
                let mut statement = db
                    .prepare("SELECT key, size, mtime_ns, etag FROM folder_files")
                    .map_err(sql)?;
                let rows = statement
                    .query_map([], |row| {
                        Ok((row.get(0)?, (row.get(1)?, row.get(2)?, row.get(3)?)))
                    })
                    .map_err(sql)?;
                rows.collect::<Result<_, _>>().map_err(sql)
            })
            .await?;
        let mut changes = Vec::new();
        for (key, facts) in &on_disk {
            match known.get(key) {
                None => changes.push(Change::Upsert {
                    key: key.clone(),
                    facts: facts.clone(),
                    new: true,
                }),
                Some(seen) if !same(seen, facts) => changes.push(Change::Upsert {
                    key: key.clone(),
                    facts: facts.clone(),
                    new: false,
                }),
                Some(_) => {}
            }
        }
        for key in known.keys() {
            if !on_disk.contains_key(key) {
                changes.push(Change::Remove { key: key.clone() });
            }
        }
        let mut report = ScanReport::default();
        for change in &changes {
            match change {
                Change::Upsert { new: true, .. } => report.created += 1,
                Change::Upsert { new: false, .. } => report.changed += 1,
                Change::Remove { .. } => report.removed += 1,
            }
        }
        let mut iter = changes.into_iter().peekable();
        while iter.peek().is_some() {
            let batch: Vec<Change> = iter.by_ref().take(SCAN_BATCH).collect();
            self.apply(batch).await?;
        }
        Ok(report)
    }

    /// Reconciles the given paths (files or folders, present or gone).
    pub async fn sync_paths(&self, paths: Vec<PathBuf>) -> PortResult<usize> {
        let bucket = self.bucket.clone();
        let observed = tokio::task::spawn_blocking(move || {
            let mut observed: HashMap<String, Option<FileFacts>> = HashMap::new();
            let mut prefixes = Vec::new();
            for path in paths {
                if path.is_dir() {
                    if let Some(key) = bucket.key_of(&path) {
                        prefixes.push(format!("{key}/"));
                    }
                    for (key, facts) in walk(&bucket, &path)? {
                        observed.insert(key, Some(facts));
                    }
                } else if let Some(key) = bucket.key_of(&path) {
                    // Gone may also mean a folder was renamed away.
                    if !path.exists() {
                        prefixes.push(format!("{key}/"));
                    }
                    observed.insert(key, file_facts(&path)?);
                }
            }
            Ok::<_, PortError>((observed, prefixes))
        })
        .await
        .map_err(|err| PortError::Unavailable(err.to_string()))??;
        let (mut observed, prefixes) = observed;
        // Keys we knew under a folder that changed and are not there now.
        if !prefixes.is_empty() {
            let known_under: Vec<String> = self
                .db
                .run(move |db| {
                    let mut keys = Vec::new();
                    let mut statement = db
                        .prepare("SELECT key FROM folder_files WHERE key >= ?1 AND key < ?2")
                        .map_err(sql)?;
                    for prefix in prefixes {
                        let upper = format!("{prefix}\u{10FFFF}");
                        for key in statement
                            .query_map(params![prefix, upper], |r| r.get(0))
                            .map_err(sql)?
                        {
                            keys.push(key.map_err(sql)?);
                        }
                    }
                    Ok(keys)
                })
                .await?;
            for key in known_under {
                let present = self
                    .bucket
                    .path_of(&key)
                    .ok()
                    .map(|p| p.is_file())
                    .unwrap_or(false);
                if !present {
                    observed.entry(key).or_insert(None);
                }
            }
        }
        let keys: Vec<(String, Option<FileFacts>)> = observed.into_iter().collect();
        let changes: Vec<Change> = self
            .db
            .run(move |db| {
                let mut changes = Vec::new();
                let mut statement = db
                    .prepare("SELECT size, mtime_ns, etag FROM folder_files WHERE key = ?1")
                    .map_err(sql)?;
                for (key, facts) in keys {
                    let seen: Option<(i64, i64, String)> = statement
                        .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                        .map_err(sql)?;
                    match (seen, facts) {
                        (None, Some(facts)) => changes.push(Change::Upsert {
                            key,
                            facts,
                            new: true,
                        }),
                        (Some(seen), Some(facts)) if !same(&seen, &facts) => {
                            changes.push(Change::Upsert {
                                key,
                                facts,
                                new: false,
                            })
                        }
                        (Some(_), None) => changes.push(Change::Remove { key }),
                        _ => {}
                    }
                }
                Ok(changes)
            })
            .await?;
        let count = changes.len();
        if count > 0 {
            self.apply(changes).await?;
        }
        Ok(count)
    }

    /// Records the changes and enqueues their events in one transaction.
    async fn apply(&self, changes: Vec<Change>) -> PortResult<()> {
        let bucket = self.bucket.name().to_owned();
        let queue = self.events_queue.clone();
        self.db
            .run(move |db| {
                let tx = db.transaction().map_err(sql)?;
                for change in changes {
                    let sequence: i64 = tx
                        .query_row(
                            "INSERT INTO counters (name, value) VALUES ('sequencer', 1)
                             ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
                            [],
                            |r| r.get(0),
                        )
                        .map_err(sql)?;
                    let event = match &change {
                        Change::Upsert { key, facts, .. } => {
                            tx.execute(
                                "INSERT INTO folder_files (key, size, mtime_ns, etag) VALUES (?1, ?2, ?3, ?4)
                                 ON CONFLICT (key) DO UPDATE SET size = ?2, mtime_ns = ?3, etag = ?4",
                                params![
                                    key,
                                    facts.meta.size as i64,
                                    facts.mtime_ns,
                                    facts.meta.etag.clone().unwrap_or_default()
                                ],
                            )
                            .map_err(sql)?;
                            s3_event("ObjectCreated:Put", &bucket, key, Some(facts), sequence)
                        }
                        Change::Remove { key } => {
                            tx.execute("DELETE FROM folder_files WHERE key = ?1", [key])
                                .map_err(sql)?;
                            s3_event("ObjectRemoved:Delete", &bucket, key, None, sequence)
                        }
                    };
                    QueueDb::send_in(&tx, &queue, &event, &HashMap::new())?;
                }
                tx.commit().map_err(sql)
            })
            .await?;
        self.db.wake(&self.events_queue);
        Ok(())
    }

    /// Watches the folder until `shutdown`, reconciling changed paths after
    /// they settle, plus a full scan now and then.
    pub async fn watch(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        use notify::{RecursiveMode, Watcher};
        let (tx, mut rx) = mpsc::unbounded_channel::<(PathBuf, bool)>();
        let mut watcher = notify::recommended_watcher(
            move |event: notify::Result<notify::Event>| match event {
                Ok(event) => {
                    // Reads (ours included: hashing, tagging) change nothing.
                    let Some(settled) = settles(&event.kind) else {
                        return;
                    };
                    for path in event.paths {
                        let _ = tx.send((path, settled));
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "folder watcher error; the next full scan catches up")
                }
            },
        )?;
        watcher.watch(self.bucket.root(), RecursiveMode::Recursive)?;
        let mut rescan =
            tokio::time::interval_at(tokio::time::Instant::now() + RESCAN_EVERY, RESCAN_EVERY);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = rescan.tick() => {
                    match self.scan().await {
                        Ok(report) if report.total() > 0 => tracing::info!(?report, "periodic scan found changes the watcher missed"),
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "periodic scan failed"),
                    }
                    continue;
                }
                path = rx.recv() => match path { Some(path) => path, None => break },
            };
            // Collect changes until every changed file is complete, or, for
            // one still being written, until the folder has been quiet for
            // DEBOUNCE.
            let mut paths = BTreeSet::new();
            let mut unsettled = BTreeSet::new();
            note(&self.bucket, &mut paths, &mut unsettled, first);
            loop {
                while let Ok(change) = rx.try_recv() {
                    note(&self.bucket, &mut paths, &mut unsettled, change);
                }
                if unsettled.is_empty() {
                    break;
                }
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(change)) => note(&self.bucket, &mut paths, &mut unsettled, change),
                    _ => break,
                }
            }
            // Our own temporary upload files and hidden paths are not images.
            let paths: Vec<PathBuf> = paths
                .into_iter()
                .filter(|p| self.bucket.key_of(p).is_some() || p == self.bucket.root())
                .collect();
            if paths.is_empty() {
                continue;
            }
            match self.sync_paths(paths).await {
                Ok(n) if n > 0 => tracing::info!(changes = n, "folder changed"),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "could not reconcile folder changes; the next scan retries")
                }
            }
        }
        Ok(())
    }
}

/// Adds a watched change to the batch; a key whose last event left it
/// incomplete keeps the batch waiting.
fn note(
    bucket: &LocalBucket,
    paths: &mut BTreeSet<PathBuf>,
    unsettled: &mut BTreeSet<PathBuf>,
    (path, settled): (PathBuf, bool),
) {
    if bucket.key_of(&path).is_some() {
        if settled {
            unsettled.remove(&path);
        } else {
            unsettled.insert(path.clone());
        }
    }
    paths.insert(path);
}

/// Whether an event leaves its file complete (closed after writing, renamed
/// into or out of place, removed: `Some(true)`) or may be followed by more
/// writes (`Some(false)`); `None` for accesses that change nothing (opening,
/// reading, closing after reading).
fn settles(kind: &notify::EventKind) -> Option<bool> {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Remove(_) => Some(true),
        EventKind::Access(_) => None,
        _ => Some(false),
    }
}

fn sql(err: rusqlite::Error) -> PortError {
    PortError::Unavailable(format!("folder state: {err}"))
}

fn same(seen: &(i64, i64, String), facts: &FileFacts) -> bool {
    seen.0 == facts.meta.size as i64
        && seen.1 == facts.mtime_ns
        && Some(seen.2.as_str()) == facts.meta.etag.as_deref()
}

/// Every regular file under `dir` that can be a key (hidden entries and
/// symlinked folders are skipped, so the data folder and loops are too).
fn walk(bucket: &LocalBucket, dir: &Path) -> PortResult<HashMap<String, FileFacts>> {
    let mut found = HashMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(PortError::Unavailable(format!("{}: {err}", dir.display()))),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file()
                && let Some(key) = bucket.key_of(&path)
                && let Some(facts) = file_facts(&path)?
            {
                found.insert(key, facts);
            }
        }
    }
    Ok(found)
}

/// An S3 event notification for one key, in the shape S3 delivers.
fn s3_event(
    name: &str,
    bucket: &str,
    key: &str,
    facts: Option<&FileFacts>,
    sequence: i64,
) -> String {
    let encoded = utf8_percent_encode(key, KEY_ENCODE)
        .to_string()
        .replace(' ', "+");
    let mut object = json!({
        "key": encoded,
        "sequencer": format!("{sequence:016X}"),
    });
    if let Some(facts) = facts {
        object["size"] = json!(facts.meta.size);
        object["eTag"] = json!(facts.meta.etag);
    }
    json!({
        "Records": [{
            "eventVersion": "2.1",
            "eventSource": "imagetag:folder",
            "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "eventName": name,
            "s3": { "s3SchemaVersion": "1.0", "bucket": { "name": bucket }, "object": object }
        }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagetag_shared::ports::Queue;

    async fn events(db: &QueueDb) -> Vec<serde_json::Value> {
        let q = db.queue("events", None, 100);
        let got = q
            .receive(10, Duration::ZERO, Duration::from_secs(60))
            .await
            .expect("receive");
        let mut all: Vec<serde_json::Value> = got
            .iter()
            .map(|m| serde_json::from_str(&m.body).expect("json"))
            .collect();
        let receipts: Vec<String> = got.into_iter().map(|m| m.receipt).collect();
        q.delete(&receipts).await.expect("delete");
        all.sort_by_key(|e| {
            e["Records"][0]["s3"]["object"]["sequencer"]
                .as_str()
                .map(str::to_owned)
        });
        all
    }

    fn summary(events: &[serde_json::Value]) -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| {
                let r = &e["Records"][0];
                (
                    r["eventName"].as_str().unwrap_or("").to_owned(),
                    r["s3"]["object"]["key"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn scans_report_new_changed_and_gone_files_once() {
        let photos = tempfile::tempdir().expect("dir");
        let data = tempfile::tempdir().expect("dir");
        let db = QueueDb::open(&data.path().join("q.db")).expect("db");
        let source = FolderSource::new(
            LocalBucket::new("local", photos.path()),
            db.clone(),
            "events",
        )
        .await
        .expect("source");
        std::fs::create_dir_all(photos.path().join("trip")).expect("mkdir");
        std::fs::write(photos.path().join("trip/cat 1+2.jpg"), b"a").expect("write");
        std::fs::write(photos.path().join("dog.png"), b"b").expect("write");
        std::fs::create_dir_all(photos.path().join(".hidden")).expect("mkdir");
        std::fs::write(photos.path().join(".hidden/x.png"), b"c").expect("write");

        let report = source.scan().await.expect("scan");
        assert_eq!(
            report,
            ScanReport {
                created: 2,
                changed: 0,
                removed: 0
            }
        );
        let first = events(&db).await;
        let mut keys = summary(&first);
        keys.sort();
        assert_eq!(
            keys,
            vec![
                ("ObjectCreated:Put".into(), "dog.png".into()),
                ("ObjectCreated:Put".into(), "trip/cat+1%2B2.jpg".into()),
            ]
        );
        assert_eq!(source.scan().await.expect("scan").total(), 0, "nothing new");

        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(photos.path().join("dog.png"), b"bb").expect("overwrite");
        std::fs::remove_file(photos.path().join("trip/cat 1+2.jpg")).expect("remove");
        let report = source.scan().await.expect("scan");
        assert_eq!(
            report,
            ScanReport {
                created: 0,
                changed: 1,
                removed: 1
            }
        );
        let second = summary(&events(&db).await);
        assert!(second.contains(&("ObjectCreated:Put".into(), "dog.png".into())));
        assert!(second.contains(&("ObjectRemoved:Delete".into(), "trip/cat+1%2B2.jpg".into())));
    }

    #[tokio::test]
    async fn renaming_a_folder_removes_old_keys_and_creates_new_ones() {
        let photos = tempfile::tempdir().expect("dir");
        let data = tempfile::tempdir().expect("dir");
        let db = QueueDb::open(&data.path().join("q.db")).expect("db");
        let source = FolderSource::new(
            LocalBucket::new("local", photos.path()),
            db.clone(),
            "events",
        )
        .await
        .expect("source");
        std::fs::create_dir_all(photos.path().join("old")).expect("mkdir");
        std::fs::write(photos.path().join("old/a.jpg"), b"a").expect("write");
        source.scan().await.expect("scan");
        events(&db).await;
        std::fs::rename(photos.path().join("old"), photos.path().join("new")).expect("rename");
        let n = source
            .sync_paths(vec![photos.path().join("old"), photos.path().join("new")])
            .await
            .expect("sync");
        assert_eq!(n, 2);
        let mut got = summary(&events(&db).await);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("ObjectCreated:Put".into(), "new/a.jpg".into()),
                ("ObjectRemoved:Delete".into(), "old/a.jpg".into()),
            ]
        );
    }
}

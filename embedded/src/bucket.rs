//! A local folder as the bucket: keys are paths relative to the folder,
//! with `/` separators.

use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use imagetag_shared::ports::{ObjectMeta, ObjectRemover, ObjectStore};
use imagetag_shared::{PortError, PortResult};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct LocalBucket {
    name: String,
    root: PathBuf,
}

/// What the folder says about one file, as S3 would report the object.
#[derive(Debug, Clone, PartialEq)]
pub struct FileFacts {
    pub meta: ObjectMeta,
    pub mtime_ns: i64,
}

impl LocalBucket {
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            root: root.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file for `key`, refusing keys that would leave the folder or name
    /// hidden files (`..`, absolute paths, empty or dot-led segments).
    pub fn path_of(&self, key: &str) -> PortResult<PathBuf> {
        if key.is_empty() || key.contains('\0') || key.contains('\\') || key.starts_with('/') {
            return Err(PortError::Invalid(format!("unusable key {key:?}")));
        }
        let mut path = self.root.clone();
        for segment in key.split('/') {
            if segment.is_empty() || segment.starts_with('.') {
                return Err(PortError::Invalid(format!("unusable key {key:?}")));
            }
            path.push(segment);
        }
        Ok(path)
    }

    /// The key of a file under the folder, if it may be one.
    pub fn key_of(&self, path: &Path) -> Option<String> {
        let relative = path.strip_prefix(&self.root).ok()?;
        let mut segments = Vec::new();
        for component in relative.components() {
            match component {
                Component::Normal(part) => {
                    let part = part.to_str()?;
                    if part.starts_with('.') {
                        return None;
                    }
                    segments.push(part);
                }
                _ => return None,
            }
        }
        (!segments.is_empty()).then(|| segments.join("/"))
    }

    fn check_bucket(&self, bucket: &str) -> PortResult<()> {
        if bucket == self.name {
            Ok(())
        } else {
            Err(PortError::NotFound(format!("no bucket {bucket}")))
        }
    }
}

/// Facts about a regular file, or `None` when there is none at `path`.
pub fn file_facts(path: &Path) -> PortResult<Option<FileFacts>> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(PortError::Unavailable(format!("{}: {err}", path.display()))),
    };
    if !metadata.is_file() {
        return Ok(None);
    }
    let mtime_ns = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0);
    // Size and modification time change whenever the content does, which is
    // what an ETag must capture; hashing the content would read every file
    // at every scan.
    let mut hasher = Sha256::new();
    hasher.update(metadata.len().to_le_bytes());
    hasher.update(mtime_ns.to_le_bytes());
    #[cfg(unix)]
    hasher.update(std::os::unix::fs::MetadataExt::ino(&metadata).to_le_bytes());
    let etag = hex::encode(&hasher.finalize()[..16]);
    Ok(Some(FileFacts {
        meta: ObjectMeta {
            size: metadata.len(),
            content_type: mime_guess::from_path(path).first_raw().map(str::to_owned),
            etag: Some(etag),
            version_id: None,
        },
        mtime_ns,
    }))
}

#[async_trait]
impl ObjectRemover for LocalBucket {
    async fn delete(&self, bucket: &str, key: &str) -> PortResult<()> {
        self.check_bucket(bucket)?;
        let path = self.path_of(key)?;
        // The folder watcher turns the removal into the deletion event.
        tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(PortError::unavailable(err)),
        })
        .await
        .map_err(|err| PortError::Unavailable(err.to_string()))?
    }
}

#[async_trait]
impl ObjectStore for LocalBucket {
    async fn head(&self, bucket: &str, key: &str) -> PortResult<Option<ObjectMeta>> {
        self.check_bucket(bucket)?;
        let path = self.path_of(key)?;
        tokio::task::spawn_blocking(move || file_facts(&path))
            .await
            .map_err(|err| PortError::Unavailable(err.to_string()))?
            .map(|facts| facts.map(|f| f.meta))
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        expected_etag: Option<&str>,
        max_bytes: u64,
    ) -> PortResult<Bytes> {
        self.check_bucket(bucket)?;
        let path = self.path_of(key)?;
        let expected = expected_etag.map(|e| e.trim_matches('"').to_owned());
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            let Some(facts) = file_facts(&path)? else {
                return Err(PortError::NotFound(key));
            };
            if let Some(expected) = expected
                && facts.meta.etag.as_deref() != Some(expected.as_str())
            {
                return Err(PortError::Conflict(format!(
                    "{key} changed since the event"
                )));
            }
            if facts.meta.size > max_bytes {
                return Err(PortError::Invalid(format!(
                    "object is {} bytes, over the {max_bytes}-byte limit",
                    facts.meta.size
                )));
            }
            let bytes = std::fs::read(&path).map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => PortError::NotFound(key.clone()),
                _ => PortError::Unavailable(format!("reading {key}: {err}")),
            })?;
            if bytes.len() as u64 > max_bytes {
                return Err(PortError::Invalid(format!(
                    "object is over the {max_bytes}-byte limit"
                )));
            }
            Ok(Bytes::from(bytes))
        })
        .await
        .map_err(|err| PortError::Unavailable(err.to_string()))?
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        _content_type: &str,
    ) -> PortResult<()> {
        self.check_bucket(bucket)?;
        let path = self.path_of(key)?;
        tokio::task::spawn_blocking(move || {
            let parent = path
                .parent()
                .ok_or_else(|| PortError::Invalid("key has no folder".into()))?;
            std::fs::create_dir_all(parent).map_err(PortError::unavailable)?;
            // Write beside the target and rename, so the watcher never sees
            // a half-written image under its final name.
            let temporary = parent.join(format!(".upload-{:016x}", rand::random::<u64>()));
            std::fs::write(&temporary, &body).map_err(PortError::unavailable)?;
            std::fs::rename(&temporary, &path).map_err(|err| {
                let _ = std::fs::remove_file(&temporary);
                PortError::unavailable(err)
            })
        })
        .await
        .map_err(|err| PortError::Unavailable(err.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_folder_or_name_hidden_files() {
        let bucket = LocalBucket::new("local", "/data/photos");
        assert_eq!(
            bucket.path_of("a/b c.jpg").expect("fine"),
            PathBuf::from("/data/photos/a/b c.jpg")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x.jpg",
            "a/../../x",
            "a//b",
            ".imagetag/db",
            "a\\b",
            "a/.hidden",
        ] {
            assert!(bucket.path_of(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            bucket.key_of(Path::new("/data/photos/a/ü.png")).as_deref(),
            Some("a/ü.png")
        );
        assert_eq!(bucket.key_of(Path::new("/data/photos/.cache/x.png")), None);
        assert_eq!(bucket.key_of(Path::new("/elsewhere/x.png")), None);
    }

    #[tokio::test]
    async fn etags_change_on_overwrite_and_stale_reads_conflict() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bucket = LocalBucket::new("local", dir.path());
        bucket
            .put("local", "a/x.png", Bytes::from_static(b"one"), "image/png")
            .await
            .expect("put");
        let first = bucket
            .head("local", "a/x.png")
            .await
            .expect("head")
            .expect("exists");
        assert_eq!(first.size, 3);
        assert_eq!(first.content_type.as_deref(), Some("image/png"));
        std::thread::sleep(std::time::Duration::from_millis(10));
        bucket
            .put("local", "a/x.png", Bytes::from_static(b"two!"), "image/png")
            .await
            .expect("put");
        let second = bucket
            .head("local", "a/x.png")
            .await
            .expect("head")
            .expect("exists");
        assert_ne!(first.etag, second.etag);
        assert!(matches!(
            bucket
                .get("local", "a/x.png", first.etag.as_deref(), 100)
                .await,
            Err(PortError::Conflict(_))
        ));
        assert_eq!(
            bucket
                .get("local", "a/x.png", second.etag.as_deref(), 100)
                .await
                .expect("get"),
            Bytes::from_static(b"two!")
        );
        assert!(matches!(
            bucket.get("local", "a/x.png", None, 2).await,
            Err(PortError::Invalid(_))
        ));
        assert!(matches!(
            bucket.get("local", "nope.png", None, 2).await,
            Err(PortError::NotFound(_))
        ));
        assert_eq!(bucket.head("local", "nope.png").await.expect("head"), None);
    }
}

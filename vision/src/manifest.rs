//! The model cache's manifest, written by `scripts/prepare-models`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

pub const FILE_NAME: &str = "manifest.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub files: Vec<Entry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    pub path: String,
    pub role: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub runtime: Option<String>,
    /// The runtime library's platform (`linux-x86_64`…), see `platform`.
    #[serde(default)]
    pub platform: Option<String>,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no model cache at {} (missing {}): run scripts/prepare-models{}",
                dir.display(),
                FILE_NAME,
                dir_hint(dir)
            )
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid manifest", path.display()))?;
        if manifest.format != FORMAT {
            bail!(
                "{} has format {}, this build reads format {FORMAT}: run scripts/prepare-models{}",
                path.display(),
                manifest.format,
                dir_hint(dir)
            );
        }
        Ok(manifest)
    }

    /// The one file with `role`, which must exist with its recorded size
    /// (a full checksum is prepare-models' job; this catches truncation).
    pub fn file(&self, dir: &Path, role: &str) -> Result<(PathBuf, &Entry)> {
        let entry = self
            .files
            .iter()
            .find(|e| e.role == role)
            .with_context(|| {
                format!(
                    "the model cache at {} has no {role} file: run scripts/prepare-models{}",
                    dir.display(),
                    dir_hint(dir)
                )
            })?;
        let path = dir.join(&entry.path);
        let size = std::fs::metadata(&path)
            .with_context(|| {
                format!(
                    "{} is missing: run scripts/prepare-models{}",
                    path.display(),
                    dir_hint(dir)
                )
            })?
            .len();
        if size != entry.size {
            bail!(
                "{} has {size} bytes, the manifest says {}: run scripts/prepare-models{}",
                path.display(),
                entry.size,
                dir_hint(dir)
            );
        }
        Ok((path, entry))
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.files.iter().any(|e| e.role == role)
    }
}

fn dir_hint(dir: &Path) -> String {
    if dir == crate::default_model_dir() {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    }
}

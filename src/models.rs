//! The built-in models for the `local` backend.

use std::path::Path;

use imagetag_shared::ports::TaggingBackend;

pub fn load_local_backend(
    _model_dir: Option<&Path>,
    _workers: Option<usize>,
) -> anyhow::Result<Box<dyn TaggingBackend>> {
    anyhow::bail!("the built-in models are not wired in yet; use --backend rekognition")
}

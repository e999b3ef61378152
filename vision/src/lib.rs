//! Built-in vision models for imagetag's `local` tagging backend.
//!
//! Pretrained models, prepared once by `scripts/prepare-models` into a model
//! cache, run offline with ONNX Runtime (loaded from the cache at run time,
//! so nothing is downloaded by the build or at run time). Output has
//! Rekognition's shape: labels with confidence 0–100, parents, aliases,
//! categories and object instances with boxes. See docs/models.md for sources, licenses and measurements.

pub mod faces;
pub mod hierarchy;
pub mod letterbox;
pub mod manifest;
pub mod moderation;
pub mod objects;
pub mod ocr;
pub mod platform;
pub mod preprocess;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use imagetag_shared::model::{Face, TagOutput, TextDetection};
use imagetag_shared::ports::{DecodedImage, TaggingBackend};
use imagetag_shared::{PortError, PortResult};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionOutputs};
use ort::value::TensorRef;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::hierarchy::Hierarchy;
use crate::manifest::Manifest;
use crate::preprocess::{CROP, Preprocessor};

/// The model cache `scripts/prepare-models` fills by default:
/// `$IMAGETAG_MODEL_DIR`, else `$XDG_CACHE_HOME/imagetag/models`, else
/// `~/.cache/imagetag/models`.
pub fn default_model_dir() -> PathBuf {
    let non_empty = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("IMAGETAG_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let cache = non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("imagetag").join("models")
}

/// The `local` backend: models loaded once per process, inference on a
/// bounded pool of blocking workers so the async runtime never blocks.
pub struct LocalBackend {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
    version: String,
}

struct Inner {
    /// One worker per permit. Each owns its ONNX Runtime sessions (running a
    /// session needs `&mut`) and its preprocessing buffers.
    workers: Mutex<Vec<Worker>>,
    /// Signalled when a worker returns. Async callers hold a permit, so they
    /// find one at once; `tag_blocking` callers may wait here.
    returned: Condvar,
    hierarchy: Hierarchy,
    object_classes: Vec<objects::ClassInfo>,
    face_anchors: Vec<(f32, f32)>,
    ocr_keys: Vec<String>,
}

struct Worker {
    classifier: Session,
    objects: Option<Session>,
    faces: Option<Session>,
    moderation: Option<Session>,
    ocr: Option<(Session, Session)>,
    preprocessor: Preprocessor,
    object_pre: objects::ObjectPreprocessor,
    face_pre: faces::FacePreprocessor,
    moderation_pre: moderation::ModerationPreprocessor,
    resizer: fast_image_resize::Resizer,
    input: Vec<f32>,
    object_input: Vec<f32>,
    face_input: Vec<f32>,
    moderation_input: Vec<f32>,
}

/// Paths of the optional models the cache has and that load.
#[derive(Default)]
struct Optional {
    objects: Option<PathBuf>,
    faces: Option<PathBuf>,
    moderation: Option<PathBuf>,
    ocr: Option<(PathBuf, PathBuf)>,
    ocr_keys: Vec<String>,
    versions: Vec<String>,
}

/// Which optional models to run. Text detection dominates the cost per
/// image (see docs/models.md), so deployments that need no text can turn
/// it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub objects: bool,
    pub faces: bool,
    pub moderation: bool,
    pub text: bool,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            objects: true,
            faces: true,
            moderation: true,
            text: true,
        }
    }
}

impl LocalBackend {
    /// Loads the models from `model_dir` (see [`default_model_dir`]) with
    /// `workers` concurrent inferences (at least one). Fails, naming
    /// `scripts/prepare-models`, when the cache lacks the classifier.
    pub fn load(model_dir: &Path, workers: usize) -> Result<LocalBackend> {
        Self::load_with(model_dir, workers, Features::default())
    }

    /// As [`LocalBackend::load`], running only the optional models
    /// `features` enables (the classifier always runs).
    pub fn load_with(model_dir: &Path, workers: usize, features: Features) -> Result<LocalBackend> {
        let workers = workers.max(1);
        let manifest = Manifest::load(model_dir)?;
        let (model_path, model_entry) = manifest.file(model_dir, "classifier")?;
        let (classes_path, classes_entry) = manifest.file(model_dir, "classes")?;
        let (runtime_path, runtime_entry) = manifest.file(model_dir, "runtime")?;

        let classes = std::fs::read_to_string(&classes_path)
            .with_context(|| format!("reading {}", classes_path.display()))?;
        let hierarchy = Hierarchy::new(hierarchy::TABLE, &hierarchy::read_class_wnids(&classes)?)?;
        let object_classes = objects::classes(objects::TABLE, &hierarchy)?;

        platform::check_runtime(runtime_entry, &runtime_path, &platform::current())?;
        let environment = environment(&runtime_path)?;
        let optional = Optional::find(&manifest, model_dir, &environment, features);
        let pool = (0..workers)
            .map(|_| {
                let open = |path: &Option<PathBuf>| -> Result<Option<Session>> {
                    path.as_deref()
                        .map(|p| session(&environment, p, &[]))
                        .transpose()
                };
                Ok(Worker {
                    classifier: session(&environment, &model_path, CLASSIFIER_IO)?,
                    objects: match &optional.objects {
                        Some(path) => Some(session(&environment, path, OBJECTS_IO)?),
                        None => None,
                    },
                    faces: open(&optional.faces)?,
                    moderation: open(&optional.moderation)?,
                    ocr: match &optional.ocr {
                        Some((det, rec)) => Some((
                            session(&environment, det, &[])?,
                            session(&environment, rec, &[])?,
                        )),
                        None => None,
                    },
                    preprocessor: Preprocessor::default(),
                    object_pre: objects::ObjectPreprocessor::default(),
                    face_pre: faces::FacePreprocessor::default(),
                    moderation_pre: moderation::ModerationPreprocessor::default(),
                    resizer: fast_image_resize::Resizer::new(),
                    input: vec![0f32; 3 * (CROP * CROP) as usize],
                    object_input: if optional.objects.is_some() {
                        vec![0f32; 3 * (objects::INPUT * objects::INPUT) as usize]
                    } else {
                        Vec::new()
                    },
                    face_input: vec![0f32; 3 * (faces::INPUT * faces::INPUT) as usize],
                    moderation_input: vec![
                        0f32;
                        3 * (moderation::INPUT * moderation::INPUT) as usize
                    ],
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let mut version: Vec<String> = [
            model_entry.model.clone(),
            classes_entry.model.clone(),
            Some(format!("labels-{}", table_digest())),
        ]
        .into_iter()
        .flatten()
        .chain(optional.versions.iter().cloned())
        .collect();
        version.extend(runtime_entry.runtime.clone());
        let version = version.join("+");
        tracing::info!(dir = %model_dir.display(), workers, %version, "local vision models loaded");
        Ok(LocalBackend {
            inner: Arc::new(Inner {
                workers: Mutex::new(pool),
                returned: Condvar::new(),
                hierarchy,
                object_classes,
                face_anchors: faces::anchors(),
                ocr_keys: optional.ocr_keys,
            }),
            permits: Arc::new(Semaphore::new(workers)),
            version,
        })
    }

    /// Tags pixels synchronously on the calling thread (for callers that
    /// are not on an async runtime, such as a command-line batch). Waits for
    /// a free worker; do not call it from async code.
    pub fn tag_blocking(&self, rgb: &image::RgbImage) -> Result<TagOutput> {
        Ok(self.inner.tag(rgb)?.0)
    }

    /// [`tag_blocking`](Self::tag_blocking), with the time each model took.
    pub fn tag_blocking_timed(&self, rgb: &image::RgbImage) -> Result<(TagOutput, ModelTimes)> {
        self.inner.tag(rgb)
    }
}

/// How long each model took on one image, in the order they ran; each
/// includes its own resize, inference and decoding of the outputs.
#[derive(Debug, Clone, Default)]
pub struct ModelTimes(pub Vec<(&'static str, Duration)>);

impl ModelTimes {
    /// Records `model` as having run since `since`; returns now, where the
    /// next model starts.
    fn lap(&mut self, model: &'static str, since: Instant) -> Instant {
        let now = Instant::now();
        self.0.push((model, now - since));
        now
    }
}

#[async_trait]
impl TaggingBackend for LocalBackend {
    fn name(&self) -> &str {
        "local"
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    async fn tag(&self, image: &DecodedImage) -> PortResult<TagOutput> {
        if image.rgb.width() == 0 || image.rgb.height() == 0 {
            return Err(PortError::invalid("empty image"));
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(PortError::unavailable)?;
        // The blocking task must own its pixels, and `tag` only borrows them:
        // one copy per image, taken only once a worker is free so waiting
        // requests hold no extra memory.
        let rgb = image.rgb.clone();
        let inner = self.inner.clone();
        let (output, times) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            inner.tag(&rgb)
        })
        .await
        // A model that fails (or panics) on an image fails on it again: the
        // error is permanent, so the message dead-letters after the bounded
        // retries instead of being retried as an outage.
        .map_err(|e| PortError::invalid(format!("vision worker failed: {e}")))?
        .map_err(|e| PortError::invalid(format!("{e:#}")))?;
        for (model, elapsed) in times.0 {
            imagetag_shared::metrics::observe_stage(&format!("model_{model}"), elapsed);
        }
        Ok(output)
    }
}

impl Inner {
    fn tag(&self, rgb: &image::RgbImage) -> Result<(TagOutput, ModelTimes)> {
        let mut lease = Lease {
            inner: self,
            worker: Some(self.take_worker()?),
        };
        match lease.worker.as_mut() {
            Some(worker) => worker.run(self, rgb),
            None => bail!("vision worker lost"),
        }
    }

    fn take_worker(&self) -> Result<Worker> {
        let poisoned = |_| anyhow!("vision worker pool poisoned");
        let mut pool = self.workers.lock().map_err(poisoned)?;
        loop {
            if let Some(worker) = pool.pop() {
                return Ok(worker);
            }
            pool = self.returned.wait(pool).map_err(poisoned)?;
        }
    }
}

/// Returns a worker to the pool when dropped, so a panic inside a model
/// (which releases the permit as it unwinds) cannot shrink the pool.
struct Lease<'a> {
    inner: &'a Inner,
    worker: Option<Worker>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let (Some(worker), Ok(mut pool)) = (self.worker.take(), self.inner.workers.lock()) {
            pool.push(worker);
            self.inner.returned.notify_one();
        }
    }
}

impl Worker {
    /// Every loaded model on one image, one after the other (the pool runs
    /// images in parallel).
    fn run(&mut self, shared: &Inner, rgb: &image::RgbImage) -> Result<(TagOutput, ModelTimes)> {
        let mut times = ModelTimes::default();
        let started = Instant::now();
        let probs = self.classify(rgb)?;
        let mut out = TagOutput {
            labels: shared.hierarchy.labels(&probs)?,
            ..TagOutput::default()
        };
        let mut lap = times.lap("classifier", started);
        if self.objects.is_some() {
            let found = self.detect_objects(rgb, &shared.object_classes)?;
            objects::merge(&mut out.labels, found, &shared.hierarchy);
            lap = times.lap("objects", lap);
        }
        if self.faces.is_some() {
            out.faces = self.faces(rgb, &shared.face_anchors)?;
            lap = times.lap("faces", lap);
        }
        if self.moderation.is_some() {
            out.moderation = moderation::labels(self.nsfw(rgb)?);
            lap = times.lap("moderation", lap);
        }
        if self.ocr.is_some() {
            out.text = self.read_text(rgb, &shared.ocr_keys)?;
            times.lap("text", lap);
        }
        Ok((out, times))
    }

    /// Class probabilities (softmax of the logits).
    fn classify(&mut self, rgb: &image::RgbImage) -> Result<Vec<f32>> {
        self.preprocessor.tensor_into(rgb, &mut self.input)?;
        let shape = [1usize, 3, CROP as usize, CROP as usize];
        let input = TensorRef::from_array_view((shape, &self.input[..]))?;
        let outputs = self.classifier.run(ort::inputs!["input" => input])?;
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
        Ok(softmax(logits))
    }

    fn detect_objects(
        &mut self,
        rgb: &image::RgbImage,
        classes: &[objects::ClassInfo],
    ) -> Result<Vec<imagetag_shared::model::Label>> {
        let Some(session) = self.objects.as_mut() else {
            return Ok(vec![]);
        };
        let letterbox = self.object_pre.tensor_into(rgb, &mut self.object_input)?;
        let side = objects::INPUT as usize;
        let input = TensorRef::from_array_view(([1usize, 3, side, side], &self.object_input[..]))?;
        let outputs = session.run(ort::inputs!["input" => input])?;
        let levels = objects::LEVELS
            .iter()
            .map(|&(stride, scores, distributions)| {
                Ok(objects::Level {
                    stride,
                    scores: f32_output(&outputs, scores)?,
                    distributions: f32_output(&outputs, distributions)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let detections = objects::suppress(objects::decode(&levels)?);
        Ok(objects::labels(&detections, letterbox, classes))
    }

    fn faces(&mut self, rgb: &image::RgbImage, anchors: &[(f32, f32)]) -> Result<Vec<Face>> {
        let Some(session) = self.faces.as_mut() else {
            return Ok(vec![]);
        };
        let letterbox = self.face_pre.tensor_into(rgb, &mut self.face_input)?;
        let side = faces::INPUT as usize;
        let input = TensorRef::from_array_view(([1usize, side, side, 3], &self.face_input[..]))?;
        let outputs = session.run(ort::inputs!["input:0" => input])?;
        let part = |name: &str| -> Result<Vec<f32>> {
            let value = outputs
                .get(name)
                .with_context(|| format!("face model lacks {name}"))?;
            Ok(value.try_extract_tensor::<f32>()?.1.to_vec())
        };
        let mut scores = part("Identity:0")?;
        scores.extend(part("Identity_1:0")?);
        let mut boxes = part("Identity_2:0")?;
        boxes.extend(part("Identity_3:0")?);
        if scores.len() != anchors.len() || boxes.len() != anchors.len() * 16 {
            bail!(
                "face model returned {} scores for {} anchors",
                scores.len(),
                anchors.len()
            );
        }
        Ok(faces::decode(&scores, &boxes, anchors, letterbox))
    }

    fn nsfw(&mut self, rgb: &image::RgbImage) -> Result<f32> {
        let Some(session) = self.moderation.as_mut() else {
            return Ok(0.0);
        };
        self.moderation_pre
            .tensor_into(rgb, &mut self.moderation_input)?;
        let side = moderation::INPUT as usize;
        let input =
            TensorRef::from_array_view(([1usize, side, side, 3], &self.moderation_input[..]))?;
        let outputs = session.run(ort::inputs!["input:0" => input])?;
        let (_, scores) = outputs["outputs"].try_extract_tensor::<f32>()?;
        match scores {
            [_, nsfw] => Ok(*nsfw),
            _ => bail!(
                "moderation model returned {} scores, expected 2",
                scores.len()
            ),
        }
    }

    fn read_text(&mut self, rgb: &image::RgbImage, keys: &[String]) -> Result<Vec<TextDetection>> {
        let Some((det, rec)) = self.ocr.as_mut() else {
            return Ok(vec![]);
        };
        let input = ocr::det_input(&mut self.resizer, rgb)?;
        let shape = [1usize, 3, input.height as usize, input.width as usize];
        let outputs =
            det.run(ort::inputs!["x" => TensorRef::from_array_view((shape, &input.tensor[..]))?])?;
        let (map_shape, map) = outputs[0].try_extract_tensor::<f32>()?;
        let (map_h, map_w) = match map_shape[..] {
            [_, _, h, w] => (h, w),
            _ => bail!("text detector returned shape {map_shape:?}"),
        };
        let lines = ocr::boxes(
            map,
            u32::try_from(map_w)?,
            u32::try_from(map_h)?,
            rgb.width(),
            rgb.height(),
        );
        let mut read = Vec::new();
        for line in lines {
            // A box too thin to read is the detector's noise, not an error.
            let Ok((tensor, width)) = ocr::rec_input(&mut self.resizer, rgb, &line) else {
                continue;
            };
            let shape = [1usize, 3, ocr::REC_HEIGHT as usize, width as usize];
            let outputs =
                rec.run(ort::inputs!["x" => TensorRef::from_array_view((shape, &tensor[..]))?])?;
            let (rec_shape, probs) = outputs[0].try_extract_tensor::<f32>()?;
            let classes = rec_shape.last().copied().unwrap_or(0);
            let (text, score) = ocr::ctc_decode(probs, usize::try_from(classes)?, keys);
            if !text.is_empty() && score >= ocr::MIN_TEXT_SCORE {
                read.push((line, text, score));
            }
        }
        Ok(ocr::reading_order(read)
            .into_iter()
            .map(|(line, text, score)| {
                ocr::detection(&line, text, score, rgb.width(), rgb.height())
            })
            .collect())
    }
}

impl Optional {
    /// Optional models the cache has: each one missing, or failing to load,
    /// is logged and skipped; the backend works without it.
    fn find(
        manifest: &Manifest,
        dir: &Path,
        environment: &Environment,
        features: Features,
    ) -> Self {
        let mut found = Optional::default();
        let enabled = |role: &str| match role {
            "objects" => features.objects,
            "faces" => features.faces,
            "moderation" => features.moderation,
            _ => features.text,
        };
        let probe = |role: &str, what: &str| -> Option<(PathBuf, Option<String>)> {
            if !enabled(role) {
                tracing::info!(role, "{what} turned off");
                return None;
            }
            if !manifest.has_role(role) {
                tracing::info!(role, "{what} model not in the model cache; {what} skipped");
                return None;
            }
            let checked = manifest.file(dir, role).and_then(|(path, entry)| {
                session(environment, &path, &[])?;
                Ok((path, entry.model.clone()))
            });
            match checked {
                Ok(found) => Some(found),
                Err(e) => {
                    tracing::warn!(role, error = %format!("{e:#}"), "{what} model unusable; {what} skipped");
                    None
                }
            }
        };
        if let Some((path, version)) = probe("objects", "object detection") {
            found.objects = Some(path);
            found.versions.extend(version);
        }
        if let Some((path, version)) = probe("faces", "face detection") {
            found.faces = Some(path);
            found.versions.extend(version);
        }
        if let Some((path, version)) = probe("moderation", "moderation") {
            found.moderation = Some(path);
            found.versions.extend(version);
        }
        let det = probe("ocr-det", "text detection");
        let rec = probe("ocr-rec", "text recognition");
        let keys = manifest
            .file(dir, "ocr-keys")
            .and_then(|(path, _)| Ok(std::fs::read_to_string(path)?));
        match (det, rec, keys) {
            (Some((det, v1)), Some((rec, v2)), Ok(keys)) => {
                found.ocr = Some((det, rec));
                found.ocr_keys = ocr::read_keys(&keys);
                found.versions.extend(v1);
                found.versions.extend(v2);
            }
            (_, _, Err(e)) => {
                tracing::info!(error = %format!("{e:#}"), "no OCR alphabet; text detection skipped")
            }
            _ => {}
        }
        found
    }
}

pub(crate) fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|v| v / sum).collect()
}

/// ONNX Runtime is loaded once per process (a second library cannot replace
/// the first), and all backends share its environment.
fn environment(library: &Path) -> Result<Environment> {
    static ENVIRONMENT: OnceLock<Mutex<Option<Environment>>> = OnceLock::new();
    let slot = ENVIRONMENT.get_or_init(|| Mutex::new(None));
    let mut slot = slot
        .lock()
        .map_err(|_| anyhow!("ONNX Runtime setup poisoned"))?;
    if let Some(environment) = slot.as_ref() {
        return Ok(environment.clone());
    }
    let environment = ort::init_from(library)
        .with_context(|| {
            format!(
                "loading ONNX Runtime from {} (run scripts/prepare-models)",
                library.display()
            )
        })?
        .with_name("imagetag")
        .with_telemetry(false)
        .build()
        .context("creating the ONNX Runtime environment")?;
    *slot = Some(environment.clone());
    Ok(environment)
}

const CLASSIFIER_IO: &[&str] = &["input", "logits"];
const OBJECTS_IO: &[&str] = &[
    "input",
    "Identity:0",
    "Identity_1:0",
    "Identity_2:0",
    "Identity_3:0",
    "Identity_4:0",
    "Identity_5:0",
];

/// A float output of a finished run, by name.
fn f32_output<'a>(outputs: &'a SessionOutputs<'_>, name: &str) -> Result<&'a [f32]> {
    let value = outputs
        .get(name)
        .with_context(|| format!("model output {name} missing"))?;
    Ok(value.try_extract_tensor::<f32>()?.1)
}

/// One session with one intra-op thread: parallelism comes from the worker
/// pool (one image per worker), which scales better on small machines than
/// splitting each small convolution across threads. `io` names inputs and
/// outputs the model must have.
fn session(environment: &Environment, model: &Path, io: &[&str]) -> Result<Session> {
    let configure = |e: ort::Error<_>| anyhow!("configuring ONNX Runtime: {e}");
    let built = Session::builder(environment)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(configure)?
        .with_intra_threads(1)
        .map_err(configure)?
        .with_inter_threads(1)
        .map_err(configure)?
        .commit_from_file(model)
        .with_context(|| format!("loading {}", model.display()))?;
    let names: Vec<&str> = built
        .inputs()
        .iter()
        .chain(built.outputs())
        .map(|o| o.name())
        .collect();
    if let Some(missing) = io.iter().find(|n| !names.contains(n)) {
        bail!(
            "{} has no {missing:?} (not the expected model): run scripts/prepare-models",
            model.display()
        );
    }
    Ok(built)
}

/// Short digest of the embedded label tables, part of the version: a change
/// of names or parents changes the stored tags.
fn table_digest() -> String {
    let mut digest = Sha256::new();
    digest.update(hierarchy::TABLE.as_bytes());
    digest.update(objects::TABLE.as_bytes());
    hex::encode(&digest.finalize()[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // exp(1)/(exp(1)+exp(2)+exp(3)) = 0.09003057317038046
        assert!((p[0] - 0.090_030_57).abs() < 1e-6);
        assert!(p[0] < p[1] && p[1] < p[2]);
    }

    #[test]
    fn missing_cache_names_prepare_models() {
        let dir =
            std::env::temp_dir().join(format!("imagetag-vision-empty-{}", std::process::id()));
        let err = match LocalBackend::load(&dir, 1) {
            Ok(_) => panic!("loaded from an empty directory"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("scripts/prepare-models"), "{err}");
    }
}

//! The photo sets the benchmarks tag, made at bench time from the sample
//! photos `scripts/prepare-models` unpacks (scikit-image's, from the pinned
//! wheel) and never committed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

/// The photos (not the rendered text sample) in the model cache.
const PHOTOS: &[&str] = &[
    "chelsea.png",
    "coffee.png",
    "astronaut.png",
    "motorcycle_left.png",
    "rocket.jpg",
];
/// A scanned page: text, so the OCR path does real work.
const DOCUMENT: &str = "page.png";

#[derive(Debug, Clone)]
pub struct Photo {
    pub path: PathBuf,
    /// `original`, `3 MP`, `12 MP`.
    pub size_class: &'static str,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

fn samples(model_dir: &Path) -> PathBuf {
    model_dir.join("samples")
}

fn load(path: &Path) -> anyhow::Result<RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("reading {} (run scripts/prepare-models)", path.display()))?
        .into_rgb8())
}

/// `image` scaled (keeping its aspect) to about `megapixels`.
fn upscaled(image: &RgbImage, megapixels: f64) -> RgbImage {
    let (w, h) = image.dimensions();
    let scale = (megapixels * 1e6 / (f64::from(w) * f64::from(h))).sqrt();
    let (nw, nh) = (
        (f64::from(w) * scale).round() as u32,
        (f64::from(h) * scale).round() as u32,
    );
    image::imageops::resize(image, nw, nh, FilterType::Triangle)
}

fn save_jpeg(image: &RgbImage, path: &Path, quality: u8) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut writer, quality)
        .encode_image(&DynamicImage::ImageRgb8(image.clone()))
        .with_context(|| format!("encoding {}", path.display()))
}

fn describe(path: PathBuf, size_class: &'static str) -> anyhow::Result<Photo> {
    let (width, height) =
        image::image_dimensions(&path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = std::fs::metadata(&path)?.len();
    Ok(Photo {
        path,
        size_class,
        width,
        height,
        bytes,
    })
}

/// The mixed set for the tagging benchmark, in `dir`: the five photos and
/// the scanned page as shipped (PNG and JPEG, 0.1–0.3 MP), and each photo
/// again as a 3 MP and a 12 MP JPEG (quality 90), as phones and cameras
/// produce them. Generated files are reused when present.
pub fn tagging_set(model_dir: &Path, dir: &Path) -> anyhow::Result<Vec<Photo>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut set = Vec::new();
    for name in PHOTOS.iter().chain([&DOCUMENT]) {
        let target = dir.join(name);
        if !target.exists() {
            std::fs::copy(samples(model_dir).join(name), &target)
                .with_context(|| format!("copying sample {name} (run scripts/prepare-models)"))?;
        }
        set.push(describe(target, "original")?);
    }
    for (megapixels, class) in [(3.0, "3 MP"), (12.0, "12 MP")] {
        for name in PHOTOS {
            let stem = name.split('.').next().unwrap_or(name);
            let target = dir.join(format!("{stem}-{}mp.jpg", megapixels as u32));
            if !target.exists() {
                let source = load(&samples(model_dir).join(name))?;
                save_jpeg(&upscaled(&source, megapixels), &target, 90)?;
            }
            set.push(describe(target, class)?);
        }
    }
    Ok(set)
}

/// `count` distinct small photos (640×480 JPEGs, quality 85) for the
/// backfill and latency runs: windows of varying position and zoom cut
/// from the sample photos, some mirrored, so no two files are the same.
pub fn small_photos(model_dir: &Path, dir: &Path, count: usize) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let sources = PHOTOS
        .iter()
        .map(|name| load(&samples(model_dir).join(name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if sources.is_empty() {
        bail!("no sample photos");
    }
    let mut paths = Vec::with_capacity(count);
    for i in 0..count {
        let path = dir.join(format!("photo-{i:06}.jpg"));
        if !path.exists() {
            let source = &sources[i % sources.len()];
            let (w, h) = source.dimensions();
            // Deterministic variety: zoom 60–100 %, position across the frame.
            let step = (i / sources.len()) as u32;
            let zoom = 60 + (step * 7) % 41;
            let (cw, ch) = ((w * zoom / 100).max(16), (h * zoom / 100).max(16));
            let x = if w > cw { (step * 13) % (w - cw) } else { 0 };
            let y = if h > ch { (step * 29) % (h - ch) } else { 0 };
            let crop = image::imageops::crop_imm(source, x, y, cw, ch).to_image();
            let mut small = image::imageops::resize(&crop, 640, 480, FilterType::Triangle);
            if step % 2 == 1 {
                image::imageops::flip_horizontal_in_place(&mut small);
            }
            save_jpeg(&small, &path, 85)?;
        }
        paths.push(path);
    }
    Ok(paths)
}

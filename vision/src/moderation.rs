//! Moderation with Yahoo's open_nsfw (one "not safe for work" probability).

use anyhow::{Result, bail};
use fast_image_resize as fr;
use image::RgbImage;
use imagetag_shared::model::ModerationLabel;

use crate::preprocess::{CropBox, resize_region};

pub const INPUT: u32 = 224;
/// open_nsfw's reference transform squashes the image to 256×256 (aspect
/// ignored) and crops the central 224×224.
const RESIZE: f64 = 256.0;
/// Caffe-style per-channel means, in the model's BGR order.
const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];
/// Yahoo's guidance: below 0.2 is safe, above 0.8 very likely NSFW; the
/// band between is reported as the milder label.
pub const EXPLICIT: f32 = 0.8;
pub const SUGGESTIVE: f32 = 0.5;

/// Source region that squash-to-256 then centre-crop-224 keeps.
pub fn region(width: u32, height: u32) -> CropBox {
    let margin = (RESIZE - f64::from(INPUT)) / 2.0 / RESIZE;
    let keep = f64::from(INPUT) / RESIZE;
    CropBox {
        left: margin * f64::from(width),
        top: margin * f64::from(height),
        width: keep * f64::from(width),
        height: keep * f64::from(height),
    }
}

pub struct ModerationPreprocessor {
    resizer: fr::Resizer,
    crop: fr::images::Image<'static>,
}

impl Default for ModerationPreprocessor {
    fn default() -> Self {
        Self {
            resizer: fr::Resizer::new(),
            crop: fr::images::Image::new(INPUT, INPUT, fr::PixelType::U8x3),
        }
    }
}

impl ModerationPreprocessor {
    /// NHWC, BGR, 0–255 minus the means. The reference pipeline also
    /// round-trips the crop through JPEG; skipping that moves scores by
    /// about a percent, which the thresholds tolerate.
    pub fn tensor_into(&mut self, image: &RgbImage, out: &mut [f32]) -> Result<()> {
        let side = INPUT as usize;
        if out.len() != side * side * 3 {
            bail!("moderation tensor buffer has the wrong size");
        }
        let (width, height) = image.dimensions();
        if width == 0 || height == 0 {
            bail!("empty image");
        }
        resize_region(
            &mut self.resizer,
            image,
            region(width, height),
            &mut self.crop,
        )?;
        for (dst, px) in out
            .chunks_exact_mut(3)
            .zip(self.crop.buffer().chunks_exact(3))
        {
            dst[0] = f32::from(px[2]) - MEAN_BGR[0];
            dst[1] = f32::from(px[1]) - MEAN_BGR[1];
            dst[2] = f32::from(px[0]) - MEAN_BGR[2];
        }
        Ok(())
    }
}

/// Rekognition-style labels for an NSFW probability (none when safe).
pub fn labels(nsfw: f32) -> Vec<ModerationLabel> {
    let name = if nsfw >= EXPLICIT {
        "Explicit Nudity"
    } else if nsfw >= SUGGESTIVE {
        "Suggestive"
    } else {
        return vec![];
    };
    vec![ModerationLabel {
        name: name.to_owned(),
        confidence: (nsfw * 100.0).clamp(0.0, 100.0),
        parent: None,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    // 512×256: squash to 256² then crop 16..240 → 16/256 = 6.25 % margins.
    #[test]
    fn region_is_the_centre_of_the_squashed_image() {
        let r = region(512, 256);
        assert_eq!(
            r,
            CropBox {
                left: 32.0,
                top: 16.0,
                width: 448.0,
                height: 224.0
            }
        );
    }

    #[test]
    fn tensor_is_bgr_minus_means() {
        let image = RgbImage::from_pixel(300, 300, image::Rgb([200, 100, 50]));
        let mut out = vec![0f32; 224 * 224 * 3];
        ModerationPreprocessor::default()
            .tensor_into(&image, &mut out)
            .unwrap();
        // B 50-104, G 100-117, R 200-123
        assert_eq!(&out[..3], &[-54.0, -17.0, 77.0]);
        assert_eq!(&out[out.len() - 3..], &[-54.0, -17.0, 77.0]);
    }

    #[test]
    fn thresholds_map_to_labels() {
        assert!(labels(0.1).is_empty());
        assert_eq!(labels(0.6)[0].name, "Suggestive");
        let explicit = labels(0.9);
        assert_eq!(explicit[0].name, "Explicit Nudity");
        assert!((explicit[0].confidence - 90.0).abs() < 1e-4);
    }
}

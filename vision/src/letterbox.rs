//! Fitting an image into a square model input without distorting it: scaled
//! so its longer side fills the square, centred, the rest padded. Detectors
//! (faces, objects) see shapes as they are, and their boxes map back exactly.

use anyhow::{Result, bail};
use fast_image_resize as fr;
use image::RgbImage;
use imagetag_shared::model::BoundingBox;

use crate::preprocess::{CropBox, resize_region};

/// Where the scaled image sits in the `side`×`side` input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub side: u32,
    pub width: u32,
    pub height: u32,
    pub pad_x: u32,
    pub pad_y: u32,
}

impl Letterbox {
    pub fn new(width: u32, height: u32, side: u32) -> Result<Self> {
        if width == 0 || height == 0 || side == 0 {
            bail!("empty image");
        }
        let scale = f64::from(side) / f64::from(width.max(height));
        let fit = |s: u32| ((f64::from(s) * scale).round() as u32).clamp(1, side);
        let (w, h) = (fit(width), fit(height));
        Ok(Self {
            side,
            width: w,
            height: h,
            pad_x: (side - w) / 2,
            pad_y: (side - h) / 2,
        })
    }

    /// A box in input pixels (corners) → image-relative, clamped to the image.
    pub fn to_image(self, x0: f32, y0: f32, x1: f32, y1: f32) -> BoundingBox {
        let x = |v: f32| ((v - self.pad_x as f32) / self.width as f32).clamp(0.0, 1.0);
        let y = |v: f32| ((v - self.pad_y as f32) / self.height as f32).clamp(0.0, 1.0);
        let (left, top, right, bottom) = (x(x0), y(y0), x(x1), y(y1));
        BoundingBox {
            left,
            top,
            width: (right - left).max(0.0),
            height: (bottom - top).max(0.0),
        }
    }
}

/// Resizes whole images into a letterbox's scaled area; keeps its buffers
/// between images.
pub struct Fitter {
    resizer: fr::Resizer,
    scaled: fr::images::Image<'static>,
}

impl Default for Fitter {
    fn default() -> Self {
        Self {
            resizer: fr::Resizer::new(),
            scaled: fr::images::Image::new(1, 1, fr::PixelType::U8x3),
        }
    }
}

impl Fitter {
    /// The image scaled to `lb.width`×`lb.height` (packed RGB bytes), with
    /// the same antialiased bilinear filter as the classifier.
    pub fn scale(&mut self, image: &RgbImage, lb: Letterbox) -> Result<&[u8]> {
        if self.scaled.width() != lb.width || self.scaled.height() != lb.height {
            self.scaled = fr::images::Image::new(lb.width, lb.height, fr::PixelType::U8x3);
        }
        let all = CropBox {
            left: 0.0,
            top: 0.0,
            width: f64::from(image.width()),
            height: f64::from(image.height()),
        };
        resize_region(&mut self.resizer, image, all, &mut self.scaled)?;
        Ok(self.scaled.buffer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 400×200 into 128: scale 0.32 → 128×64, 32 rows of padding above.
    #[test]
    fn centres_the_scaled_image() {
        let lb = Letterbox::new(400, 200, 128).unwrap();
        assert_eq!(
            lb,
            Letterbox {
                side: 128,
                width: 128,
                height: 64,
                pad_x: 0,
                pad_y: 32
            }
        );
        // The middle half of the input's height is the whole image height.
        let b = lb.to_image(32.0, 32.0, 96.0, 96.0);
        assert!((b.left - 0.25).abs() < 1e-6 && (b.width - 0.5).abs() < 1e-6);
        assert!(b.top.abs() < 1e-6 && (b.height - 1.0).abs() < 1e-6);
    }

    // 300×451 into 416: scale 416/451 → 276.7 → 277 wide, pad_x (416-277)/2 = 69.
    // Input x 69 + 277/2 = 207.5 is the image's centre column.
    #[test]
    fn portrait_pads_the_sides_and_maps_back() {
        let lb = Letterbox::new(300, 451, 416).unwrap();
        assert_eq!((lb.width, lb.height, lb.pad_x, lb.pad_y), (277, 416, 69, 0));
        let b = lb.to_image(207.5, 104.0, 346.0, 500.0);
        assert!((b.left - 0.5).abs() < 1e-6, "{b:?}");
        assert!((b.top - 0.25).abs() < 1e-6, "{b:?}");
        // Clamped at the image's right and bottom edges.
        assert!((b.left + b.width - 1.0).abs() < 1e-6 && (b.top + b.height - 1.0).abs() < 1e-6);
    }

    #[test]
    fn refuses_empty_images() {
        assert!(Letterbox::new(0, 5, 416).is_err());
    }
}

//! Image → classifier input: torchvision's ImageNet evaluation transform
//! (`Resize(256)`, `CenterCrop(224)`, `ToTensor`, `Normalize`), computed in
//! one SIMD resize of just the source region the crop keeps.

use anyhow::{Context, Result, bail};
use fast_image_resize as fr;
use image::RgbImage;

/// Side of the square the network sees.
pub const CROP: u32 = 224;
/// Shorter side after the first resize; the crop takes the centre of it.
pub const RESIZE: u32 = 256;
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Where the centre crop lies in source pixels, as fast_image_resize takes
/// it: resizing this box to CROP×CROP samples exactly what resizing the whole
/// image to RESIZE and then cropping would.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// torchvision's geometry: the shorter side becomes RESIZE and the longer
/// one `floor(RESIZE * long / short)`; the crop offset is
/// `round((resized - CROP) / 2)` with Python's round-half-to-even. The x and
/// y scales therefore differ slightly, as they do in torchvision.
pub fn crop_box(width: u32, height: u32) -> Result<CropBox> {
    if width == 0 || height == 0 {
        bail!("empty image ({width}x{height})");
    }
    let (w, h) = (u64::from(width), u64::from(height));
    let short = u64::from(RESIZE);
    let (rw, rh) = if w <= h {
        (short, short * h / w)
    } else {
        (short * w / h, short)
    };
    let offset = |resized: u64| ((resized - u64::from(CROP)) as f64 / 2.0).round_ties_even();
    let sx = rw as f64 / w as f64;
    let sy = rh as f64 / h as f64;
    Ok(CropBox {
        left: offset(rw) / sx,
        top: offset(rh) / sy,
        width: f64::from(CROP) / sx,
        height: f64::from(CROP) / sy,
    })
}

/// Per-channel lookup of `(v / 255 - mean) / std` for every byte value:
/// normalising is then one load per value instead of a divide.
pub struct Normalizer {
    lut: [[f32; 256]; 3],
}

impl Default for Normalizer {
    fn default() -> Self {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
        Self { lut }
    }
}

impl Normalizer {
    pub fn value(&self, channel: usize, byte: u8) -> f32 {
        self.lut[channel][usize::from(byte)]
    }
}

/// Resizes `region` of `image` (source pixels, fractional allowed) into
/// `dst`, with the same antialiased bilinear filter as the classifier.
pub fn resize_region(
    resizer: &mut fr::Resizer,
    image: &RgbImage,
    region: CropBox,
    dst: &mut fr::images::Image<'static>,
) -> Result<()> {
    let (width, height) = image.dimensions();
    let src = fr::images::ImageRef::new(width, height, image.as_raw(), fr::PixelType::U8x3)
        .context("image buffer does not match its size")?;
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(region.left, region.top, region.width, region.height);
    resizer
        .resize(&src, dst, &options)
        .context("resizing the image")
}

/// Reusable state of one worker (the resizer keeps its buffers).
pub struct Preprocessor {
    resizer: fr::Resizer,
    normalizer: Normalizer,
    crop: fr::images::Image<'static>,
}

impl Default for Preprocessor {
    fn default() -> Self {
        Self {
            resizer: fr::Resizer::new(),
            normalizer: Normalizer::default(),
            crop: fr::images::Image::new(CROP, CROP, fr::PixelType::U8x3),
        }
    }
}

impl Preprocessor {
    /// The 224×224 RGB centre crop, resized with a bilinear convolution
    /// (antialiased, like PIL's and torchvision's bilinear resize).
    pub fn crop(&mut self, image: &RgbImage) -> Result<&[u8]> {
        let (width, height) = image.dimensions();
        let region = crop_box(width, height)?;
        resize_region(&mut self.resizer, image, region, &mut self.crop)?;
        Ok(self.crop.buffer())
    }

    /// Writes the normalised NCHW tensor (1×3×224×224, RGB planes) into
    /// `out`, which must hold 3·224·224 values.
    pub fn tensor_into(&mut self, image: &RgbImage, out: &mut [f32]) -> Result<()> {
        let plane = (CROP * CROP) as usize;
        if out.len() != 3 * plane {
            bail!(
                "tensor buffer holds {} values, expected {}",
                out.len(),
                3 * plane
            );
        }
        let (width, height) = image.dimensions();
        resize_region(
            &mut self.resizer,
            image,
            crop_box(width, height)?,
            &mut self.crop,
        )?;
        let (pixels, normalizer) = (self.crop.buffer(), &self.normalizer);
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in pixels.chunks_exact(3).enumerate() {
            r[i] = normalizer.value(0, px[0]);
            g[i] = normalizer.value(1, px[1]);
            b[i] = normalizer.value(2, px[2]);
        }
        Ok(())
    }

    pub fn tensor(&mut self, image: &RgbImage) -> Result<Vec<f32>> {
        let mut out = vec![0f32; 3 * (CROP * CROP) as usize];
        self.tensor_into(image, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLANE: usize = (CROP * CROP) as usize;

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
    }

    // Reference values from torchvision's rules, computed by hand in Python:
    //   w, h = 640, 480 -> resized (int(256*640/480), 256) = (341, 256)
    //   left = round((341-224)/2) = round(58.5) = 58 (half to even), top = 16
    //   box = (58*640/341, 16*480/256, 224*640/341, 224*480/256)
    //       = (108.85630498533724, 30.0, 420.4105571847507, 420.0)
    #[test]
    fn crop_box_landscape_matches_torchvision() {
        let b = crop_box(640, 480).unwrap();
        assert_close(b.left, 108.856_304_985_337_24);
        assert_close(b.top, 30.0);
        assert_close(b.width, 420.410_557_184_750_7);
        assert_close(b.height, 420.0);
    }

    //   w, h = 300, 451 -> resized (256, int(256*451/300)) = (256, 384)
    //   left = 16, top = round(80.0) = 80
    //   box = (16*300/256, 80*451/384, 224*300/256, 224*451/384)
    //       = (18.75, 93.95833333333333, 262.5, 263.0833333333333)
    #[test]
    fn crop_box_portrait_matches_torchvision() {
        let b = crop_box(300, 451).unwrap();
        assert_close(b.left, 18.75);
        assert_close(b.top, 93.958_333_333_333_33);
        assert_close(b.width, 262.5);
        assert_close(b.height, 263.083_333_333_333_3);
    }

    // An image already 256 on its shorter side is cropped, not scaled.
    #[test]
    fn crop_box_of_256_square_is_the_plain_centre() {
        let b = crop_box(256, 256).unwrap();
        assert_eq!(
            b,
            CropBox {
                left: 16.0,
                top: 16.0,
                width: 224.0,
                height: 224.0
            }
        );
    }

    #[test]
    fn crop_box_refuses_empty_images() {
        assert!(crop_box(0, 10).is_err());
    }

    // (v/255 - mean)/std, computed with numpy in float64:
    //   R 255: (1 - 0.485)/0.229            =  2.2489082969432315
    //   G 0:   (0 - 0.456)/0.224            = -2.0357142857142856
    //   B 128: (128/255 - 0.406)/0.225      =  0.42649237472766865
    //   R 0:   -0.485/0.229                 = -2.1179039301310043
    #[test]
    fn normalisation_matches_imagenet_mean_and_std() {
        let n = Normalizer::default();
        let close = |a: f32, b: f32| assert!((a - b).abs() < 1e-5, "{a} != {b}");
        close(n.value(0, 255), 2.248_908_3);
        close(n.value(1, 0), -2.035_714_3);
        close(n.value(2, 128), 0.426_492_37);
        close(n.value(0, 0), -2.117_904);
    }

    #[test]
    fn uniform_image_gives_uniform_planes_in_rgb_order() {
        let image = RgbImage::from_pixel(300, 200, image::Rgb([255, 0, 128]));
        let t = Preprocessor::default().tensor(&image).unwrap();
        assert_eq!(t.len(), 3 * PLANE);
        let n = Normalizer::default();
        for (c, byte) in [255u8, 0, 128].into_iter().enumerate() {
            let plane = &t[c * PLANE..(c + 1) * PLANE];
            assert!(plane.iter().all(|v| *v == n.value(c, byte)), "plane {c}");
        }
    }

    // Left half red, right half blue, 256×256: no scaling, crop x 16..240, so
    // crop columns 0..112 are red and 112..224 blue. Row-major planes: the
    // value at (y, x) is at y*224 + x.
    #[test]
    fn layout_is_nchw_with_x_fastest() {
        let image = RgbImage::from_fn(256, 256, |x, _| {
            if x < 128 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let t = Preprocessor::default().tensor(&image).unwrap();
        let n = Normalizer::default();
        let at = |c: usize, y: usize, x: usize| t[c * PLANE + y * 224 + x];
        for y in [0, 100, 223] {
            assert_eq!(at(0, y, 0), n.value(0, 255));
            assert_eq!(at(2, y, 0), n.value(2, 0));
            assert_eq!(at(0, y, 111), n.value(0, 255));
            assert_eq!(at(0, y, 112), n.value(0, 0));
            assert_eq!(at(2, y, 223), n.value(2, 255));
        }
    }

    // Top half green, bottom half black, 256 wide and 512 tall: resized to
    // 256×512 (no scaling), top = round((512-224)/2) = 144, so crop rows
    // 0..112 come from source rows 144..256 (green) and the rest are black.
    #[test]
    fn rows_come_from_the_vertical_centre() {
        let image = RgbImage::from_fn(256, 512, |_, y| {
            if y < 256 {
                image::Rgb([0, 255, 0])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        let t = Preprocessor::default().tensor(&image).unwrap();
        let n = Normalizer::default();
        assert_eq!(t[PLANE + 111 * 224 + 5], n.value(1, 255));
        assert_eq!(t[PLANE + 112 * 224 + 5], n.value(1, 0));
    }
}

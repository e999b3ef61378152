//! The TF.js → ONNX converter (scripts/models/tfjs_to_onnx.py) against a
//! numpy implementation of TensorFlow's semantics, on a small graph with
//! every op NanoDet uses (scripts/models/test_tfjs_to_onnx.py). It runs in
//! the conversion venv (pinned numpy and onnx) that
//! `scripts/prepare-models --venv-only` makes sure of.

use std::path::Path;
use std::process::Command;

#[test]
fn converter_matches_tensorflow_semantics() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The venv with the pinned numpy and onnx; cheap once it exists.
    let venv = Command::new("bash")
        .arg(repo.join("scripts/prepare-models"))
        .arg("--venv-only")
        .output()
        .expect("running scripts/prepare-models --venv-only");
    assert!(
        venv.status.success(),
        "scripts/prepare-models --venv-only failed: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let python = String::from_utf8_lossy(&venv.stdout).trim().to_owned();
    assert!(Path::new(&python).exists(), "no Python at {python:?}");
    let out = Command::new(&python)
        .current_dir(&repo)
        .args(["-B", "-m", "unittest", "discover", "-v"])
        .args(["-s", "scripts/models", "-p", "test_tfjs_to_onnx.py"])
        .output()
        .expect("running the converter's tests");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    // unittest prints "Ran N tests"; make sure they ran rather than being
    // discovered as none.
    assert!(report.contains("Ran 5 tests"), "{report}");
}

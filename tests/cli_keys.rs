//! `imagetag keys create`: the key is printed once and only its hash is
//! stored, in the format the query service reads.

mod support;

use std::process::Command;

use imagetag_query::auth::{ApiKeys, Scope};
use support::services::binary;

fn create(file: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(binary("imagetag"))
        .args(["keys", "create"])
        .args(args)
        .arg("--file")
        .arg(file)
        .env_remove("IMAGETAG_API_KEYS_FILE")
        .output()
        .expect("run imagetag")
}

#[test]
fn keys_are_printed_once_and_stored_hashed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys");
    let out = create(&file, &["ci"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(key.starts_with("itk_") && key.len() > 40, "{key}");
    let viewer = create(&file, &["viewer", "--read-only"]);
    assert!(viewer.status.success());
    let viewer_key = String::from_utf8(viewer.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();

    let stored = std::fs::read_to_string(&file).expect("key file");
    assert!(
        !stored.contains(&key) && !stored.contains(&viewer_key),
        "{stored}"
    );
    let keys = ApiKeys::load(&file).expect("the service can read it");
    assert_eq!(keys.verify(&key), Some(("ci", Scope::Write)));
    assert_eq!(keys.verify(&viewer_key), Some(("viewer", Scope::Read)));

    let again = create(&file, &["ci"]);
    assert!(!again.status.success(), "a second key named ci is refused");
    assert!(again.stdout.is_empty());
    let bad = create(&file, &["no spaces allowed"]);
    assert!(!bad.status.success());
    assert_eq!(ApiKeys::load(&file).expect("unchanged").len(), 2);
}

//! API keys: 32 random bytes shown once when minted, stored only as their
//! SHA-256. A fast hash is enough because the keys are random (nothing to
//! guess from a dictionary); comparisons run in constant time over every
//! stored key, so timing says nothing about how close a guess was.
//!
//! The key file has one key per line: `name:sha256hex[:scope]`, where scope
//! is `write` (the default: reads and writes) or `read`. Blank lines and
//! lines starting with `#` are ignored.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this, so a leaked one is easy to spot in a scan.
pub const KEY_PREFIX: &str = "itk_";

/// What a credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
}

impl Scope {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            _ => None,
        }
    }
}

#[derive(Clone)]
struct StoredKey {
    name: String,
    hash: [u8; 32],
    scope: Scope,
}

/// The keys the API accepts, by hash.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<StoredKey>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: hashes are not secret, but they have no business in logs.
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.name))
            .finish()
    }
}

impl ApiKeys {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Reads a key file; a missing file is an error, since a typo in the
    /// path must not silently leave the API without keys.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the API key file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the API key file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split(':');
            let (Some(name), Some(hash)) = (fields.next(), fields.next()) else {
                bail!("line {}: expected name:sha256hex[:scope]", number + 1);
            };
            let scope = match fields.next() {
                None => Scope::Write,
                Some(scope) => Scope::parse(scope)
                    .with_context(|| format!("line {}: scope must be read or write", number + 1))?,
            };
            if fields.next().is_some() || !valid_name(name) {
                bail!(
                    "line {}: expected name:sha256hex[:scope] with a name of letters, digits, - and _",
                    number + 1
                );
            }
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hash, &mut digest)
                .with_context(|| format!("line {}: the hash must be 64 hex digits", number + 1))?;
            if keys.iter().any(|k: &StoredKey| k.name == name) {
                bail!("line {}: the name {name} is used twice", number + 1);
            }
            keys.push(StoredKey {
                name: name.to_owned(),
                hash: digest,
                scope,
            });
        }
        Ok(Self { keys })
    }

    /// The name and scope of the key `presented` is, if any. Every stored
    /// hash is compared, match or not.
    pub fn verify(&self, presented: &str) -> Option<(&str, Scope)> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&digest)) {
                found = Some((key.name.as_str(), key.scope));
            }
        }
        found
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// A new key: the secret to hand out once, and the line to store.
pub struct MintedKey {
    pub key: String,
    pub line: String,
}

pub fn mint(name: &str, scope: Scope) -> anyhow::Result<MintedKey> {
    if !valid_name(name) {
        bail!("a key name takes 1 to 64 letters, digits, - and _");
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let scope = match scope {
        Scope::Read => ":read",
        Scope::Write => "",
    };
    Ok(MintedKey {
        line: format!("{name}:{hash}{scope}"),
        key,
    })
}

/// Mints a key and appends its hash to `path` (created owner-only if
/// missing). Returns the key, which exists nowhere else afterwards.
pub fn create(path: &Path, name: &str, scope: Scope) -> anyhow::Result<String> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => ApiKeys::parse(&text)
            .with_context(|| format!("in the API key file {}", path.display()))?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => ApiKeys::default(),
        Err(err) => {
            return Err(err).with_context(|| format!("reading {}", path.display()));
        }
    };
    if existing.keys.iter().any(|k| k.name == name) {
        bail!("{} already has a key named {name}", path.display());
    }
    let minted = mint(name, scope)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{}", minted.line).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(minted.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_verify_and_only_their_hash_is_stored() {
        let minted = mint("ci", Scope::Write).expect("mint");
        assert!(minted.key.starts_with(KEY_PREFIX));
        assert!(!minted.line.contains(&minted.key));
        let read = mint("viewer", Scope::Read).expect("mint");
        let keys =
            ApiKeys::parse(&format!("# keys\n\n{}\n{}\n", minted.line, read.line)).expect("parse");
        assert_eq!(keys.verify(&minted.key), Some(("ci", Scope::Write)));
        assert_eq!(keys.verify(&read.key), Some(("viewer", Scope::Read)));
        assert_eq!(keys.verify("itk_wrong"), None);
        assert_eq!(keys.verify(""), None);
        assert_ne!(minted.key, mint("ci", Scope::Write).expect("mint").key);
    }

    #[test]
    fn malformed_key_files_are_refused() {
        let hash = "0".repeat(64);
        for bad in [
            "name".to_owned(),
            format!("na me:{hash}"),
            "name:abc".to_owned(),
            format!("name:{hash}:admin"),
            format!("a:{hash}\na:{hash}"),
            format!("a:{hash}:read:x"),
        ] {
            assert!(ApiKeys::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_appends_and_refuses_a_second_key_of_the_same_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        let first = create(&path, "laptop", Scope::Write).expect("create");
        let second = create(&path, "phone", Scope::Read).expect("create");
        assert!(create(&path, "laptop", Scope::Write).is_err());
        let keys = ApiKeys::load(&path).expect("load");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.verify(&first), Some(("laptop", Scope::Write)));
        assert_eq!(keys.verify(&second), Some(("phone", Scope::Read)));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains(&first) && !text.contains(&second));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key file is owner-only");
        }
    }
}

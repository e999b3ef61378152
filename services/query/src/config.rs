//! Command-line and environment configuration of the query service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::http::{HeaderValue, Uri};
use clap::Parser;
use imagetag_shared::config::{AwsArgs, TableNames};
use imagetag_shared::ports::SearchStore;
use rand::RngCore;

use crate::routes::AppState;

#[derive(Debug, Clone, Parser)]
#[command(name = "imagetag-query", about = "Search API over the image index")]
pub struct Config {
    #[command(flatten)]
    pub aws: AwsArgs,

    #[command(flatten)]
    pub tables: TableNames,

    /// Address the API listens on.
    #[arg(long, env = "IMAGETAG_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Key that signs pagination cursors. Replicas must share it; unset, each
    /// process makes up its own and cursors die with it.
    #[arg(long, env = "IMAGETAG_CURSOR_SECRET", hide_env_values = true)]
    pub cursor_secret: Option<Secret>,

    /// Longest a request may take before it is answered with 503, in seconds.
    #[arg(
        long,
        env = "IMAGETAG_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=300)
    )]
    pub request_timeout_seconds: u64,

    /// Comma-separated browser origins allowed to call the API (CORS), such
    /// as `https://photos.example.com`; unset means same-origin only.
    #[arg(long, env = "IMAGETAG_CORS_ORIGINS")]
    pub cors_origins: Option<String>,

    /// Bucket of the images: enables `/content`, `/thumbnail` and
    /// presigned uploads. Unset, the API serves search only.
    #[arg(long, env = "IMAGETAG_BUCKET")]
    pub bucket: Option<String>,

    /// Key prefix presigned uploads are limited to.
    #[arg(long, env = "IMAGETAG_UPLOAD_PREFIX", default_value = "uploads/")]
    pub upload_prefix: String,

    /// Key prefix of the tagger's thumbnails in the bucket.
    #[arg(long, env = "IMAGETAG_THUMBNAIL_PREFIX", default_value = "thumbnails/")]
    pub thumbnail_prefix: String,

    /// Largest upload accepted, in bytes.
    #[arg(long, env = "IMAGETAG_MAX_UPLOAD_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_upload_bytes: u64,

    /// Lifetime of a presigned upload URL, in seconds.
    #[arg(long, env = "IMAGETAG_UPLOAD_TTL_SECONDS", default_value_t = 300)]
    pub upload_ttl_seconds: u64,
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        // Short keys make signatures guessable offline.
        if value.len() < 16 {
            return Err("the cursor secret needs at least 16 bytes".into());
        }
        Ok(Self(value.to_owned()))
    }
}

impl Config {
    /// The configured cursor key, or a random one for this process only.
    pub fn cursor_key(&self) -> Vec<u8> {
        match &self.cursor_secret {
            Some(secret) => secret.expose().to_vec(),
            None => {
                tracing::warn!(
                    "IMAGETAG_CURSOR_SECRET is not set: using a random key, so cursors \
                     do not survive a restart and do not work across replicas"
                );
                let mut key = vec![0u8; 32];
                rand::rng().fill_bytes(&mut key);
                key
            }
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    pub fn cors_origins(&self) -> anyhow::Result<Vec<HeaderValue>> {
        parse_origins(self.cors_origins.as_deref().unwrap_or_default())
    }

    /// Everything the router needs, around `store`.
    pub fn app_state(&self, store: Arc<dyn SearchStore>) -> anyhow::Result<AppState> {
        Ok(AppState::new(store, &self.cursor_key())
            .with_request_timeout(self.request_timeout())
            .with_cors_origins(self.cors_origins()?))
    }
}

/// Origins as browsers send them: `scheme://host[:port]`, nothing after.
/// Checked at startup so a typo fails the deployment instead of silently
/// blocking the frontend.
pub fn parse_origins(raw: &str) -> anyhow::Result<Vec<HeaderValue>> {
    let mut origins = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        if origin == "*" {
            bail!("CORS origin `*` is not supported; list the origins");
        }
        let uri: Uri = origin
            .parse()
            .with_context(|| format!("CORS origin `{origin}` is not a URL"))?;
        let well_formed = matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.authority().is_some()
            && uri
                .path_and_query()
                .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
            && !origin.ends_with('/');
        if !well_formed {
            bail!("CORS origin `{origin}` must look like https://host[:port]");
        }
        origins.push(
            HeaderValue::from_str(origin)
                .with_context(|| format!("CORS origin `{origin}` is not a valid header"))?,
        );
    }
    Ok(origins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_listed_and_checked() {
        let origins = parse_origins(" https://a.example.com, http://localhost:3000 ,,")
            .map_err(|err| err.to_string());
        assert_eq!(
            origins.map(|o| o.len()),
            Ok(2),
            "two origins, empty entries ignored"
        );
        assert_eq!(parse_origins("").map(|o| o.len()).ok(), Some(0));
        for bad in [
            "*",
            "example.com",
            "https://a.example.com/",
            "https://a.example.com/app",
            "ftp://a.example.com",
        ] {
            assert!(parse_origins(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output_and_must_be_long() {
        let secret: Result<Secret, _> = "0123456789abcdefXYZ".parse();
        assert_eq!(
            secret.map(|s| format!("{s:?}")),
            Ok("Secret(..)".to_owned())
        );
        assert!("short".parse::<Secret>().is_err());
    }

    #[test]
    fn defaults_apply() {
        let config = Config::try_parse_from([
            "imagetag-query",
            "--images-table",
            "i",
            "--postings-table",
            "p",
            "--tags-table",
            "t",
        ]);
        let config = config.map_err(|err| err.to_string());
        assert!(config.is_ok(), "{config:?}");
        if let Ok(config) = config {
            if std::env::var_os("IMAGETAG_REQUEST_TIMEOUT_SECONDS").is_none() {
                assert_eq!(config.request_timeout(), Duration::from_secs(10));
            }
            if std::env::var_os("IMAGETAG_LISTEN").is_none() {
                assert_eq!(config.listen.port(), 8080);
            }
        }
    }
}

//! Command-line and environment configuration of the query service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::http::{HeaderValue, Uri};
use clap::Parser;
use imagetag_shared::config::{AwsArgs, TableNames};
use imagetag_shared::ports::SearchStore;
use rand::RngCore;

use crate::auth::jwt::JwksSource;
use crate::auth::{AccessPolicy, ApiKeys, JwtValidator, OidcConfig};
use crate::ratelimit::{RateLimit, RateLimiter};
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

    #[command(flatten)]
    pub access: AccessArgs,

    #[command(flatten)]
    pub queues: OperationQueues,
}

/// Who may read and write, and how fast.
#[derive(Debug, Clone, clap::Args)]
pub struct AccessArgs {
    /// File of API keys, one `name:sha256hex[:read|write]` a line
    /// (`imagetag keys create NAME` makes them).
    #[arg(long, env = "IMAGETAG_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Reads need a credential too.
    #[arg(long, env = "IMAGETAG_AUTH_READS", default_value_t = false)]
    pub auth_reads: bool,

    /// Issuer whose JWTs are accepted as bearer tokens (the `iss` claim).
    #[arg(long, env = "IMAGETAG_OIDC_ISSUER", requires = "oidc_audience")]
    pub oidc_issuer: Option<String>,

    /// Audience the tokens must be for (the `aud` claim).
    #[arg(long, env = "IMAGETAG_OIDC_AUDIENCE", requires = "oidc_issuer")]
    pub oidc_audience: Option<String>,

    /// URL of the issuer's key set (JWKS).
    #[arg(
        long,
        env = "IMAGETAG_OIDC_JWKS_URL",
        conflicts_with = "oidc_jwks_file"
    )]
    pub oidc_jwks_url: Option<String>,

    /// File holding the issuer's key set (JWKS), instead of a URL.
    #[arg(long, env = "IMAGETAG_OIDC_JWKS_FILE")]
    pub oidc_jwks_file: Option<PathBuf>,

    /// Clock skew allowed on token expiry and not-before, in seconds.
    #[arg(long, env = "IMAGETAG_OIDC_LEEWAY_SECONDS", default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(0..=600))]
    pub oidc_leeway_seconds: u64,

    /// Scope a token needs for writes; unset, any valid token may write.
    #[arg(long, env = "IMAGETAG_OIDC_WRITE_SCOPE")]
    pub oidc_write_scope: Option<String>,

    /// Requests per second each client gets back after its burst; 0 turns
    /// rate limiting off.
    #[arg(long, env = "IMAGETAG_RATE_LIMIT_PER_SECOND", default_value_t = 50.0)]
    pub rate_limit_per_second: f64,

    /// Requests a client may make at once.
    #[arg(long, env = "IMAGETAG_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,

    /// Take the client address from the last `X-Forwarded-For` entry (only
    /// behind a proxy that sets it, such as a load balancer).
    #[arg(long, env = "IMAGETAG_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,
}

/// Clients tracked by the rate limiter at most (bounded memory).
pub const RATE_LIMIT_CLIENTS: usize = 10_000;

impl AccessArgs {
    pub async fn policy(&self) -> anyhow::Result<AccessPolicy> {
        let keys = match &self.api_keys_file {
            Some(path) => ApiKeys::load(path)?,
            None => ApiKeys::default(),
        };
        let jwt = match (&self.oidc_issuer, &self.oidc_audience) {
            (Some(issuer), Some(audience)) => {
                let jwks = match (&self.oidc_jwks_url, &self.oidc_jwks_file) {
                    (Some(url), None) => JwksSource::Url(url.clone()),
                    (None, Some(path)) => JwksSource::File(path.clone()),
                    _ => bail!(
                        "OIDC needs the issuer's keys: set IMAGETAG_OIDC_JWKS_URL or IMAGETAG_OIDC_JWKS_FILE"
                    ),
                };
                Some(Arc::new(
                    JwtValidator::new(OidcConfig {
                        issuer: issuer.clone(),
                        audience: audience.clone(),
                        jwks,
                        leeway_seconds: self.oidc_leeway_seconds,
                        write_scope: self.oidc_write_scope.clone(),
                    })
                    .await?,
                ))
            }
            _ => None,
        };
        if !(self.rate_limit_per_second.is_finite() && self.rate_limit_per_second >= 0.0) {
            bail!("the rate limit must be a number of requests per second, 0 for none");
        }
        let limiter = (self.rate_limit_per_second > 0.0).then(|| {
            RateLimiter::new(
                RateLimit {
                    per_second: self.rate_limit_per_second,
                    burst: self.rate_limit_burst,
                },
                RATE_LIMIT_CLIENTS,
            )
        });
        let policy = AccessPolicy {
            keys,
            jwt,
            auth_reads: self.auth_reads,
            trust_loopback: false,
            trust_forwarded_for: self.trust_forwarded_for,
            limiter,
        };
        if !policy.accepts_credentials() {
            tracing::warn!(
                "no API keys or OIDC issuer configured: uploads, deletes, re-tags and re-drives are refused"
            );
        }
        Ok(policy)
    }
}

/// Queues the write endpoints use: the tagger's (re-tag) and each
/// dead-letter queue with the queue it drains back into (re-drive).
#[derive(Debug, Clone, clap::Args)]
pub struct OperationQueues {
    #[arg(long, env = "IMAGETAG_EVENTS_QUEUE_URL")]
    pub events_queue_url: Option<String>,
    #[arg(long, env = "IMAGETAG_EVENTS_DLQ_URL")]
    pub events_dlq_url: Option<String>,
    /// The tagger's queue; enables `POST /v1/images/{id}/retag`.
    #[arg(long, env = "IMAGETAG_TAG_QUEUE_URL")]
    pub tag_queue_url: Option<String>,
    #[arg(long, env = "IMAGETAG_TAG_DLQ_URL")]
    pub tag_dlq_url: Option<String>,
    #[arg(long, env = "IMAGETAG_INDEX_QUEUE_URL")]
    pub index_queue_url: Option<String>,
    #[arg(long, env = "IMAGETAG_INDEX_DLQ_URL")]
    pub index_dlq_url: Option<String>,
}

impl OperationQueues {
    /// `(name, dead-letter URL, source URL)` of every pair configured.
    pub fn redrive_pairs(&self) -> Vec<(&'static str, &str, &str)> {
        [
            ("events", &self.events_dlq_url, &self.events_queue_url),
            ("tag-jobs", &self.tag_dlq_url, &self.tag_queue_url),
            ("index", &self.index_dlq_url, &self.index_queue_url),
        ]
        .into_iter()
        .filter_map(|(name, dlq, source)| Some((name, dlq.as_deref()?, source.as_deref()?)))
        .collect()
    }
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

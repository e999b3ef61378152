//! OIDC bearer tokens: JWTs signed by the configured issuer, checked
//! against its published keys (JWKS, from a file or a URL). Only RS256 and
//! ES256 are accepted, so neither `none` nor an HMAC confusion with a public
//! key can get through; the issuer, audience, expiry and not-before are
//! checked with a small leeway for clock skew.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

/// Unknown key ids trigger a refetch at most this often, so a flood of
/// forged tokens cannot turn into a flood of requests to the issuer.
const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Keys rotate; even without an unknown key id they are refetched this often.
const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
const ALLOWED: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Scope (in `scope` or `scp`) a token needs for writes; `None` lets
    /// every valid token write.
    pub write_scope: Option<String>,
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenIdentity {
    pub subject: String,
    pub scopes: Vec<String>,
}

/// Why a token was refused; the detail is for logs, clients get a code.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("no key {0:?} in the issuer's key set")]
    UnknownKey(Option<String>),
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("the issuer's keys are unavailable: {0}")]
    KeysUnavailable(String),
}

struct CachedKeys {
    set: JwkSet,
    fetched: Instant,
    last_attempt: Instant,
}

pub struct JwtValidator {
    config: OidcConfig,
    http: reqwest::Client,
    keys: RwLock<CachedKeys>,
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtValidator")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

impl JwtValidator {
    /// Loads the key set once, so a wrong path or URL fails the start.
    pub async fn new(config: OidcConfig) -> anyhow::Result<Self> {
        if config.issuer.is_empty() || config.audience.is_empty() {
            bail!("OIDC needs both an issuer and an audience");
        }
        if let JwksSource::Url(url) = &config.jwks
            && !url.starts_with("http://")
        {
            // The HTTP client is built without TLS (see the README): an
            // issuer's HTTPS key set is mounted as a file instead.
            bail!(
                "the JWKS URL must be plain http:// (an in-cluster endpoint); \
                 for an https:// issuer, mount its key set as a file and set IMAGETAG_OIDC_JWKS_FILE"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client for the JWKS")?;
        let set = fetch(&http, &config.jwks).await?;
        let now = Instant::now();
        Ok(Self {
            config,
            http,
            keys: RwLock::new(CachedKeys {
                set,
                fetched: now,
                last_attempt: now,
            }),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    pub fn write_scope(&self) -> Option<&str> {
        self.config.write_scope.as_deref()
    }

    pub async fn validate(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        let header = decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let key = match self.key_for(header.kid.as_deref(), header.alg) {
            Some(key) => key,
            None => {
                self.refetch(false).await?;
                self.key_for(header.kid.as_deref(), header.alg)
                    .ok_or(TokenError::UnknownKey(header.kid.clone()))?
            }
        };
        if self.age() > MAX_KEY_AGE {
            // Best effort: the cached keys still verify this token.
            if let Err(err) = self.refetch(true).await {
                tracing::warn!(error = %err, "refreshing the issuer's keys failed");
            }
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.config.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let claims = decode::<Value>(token, &key, &validation)
            .map_err(|e| TokenError::Invalid(format!("{:?}", e.kind())))?
            .claims;
        let subject = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::Invalid("sub is not a string".into()))?
            .to_owned();
        Ok(TokenIdentity {
            subject,
            scopes: scopes(&claims),
        })
    }

    fn age(&self) -> Duration {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fetched
            .elapsed()
    }

    /// The key that may have signed a token with this `kid` and `alg`.
    fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let usable = |jwk: &&Jwk| {
            jwk.common
                .key_algorithm
                .is_none_or(|declared| format!("{declared:?}") == format!("{alg:?}"))
        };
        let jwk = match kid {
            Some(kid) => keys.set.find(kid).filter(usable),
            // Without a key id, only an unambiguous key set will do.
            None => match keys.set.keys.as_slice() {
                [only] => Some(only).filter(usable),
                _ => None,
            },
        }?;
        DecodingKey::from_jwk(jwk).ok()
    }

    async fn refetch(&self, force: bool) -> Result<(), TokenError> {
        let _one_at_a_time = self.refresh.lock().await;
        {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            if !force && keys.last_attempt.elapsed() < REFETCH_INTERVAL {
                return Ok(());
            }
        }
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .last_attempt = Instant::now();
        let set = fetch(&self.http, &self.config.jwks)
            .await
            .map_err(|e| TokenError::KeysUnavailable(format!("{e:#}")))?;
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.set = set;
        keys.fetched = Instant::now();
        Ok(())
    }
}

/// `scope` (space-separated, RFC 8693) or `scp` (a list, as some issuers
/// send it).
fn scopes(claims: &Value) -> Vec<String> {
    let mut scopes: Vec<String> = claims["scope"]
        .as_str()
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    match &claims["scp"] {
        Value::String(s) => scopes.extend(s.split_whitespace().map(str::to_owned)),
        Value::Array(items) => {
            scopes.extend(items.iter().filter_map(Value::as_str).map(str::to_owned))
        }
        _ => {}
    }
    scopes
}

async fn fetch(http: &reqwest::Client, source: &JwksSource) -> anyhow::Result<JwkSet> {
    let text = match source {
        JwksSource::File(path) => tokio::fs::read_to_string(path)
            .await
            .with_context(|| format!("reading the JWKS file {}", path.display()))?,
        JwksSource::Url(url) => {
            let response = http
                .get(url)
                .send()
                .await
                .with_context(|| format!("fetching the JWKS from {url}"))?;
            if !response.status().is_success() {
                bail!("fetching the JWKS from {url}: HTTP {}", response.status());
            }
            response
                .text()
                .await
                .with_context(|| format!("reading the JWKS from {url}"))?
        }
    };
    let set: JwkSet = serde_json::from_str(&text).context("the JWKS is not a JSON key set")?;
    if set.keys.is_empty() {
        bail!("the JWKS holds no keys");
    }
    Ok(set)
}

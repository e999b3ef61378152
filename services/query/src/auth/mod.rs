//! Who may do what: every request to a `/v1` route passes `access`, which
//! identifies the client (API key, OIDC token, the local machine, or just
//! its address), applies the per-client rate limit, then checks the route's
//! requirement: writes need a credential with write rights; reads need any
//! credential when reads are closed by configuration.

pub mod jwt;
pub mod keys;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::ratelimit::RateLimiter;
pub use jwt::{JwtValidator, OidcConfig};
pub use keys::{ApiKeys, Scope};

/// Routes that stay open whatever the configuration: probes, metrics,
/// the API description and the UI's static files (they hold no data).
const OPEN_ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/",
    "/index.html",
    "/assets/{name}",
];

/// The access rules of one deployment.
#[derive(Default)]
pub struct AccessPolicy {
    pub keys: ApiKeys,
    pub jwt: Option<Arc<JwtValidator>>,
    /// Reads need a credential too.
    pub auth_reads: bool,
    /// Requests from the machine itself (loopback) need no credential:
    /// `imagetag up` on a laptop.
    pub trust_loopback: bool,
    /// Take the client address from `X-Forwarded-For` (its last entry,
    /// the one the proxy in front added) instead of the connection.
    pub trust_forwarded_for: bool,
    pub limiter: Option<RateLimiter>,
}

impl std::fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPolicy")
            .field("keys", &self.keys)
            .field("jwt", &self.jwt)
            .field("auth_reads", &self.auth_reads)
            .field("trust_loopback", &self.trust_loopback)
            .finish_non_exhaustive()
    }
}

/// Who sent a request, as far as the API could tell.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Key {
        name: String,
        scope: Scope,
    },
    Token {
        subject: String,
        can_write: bool,
    },
    /// A loopback connection where the local machine is trusted.
    Local,
    Anonymous,
}

impl Principal {
    fn can_write(&self) -> bool {
        match self {
            Self::Key { scope, .. } => *scope == Scope::Write,
            Self::Token { can_write, .. } => *can_write,
            Self::Local => true,
            Self::Anonymous => false,
        }
    }

    /// Log-safe name: key names and token subjects, never a credential.
    pub fn label(&self) -> String {
        match self {
            Self::Key { name, .. } => format!("key:{name}"),
            Self::Token { subject, .. } => format!("sub:{subject}"),
            Self::Local => "local".into(),
            Self::Anonymous => "anonymous".into(),
        }
    }
}

impl AccessPolicy {
    /// Whether any credential could ever be accepted.
    pub fn accepts_credentials(&self) -> bool {
        !self.keys.is_empty() || self.jwt.is_some()
    }

    async fn identify(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            let local = self.trust_loopback && peer.is_some_and(|ip| ip.is_loopback());
            return Ok(if local {
                Principal::Local
            } else {
                Principal::Anonymous
            });
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "invalid_credentials",
                    "send credentials as `Authorization: Bearer <key or token>`",
                )
            })?;
        if let Some((name, scope)) = self.keys.verify(token) {
            return Ok(Principal::Key {
                name: name.to_owned(),
                scope,
            });
        }
        if let Some(jwt) = self
            .jwt
            .as_ref()
            .filter(|_| !token.starts_with(keys::KEY_PREFIX))
        {
            return match jwt.validate(token).await {
                Ok(identity) => {
                    let can_write = jwt
                        .write_scope()
                        .is_none_or(|needed| identity.scopes.iter().any(|s| s == needed));
                    Ok(Principal::Token {
                        subject: identity.subject,
                        can_write,
                    })
                }
                Err(jwt::TokenError::KeysUnavailable(detail)) => Err(
                    ApiError::DependencyUnavailable(format!("OIDC keys: {detail}")),
                ),
                Err(err) => {
                    tracing::info!(reason = %err, "bearer token refused");
                    Err(ApiError::unauthorized(
                        "invalid_token",
                        "the bearer token is not valid",
                    ))
                }
            };
        }
        Err(ApiError::unauthorized(
            "invalid_credentials",
            "the API key is not valid",
        ))
    }

    fn client_address(&self, request: &Request) -> Option<IpAddr> {
        if self.trust_forwarded_for
            && let Some(ip) = request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
        {
            return Some(ip);
        }
        let extensions = request.extensions();
        extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            // What `ConnectInfo` falls back to when the router is driven
            // without a listener (tests, embedding).
            .or_else(|| {
                extensions
                    .get::<MockConnectInfo<SocketAddr>>()
                    .map(|MockConnectInfo(addr)| addr.ip())
            })
    }
}

/// The middleware: identify, limit, authorize.
pub async fn access(
    State(policy): State<Arc<AccessPolicy>>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    if route.as_deref().is_some_and(|r| OPEN_ROUTES.contains(&r)) {
        return next.run(request).await;
    }
    let write = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let peer = policy.client_address(&request);
    let identified = policy.identify(request.headers(), peer).await;
    if let Some(limiter) = &policy.limiter {
        // Failed attempts count against the address, so guessing keys is
        // as limited as anything else.
        let client = match &identified {
            Ok(Principal::Local) => None,
            Ok(principal @ (Principal::Key { .. } | Principal::Token { .. })) => {
                Some(principal.label())
            }
            _ => Some(peer.map_or_else(|| "ip:unknown".to_owned(), |ip| format!("ip:{ip}"))),
        };
        if let Some(client) = client
            && let Err(wait) = limiter.check(&client, Instant::now())
        {
            tracing::info!(client = %client, "rate limited");
            return ApiError::TooManyRequests { retry_after: wait }.into_response();
        }
    }
    let principal = match identified {
        Ok(principal) => principal,
        Err(err) => return err.into_response(),
    };
    let needs_credential = write || policy.auth_reads;
    if needs_credential && principal == Principal::Anonymous {
        return ApiError::unauthorized(
            "unauthorized",
            if write {
                "this request changes data: send an API key or token as `Authorization: Bearer …`"
            } else {
                "this deployment requires credentials for reads: send `Authorization: Bearer …`"
            },
        )
        .into_response();
    }
    if write && !principal.can_write() {
        return ApiError::Forbidden(format!(
            "{} may read but not change data",
            principal.label()
        ))
        .into_response();
    }
    if write {
        tracing::info!(principal = %principal.label(), method = %request.method(), route = route.as_deref().unwrap_or("unmatched"), "write authorized");
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

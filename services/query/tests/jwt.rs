//! OIDC bearer tokens end to end through the router: keys generated for the
//! test (with the openssl command line), their JWKS served over HTTP by a
//! local server or read from a file, tokens signed with jsonwebtoken.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use imagetag_query::auth::jwt::JwksSource;
use imagetag_query::auth::{AccessPolicy, JwtValidator, OidcConfig};
use imagetag_query::{AppState, router};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tower::ServiceExt;

mod memory;

const ISSUER: &str = "https://issuer.example.test";
const AUDIENCE: &str = "imagetag";

/// A private key made by `openssl genpkey`, in PEM.
fn generate(dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let output = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs the openssl command line (Debian package openssl): {e}")
        });
    assert!(
        output.status.success(),
        "openssl genpkey failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(&path).expect("key file")
}

struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
}

impl Signer {
    fn rsa(dir: &Path, kid: &str) -> Self {
        let pem = generate(
            dir,
            kid,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        Self {
            key: EncodingKey::from_rsa_pem(&pem).expect("RSA key"),
            alg: Algorithm::RS256,
            kid: kid.into(),
        }
    }

    fn ec(dir: &Path, kid: &str) -> Self {
        let pem = generate(
            dir,
            kid,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        Self {
            key: EncodingKey::from_ec_pem(&pem).expect("EC key"),
            alg: Algorithm::ES256,
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).expect("public JWK");
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &self.key).expect("signed")
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(overrides: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "exp": now() + 600,
        "nbf": now() - 10,
        "scope": "openid imagetag:write",
    });
    if let (Value::Object(base), Value::Object(changes)) = (&mut claims, overrides) {
        base.extend(changes);
    }
    claims
}

/// Serves `body` at `/jwks` on a free loopback port.
async fn serve_jwks(body: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = Router::new().route("/jwks", axum::routing::get(move || async move { body }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks")
}

async fn app(jwks: JwksSource, write_scope: Option<&str>) -> Router {
    let validator = JwtValidator::new(OidcConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks,
        leeway_seconds: 30,
        write_scope: write_scope.map(str::to_owned),
    })
    .await
    .expect("the JWKS loads");
    let policy = AccessPolicy {
        jwt: Some(Arc::new(validator)),
        auth_reads: true,
        ..AccessPolicy::default()
    };
    let state = AppState::new(
        Arc::new(memory::MemoryStore::default()),
        b"jwt test secret, long enough",
    )
    .with_access(policy);
    router(state).layer(MockConnectInfo(
        "203.0.113.5:9000".parse::<SocketAddr>().expect("addr"),
    ))
}

async fn call(app: &Router, method: Method, token: &str) -> (StatusCode, String) {
    let (uri, body) = if method == Method::POST {
        ("/v1/admin/redrive", Body::from("{}"))
    } else {
        ("/v1/tags", Body::empty())
    };
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .expect("request"),
        )
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (
        status,
        value["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn tokens_are_checked_against_the_issuers_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rsa = Signer::rsa(dir.path(), "rsa-1");
    let ec = Signer::ec(dir.path(), "ec-1");
    let set = JwkSet {
        keys: vec![rsa.jwk(), ec.jwk()],
    };
    let url = serve_jwks(serde_json::to_string(&set).expect("jwks")).await;
    let app = app(JwksSource::Url(url), None).await;

    for signer in [&rsa, &ec] {
        let token = signer.sign(&claims(json!({})));
        assert_eq!(
            call(&app, Method::GET, &token).await.0,
            StatusCode::OK,
            "{:?}",
            signer.alg
        );
    }
    // Within the leeway, an expired token still passes; beyond it, not.
    let grace = rsa.sign(&claims(json!({ "exp": now() - 5 })));
    assert_eq!(call(&app, Method::GET, &grace).await.0, StatusCode::OK);

    // An impostor's key under the issuer's key id: a bad signature.
    let impostor = Signer::rsa(dir.path(), "rsa-1-impostor");
    let forged = Signer {
        kid: "rsa-1".into(),
        ..impostor
    };
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
    let unsigned = format!("{header}.{payload}.");
    let refused = [
        ("expired", rsa.sign(&claims(json!({ "exp": now() - 3600 })))),
        (
            "not yet valid",
            ec.sign(&claims(json!({ "nbf": now() + 3600 }))),
        ),
        (
            "wrong issuer",
            rsa.sign(&claims(json!({ "iss": "https://evil.example.test" }))),
        ),
        (
            "wrong audience",
            ec.sign(&claims(json!({ "aud": "someone-else" }))),
        ),
        (
            "no subject",
            rsa.sign(&{
                let mut c = claims(json!({}));
                c.as_object_mut().map(|o| o.remove("sub"));
                c
            }),
        ),
        ("bad signature", forged.sign(&claims(json!({})))),
        ("alg none", unsigned),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (case, token) in refused {
        let (status, code) = call(&app, Method::GET, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}");
        assert_eq!(code, "invalid_token", "{case}");
    }
    // A valid token may write when no write scope is configured.
    let token = ec.sign(&claims(json!({})));
    let (status, code) = call(&app, Method::POST, &token).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "authorized, then no dead-letter queues: {code}"
    );
}

#[tokio::test]
async fn a_configured_write_scope_separates_readers_from_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ec = Signer::ec(dir.path(), "ec-file");
    let path = dir.path().join("jwks.json");
    let set = JwkSet {
        keys: vec![ec.jwk()],
    };
    std::fs::write(&path, serde_json::to_string(&set).expect("jwks")).expect("write");
    let app = app(JwksSource::File(path), Some("imagetag:write")).await;
    let reader = ec.sign(&claims(json!({ "scope": "openid" })));
    assert_eq!(call(&app, Method::GET, &reader).await.0, StatusCode::OK);
    assert_eq!(
        call(&app, Method::POST, &reader).await,
        (StatusCode::FORBIDDEN, "forbidden".to_owned())
    );
    let writer = ec.sign(&claims(json!({ "scp": ["imagetag:write"] })));
    assert_eq!(
        call(&app, Method::POST, &writer).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_unusable_key_set_fails_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, r#"{"keys":[]}"#).expect("write");
    for source in [
        JwksSource::File(dir.path().join("missing.json")),
        JwksSource::File(empty),
        JwksSource::Url(serve_jwks("not json".into()).await),
        // No TLS in this build's HTTP client: refused up front, clearly.
        JwksSource::Url("https://issuer.example.test/jwks".into()),
    ] {
        let result = JwtValidator::new(OidcConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks: source.clone(),
            leeway_seconds: 0,
            write_scope: None,
        })
        .await;
        assert!(result.is_err(), "{source:?}");
    }
}

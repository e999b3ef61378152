//! The web UI: plain HTML, CSS and JavaScript from `assets/`, compiled into
//! the binary and served at `/` and `/assets/{name}`. Nothing is fetched
//! from anywhere else; the page talks only to this API.
//!
//! Every response carries a validator (a hash of the file taken at compile
//! time) and asks browsers to revalidate, so a new binary is picked up at
//! once and an unchanged asset costs a 304. The page gets a content security
//! policy that allows no inline script, no plug-ins and no framing: even a
//! rendering bug could not run injected markup.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: &'static str,
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!("../assets/", $name));
        const ETAG_BYTES: [u8; ETAG_LEN] = etag_of(BODY);
        const ETAG: &str = match std::str::from_utf8(&ETAG_BYTES) {
            Ok(text) => text,
            Err(_) => panic!("hex digits are ASCII"),
        };
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            etag: ETAG,
        }
    }};
}

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// What `/assets/{name}` serves.
const ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// Scripts and styles only from here; images and upload PUTs may also go to
/// the object store a presigned URL points at (S3 on AWS).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data: http: https:; \
     connect-src 'self' http: https:; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The UI's routes, to merge into the API router (any state).
pub fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(index_html))
        .routes(routes!(asset))
}

/// The web UI.
#[utoipa::path(get, path = "/", tag = "ui",
    responses(
        (status = 200, description = "The page", content(("text/html"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag")
    ))]
async fn index(request_headers: HeaderMap) -> Response {
    page(&request_headers)
}

/// The web UI, by its file name.
#[utoipa::path(get, path = "/index.html", tag = "ui",
    responses(
        (status = 200, description = "The page", content(("text/html"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag")
    ))]
async fn index_html(request_headers: HeaderMap) -> Response {
    page(&request_headers)
}

fn page(request_headers: &HeaderMap) -> Response {
    let mut response = serve(&INDEX, request_headers);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A script, style sheet or icon of the UI.
#[utoipa::path(get, path = "/assets/{name}", tag = "ui",
    params(("name" = String, Path, description = "File name, such as `app.js`")),
    responses(
        (status = 200, description = "The file",
            content(("text/javascript"), ("text/css"), ("image/svg+xml"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag"),
        (status = 404, description = "No such asset", body = crate::error::ErrorBody)
    ))]
async fn asset(Path(name): Path<String>, request_headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => serve(asset, &request_headers),
        None => ApiError::NotFound("no such asset".into()).into_response(),
    }
}

fn serve(asset: &Asset, request_headers: &HeaderMap) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if etag_matches(request_headers, asset.etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (headers, asset.body).into_response()
}

/// `If-None-Match`: a list of (possibly weak) tags, or `*`.
fn etag_matches(request_headers: &HeaderMap, etag: &str) -> bool {
    request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// `"` + 16 hex digits + `"`.
const ETAG_LEN: usize = 18;

/// A strong validator from the FNV-1a hash of `body`, computed at compile
/// time.
const fn etag_of(body: &[u8]) -> [u8; ETAG_LEN] {
    let mut buffer = [0; ETAG_LEN];
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < body.len() {
        hash ^= body[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buffer[0] = b'"';
    let mut digit = 0;
    while digit < 16 {
        buffer[1 + digit] = HEX[((hash >> (60 - 4 * digit)) & 0xf) as usize];
        digit += 1;
    }
    buffer[ETAG_LEN - 1] = b'"';
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        axum::Router::from(routes::<()>())
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    fn header_of(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn the_page_is_served_with_a_strict_policy() {
        let response = get("/", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        let policy = header_of(&response, header::CONTENT_SECURITY_POLICY);
        assert!(policy.contains("script-src 'self';"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert!(!policy.contains("unsafe-eval"), "{policy}");
        let html = body_text(response).await;
        assert!(html.starts_with("<!doctype html>"));
    }

    #[tokio::test]
    async fn every_asset_the_page_links_is_served_with_its_type() {
        let html = String::from_utf8_lossy(INDEX.body).into_owned();
        let linked: Vec<&str> = html
            .split("\"/assets/")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(linked.len() >= 3, "{linked:?}");
        for name in linked {
            let response = get(&format!("/assets/{name}"), None).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            let asset = ASSETS.iter().find(|a| a.name == name).expect("listed");
            assert_eq!(
                header_of(&response, header::CONTENT_TYPE),
                asset.content_type
            );
            assert_eq!(
                header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
                "nosniff"
            );
            assert_eq!(body_text(response).await.as_bytes(), asset.body);
        }
    }

    #[tokio::test]
    async fn unchanged_assets_revalidate_with_304() {
        let first = get("/assets/app.js", None).await;
        let etag = header_of(&first, header::ETAG).to_owned();
        assert_eq!(etag.len(), ETAG_LEN);
        assert_eq!(header_of(&first, header::CACHE_CONTROL), "no-cache");
        let again = get("/assets/app.js", Some(&format!("W/\"nope\", {etag}"))).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body_text(again).await.is_empty());
        let changed = get("/assets/app.js", Some("\"0000000000000000\"")).await;
        assert_eq!(changed.status(), StatusCode::OK);
        let etags: Vec<&str> = ASSETS.iter().map(|a| a.etag).collect();
        assert!(
            etags
                .iter()
                .all(|e| *e != INDEX.etag && e.len() == ETAG_LEN)
        );
    }

    #[tokio::test]
    async fn unknown_assets_are_json_404s() {
        for path in ["/assets/nope.js", "/assets/..%2Fsrc%2Fui.rs"] {
            let response = get(path, None).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert!(body_text(response).await.contains("\"not_found\""));
        }
    }

    /// The script builds the page from text nodes only; data never goes
    /// through an HTML parser.
    #[test]
    fn the_script_never_parses_data_as_html() {
        let script = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        for (line_number, line) in script.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ] {
                assert!(
                    !code.contains(sink),
                    "app.js line {}: {sink}",
                    line_number + 1
                );
            }
        }
    }
}

//! The HTTP surface: routes, extractors that turn every rejection into the
//! API's JSON errors, and the middleware stack.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use imagetag_shared::model::{ImageRecord, ImageStatus};
use imagetag_shared::ports::{SearchStore, TermKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::cursor::CursorCodec;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AccessPolicy;
use crate::error::{ApiError, ErrorBody};
use crate::media::{Media, Stats, UploadRequest, UploadTicket};
use crate::operations::{Accepted, Operations, RedriveReport, RedriveRequest};
use crate::params::{SearchParams, TagParams, validate_image_id};
use crate::search::{self, DEFAULT_EXAMINE_BUDGET, SearchPage};

pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The API only takes GETs; the limit keeps anyone from streaming a body
/// at it anyway.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the handlers share: the store, the cursor key and the settings of
/// the middleware.
#[derive(Clone)]
pub struct AppState {
    store: Arc<dyn SearchStore>,
    cursors: CursorCodec,
    examine_budget: usize,
    request_timeout: Duration,
    cors_origins: Vec<HeaderValue>,
    media: Option<Arc<Media>>,
    access: Arc<AccessPolicy>,
    operations: Arc<Operations>,
}

impl AppState {
    /// `cursor_secret` signs pagination cursors; replicas that share it
    /// accept each other's cursors.
    pub fn new(store: Arc<dyn SearchStore>, cursor_secret: &[u8]) -> Self {
        Self {
            store,
            cursors: CursorCodec::new(cursor_secret),
            examine_budget: DEFAULT_EXAMINE_BUDGET,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            cors_origins: Vec::new(),
            media: None,
            access: Arc::new(AccessPolicy::default()),
            operations: Arc::new(Operations::default()),
        }
    }

    /// Who may read and write; by default reads are open and writes need a
    /// credential (of which there is none until keys or OIDC are set up).
    pub fn with_access(mut self, access: AccessPolicy) -> Self {
        self.access = Arc::new(access);
        self
    }

    /// Enables deleting, re-tagging and re-driving.
    pub fn with_operations(mut self, operations: Operations) -> Self {
        self.operations = Arc::new(operations);
        self
    }

    /// Serves originals, thumbnails and uploads from `media`.
    pub fn with_media(mut self, media: Media) -> Self {
        self.media = Some(Arc::new(media));
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Browser origins allowed to call the API; none means same-origin only.
    pub fn with_cors_origins(mut self, origins: Vec<HeaderValue>) -> Self {
        self.cors_origins = origins;
        self
    }

    /// Postings (or records) one search request may examine before it
    /// returns what it has with a cursor.
    pub fn with_examine_budget(mut self, budget: usize) -> Self {
        self.examine_budget = budget.max(1);
        self
    }
}

/// Every route with its documentation: `routes!` registers a handler and
/// its `#[utoipa::path]` together, so nothing is served undocumented.
fn documented_routes(upload_limit: usize) -> OpenApiRouter<AppState> {
    let uploads = OpenApiRouter::new()
        .routes(routes!(finish_upload))
        .layer(DefaultBodyLimit::max(upload_limit));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(search_images))
        .routes(routes!(get_image))
        .routes(routes!(list_tags))
        .routes(routes!(get_stats))
        .routes(routes!(get_content))
        .routes(routes!(get_thumbnail))
        .routes(routes!(start_upload))
        .routes(routes!(delete_image))
        .routes(routes!(retag_image))
        .routes(routes!(redrive))
        .merge(uploads)
        .merge(crate::ui::routes())
}

/// The OpenAPI document of the API, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes(MAX_BODY_BYTES).split_for_parts().1
}

#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&BearerScheme),
    info(
        title = "imagetag",
        description = "Search images by the tags imagetag found in them, and upload new ones.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags(
        (name = "search", description = "Find images and tags"),
        (name = "media", description = "Originals, thumbnails and uploads"),
        (name = "operations", description = "Probes, metrics and this document"),
        (name = "admin", description = "Deleting, re-tagging and re-driving (need write rights)"),
        (name = "ui", description = "The web UI")
    )
)]
struct ApiDoc;

/// Declares the bearer scheme the write routes name in `security`.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`itk_…`) or, where OIDC is configured, a JWT from the issuer",
                    ))
                    .build(),
            ),
        );
    }
}

pub fn router(state: AppState) -> Router {
    let timeout = state.request_timeout;
    let cors_origins = state.cors_origins.clone();
    let body_limit = state.media.as_ref().map_or(MAX_BODY_BYTES, |m| {
        MAX_BODY_BYTES.max(m.max_upload_bytes as usize)
    });
    let access = Arc::clone(&state.access);
    let (routes, document) = documented_routes(body_limit).split_for_parts();
    let document = OpenApiJson(
        serde_json::to_string(&document)
            .unwrap_or_else(|err| unreachable!("an OpenAPI document always serializes: {err}"))
            .into(),
    );
    let router = routes
        // After routing, so the route template decides what a request
        // needs (and the metrics count refusals too).
        .route_layer(middleware::from_fn_with_state(access, crate::auth::access))
        // After routing, so the route template (not the raw path, which
        // holds ids) labels the latency histogram.
        .route_layer(middleware::from_fn(record_request_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(Extension(document))
        // Innermost first: the timeout covers only the handler, so errors
        // from the outer layers are never cut short.
        .layer(middleware::from_fn_with_state(timeout, enforce_timeout))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(middleware::map_response(payload_too_large_as_json));
    // Outside the limits, so browsers can read the error responses too.
    let router = if cors_origins.is_empty() {
        router
    } else {
        router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(cors_origins))
                .allow_methods([
                    Method::GET,
                    Method::HEAD,
                    Method::POST,
                    Method::PUT,
                    Method::DELETE,
                ])
                .allow_headers([
                    axum::http::header::CONTENT_TYPE,
                    axum::http::header::AUTHORIZATION,
                ])
                .max_age(Duration::from_secs(600)),
        )
    };
    router.layer(
        TraceLayer::new_for_http()
            .make_span_with(|request: &Request| {
                // The route template, not the path: ids would make every
                // span name unique.
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", MatchedPath::as_str);
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    route,
                    status = tracing::field::Empty,
                    latency_ms = tracing::field::Empty,
                )
            })
            .on_request(())
            .on_response(|response: &Response, latency: Duration, span: &Span| {
                span.record("status", response.status().as_u16());
                span.record(
                    "latency_ms",
                    u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                );
                tracing::info!("request completed");
            })
            // Server errors are logged where they arise, with their cause.
            .on_failure(()),
    )
}

/// `Query` whose rejections are the API's JSON 400s.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// `Path` whose rejections are the API's JSON 400s.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

async fn enforce_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    // tower-http's TimeoutLayer answers with an empty body; this keeps
    // timeouts in the same JSON shape as every other error.
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// The body limit answers in plain text; clients get the API's JSON shape.
async fn payload_too_large_as_json(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge.into_response()
    } else {
        response
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = ProbeStatus)))]
async fn healthz() -> Json<ProbeStatus> {
    Json(ProbeStatus { status: "ok" })
}

/// The index answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = ProbeStatus),
        (status = 503, description = "The index is unreachable", body = ErrorBody)
    ))]
async fn readyz(State(state): State<AppState>) -> Result<Json<ProbeStatus>, ApiError> {
    state.store.ping().await?;
    Ok(Json(ProbeStatus { status: "ready" }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct ProbeStatus {
    /// `ok` or `ready`.
    status: &'static str,
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String,
        content_type = "application/openmetrics-text")))]
async fn metrics() -> Response {
    imagetag_shared::metrics::handler().await.into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API",
        body = Object, content_type = "application/json")))]
async fn openapi_json(Extension(document): Extension<OpenApiJson>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document.0.to_string(),
    )
        .into_response()
}

/// The refusals every read route may answer before its handler runs
/// (`auth` and `ratelimit` layers). Documentation only: the layers answer
/// through `ApiError`.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
enum ReadRefusals {
    #[response(
        status = 401,
        description = "Reads need a credential here (IMAGETAG_AUTH_READS)"
    )]
    Unauthorized(ErrorBody),
    #[response(status = 429, description = "Over the rate limit; see Retry-After")]
    RateLimited(ErrorBody),
}

/// The refusals every write route may answer before its handler runs.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
enum WriteRefusals {
    #[response(status = 401, description = "No valid credential")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "The credential may not write")]
    Forbidden(ErrorBody),
    #[response(status = 429, description = "Over the rate limit; see Retry-After")]
    RateLimited(ErrorBody),
}

/// The document, serialized once when the router is built.
#[derive(Clone)]
struct OpenApiJson(Arc<str>);

/// Images by tags, category or status, best match first.
#[utoipa::path(get, path = "/v1/images", tag = "search",
    params(SearchParams),
    responses(
        (status = 200, description = "One page of results", body = SearchPage),
        (status = 400, description = "A parameter or the cursor is invalid", body = ErrorBody),
        ReadRefusals,
        (status = 503, description = "The index is unavailable or the request took too long", body = ErrorBody)
    ))]
async fn search_images(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<SearchPage>, ApiError> {
    let request = params.validate()?;
    let page = search::search(
        state.store.as_ref(),
        &state.cursors,
        state.examine_budget,
        request,
    )
    .await?;
    Ok(Json(page))
}

/// One image's record: labels with confidence, parents, categories and
/// boxes; text, faces, moderation; status and reason.
#[utoipa::path(get, path = "/v1/images/{id}", tag = "search",
    params(("id" = String, Path, description = "Image id: 32 lowercase hex digits")),
    responses(
        (status = 200, description = "The record", body = ImageRecord),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "No such image (or it was deleted)", body = ErrorBody),
        ReadRefusals,
        (status = 503, description = "The index is unavailable", body = ErrorBody)
    ))]
async fn get_image(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    validate_image_id(&id)?;
    let record = state
        .store
        .get_image(&id)
        .await?
        .filter(|record| record.status != ImageStatus::Deleted)
        .ok_or_else(|| ApiError::NotFound("no image with this id".into()))?;
    // The record as stored, less the indexer's bookkeeping; serialized
    // through the record's own serde attributes so formats cannot drift.
    let mut body = serde_json::to_value(&record)
        .map_err(|err| ApiError::Internal(format!("serializing image record: {err}")))?;
    if let Value::Object(fields) = &mut body {
        fields.remove("indexed_terms");
        fields.remove("revision");
    }
    Ok(Json(body))
}

#[derive(Serialize, utoipa::ToSchema)]
struct TagItem {
    name: String,
    kind: TermKind,
    image_count: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TagList {
    items: Vec<TagItem>,
}

/// Tags (or categories) with their image counts: most used first, or by
/// name for a prefix.
#[utoipa::path(get, path = "/v1/tags", tag = "search",
    params(TagParams),
    responses(
        (status = 200, description = "The tags", body = TagList),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
        ReadRefusals,
        (status = 503, description = "The index is unavailable", body = ErrorBody)
    ))]
async fn list_tags(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<TagParams>,
) -> Result<Json<TagList>, ApiError> {
    let request = params.validate()?;
    let terms = state
        .store
        .list_terms(request.kind, request.prefix.as_deref(), request.limit)
        .await?;
    let items = terms
        .into_iter()
        // Counts can lag a deletion; a term with no images finds nothing.
        .filter(|term| term.image_count > 0)
        .take(request.limit)
        .map(|term| TagItem {
            name: term.name,
            kind: term.kind,
            image_count: term.image_count,
        })
        .collect();
    Ok(Json(TagList { items }))
}

fn media(state: &AppState) -> Result<Arc<Media>, ApiError> {
    state
        .media
        .clone()
        .ok_or_else(|| ApiError::not_found("this deployment serves no image content"))
}

/// Totals by status, the most used tags and categories.
#[utoipa::path(get, path = "/v1/stats", tag = "search",
    responses(
        (status = 200, description = "The totals", body = Stats),
        ReadRefusals,
        (status = 503, description = "The index is unavailable", body = ErrorBody)
    ))]
async fn get_stats(State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(crate::media::stats(state.store.as_ref()).await?))
}

/// The original image, served so a browser shows it but never runs it.
#[utoipa::path(get, path = "/v1/images/{id}/content", tag = "media",
    params(("id" = String, Path, description = "Image id")),
    responses(
        (status = 200, description = "The original bytes with their image type",
            content(("image/jpeg"), ("image/png"), ("image/gif"), ("image/webp"),
                ("image/bmp"), ("image/tiff"), ("application/octet-stream"))),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "No such image, or no content served here", body = ErrorBody),
        ReadRefusals,
        (status = 503, description = "Storage is unavailable", body = ErrorBody)
    ))]
async fn get_content(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    validate_image_id(&id)?;
    media(&state)?.content(state.store.as_ref(), &id).await
}

/// The thumbnail the tagger made (JPEG, at most 320 px a side).
#[utoipa::path(get, path = "/v1/images/{id}/thumbnail", tag = "media",
    params(("id" = String, Path, description = "Image id")),
    responses(
        (status = 200, description = "The thumbnail", content(("image/jpeg"))),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "No thumbnail (yet)", body = ErrorBody),
        ReadRefusals,
        (status = 503, description = "Storage is unavailable", body = ErrorBody)
    ))]
async fn get_thumbnail(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    validate_image_id(&id)?;
    media(&state)?.thumbnail(&id).await
}

/// Announces an upload and returns where to PUT the bytes: a short-lived
/// presigned storage URL, or this API in one-process mode.
#[utoipa::path(post, path = "/v1/uploads", tag = "media",
    request_body = UploadRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Where to send the bytes", body = UploadTicket),
        (status = 400, description = "Not an image type, too large, or a malformed body", body = ErrorBody),
        WriteRefusals,
        (status = 404, description = "This deployment takes no uploads", body = ErrorBody),
        (status = 503, description = "Storage is unavailable", body = ErrorBody)
    ))]
async fn start_upload(
    State(state): State<AppState>,
    request: Result<Json<UploadRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = request?;
    let ticket = media(&state)?.start_upload(request).await?;
    Ok((StatusCode::CREATED, Json(ticket)).into_response())
}

/// The bytes of an announced upload (one-process mode), exactly as
/// announced: same content type, same size.
#[utoipa::path(put, path = "/v1/uploads/{token}", tag = "media",
    params(("token" = String, Path, description = "From the upload URL; signed and short-lived")),
    request_body(content(("image/jpeg"), ("image/png"), ("image/gif"), ("image/webp"),
        ("image/bmp"), ("image/tiff"))),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Stored; the image is on its way to being tagged"),
        (status = 400, description = "Invalid or expired token, or not what was announced", body = ErrorBody),
        WriteRefusals,
        (status = 404, description = "This deployment takes no uploads", body = ErrorBody),
        (status = 413, description = "Larger than the upload limit", body = ErrorBody),
        (status = 503, description = "Storage is unavailable", body = ErrorBody)
    ))]
async fn finish_upload(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    media(&state)?
        .finish_upload(&token, headers.get(axum::http::header::CONTENT_TYPE), body)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the image's object; the pipeline then unindexes it as it does
/// any deletion.
#[utoipa::path(delete, path = "/v1/images/{id}", tag = "admin",
    params(("id" = String, Path, description = "Image id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The object is deleted; the index follows", body = Accepted),
        (status = 400, description = "Malformed id", body = ErrorBody),
        WriteRefusals,
        (status = 404, description = "No such image, or deleting is not enabled here", body = ErrorBody),
        (status = 503, description = "Storage or the index is unavailable", body = ErrorBody)
    ))]
async fn delete_image(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    validate_image_id(&id)?;
    let accepted = state.operations.delete(state.store.as_ref(), &id).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// Tags the image again (after a model or policy change).
#[utoipa::path(post, path = "/v1/images/{id}/retag", tag = "admin",
    params(("id" = String, Path, description = "Image id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A tag job is queued", body = Accepted),
        (status = 400, description = "Malformed id", body = ErrorBody),
        WriteRefusals,
        (status = 404, description = "No such image, or re-tagging is not enabled here", body = ErrorBody),
        (status = 409, description = "The image is rejected or failed: upload it again", body = ErrorBody),
        (status = 503, description = "The queue or the index is unavailable", body = ErrorBody)
    ))]
async fn retag_image(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    validate_image_id(&id)?;
    let accepted = state.operations.retag(state.store.as_ref(), &id).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// Moves dead-lettered messages back to their queues after a fix.
#[utoipa::path(post, path = "/v1/admin/redrive", tag = "admin",
    request_body = RedriveRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Messages moved, by queue", body = RedriveReport),
        (status = 400, description = "Unknown queue or bad limit", body = ErrorBody),
        WriteRefusals,
        (status = 404, description = "No dead-letter queues configured here", body = ErrorBody),
        (status = 503, description = "A queue is unavailable", body = ErrorBody)
    ))]
async fn redrive(
    State(state): State<AppState>,
    request: Result<Json<RedriveRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<RedriveReport>, ApiError> {
    let Json(request) = request?;
    Ok(Json(state.operations.redrive(request).await?))
}

async fn record_request_metrics(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    imagetag_shared::metrics::metrics()
        .http_request_duration_seconds
        .get_or_create(&imagetag_shared::metrics::HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

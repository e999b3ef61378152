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
use axum::routing::{get, post, put};
use axum::{Json, Router};
use imagetag_shared::model::ImageStatus;
use imagetag_shared::ports::{SearchStore, TermKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::cursor::CursorCodec;
use crate::error::ApiError;
use crate::media::{Media, UploadRequest};
use crate::params::{SearchParams, TagParams, validate_image_id};
use crate::search::{self, DEFAULT_EXAMINE_BUDGET, SearchPage};

pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The API only takes GETs; the limit keeps anyone from streaming a body
/// at it anyway.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the handlers share: the store, the cursor key and the settings of
/// the middleware.
pub struct AppState<S> {
    store: Arc<S>,
    cursors: CursorCodec,
    examine_budget: usize,
    request_timeout: Duration,
    cors_origins: Vec<HeaderValue>,
    media: Option<Arc<Media>>,
}

// Manual: a derive would demand `S: Clone`, and the store is shared by Arc.
impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            cursors: self.cursors.clone(),
            examine_budget: self.examine_budget,
            request_timeout: self.request_timeout,
            cors_origins: self.cors_origins.clone(),
            media: self.media.clone(),
        }
    }
}

impl<S: SearchStore> AppState<S> {
    /// `cursor_secret` signs pagination cursors; replicas that share it
    /// accept each other's cursors.
    pub fn new(store: Arc<S>, cursor_secret: &[u8]) -> Self {
        Self {
            store,
            cursors: CursorCodec::new(cursor_secret),
            examine_budget: DEFAULT_EXAMINE_BUDGET,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            cors_origins: Vec::new(),
            media: None,
        }
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

pub fn router<S: SearchStore>(state: AppState<S>) -> Router {
    let timeout = state.request_timeout;
    let cors_origins = state.cors_origins.clone();
    let body_limit = state.media.as_ref().map_or(MAX_BODY_BYTES, |m| {
        MAX_BODY_BYTES.max(m.max_upload_bytes as usize)
    });
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(imagetag_shared::metrics::handler))
        .route("/v1/images", get(search_images::<S>))
        .route("/v1/images/{id}", get(get_image::<S>))
        .route("/v1/tags", get(list_tags::<S>))
        .route("/v1/stats", get(get_stats::<S>))
        .route("/v1/images/{id}/content", get(get_content::<S>))
        .route("/v1/images/{id}/thumbnail", get(get_thumbnail::<S>))
        .route("/v1/uploads", post(start_upload::<S>))
        .route(
            "/v1/uploads/{token}",
            put(finish_upload::<S>).layer(DefaultBodyLimit::max(body_limit)),
        )
        // After routing, so the route template (not the raw path, which
        // holds ids) labels the latency histogram.
        .route_layer(middleware::from_fn(record_request_metrics))
        .merge(crate::ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
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
                .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT])
                .allow_headers([axum::http::header::CONTENT_TYPE])
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

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz<S: SearchStore>(State(state): State<AppState<S>>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await?;
    Ok(Json(json!({ "status": "ready" })))
}

async fn search_images<S: SearchStore>(
    State(state): State<AppState<S>>,
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

async fn get_image<S: SearchStore>(
    State(state): State<AppState<S>>,
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

#[derive(Serialize)]
struct TagItem {
    name: String,
    kind: TermKind,
    image_count: u64,
}

#[derive(Serialize)]
struct TagList {
    items: Vec<TagItem>,
}

async fn list_tags<S: SearchStore>(
    State(state): State<AppState<S>>,
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

fn media<S>(state: &AppState<S>) -> Result<Arc<Media>, ApiError> {
    state
        .media
        .clone()
        .ok_or_else(|| ApiError::not_found("this deployment serves no image content"))
}

async fn get_stats<S: SearchStore>(
    State(state): State<AppState<S>>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(crate::media::stats(state.store.as_ref()).await?))
}

async fn get_content<S: SearchStore>(
    State(state): State<AppState<S>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    validate_image_id(&id)?;
    media(&state)?.content(state.store.as_ref(), &id).await
}

async fn get_thumbnail<S: SearchStore>(
    State(state): State<AppState<S>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    validate_image_id(&id)?;
    media(&state)?.thumbnail(&id).await
}

async fn start_upload<S: SearchStore>(
    State(state): State<AppState<S>>,
    request: Result<Json<UploadRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = request?;
    let ticket = media(&state)?.start_upload(request).await?;
    Ok((StatusCode::CREATED, Json(ticket)).into_response())
}

async fn finish_upload<S: SearchStore>(
    State(state): State<AppState<S>>,
    ApiPath(token): ApiPath<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    media(&state)?
        .finish_upload(&token, headers.get(axum::http::header::CONTENT_TYPE), body)
        .await?;
    Ok(StatusCode::NO_CONTENT)
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

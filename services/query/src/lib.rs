//! The query service: the HTTP API that searches the image index by tags,
//! category and status, serves originals and thumbnails, and takes uploads.
//! All logic lives here; `main.rs` only wires the AWS adapters.

pub mod auth;
pub mod config;
mod cursor;
pub mod error;
pub mod media;
pub mod operations;
pub mod params;
pub mod ratelimit;
mod routes;
pub mod search;
pub mod ui;

pub use error::ApiError;
pub use media::Media;
pub use routes::{
    ApiPath, ApiQuery, AppState, DEFAULT_REQUEST_TIMEOUT, MAX_BODY_BYTES, openapi, router,
};
pub use search::{DEFAULT_EXAMINE_BUDGET, ImageSummary, SearchPage};

//! The query service: a read-only HTTP API that searches the image index by
//! tags, category and status. All logic lives here; `main.rs` only wires the
//! DynamoDB store and the server.

pub mod config;
mod cursor;
pub mod error;
pub mod params;
mod routes;
pub mod search;

pub use error::ApiError;
pub use routes::{ApiPath, ApiQuery, AppState, DEFAULT_REQUEST_TIMEOUT, MAX_BODY_BYTES, router};
pub use search::{DEFAULT_EXAMINE_BUDGET, ImageSummary, SearchPage};

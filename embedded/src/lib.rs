//! Adapters for one-process mode (`imagetag up`): the same ports the AWS
//! adapters implement, on a local folder and SQLite files.

pub mod queue;
pub mod store;

pub use queue::{EmbeddedQueue, QueueDb};
pub use store::SqliteStore;

//! Adapters for one-process mode (`imagetag up`): the same ports the AWS
//! adapters implement, on a local folder and SQLite files.

pub mod bucket;
pub mod folder;
pub mod queue;
pub mod store;

pub use bucket::LocalBucket;
pub use folder::{FolderSource, ScanReport};
pub use queue::{EmbeddedQueue, QueueDb};
pub use store::SqliteStore;

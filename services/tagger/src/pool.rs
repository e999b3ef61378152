//! A bounded home for CPU-heavy work (decoding, re-encoding).
//!
//! At most one job per permit runs at a time, so a burst of large images
//! queues here instead of piling threads onto the machine, and the async
//! workers stay free to poll queues, extend visibility and answer probes.

use std::sync::Arc;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct CpuPool {
    permits: Arc<Semaphore>,
}

impl CpuPool {
    pub fn new(permits: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits.max(1))),
        }
    }

    /// One permit per available core.
    pub fn per_core() -> Self {
        Self::new(cores())
    }

    /// Runs owned `work` on the blocking pool once a permit is free. `Err`
    /// carries the panic message when `work` panicked.
    pub async fn run<T, F>(&self, work: F) -> Result<T, String>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // The semaphore is never closed, so acquiring can only wait.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|err| err.to_string())?;
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|err| err.to_string())
    }

    /// Runs `work` that borrows (a decoded image, say, too large to copy just
    /// to satisfy `'static`) once a permit is free. On the multi-threaded
    /// runtime the worker thread hands its other tasks off for the duration
    /// (`block_in_place`); a current-thread runtime (tests) runs it inline.
    pub async fn run_borrowed<T>(&self, work: impl FnOnce() -> T) -> T {
        let _permit = self.permits.acquire().await;
        match Handle::current().runtime_flavor() {
            RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
            _ => work(),
        }
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

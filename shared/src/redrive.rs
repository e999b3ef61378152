//! Moving dead-lettered messages back to their queue after a fix, shared by
//! `imagetag redrive` and the API's `POST /v1/admin/redrive`.

use std::time::Duration;

use crate::PortResult;
use crate::ports::Queue;

/// Receives from `dead_letter`, sends each message to `source`, then deletes
/// it: a crash in between duplicates a message (the services are
/// idempotent) but never loses one. StartMessageMoveTask would do the same
/// on AWS, but not every SQS-compatible server has it. Stops after `max`
/// messages or when a receive comes back empty; returns how many moved.
pub async fn redrive(dead_letter: &dyn Queue, source: &dyn Queue, max: usize) -> PortResult<usize> {
    let mut moved = 0;
    while moved < max {
        let want = (max - moved).min(10) as u32;
        let messages = dead_letter
            .receive(want, Duration::from_secs(1), Duration::from_secs(60))
            .await?;
        if messages.is_empty() {
            break;
        }
        let mut receipts = Vec::with_capacity(messages.len());
        for message in &messages {
            source.send(&message.body, &message.attributes).await?;
            receipts.push(message.receipt.clone());
        }
        dead_letter.delete(&receipts).await?;
        moved += messages.len();
    }
    Ok(moved)
}

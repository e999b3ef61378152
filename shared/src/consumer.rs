//! The queue consumer every service runs: long polling, bounded concurrency,
//! visibility extension while a message is worked on, in-place retries with
//! backoff for transient failures, delayed redelivery (and so, through the
//! queue's redrive policy, the dead-letter queue) for permanent ones, batched
//! deletes, and a clean stop that finishes or releases in-flight messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field};

use crate::error::PortError;
use crate::metrics;
use crate::ports::{Queue, QueueMessage};
use crate::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Will likely succeed later (dependency down, throttled, lost a race):
    /// retried in place, the message kept invisible meanwhile, so a blip
    /// never costs a receive and never dead-letters a message.
    #[error("{0}")]
    Transient(String),
    /// Will not succeed as things are (malformed body, object gone, image
    /// undecodable): redelivered a bounded number of times, then moved to
    /// the dead-letter queue by the queue's redrive policy.
    #[error("{0}")]
    Permanent(String),
}

impl From<PortError> for HandleError {
    fn from(err: PortError) -> Self {
        if err.is_transient() {
            Self::Transient(err.to_string())
        } else {
            Self::Permanent(err.to_string())
        }
    }
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, message: &QueueMessage) -> Result<(), HandleError>;
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub max_in_flight: usize,
    pub batch_size: u32,
    pub receive_wait: Duration,
    pub visibility: Duration,
    pub shutdown_grace: Duration,
    /// Cap of the in-place backoff between transient retries.
    pub max_retry_delay: Duration,
    /// Cap of the redelivery delay after a permanent failure.
    pub max_redelivery_delay: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            batch_size: 10,
            receive_wait: Duration::from_secs(20),
            visibility: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(25),
            max_retry_delay: Duration::from_secs(20),
            max_redelivery_delay: Duration::from_secs(60),
        }
    }
}

/// Exponential backoff with jitter: `base · 2^attempt`, capped, then scaled
/// by a random factor in [0.5, 1) so retrying workers spread out.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exponential = base.saturating_mul(1u32 << attempt.min(16));
    let capped = exponential.min(cap);
    capped.mul_f64(rand::rng().random_range(0.5..1.0))
}

/// Runs until `shutdown` is cancelled, then returns once every received
/// message is finished or released.
pub async fn run<Q: Queue + ?Sized, H: Handler>(
    name: &'static str,
    queue: Arc<Q>,
    handler: Arc<H>,
    config: ConsumerConfig,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_in_flight));
    let in_flight: Arc<Mutex<HashMap<String, String>>> = Default::default();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<String>();
    let deleter = tokio::spawn(delete_acknowledged(name, queue.clone(), ack_rx));
    let mut tasks = JoinSet::new();
    let mut receive_failures = 0u32;

    tracing::info!(
        queue = name,
        max_in_flight = config.max_in_flight,
        "consumer started"
    );
    while !shutdown.is_cancelled() {
        while tasks.try_join_next().is_some() {}
        let free = slots.available_permits();
        if free == 0 {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        let want = (free as u32).min(config.batch_size);
        // Not raced against shutdown: a dropped receive would hide the
        // messages it got until their visibility timeout.
        let messages = match queue
            .receive(want, config.receive_wait, config.visibility)
            .await
        {
            Ok(messages) => {
                receive_failures = 0;
                messages
            }
            Err(err) => {
                receive_failures += 1;
                let delay = backoff(
                    receive_failures,
                    Duration::from_millis(200),
                    config.max_retry_delay,
                );
                tracing::warn!(queue = name, error = %err, retry_in_ms = delay.as_millis() as u64, "receive failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
        };
        metrics::metrics()
            .messages_received
            .get_or_create(&metrics::queue(name))
            .inc_by(messages.len() as u64);
        for message in messages {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Cannot happen (we asked for at most `free`), but if it did
                // the message must not be held hostage.
                release(name, queue.as_ref(), &message.receipt).await;
                continue;
            };
            if let Ok(mut map) = in_flight.lock() {
                map.insert(message.id.clone(), message.receipt.clone());
            }
            let span = tracing::info_span!(
                "message",
                queue = name,
                message_id = %message.id,
                receive_count = message.receive_count,
                trace_id = field::Empty,
            );
            telemetry::adopt(&span, &message.attributes);
            span.record("trace_id", telemetry::trace_id(&span));
            let work = process(
                name,
                queue.clone(),
                handler.clone(),
                message,
                config.clone(),
                shutdown.clone(),
                ack_tx.clone(),
                in_flight.clone(),
            );
            tasks.spawn(
                async move {
                    work.await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    tracing::info!(
        queue = name,
        in_flight = tasks.len(),
        "stopping: finishing in-flight messages"
    );
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let unfinished: Vec<String> = in_flight
            .lock()
            .map(|map| map.values().cloned().collect())
            .unwrap_or_default();
        tracing::warn!(
            queue = name,
            released = unfinished.len(),
            "grace period over: releasing unfinished messages"
        );
        for receipt in unfinished {
            release(name, queue.as_ref(), &receipt).await;
        }
    }
    drop(ack_tx);
    let _ = deleter.await;
    tracing::info!(queue = name, "consumer stopped");
}

#[allow(clippy::too_many_arguments)]
async fn process<Q: Queue + ?Sized, H: Handler>(
    name: &'static str,
    queue: Arc<Q>,
    handler: Arc<H>,
    message: QueueMessage,
    config: ConsumerConfig,
    shutdown: CancellationToken,
    acks: mpsc::UnboundedSender<String>,
    in_flight: Arc<Mutex<HashMap<String, String>>>,
) {
    let started = std::time::Instant::now();
    let labels = metrics::queue(name);
    let in_flight_gauge = metrics::metrics()
        .messages_in_flight
        .get_or_create(&labels)
        .clone();
    in_flight_gauge.inc();
    let attempts = async {
        let mut attempt = 0u32;
        loop {
            match handler.handle(&message).await {
                Err(HandleError::Transient(reason)) => {
                    metrics::metrics()
                        .messages_failed
                        .get_or_create(&metrics::FailureLabels {
                            queue: name.to_owned(),
                            kind: "transient".to_owned(),
                        })
                        .inc();
                    attempt += 1;
                    let delay =
                        backoff(attempt, Duration::from_millis(100), config.max_retry_delay);
                    tracing::warn!(%reason, attempt, retry_in_ms = delay.as_millis() as u64, "transient failure; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
                other => return Some(other),
            }
        }
    };
    // Keep the message invisible for as long as it is being worked on. The
    // heartbeat is a task of its own: a handler that blocks its thread for a
    // while (`block_in_place` around a large resize, say) would otherwise
    // stall the extensions with it and let the message be delivered twice.
    let stop_heartbeat = CancellationToken::new();
    let mut heartbeat = AbortOnDrop(tokio::spawn(
        keep_invisible(
            queue.clone(),
            message.receipt.clone(),
            config.visibility,
            stop_heartbeat.clone(),
        )
        .instrument(tracing::Span::current()),
    ));
    let outcome = attempts.await;
    // Stopped, not aborted: an extension already sent must land before the
    // outcome's delete, redelivery delay or release, never after it.
    stop_heartbeat.cancel();
    let _ = (&mut heartbeat.0).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    in_flight_gauge.dec();
    let registry = metrics::metrics();
    registry
        .message_processing_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Some(Ok(())) => {
            registry.messages_processed.get_or_create(&labels).inc();
            tracing::debug!(elapsed_ms, "message processed");
            let _ = acks.send(message.receipt.clone());
        }
        Some(Err(err)) => {
            registry
                .messages_failed
                .get_or_create(&metrics::FailureLabels {
                    queue: name.to_owned(),
                    kind: "permanent".to_owned(),
                })
                .inc();
            let delay = backoff(
                message.receive_count.saturating_sub(1),
                Duration::from_secs(1),
                config.max_redelivery_delay,
            );
            tracing::error!(
                reason = %err,
                elapsed_ms,
                redeliver_in_s = delay.as_secs(),
                "message failed; it is redelivered until the redrive policy moves it to the dead-letter queue"
            );
            if let Err(err) = queue.change_visibility(&message.receipt, delay).await {
                tracing::warn!(error = %err, "could not schedule redelivery");
            }
        }
        None => {
            tracing::info!(queue = name, "released during shutdown");
            release(name, queue.as_ref(), &message.receipt).await;
        }
    }
    if let Ok(mut map) = in_flight.lock() {
        map.remove(&message.id);
    }
}

/// Extends the message's visibility every half timeout until `stop`.
async fn keep_invisible<Q: Queue + ?Sized>(
    queue: Arc<Q>,
    receipt: String,
    visibility: Duration,
    stop: CancellationToken,
) {
    let period = visibility / 2;
    let mut extend = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = extend.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(err) = queue.change_visibility(&receipt, visibility).await {
            tracing::warn!(error = %err, "could not extend visibility");
        }
    }
}

/// Aborts the task when dropped, so the heartbeat also ends when the
/// message's processing is itself aborted (at the end of the shutdown grace).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn release<Q: Queue + ?Sized>(name: &str, queue: &Q, receipt: &str) {
    if let Err(err) = queue.change_visibility(receipt, Duration::ZERO).await {
        tracing::warn!(queue = name, error = %err, "could not release message; it reappears after its visibility timeout");
    }
}

async fn delete_acknowledged<Q: Queue + ?Sized>(
    name: &'static str,
    queue: Arc<Q>,
    mut acks: mpsc::UnboundedReceiver<String>,
) {
    let mut batch = Vec::with_capacity(10);
    // recv_many takes whatever is queued (at least one), so deletes batch
    // up under load without waiting when idle.
    while acks.recv_many(&mut batch, 10).await > 0 {
        if let Err(err) = queue.delete(&batch).await {
            tracing::warn!(queue = name, error = %err, count = batch.len(), "delete failed; the messages will be redelivered and handled idempotently");
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 0..20 {
            let delay = backoff(attempt, base, cap);
            let ceiling = base.saturating_mul(1 << attempt.min(16)).min(cap);
            assert!(
                delay >= ceiling / 2 && delay < ceiling,
                "attempt {attempt}: {delay:?}"
            );
        }
    }

    #[test]
    fn port_errors_map_to_retry_classes() {
        assert!(matches!(
            HandleError::from(PortError::Unavailable("down".into())),
            HandleError::Transient(_)
        ));
        assert!(matches!(
            HandleError::from(PortError::Invalid("bad".into())),
            HandleError::Permanent(_)
        ));
        assert!(matches!(
            HandleError::from(PortError::NotFound("gone".into())),
            HandleError::Permanent(_)
        ));
    }
}

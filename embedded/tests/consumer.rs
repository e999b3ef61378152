//! The shared queue consumer against the durable embedded queue: slow work
//! keeps its message invisible, transient failures retry in place without
//! costing a receive, permanent ones dead-letter after the bounded
//! redeliveries, and a stop finishes or releases what is in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use imagetag_embedded::QueueDb;
use imagetag_shared::consumer::{self, ConsumerConfig, HandleError, Handler};
use imagetag_shared::ports::{Queue, QueueMessage};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recorder {
    calls: AtomicUsize,
    concurrent: AtomicUsize,
    max_concurrent: AtomicUsize,
    seen: Mutex<Vec<(String, u32)>>,
}

struct Scripted {
    recorder: Arc<Recorder>,
    work: Duration,
    /// Transient failures before success, per message.
    transient_failures: usize,
    permanent: bool,
}

#[async_trait]
impl Handler for Scripted {
    async fn handle(&self, message: &QueueMessage) -> Result<(), HandleError> {
        let call = self.recorder.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.recorder.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        self.recorder
            .max_concurrent
            .fetch_max(now, Ordering::SeqCst);
        self.recorder
            .seen
            .lock()
            .await
            .push((message.body.clone(), message.receive_count));
        tokio::time::sleep(self.work).await;
        self.recorder.concurrent.fetch_sub(1, Ordering::SeqCst);
        if self.permanent {
            return Err(HandleError::Permanent("never works".into()));
        }
        if call < self.transient_failures {
            return Err(HandleError::Transient("dependency down".into()));
        }
        Ok(())
    }
}

fn config(visibility: Duration) -> ConsumerConfig {
    ConsumerConfig {
        max_in_flight: 4,
        receive_wait: Duration::from_millis(200),
        visibility,
        shutdown_grace: Duration::from_secs(5),
        max_retry_delay: Duration::from_millis(200),
        max_redelivery_delay: Duration::from_millis(300),
        ..Default::default()
    }
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_work_is_extended_not_redelivered_even_with_two_consumers() {
    let dir = tempfile::tempdir().expect("dir");
    let db = QueueDb::open(&dir.path().join("q.db")).expect("db");
    let queue = Arc::new(db.queue("jobs", Some("jobs-dlq"), 5));
    queue.send("slow", &HashMap::new()).await.expect("send");
    let recorder = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    // Work takes three visibility timeouts; without extension the second
    // consumer would receive the message while the first still works on it.
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let handler = Arc::new(Scripted {
            recorder: recorder.clone(),
            work: Duration::from_millis(3000),
            transient_failures: 0,
            permanent: false,
        });
        consumers.push(tokio::spawn(consumer::run(
            "jobs",
            queue.clone(),
            handler,
            config(Duration::from_secs(1)),
            shutdown.clone(),
        )));
    }
    wait_until("the message to be acknowledged", async || {
        db.depth("jobs").await.expect("depth") == 0
    })
    .await;
    shutdown.cancel();
    for c in consumers {
        c.await.expect("consumer");
    }
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 1, "handled once");
    assert_eq!(recorder.max_concurrent.load(Ordering::SeqCst), 1);
}

/// Blocks its worker thread (as the tagger's resize does with
/// `block_in_place`) for longer than the visibility timeout.
struct Blocking {
    calls: Arc<AtomicUsize>,
    work: Duration,
}

#[async_trait]
impl Handler for Blocking {
    async fn handle(&self, _message: &QueueMessage) -> Result<(), HandleError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::task::block_in_place(|| std::thread::sleep(self.work));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_blocking_its_thread_still_keeps_its_message_invisible() {
    let dir = tempfile::tempdir().expect("dir");
    let db = QueueDb::open(&dir.path().join("q.db")).expect("db");
    let queue = Arc::new(db.queue("jobs", Some("jobs-dlq"), 5));
    queue.send("blocking", &HashMap::new()).await.expect("send");
    let calls = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let handler = Arc::new(Blocking {
            calls: calls.clone(),
            work: Duration::from_millis(3000),
        });
        consumers.push(tokio::spawn(consumer::run(
            "jobs",
            queue.clone(),
            handler,
            config(Duration::from_secs(1)),
            shutdown.clone(),
        )));
    }
    wait_until("the message to be acknowledged", async || {
        db.depth("jobs").await.expect("depth") == 0
    })
    .await;
    shutdown.cancel();
    for c in consumers {
        c.await.expect("consumer");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "handled once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_retry_in_place_and_permanent_ones_dead_letter() {
    let dir = tempfile::tempdir().expect("dir");
    let db = QueueDb::open(&dir.path().join("q.db")).expect("db");

    let flaky = Arc::new(db.queue("flaky", Some("flaky-dlq"), 2));
    flaky.send("blip", &HashMap::new()).await.expect("send");
    let recorder = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consumer::run(
        "flaky",
        flaky.clone(),
        Arc::new(Scripted {
            recorder: recorder.clone(),
            work: Duration::ZERO,
            transient_failures: 5,
            permanent: false,
        }),
        config(Duration::from_secs(5)),
        shutdown.clone(),
    ));
    wait_until("the flaky message to succeed", async || {
        db.depth("flaky").await.expect("depth") == 0
    })
    .await;
    shutdown.cancel();
    run.await.expect("consumer");
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 6);
    assert!(
        recorder
            .seen
            .lock()
            .await
            .iter()
            .all(|(_, count)| *count == 1),
        "five transient failures cost no redelivery"
    );
    assert_eq!(db.depth("flaky-dlq").await.expect("depth"), 0);

    let poison = Arc::new(db.queue("poison", Some("poison-dlq"), 3));
    poison.send("bad", &HashMap::new()).await.expect("send");
    let recorder = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consumer::run(
        "poison",
        poison.clone(),
        Arc::new(Scripted {
            recorder: recorder.clone(),
            work: Duration::ZERO,
            transient_failures: 0,
            permanent: true,
        }),
        config(Duration::from_secs(5)),
        shutdown.clone(),
    ));
    wait_until("the poison message in the dead-letter queue", async || {
        db.depth("poison-dlq").await.expect("depth") == 1
    })
    .await;
    shutdown.cancel();
    run.await.expect("consumer");
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        3,
        "bounded redeliveries"
    );
    assert_eq!(db.depth("poison").await.expect("depth"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_releases_unfinished_work_for_the_next_consumer() {
    let dir = tempfile::tempdir().expect("dir");
    let db = QueueDb::open(&dir.path().join("q.db")).expect("db");
    let queue = Arc::new(db.queue("jobs", None, 5));
    for i in 0..3 {
        queue
            .send(&format!("job-{i}"), &HashMap::new())
            .await
            .expect("send");
    }
    let recorder = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let mut short_grace = config(Duration::from_secs(60));
    short_grace.shutdown_grace = Duration::from_millis(200);
    let run = tokio::spawn(consumer::run(
        "jobs",
        queue.clone(),
        Arc::new(Scripted {
            recorder: recorder.clone(),
            work: Duration::from_secs(30),
            transient_failures: 0,
            permanent: false,
        }),
        short_grace,
        shutdown.clone(),
    ));
    wait_until("all three jobs in flight", async || {
        recorder.concurrent.load(Ordering::SeqCst) == 3
    })
    .await;
    shutdown.cancel();
    run.await.expect("consumer stops after its grace period");
    // Released, not left hidden for the 60 s visibility timeout.
    let again = queue
        .receive(10, Duration::ZERO, Duration::from_secs(60))
        .await
        .expect("receive");
    assert_eq!(
        again.len(),
        3,
        "every unfinished message is available again"
    );
}

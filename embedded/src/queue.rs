//! A durable queue on SQLite with the SQS semantics the consumers rely on:
//! at-least-once delivery, a visibility timeout per receive, a new receipt
//! per delivery, a receive count, and a move to a dead-letter queue once a
//! message has been received more than `max_receives` times. Everything is
//! in one file, so a crash at any point loses nothing: unacknowledged
//! messages simply become visible again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use imagetag_shared::ports::{Queue, QueueMessage};
use imagetag_shared::{PortError, PortResult};
use rusqlite::{Connection, params};
use tokio::sync::Notify;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    body          TEXT NOT NULL,
    attributes    TEXT NOT NULL,
    visible_at    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, id);
CREATE INDEX IF NOT EXISTS messages_receipt ON messages (receipt);
";

/// How often a waiting receive re-checks for messages whose visibility
/// timeout ran out (sends and releases wake it at once).
const RECHECK: Duration = Duration::from_millis(250);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn db_error(err: rusqlite::Error) -> PortError {
    PortError::Unavailable(format!("queue database: {err}"))
}

/// The database behind every embedded queue of one process.
#[derive(Clone)]
pub struct QueueDb {
    connection: Arc<Mutex<Connection>>,
    wakers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl QueueDb {
    pub fn open(path: &Path) -> PortResult<Self> {
        let connection = Connection::open(path).map_err(db_error)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
            )
            .map_err(db_error)?;
        connection.execute_batch(SCHEMA).map_err(db_error)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            wakers: Default::default(),
        })
    }

    /// A handle on queue `name`; after `max_receives` deliveries a message
    /// moves to `dead_letter` (when given).
    pub fn queue(&self, name: &str, dead_letter: Option<&str>, max_receives: u32) -> EmbeddedQueue {
        EmbeddedQueue {
            db: self.clone(),
            name: name.to_owned(),
            dead_letter: dead_letter.map(str::to_owned),
            max_receives: max_receives.max(1),
        }
    }

    fn waker(&self, name: &str) -> Arc<Notify> {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        wakers.entry(name.to_owned()).or_default().clone()
    }

    pub(crate) async fn run<T, F>(&self, work: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> PortResult<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .map_err(|_| PortError::Unavailable("queue connection poisoned".into()))?;
            work(&mut connection)
        })
        .await
        .map_err(|err| PortError::Unavailable(format!("queue task: {err}")))?
    }

    /// Enqueues within a caller's transaction, so a producer can record its
    /// own progress and the message atomically (the folder scanner does).
    pub fn send_in(
        tx: &rusqlite::Transaction<'_>,
        queue: &str,
        body: &str,
        attributes: &HashMap<String, String>,
    ) -> PortResult<()> {
        let attributes = serde_json::to_string(attributes).map_err(PortError::invalid)?;
        tx.execute(
            "INSERT INTO messages (queue, body, attributes, visible_at) VALUES (?1, ?2, ?3, ?4)",
            params![queue, body, attributes, now_ms()],
        )
        .map_err(db_error)?;
        Ok(())
    }

    /// Wakes receivers of `queue` (after a send made outside `Queue::send`).
    pub fn wake(&self, queue: &str) {
        self.waker(queue).notify_waiters();
    }

    /// Messages in `queue`, visible or not (for tests and progress bars).
    pub async fn depth(&self, queue: &str) -> PortResult<u64> {
        let queue = queue.to_owned();
        self.run(move |db| {
            db.query_row(
                "SELECT COUNT(*) FROM messages WHERE queue = ?1",
                [queue],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(db_error)
        })
        .await
    }
}

#[derive(Clone)]
pub struct EmbeddedQueue {
    db: QueueDb,
    name: String,
    dead_letter: Option<String>,
    max_receives: u32,
}

impl EmbeddedQueue {
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn take(&self, max: u32, visibility: Duration) -> PortResult<Vec<QueueMessage>> {
        let name = self.name.clone();
        let dead_letter = self.dead_letter.clone();
        let max_receives = self.max_receives as i64;
        let visibility_ms = visibility.as_millis().min(i64::MAX as u128) as i64;
        let moved_to_dlq = self
            .db
            .run(move |db| {
                let tx = db.transaction().map_err(db_error)?;
                let now = now_ms();
                let candidates: Vec<(i64, String, String, i64)> = {
                    let mut statement = tx
                        .prepare_cached(
                            "SELECT id, body, attributes, receive_count FROM messages
                             WHERE queue = ?1 AND visible_at <= ?2
                             ORDER BY visible_at, id LIMIT ?3",
                        )
                        .map_err(db_error)?;
                    statement
                        .query_map(params![name, now, (max as i64) * 2], |row| {
                            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                        })
                        .map_err(db_error)?
                        .collect::<Result<_, _>>()
                        .map_err(db_error)?
                };
                let mut messages = Vec::new();
                let mut moved = false;
                for (id, body, attributes, receive_count) in candidates {
                    if messages.len() as u32 >= max {
                        break;
                    }
                    if receive_count >= max_receives
                        && let Some(dead_letter) = &dead_letter
                    {
                        // As SQS does: the receive that would exceed the
                        // limit moves the message instead of delivering it.
                        tx.execute(
                            "UPDATE messages SET queue = ?1, receive_count = 0, receipt = NULL,
                             visible_at = ?2 WHERE id = ?3",
                            params![dead_letter, now, id],
                        )
                        .map_err(db_error)?;
                        tracing::warn!(queue = %name, dead_letter = %dead_letter, message_id = id, receive_count, "moved to the dead-letter queue");
                        moved = true;
                        continue;
                    }
                    let receipt = format!("{id}-{:016x}", rand::random::<u64>());
                    tx.execute(
                        "UPDATE messages SET receive_count = receive_count + 1, receipt = ?1,
                         visible_at = ?2 WHERE id = ?3",
                        params![receipt, now + visibility_ms, id],
                    )
                    .map_err(db_error)?;
                    let attributes: HashMap<String, String> =
                        serde_json::from_str(&attributes).unwrap_or_default();
                    messages.push(QueueMessage {
                        id: id.to_string(),
                        body,
                        receipt,
                        attributes,
                        receive_count: (receive_count + 1) as u32,
                    });
                }
                tx.commit().map_err(db_error)?;
                Ok((messages, moved))
            })
            .await?;
        let (messages, moved) = moved_to_dlq;
        if moved && let Some(dead_letter) = &self.dead_letter {
            self.db.wake(dead_letter);
        }
        Ok(messages)
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> PortResult<Vec<QueueMessage>> {
        let deadline = tokio::time::Instant::now() + wait;
        let waker = self.db.waker(&self.name);
        loop {
            // Register interest before looking, so a send between the look
            // and the wait still wakes us.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self.take(max.max(1), visibility).await?;
            let now = tokio::time::Instant::now();
            if !messages.is_empty() || now >= deadline {
                return Ok(messages);
            }
            let pause = RECHECK.min(deadline - now);
            let _ = tokio::time::timeout(pause, notified).await;
        }
    }

    async fn send(&self, body: &str, attributes: &HashMap<String, String>) -> PortResult<()> {
        let name = self.name.clone();
        let body = body.to_owned();
        let attributes = attributes.clone();
        self.db
            .run(move |db| {
                let tx = db.transaction().map_err(db_error)?;
                QueueDb::send_in(&tx, &name, &body, &attributes)?;
                tx.commit().map_err(db_error)
            })
            .await?;
        self.db.wake(&self.name);
        Ok(())
    }

    async fn delete(&self, receipts: &[String]) -> PortResult<()> {
        let receipts = receipts.to_vec();
        self.db
            .run(move |db| {
                let tx = db.transaction().map_err(db_error)?;
                for receipt in receipts {
                    // A stale receipt (the message was redelivered since)
                    // deletes nothing, as on SQS.
                    tx.execute("DELETE FROM messages WHERE receipt = ?1", [receipt])
                        .map_err(db_error)?;
                }
                tx.commit().map_err(db_error)
            })
            .await
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> PortResult<()> {
        let receipt = receipt.to_owned();
        let timeout_ms = timeout.as_millis().min(i64::MAX as u128) as i64;
        self.db
            .run(move |db| {
                db.execute(
                    "UPDATE messages SET visible_at = ?1 WHERE receipt = ?2",
                    params![now_ms() + timeout_ms, receipt],
                )
                .map_err(db_error)?;
                Ok(())
            })
            .await?;
        if timeout.is_zero() {
            self.db.wake(&self.name);
        }
        Ok(())
    }

    async fn ping(&self) -> PortResult<()> {
        self.db
            .run(|db| db.execute_batch("SELECT 1").map_err(db_error))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues() -> (tempfile::TempDir, QueueDb) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = QueueDb::open(&dir.path().join("q.db")).expect("open");
        (dir, db)
    }

    const NONE: Duration = Duration::ZERO;

    #[tokio::test]
    async fn delivered_messages_stay_hidden_until_deleted_or_their_timeout() {
        let (_dir, db) = queues();
        let q = db.queue("jobs", None, 5);
        let attrs = HashMap::from([("traceparent".to_owned(), "00-abc".to_owned())]);
        q.send("one", &attrs).await.expect("send");
        let got = q
            .receive(10, NONE, Duration::from_millis(300))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attributes, attrs);
        assert_eq!(got[0].receive_count, 1);
        assert!(
            q.receive(10, NONE, Duration::from_secs(1))
                .await
                .expect("receive")
                .is_empty()
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        let again = q
            .receive(10, NONE, Duration::from_secs(30))
            .await
            .expect("receive");
        assert_eq!(again.len(), 1, "visible again after the timeout");
        assert_eq!(again[0].receive_count, 2);
        // The first delivery's receipt is stale now and deletes nothing.
        q.delete(&[got[0].receipt.clone()]).await.expect("delete");
        assert_eq!(db.depth("jobs").await.expect("depth"), 1);
        q.delete(&[again[0].receipt.clone()]).await.expect("delete");
        assert_eq!(db.depth("jobs").await.expect("depth"), 0);
    }

    #[tokio::test]
    async fn messages_move_to_the_dead_letter_queue_after_max_receives() {
        let (_dir, db) = queues();
        let q = db.queue("jobs", Some("jobs-dlq"), 2);
        q.send("poison", &HashMap::new()).await.expect("send");
        for _ in 0..2 {
            let got = q
                .receive(1, NONE, Duration::from_secs(30))
                .await
                .expect("receive");
            assert_eq!(got.len(), 1);
            q.change_visibility(&got[0].receipt, NONE)
                .await
                .expect("release");
        }
        assert!(
            q.receive(1, NONE, Duration::from_secs(30))
                .await
                .expect("receive")
                .is_empty()
        );
        let dlq = db.queue("jobs-dlq", None, 5);
        let dead = dlq
            .receive(1, NONE, Duration::from_secs(30))
            .await
            .expect("receive");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "poison");
    }

    #[tokio::test]
    async fn a_waiting_receive_wakes_on_send() {
        let (_dir, db) = queues();
        let q = db.queue("jobs", None, 5);
        let sender = q.clone();
        let started = std::time::Instant::now();
        let send = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sender.send("late", &HashMap::new()).await
        });
        let got = q
            .receive(1, Duration::from_secs(10), Duration::from_secs(30))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken before the wait ran out"
        );
        send.await.expect("join").expect("send");
    }

    #[tokio::test]
    async fn messages_survive_reopening_the_database() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        {
            let db = QueueDb::open(&path).expect("open");
            let q = db.queue("jobs", None, 5);
            q.send("durable", &HashMap::new()).await.expect("send");
            // Received but never acknowledged: a crash right here.
            assert_eq!(
                q.receive(1, NONE, Duration::from_millis(100))
                    .await
                    .expect("receive")
                    .len(),
                1
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let db = QueueDb::open(&path).expect("reopen");
        let got = db
            .queue("jobs", None, 5)
            .receive(1, NONE, Duration::from_secs(30))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "durable");
    }
}

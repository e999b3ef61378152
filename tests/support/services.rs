//! The four service binaries as real processes, pointed at a moto server and
//! a deployed stack. Their output goes to files under `target/e2e-logs/` so a
//! failing test can show what each service said.

use std::collections::HashMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::moto::{Moto, REGION};
use super::stack::Stack;

pub const SERVICES: [&str; 4] = ["ingest", "tagger", "indexer", "query"];

/// The indexer's environment for tests that check tag counts under
/// duplicated or concurrent index updates. moto applies TransactWriteItems
/// by snapshotting the tables and restoring the snapshot when a condition
/// fails, which also undoes the writes other requests made meanwhile (lost
/// tag-count increments); DynamoDB isolates transactions. One commit at a
/// time keeps that moto limitation from showing as lost counts.
pub const ONE_COMMIT_AT_A_TIME: [(&str, &str); 1] = [("IMAGETAG_MAX_IN_FLIGHT", "1")];

/// Directory holding the workspace's built binaries (`target/debug`), found
/// from the test executable (`target/debug/deps/…`).
pub fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("test executable lives in target/<profile>/deps")
}

pub fn binary(name: &str) -> PathBuf {
    let path = binary_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the service binaries first with `cargo build --workspace --bins` \
         (the README's test command does this)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

pub struct ServiceProcess {
    pub name: String,
    pub health_port: u16,
    pub log_path: PathBuf,
    child: Child,
}

impl ServiceProcess {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident memory so far (`VmHWM`), in KiB; `None` once exited.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.child.id())
    }

    /// SIGTERM, as Kubernetes sends before stopping a pod; waits for exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything a test needs to run the pipeline on moto.
pub struct Pipeline {
    pub env: HashMap<String, String>,
    pub processes: Vec<ServiceProcess>,
    pub query_port: u16,
    pub log_dir: PathBuf,
    /// A key with write rights the query service accepts (uploads and the
    /// other write endpoints need one).
    pub api_key: String,
}

impl Pipeline {
    /// The environment every service reads, from the stack's outputs.
    pub fn environment(moto: &Moto, stack: &Stack) -> HashMap<String, String> {
        let pairs = [
            ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("IMAGETAG_S3_FORCE_PATH_STYLE", "true"),
            ("IMAGETAG_EVENTS_QUEUE_URL", stack.output("EventsQueueUrl")),
            ("IMAGETAG_TAG_QUEUE_URL", stack.output("TagQueueUrl")),
            ("IMAGETAG_INDEX_QUEUE_URL", stack.output("IndexQueueUrl")),
            (
                "IMAGETAG_EVENTS_DLQ_URL",
                stack.output("EventsDeadLetterQueueUrl"),
            ),
            (
                "IMAGETAG_TAG_DLQ_URL",
                stack.output("TagDeadLetterQueueUrl"),
            ),
            (
                "IMAGETAG_INDEX_DLQ_URL",
                stack.output("IndexDeadLetterQueueUrl"),
            ),
            ("IMAGETAG_IMAGES_TABLE", stack.output("ImagesTableName")),
            ("IMAGETAG_POSTINGS_TABLE", stack.output("PostingsTableName")),
            ("IMAGETAG_TAGS_TABLE", stack.output("TagsTableName")),
            ("IMAGETAG_TAGGER_BACKEND", "rekognition"),
            ("IMAGETAG_BUCKET", stack.output("BucketName")),
            ("IMAGETAG_THUMBNAIL_BUCKET", stack.output("BucketName")),
            // Short polls keep the tests quick; production uses 20 s.
            ("IMAGETAG_RECEIVE_WAIT_SECONDS", "1"),
            ("IMAGETAG_SHUTDOWN_GRACE_SECONDS", "10"),
            ("RUST_LOG", "info"),
        ];
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    pub fn start(moto: &Moto, stack: &Stack) -> Pipeline {
        Self::start_with(moto, stack, &[])
    }

    /// Starts (or restarts) one service.
    pub fn spawn(&mut self, service: &str) {
        self.processes.retain(|p| p.name != service);
        let health_port = free_port();
        let log_path = self.log_dir.join(format!("{service}.log"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("service log file");
        let mut command = Command::new(binary(&format!("imagetag-{service}")));
        command
            .envs(&self.env)
            .env("IMAGETAG_HEALTH_LISTEN", format!("127.0.0.1:{health_port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        if service == "query" {
            command.env("IMAGETAG_LISTEN", format!("127.0.0.1:{}", self.query_port));
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start imagetag-{service}: {e}"));
        self.processes.push(ServiceProcess {
            name: service.to_owned(),
            health_port: if service == "query" {
                self.query_port
            } else {
                health_port
            },
            log_path,
            child,
        });
    }

    /// Like `start`, with some variables of the environment replaced (for
    /// example the endpoint, to put a proxy between the services and moto).
    pub fn start_with(moto: &Moto, stack: &Stack, overrides: &[(&str, &str)]) -> Pipeline {
        let mut env = Self::environment(moto, stack);
        env.extend(
            overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let log_dir = binary_dir().join("e2e-logs").join(&stack.prefix);
        std::fs::create_dir_all(&log_dir).expect("log directory");
        let keys_file = log_dir.join("api-keys");
        let _ = std::fs::remove_file(&keys_file);
        let api_key = imagetag_query::auth::keys::create(
            &keys_file,
            "e2e",
            imagetag_query::auth::Scope::Write,
        )
        .expect("an API key for the tests");
        env.insert(
            "IMAGETAG_API_KEYS_FILE".into(),
            keys_file.display().to_string(),
        );
        let mut pipeline = Pipeline {
            env,
            processes: Vec::new(),
            query_port: free_port(),
            log_dir,
            api_key,
        };
        for service in SERVICES {
            pipeline.spawn(service);
        }
        pipeline
    }

    /// Restarts the indexer so it commits one index update at a time (see
    /// `ONE_COMMIT_AT_A_TIME`).
    pub fn serialize_index_commits(&mut self) {
        self.spawn_with("indexer", &ONE_COMMIT_AT_A_TIME);
    }

    /// (Re)starts one service with extra variables on top of the pipeline's
    /// environment, for this start only.
    pub fn spawn_with(&mut self, service: &str, extra: &[(&str, &str)]) {
        let saved = self.env.clone();
        self.env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.spawn(service);
        self.env = saved;
    }

    /// Services whose log reports a panic, with the offending lines.
    pub fn panics(&self) -> Vec<String> {
        self.processes
            .iter()
            .flat_map(|p| {
                p.log()
                    .lines()
                    .filter(|line| line.contains("panicked"))
                    .map(|line| format!("{}: {line}", p.name))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The value of one Prometheus sample (`name{labels}` exactly as
    /// exposed) from a service's `/metrics`; 0 when the series is absent.
    pub async fn metric(&self, http: &reqwest::Client, service: &str, series: &str) -> f64 {
        let port = self
            .processes
            .iter()
            .find(|p| p.name == service)
            .unwrap_or_else(|| panic!("{service} is not running"))
            .health_port;
        let text = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{service} /metrics: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("{service} /metrics body: {e}"));
        text.lines()
            .find_map(|line| {
                let value = line.strip_prefix(series)?.strip_prefix(' ')?;
                value.trim().parse().ok()
            })
            .unwrap_or(0.0)
    }

    /// Whether a service answers /readyz with 200 right now.
    pub async fn is_ready(&self, http: &reqwest::Client, service: &str) -> bool {
        let Some(process) = self.processes.iter().find(|p| p.name == service) else {
            return false;
        };
        http.get(format!("http://127.0.0.1:{}/readyz", process.health_port))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    }

    pub fn process(&mut self, service: &str) -> &mut ServiceProcess {
        self.processes
            .iter_mut()
            .find(|p| p.name == service)
            .unwrap_or_else(|| panic!("{service} is not running"))
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.query_port)
    }

    /// Every service's log, for failure messages.
    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| {
                let log = p.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "----- {} ({})\n{}",
                    p.name,
                    p.log_path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every service answers /readyz with 200.
    pub async fn wait_ready(&self, http: &reqwest::Client, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for process in &self.processes {
            let url = format!("http://127.0.0.1:{}/readyz", process.health_port);
            loop {
                let ready = http
                    .get(&url)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} not ready at {url}\n{}",
                    process.name,
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Peak resident memory (`VmHWM` in /proc/PID/status) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix("VmHWM:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

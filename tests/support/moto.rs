//! A moto server (AWS APIs over HTTP) run from a pinned Python venv.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use tokio::sync::OnceCell;

/// The account every moto request belongs to.
pub const ACCOUNT_ID: &str = "123456789012";
pub const REGION: &str = "us-east-1";

/// What the venv holds. Changing a pin rebuilds the venv on the next run.
const REQUIREMENTS: &[&str] = &[
    "moto[server]==5.2.5",
    "cfn-lint==1.58.0",
    "kubernetes-validate==1.37.0",
    "jsonschema==4.26.0",
];

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of server output kept for failure messages.
const LOG_LINES: usize = 200;

/// The root package's directory, which is the workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Creates `<workspace>/.cache/venv` with the pinned packages unless a venv
/// made from the same pins is already there, and returns its path.
pub fn ensure_venv() -> PathBuf {
    ensure_pinned_venv("venv", REQUIREMENTS, &["python", "moto_server", "cfn-lint"])
}

/// Creates `<workspace>/.cache/<name>` with exactly `requirements` unless a
/// venv made from the same pins, holding `bins`, is already there.
///
/// Several test binaries run at once under nextest, so creation is
/// serialised with an exclusive lock on a file next to the venv.
pub fn ensure_pinned_venv(name: &str, requirements: &[&str], bins: &[&str]) -> PathBuf {
    let cache = workspace_root().join(".cache");
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("cannot create {}: {e}", cache.display()));
    let lock_path = cache.join(format!("{name}.lock"));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));

    let venv = cache.join(name);
    let marker = venv.join("imagetag-requirements.txt");
    let wanted = requirements.join("\n");
    let ready = fs::read_to_string(&marker).is_ok_and(|have| have == wanted)
        && bins.iter().all(|bin| venv.join("bin").join(bin).exists());
    if !ready {
        eprintln!(
            "creating {} with {} (takes a minute or two the first time)",
            venv.display(),
            requirements.join(", ")
        );
        if venv.exists() {
            fs::remove_dir_all(&venv)
                .unwrap_or_else(|e| panic!("cannot remove stale venv {}: {e}", venv.display()));
        }
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(requirements));
        // Written last, so an interrupted install is redone next time.
        fs::write(&marker, &wanted)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", marker.display()));
    }
    // The lock is released when `lock` is closed here.
    venv
}

fn run(command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// Path of an executable in the venv (for example `cfn-lint`), creating the
/// venv first if needed.
pub fn venv_bin(name: &str) -> PathBuf {
    let path = ensure_venv().join("bin").join(name);
    assert!(path.exists(), "{} is not in the venv", path.display());
    path
}

/// A running `moto_server` on a free loopback port; killed on drop.
pub struct Moto {
    /// Base URL, for example `http://127.0.0.1:40123`.
    pub endpoint: String,
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
    sdk_config: OnceCell<SdkConfig>,
}

impl Moto {
    /// Starts a server; panics with the server's output if it does not come up.
    pub async fn start() -> Moto {
        // The venv may take a minute to build; keep it off the async workers.
        match tokio::task::spawn_blocking(Self::start_blocking).await {
            Ok(moto) => moto,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("moto start-up was cancelled: {e}"),
        }
    }

    fn start_blocking() -> Moto {
        let server = venv_bin("moto_server");
        let mut child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));

        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let log = Arc::clone(&log);
            let address_tx = address_tx.clone();
            // Plain threads rather than tasks: the pipes must keep being
            // drained (moto logs every request) for as long as the server
            // lives, whichever runtime the test uses.
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Some(endpoint) = listening_address(&line) {
                        let _ = address_tx.send(endpoint);
                    }
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        // Only the readers hold senders now, so the channel disconnects as
        // soon as the server closes both pipes (that is, exits).
        drop(address_tx);

        match address_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(endpoint) => Moto {
                endpoint,
                child,
                log,
                sdk_config: OnceCell::new(),
            },
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let log = log.lock().unwrap_or_else(|p| p.into_inner());
                panic!(
                    "{} did not report its address ({e}); exit: {status:?}; output:\n{}",
                    server.display(),
                    log.iter().cloned().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }

    /// The server's most recent output lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// SDK configuration pointing at this server: region us-east-1 and static
    /// test credentials.
    pub async fn sdk_config(&self) -> SdkConfig {
        self.sdk_config
            .get_or_init(|| async {
                // The workspace builds the SDKs without a default HTTP client.
                let http_client = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                    .build_https();
                aws_config::defaults(BehaviorVersion::latest())
                    .endpoint_url(&self.endpoint)
                    .region(Region::new(REGION))
                    .credentials_provider(Credentials::new(
                        "testing", "testing", None, None, "moto",
                    ))
                    .http_client(http_client)
                    .load()
                    .await
            })
            .await
            .clone()
    }

    /// S3 client using path-style addressing (moto has no per-bucket hosts).
    pub async fn s3_client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(&self.sdk_config().await)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub async fn sns_client(&self) -> aws_sdk_sns::Client {
        aws_sdk_sns::Client::new(&self.sdk_config().await)
    }

    pub async fn sqs_client(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }

    pub async fn dynamodb_client(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config().await)
    }

    pub async fn cloudformation_client(&self) -> aws_sdk_cloudformation::Client {
        aws_sdk_cloudformation::Client::new(&self.sdk_config().await)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extracts `http://127.0.0.1:PORT` from werkzeug's `Running on ...` line.
fn listening_address(line: &str) -> Option<String> {
    let start = line.find("Running on http://")? + "Running on ".len();
    let url: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !c.is_control())
        .collect();
    let url = url.trim_end_matches('/').to_owned();
    let port = url.rsplit_once(':')?.1;
    (!port.is_empty() && port.chars().all(|c| c.is_ascii_digit())).then_some(url)
}

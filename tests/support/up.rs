//! `imagetag up` run as a real process on a test folder. Tagging goes
//! through the Rekognition backend against moto, so every image gets the
//! same deterministic label and a test controls nothing but its scenario.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Moto;
use super::services::{binary, free_port};

/// The one label moto's DetectLabels gives every image.
pub const LABEL: &str = "mobile phone";

pub struct Up {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Up {
    /// Starts `imagetag up --images IMAGES` with `extra` flags, appending
    /// its output to `log` (a restart keeps the earlier run's lines).
    pub fn start(moto: &Moto, images: &Path, log: &Path, extra: &[&str]) -> Up {
        let port = free_port();
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(binary("imagetag"))
            .args(["up", "--backend", "rekognition", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--images")
            .arg(images)
            .args(extra)
            .env("AWS_ENDPOINT_URL", &moto.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start imagetag up");
        Up {
            child,
            port,
            log: log.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "imagetag up ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.kill_9();
    }
}

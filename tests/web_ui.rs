//! The web UI end to end, in a real browser: `imagetag up` on a temporary
//! folder (tagging with Rekognition on moto, whose canned answer is one
//! "Mobile Phone" label with one bounding box), driven by Debian's headless
//! Chromium through playwright-core (`tests/browser/ui.test.mjs`).
//!
//! The browser script uploads generated images through the page, waits for
//! their tags, searches with chips and filters, opens the detail view and
//! measures the drawn boxes, checks the stats chart, a phone-sized layout and
//! that hostile names render as text. Screenshots land in
//! `target/test-artifacts/web-ui/`.
//!
//! `tests/browser/setup.sh` installs what is missing first (chromium with
//! apt-get, playwright-core with `npm ci`); a failure there fails the test.

mod support;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};

/// How long the browser script may take (its own waits are shorter).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(600);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_uploads_searches_and_draws_boxes_in_headless_chromium() {
    let root = support::workspace_root();
    let browser_dir = root.join("tests/browser");
    let setup_started = Instant::now();
    run_setup(&browser_dir);
    eprintln!(
        "browser setup took {:.1} s",
        setup_started.elapsed().as_secs_f64()
    );

    let artifacts = artifact_dir();
    let work = tempfile::tempdir().expect("temporary directory");
    let images = work.path().join("images");
    fs::create_dir_all(&images).expect("images folder");
    let fixtures = write_fixtures(&work.path().join("fixtures"));

    let moto = support::Moto::start().await;
    let port = support::services::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = artifacts.join("imagetag-up.log");
    let mut server = UpProcess::start(&images, port, &moto.endpoint, &log_path);
    server.wait_until_serving(&base).await;

    let script = browser_dir.join("ui.test.mjs");
    let outcome = tokio::task::spawn_blocking({
        let base = base.clone();
        let artifacts = artifacts.clone();
        let work = work.path().to_owned();
        move || run_browser(&script, &base, &artifacts, &fixtures, &work)
    })
    .await
    .expect("browser runner thread");

    server.stop();
    let node_log = format!(
        "--- node stdout\n{}\n--- node stderr\n{}",
        outcome.stdout, outcome.stderr
    );
    assert!(
        outcome.success,
        "the browser test failed ({})\n{node_log}\n--- imagetag up ({})\n{}\n--- moto (tail)\n{}",
        outcome.status,
        log_path.display(),
        tail(&server.log(), 150),
        tail(&moto.log_tail(), 40),
    );
    println!("{node_log}");
    for shot in ["desktop-grid.png", "detail.png", "stats.png", "mobile.png"] {
        let path = artifacts.join(shot);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 1000,
            "screenshot {} is missing or empty",
            path.display()
        );
    }
}

/// Runs `tests/browser/setup.sh`; any failure fails the test, loudly.
fn run_setup(browser_dir: &Path) {
    let script = browser_dir.join("setup.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed with {}: the browser test needs chromium and playwright-core\n\
         --- stdout\n{}\n--- stderr\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// `target/test-artifacts/web-ui`, emptied of an earlier run's files.
fn artifact_dir() -> PathBuf {
    let target = support::services::binary_dir()
        .parent()
        .map(Path::to_path_buf)
        .expect("target/<profile> has a parent");
    let dir = target.join("test-artifacts").join("web-ui");
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("cannot clear {}: {e}", dir.display()));
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Three small pictures in two formats and both orientations, so the grid
/// and the detail view have something to show.
fn write_fixtures(dir: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(dir).expect("fixtures folder");
    let sunset = RgbImage::from_fn(640, 480, |x, y| {
        let t = y as f32 / 480.0;
        let sun = ((x as f32 - 420.0).powi(2) + (y as f32 - 300.0).powi(2)).sqrt() < 70.0;
        if sun {
            Rgb([255, 214, 102])
        } else if y > 340 {
            Rgb([28, 46, 74])
        } else {
            Rgb([
                (250.0 - 90.0 * t) as u8,
                (120.0 + 40.0 * t) as u8,
                (90.0 + 120.0 * t) as u8,
            ])
        }
    });
    let tiles = RgbImage::from_fn(800, 600, |x, y| {
        if (x / 100 + y / 100) % 2 == 0 {
            Rgb([46, 125, 200])
        } else {
            Rgb([235, 240, 245])
        }
    });
    let portrait = RgbImage::from_fn(480, 640, |x, y| {
        let inside = ((x as f32 - 240.0).powi(2) + (y as f32 - 280.0).powi(2)).sqrt() < 150.0;
        if inside {
            Rgb([225, 80, 110])
        } else {
            Rgb([(40 + x / 8) as u8, (160 - y / 8) as u8, 120])
        }
    });
    let files = [
        ("sunset.png", sunset),
        ("tiles.jpg", tiles),
        ("portrait.png", portrait),
    ];
    files
        .into_iter()
        .map(|(name, picture)| {
            let path = dir.join(name);
            picture
                .save(&path)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            path
        })
        .collect()
}

/// `imagetag up` as a child process; killed on drop.
struct UpProcess {
    child: Child,
    log_path: PathBuf,
}

impl UpProcess {
    fn start(images: &Path, port: u16, aws_endpoint: &str, log_path: &Path) -> UpProcess {
        let binary = support::services::binary("imagetag");
        let log = File::create(log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let stderr = log.try_clone().expect("log file handle");
        let child = Command::new(&binary)
            .arg("up")
            .arg("--images")
            .arg(images)
            .args(["--backend", "rekognition"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("AWS_ENDPOINT_URL", aws_endpoint)
            .env("AWS_REGION", support::REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        UpProcess {
            child,
            log_path: log_path.to_owned(),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the API answers and the page is served.
    async fn wait_until_serving(&mut self, base: &str) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "imagetag up exited with {status} before serving\n{}",
                    self.log()
                );
            }
            match client.get(format!("{base}/healthz")).send().await {
                Ok(response) if response.status().is_success() => {
                    let page = client
                        .get(format!("{base}/"))
                        .send()
                        .await
                        .expect("GET / after /healthz answered");
                    let status = page.status();
                    let html = page.text().await.unwrap_or_default();
                    assert!(
                        status.is_success() && html.contains("/assets/app.js"),
                        "GET / did not serve the web UI ({status}): {}",
                        tail(&html, 20)
                    );
                    return;
                }
                Ok(response) => last = format!("/healthz answered {}", response.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "imagetag up did not serve {base} within {STARTUP_TIMEOUT:?} ({last})\n{}",
            self.log()
        );
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

struct BrowserOutcome {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// `node ui.test.mjs <base> <artifacts> <image>…`, killed if it overruns.
fn run_browser(
    script: &Path,
    base: &str,
    artifacts: &Path,
    fixtures: &[PathBuf],
    work: &Path,
) -> BrowserOutcome {
    let stdout_path = work.join("node.stdout");
    let stderr_path = work.join("node.stderr");
    let mut child = Command::new("node")
        .arg(script)
        .arg(base)
        .arg(artifacts)
        .args(fixtures)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("node stdout file"))
        .stderr(File::create(&stderr_path).expect("node stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (Node.js 20 or newer is required): {e}"));
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let (success, status) = loop {
        match child.try_wait().expect("waiting for node") {
            Some(status) => break (status.success(), status.to_string()),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break (false, format!("killed after {BROWSER_TIMEOUT:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    BrowserOutcome {
        success,
        status,
        stdout: fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

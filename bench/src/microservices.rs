//! The four services as separate processes on moto (S3, SNS, SQS and
//! DynamoDB over HTTP on loopback): upload → searchable latency per hop and
//! each service's peak memory.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::embedded::{Upload, processing, upload_one};
use crate::photos;
use crate::report::{Section, Table};
use crate::stats::{fmt_mib, fmt_ms, peak_rss, quantile};

const SERVICES: &[&str] = &["ingest", "tagger", "indexer", "query"];

pub struct Options {
    pub work: PathBuf,
    pub model_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The venv with moto's server and boto3 (scripts/bench creates it).
    pub moto_venv: PathBuf,
    pub template: PathBuf,
    pub stack_script: PathBuf,
    pub uploads: usize,
}

/// Peak RSS of each service process, for the footprint section.
pub type ServiceMemory = Vec<(String, u64)>;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Child processes stopped (SIGTERM, then SIGKILL) when dropped, so a
/// failed run leaves nothing behind.
struct Processes(Vec<(String, Child, u16)>);

impl Processes {
    fn stop(&mut self) {
        for (_, child, _) in &self.0 {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, child, _) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.0.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(
    program: &Path,
    args: &[&str],
    env: &HashMap<String, String>,
    log: &Path,
) -> anyhow::Result<Child> {
    let log = File::create(log)?;
    Command::new(program)
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

async fn wait_ok(client: &reqwest::Client, url: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not answer {url} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(options: &Options) -> anyhow::Result<(Section, ServiceMemory)> {
    let logs = options.work.join("microservices");
    std::fs::create_dir_all(&logs)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    println!("microservices: starting moto");
    let moto_port = free_port()?;
    let endpoint = format!("http://127.0.0.1:{moto_port}");
    let mut processes = Processes(Vec::new());
    let moto = spawn(
        &options.moto_venv.join("bin/moto_server"),
        &["-H", "127.0.0.1", "-p", &moto_port.to_string()],
        &HashMap::new(),
        &logs.join("moto.log"),
    )?;
    processes.0.push(("moto".into(), moto, moto_port));
    wait_ok(&client, &format!("{endpoint}/moto-api/"), "moto").await?;

    println!("microservices: deploying deploy/imagetag.yaml into moto");
    let prefix = format!("bench{}", std::process::id());
    let deployed = Command::new(options.moto_venv.join("bin/python"))
        .arg(&options.stack_script)
        .args(["--endpoint", &endpoint, "--prefix", &prefix, "--template"])
        .arg(&options.template)
        .output()
        .context("running the stack script")?;
    if !deployed.status.success() {
        bail!(
            "deploying the stack into moto failed: {}",
            String::from_utf8_lossy(&deployed.stderr)
        );
    }
    let outputs: HashMap<String, String> =
        serde_json::from_slice(&deployed.stdout).context("reading the stack outputs")?;
    let output = |key: &str| -> anyhow::Result<String> {
        outputs
            .get(key)
            .cloned()
            .with_context(|| format!("the stack has no output {key}"))
    };

    let mut env: HashMap<String, String> = [
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("IMAGETAG_S3_FORCE_PATH_STYLE", "true".into()),
        ("IMAGETAG_EVENTS_QUEUE_URL", output("EventsQueueUrl")?),
        ("IMAGETAG_TAG_QUEUE_URL", output("TagQueueUrl")?),
        ("IMAGETAG_INDEX_QUEUE_URL", output("IndexQueueUrl")?),
        ("IMAGETAG_IMAGES_TABLE", output("ImagesTableName")?),
        ("IMAGETAG_POSTINGS_TABLE", output("PostingsTableName")?),
        ("IMAGETAG_TAGS_TABLE", output("TagsTableName")?),
        ("IMAGETAG_BUCKET", output("BucketName")?),
        ("IMAGETAG_THUMBNAIL_BUCKET", output("BucketName")?),
        ("IMAGETAG_TAGGER_BACKEND", "local".into()),
        (
            "IMAGETAG_MODEL_DIR",
            options.model_dir.to_string_lossy().into_owned(),
        ),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let query_port = free_port()?;
    env.insert("IMAGETAG_LISTEN".into(), format!("127.0.0.1:{query_port}"));
    // Uploads need a credential on the query service; the bench is a client
    // with a write key of its own.
    let keys_file = logs.join("api-keys");
    let _ = std::fs::remove_file(&keys_file);
    let api_key = imagetag_query::auth::keys::create(
        &keys_file,
        "bench",
        imagetag_query::auth::Scope::Write,
    )?;
    env.insert(
        "IMAGETAG_API_KEYS_FILE".into(),
        keys_file.to_string_lossy().into_owned(),
    );

    println!("microservices: starting the four services");
    for service in SERVICES {
        let port = if *service == "query" {
            query_port
        } else {
            free_port()?
        };
        let mut service_env = env.clone();
        service_env.insert("IMAGETAG_HEALTH_LISTEN".into(), format!("127.0.0.1:{port}"));
        let child = spawn(
            &options.bin_dir.join(format!("imagetag-{service}")),
            &[],
            &service_env,
            &logs.join(format!("{service}.log")),
        )?;
        processes.0.push((service.to_string(), child, port));
    }
    for (name, _, port) in &processes.0[1..] {
        wait_ok(&client, &format!("http://127.0.0.1:{port}/readyz"), name).await?;
    }
    let base = format!("http://127.0.0.1:{query_port}");

    let set = photos::small_photos(
        &options.model_dir,
        &options.work.join("small"),
        options.uploads + 1,
    )?;
    // A first upload warms every path (connections, the tagger's sessions).
    upload_one(&client, &base, Some(&api_key), &set[options.uploads]).await?;

    println!(
        "microservices: {} uploads, each timed until searchable",
        options.uploads
    );
    let metrics = |port: u16| {
        let client = client.clone();
        async move {
            let text = client
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            anyhow::Ok(processing(&text))
        }
    };
    let mut before = HashMap::new();
    for (name, _, port) in &processes.0[1..] {
        before.insert(name.clone(), metrics(*port).await?);
    }
    let mut uploads: Vec<Upload> = Vec::new();
    for photo in &set[..options.uploads] {
        uploads.push(upload_one(&client, &base, Some(&api_key), photo).await?);
    }
    let mut hops = Table::new(
        "Processing per service during the uploads (mean per message, from each service's `imagetag_message_processing_seconds`)",
        &["service", "messages", "mean processing ms"],
    );
    for (name, _, port) in &processes.0[1..] {
        if name == "query" {
            continue;
        }
        let after = metrics(*port).await?;
        let (mut sum, mut count) = (0.0, 0.0);
        for (queue, (s1, c1)) in &after {
            let (s0, c0) = before
                .get(name)
                .and_then(|b| b.get(queue))
                .copied()
                .unwrap_or_default();
            sum += s1 - s0;
            count += c1 - c0;
        }
        let mean = if count > 0.0 {
            1000.0 * sum / count
        } else {
            f64::NAN
        };
        hops.row([name.clone(), format!("{count:.0}"), fmt_ms(mean)]);
    }
    let memory: ServiceMemory = processes
        .0
        .iter()
        .map(|(name, child, _)| (name.clone(), peak_rss(child.id()).unwrap_or(0)))
        .collect();
    processes.stop();

    let col = |f: fn(&Upload) -> f64| uploads.iter().map(f).collect::<Vec<f64>>();
    let mut latency = Table::new(
        format!(
            "Upload → searchable on moto, {} uploads one after another (ms)",
            uploads.len()
        ),
        &["measure", "p50", "p95", "p99", "max"],
    );
    for (name, values) in [
        ("PUT done → searchable (client's view)", col(|u| u.total_ms)),
        (
            "  hop 1: PUT done → ingest recorded (S3 notification, SNS, events queue, ingest)",
            col(|u| u.to_ingest_ms),
        ),
        (
            "  hop 2: ingest → tags committed (tag queue, tagger, index queue, indexer)",
            col(|u| u.to_indexed_ms),
        ),
        ("the presigned PUT itself", col(|u| u.put_ms)),
    ] {
        latency.row([
            name.to_string(),
            fmt_ms(quantile(&values, 0.5)),
            fmt_ms(quantile(&values, 0.95)),
            fmt_ms(quantile(&values, 0.99)),
            fmt_ms(quantile(&values, 1.0)),
        ]);
    }
    let mut rss = Table::new(
        "Peak memory of each process (VmHWM)",
        &["process", "peak RSS"],
    );
    for (name, bytes) in &memory {
        rss.row([name.clone(), fmt_mib(*bytes)]);
    }
    let section = Section {
        key: "microservices",
        title: "Upload → searchable latency, microservices on moto".into(),
        method: format!(
            "moto's server (pinned in a venv) stands in for S3, SNS, SQS and DynamoDB on loopback; \
             `deploy/imagetag.yaml` is deployed into it (the SNS subscription and bucket notification, \
             which moto's CloudFormation skips, are applied by `bench/python/moto_stack.py` as the \
             template states them). The four release binaries run as separate processes with the built-in \
             models and default settings (20 s long polls). {} photos (640×480 JPEGs) go through \
             `POST /v1/uploads` and the presigned S3 PUT it returns, one after another, each polled \
             every 2 ms at `GET /v1/images/{{id}}` until tagged. moto is a single Python process doing \
             every AWS call, so absolute times are much slower than AWS's; the hops show where time goes.",
            options.uploads
        ),
        tables: vec![latency, hops, rss],
        notes: vec![],
    };
    Ok((section, memory))
}

//! `imagetag up`: the whole product in one process. The same ingest, tagger,
//! indexer and query code as the microservices, wired to embedded adapters:
//! the images folder is the bucket, SQLite files hold the queues and the
//! index, and a folder watcher stands in for S3 event notifications.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use imagetag_embedded::{FolderSource, LocalBucket, QueueDb, SqliteStore};
use imagetag_indexer::IndexerService;
use imagetag_ingest::{IngestConfig, IngestService};
use imagetag_query::Media;
use imagetag_query::auth::{AccessPolicy, ApiKeys, Scope};
use imagetag_query::operations::{DeadLetters, Operations};
use imagetag_query::ratelimit::{RateLimit, RateLimiter};
use imagetag_shared::consumer::{self, ConsumerConfig};
use imagetag_shared::ports::TaggingBackend;
use imagetag_tagger::decode::{DecodeLimits, Decoder};
use imagetag_tagger::policy::Policy;
use imagetag_tagger::pool::{CpuPool, cores};
use imagetag_tagger::{TaggerService, Thumbnails};
use tokio_util::sync::CancellationToken;

/// The bucket name the folder goes by in records and events.
pub const LOCAL_BUCKET: &str = "local";
const THUMBNAILS: &str = "thumbnails";
const EVENTS: &str = "events";
const TAG_JOBS: &str = "tag-jobs";
const INDEX: &str = "index";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Built-in models, no cloud account needed.
    Local,
    /// Amazon Rekognition (needs AWS credentials).
    Rekognition,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Folder of images to tag and watch; uploads land here too.
    #[arg(long, env = "IMAGETAG_IMAGES", default_value = "images")]
    pub images: PathBuf,

    /// Where the index and queues live (default: IMAGES/.imagetag).
    #[arg(long, env = "IMAGETAG_DATA")]
    pub data: Option<PathBuf>,

    /// Address of the web UI and API.
    #[arg(long, env = "IMAGETAG_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[arg(
        long,
        env = "IMAGETAG_TAGGER_BACKEND",
        value_enum,
        default_value = "local"
    )]
    pub backend: Backend,

    /// Folder of the prepared built-in models.
    #[arg(long, env = "IMAGETAG_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,

    /// Tagging policy (TOML).
    #[arg(long, env = "IMAGETAG_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// Deliveries of a failing message before it is dead-lettered.
    #[arg(long, env = "IMAGETAG_MAX_RECEIVES", default_value_t = 5)]
    pub max_receives: u32,

    /// Images tagged at once (default: one per core).
    #[arg(long, env = "IMAGETAG_WORKERS")]
    pub workers: Option<usize>,

    /// Files larger than this many bytes are rejected.
    #[arg(long, env = "IMAGETAG_MAX_OBJECT_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_object_bytes: u64,

    /// Key that signs pagination cursors (default: random per start).
    #[arg(long, env = "IMAGETAG_CURSOR_SECRET", hide_env_values = true)]
    pub cursor_secret: Option<String>,

    /// Writes need an API key even from this machine. Always on when
    /// listening on an address other machines can reach.
    #[arg(long, env = "IMAGETAG_REQUIRE_AUTH", default_value_t = false)]
    pub require_auth: bool,

    /// Reads need an API key too (except from this machine, unless
    /// `--require-auth`).
    #[arg(long, env = "IMAGETAG_AUTH_READS", default_value_t = false)]
    pub auth_reads: bool,

    /// API key file (default: DATA/api-keys); `imagetag keys create` adds
    /// to it.
    #[arg(long, env = "IMAGETAG_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
}

/// Name of the key `up` mints when it needs one and the file has none.
const FIRST_KEY: &str = "up";

/// Who may use the API of `imagetag up`. On loopback the machine's own user
/// is trusted (one command, usable UI); anywhere else, or with
/// `--require-auth`, every write needs a key, and a first one is minted
/// into the data folder and printed once.
fn access_policy(args: &UpArgs, data: &Path) -> anyhow::Result<AccessPolicy> {
    let keys_file = args
        .api_keys_file
        .clone()
        .unwrap_or_else(|| data.join("api-keys"));
    let exposed = !args.listen.ip().is_loopback();
    let require = args.require_auth || exposed;
    let mut keys = if keys_file.exists() {
        ApiKeys::load(&keys_file)?
    } else {
        ApiKeys::default()
    };
    if require && keys.is_empty() {
        let key = imagetag_query::auth::keys::create(&keys_file, FIRST_KEY, Scope::Write)?;
        println!(
            "imagetag: API key (shown once; its hash is in {}): {key}",
            keys_file.display()
        );
        keys = ApiKeys::load(&keys_file)?;
    }
    Ok(AccessPolicy {
        keys,
        jwt: None,
        auth_reads: args.auth_reads,
        trust_loopback: !require,
        trust_forwarded_for: false,
        limiter: Some(RateLimiter::new(
            RateLimit {
                per_second: 50.0,
                burst: 200,
            },
            imagetag_query::config::RATE_LIMIT_CLIENTS,
        )),
    })
}

/// Everything `up` runs, wired and ready; `run` drives it until `shutdown`.
pub struct Embedded {
    pub store: SqliteStore,
    pub queues: QueueDb,
    pub bucket: LocalBucket,
    pub data: PathBuf,
}

impl Embedded {
    pub fn open(images: &Path, data: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(images)
            .with_context(|| format!("creating the images folder {}", images.display()))?;
        std::fs::create_dir_all(data)
            .with_context(|| format!("creating the data folder {}", data.display()))?;
        let store = SqliteStore::open(&data.join("index.db"), cores().max(2))
            .context("opening the index")?;
        let queues = QueueDb::open(&data.join("queues.db")).context("opening the queues")?;
        let images = images
            .canonicalize()
            .with_context(|| format!("resolving {}", images.display()))?;
        Ok(Self {
            store,
            queues,
            bucket: LocalBucket::new(LOCAL_BUCKET, images),
            data: data.to_owned(),
        })
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| args.images.join(".imagetag"));
    check_layout(&args.images, &data)?;
    let embedded = Embedded::open(&args.images, &data)?;
    let backend = load_backend(&args).await?;
    let shutdown = imagetag_shared::health::shutdown_on_signal();
    serve(embedded, backend, &args, shutdown).await
}

async fn load_backend(args: &UpArgs) -> anyhow::Result<Box<dyn TaggingBackend>> {
    match args.backend {
        Backend::Local => {
            crate::models::load_local_backend(args.model_dir.as_deref(), args.workers)
        }
        Backend::Rekognition => {
            let sdk = imagetag_shared::aws::load_sdk_config(&Default::default()).await;
            let policy = load_policy(args)?;
            Ok(Box::new(
                imagetag_tagger::rekognition::RekognitionBackend::new(
                    aws_sdk_rekognition::Client::new(&sdk),
                    &policy.backend_filter(),
                    CpuPool::per_core(),
                ),
            ))
        }
    }
}

fn load_policy(args: &UpArgs) -> anyhow::Result<Policy> {
    Ok(match &args.policy_file {
        Some(path) => Policy::load(path)?,
        None => Policy::default(),
    })
}

/// Runs the four services on `embedded` until `shutdown`.
pub async fn serve(
    embedded: Embedded,
    backend: Box<dyn TaggingBackend>,
    args: &UpArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Embedded {
        store,
        queues,
        bucket,
        data,
    } = embedded;
    let max = args.max_receives;
    let events = Arc::new(queues.queue(EVENTS, Some("events-dlq"), max));
    let tag_jobs = Arc::new(queues.queue(TAG_JOBS, Some("tag-jobs-dlq"), max));
    let index = Arc::new(queues.queue(INDEX, Some("index-dlq"), max));
    let workers = args.workers.unwrap_or_else(cores).max(1);

    let ingest = Arc::new(IngestService::new(
        bucket.clone(),
        store.clone(),
        queues.queue(TAG_JOBS, Some("tag-jobs-dlq"), max),
        queues.queue(INDEX, Some("index-dlq"), max),
        IngestConfig {
            max_object_bytes: args.max_object_bytes,
            thumbnail_prefix: String::new(),
        },
    ));
    let pool = CpuPool::new(workers);
    let thumbnails = LocalBucket::new(THUMBNAILS, data.join("thumbnails"));
    std::fs::create_dir_all(thumbnails.root()).context("creating the thumbnails folder")?;
    let tagger = Arc::new(
        TaggerService::new(
            Arc::new(bucket.clone()),
            index.clone(),
            Arc::new(backend),
            Decoder::new(DecodeLimits::default(), pool),
            Arc::new(load_policy(args)?),
            args.max_object_bytes,
        )
        .with_thumbnails(Thumbnails {
            store: Arc::new(thumbnails.clone()),
            bucket: THUMBNAILS.into(),
            prefix: String::new(),
            max_side: 320,
        }),
    );
    let indexer = Arc::new(IndexerService::new(store.clone()));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let secret = match &args.cursor_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => rand_secret(),
    };
    let access = access_policy(args, &data)?;
    let dead_letters = [
        (EVENTS, "events-dlq"),
        (TAG_JOBS, "tag-jobs-dlq"),
        (INDEX, "index-dlq"),
    ]
    .into_iter()
    .map(|(name, dlq)| DeadLetters {
        name: name.to_owned(),
        dead_letter: Arc::new(queues.queue(dlq, None, max)),
        source: Arc::new(queues.queue(name, Some(dlq), max)),
    })
    .collect();
    let operations = Operations {
        objects: Some(Arc::new(bucket.clone())),
        tag_jobs: Some(Arc::new(queues.queue(TAG_JOBS, Some("tag-jobs-dlq"), max))),
        dead_letters,
    };
    let state = imagetag_query::AppState::new(Arc::new(store.clone()), &secret)
        .with_access(access)
        .with_operations(operations)
        .with_media(Media {
            objects: Arc::new(bucket.clone()),
            bucket: LOCAL_BUCKET.into(),
            upload_prefix: "uploads/".into(),
            thumbnails: Arc::new(thumbnails),
            thumbnail_bucket: THUMBNAILS.into(),
            thumbnail_prefix: String::new(),
            signer: None,
            max_upload_bytes: args.max_object_bytes,
            upload_ttl: Duration::from_secs(600),
            secret: secret.clone(),
        });
    let app = imagetag_query::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let api = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    println!(
        "imagetag: watching {} (data in {}), UI and API on http://{}",
        bucket.root().display(),
        data.display(),
        args.listen
    );

    let source = FolderSource::new(bucket.clone(), queues.clone(), EVENTS).await?;
    let report = source.scan().await.context("scanning the images folder")?;
    println!(
        "imagetag: start-up scan: {} new, {} changed, {} removed since last run",
        report.created, report.changed, report.removed
    );
    let watcher = tokio::spawn(source.watch(shutdown.clone()));
    let progress = tokio::spawn(report_progress(queues.clone(), shutdown.clone()));

    let config = |in_flight: usize| ConsumerConfig {
        max_in_flight: in_flight,
        // The embedded queue wakes receivers on send; the wait only bounds
        // how long a stop takes.
        receive_wait: Duration::from_secs(1),
        visibility: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(10),
        ..Default::default()
    };
    let consumers = async {
        tokio::join!(
            consumer::run(EVENTS, events, ingest, config(8), shutdown.clone()),
            consumer::run(
                TAG_JOBS,
                tag_jobs,
                tagger,
                config(workers),
                shutdown.clone()
            ),
            consumer::run(INDEX, index, indexer, config(8), shutdown.clone()),
        )
    };
    let (api_result, _) = tokio::join!(
        async {
            let result = api.await;
            shutdown.cancel();
            result
        },
        consumers
    );
    let _ = progress.await;
    match watcher.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "folder watcher stopped with an error"),
        Err(err) => tracing::warn!(error = %err, "folder watcher task failed"),
    }
    api_result.context("serving the API")?;
    Ok(())
}

fn rand_secret() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}

/// Shows how the backlog drains while there is one: a progress bar with
/// images per second and the time left on a terminal, a line every few
/// seconds otherwise (logs, CI).
async fn report_progress(queues: QueueDb, shutdown: CancellationToken) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut line_state: Option<(Instant, u64)> = None;
    let mut ticker =
        tokio::time::interval(Duration::from_millis(if terminal { 250 } else { 2000 }));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let waiting =
            queues.depth(TAG_JOBS).await.unwrap_or(0) + queues.depth(EVENTS).await.unwrap_or(0);
        if terminal {
            match (&bar, waiting) {
                (None, 0) => {}
                (None, _) => {
                    let progress = indicatif::ProgressBar::new(waiting);
                    progress.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} tagging {bar:30} {pos}/{len} images, {per_sec}, {eta} left",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    bar = Some(progress);
                }
                (Some(progress), 0) => {
                    progress.set_position(progress.length().unwrap_or(0));
                    progress.finish_with_message("all caught up");
                    bar = None;
                }
                (Some(progress), _) => {
                    // New files can arrive while the backlog drains.
                    let length = progress.length().unwrap_or(0);
                    let done = progress.position();
                    if done + waiting > length {
                        progress.set_length(done + waiting);
                    }
                    progress.set_position(progress.length().unwrap_or(0).saturating_sub(waiting));
                }
            }
            continue;
        }
        if waiting == 0 {
            if line_state.take().is_some() {
                println!("imagetag: all caught up");
            }
            continue;
        }
        let now = Instant::now();
        if let Some((then, before)) = line_state {
            let done = before.saturating_sub(waiting) as f64;
            let rate = done / now.duration_since(then).as_secs_f64().max(0.001);
            let eta = if rate > 0.0 {
                format!("{:.0} s left", waiting as f64 / rate)
            } else {
                "estimating".into()
            };
            println!("imagetag: {waiting} image(s) waiting, {rate:.1}/s, {eta}");
        }
        line_state = Some((now, waiting));
    }
    if let Some(progress) = bar {
        progress.abandon();
    }
}

/// Refuses to start on the folder the data lives in as a non-hidden
/// subfolder, which would feed the index back into itself.
pub fn check_layout(images: &Path, data: &Path) -> anyhow::Result<()> {
    if let Ok(relative) = data.strip_prefix(images)
        && relative
            .components()
            .next()
            .is_some_and(|c| !c.as_os_str().to_string_lossy().starts_with('.'))
    {
        bail!(
            "the data folder {} is inside the images folder without a leading dot; \
             choose a hidden folder (like .imagetag) or one elsewhere",
            data.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    fn args(extra: &[&str]) -> UpArgs {
        let mut argv = vec!["up"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("arguments").up
    }

    #[test]
    fn on_loopback_the_machine_is_trusted_and_no_key_is_minted() {
        let data = tempfile::tempdir().expect("tempdir");
        let policy =
            access_policy(&args(&["--listen", "127.0.0.1:0"]), data.path()).expect("policy");
        assert!(policy.trust_loopback);
        assert!(!data.path().join("api-keys").exists());
    }

    #[test]
    fn exposed_or_required_auth_mints_one_key_and_trusts_no_one() {
        for extra in [
            &["--listen", "0.0.0.0:0"][..],
            &["--listen", "127.0.0.1:0", "--require-auth"][..],
        ] {
            let data = tempfile::tempdir().expect("tempdir");
            let policy = access_policy(&args(extra), data.path()).expect("policy");
            assert!(!policy.trust_loopback, "{extra:?}");
            let keys = ApiKeys::load(&data.path().join("api-keys")).expect("minted");
            assert_eq!(keys.len(), 1, "{extra:?}");
            // A restart keeps the key instead of minting another.
            let again = access_policy(&args(extra), data.path()).expect("policy");
            assert_eq!(again.keys.len(), 1, "{extra:?}");
        }
    }
}

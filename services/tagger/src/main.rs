//! `imagetag-tagger`: consumes tag jobs until SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use imagetag_shared::aws::{S3ObjectStore, SqsQueue, load_sdk_config};
use imagetag_shared::consumer;
use imagetag_shared::health::{self, ReadinessCheck};
use imagetag_shared::ports::{Queue, TaggingBackend};
use imagetag_shared::telemetry;
use imagetag_tagger::config::{BackendKind, Config};
use imagetag_tagger::decode::Decoder;
use imagetag_tagger::policy::Policy;
use imagetag_tagger::pool::{CpuPool, cores};
use imagetag_tagger::rekognition::RekognitionBackend;
use imagetag_tagger::{TaggerService, Thumbnails};
use imagetag_vision::LocalBackend;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let telemetry = telemetry::init("imagetag-tagger");
    let result = run(config).await;
    if let Err(err) = &result {
        // Logged for the log pipeline, and printed plainly for whoever
        // started the process by hand.
        tracing::error!(error = format!("{err:#}"), "tagger stopped with an error");
        eprintln!("imagetag-tagger: {err:#}");
    }
    telemetry.shutdown();
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let policy = match &config.policy_file {
        Some(path) => Policy::load(path)?,
        None => Policy::default(),
    };
    let policy = Arc::new(policy);
    let concurrency = config.decode_concurrency.unwrap_or_else(cores).max(1);
    let pool = CpuPool::new(concurrency);

    let sdk = load_sdk_config(&config.aws).await;
    let backend: Box<dyn TaggingBackend> =
        match config.backend {
            BackendKind::Local => {
                let dir = config
                    .model_dir
                    .clone()
                    .unwrap_or_else(imagetag_vision::default_model_dir);
                Box::new(LocalBackend::load(&dir, concurrency).with_context(|| {
                    format!("loading the built-in models from {}", dir.display())
                })?)
            }
            BackendKind::Rekognition => Box::new(RekognitionBackend::new(
                aws_sdk_rekognition::Client::new(&sdk),
                &policy.backend_filter(),
                pool.clone(),
            )),
        };
    tracing::info!(
        backend = config.backend.as_str(),
        policy_file = config.policy_file.as_ref().map(|p| p.display().to_string()),
        max_object_bytes = config.max_object_bytes,
        max_pixels = config.max_pixels,
        max_dimension = config.max_dimension,
        decode_concurrency = concurrency,
        "tagger configured"
    );
    serve(config, sdk, policy, pool, Arc::new(backend)).await
}

async fn serve<B: TaggingBackend>(
    config: Config,
    sdk: aws_config::SdkConfig,
    policy: Arc<Policy>,
    pool: CpuPool,
    backend: Arc<B>,
) -> anyhow::Result<()> {
    let objects = Arc::new(S3ObjectStore::new(config.aws.s3_client(&sdk)));
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let tag_queue = Arc::new(SqsQueue::new(sqs.clone(), &config.tag_queue_url));
    let index_queue = Arc::new(SqsQueue::new(sqs, &config.index_queue_url));

    let mut service = TaggerService::new(
        objects.clone(),
        index_queue.clone(),
        backend.clone(),
        Decoder::new(config.decode_limits(), pool),
        policy,
        config.max_object_bytes,
    );
    if let Some(bucket) = &config.thumbnail_bucket {
        service = service.with_thumbnails(Thumbnails {
            store: objects,
            bucket: bucket.clone(),
            prefix: config.thumbnail_prefix.clone(),
            max_side: 320,
        });
    }
    let service = Arc::new(service);

    let readiness: ReadinessCheck = {
        let tag_queue = tag_queue.clone();
        let index_queue = index_queue.clone();
        let backend = backend.clone();
        Arc::new(move || {
            let tag_queue = tag_queue.clone();
            let index_queue = index_queue.clone();
            let backend = backend.clone();
            Box::pin(async move {
                tokio::try_join!(tag_queue.ping(), index_queue.ping(), backend.ping())?;
                Ok(())
            })
        })
    };

    let shutdown = health::shutdown_on_signal();
    let health_server = {
        let shutdown = shutdown.clone();
        async move {
            let result = health::serve(
                config.health.health_listen,
                health::router(readiness),
                shutdown.clone(),
            )
            .await;
            // Without probes the pod would be killed anyway; stop cleanly
            // instead of consuming unobserved.
            if result.is_err() {
                shutdown.cancel();
            }
            result
        }
    };
    let consumer = consumer::run(
        "tag-jobs",
        tag_queue,
        service,
        config.consumer.consumer_config(),
        shutdown.clone(),
    );
    let ((), health_result) = tokio::join!(consumer, health_server);
    health_result.context("health endpoints")
}

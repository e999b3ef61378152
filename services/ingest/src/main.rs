use std::sync::Arc;

use clap::Parser;
use imagetag_ingest::{IngestConfig, IngestService};
use imagetag_shared::aws::{DynamoStore, S3ObjectStore, SqsQueue, load_sdk_config};
use imagetag_shared::config::{AwsArgs, ConsumerArgs, HealthArgs, TableNames};
use imagetag_shared::health;
use imagetag_shared::ports::{ImageStore, Queue};
use imagetag_shared::telemetry;

/// Consumes S3 event notifications and queues images for tagging.
#[derive(Debug, Parser)]
#[command(name = "imagetag-ingest", version)]
struct Config {
    /// Queue subscribed to the bucket's notification topic.
    #[arg(long, env = "IMAGETAG_EVENTS_QUEUE_URL")]
    events_queue_url: String,

    /// Queue of tag jobs (the tagger's input).
    #[arg(long, env = "IMAGETAG_TAG_QUEUE_URL")]
    tag_queue_url: String,

    /// Queue of index updates (the indexer's input).
    #[arg(long, env = "IMAGETAG_INDEX_QUEUE_URL")]
    index_queue_url: String,

    /// Objects larger than this many bytes are rejected.
    #[arg(long, env = "IMAGETAG_MAX_OBJECT_BYTES", default_value_t = 50 * 1024 * 1024)]
    max_object_bytes: u64,

    /// Key prefix of the tagger's thumbnails, skipped here.
    #[arg(long, env = "IMAGETAG_THUMBNAIL_PREFIX", default_value = "thumbnails/")]
    thumbnail_prefix: String,

    #[command(flatten)]
    tables: TableNames,

    #[command(flatten)]
    consumer: ConsumerArgs,

    #[command(flatten)]
    health: HealthArgs,

    #[command(flatten)]
    aws: AwsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("imagetag-ingest");
    let config = Config::parse();
    let sdk = load_sdk_config(&config.aws).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let events = Arc::new(SqsQueue::new(sqs.clone(), &config.events_queue_url));
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), config.tables.clone());
    let service = Arc::new(IngestService::new(
        S3ObjectStore::new(config.aws.s3_client(&sdk)),
        store.clone(),
        SqsQueue::new(sqs.clone(), &config.tag_queue_url),
        SqsQueue::new(sqs.clone(), &config.index_queue_url),
        IngestConfig {
            max_object_bytes: config.max_object_bytes,
            thumbnail_prefix: config.thumbnail_prefix.clone(),
        },
    ));

    let readiness_queue = events.clone();
    let readiness: health::ReadinessCheck = Arc::new(move || {
        let queue = readiness_queue.clone();
        let store = store.clone();
        Box::pin(async move {
            queue.ping().await?;
            ImageStore::ping(&store).await
        })
    });
    let result = health::run_consumer(
        "events",
        events,
        service,
        config.consumer.consumer_config(),
        config.health.health_listen,
        readiness,
    )
    .await;
    telemetry.shutdown();
    result
}

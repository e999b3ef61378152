use std::sync::Arc;

use clap::Parser;
use imagetag_indexer::IndexerService;
use imagetag_shared::aws::{DynamoStore, SqsQueue, load_sdk_config};
use imagetag_shared::config::{AwsArgs, ConsumerArgs, HealthArgs, TableNames};
use imagetag_shared::health;
use imagetag_shared::ports::{IndexStore, Queue};
use imagetag_shared::telemetry;

/// Writes tags, postings and tag counts to DynamoDB.
#[derive(Debug, Parser)]
#[command(name = "imagetag-indexer", version)]
struct Config {
    /// Queue of index updates from ingest and the tagger.
    #[arg(long, env = "IMAGETAG_INDEX_QUEUE_URL")]
    index_queue_url: String,

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
    let telemetry = telemetry::init("imagetag-indexer");
    let config = Config::parse();
    let sdk = load_sdk_config(&config.aws).await;
    let queue = Arc::new(SqsQueue::new(
        aws_sdk_sqs::Client::new(&sdk),
        &config.index_queue_url,
    ));
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), config.tables.clone());
    let service = Arc::new(IndexerService::new(store.clone()));

    let readiness_queue = queue.clone();
    let readiness: health::ReadinessCheck = Arc::new(move || {
        let queue = readiness_queue.clone();
        let store = store.clone();
        Box::pin(async move {
            queue.ping().await?;
            IndexStore::ping(&store).await
        })
    });
    let result = health::run_consumer(
        "index",
        queue,
        service,
        config.consumer.consumer_config(),
        config.health.health_listen,
        readiness,
    )
    .await;
    telemetry.shutdown();
    result
}

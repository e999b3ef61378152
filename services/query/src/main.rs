use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use imagetag_query::config::Config;
use std::time::Duration;

use std::net::SocketAddr;

use imagetag_query::Media;
use imagetag_query::operations::{DeadLetters, Operations};
use imagetag_shared::aws::{DynamoStore, S3ObjectStore, SqsQueue, load_sdk_config};
use imagetag_shared::ports::Queue;
use imagetag_shared::{health, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("imagetag-query");
    let result = run().await;
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "query service failed");
    }
    telemetry.shutdown();
    result
}

async fn run() -> anyhow::Result<()> {
    let config = Config::parse();
    let sdk = load_sdk_config(&config.aws).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), config.tables.clone());
    let mut state = config
        .app_state(Arc::new(store))?
        .with_access(config.access.policy().await?);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = |url: &str| -> Arc<dyn Queue> { Arc::new(SqsQueue::new(sqs.clone(), url)) };
    let mut operations = Operations {
        tag_jobs: config.queues.tag_queue_url.as_deref().map(queue),
        dead_letters: config
            .queues
            .redrive_pairs()
            .into_iter()
            .map(|(name, dlq, source)| DeadLetters {
                name: name.to_owned(),
                dead_letter: queue(dlq),
                source: queue(source),
            })
            .collect(),
        objects: None,
    };
    if let Some(bucket) = &config.bucket {
        let s3 = Arc::new(S3ObjectStore::new(config.aws.s3_client(&sdk)));
        operations.objects = Some(s3.clone());
        state = state.with_media(Media {
            objects: s3.clone(),
            bucket: bucket.clone(),
            upload_prefix: config.upload_prefix.clone(),
            thumbnails: s3.clone(),
            thumbnail_bucket: bucket.clone(),
            thumbnail_prefix: config.thumbnail_prefix.clone(),
            signer: Some(s3),
            max_upload_bytes: config.max_upload_bytes,
            upload_ttl: Duration::from_secs(config.upload_ttl_seconds.clamp(30, 3600)),
            secret: config.cursor_key(),
        });
    }
    let state = state.with_operations(operations);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(addr = %config.listen, "query API listening");
    let shutdown = health::shutdown_on_signal();
    // The peer address keys the rate limit of clients without credentials.
    let app = imagetag_query::router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving the query API")?;
    tracing::info!("query API stopped");
    Ok(())
}

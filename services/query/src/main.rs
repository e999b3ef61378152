use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use imagetag_query::config::Config;
use std::time::Duration;

use imagetag_query::Media;
use imagetag_shared::aws::{DynamoStore, S3ObjectStore, load_sdk_config};
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
    let mut state = config.app_state(Arc::new(store))?;
    if let Some(bucket) = &config.bucket {
        let s3 = Arc::new(S3ObjectStore::new(config.aws.s3_client(&sdk)));
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
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(addr = %config.listen, "query API listening");
    let shutdown = health::shutdown_on_signal();
    axum::serve(listener, imagetag_query::router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving the query API")?;
    tracing::info!("query API stopped");
    Ok(())
}

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use imagetag_query::config::Config;
use imagetag_shared::aws::{DynamoStore, load_sdk_config};
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
    let state = config.app_state(Arc::new(store))?;
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

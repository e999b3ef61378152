//! `/healthz` (the process is alive), `/readyz` (its dependencies answer)
//! and `/metrics` for the consumers, which have no other HTTP surface.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::PortResult;

pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = PortResult<()>> + Send>> + Send + Sync>;

pub fn router(readiness: ReadinessCheck) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(crate::metrics::handler))
        .with_state(readiness)
}

async fn ready(State(check): State<ReadinessCheck>) -> (StatusCode, Json<serde_json::Value>) {
    match check().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({ "error": { "code": "dependency_unavailable", "message": err.to_string() } }),
            ),
        ),
    }
}

/// Serves `router` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health endpoints listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

/// What every consumer binary does once wired: serve the probes and
/// metrics, consume `queue` with `handler` until SIGTERM, then stop both.
pub async fn run_consumer<Q: crate::ports::Queue, H: crate::consumer::Handler>(
    name: &'static str,
    queue: Arc<Q>,
    handler: Arc<H>,
    config: crate::consumer::ConsumerConfig,
    health_listen: SocketAddr,
    readiness: ReadinessCheck,
) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    let server = tokio::spawn(serve(health_listen, router(readiness), shutdown.clone()));
    crate::consumer::run(name, queue, handler, config, shutdown.clone()).await;
    shutdown.cancel();
    match server.await {
        Ok(result) => result,
        Err(err) => Err(anyhow::anyhow!("health server task: {err}")),
    }
}

//! Prometheus metrics every service exposes on `/metrics`. One process-wide
//! registry; the names are part of the operations contract (dashboards,
//! alerts and the k8s ServiceMonitor refer to them), so change them only
//! together with `k8s/` and the README.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub queue: String,
    /// `transient` (retried in place) or `permanent` (redelivered, then
    /// dead-lettered).
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    pub messages_received: Family<QueueLabels, Counter>,
    pub messages_processed: Family<QueueLabels, Counter>,
    pub messages_failed: Family<FailureLabels, Counter>,
    pub message_processing_seconds: Histograms<QueueLabels>,
    pub messages_in_flight: Family<QueueLabels, Gauge>,
    pub tagger_stage_seconds: Histograms<StageLabels>,
    pub images_tagged: Family<BackendLabels, Counter>,
    pub http_request_duration_seconds: Histograms<HttpLabels>,
    registry: Registry,
}

/// Every metric name, as scraped (the drift test between code and
/// manifests reads this list).
pub const METRIC_NAMES: &[&str] = &[
    "imagetag_messages_received_total",
    "imagetag_messages_processed_total",
    "imagetag_messages_failed_total",
    "imagetag_message_processing_seconds",
    "imagetag_messages_in_flight",
    "imagetag_tagger_stage_seconds",
    "imagetag_images_tagged_total",
    "imagetag_http_request_duration_seconds",
];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("imagetag");
    let metrics_received = Family::default();
    let messages_processed = Family::default();
    let messages_failed = Family::default();
    let message_processing_seconds: Histograms<QueueLabels> =
        Family::new_with_constructor(seconds_histogram);
    let messages_in_flight = Family::default();
    let tagger_stage_seconds: Histograms<StageLabels> =
        Family::new_with_constructor(seconds_histogram);
    let images_tagged = Family::default();
    let http_request_duration_seconds: Histograms<HttpLabels> =
        Family::new_with_constructor(seconds_histogram);
    registry.register(
        "messages_received",
        "Messages received from the service's queue",
        Family::<QueueLabels, Counter>::clone(&metrics_received),
    );
    registry.register(
        "messages_processed",
        "Messages handled successfully and acknowledged",
        Family::<QueueLabels, Counter>::clone(&messages_processed),
    );
    registry.register(
        "messages_failed",
        "Handling attempts that failed, by kind (transient: retried in place; permanent: redelivered until dead-lettered)",
        Family::<FailureLabels, Counter>::clone(&messages_failed),
    );
    registry.register(
        "message_processing_seconds",
        "Time from receiving a message to its outcome",
        message_processing_seconds.clone(),
    );
    registry.register(
        "messages_in_flight",
        "Messages being handled right now",
        Family::<QueueLabels, Gauge>::clone(&messages_in_flight),
    );
    registry.register(
        "tagger_stage_seconds",
        "Tagger time per stage (fetch, decode, tag, thumbnail, total)",
        tagger_stage_seconds.clone(),
    );
    registry.register(
        "images_tagged",
        "Images tagged, by backend",
        Family::<BackendLabels, Counter>::clone(&images_tagged),
    );
    registry.register(
        "http_request_duration_seconds",
        "Query API request latency by method, route template and status",
        http_request_duration_seconds.clone(),
    );
    Metrics {
        messages_received: metrics_received,
        messages_processed,
        messages_failed,
        message_processing_seconds,
        messages_in_flight,
        tagger_stage_seconds,
        images_tagged,
        http_request_duration_seconds,
        registry,
    }
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

pub fn queue(name: &str) -> QueueLabels {
    QueueLabels {
        queue: name.to_owned(),
    }
}

pub fn observe_stage(stage: &str, elapsed: Duration) {
    metrics()
        .tagger_stage_seconds
        .get_or_create(&StageLabels {
            stage: stage.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let mut out = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &metrics().registry) {
        tracing::warn!(error = %err, "encoding metrics failed");
    }
    out
}

/// `GET /metrics`, for any axum router.
pub async fn handler() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_metric_is_rendered_once_used() {
        metrics().messages_received.get_or_create(&queue("q")).inc();
        metrics()
            .messages_processed
            .get_or_create(&queue("q"))
            .inc();
        metrics()
            .messages_failed
            .get_or_create(&FailureLabels {
                queue: "q".into(),
                kind: "transient".into(),
            })
            .inc();
        metrics()
            .message_processing_seconds
            .get_or_create(&queue("q"))
            .observe(0.2);
        metrics()
            .messages_in_flight
            .get_or_create(&queue("q"))
            .set(1);
        observe_stage("decode", Duration::from_millis(5));
        metrics()
            .images_tagged
            .get_or_create(&BackendLabels {
                backend: "local".into(),
            })
            .inc();
        metrics()
            .http_request_duration_seconds
            .get_or_create(&HttpLabels {
                method: "GET".into(),
                route: "/v1/images".into(),
                status: 200,
            })
            .observe(0.01);
        let text = render();
        for name in METRIC_NAMES {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}

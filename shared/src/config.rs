//! Typed configuration pieces the service binaries flatten into their own
//! clap structs. Every option can be set by flag or environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Default, Args)]
pub struct AwsArgs {
    /// Endpoint for every AWS API (for moto or another compatible server);
    /// unset means the real AWS endpoints.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,

    /// Region; unset means the SDK's usual lookup (AWS_REGION, profile, IMDS).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,

    /// Path-style S3 addressing, which S3-compatible servers usually need.
    #[arg(long, env = "IMAGETAG_S3_FORCE_PATH_STYLE", default_value_t = false)]
    pub s3_force_path_style: bool,
}

impl AwsArgs {
    pub fn s3_client(&self, sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(self.s3_force_path_style)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

#[derive(Debug, Clone, Args)]
pub struct TableNames {
    /// DynamoDB table of image records.
    #[arg(long = "images-table", env = "IMAGETAG_IMAGES_TABLE")]
    pub images: String,

    /// DynamoDB table of postings (term → image).
    #[arg(long = "postings-table", env = "IMAGETAG_POSTINGS_TABLE")]
    pub postings: String,

    /// DynamoDB table of per-term image counts.
    #[arg(long = "tags-table", env = "IMAGETAG_TAGS_TABLE")]
    pub tags: String,
}

/// How a service consumes its queue.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Messages handled at once.
    #[arg(long, env = "IMAGETAG_MAX_IN_FLIGHT", default_value_t = 8)]
    pub max_in_flight: usize,

    /// Long-poll wait per receive, in seconds (at most 20).
    #[arg(long, env = "IMAGETAG_RECEIVE_WAIT_SECONDS", default_value_t = 20)]
    pub receive_wait_seconds: u64,

    /// Visibility timeout given to received messages, in seconds; extended
    /// while a message is still being worked on.
    #[arg(long, env = "IMAGETAG_VISIBILITY_SECONDS", default_value_t = 60)]
    pub visibility_seconds: u64,

    /// On SIGTERM, how long in-flight messages may take to finish before
    /// they are released back to the queue, in seconds.
    #[arg(long, env = "IMAGETAG_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,
}

impl ConsumerArgs {
    pub fn consumer_config(&self) -> crate::consumer::ConsumerConfig {
        crate::consumer::ConsumerConfig {
            max_in_flight: self.max_in_flight.max(1),
            receive_wait: Duration::from_secs(self.receive_wait_seconds.min(20)),
            visibility: Duration::from_secs(self.visibility_seconds.max(2)),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            ..Default::default()
        }
    }
}

/// The small HTTP server every consumer runs for probes and metrics.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Address of the /healthz and /readyz endpoints.
    #[arg(long, env = "IMAGETAG_HEALTH_LISTEN", default_value = "0.0.0.0:9090")]
    pub health_listen: SocketAddr,
}

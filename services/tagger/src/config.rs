//! Command line and environment of `imagetag-tagger`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use imagetag_shared::config::{AwsArgs, ConsumerArgs, HealthArgs};

use crate::DEFAULT_MAX_OBJECT_BYTES;
use crate::decode::{DEFAULT_MAX_DIMENSION, DEFAULT_MAX_PIXELS, DecodeLimits};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Built-in ONNX models, run in-process.
    Local,
    /// Amazon Rekognition DetectLabels.
    Rekognition,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Rekognition => "rekognition",
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "imagetag-tagger",
    version,
    about = "Tags images: reads tag jobs, labels each image and sends the labels to the indexer"
)]
pub struct Config {
    #[command(flatten)]
    pub aws: AwsArgs,

    #[command(flatten)]
    pub consumer: ConsumerArgs,

    #[command(flatten)]
    pub health: HealthArgs,

    /// URL of the SQS queue of tag jobs (from ingest).
    #[arg(long, env = "IMAGETAG_TAG_QUEUE_URL")]
    pub tag_queue_url: String,

    /// URL of the SQS queue read by the indexer.
    #[arg(long, env = "IMAGETAG_INDEX_QUEUE_URL")]
    pub index_queue_url: String,

    /// Which labels the images: the built-in models or Amazon Rekognition.
    #[arg(long, env = "IMAGETAG_TAGGER_BACKEND", value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,

    /// TOML file of the tagging policy (see policy.example.toml); without
    /// one, labels need 50% confidence and at most 25 are kept.
    #[arg(long, env = "IMAGETAG_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// Objects larger than this many bytes are rejected without being
    /// downloaded.
    #[arg(
        long,
        env = "IMAGETAG_MAX_OBJECT_BYTES",
        default_value_t = DEFAULT_MAX_OBJECT_BYTES,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_object_bytes: u64,

    /// Images with more pixels (width × height) than this are rejected from
    /// their header, before any pixel is decoded; also bounds the memory a
    /// decoder may use.
    #[arg(
        long,
        env = "IMAGETAG_MAX_PIXELS",
        default_value_t = DEFAULT_MAX_PIXELS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_pixels: u64,

    /// Images wider or taller than this many pixels are rejected from their
    /// header.
    #[arg(
        long,
        env = "IMAGETAG_MAX_DIMENSION",
        default_value_t = DEFAULT_MAX_DIMENSION,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_dimension: u32,

    /// Images decoded or re-encoded at once; defaults to the number of cores.
    #[arg(long, env = "IMAGETAG_DECODE_CONCURRENCY")]
    pub decode_concurrency: Option<usize>,

    /// Folder of the prepared built-in models (`scripts/prepare-models`).
    #[arg(long, env = "IMAGETAG_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,

    /// Bucket for thumbnails (usually the images bucket); unset, none are made.
    #[arg(long, env = "IMAGETAG_THUMBNAIL_BUCKET")]
    pub thumbnail_bucket: Option<String>,

    /// Key prefix of thumbnails; ingest skips keys under it.
    #[arg(long, env = "IMAGETAG_THUMBNAIL_PREFIX", default_value = "thumbnails/")]
    pub thumbnail_prefix: String,
}

impl Config {
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_pixels: self.max_pixels,
            max_dimension: self.max_dimension,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(
            [
                "imagetag-tagger",
                "--tag-queue-url",
                "http://q/tag",
                "--index-queue-url",
                "http://q/index",
            ]
            .iter()
            .chain(args),
        )
    }

    #[test]
    fn defaults_and_overrides() {
        let config = parse(&[]).expect("parses");
        assert_eq!(config.backend, BackendKind::Local);
        assert_eq!(config.max_object_bytes, 50 * 1024 * 1024);
        assert_eq!(config.decode_limits(), DecodeLimits::default());
        assert!(config.policy_file.is_none());

        let config = parse(&[
            "--backend",
            "rekognition",
            "--max-pixels",
            "1000",
            "--max-dimension",
            "64",
        ])
        .expect("parses");
        assert_eq!(config.backend, BackendKind::Rekognition);
        assert_eq!(
            config.decode_limits(),
            DecodeLimits {
                max_pixels: 1000,
                max_dimension: 64
            }
        );

        assert!(parse(&["--backend", "onnx"]).is_err());
        assert!(parse(&["--max-pixels", "0"]).is_err());
    }
}

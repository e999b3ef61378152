//! Adapters from the ports to AWS: S3, SQS and DynamoDB.

mod dynamodb;
mod s3;
mod sqs;

pub use dynamodb::DynamoStore;
pub use s3::S3ObjectStore;
pub use sqs::SqsQueue;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::{
    Builder,
    tls::{self, rustls_provider::CryptoMode},
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::config::AwsArgs;
use crate::error::PortError;

/// Loads region and credentials the standard way (environment, web identity
/// for IRSA, container and instance metadata), with a rustls/ring HTTP client
/// so the build needs no C crypto toolchain.
pub async fn load_sdk_config(args: &AwsArgs) -> SdkConfig {
    let http_client = Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client);
    if let Some(endpoint) = &args.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(region) = &args.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    loader.load().await
}

/// Maps an SDK error to a port error by what retrying can achieve: throttling,
/// timeouts, connection failures and server faults are transient, the rest
/// is not.
pub fn classify<E>(err: SdkError<E, HttpResponse>) -> PortError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let message = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or_default();
            if status >= 500 || status == 429 || is_throttling(code) {
                PortError::Unavailable(message)
            } else {
                PortError::Invalid(message)
            }
        }
        SdkError::ConstructionFailure(_) => PortError::Invalid(message),
        _ => PortError::Unavailable(message),
    }
}

/// The error code of a service error, for adapters that treat some codes
/// (not found, condition failed) as answers rather than failures.
pub fn service_code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    match err {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

pub fn service_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    match err {
        SdkError::ServiceError(service) => Some(service.raw().status().as_u16()),
        _ => None,
    }
}

fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "SlowDown"
            | "RequestThrottled"
            | "InternalServerError"
            | "ServiceUnavailable"
    )
}

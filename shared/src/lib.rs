//! Everything the imagetag services share: the message contracts that travel
//! between them, the ports (traits) their logic is written against, typed
//! configuration, telemetry, and the AWS adapters that implement the ports.

pub mod aws;
pub mod config;
pub mod consumer;
pub mod error;
pub mod health;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod ports;
pub mod redrive;
pub mod telemetry;

pub use error::{PortError, PortResult};

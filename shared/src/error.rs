use std::fmt;

/// Failure of an adapter behind a port. The split matters to the consumers:
/// transient errors are retried with backoff and never dead-letter a message
/// early; permanent ones go to the dead-letter queue after the bounded retries.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("not found: {0}")]
    NotFound(String),
    /// A conditional write lost a race or found newer state.
    #[error("condition failed: {0}")]
    Conflict(String),
    /// The dependency is down, throttling or timing out.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// The request or the stored data is wrong and will stay wrong.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl PortError {
    pub fn unavailable(err: impl fmt::Display) -> Self {
        Self::Unavailable(err.to_string())
    }

    pub fn invalid(err: impl fmt::Display) -> Self {
        Self::Invalid(err.to_string())
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Conflict(_))
    }
}

pub type PortResult<T> = Result<T, PortError>;

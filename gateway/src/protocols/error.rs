//! How a session ends: one error type for everything that can cut a relayed or inspected
//! connection, and the one place where each cause becomes a recorded `Outcome`.
use std::{io, time::Duration};

use humantime::format_duration;

use crate::vocabulary::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Not a `source`: the message already says it, and `{:#}` would print it twice.
    #[error("malformed HTTP from the client: {0}")]
    MalformedRequest(hyper::Error),
    #[error("no complete request head within header_read_timeout ({})", format_duration(*.0))]
    HeaderReadTimeout(Duration),
    #[error("idle for {}: no byte either way (idle_timeout)", format_duration(*.0))]
    Idle(Duration),
    #[error("upstream HTTP handshake: {0}")]
    UpstreamHandshake(hyper::Error),
    /// The client's HTTP connection failed other than by a parse error or a timeout.
    #[error("{0}")]
    Client(Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Io(io::Error),
    #[error("gateway shut down before the session ended")]
    Shutdown,
}

impl SessionError {
    pub fn outcome(&self) -> Outcome {
        match self {
            SessionError::MalformedRequest(_) | SessionError::UpstreamHandshake(_) => {
                Outcome::Error
            }
            SessionError::HeaderReadTimeout(_) | SessionError::Idle(_) => Outcome::Timeout,
            SessionError::Client(_) => Outcome::Reset,
            SessionError::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => Outcome::Reset,
                _ => Outcome::Error,
            },
            SessionError::Shutdown => Outcome::Shutdown,
        }
    }
}

/// What a relayed or inspected session moved, and what ended it if not a clean close.
#[derive(Debug)]
pub struct SessionResult {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub error: Option<SessionError>,
}

impl SessionResult {
    pub fn outcome(&self) -> Outcome {
        self.error
            .as_ref()
            .map_or(Outcome::Closed, SessionError::outcome)
    }
}

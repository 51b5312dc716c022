//! How a session ends: one error type for everything that can cut a relayed or inspected
//! connection, and the one place where each cause becomes a recorded `Outcome`.
use std::{io, time::Duration};

use humantime::format_duration;

use crate::{
    interception_ca::{CaError, LeafName},
    vocabulary::Outcome,
};

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
    /// An exec or attach stream broke: a malformed frame, an oversized message, a reset.
    #[error("WebSocket with the {0}: {1}")]
    WebSocket(&'static str, tokio_tungstenite::tungstenite::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why TLS with the client or the API server failed (`kubernetes` targets).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The client refused the interception certificate: it does not trust the CA.
    #[error(
        "the client rejected the interception certificate for {name} (TLS alert {alert:?}); give the pod the bundle `interlock ca-bundle` prints as the CA it trusts for the API server"
    )]
    RejectedByClient {
        name: LeafName,
        alert: rustls::AlertDescription,
    },
    #[error(
        "the client asked for {0}, which the interception CA may not certify; add it to interception_ca.names or .addresses if it is the API server"
    )]
    NameNotPermitted(LeafName),
    #[error("TLS from the client: {0}")]
    Client(io::Error),
    #[error("TLS to the API server: {0}; check the target's upstream_ca")]
    Upstream(io::Error),
    #[error(transparent)]
    Ca(#[from] CaError),
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
            SessionError::WebSocket(_, _) => Outcome::Error,
            SessionError::Tls(TlsError::RejectedByClient { .. }) => Outcome::TlsRejectedByClient,
            SessionError::Tls(TlsError::NameNotPermitted(_)) => Outcome::Refused,
            SessionError::Tls(_) => Outcome::Error,
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

//! Words that recording, telemetry and the data path all speak: which way bytes went, how a
//! session or a hold ended, and which cap refused a session. Records serialize them as they
//! are, so renaming a variant is a change to the record format.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to upstream.
    Up,
    /// Upstream to client.
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Both sides finished normally.
    Closed,
    /// The upstream refused the connection (RST to SYN).
    UpstreamRefused,
    /// The upstream did not answer within `upstream_connect_timeout`.
    UpstreamTimeout,
    /// The upstream could not be reached (no route, host down).
    UpstreamUnreachable,
    /// Either side reset the connection mid-session.
    Reset,
    /// Another I/O error ended the session.
    Error,
    /// The gateway shut down before the session finished.
    Shutdown,
    /// A timeout ended the session: idle, header read or upstream response (the error says
    /// which and how long).
    Timeout,
    /// The gateway refused the session at a limit (the error names it); nothing was relayed.
    Refused,
    /// The client refused the interception certificate (`kubernetes` targets): it does not
    /// trust the interception CA. Nothing was relayed.
    TlsRejectedByClient,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::UpstreamRefused => "upstream_refused",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamUnreachable => "upstream_unreachable",
            Outcome::Reset => "reset",
            Outcome::Error => "error",
            Outcome::Shutdown => "shutdown",
            Outcome::Timeout => "timeout",
            Outcome::Refused => "refused",
            Outcome::TlsRejectedByClient => "tls_rejected_by_client",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldOutcome {
    Approved,
    Denied,
    TimedOut,
    /// The gateway stopped first: the request was denied.
    Interrupted,
}

impl HoldOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldOutcome::Approved => "approved",
            HoldOutcome::Denied => "denied",
            HoldOutcome::TimedOut => "timed_out",
            HoldOutcome::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node's cap, `limits.max_sessions`.
    Node(usize),
    /// The workload's cap, `limits.max_sessions_per_workload`.
    Workload(usize),
}

impl Refusal {
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::Node(_) => "node",
            Refusal::Workload(_) => "workload",
        }
    }

    pub fn describe(self) -> String {
        match self {
            Refusal::Node(n) => {
                format!("the gateway is at limits.max_sessions ({n} open sessions on this node)")
            }
            Refusal::Workload(n) => {
                format!("this workload is at limits.max_sessions_per_workload ({n} open sessions)")
            }
        }
    }
}

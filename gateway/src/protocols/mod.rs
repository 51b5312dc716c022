//! One client connection, from bytes to protocol inspectors. `serve` picks the path by the
//! target's protocol: tcp sessions go through the copy loop; `http` and `mcp` sessions
//! through the HTTP layer, with the inspector of their protocol.
//! - `target`: what is intercepted;
//! - `error`: how a session ends;
//! - `copy`: the copy loop over any stream;
//! - `l7`: the per-connection context and the exchange log;
//! - `http`: HTTP/1.1 and HTTP/2 on the client side, with inspectors;
//! - `mcp`: the MCP inspector.
pub mod copy;
pub mod error;
pub mod http;
pub mod kubernetes;
pub mod l7;
pub mod mcp;
pub mod target;

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use self::{
    error::SessionResult,
    http::{inspect::Plain, upstream::Redial},
    l7::Exchange,
    mcp::{McpInspector, holds::HoldDesk},
    target::{Protocol, Target},
};
use crate::{
    identity::Workload, masking::Masker, policy::Policy, recording::SessionRecorder,
    tokens::TokenVerifiers,
};

/// What every session on the node shares.
pub struct NodeServices {
    pub masker: Arc<Masker>,
    pub desk: Arc<HoldDesk>,
    /// The bearer-token verifiers: node mode's service-account tokens, `identity.oidc`.
    pub tokens: Arc<TokenVerifiers>,
}

/// One recorded session, as the accept path hands it over.
pub struct Session {
    pub recorder: SessionRecorder,
    pub target: Target,
    pub workload: Workload,
    /// The policy as it is when the session starts.
    pub policy: Arc<Policy>,
    /// Cancelled when the gateway cuts open sessions.
    pub hard_stop: CancellationToken,
}

/// Serves a session whose upstream is connected, until both sides are done.
pub async fn serve(
    client: TcpStream,
    upstream: TcpStream,
    redial: Redial,
    session: Session,
    services: &NodeServices,
) -> SessionResult {
    let Session {
        recorder,
        target,
        workload,
        policy,
        hard_stop,
    } = session;
    let protocol = target.protocol;
    if protocol == Protocol::Tcp {
        // Bytes only: nothing else is kept for as long as the session is open.
        let idle_timeout = target.idle_timeout;
        drop((target, workload, policy, redial));
        return copy::relay(
            client.into_split(),
            upstream.into_split(),
            Some(&recorder),
            &hard_stop,
            idle_timeout,
        )
        .await;
    }
    let (exchange, pumps) = Exchange::new(
        recorder,
        target,
        workload,
        services.masker.clone(),
        hard_stop,
        services.tokens.clone(),
    );
    let exchange = Arc::new(exchange);
    // Boxed: the HTTP layer's state is far larger than the copy loop's, and every idle tcp
    // session would otherwise carry room for it.
    match protocol {
        Protocol::Mcp => {
            let inspector = McpInspector {
                policy,
                desk: services.desk.clone(),
            };
            Box::pin(http::serve(
                client, upstream, redial, exchange, pumps, inspector,
            ))
            .await
        }
        Protocol::Http | Protocol::Tcp => {
            Box::pin(http::serve(
                client, upstream, redial, exchange, pumps, Plain,
            ))
            .await
        }
    }
}

#[cfg(test)]
mod tests;

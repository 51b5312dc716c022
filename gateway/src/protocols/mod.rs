//! One client connection, from bytes to protocol inspectors. `serve` picks the path by the
//! target's protocol: tcp sessions go through the copy loop; `http` and `mcp` sessions
//! through the HTTP layer, with the inspector of their protocol; `kubernetes` sessions
//! through TLS on both sides first.
//! - `target`: what is intercepted;
//! - `error`: how a session ends;
//! - `copy`: the copy loop over any stream;
//! - `l7`: the per-connection context and the exchange log;
//! - `http`: HTTP/1.1 and HTTP/2 on the client side, with inspectors;
//! - `mcp`: the MCP inspector;
//! - `kubernetes`: the API-server path.
pub mod copy;
pub mod error;
pub mod http;
pub mod kubernetes;
pub mod l7;
pub mod mcp;
pub mod target;

use std::{io, net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use self::{
    error::{SessionError, SessionResult, TlsError},
    http::{
        inspect::Plain,
        upstream::{Connection, Dial},
    },
    kubernetes::{inspect::KubeInspector, tls::ApiServerTls},
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
    /// The TLS of `kubernetes` targets; none when the config has none.
    pub api_server_tls: Option<Arc<ApiServerTls>>,
}

/// One recorded session, as the accept path hands it over.
pub struct Session {
    pub recorder: SessionRecorder,
    pub target: Target,
    pub workload: Workload,
    /// Where the client was going, before the redirect.
    pub original_dst: SocketAddr,
    /// The policy as it is when the session starts.
    pub policy: Arc<Policy>,
    /// Cancelled when the gateway cuts open sessions.
    pub hard_stop: CancellationToken,
}

/// Serves a session whose upstream is connected, until both sides are done.
pub async fn serve(
    client: TcpStream,
    upstream: TcpStream,
    dial: Dial,
    session: Session,
    services: &NodeServices,
) -> SessionResult {
    let Session {
        recorder,
        target,
        workload,
        original_dst,
        policy,
        hard_stop,
    } = session;
    let protocol = target.protocol;
    if protocol == Protocol::Tcp {
        // Bytes only: nothing else is kept for as long as the session is open.
        let idle_timeout = target.idle_timeout;
        drop((target, workload, policy, dial));
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
            let upstream = Some(Connection::http1(upstream));
            Box::pin(http::serve(
                client,
                upstream,
                Connection::plain_redial(dial),
                exchange,
                pumps,
                inspector,
            ))
            .await
        }
        Protocol::Http | Protocol::Tcp => {
            let upstream = Some(Connection::http1(upstream));
            Box::pin(http::serve(
                client,
                upstream,
                Connection::plain_redial(dial),
                exchange,
                pumps,
                Plain,
            ))
            .await
        }
        Protocol::Kubernetes => match &services.api_server_tls {
            Some(tls) => {
                let connections = kubernetes::Connections {
                    client,
                    upstream,
                    dial,
                    original_dst,
                };
                Box::pin(kubernetes::serve(
                    connections,
                    tls,
                    exchange,
                    pumps,
                    KubeInspector::new(policy, services.desk.approvals.clone()),
                ))
                .await
            }
            // Config loading builds the TLS whenever a target is `kubernetes`.
            None => error::SessionResult {
                bytes_up: 0,
                bytes_down: 0,
                error: Some(SessionError::Tls(TlsError::Client(io::Error::other(
                    "no interception CA is loaded",
                )))),
            },
        },
    }
}

#[cfg(test)]
mod tests;

//! The API-server path (`protocol: kubernetes` targets): the pod's TLS terminated and opened
//! again to the API server, then every request read as the API server itself reads it.
//! - `tls`: both sides' TLS;
//! - `inspect`: each request decided and recorded, each answer summed up;
//! - `channels`: exec, attach and port-forward over WebSocket, recorded by channel;
//! - `spdy`: SPDY streams (port-forward, and an old kubectl's exec), recorded by stream.
pub mod channels;
pub mod inspect;
pub mod spdy;
pub mod tls;

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpStream, sync::mpsc};

use self::{inspect::KubeInspector, tls::ApiServerTls};
use crate::{
    protocols::{
        error::{SessionError, SessionResult},
        http::{self, upstream::Dial},
        l7::{Exchange, Pump},
    },
    telemetry::events::{ClientTlsFailed, InternalEvent},
};

/// A pod's connection to the API server, and the one the gateway opened for it.
pub struct Connections {
    pub client: TcpStream,
    pub upstream: TcpStream,
    /// Opens another upstream connection when the first one closes.
    pub dial: Dial,
    /// Where the pod was going: the leaf names it when the client sends no SNI.
    pub original_dst: SocketAddr,
}

/// Serves one pod connection to the API server: TLS with the client first (its SNI names the
/// leaf and the upstream's server name), then TLS upstream over the connection already open,
/// then the HTTP layer between the two, with the API-server inspector.
pub async fn serve(
    connections: Connections,
    tls: &ApiServerTls,
    exchange: Arc<Exchange>,
    pumps: mpsc::UnboundedReceiver<Pump>,
    inspector: KubeInspector,
) -> SessionResult {
    let Connections {
        client,
        upstream,
        dial,
        original_dst,
    } = connections;
    let failed = |error: SessionError| SessionResult {
        bytes_up: 0,
        bytes_down: 0,
        error: Some(error),
    };
    let terminated = match tls.accept(client, original_dst.ip().to_canonical()).await {
        Ok(terminated) => terminated,
        Err(error) => {
            ClientTlsFailed {
                session_id: exchange.log.session_id(),
                target: &exchange.target.name,
                error: &error,
            }
            .emit();
            return failed(error.into());
        }
    };
    let upstream_tls = match tls.upstream(&exchange.target.name, &terminated) {
        Ok(upstream_tls) => Arc::new(upstream_tls),
        Err(error) => return failed(error.into()),
    };
    // An API server that cannot be reached over TLS is answered, request by request, with a
    // Status saying why (each tries again), rather than a connection closed on the client.
    let connection = match upstream_tls.connect(upstream).await {
        Ok(connection) => Some(connection),
        Err(error) => {
            tracing::warn!(target_name = %exchange.target.name, %error, "TLS to the API server failed: each request is answered with a ServiceUnavailable Status until a connection succeeds");
            None
        }
    };
    let redial = upstream_tls.redial(dial);
    let inspector = inspector.refusing_client_certificates(terminated.client_certificate);
    http::serve(
        terminated.stream,
        connection,
        redial,
        exchange,
        pumps,
        inspector,
    )
    .await
}

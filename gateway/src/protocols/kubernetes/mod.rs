//! The API-server path (`protocol: kubernetes` targets): the pod's TLS terminated and opened
//! again to the API server, then every request read as the API server itself reads it.
//! - `tls`: both sides' TLS;
//! - `request_info`: what a request is, by the API server's own resolver.
pub mod request_info;
pub mod tls;

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpStream, sync::mpsc};

use self::tls::ApiServerTls;
use crate::{
    protocols::{
        error::{SessionError, SessionResult, TlsError},
        http::{self, inspect::Plain, upstream::Dial},
        l7::{Exchange, Pump},
    },
    telemetry::events::{ClientTlsFailed, InternalEvent},
};

/// Serves one pod connection to the API server: TLS with the client first (its SNI names the
/// leaf and the upstream's server name), then TLS upstream over the connection already open,
/// then the HTTP layer between the two.
pub async fn serve(
    client: TcpStream,
    upstream: TcpStream,
    dial: Dial,
    original_dst: SocketAddr,
    tls: &ApiServerTls,
    exchange: Arc<Exchange>,
    pumps: mpsc::UnboundedReceiver<Pump>,
) -> SessionResult {
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
    let connection = match upstream_tls.connect(upstream).await {
        Ok(connection) => connection,
        Err(e) => return failed(SessionError::Tls(TlsError::Upstream(e))),
    };
    let redial = upstream_tls.redial(dial);
    http::serve(
        terminated.stream,
        connection,
        redial,
        exchange,
        pumps,
        Plain,
    )
    .await
}

//! The admin listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text) and the approval
//! API under `/approvals` (see `approvals::api`).
pub mod control;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    approvals::Approvals,
    ebpf::Dataplane,
    telemetry::{MapLabels, metrics},
};

pub struct Admin {
    pub dataplane: Arc<Dataplane>,
    pub approvals: Arc<Approvals>,
    /// True once programs are attached and listeners bound; false again while draining.
    pub ready: AtomicBool,
    /// In node mode, true once the first pod list is applied to the maps: until then a
    /// restarted gateway is not ready, though its pinned registrations still hold.
    pub node_synced: Option<Arc<AtomicBool>>,
}

impl Admin {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot bind the admin listener on {addr}: {e}; change `admin` in the config"
                ),
            )
        })
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        info!(addr = ?listener.local_addr().ok(), "admin listening");
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "admin accept failed");
                        continue;
                    }
                },
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req).await) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path().starts_with("/approvals") {
            let verifier = self.approvals.verifier.as_ref();
            return crate::approvals::api::handle(&*self.approvals, verifier, req).await;
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" if !self.ready.load(Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
            }
            "/readyz"
                if self
                    .node_synced
                    .as_ref()
                    .is_some_and(|s| !s.load(Ordering::Relaxed)) =>
            {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: waiting for the first pod list from the API server\n".into(),
                )
            }
            "/readyz" => text(StatusCode::OK, "ready\n".into()),
            "/metrics" => {
                let m = metrics();
                for (map, count) in self.dataplane.map_entry_counts() {
                    m.bpf_map_entries
                        .get_or_create(&MapLabels { map: map.into() })
                        .set(count as i64);
                }
                text(StatusCode::OK, m.encode())
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz, /readyz, /metrics or /approvals\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

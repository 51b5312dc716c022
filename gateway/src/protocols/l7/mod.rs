//! The L7 session layer: what every request on one client connection shares (`Exchange`),
//! whichever protocol inspector reads it, and the exchange log through which all of its
//! records are written.
pub mod hold;
pub mod identity;
pub mod log;

pub use self::log::Masking;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::log::ExchangeLog;
use crate::{
    identity::Workload,
    masking::Masker,
    protocols::{error::SessionError, target::Target},
    recording::SessionRecorder,
    tokens::TokenVerifiers,
};

/// Work the connection's own task drives besides the connection: response bodies, held
/// requests and upgraded tunnels.
pub type Pump = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One client connection: the recorded session, who is behind it and where it goes.
pub struct Exchange {
    pub log: ExchangeLog,
    pub target: Target,
    pub workload: Workload,
    /// The client's bytes on the wire each way, heads included.
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Cancelled when the client connection is gone, so long-lived streams stop at once.
    pub client_gone: CancellationToken,
    /// Cancelled when the gateway cuts open sessions; an upgraded tunnel stops with it.
    pub hard_stop: CancellationToken,
    pumps: mpsc::UnboundedSender<Pump>,
    /// What ended an upgraded tunnel, when not a clean close: the session's own end.
    tunnel_end: Mutex<Option<SessionError>>,
    /// The bearer-token verifiers: node mode's service-account tokens, `identity.oidc`.
    pub tokens: Arc<TokenVerifiers>,
}

impl Exchange {
    /// The exchange, and the queue of pumps its connection's task must drive.
    pub fn new(
        session: SessionRecorder,
        target: Target,
        workload: Workload,
        masker: Arc<Masker>,
        hard_stop: CancellationToken,
        tokens: Arc<TokenVerifiers>,
    ) -> (Self, mpsc::UnboundedReceiver<Pump>) {
        let (pumps, queue) = mpsc::unbounded_channel();
        let log = ExchangeLog::new(session, masker, &target);
        let exchange = Exchange {
            log,
            target,
            workload,
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            client_gone: CancellationToken::new(),
            hard_stop,
            pumps,
            tunnel_end: Mutex::new(None),
            tokens,
        };
        (exchange, queue)
    }

    /// The node's masker, shared with the exchange log.
    pub fn masker(&self) -> &Arc<Masker> {
        self.log.masker()
    }

    /// Runs `pump` on the connection's own task, so that it crosses no thread.
    pub fn drive(&self, pump: Pump) {
        // The connection's task is gone only once the client is, and then nobody reads it.
        let _ = self.pumps.send(pump);
    }

    /// Records why an upgraded tunnel ended, for the session's end.
    pub fn end_with(&self, error: SessionError) {
        *self
            .tunnel_end
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    pub fn take_end(&self) -> Option<SessionError> {
        self.tunnel_end
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    pub fn count_up(&self, bytes: usize) {
        self.bytes_up.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count_down(&self, bytes: usize) {
        self.bytes_down.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes (up, down) so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_up.load(Ordering::Relaxed),
            self.bytes_down.load(Ordering::Relaxed),
        )
    }

    /// The target's own masking, before any policy rule overrides it.
    pub fn target_masking(&self) -> Masking {
        Masking {
            apply: self.target.mask.unwrap_or_default(),
            record_raw: self.target.record_raw,
        }
    }
}

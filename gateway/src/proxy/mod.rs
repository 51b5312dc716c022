//! The node proxy: listeners, the accept path (origin lookup, identity, durable session
//! start) and the hand-off to `protocols::serve`.
pub mod limits;
pub mod upstream;
pub mod workers;

use std::{
    collections::HashSet,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, warn};

use self::{
    limits::{SessionLimits, WorkloadKey},
    upstream::{UpstreamConnector, connect_failure_outcome},
    workers::Workers,
};
use crate::{
    approvals::Approvals,
    config::Config,
    ebpf::{Dataplane, key_addr},
    identity::{PodDirectory, Workload},
    kubernetes::config::AWAIT_TARGET,
    masking::{MaskReport, Masker},
    policy::Policy,
    protocols::{
        self, NodeServices, copy,
        http::upstream::Dial,
        mcp::{holds::HoldDesk, sessions::McpSessions},
    },
    recording::{
        Recorder,
        config::WhenFull,
        record::{Outcome, SessionEnd, SessionStart},
    },
    telemetry::events::{
        InternalEvent, OriginNotFound, SessionEnded, SessionRefusedAtLimit,
        SessionRefusedSpoolFull, SessionStarted, UpstreamConnectFailed,
    },
    tokens::TokenVerifiers,
};

pub struct Proxy<C> {
    config: Arc<Config>,
    dataplane: Arc<Dataplane>,
    recorder: Recorder,
    connector: C,
    node: String,
    /// Cancelled at SIGTERM: listeners close, open sessions carry on.
    pub stop_accepting: CancellationToken,
    /// Cancelled when the drain timeout runs out: open sessions are cut.
    pub hard_stop: CancellationToken,
    pub sessions: TaskTracker,
    /// The threads sessions run on.
    pub workers: Workers,
    /// Held across bind so two registrations cannot race for the same address.
    listeners: tokio::sync::Mutex<HashSet<SocketAddr>>,
    /// The policy in force; replaced whole on reload, so a request sees one version.
    policy: RwLock<Arc<Policy>>,
    pub services: NodeServices,
    limits: Arc<SessionLimits>,
    /// Node mode's pods, by uid: the API server's view of a workload's pod.
    pods: Arc<PodDirectory>,
}

/// What sessions consult besides the config: masking, approvals, and the pods node mode
/// knows (empty outside node mode).
pub struct Engines {
    pub masker: Arc<Masker>,
    pub api_server_tls: Option<Arc<protocols::kubernetes::tls::ApiServerTls>>,
    pub approvals: Arc<Approvals>,
    pub pods: Arc<PodDirectory>,
    pub tokens: Arc<TokenVerifiers>,
}

impl<C: UpstreamConnector> Proxy<C> {
    pub fn new(
        config: Arc<Config>,
        dataplane: Arc<Dataplane>,
        recorder: Recorder,
        engines: Engines,
        workers: Workers,
        connector: C,
    ) -> Arc<Self> {
        let Engines {
            masker,
            approvals,
            pods,
            tokens,
            api_server_tls,
        } = engines;
        // Sessions are sized to the descriptors there are: the limit is raised first.
        let fd_limit = limits::raise_fd_limit();
        let limits = SessionLimits::new(&config.limits, fd_limit);
        tracing::info!(
            fd_limit,
            max_sessions = limits.max_sessions(),
            max_sessions_per_workload = config.limits.max_sessions_per_workload,
            "session limits"
        );
        Arc::new(Proxy {
            workers,
            limits,
            services: NodeServices {
                tokens,
                api_server_tls,
                masker,
                desk: Arc::new(HoldDesk {
                    approvals,
                    sessions: Arc::new(McpSessions::new(config.mcp_session_idle)),
                }),
            },
            node: config.node_name(),
            pods,
            dataplane,
            recorder,
            connector,
            stop_accepting: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            sessions: TaskTracker::new(),
            listeners: tokio::sync::Mutex::new(HashSet::new()),
            policy: RwLock::new(Arc::new(config.policy.clone())),
            config,
        })
    }

    /// Sessions open now, and the most open at once since the last call.
    pub fn take_session_peak(&self) -> (usize, usize) {
        self.limits.take_peak()
    }

    /// Puts a new policy in force for requests from now on.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().expect("policy lock") = Arc::new(policy);
    }

    /// Listens on `addr` unless already listening there. Pod-facing addresses are added as
    /// cgroups from other network namespaces register.
    pub async fn ensure_listener(self: &Arc<Self>, addr: SocketAddr) -> io::Result<()> {
        let mut listeners = self.listeners.lock().await;
        if listeners.contains(&addr) {
            return Ok(());
        }
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr}: {e}; is another gateway running, or is the address not on this node?"),
            )
        })?;
        listeners.insert(addr);
        tracing::info!(%addr, "proxy listening");
        let proxy = self.clone();
        tokio::spawn(async move { proxy.accept_loop(listener).await });
        Ok(())
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.stop_accepting.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((client, peer)) => {
                    // Off this runtime's reactor, onto the chosen worker's.
                    let client = match client.into_std() {
                        Ok(client) => client,
                        Err(e) => {
                            warn!(%peer, error = %e, "accepted connection could not be handed to a worker; closed");
                            continue;
                        }
                    };
                    let proxy = self.clone();
                    self.workers.spawn(&self.sessions, move || async move {
                        match TcpStream::from_std(client) {
                            Ok(client) => proxy.serve(client, peer).await,
                            Err(e) => warn!(%peer, error = %e, "accepted connection could not be registered on its worker; closed"),
                        }
                    });
                }
                Err(e) => {
                    // Usually EMFILE/ENFILE: back off instead of spinning.
                    error!(error = %e, "accept failed; raise the file descriptor limit if this repeats");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// `interlock await` dialled the reserved address, so its pod is intercepted: it is told
    /// which pod the kernel attests for it. Nothing goes upstream and nothing is recorded.
    async fn answer_await(&self, mut client: TcpStream, origin: &interlock_common::Origin) {
        let workload = Workload::from_kernel(origin.cgroup_id, origin.pid_tgid);
        let identity = workload.pod.as_ref().and_then(|p| self.pods.identify(p));
        let answer = serde_json::json!({
            "pod_uid": workload.pod.as_ref().map(|p| &p.pod_uid),
            "namespace": identity.as_ref().map(|i| &i.namespace),
            "pod": identity.as_ref().map(|i| &i.pod),
        });
        let mut line = answer.to_string().into_bytes();
        line.push(b'\n');
        let _ = client.write_all(&line).await;
        let _ = client.shutdown().await;
    }

    async fn serve(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let Some(origin) = self.dataplane.take_flow(peer) else {
            OriginNotFound { peer }.emit();
            return;
        };
        let original_dst = key_addr(&origin.original_dst);
        let Some(target) = self.config.targets.get(usize::from(origin.target)) else {
            warn!(%peer, %original_dst, target = origin.target, "redirected connection names no configured target; closed");
            reset(client);
            return;
        };
        let _ = client.set_nodelay(true);
        if target.name == AWAIT_TARGET {
            self.answer_await(client, &origin).await;
            return;
        }
        let spool = self.recorder.spool();
        if !spool.has_room() {
            let let_through = self.config.recording.spool.when_full == WhenFull::FailOpen;
            SessionRefusedSpoolFull {
                peer,
                spool_bytes: spool.bytes(),
                max_bytes: spool.max_bytes,
                let_through,
            }
            .emit();
            if !let_through {
                reset(client);
                return;
            }
            spool.note_unrecorded();
            match self.connector.connect(original_dst).await {
                Ok(upstream) => drop(
                    copy::relay(
                        client.into_split(),
                        upstream.into_split(),
                        None,
                        &self.hard_stop,
                        target.idle_timeout,
                    )
                    .await,
                ),
                Err(_) => reset(client),
            }
            return;
        }
        let mut workload = Workload::from_kernel(origin.cgroup_id, origin.pid_tgid);
        if !target.record_raw {
            // Command lines carry credentials (`curl -H "Authorization: …"`, `--token`).
            for argument in &mut workload.cmdline {
                self.services
                    .masker
                    .mask_string(argument, &mut MaskReport::default());
            }
        }
        workload.kubernetes = workload
            .pod
            .as_ref()
            .and_then(|p| self.pods.identify(p))
            .map(Box::new);
        let session_id = uuid::Uuid::now_v7().to_string();
        let session = self.recorder.session(&session_id);
        let started = Instant::now();
        let start = SessionStart {
            node: self.node.clone(),
            target: target.name.clone(),
            protocol: target.protocol.to_string(),
            original_dst: original_dst.to_string(),
            client_addr: peer.to_string(),
            workload: workload.clone(),
        };
        let _permit = match self.limits.try_acquire(WorkloadKey::of(&workload)) {
            Ok(permit) => permit,
            Err(refusal) => {
                SessionRefusedAtLimit {
                    session_id: &session_id,
                    peer,
                    cgroup_id: origin.cgroup_id,
                    process: &workload.process,
                    refusal,
                }
                .emit();
                reset(client);
                // Recorded like any session, so that the refusal is in the trail.
                if session.start(start).await.is_ok() {
                    let refused = SessionEnd {
                        bytes_up: 0,
                        bytes_down: 0,
                        duration_ms: 0,
                        outcome: Outcome::Refused,
                        error: Some(refusal.describe()),
                        seal: None,
                    };
                    let _ = session.end(refused).await;
                }
                return;
            }
        };
        // The upstream connect overlaps the fsync; no byte moves until both are done.
        let (recorded, upstream) =
            tokio::join!(session.start(start), self.connector.connect(original_dst));

        let end = |outcome: Outcome, bytes_up, bytes_down, error: Option<String>| SessionEnd {
            bytes_up,
            bytes_down,
            duration_ms: started.elapsed().as_millis() as u64,
            outcome,
            error,
            seal: None,
        };
        if recorded.is_ok() {
            SessionStarted {
                session_id: &session_id,
                target: &target.name,
                client: peer,
                original_dst,
                pid: workload.pid,
                process: &workload.process,
            }
            .emit();
        }
        let finished = match (recorded, upstream) {
            (Err(e), _) => {
                // Unrecorded traffic is never served; the writer already logged why. The
                // session has no record, so it gets no session_end either.
                error!(session_id, error = %e, "session_start could not be recorded; connection refused");
                reset(client);
                return;
            }
            (Ok(()), Err(e)) => {
                UpstreamConnectFailed {
                    session_id: &session_id,
                    target: &target.name,
                    upstream: original_dst,
                    error: &e,
                }
                .emit();
                reset(client);
                end(connect_failure_outcome(&e), 0, 0, Some(e.to_string()))
            }
            (Ok(()), Ok(upstream)) => {
                let serving = protocols::Session {
                    recorder: session.clone(),
                    target: target.clone(),
                    workload,
                    original_dst,
                    policy: self.policy.read().expect("policy lock").clone(),
                    hard_stop: self.hard_stop.clone(),
                };
                let dial = self.dial(original_dst);
                let r = protocols::serve(client, upstream, dial, serving, &self.services).await;
                let outcome = r.outcome();
                end(
                    outcome,
                    r.bytes_up,
                    r.bytes_down,
                    r.error.map(|e| e.to_string()),
                )
            }
        };
        SessionEnded {
            session_id: &session_id,
            target: &target.name,
            outcome: finished.outcome.as_str(),
            bytes_up: finished.bytes_up,
            bytes_down: finished.bytes_down,
            duration: started.elapsed(),
        }
        .emit();
        if let Err(e) = session.end(finished).await {
            error!(session_id, error = %e, "session_end could not be recorded");
        }
    }

    /// Connects to `addr` again, through the same connector as the session's first connection.
    fn dial(self: &Arc<Self>, addr: SocketAddr) -> Dial {
        let proxy = self.clone();
        Box::new(move || {
            let proxy = proxy.clone();
            Box::pin(async move { proxy.connector.connect(addr).await })
        })
    }
}

/// Closes with RST, so the client fails at once instead of seeing an empty, clean close.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

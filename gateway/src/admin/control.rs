//! The local control socket through which `interlock wrap` registers cgroups.
//!
//! One JSON object per line each way. Only root (checked with SO_PEERCRED) may register: a
//! registration decides which processes are intercepted. A registration lives as long as the
//! connection that made it, so a wrap that dies cannot leave interception behind.
use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    cgroup::{self, CgroupError},
    ebpf::{Dataplane, DataplaneError, ProxyAddrs, TargetSet},
    proxy::{Proxy, upstream::UpstreamConnector},
    telemetry::events::{
        CgroupAdopted, CgroupRegistered, CgroupUnregistered, ControlRequestRejected, InternalEvent,
    },
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Create a cgroup for a wrapped command and intercept it. `pod_proxy` is the host-side
    /// address that processes in another network namespace reach the node on.
    Register {
        pod_proxy: Option<IpAddr>,
    },
    Unregister,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    pub error: Option<String>,
    /// Absolute path of the created cgroup directory.
    pub cgroup: Option<PathBuf>,
    pub cgroup_id: Option<u64>,
}

impl ControlResponse {
    fn error(message: String) -> Self {
        ControlResponse {
            ok: false,
            error: Some(message),
            cgroup: None,
            cgroup_id: None,
        }
    }
}

pub struct ControlServer<C> {
    pub dataplane: Arc<Dataplane>,
    pub proxy: Arc<Proxy<C>>,
    pub listen_v4: SocketAddr,
    pub listen_v6: Option<SocketAddr>,
    /// Names this gateway's wrap cgroups (`cgroup::gateway_tag`).
    pub gateway_tag: String,
    /// Registrations taken over from a previous gateway: (cgroup id, path).
    pub adopted: std::sync::Mutex<Vec<(u64, PathBuf)>>,
}

/// Why the control socket or a registration failed. Not `source`s: each message already
/// says its cause, and `{:#}` would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "another gateway is already running on control socket {}; stop it first or give this \
         one a different control_socket", .0.display()
    )]
    AlreadyRunning(PathBuf),
    #[error("{doing}: {error}")]
    Io {
        doing: String,
        error: std::io::Error,
    },
    /// Already says what to do (`Proxy::ensure_listener`).
    #[error("{0}")]
    Listen(std::io::Error),
    #[error("{0}")]
    Dataplane(#[from] DataplaneError),
    #[error("{0}")]
    Cgroup(#[from] CgroupError),
}

type Result<T> = std::result::Result<T, ControlError>;

fn io_error(doing: String) -> impl FnOnce(std::io::Error) -> ControlError {
    move |error| ControlError::Io { doing, error }
}

/// Binds the control socket, refusing to steal it from a gateway that is still running.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_error(format!(
            "removing the stale control socket {}",
            path.display()
        )))?;
    }
    let listener = UnixListener::bind(path).map_err(io_error(format!(
        "binding control socket {}",
        path.display()
    )))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_error(
        format!("making control socket {} private", path.display()),
    ))?;
    Ok(listener)
}

impl<C: UpstreamConnector> ControlServer<C> {
    pub async fn serve(self: Arc<Self>, listener: UnixListener, stop: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let server = self.clone();
                    tokio::spawn(async move { server.handle(stream).await });
                }
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn handle(&self, stream: UnixStream) {
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        if uid != Some(0) {
            let reason = "only root may register cgroups for interception";
            ControlRequestRejected { reason, uid }.emit();
            // Read the request first: closing with it unread would reset the connection and
            // could discard our answer before the caller reads it.
            let _ = tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await;
            let _ = send(&mut write, &ControlResponse::error(reason.into())).await;
            return;
        }
        let mut registered: Option<(u64, PathBuf)> = None;
        loop {
            let request = match lines.next_line().await {
                Ok(Some(line)) => serde_json::from_str::<ControlRequest>(&line),
                // EOF or a broken connection ends the registration.
                Ok(None) | Err(_) => break,
            };
            let response = match request {
                Err(e) => {
                    let reason = format!("malformed control request: {e}");
                    ControlRequestRejected {
                        reason: &reason,
                        uid,
                    }
                    .emit();
                    ControlResponse::error(reason)
                }
                Ok(ControlRequest::Register { .. }) if registered.is_some() => {
                    ControlResponse::error("this connection already registered a cgroup".into())
                }
                Ok(ControlRequest::Register { pod_proxy }) => {
                    match self.register(pod_proxy).await {
                        Ok((id, path)) => {
                            let response = ControlResponse {
                                ok: true,
                                error: None,
                                cgroup: Some(path.clone()),
                                cgroup_id: Some(id),
                            };
                            registered = Some((id, path));
                            response
                        }
                        Err(e) => ControlResponse::error(format!("{e:#}")),
                    }
                }
                Ok(ControlRequest::Unregister) => {
                    if let Some((id, path)) = registered.take() {
                        self.unregister(id, &path).await;
                    }
                    ControlResponse {
                        ok: true,
                        error: None,
                        cgroup: None,
                        cgroup_id: None,
                    }
                }
            };
            if send(&mut write, &response).await.is_err() {
                break;
            }
        }
        if let Some((id, path)) = registered {
            self.unregister(id, &path).await;
        }
    }

    /// Where a registration's connections go: the node listeners, or a listener on the
    /// host-side address that a pod's network namespace reaches the node on.
    async fn proxy_for(&self, pod_proxy: Option<IpAddr>) -> Result<ProxyAddrs> {
        Ok(match pod_proxy {
            None => ProxyAddrs {
                v4: Some(self.listen_v4),
                v6: self.listen_v6,
            },
            Some(ip @ IpAddr::V4(_)) => {
                let addr = SocketAddr::new(ip, self.listen_v4.port());
                self.proxy
                    .ensure_listener(addr)
                    .await
                    .map_err(ControlError::Listen)?;
                ProxyAddrs {
                    v4: Some(addr),
                    v6: None,
                }
            }
            Some(ip @ IpAddr::V6(_)) => {
                let port = self.listen_v6.map_or(self.listen_v4.port(), |a| a.port());
                let addr = SocketAddr::new(ip, port);
                self.proxy
                    .ensure_listener(addr)
                    .await
                    .map_err(ControlError::Listen)?;
                ProxyAddrs {
                    v4: None,
                    v6: Some(addr),
                }
            }
        })
    }

    async fn register(&self, pod_proxy: Option<IpAddr>) -> Result<(u64, PathBuf)> {
        let proxy = self.proxy_for(pod_proxy).await?;
        let parent = cgroup::wrap_parent(self.dataplane.cgroup_root())?;
        let path = parent.join(cgroup::wrap_name(
            &self.gateway_tag,
            uuid::Uuid::now_v7(),
            pod_proxy,
        ));
        std::fs::create_dir(&path)
            .map_err(io_error(format!("creating cgroup {}", path.display())))?;
        let id = cgroup::cgroup_id(&path)?;
        if let Err(e) = self.dataplane.register_cgroup(id, proxy, TargetSet::all()) {
            let _ = std::fs::remove_dir(&path);
            return Err(e.into());
        }
        CgroupRegistered {
            cgroup_id: id,
            path: &path,
            proxy: proxy.v4.or(proxy.v6),
        }
        .emit();
        Ok((id, path))
    }

    /// Registers again every wrap cgroup that still holds processes: after a restart, their
    /// next connections are intercepted (those open across the restart were cut with the
    /// old gateway). An adopted registration ends when its cgroup empties; the sweeper
    /// removes it.
    pub async fn adopt_live_wraps(&self) -> Result<Vec<(u64, PathBuf)>> {
        let parent = cgroup::wrap_parent(self.dataplane.cgroup_root())?;
        for wrap in cgroup::live_wraps(&parent, &self.gateway_tag) {
            let registered = async {
                let proxy = self.proxy_for(wrap.pod_proxy).await?;
                self.dataplane
                    .register_cgroup(wrap.cgroup_id, proxy, TargetSet::all())?;
                Ok::<_, ControlError>(proxy)
            };
            match registered.await {
                Ok(proxy) => {
                    CgroupAdopted {
                        cgroup_id: wrap.cgroup_id,
                        path: &wrap.path,
                        proxy: proxy.v4.or(proxy.v6),
                    }
                    .emit();
                    self.adopted
                        .lock()
                        .expect("adopted lock")
                        .push((wrap.cgroup_id, wrap.path));
                }
                Err(e) => {
                    warn!(path = %wrap.path.display(), error = %format!("{e:#}"), "a live wrap cgroup could not be adopted; its processes connect unintercepted")
                }
            }
        }
        Ok(self.adopted.lock().expect("adopted lock").clone())
    }

    /// Ends adopted registrations whose cgroup has emptied or gone (their wrap, which would
    /// have ended them, lost its connection with the old gateway).
    pub async fn sweep_adopted(&self) {
        let ended: Vec<(u64, PathBuf)> = {
            let mut adopted = self.adopted.lock().expect("adopted lock");
            let (ended, live) = adopted
                .drain(..)
                .partition(|(_, path)| !path.exists() || cgroup::is_empty(path));
            *adopted = live;
            ended
        };
        for (id, path) in ended {
            self.unregister(id, &path).await;
        }
    }

    /// Ends a registration. Whatever still runs in the cgroup (daemonised children, or the
    /// command of a wrap that died) is killed first: once unregistered, it would connect
    /// unintercepted.
    async fn unregister(&self, id: u64, path: &Path) {
        if let Err(e) = cgroup::kill_all(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %e, "could not kill what is left in the wrap cgroup");
        }
        // Killed processes take a moment to leave the cgroup.
        for _ in 0..40 {
            if cgroup::is_empty(path) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.dataplane.unregister_cgroup(id);
        CgroupUnregistered { cgroup_id: id }.emit();
        match cgroup::remove(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                path = %path.display(),
                error = %e,
                "wrap cgroup could not be removed; the sweeper retries every 30 s"
            ),
        }
    }
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &ControlResponse,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).expect("responses always serialize");
    line.push(b'\n');
    write.write_all(&line).await
}

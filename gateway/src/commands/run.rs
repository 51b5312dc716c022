//! `interlock run`: the node gateway in the foreground.
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    admin::{Admin, control},
    config::{Config, FailMode},
    ebpf::Dataplane,
    protocols::kubernetes::tls::ApiServerTls,
    proxy::{Engines, Proxy, upstream::TcpConnector, workers::Workers},
    recording::{
        Recorder, WriterOptions,
        chain::Sealer,
        record::{RecordBody, RegistrationsAdopted},
        spool::{Checkpoint, SpoolReader, SpoolState},
        store,
    },
    sinks::{
        self,
        kinesis::{service::KinesisService, sink::KinesisSink},
    },
    tokens::TokenVerifiers,
};

/// How often registrations of vanished cgroups are forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How often the config file is checked for a changed policy.
const POLICY_POLL: Duration = Duration::from_secs(2);
/// How long a stopping gateway waits for the Kinesis sink to ship what is left.
const SINK_DRAIN: Duration = Duration::from_secs(10);

pub async fn run(config_path: &Path) -> Result<()> {
    let config = Arc::new(Config::load(config_path)?);
    for warning in config.warnings() {
        warn!(config = %config_path.display(), "{warning}");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the gateway loads eBPF programs and manages cgroups: run it as root (CAP_BPF, \
             CAP_PERFMON, CAP_NET_ADMIN); nothing was created"
        );
    }
    let recording = &config.recording;
    // Before the signing key is generated into it.
    store::private_dir(&recording.dir)
        .with_context(|| format!("preparing the record store {}", recording.dir.display()))?;
    let (key_path, generate) = recording.signing_key_path();
    let sealer = Sealer::load(&key_path, generate)?;
    let spool = Arc::new(SpoolState::new(&recording.dir, recording.spool.max_bytes)?);
    let options = WriterOptions {
        segment_bytes: recording.segment_bytes,
        fsync: recording.fsync,
        fsync_interval: recording.fsync_interval,
    };
    let (recorder, recorder_thread, committed) =
        Recorder::start(&recording.dir, options, sealer, spool.clone())?;
    let stop_sink = CancellationToken::new();
    let sink = match &recording.kinesis {
        Some(kinesis) => {
            let checkpoint = Checkpoint::new(&recording.dir, "kinesis")?;
            let from = checkpoint.load()?;
            info!(stream = %kinesis.stream, ?from, "shipping the spool to Kinesis");
            let sink = KinesisSink {
                service: KinesisService {
                    client: sinks::kinesis::config::client(kinesis).await,
                    stream: kinesis.stream.clone(),
                },
                reader: SpoolReader::new(&recording.dir, from, committed),
                checkpoint,
                dir: recording.dir.clone(),
                spool: spool.clone(),
                max_record_bytes: kinesis.max_record_bytes as usize,
                linger: kinesis.linger,
            };
            Some(tokio::spawn(sink.run(stop_sink.clone())))
        }
        None => None,
    };
    let dataplane = Arc::new(Dataplane::start(&config)?);
    let forgotten = dataplane.forget_vanished_cgroups()?;
    info!(
        forgotten,
        "stale registrations and orphaned wrap cgroups removed"
    );

    let masker =
        Arc::new(crate::masking::Masker::new(&config.masking).map_err(anyhow::Error::msg)?);
    info!(
        detectors = masker.detector_names().len(),
        "masking engine ready"
    );
    let stop_services = CancellationToken::new();
    let cluster_holds = match &config.approvals.cluster {
        Some(cluster) => Some(
            crate::approvals::cluster::node::NodeHolds::start(cluster)
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let approvals = Arc::new(
        crate::approvals::Approvals::new(config.approvals.clone(), cluster_holds.clone())
            .map_err(anyhow::Error::msg)?,
    );
    if let Some(cluster_holds) = &cluster_holds {
        let (decisions, received) = tokio::sync::mpsc::channel(64);
        tokio::spawn(
            cluster_holds
                .clone()
                .watch(decisions, stop_services.clone()),
        );
        let approvals = approvals.clone();
        tokio::spawn(async move { approvals.apply_cluster_decisions(received).await });
    }
    let node_mode = match &config.kubernetes {
        Some(kubernetes) => {
            let own: Vec<IpAddr> = [Some(config.listen), config.listen_v6, Some(config.admin)]
                .into_iter()
                .flatten()
                .map(|a| a.ip())
                .chain(kubernetes.pod_proxy_address())
                .collect();
            Some(
                crate::kubernetes::start(
                    &config,
                    kubernetes,
                    dataplane.clone(),
                    &own,
                    stop_services.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let proxy = Proxy::new(
        config.clone(),
        dataplane.clone(),
        recorder.clone(),
        Engines {
            masker,
            api_server_tls: ApiServerTls::load(&config.interception_ca, &config.targets)?
                .map(Arc::new),
            approvals: approvals.clone(),
            pods: node_mode
                .as_ref()
                .map(|n| n.directory.clone())
                .unwrap_or_default(),
            tokens: Arc::new(
                TokenVerifiers::new(
                    &config.identity,
                    node_mode.as_ref().map(|n| n.tokens.clone()),
                )
                .map_err(anyhow::Error::msg)?,
            ),
        },
        Workers::start(config.workers)?,
        TcpConnector {
            timeout: config.upstream_connect_timeout,
        },
    );
    proxy.ensure_listener(config.listen).await?;
    if let Some(v6) = config.listen_v6 {
        proxy.ensure_listener(v6).await?;
    }
    // Pods live in their own network namespaces and reach the node on this address.
    if let Some(address) = config
        .kubernetes
        .as_ref()
        .and_then(|k| k.pod_proxy_address())
    {
        let port = match address {
            IpAddr::V6(_) => config.listen_v6.unwrap_or(config.listen).port(),
            IpAddr::V4(_) => config.listen.port(),
        };
        proxy
            .ensure_listener(SocketAddr::new(address, port))
            .await?;
    }

    let control_listener = control::bind(&config.control_socket).await?;
    let control = Arc::new(control::ControlServer {
        dataplane: dataplane.clone(),
        proxy: proxy.clone(),
        listen_v4: config.listen,
        listen_v6: config.listen_v6,
        gateway_tag: crate::cgroup::gateway_tag(&config.control_socket),
        adopted: Default::default(),
    });
    let adopted = control.adopt_live_wraps().await?;
    if !adopted.is_empty() {
        info!(
            adopted = adopted.len(),
            "wrap cgroups of a previous gateway registered again; sessions they had open then were cut"
        );
        let event = recorder.session(&format!("gateway-start-{}", uuid::Uuid::now_v7()));
        let adopted = RegistrationsAdopted {
            node: config.node_name(),
            cgroups: adopted
                .into_iter()
                .map(|(id, path)| (id, path.display().to_string()))
                .collect(),
        };
        event
            .record(RecordBody::RegistrationsAdopted(adopted))
            .await
            .context("recording the adopted registrations")?;
    }
    tokio::spawn(
        control
            .clone()
            .serve(control_listener, stop_services.clone()),
    );

    let admin = Arc::new(Admin {
        dataplane: dataplane.clone(),
        approvals: approvals.clone(),
        ready: false.into(),
        node_synced: node_mode.as_ref().map(|n| n.synced.clone()),
    });
    let admin_listener = Admin::bind(config.admin).await?;
    tokio::spawn(admin.clone().serve(admin_listener, stop_services.clone()));
    tokio::spawn(refresh_host_addrs(dataplane.clone(), stop_services.clone()));
    tokio::spawn(sweep_vanished_cgroups(
        dataplane.clone(),
        control,
        proxy.clone(),
        stop_services.clone(),
    ));

    tokio::spawn(reload_policy(
        config_path.to_path_buf(),
        proxy.clone(),
        stop_services.clone(),
    ));
    admin.ready.store(true, Ordering::Relaxed);
    info!(
        listen = %config.listen,
        admin = %config.admin,
        targets = config.targets.len(),
        workers = proxy.workers.count(),
        records = %config.recording.dir.display(),
        "gateway ready"
    );

    wait_for_shutdown_signal().await?;
    admin.ready.store(false, Ordering::Relaxed);
    // Nobody is left to decide: held requests are denied now, answered and recorded as
    // interrupted while their sessions drain.
    approvals.shutdown();
    proxy.stop_accepting.cancel();
    proxy.sessions.close();
    info!(open_sessions = proxy.sessions.len(), "draining");
    if tokio::time::timeout(config.drain_timeout, proxy.sessions.wait())
        .await
        .is_err()
    {
        warn!(
            open_sessions = proxy.sessions.len(),
            "drain_timeout reached; cutting open sessions (recorded as outcome shutdown)"
        );
        proxy.hard_stop.cancel();
        proxy.sessions.wait().await;
    }
    // The holds interrupted above end with this process: none is left listed as pending.
    if let Some(cluster_holds) = &cluster_holds {
        let _ = tokio::time::timeout(Duration::from_secs(5), cluster_holds.clear()).await;
    }
    let stopping = proxy.clone();
    let _ = tokio::task::spawn_blocking(move || stopping.workers.stop()).await;
    stop_services.cancel();
    let _ = std::fs::remove_file(&config.control_socket);
    recorder_thread.stop(&recorder).await;
    if let Some(sink) = sink {
        // Give the sink a moment to ship the tail; the rest goes after the next start.
        if tokio::time::timeout(SINK_DRAIN, sink).await.is_err() {
            warn!("Kinesis sink did not drain in time; unshipped records stay in the spool");
            stop_sink.cancel();
        }
    }
    if config.fail_mode == FailMode::Closed {
        info!("fail_mode closed: programs stay pinned; `interlock detach` removes them");
    }
    drop(dataplane);
    info!("gateway stopped");
    Ok(())
}

async fn wait_for_shutdown_signal() -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}

/// Reloads the policy on SIGHUP or when the config file changes. An invalid file is
/// reported and the policy in force stays.
async fn reload_policy<C: crate::proxy::upstream::UpstreamConnector>(
    path: std::path::PathBuf,
    proxy: Arc<Proxy<C>>,
    stop: CancellationToken,
) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut poll = tokio::time::interval(POLICY_POLL);
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup.recv() => "SIGHUP",
            _ = poll.tick() => {
                let now = modified(&path);
                if now == seen { continue }
                seen = now;
                "config file changed"
            }
        };
        match Config::load(&path) {
            // Approvers are set up at start; a reload changes only the policy.
            Ok(config)
                if config.policy.can_hold() && proxy.services.desk.approvals.verifier.is_none() =>
            {
                warn!(
                    why,
                    "policy not reloaded: it holds requests, but this gateway started without approvals.oidc, so nobody could decide them; restart it with approvals configured"
                )
            }
            Ok(config) => {
                let rules = config.policy.rules.len();
                proxy.set_policy(config.policy);
                info!(why, rules, "policy reloaded");
            }
            Err(e) => {
                warn!(why, error = %e, "policy not reloaded: the file is invalid; the previous policy stays in force")
            }
        }
    }
}

/// The allocator keeps what sessions freed for reuse, in per-thread arenas it does not shrink
/// on its own: after a burst, hand the free pages back to the kernel.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps HOST_ADDRS current: a connect to an address the host gains is matched within this.
const HOST_ADDRS_REFRESH: Duration = Duration::from_secs(2);

async fn refresh_host_addrs(dataplane: Arc<Dataplane>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HOST_ADDRS_REFRESH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = dataplane.refresh_host_addrs() {
            warn!(error = %e, "refreshing the host's addresses for the redirect failed");
        }
    }
}

/// Forgets vanished cgroups, ended adopted registrations and idle MCP sessions, and gives
/// memory back after a burst of sessions ended.
async fn sweep_vanished_cgroups(
    dataplane: Arc<Dataplane>,
    control: Arc<control::ControlServer<TcpConnector>>,
    proxy: Arc<Proxy<TcpConnector>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (open, peak) = proxy.take_session_peak();
        if open < peak / 2 {
            give_back_freed_memory();
        }
        proxy.services.desk.sessions.expire_idle();
        control.sweep_adopted().await;
        match dataplane.forget_vanished_cgroups() {
            Ok(0) => {}
            Ok(n) => info!(
                forgotten = n,
                "stale registrations and orphaned wrap cgroups removed"
            ),
            Err(e) => warn!(error = %e, "sweeping vanished cgroups failed"),
        }
    }
}

//! `interlock run`: the node gateway in the foreground.
use std::{
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    admin::{Admin, control},
    config::{Config, FailMode},
    ebpf::Dataplane,
    proxy::{Proxy, upstream::TcpConnector},
    recording::Recorder,
};

/// How often registrations of vanished cgroups are forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

pub async fn run(config_path: &Path) -> Result<()> {
    let config = Arc::new(Config::load(config_path)?);
    let (recorder, recorder_thread) =
        Recorder::start(&config.recording.dir, config.recording.segment_bytes)?;
    let dataplane = Arc::new(Dataplane::start(&config)?);
    if config.fail_mode == FailMode::Closed {
        let forgotten = dataplane.forget_vanished_cgroups()?;
        info!(forgotten, "registrations of vanished cgroups forgotten");
    }

    let proxy = Proxy::new(
        config.clone(),
        dataplane.clone(),
        recorder.clone(),
        TcpConnector {
            timeout: config.upstream_connect_timeout,
        },
    );
    proxy.ensure_listener(config.listen).await?;
    if let Some(v6) = config.listen_v6 {
        proxy.ensure_listener(v6).await?;
    }

    let stop_services = CancellationToken::new();
    let control_listener = control::bind(&config.control_socket).await?;
    let control = Arc::new(control::ControlServer {
        dataplane: dataplane.clone(),
        proxy: proxy.clone(),
        listen_v4: config.listen,
        listen_v6: config.listen_v6,
    });
    tokio::spawn(control.serve(control_listener, stop_services.clone()));

    let admin = Arc::new(Admin {
        dataplane: dataplane.clone(),
        ready: false.into(),
    });
    let admin_listener = Admin::bind(config.admin).await?;
    tokio::spawn(admin.clone().serve(admin_listener, stop_services.clone()));
    tokio::spawn(sweep_vanished_cgroups(
        dataplane.clone(),
        stop_services.clone(),
    ));

    admin.ready.store(true, Ordering::Relaxed);
    info!(
        listen = %config.listen,
        admin = %config.admin,
        targets = config.targets.len(),
        records = %config.recording.dir.display(),
        "gateway ready"
    );

    wait_for_shutdown_signal().await?;
    admin.ready.store(false, Ordering::Relaxed);
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
    stop_services.cancel();
    let _ = std::fs::remove_file(&config.control_socket);
    recorder_thread.stop(&recorder).await;
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

async fn sweep_vanished_cgroups(dataplane: Arc<Dataplane>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match dataplane.forget_vanished_cgroups() {
            Ok(0) => {}
            Ok(n) => info!(forgotten = n, "registrations of vanished cgroups forgotten"),
            Err(e) => warn!(error = %e, "sweeping vanished cgroups failed"),
        }
    }
}

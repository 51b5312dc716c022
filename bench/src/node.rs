//! Node mode: how long a selected pod takes from its creation at the API server to its cgroup
//! in the eBPF map (100 pods created in a burst), and the gateway's memory with 1,000 more
//! pods on the node in its cache. Pods are kubelet-shaped cgroups; the API server is
//! `kube-testserver` (tests/src/kube).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{Killed, free_port, idle::rss_mib, wait_listening};

const SELECTED: usize = 100;
const CACHED: usize = 1000;

/// `kube-testserver` with a state dir of its own, and an admin client for it.
pub(crate) struct ApiServer {
    _process: Killed,
    pub url: String,
    token: String,
    client: reqwest::Client,
}

impl ApiServer {
    pub fn start(bin: &Path, dir: &Path) -> Result<ApiServer> {
        let process = Killed(
            Command::new(bin)
                .arg("--state-dir")
                .arg(dir)
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| {
                    format!("{} (cargo build --release -p interlock-e2e)", bin.display())
                })?,
        );
        let kubeconfig = dir.join("kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !kubeconfig.exists() {
            if Instant::now() > deadline {
                bail!("kube-testserver wrote no kubeconfig in 20 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        let text = fs::read_to_string(&kubeconfig)?;
        let url = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .context("kubeconfig names no server")?
            .to_string();
        let ca = reqwest::Certificate::from_pem(&fs::read(dir.join("ca.crt"))?)?;
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()?;
        Ok(ApiServer {
            _process: process,
            url,
            token: fs::read_to_string(dir.join("admin.token"))?,
            client,
        })
    }

    pub async fn create(&self, path: &str, object: &Value) -> Result<()> {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(object)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("POST {path}: {}", response.text().await?);
        }
        Ok(())
    }
}

fn uid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn pod(name: &str, uid: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "uid": uid, "labels": {"app": app}},
           "spec": {"nodeName": "bench-node", "containers": [{"name": "app", "image": "x"}]},
           "status": {"phase": "Running", "qosClass": "BestEffort"}})
}

/// The RFC 3339 timestamp a log line starts with.
fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?;
    let at =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    Some(at.into())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn orchestrate(interlock: &Path, testserver: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
        .context("no cgroup2 mount")?;
    let root = mount.join(format!("kubelet-ilkbench{}.slice", std::process::id()));
    let qos = root.join("kubepods.slice/kubepods-besteffort.slice");
    let cleanup = Cleanup(root.clone());
    fs::create_dir_all(&qos)?;
    let api = ApiServer::start(testserver, &dir.path().join("api"))?;

    let (listen, admin) = (free_port()?, free_port()?);
    let config = dir.path().join("interlock.yaml");
    fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen}\nlisten_v6: null\nadmin: 127.0.0.1:{admin}\ncontrol_socket: ./control.sock\n\
             recording:\n  dir: ./records\nkubernetes:\n  kubeconfig: {}\n  node_name: bench-node\n  pod_proxy_address: 127.0.0.1\n\
             \x20 selections:\n    - name: bench\n      pods: {{matchLabels: {{app: bench}}}}\n      targets: [sink]\n\
             targets:\n  - name: sink\n    address: 127.0.0.9:9\n",
            dir.path().join("api/kubeconfig").display()
        ),
    )?;
    let log_path = dir.path().join("gateway.log");
    let gateway = Killed(
        Command::new(interlock)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(fs::File::create(&log_path)?)
            .spawn()?,
    );
    wait_listening(format!("127.0.0.1:{admin}").parse()?)?;
    let metric = |series: &str| -> Option<f64> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin)).ok()?;
        use std::io::{Read, Write};
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    let wait_for = |series: &str, value: f64| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(series) != Some(value) {
            if Instant::now() > deadline {
                bail!("{series} never reached {value}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    wait_for("interlock_kube_synced", 1.0)?;
    let idle_mib = rss_mib(gateway.0.id());

    // Kubelet makes the pod's cgroup, then reports it; each pod's clock starts at its POST.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut created = Vec::new();
    for i in 0..SELECTED {
        let uid = uid(i);
        fs::create_dir_all(qos.join(format!(
            "kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        )))?;
        created.push((format!("bench-{i}"), SystemTime::now()));
        runtime.block_on(api.create(
            "/api/v1/namespaces/default/pods",
            &pod(&format!("bench-{i}"), &uid, "bench"),
        ))?;
    }
    wait_for("interlock_pods_intercepted", SELECTED as f64)?;
    let selected_mib = rss_mib(gateway.0.id());
    let log = fs::read_to_string(&log_path)?;
    let mut latencies: Vec<f64> = created
        .iter()
        .filter_map(|(name, at)| {
            let line = log.lines().find(|l| {
                l.contains("pod intercepted") && l.contains(&format!("pod=\"{name}\""))
            })?;
            Some(log_time(line)?.duration_since(*at).ok()?.as_secs_f64() * 1e3)
        })
        .collect();
    if latencies.len() != SELECTED {
        let sample = log
            .lines()
            .find(|l| l.contains("pod intercepted"))
            .unwrap_or("none");
        bail!(
            "{} of {SELECTED} registrations found in the gateway log (e.g. {sample})",
            latencies.len()
        );
    }
    latencies.sort_by(f64::total_cmp);

    for i in 0..CACHED {
        let name = format!("cached-{i}");
        runtime.block_on(api.create(
            "/api/v1/namespaces/default/pods",
            &pod(&name, &uid(SELECTED + i), "other"),
        ))?;
    }
    // The cache holds them once a resync has run over them; give the watch a moment.
    thread::sleep(Duration::from_secs(3));
    let cached_mib = rss_mib(gateway.0.id());
    println!(
        "node mode: {SELECTED} pods created in a burst, API server POST to cgroup in the map: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    println!(
        "node mode memory (RSS): {idle_mib:.1} MiB synced with no pods, {selected_mib:.1} MiB with {SELECTED} intercepted, \
         {cached_mib:.1} MiB with {CACHED} more cached ({:.1} KiB a cached pod)",
        (cached_mib - selected_mib) * 1024.0 / CACHED as f64
    );
    drop(gateway);
    drop(cleanup);
    Ok(())
}

/// Removes the bench's cgroups, deepest first.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        // The bench's pods run no process, so their cgroups are empty.
        let _ = interlock::cgroup::remove(&self.0);
    }
}

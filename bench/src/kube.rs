//! The API-server path: the added latency of a GET of one pod and a LIST of 500 pods (p50 and
//! p99), and exec stdout throughput. Three routes to `kube-testserver`, in one wrapped client:
//! - direct (TLS to the server);
//! - nginx terminating TLS and opening it again, HTTP/2 to the client, no inspection (nginx
//!   proxies HTTP/1.1 upstream, with keep-alive: it has no HTTP/2 upstream);
//! - Interlock (`protocol: kubernetes`: TLS terminated with the interception CA and opened
//!   again, HTTP/2 both sides, request info, policy, masking, recording).
//!
//! Interlock intercepts every loopback address of its target's port, so the direct and nginx
//! routes go to a second, identical server: same binary, same 500 pods.
//!
//! Then a soak: 200 watches held through Interlock for a minute while pods come and go, with
//! the gateway's memory sampled, to show that watches do not grow it.
use std::{fs, net::SocketAddr, path::Path, process::Command, sync::Arc, time::Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::{
    BenchGateway, Killed, Metric, free_port, idle::rss_mib, node::ApiServer, print_ratios,
    run_client, run_nginx,
};

const PODS: usize = 500;
const GETS: usize = 3000;
const GET_BLOCK: usize = 100;
const LISTS: usize = 150;
const LIST_BLOCK: usize = 10;
/// Unmeasured requests that start each block (see the MCP bench).
const BLOCK_WARMUP: usize = 5;
const EXEC_BYTES: usize = 64 << 20;
const EXEC_ROUNDS: usize = 3;
const SOAK_WATCHES: usize = 200;
const SOAK_SECONDS: u64 = 60;
/// The name every route's TLS asks for, as in-cluster clients do.
const SERVER_NAME: &str = "kubernetes.default.svc";

#[derive(Serialize, Deserialize)]
struct KubeResults {
    get_p50_us: f64,
    get_p99_us: f64,
    list_p50_us: f64,
    list_p99_us: f64,
    /// Direct and Interlock only.
    exec_mib_s: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct KubeRun {
    direct: KubeResults,
    nginx: KubeResults,
    interlock: KubeResults,
}

/// One route: its address and the CAs it trusts.
#[derive(Clone, Serialize, Deserialize)]
pub struct RouteSpec {
    address: SocketAddr,
    ca: Vec<std::path::PathBuf>,
}

struct Route {
    spec: RouteSpec,
    client: reqwest::Client,
    gets: Vec<f64>,
    lists: Vec<f64>,
}

impl Route {
    fn new(spec: RouteSpec, token: &str) -> Result<Route> {
        let mut builder = reqwest::Client::builder()
            .resolve(SERVER_NAME, spec.address)
            .default_headers(
                [(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {token}").parse()?,
                )]
                .into_iter()
                .collect(),
            );
        for ca in &spec.ca {
            for cert in reqwest::Certificate::from_pem_bundle(&fs::read(ca)?)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Route {
            client: builder.build()?,
            spec,
            gets: Vec::with_capacity(GETS),
            lists: Vec::with_capacity(LISTS),
        })
    }

    /// One request, to the end of its answer, in microseconds.
    async fn request(&self, path: &str) -> Result<f64> {
        let url = format!("https://{SERVER_NAME}:{}{path}", self.spec.address.port());
        let started = Instant::now();
        let response = self.client.get(url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        let took = started.elapsed().as_secs_f64() * 1e6;
        if !status.is_success() {
            bail!("GET {path} via {}: {status}", self.spec.address);
        }
        anyhow::ensure!(!body.is_empty(), "empty answer to {path}");
        Ok(took)
    }

    /// `kubectl exec` of a command that prints EXEC_BYTES of text: MiB/s of stdout.
    async fn exec(&self, token: &str) -> Result<f64> {
        let command =
            format!("yes 'an exec writes one log line after another' | head -c {EXEC_BYTES}");
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("command", "sh"), ("command", "-c"), ("command", &command)])
            .append_pair("stdout", "true")
            .finish();
        let tls = tls_connect(&self.spec, b"http/1.1").await?;
        let mut request =
            format!("wss://{SERVER_NAME}/api/v1/namespaces/default/pods/p-0/exec?{query}")
                .into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "v5.channel.k8s.io".parse()?);
        let started = Instant::now();
        let (mut socket, _) = tokio_tungstenite::client_async(request, tls).await?;
        let mut stdout = 0usize;
        while let Some(message) = socket.next().await {
            match message? {
                Message::Binary(data) if data.first() == Some(&1) => stdout += data.len() - 1,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            stdout == EXEC_BYTES,
            "exec printed {stdout} bytes, not {EXEC_BYTES}"
        );
        Ok(stdout as f64 / (1 << 20) as f64 / secs)
    }
}

async fn tls_connect(
    spec: &RouteSpec,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for ca in &spec.ca {
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(spec.address).await?;
    tcp.set_nodelay(true)?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER_NAME)?, tcp)
        .await?)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 - 1.0) * p).round() as usize]
}

/// Requests of one kind go to the three routes in turn, in blocks, rotating which goes first.
async fn interleaved(
    routes: &mut [Route; 3],
    path: &str,
    count: usize,
    block: usize,
    keep: fn(&mut Route) -> &mut Vec<f64>,
) -> Result<()> {
    for round in 0..count / block {
        for turn in 0..routes.len() {
            let route = &mut routes[(round + turn) % 3];
            for _ in 0..BLOCK_WARMUP {
                route.request(path).await?;
            }
            for _ in 0..block {
                let took = route.request(path).await?;
                keep(route).push(took);
            }
        }
    }
    Ok(())
}

/// The load generator, run wrapped: prints JSON.
pub fn client(routes: &str, token: &str) -> Result<()> {
    let specs: [RouteSpec; 3] = serde_json::from_str(routes)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let run = runtime.block_on(async {
        let [direct, nginx, interlock] = specs;
        let mut routes = [
            Route::new(direct, token)?,
            Route::new(nginx, token)?,
            Route::new(interlock, token)?,
        ];
        let one = "/api/v1/namespaces/default/pods/p-0";
        let all = "/api/v1/namespaces/default/pods";
        interleaved(&mut routes, one, GETS, GET_BLOCK, |r| &mut r.gets).await?;
        interleaved(&mut routes, all, LISTS, LIST_BLOCK, |r| &mut r.lists).await?;
        let mut exec_rates = [Vec::new(), Vec::new()];
        for _ in 0..EXEC_ROUNDS {
            for (rates, route) in exec_rates.iter_mut().zip([&routes[0], &routes[2]]) {
                rates.push(route.exec(token).await?);
            }
        }
        let [direct_exec, interlock_exec] = exec_rates.map(|mut r| percentile(&mut r, 0.5));
        let results = |route: &mut Route, exec: Option<f64>| KubeResults {
            get_p50_us: percentile(&mut route.gets, 0.5),
            get_p99_us: percentile(&mut route.gets, 0.99),
            list_p50_us: percentile(&mut route.lists, 0.5),
            list_p99_us: percentile(&mut route.lists, 0.99),
            exec_mib_s: exec,
        };
        let [direct, nginx, interlock] = &mut routes;
        anyhow::Ok(KubeRun {
            direct: results(direct, Some(direct_exec)),
            nginx: results(nginx, None),
            interlock: results(interlock, Some(interlock_exec)),
        })
    })?;
    println!("{}", serde_json::to_string(&run)?);
    Ok(())
}

/// 500 pods in `default`, as a node's list would return them.
fn seed(api: &ApiServer) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for i in 0..PODS {
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p-{i}"), "namespace": "default",
                             "labels": {"app": "bench", "tier": "backend"},
                             "annotations": {"example.com/owner": "team-a"}},
                "spec": {"nodeName": "bench-node", "serviceAccountName": "default",
                         "containers": [{"name": "app", "image": "registry.example/app:1.2.3",
                                         "ports": [{"containerPort": 8080}],
                                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
                "status": {"phase": "Running", "qosClass": "Burstable", "podIP": format!("10.1.{}.{}", i / 250, i % 250)}});
            api.create("/api/v1/namespaces/default/pods", &pod).await?;
        }
        anyhow::Ok(())
    })
}

fn start_nginx(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    upstream_ca: &Path,
) -> Result<Killed> {
    // A CA of nginx's own and a leaf it signs: TLS clients take no self-signed leaf.
    let (cert, key) = (dir.join("nginx.crt"), dir.join("nginx.key"));
    let openssl = |args: &[&str]| -> Result<()> {
        let made = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()?;
        if !made.status.success() {
            bail!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&made.stderr)
            );
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-days",
                "1",
                "-subj",
                "/CN=nginx-bench-ca",
                "-keyout",
                "nginx-ca.key",
            ],
            &["-out", "nginx-ca.crt"],
        ]
        .concat(),
    )?;
    fs::write(
        dir.join("nginx-leaf.ext"),
        format!("subjectAltName=DNS:{SERVER_NAME}\n"),
    )?;
    openssl(
        &[
            &["req"],
            &ec[..],
            &[
                "-subj",
                &format!("/CN={SERVER_NAME}"),
                "-keyout",
                "nginx.key",
                "-out",
                "nginx.csr",
            ],
        ]
        .concat(),
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "nginx.csr",
        "-CA",
        "nginx-ca.crt",
        "-CAkey",
        "nginx-ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "nginx-leaf.ext",
        "-out",
        "nginx.crt",
    ])?;
    let conf = dir.join("nginx-kube.conf");
    fs::write(
        &conf,
        format!(
            "worker_processes auto;\npid {dir}/nginx-kube.pid;\nerror_log {dir}/nginx-kube-error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  upstream api {{ server {upstream}; keepalive 16; }}\n\
               server {{\n    listen {listen} ssl http2;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 location / {{\n      proxy_pass https://api;\n      proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n      proxy_ssl_verify on;\n\
                 proxy_ssl_trusted_certificate {ca};\n      proxy_ssl_name {SERVER_NAME};\n\
                 proxy_ssl_server_name on;\n      proxy_ssl_session_reuse on;\n\
                 proxy_buffering off;\n    }}\n  }}\n}}\n",
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
            ca = upstream_ca.display(),
        ),
    )?;
    run_nginx(&conf, listen)
}

/// What the soak saw: the gateway's RSS over time, and the events the watches got.
struct Soak {
    rss_mib: Vec<(u64, f64)>,
    events: u64,
    watches_saw: u64,
    churned: usize,
}

/// 200 watches through the gateway, held for SOAK_SECONDS while pods are created and
/// deleted; the gateway's RSS sampled every 5 s.
fn soak(
    gateway: &BenchGateway,
    interlock: &Path,
    watchers: &Path,
    api: &ApiServer,
    route: &RouteSpec,
    token_file: &Path,
) -> Result<Soak> {
    use std::io::BufRead;
    let mut command = gateway.wrap(
        interlock,
        watchers,
        &[
            &route.address.to_string(),
            "--ca",
            route.ca[0].to_str().context("a UTF-8 path")?,
            "--token-file",
            token_file.to_str().context("a UTF-8 path")?,
            "--namespace",
            "default",
            "--watches",
            &SOAK_WATCHES.to_string(),
            "--expect",
            "soak-0",
            "--hold",
            &SOAK_SECONDS.to_string(),
        ],
    );
    let mut child = Killed(command.stdout(std::process::Stdio::piped()).spawn()?);
    let mut lines = std::io::BufReader::new(child.0.stdout.take().context("stdout")?).lines();
    anyhow::ensure!(
        lines.next().transpose()?.as_deref() == Some("ready"),
        "kube-watchers did not get its watches"
    );
    let pid = gateway.process.0.id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut rss = vec![(0, rss_mib(pid))];
    let mut churned = 0;
    runtime.block_on(async {
        while started.elapsed().as_secs() < SOAK_SECONDS {
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("soak-{churned}"), "namespace": "default"},
                "spec": {"containers": [{"name": "c", "image": "x"}]}});
            api.create("/api/v1/namespaces/default/pods", &pod).await?;
            churned += 1;
            let second = started.elapsed().as_secs();
            if second >= rss.last().map_or(0, |(s, _)| s + 5) {
                rss.push((second, rss_mib(pid)));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    })?;
    rss.push((started.elapsed().as_secs(), rss_mib(pid)));
    let report: serde_json::Value =
        serde_json::from_str(&lines.next().transpose()?.context("kube-watchers' report")?)?;
    Ok(Soak {
        rss_mib: rss,
        events: report["events"].as_u64().unwrap_or_default(),
        watches_saw: report["saw"].as_u64().unwrap_or_default(),
        churned,
    })
}

pub fn orchestrate(interlock: &Path, testserver: &Path) -> Result<()> {
    let me = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    eprintln!("starting two identical test API servers with {PODS} pods each");
    // One admin token for both (a server keeps the token it finds in its state dir), so
    // every route sends the same request.
    let token = "interlock-bench-admin";
    for server in ["api-a", "api-b"] {
        fs::create_dir_all(dir.path().join(server))?;
        fs::write(dir.path().join(server).join("admin.token"), token)?;
    }
    let intercepted = ApiServer::start(testserver, &dir.path().join("api-a"))?;
    let plain = ApiServer::start(testserver, &dir.path().join("api-b"))?;
    seed(&intercepted)?;
    seed(&plain)?;
    let address = |api: &ApiServer| -> Result<SocketAddr> {
        Ok(api.url.trim_start_matches("https://").parse()?)
    };
    let (intercepted_at, plain_at) = (address(&intercepted)?, address(&plain)?);

    eprintln!(
        "starting nginx (TLS terminated and opened again, HTTP/2 to the client) and Interlock (protocol: kubernetes)"
    );
    let nginx_at: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let nginx = start_nginx(
        dir.path(),
        nginx_at,
        plain_at,
        &dir.path().join("api-b/ca.crt"),
    )?;
    let cluster_ca = dir.path().join("api-a/ca.crt");
    let target = format!(
        "name: kube\n    address: {intercepted_at}\n    protocol: kubernetes\n    upstream_ca: {}",
        cluster_ca.display()
    );
    let extra = "interception_ca:\n  key: ./interception-ca.key\n  addresses: [127.0.0.1]\n";
    let gateway = BenchGateway::start(interlock, dir.path(), &target, extra)?;
    let bundle = dir.path().join("bundle.crt");
    let out = Command::new(interlock)
        .args(["ca-bundle", "--cluster-ca"])
        .arg(&cluster_ca)
        .arg("--config")
        .arg(&gateway.config)
        .output()?;
    if !out.status.success() {
        bail!(
            "interlock ca-bundle: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::write(&bundle, &out.stdout)?;
    let routes = json!([
        {"address": plain_at, "ca": [dir.path().join("api-b/ca.crt")]},
        {"address": nginx_at, "ca": [dir.path().join("nginx-ca.crt")]},
        {"address": intercepted_at, "ca": [bundle]},
    ]);
    eprintln!(
        "{GETS} GETs and {LISTS} LISTs per route, interleaved; then {EXEC_ROUNDS} execs of {} MiB, direct and Interlock",
        EXEC_BYTES >> 20
    );
    let wrapped = gateway.wrap(
        interlock,
        &me,
        &["kube-client", &routes.to_string(), "--token", token],
    );
    let run: KubeRun = run_client(wrapped).context("the API-server load generator")?;
    drop(nginx);
    eprintln!(
        "soak: {SOAK_WATCHES} watches through Interlock for {SOAK_SECONDS} s while pods are created"
    );
    let token_file = dir.path().join("token");
    fs::write(&token_file, token)?;
    let interlock_route: RouteSpec = serde_json::from_value(routes[2].clone())?;
    let watchers = testserver.with_file_name("kube-watchers");
    let soak = soak(
        &gateway,
        interlock,
        &watchers,
        &intercepted,
        &interlock_route,
        &token_file,
    )?;
    drop(gateway);

    println!(
        "\nAPI-server path: GET of one pod and LIST of {PODS} pods over HTTP/2 (p50/p99 of {GETS} and {LISTS} per route, interleaved in blocks), exec stdout (median of {EXEC_ROUNDS} x {} MiB)",
        EXEC_BYTES >> 20
    );
    let rows: [(&str, Metric<KubeResults>); 4] = [
        ("GET pod p50 (us)", |r| r.get_p50_us),
        ("GET pod p99 (us)", |r| r.get_p99_us),
        ("LIST 500 pods p50 (us)", |r| r.list_p50_us),
        ("LIST 500 pods p99 (us)", |r| r.list_p99_us),
    ];
    print_ratios(&rows, &run.direct, &run.nginx, &run.interlock);
    let (direct_exec, interlock_exec) = (
        run.direct.exec_mib_s.unwrap_or_default(),
        run.interlock.exec_mib_s.unwrap_or_default(),
    );
    println!(
        "exec stdout (MiB/s): direct {direct_exec:.1}, Interlock {interlock_exec:.1} ({:.2}x)",
        interlock_exec / direct_exec
    );
    let samples: Vec<String> = soak
        .rss_mib
        .iter()
        .map(|(second, mib)| format!("{second}s {mib:.1}"))
        .collect();
    println!(
        "watch soak: {SOAK_WATCHES} watches for {SOAK_SECONDS} s, {} pods created, {} events delivered ({} of {SOAK_WATCHES} watches saw the first), gateway RSS MiB: {}",
        soak.churned,
        soak.events,
        soak.watches_saw,
        samples.join(", ")
    );
    Ok(())
}

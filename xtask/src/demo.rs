//! `cargo xtask demo`: what the product is for, in numbered steps on one box. An unmodified
//! MCP client is redirected by eBPF through the gateway to the reference MCP server, sees the
//! server's secret masked and a risky tool denied. Then the gateway runs in node mode beside a
//! simulated pod (`sim-pod`: kubelet's cgroups, a network namespace of its own): the pod's
//! kubectl reaches a Kubernetes API server (the in-repo test server) through the gateway's
//! API-server path with its own bound token, reads a Secret masked and runs an exec that is
//! recorded; then the records are read back and verified. Each step is a function in `STEPS`.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd::{output, root, run, step, succeeds};

/// AWS's documented example key pair: fake, but every detector takes it for real.
const FAKE_AWS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const FAKE_AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// The policy the demo gateway runs: the reference server's gzip tool fetches any URL it is
/// given, so fetching is denied.
const POLICY: &str = "policy:\n  default: allow\n  rules:\n    - name: no-url-fetches\n      \
     match: { tool: gzip-file-as-resource, args: { data: \"http*\" } }\n      action: deny\n      \
     reason: this MCP server may not fetch URLs\n";

struct Demo {
    bin: PathBuf,
    config: PathBuf,
    server_url: String,
    /// kubectl, and a kubeconfig like the pod's in-cluster config: the bundle with the
    /// interception CA, and the pod's own bound token.
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    /// Runs a command in the pod's container.
    enter: Vec<String>,
    work: PathBuf,
    /// What the wrapped client reported (filled by the first step).
    seen: Value,
    /// Stopped (drained and synced) before the record store is read.
    gateway: Option<Killed>,
}

type Step = (&'static str, fn(&mut Demo) -> Result<()>);

const STEPS: &[Step] = &[
    (
        "An MCP session: the official MCP Python SDK calls @modelcontextprotocol/server-everything, redirected by eBPF through the gateway with no client change",
        mcp_session,
    ),
    (
        "The server's environment holds an AWS key; the client calls get-env and sees it masked",
        secret_masked,
    ),
    (
        "A policy rule denies a tool: the client gets a JSON-RPC error with the reason, and the server never sees the call",
        tool_denied,
    ),
    (
        "A selected pod's kubectl reads a Secret through the API-server path: its TLS is terminated with the name-constrained interception CA, its token is checked against the pod the kernel attests, and the Secret's data is masked",
        kube_secret_masked,
    ),
    (
        "The pod's kubectl exec: stdout, stderr and the exit code recorded per channel",
        kube_exec,
    ),
    (
        "The records read back: the MCP conversation, the API requests as RBAC reads them, the exec as asciicast, and every session verified",
        read_back,
    ),
];

/// The Kubernetes side of the demo: kube-testserver, which speaks the API server's wire
/// protocol, on a host address the pod reaches through the host's routes.
struct ApiServer {
    _server: Killed,
    _address: HostAddress,
    /// `ADDRESS:PORT`
    address: String,
    ca: PathBuf,
    admin_kubeconfig: PathBuf,
}

/// The service account the pod runs as; the API server lets it exec, as a RoleBinding would.
const POD_SERVICE_ACCOUNT: &str = "agent";

fn start_api_server(work: &Path) -> Result<ApiServer> {
    let state = work.join("kube");
    std::fs::create_dir_all(&state)?;
    let admin_kubeconfig = state.join("kubeconfig");
    // A pod cannot reach the host's 127.0.0.1: the API server listens on an address of its own.
    let host_address = HostAddress::add(&format!("10.229.{}.1", std::process::id() % 250))?;
    step(&format!(
        "starting kube-testserver on {} (TLS, HTTP/2, the Kubernetes API, exec over WebSocket)",
        host_address.0
    ));
    let server = Killed(
        Command::new(root().join("target/debug/kube-testserver"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--fixture")
            .arg(root().join("tests/support/kube/cluster.yaml"))
            .args(["--listen", &format!("{}:0", host_address.0)])
            .args([
                "--allow-connect",
                &format!("system:serviceaccount:team:{POD_SERVICE_ACCOUNT}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(state.join("server.log"))?)
            .spawn()
            .context("starting kube-testserver (built by `cargo xtask demo`)")?,
    );
    wait_until("kube-testserver's kubeconfig", || admin_kubeconfig.exists())?;
    let kubeconfig = std::fs::read_to_string(&admin_kubeconfig)?;
    let address = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .context("kube-testserver's kubeconfig names no server")?
        .to_string();
    Ok(ApiServer {
        _server: server,
        _address: host_address,
        address,
        ca: state.join("ca.crt"),
        admin_kubeconfig,
    })
}

/// The simulated pod (`sim-pod`), held until the demo ends.
struct Pod {
    child: Child,
    node_ip: String,
    token: String,
    enter: Vec<String>,
}

fn start_pod(api: &ApiServer, kubectl: &Path) -> Result<Pod> {
    step(&format!(
        "simulating a node and pod team/agent-1 (label app=agent, service account {POD_SERVICE_ACCOUNT}): kubelet's cgroup layout, its own network namespace, the Pod object in the API server"
    ));
    let mut child = Command::new(root().join("target/debug/sim-pod"))
        .arg("--kubeconfig")
        .arg(&api.admin_kubeconfig)
        .arg("--kubectl")
        .arg(kubectl)
        .args(["--label", "app=agent"])
        .args(["--service-account", POD_SERVICE_ACCOUNT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting sim-pod (built by `cargo xtask demo`)")?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().context("piped")?),
        &mut line,
    )?;
    let described: Value = serde_json::from_str(&line)
        .with_context(|| format!("sim-pod did not describe its pod: {line:?}"))?;
    let text = |key: &str| described[key].as_str().unwrap_or_default().to_string();
    Ok(Pod {
        node_ip: text("node_ip"),
        token: text("token"),
        enter: described["enter"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect(),
        child,
    })
}

pub fn demo(bin: &Path) -> Result<()> {
    let work = std::env::temp_dir().join(format!("interlock-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let server_port = free_port()?;
    let (listen_port, admin_port) = (free_port()?, free_port()?);
    let kubectl = root().join("target/kube-peers/bin/kubectl");
    let api = start_api_server(&work)?;
    let pod = start_pod(&api, &kubectl)?;
    let config = work.join("interlock.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen_port}\nlisten_v6: null\nadmin: 127.0.0.1:{admin_port}\n\
             control_socket: ./control.sock\nfail_mode: open\n\
             kubernetes:\n  kubeconfig: {}\n  node_name: node-demo\n  pod_proxy_address: {}\n  \
             selections:\n    - name: agents\n      pods: {{matchLabels: {{app: agent}}}}\n      targets: [kubernetes]\n\
             targets:\n  - name: everything\n    \
             address: 127.0.0.1:{server_port}\n    protocol: mcp\n  - name: kubernetes\n    \
             service: default/kubernetes\n    port: 443\n    protocol: kubernetes\n    upstream_ca: {}\n\
             interception_ca:\n  key: ./interception-ca.key\n\
             recording:\n  dir: ./records\n{POLICY}",
            api.admin_kubeconfig.display(),
            pod.node_ip,
            api.ca.display()
        ),
    )?;
    step(&format!(
        "starting server-everything on 127.0.0.1:{server_port}, with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in its environment"
    ));
    let _server = Killed(
        Command::new("env")
            .arg("-i")
            .arg(format!(
                "PATH={}",
                std::env::var("PATH").unwrap_or_default()
            ))
            .arg(format!("PORT={server_port}"))
            .arg(format!("AWS_ACCESS_KEY_ID={FAKE_AWS_KEY_ID}"))
            .arg(format!("AWS_SECRET_ACCESS_KEY={FAKE_AWS_SECRET}"))
            .arg("node")
            .arg(root().join("tests/support/node_modules/.bin/mcp-server-everything"))
            .arg("streamableHttp")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting server-everything (node, installed by `cargo xtask setup`)")?,
    );
    wait_until(
        &format!("server-everything on 127.0.0.1:{server_port}"),
        || std::net::TcpStream::connect(("127.0.0.1", server_port)).is_ok(),
    )?;
    step(&format!(
        "starting the gateway (interlock run --config {}): target `everything` speaks mcp, policy rule `no-url-fetches`; in node mode it watches node-demo's pods and intercepts those labelled app=agent on their way to default/kubernetes",
        config.display()
    ));
    let gateway = Killed(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .spawn()?,
    );
    wait_until("the gateway's /readyz", || {
        succeeds(
            Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{admin_port}/readyz")]),
        )
    })?;

    let kubeconfig = pod_kubeconfig(bin, &config, &work, &api, &pod.token)?;
    let mut demo = Demo {
        bin: bin.into(),
        config,
        server_url: format!("http://127.0.0.1:{server_port}/mcp"),
        kubectl,
        kubeconfig,
        enter: pod.enter.clone(),
        work: work.clone(),
        seen: Value::Null,
        gateway: Some(gateway),
    };
    // What the API server holds: a Secret, created directly (not through the gateway).
    let secret = work.join("secret.json");
    std::fs::write(&secret, SECRET)?;
    output(
        Command::new(&demo.kubectl)
            .arg("--kubeconfig")
            .arg(&api.admin_kubeconfig)
            .args(["create", "--raw", "/api/v1/namespaces/team/secrets", "-f"])
            .arg(&secret),
    )?;
    for (number, (title, run_step)) in STEPS.iter().enumerate() {
        step(&format!("{}/{}  {title}", number + 1, STEPS.len()));
        run_step(&mut demo)?;
    }
    drop(pod);
    eprintln!("\nrecords and config are in {}", work.display());
    Ok(())
}

/// The Secret the demo's API server holds: `hunter2-is-not-a-password`, base64.
const SECRET: &str = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db-creds","namespace":"team"},"data":{"password":"aHVudGVyMi1pcy1ub3QtYS1wYXNzd29yZA=="}}"#;
const SECRET_BASE64: &str = "aHVudGVyMi1pcy1ub3QtYS1wYXNzd29yZA==";

/// A kubeconfig like a selected pod's in-cluster config: the API server's address, the
/// bundle `interlock ca-bundle` prints as the CA, and the pod's own token.
fn pod_kubeconfig(
    bin: &Path,
    config: &Path,
    work: &Path,
    api: &ApiServer,
    token: &str,
) -> Result<PathBuf> {
    let bundle = output(
        Command::new(bin)
            .args(["ca-bundle", "--cluster-ca"])
            .arg(&api.ca)
            .arg("--config")
            .arg(config),
    )?;
    let bundle_path = work.join("ca-bundle.crt");
    std::fs::write(&bundle_path, bundle)?;
    let kubeconfig = work.join("pod-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    \
             certificate-authority: {}\n    tls-server-name: kubernetes.default.svc\nusers:\n- name: u\n  \
             user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\n\
             current-context: c\n",
            api.address,
            bundle_path.display(),
        ),
    )?;
    Ok(kubeconfig)
}

fn mcp_session(demo: &mut Demo) -> Result<()> {
    let client = root().join("tests/support/mcp_client.py");
    let mut wrapped = Command::new(&demo.bin);
    wrapped
        .args(["wrap", "--config"])
        .arg(&demo.config)
        .args(["--", "python3"])
        .arg(&client)
        .args([&demo.server_url, "demo"]);
    println!(
        "$ interlock wrap -- python3 mcp_client.py {}",
        demo.server_url
    );
    demo.seen =
        serde_json::from_str(&output(&mut wrapped)?).context("the demo client printed no JSON")?;
    let seen = &demo.seen;
    println!(
        "client: connected to {} (MCP {})",
        seen["server"].as_str().unwrap_or("?"),
        seen["protocol"].as_str().unwrap_or("?")
    );
    println!(
        "client: {} tools listed, e.g. {}",
        seen["tools"].as_array().map_or(0, Vec::len),
        list_head(&seen["tools"], 4)
    );
    println!("client: echo -> {}", seen["echo"].as_str().unwrap_or("?"));
    Ok(())
}

fn secret_masked(demo: &mut Demo) -> Result<()> {
    let env = demo.seen["env"].as_str().unwrap_or_default();
    let aws_lines: Vec<&str> = env.lines().filter(|line| line.contains("AWS_")).collect();
    if aws_lines.is_empty() {
        bail!("get-env returned no AWS_ variables: {env}");
    }
    println!("client: get-env ->");
    for line in aws_lines {
        println!("    {}", line.trim());
    }
    if env.contains(FAKE_AWS_SECRET) || env.contains(FAKE_AWS_KEY_ID) {
        bail!("the client saw the AWS key in clear: masking did not apply");
    }
    Ok(())
}

fn tool_denied(demo: &mut Demo) -> Result<()> {
    let Some(error) = demo.seen["denied"].as_str() else {
        bail!("gzip-file-as-resource was not denied");
    };
    println!(
        "client: gzip-file-as-resource {{\"data\": \"http://127.0.0.1:9/…\"}} -> error: {error}"
    );
    Ok(())
}

/// `kubectl ARGS` in the pod's container, with the pod's kubeconfig.
fn pod_kubectl(demo: &Demo, args: &[&str]) -> Command {
    println!("$ (in pod team/agent-1) kubectl {}", args.join(" "));
    let mut command = Command::new(&demo.enter[0]);
    command
        .args(&demo.enter[1..])
        .arg(&demo.kubectl)
        .arg("--kubeconfig")
        .arg(&demo.kubeconfig)
        .args(args);
    command
}

fn kube_secret_masked(demo: &mut Demo) -> Result<()> {
    let data = output(&mut pod_kubectl(
        demo,
        &[
            "get",
            "secret",
            "db-creds",
            "-n",
            "team",
            "-o",
            "jsonpath={.data}",
        ],
    ))?;
    println!("kubectl: {data}");
    if data.contains(SECRET_BASE64) {
        bail!("kubectl saw the Secret's value: masking did not apply");
    }
    Ok(())
}

fn kube_exec(demo: &mut Demo) -> Result<()> {
    let out = pod_kubectl(
        demo,
        &[
            "exec",
            "-n",
            "team",
            "web",
            "--",
            "sh",
            "-c",
            "echo hello from the pod; echo an error >&2; exit 3",
        ],
    )
    .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    match out.status.code() {
        Some(3) => println!("kubectl: exited 3, the command's own exit code"),
        other => bail!("kubectl exec exited {other:?}, not the command's 3"),
    }
    Ok(())
}

fn read_back(demo: &mut Demo) -> Result<()> {
    demo.gateway.take();
    let mcp_session = find_record(demo, |r| r["mcp_session_id"].is_string())?["mcp_session_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    println!("$ interlock replay --mcp {mcp_session}");
    run(Command::new(&demo.bin)
        .args(["replay", "--mcp", &mcp_session, "--config"])
        .arg(&demo.config))?;

    let secret_read = find_record(demo, |r| {
        r["kind"] == "kube_request" && r["resource"] == "secrets"
    })?;
    let session = secret_read["session_id"].as_str().unwrap_or_default();
    println!("\n$ interlock replay {session} | grep -e '  pod:' -e 'kube \\['");
    let replayed = output(
        Command::new(&demo.bin)
            .args(["replay", session, "--config"])
            .arg(&demo.config),
    )?;
    for line in replayed
        .lines()
        .filter(|l| l.contains("kube [") || l.starts_with("  pod:"))
    {
        println!("{line}");
    }

    let exec = find_record(demo, |r| {
        r["kind"] == "kube_request" && r["subresource"] == "exec"
    })?;
    let session = exec["session_id"].as_str().unwrap_or_default();
    let cast = demo.work.join("exec.cast");
    println!("\n$ interlock replay --asciicast {session} > exec.cast && asciinema cat exec.cast");
    std::fs::write(
        &cast,
        output(
            Command::new(&demo.bin)
                .args(["replay", "--asciicast", session, "--config"])
                .arg(&demo.config),
        )?,
    )?;
    run(Command::new(root().join("target/kube-peers/bin/asciinema"))
        .arg("cat")
        .arg(&cast))?;

    println!("\n$ interlock verify");
    run(Command::new(&demo.bin)
        .args(["verify", "--config"])
        .arg(&demo.config))
}

/// The first record in the store that `wanted` picks.
fn find_record(demo: &Demo, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
    let cli = |args: &[&str]| -> Result<Value> {
        let json = output(
            Command::new(&demo.bin)
                .args(args)
                .arg("--config")
                .arg(&demo.config),
        )?;
        Ok(serde_json::from_str(&json)?)
    };
    let sessions = cli(&["sessions", "list", "--json"])?;
    for session in sessions.as_array().into_iter().flatten() {
        let id = session["id"].as_str().unwrap_or_default();
        let records = cli(&["replay", id, "--json"])?;
        if let Some(found) = records.as_array().into_iter().flatten().find(|r| wanted(r)) {
            return Ok(found.clone());
        }
    }
    bail!("the record store has no such record; see the steps above")
}

fn list_head(list: &Value, n: usize) -> String {
    let names: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let more = if names.len() > n { ", …" } else { "" };
    format!("{}{more}", names[..names.len().min(n)].join(", "))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_until(what: &str, ready: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} was not up within 20 s; see the log above")
}

/// A child stopped with SIGTERM (the gateway drains and syncs), then killed, on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An address on `lo`, removed on drop.
struct HostAddress(String);

impl HostAddress {
    fn add(address: &str) -> Result<HostAddress> {
        let cidr = format!("{address}/32");
        let _ = Command::new("ip")
            .args(["addr", "del", &cidr, "dev", "lo"])
            .output();
        run(Command::new("ip").args(["addr", "add", &cidr, "dev", "lo"]))?;
        Ok(HostAddress(address.into()))
    }
}

impl Drop for HostAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"])
            .output();
    }
}

/// sim-pod removes its pod and node once its stdin closes.
impl Drop for Pod {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! `cargo xtask demo`: what the product is for, in numbered steps on one box. An unmodified
//! MCP client is redirected by eBPF through the gateway to the reference MCP server, sees the
//! server's secret masked and a risky tool denied, and the recorded conversation is read back
//! and verified. Each step is a function in `STEPS`; a new one (Kubernetes) is one more entry.
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
        "The conversation, read back from the record store, and its sessions verified",
        read_back,
    ),
];

pub fn demo(bin: &Path) -> Result<()> {
    let work = std::env::temp_dir().join(format!("interlock-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let server_port = free_port()?;
    let (listen_port, admin_port) = (free_port()?, free_port()?);
    let config = work.join("interlock.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen_port}\nlisten_v6: null\nadmin: 127.0.0.1:{admin_port}\n\
             control_socket: ./control.sock\nfail_mode: open\ntargets:\n  - name: everything\n    \
             address: 127.0.0.1:{server_port}\n    protocol: mcp\nrecording:\n  dir: ./records\n\
             {POLICY}"
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
        "starting the gateway (interlock run --config {}): target `everything` speaks mcp, policy rule `no-url-fetches`",
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

    let mut demo = Demo {
        bin: bin.into(),
        config,
        server_url: format!("http://127.0.0.1:{server_port}/mcp"),
        seen: Value::Null,
        gateway: Some(gateway),
    };
    for (number, (title, run_step)) in STEPS.iter().enumerate() {
        step(&format!("{}/{}  {title}", number + 1, STEPS.len()));
        run_step(&mut demo)?;
    }
    eprintln!("\nrecords and config are in {}", work.display());
    Ok(())
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

fn read_back(demo: &mut Demo) -> Result<()> {
    demo.gateway.take();
    let mcp_session = mcp_session_id(demo)?;
    println!("$ interlock replay --mcp {mcp_session}");
    run(Command::new(&demo.bin)
        .args(["replay", "--mcp", &mcp_session, "--config"])
        .arg(&demo.config))?;
    println!("\n$ interlock verify");
    run(Command::new(&demo.bin)
        .args(["verify", "--config"])
        .arg(&demo.config))
}

/// The `Mcp-Session-Id` of the demo client's conversation, from its recorded messages.
fn mcp_session_id(demo: &Demo) -> Result<String> {
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
        if let Some(mcp_session) = records
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|r| r["mcp_session_id"].as_str())
        {
            return Ok(mcp_session.into());
        }
    }
    bail!("no MCP message was recorded")
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

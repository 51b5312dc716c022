//! `cargo xtask …`: installs what is missing, builds the eBPF object, runs the demo, the tests
//! and the benchmarks. Every step prints what it is doing.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing toolchain pieces: nightly rust-src, LLVM 22, bpf-linker, test tools.
    Setup,
    /// Build the eBPF object (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Build the eBPF object and the `interlock` binary.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build everything and run the standalone demo (root).
    Demo,
    /// Lint, then run unit, in-process and end-to-end tests (root).
    Test,
    /// Run the benchmarks (root, release build).
    Bench,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup(),
        Task::BuildEbpf => build_ebpf(),
        Task::Build { release } => build(release).map(drop),
        Task::Demo => demo(),
        Task::Test => test(),
        Task::Bench => bench(),
    }
}

fn step(message: &str) {
    eprintln!("\x1b[1m==> {message}\x1b[0m");
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .into()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const DEBIAN_PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22.
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    // End-to-end tests and the demo.
    "curl",
    "iproute2",
    "python3",
    // The plain-proxy baseline in the benchmarks.
    "nginx",
    "libnginx-mod-stream",
];

fn setup() -> Result<()> {
    step("checking the nightly toolchain's rust-src (eBPF builds core from source)");
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup is required")?;
    if !String::from_utf8_lossy(&installed.stdout).contains("rust-src") {
        step("installing nightly rust-src");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        step(&format!(
            "installing Debian packages: {}",
            missing.join(" ")
        ));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    let support = root().join("tests/support");
    let npm_peers = [
        "node_modules/kinesalite",
        "node_modules/.bin/mcp-server-everything",
        "node_modules/.bin/mcp-inspector",
        "node_modules/.bin/conformance",
        // Node 22 for the Inspector and the conformance suite (the machine's Node is older).
        "node_modules/.bin/node",
    ];
    if !npm_peers.iter().all(|p| support.join(p).exists()) {
        if !succeeds(Command::new("npm").arg("--version")) {
            step("installing Node.js and npm");
            run(Command::new("apt-get")
                .args(["install", "-y", "-q", "nodejs", "npm"])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
        step(
            "installing test peers from npm (kinesalite, MCP server-everything, Inspector, conformance, Node 22; pinned in tests/support)",
        );
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&support))?;
    }

    let python_peers = "import importlib.metadata as m; assert m.version('mcp') == '2.3.0'";
    if !succeeds(Command::new("python3").args(["-c", python_peers])) {
        step(
            "installing test peers from PyPI (the official MCP Python SDK, pinned in tests/support)",
        );
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--root-user-action=ignore",
                "-r",
            ])
            .arg(support.join("requirements.txt")))?;
    }

    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        step("installing bpf-linker (about a minute of compiling)");
        // LLVM_PREFIX: /usr/bin/llvm-config may belong to an older LLVM; point at LLVM 22.
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"))?;
    }
    step("toolchain ready");
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn build_ebpf() -> Result<()> {
    step("building the eBPF object (nightly, bpfel-unknown-none)");
    let root = root();
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(root.join("gateway-ebpf/programs/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/ebpf"))
        // The outer cargo's toolchain choice must not leak into the nightly build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO"))
}

/// Returns the path of the built `interlock` binary.
fn build(release: bool) -> Result<PathBuf> {
    setup()?;
    build_ebpf()?;
    step(&format!(
        "building interlock ({})",
        if release { "release" } else { "debug" }
    ));
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "-p", "interlock"]).current_dir(root());
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("interlock"))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGTERM first so the gateway drains and detaches.
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

fn wait_ready(admin_port: u16) -> Result<()> {
    let url = format!("http://127.0.0.1:{admin_port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if succeeds(Command::new("curl").args(["-sf", &url])) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("the gateway did not become ready within 20 s; see its log above")
}

fn demo() -> Result<()> {
    let bin = build(false)?;
    let work = std::env::temp_dir().join(format!("interlock-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("index.html"), "hello from the demo target\n")?;
    let (target_port, listen_port, admin_port) = (free_port()?, free_port()?, free_port()?);
    let config = work.join("interlock.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen_port}\nlisten_v6: null\nadmin: 127.0.0.1:{admin_port}\n\
             control_socket: ./control.sock\nfail_mode: open\ntargets:\n  - name: demo\n    \
             address: 127.0.0.1:{target_port}\n    protocol: tcp\nrecording:\n  dir: ./records\n"
        ),
    )?;
    step(&format!(
        "starting a local HTTP server on 127.0.0.1:{target_port}"
    ));
    let _server = Killed(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &target_port.to_string(),
            ])
            .current_dir(&work)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    step("starting the gateway");
    let gateway = Killed(
        Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .spawn()?,
    );
    wait_ready(admin_port)?;
    step(&format!(
        "running a wrapped client: interlock wrap -- curl http://127.0.0.1:{target_port}/"
    ));
    let url = format!("http://127.0.0.1:{target_port}/index.html");
    let mut wrapped = Command::new(&bin);
    wrapped
        .args(["wrap", "--config"])
        .arg(&config)
        .args(["--", "curl", "-sS", &url]);
    for _ in 0..50 {
        // The server may still be starting; retry only while it is not up.
        if succeeds(Command::new("curl").args(["-sf", &url])) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    run(&mut wrapped)?;
    drop(gateway);
    step("recorded sessions (interlock sessions list)");
    run(Command::new(&bin)
        .args(["sessions", "list", "--config"])
        .arg(&config))?;
    let listing = Command::new(&bin)
        .args(["sessions", "list", "--json", "--config"])
        .arg(&config)
        .output()?;
    let sessions: Vec<serde_json::Value> = serde_json::from_slice(&listing.stdout)?;
    let wrapped_session = sessions
        .iter()
        .rev()
        .find(|s| s["process"] == "curl")
        .context("the wrapped curl was not recorded")?;
    let id = wrapped_session["id"].as_str().context("session id")?;
    step(&format!(
        "replaying the wrapped session (interlock replay {id})"
    ));
    run(Command::new(&bin)
        .args(["replay", id, "--config"])
        .arg(&config))?;
    step(&format!(
        "verifying its hash chain and seal (interlock verify {id})"
    ));
    run(Command::new(&bin)
        .args(["verify", id, "--config"])
        .arg(&config))?;
    eprintln!("\nrecords and config are in {}", work.display());
    Ok(())
}

fn test() -> Result<()> {
    let bin = build(false)?;
    let root = root();
    step("cargo fmt --check");
    run(Command::new("cargo")
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(&root))?;
    step("cargo clippy -D warnings");
    run(Command::new("cargo")
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(&root))?;
    step("unit and in-process tests");
    run(Command::new("cargo")
        .args(["test", "--workspace", "--exclude", "interlock-e2e"])
        .current_dir(&root))?;
    step("end-to-end tests (real eBPF, cgroups, network namespaces; one at a time)");
    run(Command::new("cargo")
        .args(["test", "-p", "interlock-e2e", "--", "--test-threads=1"])
        .env("INTERLOCK_BIN", &bin)
        .current_dir(&root))
}

fn bench() -> Result<()> {
    let bin = build(true)?;
    step("building the load generator (release)");
    run(Command::new("cargo")
        .args(["build", "--release", "-p", "interlock-bench"])
        .current_dir(root()))?;
    step("running benchmarks: direct vs nginx vs Interlock (tcp, recording on)");
    let bench = root().join("target/release/interlock-bench");
    run(Command::new(&bench).arg("--interlock").arg(&bin))?;
    step("running benchmarks: spool append and Kinesis shipping");
    run(Command::new(&bench).arg("stream"))?;
    step("running benchmarks: masking throughput per core (one pass vs naive per-pattern loop)");
    run(Command::new(&bench).arg("masking"))?;
    step("running benchmarks: MCP direct vs nginx (reverse proxy) vs Interlock (mcp mode)");
    run(Command::new(&bench).arg("mcp").arg("--interlock").arg(&bin))
}

//! `cargo xtask …`: installs what is missing, builds the eBPF object, runs the demo, the tests
//! and the benchmarks. Every step prints what it is doing; a failure is one line that names the
//! failing command and what to do.
mod cmd;
mod demo;
mod image;
mod layers;
mod setup;
mod toolchain;

use std::{path::PathBuf, process::Command, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use cmd::{root, run, step};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing, at pinned versions: the eBPF toolchain, Debian packages, test peers.
    Setup,
    /// Build the eBPF object (pinned nightly, bpfel-unknown-none).
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
    /// Check the gateway's imports against the layer order in xtask/src/layers.rs.
    Layers,
    /// Build the gateway image (static binary FROM scratch) with buildah.
    Image {
        /// A debug build, tagged `debug` (what the tests check), instead of release.
        #[arg(long)]
        debug: bool,
    },
}

fn main() -> ExitCode {
    let done = match Cli::parse().command {
        Task::Setup => setup::setup(),
        Task::BuildEbpf => toolchain::ensure(setup::install_debian).and_then(|()| build_ebpf()),
        Task::Build { release } => build(release).map(drop),
        Task::Demo => build(false).and_then(|bin| {
            step("building kube-testserver (the demo's Kubernetes API server) and sim-pod");
            run(Command::new("cargo")
                .args(["build", "--locked", "-p", "interlock-e2e"])
                .args(["--bin", "kube-testserver", "--bin", "sim-pod"])
                .current_dir(root()))?;
            demo::demo(&bin)
        }),
        Task::Test => test(),
        Task::Bench => bench(),
        Task::Layers => layers::check(&root().join("gateway/src")),
        Task::Image { debug } => setup::setup()
            .and_then(|()| build_ebpf())
            .and_then(|()| image::image(!debug))
            .map(drop),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Expected failures are one line: the cause chain joined, no backtrace.
            eprintln!("\x1b[1;31merror:\x1b[0m {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_ebpf() -> Result<()> {
    let nightly = toolchain::nightly()?;
    step(&format!(
        "building the eBPF object ({nightly}, bpfel-unknown-none)"
    ));
    let root = root();
    run(Command::new("rustup")
        .args(["run", &nightly, "cargo", "build", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(root.join("gateway-ebpf/programs/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/ebpf"))
        .env("PATH", toolchain::path_with_cargo_bin())
        // The outer cargo's toolchain choice must not leak into the nightly build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO"))
}

/// Returns the path of the built `interlock` binary.
fn build(release: bool) -> Result<PathBuf> {
    setup::setup()?;
    build_ebpf()?;
    step(&format!(
        "building interlock ({})",
        if release { "release" } else { "debug" }
    ));
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--locked", "-p", "interlock"])
        .current_dir(root());
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("interlock"))
}

fn test() -> Result<()> {
    let bin = build(false)?;
    let root = root();
    step("cargo fmt --check");
    run(Command::new("cargo")
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(&root))?;
    step("module layers: no upward import, no circle");
    layers::check(&root.join("gateway/src"))?;
    step("cargo clippy -D warnings");
    run(Command::new("cargo")
        .args(["clippy", "--locked", "--workspace", "--all-targets"])
        .args(["--", "-D", "warnings"])
        .current_dir(&root))?;
    step("unit and in-process tests");
    run(Command::new("cargo")
        .args([
            "test",
            "--locked",
            "--workspace",
            "--exclude",
            "interlock-e2e",
        ])
        .current_dir(&root))?;
    // The image test runs the image's own binary: a static debug build, built here.
    let image = image::image(false)?;
    step("end-to-end tests (real eBPF, cgroups, network namespaces; one at a time)");
    run(Command::new("cargo")
        .args([
            "test",
            "--locked",
            "-p",
            "interlock-e2e",
            "--",
            "--test-threads=1",
        ])
        .env("INTERLOCK_BIN", &bin)
        .env("INTERLOCK_IMAGE", &image)
        .current_dir(&root))
}

fn bench() -> Result<()> {
    let bin = build(true)?;
    step("building the load generator (release)");
    run(Command::new("cargo")
        .args(["build", "--release", "--locked", "-p", "interlock-bench"])
        .current_dir(root()))?;
    let bench = root().join("target/release/interlock-bench");
    step("running benchmarks: direct vs nginx vs Interlock (tcp, recording on)");
    run(Command::new(&bench).arg("--interlock").arg(&bin))?;
    step("running benchmarks: spool append and Kinesis shipping");
    run(Command::new(&bench).arg("stream"))?;
    step("running benchmarks: masking throughput per core (one pass vs naive per-pattern loop)");
    run(Command::new(&bench).arg("masking"))?;
    step("running benchmarks: MCP direct vs nginx (reverse proxy) vs Interlock (mcp mode)");
    run(Command::new(&bench).arg("mcp").arg("--interlock").arg(&bin))?;
    step("running benchmarks: memory of 10,000 idle sessions, nginx vs Interlock");
    run(Command::new(&bench)
        .arg("idle")
        .arg("--interlock")
        .arg(&bin))?;
    step("building the test API server and its watch client (release)");
    run(Command::new("cargo")
        .args(["build", "--release", "--locked", "-p", "interlock-e2e"])
        .args(["--bin", "kube-testserver", "--bin", "kube-watchers"])
        .current_dir(root()))?;
    let testserver = root().join("target/release/kube-testserver");
    step("running benchmarks: node mode, pod registration latency and memory with cached pods");
    run(Command::new(&bench)
        .arg("node")
        .arg("--interlock")
        .arg(&bin)
        .arg("--testserver")
        .arg(&testserver))?;
    step(
        "running benchmarks: the API-server path, direct vs nginx (TLS re-encrypting, HTTP/2) vs Interlock",
    );
    run(Command::new(&bench)
        .arg("kube")
        .arg("--interlock")
        .arg(&bin)
        .arg("--testserver")
        .arg(&testserver))
}

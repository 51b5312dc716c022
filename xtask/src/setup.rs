//! `cargo xtask setup`: installs what the build, the demo and the tests need, each at an exact
//! version: the eBPF toolchain (toolchain.rs), Debian packages, the npm peers from
//! tests/support/package-lock.json (`npm ci`) and the PyPI peers from
//! tests/support/requirements.txt, kube-requirements.txt and deploy-requirements.txt (`==`
//! pins, dependencies included).
use std::{fs, path::Path, process::Command};

use anyhow::Result;

use crate::{
    cmd::{output, root, run, step, succeeds},
    toolchain,
};

/// Debian packages with no major version in their name come from the machine's Debian release.
const DEBIAN_PACKAGES: &[&str] = &[
    // End-to-end tests and the demo.
    "curl",
    "iproute2",
    "python3",
    // The plain-proxy baseline in the benchmarks.
    "nginx",
    "libnginx-mod-stream",
    // The image (`cargo xtask image`): a static binary (ring's C built with musl-gcc), put in
    // an image FROM scratch by buildah, offline.
    "musl-tools",
    "buildah",
];

pub fn setup() -> Result<()> {
    toolchain::ensure(install_debian)?;
    let packages: Vec<String> = DEBIAN_PACKAGES.iter().map(|p| p.to_string()).collect();
    install_debian(&packages)?;
    npm_peers()?;
    python_peers()?;
    kube_peers()?;
    venv_peers(
        "target/deploy-tools",
        "deploy-requirements.txt",
        "manifest tools",
    )?;
    step("toolchain and test peers ready");
    Ok(())
}

/// Installs the packages that are not installed yet.
pub fn install_debian(packages: &[String]) -> Result<()> {
    let missing: Vec<&String> = packages.iter().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.as_str()).collect();
    step(&format!("installing Debian packages: {}", names.join(" ")));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&names)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn dpkg_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.contains("install ok installed"))
}

/// kinesalite, server-everything, the Inspector, the conformance suite and Node 22, as locked.
fn npm_peers() -> Result<()> {
    let support = root().join("tests/support");
    // npm ci writes this copy of the lock; an older one means the lock changed since.
    let installed_lock = support.join("node_modules/.package-lock.json");
    if modified(&installed_lock) >= modified(&support.join("package-lock.json")) {
        return Ok(());
    }
    if !succeeds(Command::new("npm").arg("--version")) {
        install_debian(&["nodejs".into(), "npm".into()])?;
    }
    step(
        "installing test peers from npm (kinesalite, MCP server-everything, Inspector, conformance, Node 22), as locked in tests/support",
    );
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&support))
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Prints each pin of a requirements file that the installed packages do not meet.
const CHECK_PINS: &str = r##"
import sys, importlib.metadata as m
unmet = []
for line in open(sys.argv[1]):
    name, _, want = line.split("#")[0].strip().partition("==")
    if not name:
        continue
    try:
        have = m.version(name)
    except m.PackageNotFoundError:
        have = "missing"
    if have != want:
        unmet.append(f"{name} {have} (pinned {want})")
print(", ".join(unmet))
"##;

/// The official MCP Python SDK and the OIDC issuer's PyJWT, with their pinned dependencies,
/// in the machine's Python.
fn python_peers() -> Result<()> {
    pip_install(Path::new("python3"), "requirements.txt", "test peers")
}

/// The Kubernetes client and kubectl, in a venv of their own (see kube-requirements.txt).
fn kube_peers() -> Result<()> {
    venv_peers(
        "target/kube-peers",
        "kube-requirements.txt",
        "Kubernetes test peers",
    )
}

/// A venv at `dir` (under the repository) with the pins of tests/support/`requirements`.
fn venv_peers(dir: &str, requirements: &str, what: &str) -> Result<()> {
    let venv = root().join(dir);
    let python = venv.join("bin/python");
    if !python.exists() {
        step(&format!(
            "creating a venv for the {what} in {}",
            venv.display()
        ));
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    pip_install(&python, requirements, what)
}

/// Installs the pins of tests/support/REQUIREMENTS that `python` does not meet.
fn pip_install(python: &Path, requirements: &str, what: &str) -> Result<()> {
    let path = root().join("tests/support").join(requirements);
    let unmet = output(Command::new(python).args(["-c", CHECK_PINS]).arg(&path))?;
    if unmet.trim().is_empty() {
        return Ok(());
    }
    let unmet: Vec<&str> = unmet.trim().split(", ").collect();
    step(&format!(
        "installing {what} from PyPI, as pinned in tests/support/{requirements} ({} not as pinned, e.g. {})",
        unmet.len(),
        unmet[0]
    ));
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--root-user-action=ignore",
            "-r",
        ])
        .arg(&path))
}

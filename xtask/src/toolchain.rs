//! The eBPF toolchain pin, and the check that its pieces agree before anything is built.
//!
//! rustc writes LLVM bitcode for `bpfel-unknown-none` and bpf-linker reads it with the LLVM it
//! was built on, so the pinned nightly's LLVM major, the Debian LLVM packages and bpf-linker's
//! build must all be the same LLVM. The nightly is pinned in
//! gateway-ebpf/programs/rust-toolchain.toml (rustup reads it there too); the rest here.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::cmd::{output, root, run, step};

/// The LLVM that bpf-linker is built on: Debian's `llvm-N-dev` and bpf-linker's `llvm-N` feature.
pub const LLVM_MAJOR: u32 = 22;
/// Installed with `cargo install --locked` at exactly this version.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

const TOOLCHAIN_FILE: &str = "gateway-ebpf/programs/rust-toolchain.toml";

/// Debian packages bpf-linker builds and links against.
pub fn llvm_packages() -> Vec<String> {
    ["llvm", "libclang", "libpolly"]
        .iter()
        .map(|name| format!("{name}-{LLVM_MAJOR}-dev"))
        .collect()
}

#[derive(Deserialize)]
struct ToolchainFile {
    toolchain: ToolchainSection,
}

#[derive(Deserialize)]
struct ToolchainSection {
    channel: String,
}

/// The pinned nightly, e.g. `nightly-2026-05-19`.
pub fn nightly() -> Result<String> {
    let path = root().join(TOOLCHAIN_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file: ToolchainFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a rust-toolchain file", path.display()))?;
    let channel = file.toolchain.channel;
    if !channel.starts_with("nightly-") {
        bail!(
            "{TOOLCHAIN_FILE} pins `{channel}`: pin a dated nightly (nightly-YYYY-MM-DD) whose LLVM is {LLVM_MAJOR}"
        );
    }
    Ok(channel)
}

/// Installs the pinned nightly with rust-src and the pinned bpf-linker where missing, then
/// checks that they agree on LLVM. The nightly is checked first: a bumped pin fails before
/// anything slow is installed.
pub fn ensure(install_debian: impl Fn(&[String]) -> Result<()>) -> Result<()> {
    let nightly = nightly()?;
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &nightly,
    ]))
    .unwrap_or_default();
    if !installed.contains("rust-src") {
        step(&format!(
            "installing {nightly} with rust-src (the eBPF crate builds core from source)"
        ));
        run(Command::new("rustup")
            // rustup's own errors are expected failures here: no backtrace.
            .env_remove("RUST_BACKTRACE")
            .args([
                "toolchain",
                "install",
                &nightly,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
    }
    let nightly_llvm = rustc_llvm_major(&nightly)?;
    if nightly_llvm != LLVM_MAJOR {
        bail!(
            "the pinned {nightly} is built on LLVM {nightly_llvm}, but bpf-linker {BPF_LINKER_VERSION} is built on LLVM {LLVM_MAJOR}: \
             pin a nightly whose `rustc -vV` says LLVM {LLVM_MAJOR} in {TOOLCHAIN_FILE}, or move LLVM_MAJOR in xtask/src/toolchain.rs"
        );
    }

    install_debian(&llvm_packages())?;

    let linker = bpf_linker();
    if !bpf_linker_is_pinned(&linker) {
        step(&format!(
            "installing bpf-linker {BPF_LINKER_VERSION} on LLVM {LLVM_MAJOR} (about a minute of compiling)"
        ));
        let llvm_prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--force"])
            .args(["--version", &format!("={BPF_LINKER_VERSION}")])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{LLVM_MAJOR}"))
            // /usr/bin/llvm-config may belong to another LLVM; llvm-sys reads these.
            .env("LLVM_PREFIX", &llvm_prefix)
            .env(format!("LLVM_SYS_{LLVM_MAJOR}1_PREFIX"), &llvm_prefix))?;
    }
    let linker_llvm = linked_llvm_major(&linker)?;
    if linker_llvm != nightly_llvm {
        bail!(
            "{} links LLVM {linker_llvm}, but the pinned {nightly} is built on LLVM {nightly_llvm}: \
             delete it and run `cargo xtask setup` to rebuild it on LLVM {LLVM_MAJOR}",
            linker.display()
        );
    }
    Ok(())
}

/// `$CARGO_HOME/bin/bpf-linker`, where `cargo install` puts it (PATH may not include it).
pub fn bpf_linker() -> PathBuf {
    cargo_home().join("bin/bpf-linker")
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

fn bpf_linker_is_pinned(linker: &Path) -> bool {
    let version = output(Command::new(linker).arg("--version")).unwrap_or_default();
    version.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION)
        && linked_llvm_major(linker).ok() == Some(LLVM_MAJOR)
}

/// The LLVM major in `rustc -vV` of a toolchain.
fn rustc_llvm_major(toolchain: &str) -> Result<u32> {
    let info = output(Command::new("rustup").args(["run", toolchain, "rustc", "-vV"]))?;
    llvm_major_in_rustc_info(&info)
        .with_context(|| format!("`rustc -vV` of {toolchain} names no LLVM version"))
}

fn llvm_major_in_rustc_info(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next()?.parse().ok())
}

/// The LLVM major of the libLLVM a dynamically linked bpf-linker loads (`libLLVM.so.22.1`).
fn linked_llvm_major(linker: &Path) -> Result<u32> {
    let libs = output(Command::new("ldd").arg(linker))?;
    llvm_major_in_ldd(&libs).with_context(|| {
        format!(
            "{} loads no libLLVM: delete it and run `cargo xtask setup`",
            linker.display()
        )
    })
}

fn llvm_major_in_ldd(libs: &str) -> Option<u32> {
    libs.split_whitespace().find_map(|lib| {
        let version = lib
            .strip_prefix("libLLVM.so.")
            .or_else(|| lib.strip_prefix("libLLVM-")?.strip_suffix(".so"))?;
        version.split('.').next()?.parse().ok()
    })
}

/// PATH with `$CARGO_HOME/bin` first, so rustc finds the pinned bpf-linker.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_home().join("bin")];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_is_a_dated_nightly() {
        let nightly = nightly().unwrap();
        let date = nightly.strip_prefix("nightly-").unwrap();
        assert_eq!(date.len(), "YYYY-MM-DD".len(), "{nightly}");
        assert_eq!(llvm_packages()[0], format!("llvm-{LLVM_MAJOR}-dev"));
    }

    #[test]
    fn llvm_majors_are_read_from_rustc_and_ldd() {
        let rustc = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\n\
                     release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major_in_rustc_info(rustc), Some(22));
        assert_eq!(llvm_major_in_rustc_info("rustc 1.0.0\n"), None);
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x7fb5)\n";
        assert_eq!(llvm_major_in_ldd(ldd), Some(22));
        assert_eq!(
            llvm_major_in_ldd("\tlibLLVM-17.so => /usr/lib/libLLVM-17.so\n"),
            Some(17)
        );
        assert_eq!(llvm_major_in_ldd("\tlibc.so.6 => /lib/libc.so.6\n"), None);
    }
}

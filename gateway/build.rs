//! Embeds the eBPF object built by `cargo xtask build-ebpf`. When it has not been built, an
//! empty placeholder is embedded so userspace still compiles (clippy, unit tests); the gateway
//! then refuses to start with a message saying how to build it.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("INTERLOCK_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest_dir.join("../target/ebpf/bpfel-unknown-none/release/interlock-ebpf")
        });
    println!("cargo:rerun-if-env-changed=INTERLOCK_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("interlock.bpf.o");
    let bytes = fs::read(&object).unwrap_or_default();
    fs::write(&out, bytes).expect("writing the embedded eBPF object");
}

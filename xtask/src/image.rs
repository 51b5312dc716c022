//! `cargo xtask image`: the gateway image (deploy/image/Containerfile), built offline with
//! buildah: a static musl `interlock` with the eBPF object embedded, FROM scratch.
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::{output, root, run, step};

const TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the image and returns its name (`localhost/interlock:VERSION`, or `:debug`).
pub fn image(release: bool) -> Result<String> {
    step(&format!(
        "adding the {TARGET} target to the pinned toolchain"
    ));
    run(Command::new("rustup")
        .args(["target", "add", TARGET])
        .current_dir(root()))?;
    let profile = if release { "release" } else { "debug" };
    step(&format!("building interlock, static ({TARGET}, {profile})"));
    let mut build = Command::new("cargo");
    build
        .args(["build", "--locked", "-p", "interlock", "--target", TARGET])
        .current_dir(root());
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let context = root().join("target/image-context");
    std::fs::create_dir_all(&context)?;
    let binary = root()
        .join("target")
        .join(TARGET)
        .join(profile)
        .join("interlock");
    std::fs::copy(&binary, context.join("interlock"))
        .with_context(|| format!("copying {} into the image context", binary.display()))?;
    let tag = if release {
        env!("CARGO_PKG_VERSION")
    } else {
        "debug"
    };
    let name = format!("localhost/interlock:{tag}");
    step(&format!(
        "building the image {name} with buildah (FROM scratch, no network)"
    ));
    run(Command::new("buildah")
        .args([
            "bud",
            "--network",
            "none",
            "--layers=false",
            "--quiet",
            "-t",
            &name,
        ])
        .arg("-f")
        .arg(root().join("deploy/image/Containerfile"))
        .arg(&context))?;
    let id = output(Command::new("buildah").args(["images", "--quiet", "--no-trunc", &name]))?;
    println!("image {name} ({})", id.trim());
    println!(
        "push it with: buildah push --digestfile interlock.digest {name} \
         docker://REGISTRY/interlock:{tag}, then pin that digest in deploy/overlays/eks \
         (images: digest)"
    );
    Ok(name)
}

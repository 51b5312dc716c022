//! The gateway image (deploy/image/Containerfile, built by `cargo xtask image`): its root holds
//! the static binary and nothing else, and that binary runs chrooted there, alone: its
//! entrypoint answers `--version` and `check-config` on the rendered ConfigMap.
use std::{fs, path::PathBuf, process::Command};

use interlock_e2e::{deploy::*, require_root};
use serde_json::Value;

fn buildah(args: &[&str]) -> String {
    let out = Command::new("buildah")
        .args(args)
        .output()
        .expect("buildah (cargo xtask setup)");
    assert!(
        out.status.success(),
        "buildah {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A working container of the image, removed on drop.
struct WorkingContainer(String);

impl Drop for WorkingContainer {
    fn drop(&mut self) {
        let _ = Command::new("buildah").args(["umount", &self.0]).output();
        let _ = Command::new("buildah").args(["rm", &self.0]).output();
    }
}

#[test]
fn the_images_static_binary_runs_alone_in_its_root() {
    require_root();
    let image = std::env::var("INTERLOCK_IMAGE").expect(
        "INTERLOCK_IMAGE names the image under test: `cargo xtask test` builds it; alone, run \
         `cargo xtask image --debug` and set INTERLOCK_IMAGE=localhost/interlock:debug",
    );
    let inspected: Value =
        serde_json::from_str(&buildah(&["inspect", "--type", "image", &image])).unwrap();
    assert_eq!(
        inspected["OCIv1"]["config"]["Entrypoint"],
        serde_json::json!(["/interlock"])
    );
    let container = WorkingContainer(buildah(&["from", "--pull-never", &image]));
    let root = PathBuf::from(buildah(&["mount", &container.0]));
    let entries: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["interlock"], "the image holds only the binary");

    // Alone in its root: no loader, no libc, no shell.
    let run = |args: &[&str]| {
        let out = Command::new("chroot")
            .arg(&root)
            .arg("/interlock")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "/interlock {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let version = run(&["--version"]);
    assert!(version.starts_with("interlock "), "{version}");
    let config_dir = root.join("etc/interlock");
    fs::create_dir_all(&config_dir).unwrap();
    fs::write(
        config_dir.join("interlock.yaml"),
        gateway_config(&objects(&render("overlays/eks"))),
    )
    .unwrap();
    let checked = run(&["check-config", "/etc/interlock/interlock.yaml"]);
    assert!(checked.contains(": ok"), "{checked}");
}

//! `interlock wrap` as a user meets it: exit codes, a missing gateway, and non-root callers.
use std::{net::SocketAddr, process::Command};

use interlock_e2e::*;

#[test]
fn exit_code_and_signals_pass_through() {
    let gw = Gateway::start(
        &[Target {
            name: "t",
            address: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }],
        "",
    );
    assert_eq!(gw.wrap(&["sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(
        gw.wrap(&["sh", "-c", "kill -TERM $$"]).status.code(),
        Some(128 + 15)
    );
    assert_eq!(gw.wrap(&["true"]).status.code(), Some(0));
    let missing = gw.wrap(&["/nonexistent/command"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("starting `/nonexistent/command`"));
}

#[test]
fn wrap_without_a_gateway_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("interlock.yaml");
    std::fs::write(&config, "control_socket: ./control.sock\n").unwrap();
    let out = Command::new(interlock_bin())
        .args(["wrap", "--config"])
        .arg(&config)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Interlock gateway is running"), "{err}");
    assert!(
        err.contains("interlock run --config"),
        "says how to fix it: {err}"
    );
}

#[test]
fn only_root_may_wrap() {
    use std::os::unix::fs::PermissionsExt;
    let gw = Gateway::start(&[], "");
    let readable = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(gw.dir.path(), readable.clone()).unwrap();
    std::fs::set_permissions(&gw.config, readable).unwrap();
    let as_nobody = || {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(interlock_bin())
            .args(["wrap", "--config"])
            .arg(&gw.config)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // The control socket is root-only on the filesystem...
    let err = as_nobody();
    assert!(err.contains("only root may wrap"), "{err}");

    // ...and the gateway checks the caller's credentials even if the socket is opened up.
    let socket = gw.dir.path().join("control.sock");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = as_nobody();
    assert!(err.contains("only root may register cgroups"), "{err}");
    assert_eq!(gw.metric("interlock_control_rejections_total"), Some(1.0));
    assert_eq!(gw.metric("interlock_cgroups_registered_total"), Some(0.0));
}

#[test]
fn a_killed_wrap_takes_its_leftover_processes_and_cgroup_with_it() {
    let gw = Gateway::start(&[], "");
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    // The command leaves a background process behind, then the wrap itself is SIGKILLed.
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let mut wrap = gw.wrap_cmd(None, &["sh", "-c", &script]).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&pidfile).map_or(true, |p| p.trim().is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let own = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::/"))
        .unwrap();
    let cgroup = cgroup2_mount().unwrap().join(own);
    assert!(cgroup.exists());
    wrap.kill().unwrap();
    wrap.wait().unwrap();

    // Once unregistered it would connect unintercepted, so it is killed, and the cgroup goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() || cgroup.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: pid {pid}, {}",
            cgroup.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

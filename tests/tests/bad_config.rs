//! Invalid config is rejected with file, line, column, key and a fix.
use std::process::Command;

use interlock_e2e::interlock_bin;

fn check(yaml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(interlock_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        file.display().to_string(),
    )
}

#[test]
fn malformed_yaml() {
    let (ok, err, file) = check("targets: [\n  - name: a\n");
    assert!(!ok);
    assert!(err.contains(&format!("{file}:")), "{err}");
    assert!(
        err.contains(":3:") || err.contains(":2:"),
        "names the line: {err}"
    );
}

#[test]
fn unknown_key() {
    let (ok, err, file) = check("listen: 127.0.0.1:15001\nlisten_adress: 127.0.0.1:1\n");
    assert!(!ok);
    assert!(err.contains(&format!("{file}:2:")), "{err}");
    assert!(err.contains("unknown field `listen_adress`"), "{err}");
    assert!(
        err.contains("expected one of"),
        "lists the valid keys: {err}"
    );
}

#[test]
fn bad_address() {
    let (ok, err, file) = check("targets:\n  - name: a\n    address: db.internal:5432\n");
    assert!(!ok);
    assert!(err.contains(&format!("{file}:3:")), "{err}");
    assert!(err.contains("key `targets[0].address`"), "{err}");
    assert!(
        err.contains("write a literal IP and port"),
        "says how to fix it: {err}"
    );
}

#[test]
fn duplicate_targets() {
    let (ok, err, file) = check(
        "targets:\n  - name: a\n    address: 127.0.0.1:1\n  - name: a\n    address: 127.0.0.1:2\n",
    );
    assert!(!ok);
    assert!(err.contains(&file), "{err}");
    assert!(
        err.contains("duplicate target name `a` in targets[1]"),
        "{err}"
    );
    assert!(err.contains("key `targets`"), "{err}");
}

#[test]
fn valid_config_passes_and_run_rejects_bad_config_before_touching_the_kernel() {
    let (ok, _, _) =
        check("targets:\n  - name: a\n    address: \"[::1]:8080\"\n    protocol: tcp\n");
    assert!(ok);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "fail_mode: sometimes\n").unwrap();
    let out = Command::new(interlock_bin())
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key `fail_mode`"), "{err}");
    assert!(err.contains("unknown variant `sometimes`"), "{err}");
}

#[test]
fn invalid_masking_is_refused_with_the_fix() {
    let cases = [
        ("masking:\n  disable: [emails]\n", "interlock detectors"),
        (
            "masking:\n  custom:\n    - { name: emp, regex: 'EMP-(' }\n",
            "masking.custom `emp`",
        ),
        ("masking:\n  replacement: hmac\n", "hmac_key_file"),
        (
            "masking:\n  replacement: rot13\n",
            "unknown variant `rot13`",
        ),
    ];
    for (yaml, expected) in cases {
        let (ok, err, _) = check(yaml);
        assert!(!ok, "{yaml}");
        assert!(err.contains(expected), "{yaml}: {err}");
    }
}

#[test]
fn a_missing_config_file_is_one_clear_error() {
    let out = Command::new(interlock_bin())
        .args(["check-config", "/nonexistent/interlock.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot read config file /nonexistent/interlock.yaml")
            && err.contains("check the path passed to --config"),
        "{err}"
    );
    assert_eq!(err.matches("No such file").count(), 1, "said once: {err}");
}

#[test]
fn run_as_a_non_root_user_fails_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("interlock.yaml");
    std::fs::write(&config, "recording:\n  dir: ./records\n").unwrap();
    // nobody; the directory must be enterable for the config to be read.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(interlock_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("run it as root"), "{err}");
    assert!(
        !dir.path().join("records").exists(),
        "no store, no key: {err}"
    );
}

/// A reader that stops early ends a listing quietly, as `| head` does, with no panic.
#[test]
fn a_closed_stdout_ends_a_listing_without_a_panic() {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two fds; each is owned exactly once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    // The reader is gone before the listing writes a byte.
    drop(read_end);
    let out = Command::new(interlock_bin())
        .arg("detectors")
        .stdout(write_end)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGPIPE),
        "{err}"
    );
}

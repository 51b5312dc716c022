//! What happens to workloads when the gateway dies or stops.
//!
//! A wrapped shell runs three probes, each released by the test through a file, so that the
//! second one runs after the gateway was SIGKILLed and the third after it is back.
use std::{
    fs,
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use interlock_e2e::*;
use serde_json::Value;

// Each wait also ends once $DIR is gone (the test finished or failed), so that no script
// outlives its test in a cgroup nobody removes.
const SCRIPT: &str = r#"
set -u
"$PROBE" http "$ADDR" > "$DIR/r1.json"; touch "$DIR/phase1"
while [ ! -e "$DIR/go2" ]; do [ -d "$DIR" ] || exit 1; sleep 0.05; done
"$PROBE" http "$ADDR" > "$DIR/r2.json"; touch "$DIR/phase2"
while [ ! -e "$DIR/go3" ]; do [ -d "$DIR" ] || exit 1; sleep 0.05; done
"$PROBE" http "$ADDR" > "$DIR/r3.json"; touch "$DIR/phase3"
"#;

struct Script {
    child: Proc,
    dir: tempfile::TempDir,
}

impl Script {
    fn start(gw: &Gateway, addr: SocketAddr) -> Script {
        let dir = tempfile::tempdir().unwrap();
        let child = gw
            .wrap_cmd(None, &["bash", "-c", SCRIPT])
            .env("PROBE", probe_bin())
            .env("ADDR", addr.to_string())
            .env("DIR", dir.path())
            .stderr(fs::File::create(dir.path().join("wrap.stderr")).unwrap())
            .spawn()
            .unwrap();
        Script {
            child: Proc(child),
            dir,
        }
    }

    fn wait_phase(&self, n: u32) -> Value {
        let marker = self.dir.path().join(format!("phase{n}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !marker.exists() {
            assert!(Instant::now() < deadline, "phase {n} never finished");
            thread::sleep(Duration::from_millis(20));
        }
        let text = fs::read_to_string(self.dir.path().join(format!("r{n}.json"))).unwrap();
        serde_json::from_str(text.trim()).unwrap()
    }

    fn release(&self, n: u32) {
        fs::write(self.dir.path().join(format!("go{n}")), "").unwrap();
    }

    /// Waits for the wrap to exit; its status and what it printed on stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let child: &mut Child = &mut self.child.0;
        let status = child.wait().unwrap();
        let stderr = fs::read_to_string(self.dir.path().join("wrap.stderr")).unwrap();
        (status, stderr)
    }
}

fn ok(probe: &Value) -> bool {
    probe["status"].as_str().is_some_and(|s| s.contains("200"))
}

/// A fail-open gateway, and a wrapped script whose first probe went through it.
fn open_gateway_past_its_first_probe() -> (HttpServer, Gateway, Script) {
    let server = HttpServer::start(SocketAddr::from(([127, 0, 0, 1], free_port())));
    let gw = Gateway::start(
        &[Target {
            name: "web",
            address: server.addr,
        }],
        "fail_mode: open\n",
    );
    let script = Script::start(&gw, server.addr);
    let first = script.wait_phase(1);
    assert!(ok(&first), "{first}");
    assert_eq!(gw.wait_sessions_ended(1).len(), 1);
    (server, gw, script)
}

#[test]
fn fail_open_lets_workloads_connect_directly_after_sigkill() {
    let (server, mut gw, script) = open_gateway_past_its_first_probe();

    gw.kill9();
    script.release(2);
    let second = script.wait_phase(2);
    assert!(
        ok(&second),
        "fail open: the workload reaches the target directly: {second}"
    );
    assert_eq!(second["peer"], server.addr.to_string());
    assert_eq!(
        gw.sessions().len(),
        1,
        "nothing is recorded while the gateway is gone"
    );

    script.release(3);
    script.wait_phase(3);
    assert!(script.finish().0.success());
}

/// A restarted gateway takes over the live wrap registrations, whether the old one was
/// killed or stopped: the window without interception is the restart itself.
fn restarted_gateway_intercepts_wrapped_processes_again(stop_old: fn(&mut Gateway)) {
    let (_server, mut gw, script) = open_gateway_past_its_first_probe();

    stop_old(&mut gw);
    gw.launch();
    assert_eq!(
        gw.metric("interlock_cgroups_adopted_total"),
        Some(1.0),
        "{}",
        gw.log()
    );
    script.release(2);
    let second = script.wait_phase(2);
    assert!(ok(&second), "{second}");
    let sessions = gw.wait_sessions_ended(2);
    assert_eq!(
        sessions.len(),
        2,
        "the connection after the restart is intercepted: {sessions:#?}\n{}",
        gw.log()
    );
    assert!(
        sessions
            .iter()
            .all(|s| s["pid"] != Value::Null && s["target"] == "web")
    );

    script.release(3);
    script.wait_phase(3);
    let (status, stderr) = script.finish();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("the gateway stopped while `bash` ran"),
        "wrap says what happened: {stderr}"
    );
    assert_eq!(gw.wait_sessions_ended(3).len(), 3);

    // The record says it too, and verifies.
    let verify = gw.cli(&["verify", "--json"]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let verdicts: Value = serde_json::from_slice(&verify.stdout).unwrap();
    let restart = verdicts["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| {
            v["session_id"]
                .as_str()
                .filter(|id| id.starts_with("gateway-start-"))
        })
        .expect("a gateway-start record");
    let replay = gw.cli(&["replay", restart]).output().unwrap();
    let shown = String::from_utf8_lossy(&replay.stdout);
    assert!(
        shown
            .contains("1 workloads intercepted again; their sessions open at the restart were cut"),
        "{shown}"
    );
}

#[test]
fn a_gateway_restarted_after_sigkill_intercepts_wrapped_processes_again() {
    restarted_gateway_intercepts_wrapped_processes_again(Gateway::kill9);
}

#[test]
fn a_gateway_restarted_after_sigterm_intercepts_wrapped_processes_again() {
    restarted_gateway_intercepts_wrapped_processes_again(Gateway::stop);
}

#[test]
fn fail_closed_refuses_targets_until_the_gateway_is_back() {
    let server = HttpServer::start(SocketAddr::from(([127, 0, 0, 1], free_port())));
    let mut gw = Gateway::start(
        &[Target {
            name: "web",
            address: server.addr,
        }],
        "fail_mode: closed\n",
    );
    let bpffs = fs::read_to_string(&gw.config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("bpffs_dir: ").map(str::to_owned))
        .unwrap();
    let script = Script::start(&gw, server.addr);
    assert!(ok(&script.wait_phase(1)));

    gw.kill9();
    assert!(
        Path::new(&bpffs).join("links/connect4").exists(),
        "links stay pinned"
    );
    script.release(2);
    let second = script.wait_phase(2);
    assert_eq!(
        second["kind"], "ConnectionRefused",
        "fail closed: refused while down: {second}"
    );
    assert!(
        second["elapsed_ms"].as_u64().unwrap() < 1000,
        "refused at once: {second}"
    );

    // The gateway comes back, takes over the pinned maps, and serves the same workload.
    gw.launch();
    script.release(3);
    let third = script.wait_phase(3);
    assert!(
        ok(&third),
        "served again once the gateway is back: {third}\n{}",
        gw.log()
    );
    assert_eq!(third["peer"], server.addr.to_string());
    let sessions = gw.wait_sessions_ended(2);
    assert_eq!(sessions.len(), 2);
    assert!(
        sessions
            .iter()
            .any(|s| s["pid"] == third["pid"] && s["outcome"] == "closed")
    );
    assert!(script.finish().0.success());

    // A clean stop keeps closed mode closed; `interlock detach` is the explicit way out.
    gw.stop();
    assert!(Path::new(&bpffs).join("links/connect4").exists());
    gw.detach();
    assert!(!Path::new(&bpffs).exists(), "detach removes every pin");
}

#[test]
fn sigterm_drains_open_sessions_then_cuts_them_at_the_drain_timeout() {
    let echo = EchoServer::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut gw = Gateway::start(
        &[Target {
            name: "echo",
            address: echo.addr,
        }],
        "drain_timeout: 3s\n",
    );
    let probe = probe_bin();
    let addr = echo.addr.to_string();
    // One session that ends within the drain window, one that outlives it.
    let hold = |millis: &str| {
        gw.wrap_cmd(None, &[probe.to_str().unwrap(), "hold", &addr, millis])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (short, long) = (hold("1000"), hold("8000"));
    let (short, long) = (Proc(short), Proc(long));
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.sessions().len() < 2 {
        assert!(Instant::now() < deadline, "sessions did not start");
        thread::sleep(Duration::from_millis(50));
    }
    let stopping = Instant::now();
    gw.stop();
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(6),
        "{took:?}"
    );
    drop((short, long));

    let sessions = gw.sessions();
    let outcomes: Vec<&str> = sessions
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.contains(&"closed"),
        "the short session drained: {outcomes:?}"
    );
    assert!(
        outcomes.contains(&"shutdown"),
        "the long one was cut and says so: {outcomes:?}"
    );
    let drained = sessions.iter().find(|s| s["outcome"] == "closed").unwrap();
    assert_eq!(
        (drained["bytes_up"].as_u64(), drained["bytes_down"].as_u64()),
        (Some(2), Some(2))
    );
    let log = gw.log();
    assert!(
        log.contains("draining") && log.contains("gateway stopped"),
        "{log}"
    );
}

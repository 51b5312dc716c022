//! One wrapped workload cannot exhaust the gateway: session caps per workload, and timeouts
//! for a client that never finishes its request, an upstream that never answers and a
//! session that goes quiet. Each ends with a record that says why.
use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use interlock_e2e::*;

/// Opens N connections to ADDR, sends a line on each and reads its echo; prints how many were
/// echoed, then holds them until FILE exists.
const HOLDER: &str = r#"
import os, socket, sys, time
addr, n, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host, port = addr.rsplit(":", 1)
echoed, socks = 0, []
for _ in range(n):
    s = socket.create_connection((host, int(port)), timeout=10)
    socks.append(s)
for s in socks:
    try:
        s.sendall(b"ping\n")
        if s.recv(16) == b"ping\n":
            echoed += 1
    except OSError:
        pass
print(echoed, flush=True)
while not os.path.exists(done):
    time.sleep(0.05)
"#;

/// Sends PAYLOAD to ADDR, then waits until the gateway closes the connection; prints what came
/// back and whether it was closed.
const WAITER: &str = r#"
import socket, sys
addr, payload = sys.argv[1], sys.argv[2].encode().decode("unicode_escape").encode()
host, port = addr.rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=30)
s.sendall(payload)
got = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except OSError:
    pass
print(got.decode(errors="replace"))
"#;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn ended_with(gw: &Gateway, outcome: &str, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let matching: Vec<_> = gw
            .sessions()
            .into_iter()
            .filter(|s| s["outcome"] == outcome)
            .collect();
        if matching.len() >= count || Instant::now() > deadline {
            return matching;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_workload_at_its_session_cap_is_refused_while_others_are_served() {
    let echo = EchoServer::start(loopback(0));
    let gw = Gateway::start(
        &[Target {
            name: "echo",
            address: echo.addr,
        }],
        "limits:\n  max_sessions_per_workload: 3\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let mut greedy = gw
        .wrap_cmd(
            None,
            &[
                "python3",
                "-c",
                HOLDER,
                &echo.addr.to_string(),
                "5",
                done.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(greedy.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "3", "three of five sessions are served");

    // Another workload, while the first holds its three: served.
    let other = gw.wrap(&["python3", "-c", HOLDER, &echo.addr.to_string(), "2", "/"]);
    assert_eq!(String::from_utf8_lossy(&other.stdout).trim(), "2");

    std::fs::write(&done, "").unwrap();
    assert!(greedy.wait().unwrap().success());
    assert_eq!(
        gw.metric("interlock_sessions_refused_at_limit_total{limit=\"workload\"}"),
        Some(2.0)
    );
    let refused = ended_with(&gw, "refused", 2);
    assert_eq!(refused.len(), 2, "each refusal is recorded");
    for session in &refused {
        assert_eq!(session["process"], "python3");
    }
    let ended = gw.wait_sessions_ended(7);
    assert_eq!(
        ended.iter().filter(|s| s["outcome"] == "closed").count(),
        5,
        "{ended:#?}"
    );
}

#[test]
fn a_request_head_never_finished_and_an_upstream_that_never_answers_time_out() {
    // Accepts and reads, never answers.
    let port = free_port();
    let _silent = Proc(
        Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('127.0.0.1',int(sys.argv[1])));s.listen(64);held=[]\nwhile True: held.append(s.accept())",
                &port.to_string(),
            ])
            .spawn()
            .unwrap(),
    );
    wait_listening(loopback(port));
    let gw = Gateway::start_with_protocol(
        &[Target {
            name: "silent",
            address: loopback(port),
        }],
        "http\n    header_read_timeout: 1s\n    upstream_response_timeout: 1s",
        "",
    );
    let addr = loopback(port).to_string();
    let partial = gw.wrap(&[
        "python3",
        "-c",
        WAITER,
        &addr,
        "GET / HTTP/1.1\\r\\nHost: x\\r\\n",
    ]);
    assert!(partial.status.success());
    let answered = gw.wrap(&[
        "python3",
        "-c",
        WAITER,
        &addr,
        "GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n",
    ]);
    let answer = String::from_utf8_lossy(&answered.stdout);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        answer.contains("sent no response within upstream_response_timeout (1s)"),
        "{answer}"
    );

    let timed_out = ended_with(&gw, "timeout", 1);
    assert_eq!(timed_out.len(), 1, "{:#?}", gw.sessions());
    let id = timed_out[0]["id"].as_str().unwrap();
    let records = gw.cli(&["replay", id, "--json"]).output().unwrap();
    let records = String::from_utf8_lossy(&records.stdout);
    assert!(
        records.contains("no complete request head within header_read_timeout (1s)"),
        "{records}"
    );
}

#[test]
fn a_quiet_tcp_session_is_closed_at_its_idle_timeout() {
    let echo = EchoServer::start(loopback(0));
    let gw = Gateway::start_with_protocol(
        &[Target {
            name: "echo",
            address: echo.addr,
        }],
        "tcp\n    idle_timeout: 1s",
        "",
    );
    let out = gw.wrap(&["python3", "-c", WAITER, &echo.addr.to_string(), "hi\\n"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hi",
        "echoed, then closed"
    );
    let ended = ended_with(&gw, "timeout", 1);
    assert_eq!(ended.len(), 1, "{:#?}", gw.sessions());
    let id = ended[0]["id"].as_str().unwrap();
    let records = gw.cli(&["replay", id, "--json"]).output().unwrap();
    assert!(String::from_utf8_lossy(&records.stdout).contains("idle for 1s"));
}

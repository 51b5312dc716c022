//! Test client run inside wrapped cgroups. It reports what the workload itself observes:
//! its pid, cgroup, the peer `getpeername` returns, and whether the exchange worked.
//!
//! probe http ADDR               one HTTP/1.0 GET /index.html; prints one JSON line
//! probe storm ADDR N PARALLEL   N echo round trips over fresh connections
//! probe reset ADDR N            N connections that the far side is expected to reset
//! probe hold ADDR MILLIS        one echo exchange spread over MILLIS (a long-lived session)
//! probe chatty ADDR N ROUNDS PARALLEL   N sessions of ROUNDS echo round trips each
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let addr: SocketAddr = match arg(1).parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("usage: probe http|storm|reset ADDR ...");
            return ExitCode::from(2);
        }
    };
    let number = |i: usize| arg(i).parse::<usize>().unwrap_or(1);
    match arg(0) {
        "http" => http(addr),
        "storm" => storm(addr, number(2), number(3)),
        "reset" => resets(addr, number(2)),
        "hold" => hold(addr, Duration::from_millis(number(2) as u64)),
        "chatty" => chatty(addr, number(2), number(3), number(4)),
        other => {
            eprintln!("unknown probe mode {other:?}");
            ExitCode::from(2)
        }
    }
}

fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_string()
}

/// The id eBPF sees for this process's cgroup (the inode of its directory), when the
/// cgroup2 filesystem is visible.
fn own_cgroup_id() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = interlock_e2e::cgroup2_mount()?.join(own_cgroup().trim_start_matches('/'));
    std::fs::metadata(path).map(|m| m.ino()).ok()
}

fn http(addr: SocketAddr) -> ExitCode {
    let started = Instant::now();
    let result = (|| -> std::io::Result<(String, String, String)> {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let peer = stream.peer_addr()?.to_string();
        let local = stream.local_addr()?.to_string();
        stream.write_all(b"GET /index.html HTTP/1.0\r\nHost: probe\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok((peer, local, response))
    })();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let (line, ok) = match result {
        Ok((peer, local, response)) => {
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            let status = head.lines().next().unwrap_or_default();
            let line = json!({
                "pid": std::process::id(), "cgroup": own_cgroup(), "cgroup_id": own_cgroup_id(),
                "peer": peer,
                "local": local, "status": status, "body": body, "elapsed_ms": elapsed_ms,
            });
            (line, true)
        }
        Err(e) => {
            let line = json!({
                "pid": std::process::id(), "cgroup": own_cgroup(), "error": e.to_string(),
                "kind": format!("{:?}", e.kind()), "elapsed_ms": elapsed_ms,
            });
            (line, false)
        }
    };
    println!("{line}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn storm(addr: SocketAddr, total: usize, parallel: usize) -> ExitCode {
    let next = AtomicUsize::new(0);
    let ok = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    match echo_once(addr) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    });
    let (ok, failed) = (ok.into_inner(), failed.into_inner());
    println!("{}", json!({ "ok": ok, "failed": failed }));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn echo_once(addr: SocketAddr) -> std::io::Result<()> {
    echo_rounds(addr, 1)
}

/// One connection, `rounds` request/response pairs: 2 data records each when intercepted.
fn echo_rounds(addr: SocketAddr, rounds: usize) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_nodelay(true)?;
    let message = b"interlock-echo-0123456789";
    let mut back = [0u8; 25];
    for _ in 0..rounds {
        stream.write_all(message)?;
        stream.read_exact(&mut back)?;
        if &back != message {
            return Err(std::io::Error::other("echo mismatch"));
        }
    }
    Ok(())
}

fn chatty(addr: SocketAddr, sessions: usize, rounds: usize, parallel: usize) -> ExitCode {
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < sessions {
                    if echo_rounds(addr, rounds).is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let failed = failed.into_inner();
    println!("{}", json!({ "ok": sessions - failed, "failed": failed }));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn resets(addr: SocketAddr, total: usize) -> ExitCode {
    let mut reset = 0;
    for _ in 0..total {
        let outcome = TcpStream::connect_timeout(&addr, TIMEOUT).and_then(|mut s| {
            s.set_read_timeout(Some(TIMEOUT))?;
            let _ = s.write_all(b"x");
            let mut buf = [0u8; 1];
            s.read(&mut buf)
        });
        if outcome.is_err() || matches!(outcome, Ok(0)) {
            reset += 1;
        }
    }
    println!("{}", json!({ "failed_as_expected": reset, "total": total }));
    if reset == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn hold(addr: SocketAddr, duration: Duration) -> ExitCode {
    let result = (|| -> std::io::Result<()> {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT + duration))?;
        stream.write_all(b"x")?;
        thread::sleep(duration);
        stream.write_all(b"y")?;
        let mut back = [0u8; 2];
        stream.read_exact(&mut back)?;
        if &back != b"xy" {
            return Err(std::io::Error::other("echo mismatch"));
        }
        Ok(())
    })();
    println!(
        "{}",
        json!({ "ok": result.is_ok(), "error": result.err().map(|e| e.to_string()) })
    );
    ExitCode::SUCCESS
}

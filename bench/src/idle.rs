//! Idle sessions: what 10,000 open, quiet TCP sessions cost a proxy in memory, and whether
//! that memory is given back once they close. nginx (stream proxy) and Interlock (tcp target,
//! recording on) carry the same load from one client; direct has no proxy to weigh. A proxy
//! holds two descriptors a session: where the hard RLIMIT_NOFILE is lower than that allows
//! (and nothing may raise it: no CAP_SYS_RESOURCE), fewer sessions are opened, and said.
use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{BenchGateway, Killed, free_port, run_nginx, start_echo_server};

const WANTED_SESSIONS: usize = 10_000;

/// Raises this process's descriptor limits to `wanted` if it may, else the soft limit to the
/// hard one; returns the soft limit in force.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with valid structs; a refused raise changes nothing.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        for max in [wanted.max(limit.rlim_max), limit.rlim_max] {
            let raised = libc::rlimit {
                rlim_cur: max,
                rlim_max: max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return max;
            }
        }
    }
    limit.rlim_cur
}

/// A request head that never ends: an idle HTTP session waiting for the rest.
const HALF_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: idle\r\n";

/// The client: opens `count` sessions, says `ready`, and holds them until its stdin closes.
/// Each session gets one byte echoed (so it is established end to end), or with
/// `half_request` a request head that never ends.
pub fn client(addr: SocketAddr, count: usize, half_request: bool) -> Result<()> {
    raise_fd_limit(2 * count as u64 + 1024);
    let mut sessions = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream =
            TcpStream::connect(addr).with_context(|| format!("session {i} of {count}"))?;
        if half_request {
            stream.write_all(HALF_REQUEST)?;
        } else {
            stream.write_all(b"x")?;
            let mut echo = [0u8; 1];
            stream.read_exact(&mut echo)?;
        }
        sessions.push(stream);
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    drop(sessions);
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Weighed {
    before_mib: f64,
    open_mib: f64,
    after_mib: f64,
}

/// RSS of a process and its children (nginx's workers), in MiB.
pub(crate) fn rss_mib(pid: u32) -> f64 {
    let kib = |pid: &str| -> f64 {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0.0)
    };
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    (kib(&pid.to_string()) + children.split_whitespace().map(kib).sum::<f64>()) / 1024.0
}

/// Runs the client through a proxy and weighs the proxy before, while the sessions are open,
/// and after they closed.
fn weigh(proxy_pid: u32, mut client: Command) -> Result<Weighed> {
    let before_mib = rss_mib(proxy_pid);
    let mut child = client
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("client stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the idle client did not open its sessions: {line:?}");
    }
    // Let the proxy settle (records written, buffers dropped) before it is weighed.
    thread::sleep(Duration::from_secs(2));
    let open_mib = rss_mib(proxy_pid);
    drop(child.stdin.take());
    child.wait()?;
    // Closed sessions end, and the gateway's housekeeping gives memory back, within this.
    thread::sleep(Duration::from_secs(35));
    Ok(Weighed {
        before_mib,
        open_mib,
        after_mib: rss_mib(proxy_pid),
    })
}

pub fn orchestrate(interlock: &Path) -> Result<()> {
    // nginx's workers inherit it: once they drop root they cannot raise it themselves.
    let fd_limit = raise_fd_limit(8 * WANTED_SESSIONS as u64);
    // Two descriptors a proxied session, and a reserve for the proxy itself.
    let sessions = WANTED_SESSIONS.min((fd_limit as usize).saturating_sub(1_000) / 2);
    if sessions < WANTED_SESSIONS {
        eprintln!(
            "the hard RLIMIT_NOFILE is {fd_limit} and cannot be raised here: {sessions} sessions \
             instead of {WANTED_SESSIONS}"
        );
    }
    let me = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let echo = start_echo_server()?;
    let count = sessions.to_string();

    eprintln!("[1/3] {sessions} idle sessions through nginx (stream proxy)");
    let nginx_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let nginx = start_nginx_for(dir.path(), nginx_addr, echo, sessions, fd_limit)?;
    let mut via_nginx = Command::new(&me);
    via_nginx.args(["idle-client", &nginx_addr.to_string(), &count]);
    let nginx_weight = weigh(nginx.0.id(), via_nginx)?;
    drop(nginx);

    eprintln!("[2/3] {sessions} idle sessions through Interlock (tcp target, recording on)");
    let echo_addr = echo.to_string();
    let weigh_interlock = |protocol: &str, client_args: &[&str]| -> Result<Weighed> {
        let dir = tempfile::tempdir()?;
        let gateway = BenchGateway::start(
            interlock,
            dir.path(),
            &format!(
                "{{ name: echo, address: \"{echo}\", protocol: {protocol}, header_read_timeout: 10m }}"
            ),
            &format!("limits:\n  max_sessions_per_workload: {sessions}\n"),
        )?;
        let mut args = vec!["idle-client", echo_addr.as_str(), count.as_str()];
        args.extend(client_args);
        weigh(gateway.process.0.id(), gateway.wrap(interlock, &me, &args))
    };
    let interlock_weight = weigh_interlock("tcp", &[])?;
    eprintln!(
        "[3/3] {sessions} idle sessions through Interlock (http target, each with a request head \
         that never ends)"
    );
    let http_weight = weigh_interlock("http", &["--half-request"])?;

    println!("\n{sessions} idle TCP sessions: proxy memory (RSS, MiB)");
    println!(
        "{:<34} {:>10} {:>10} {:>14} {:>12}",
        "proxy", "before", "open", "KiB/session", "after close"
    );
    for (name, w) in [
        ("nginx", &nginx_weight),
        ("interlock", &interlock_weight),
        ("interlock http (half-sent heads)", &http_weight),
    ] {
        println!(
            "{name:<34} {:>10.1} {:>10.1} {:>14.1} {:>12.1}",
            w.before_mib,
            w.open_mib,
            (w.open_mib - w.before_mib) * 1024.0 / sessions as f64,
            w.after_mib
        );
    }
    let per = |w: &Weighed| (w.open_mib - w.before_mib) / sessions as f64;
    println!(
        "interlock/nginx, memory per idle session: {:.2}x (tcp), {:.2}x (http, half-sent heads)",
        per(&interlock_weight) / per(&nginx_weight),
        per(&http_weight) / per(&nginx_weight)
    );
    Ok(())
}

/// nginx as a plain stream proxy with room for the idle load (two connections a session).
fn start_nginx_for(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    sessions: usize,
    fd_limit: u64,
) -> Result<Killed> {
    let conf = dir.join("nginx-idle.conf");
    let connections = 2 * sessions + 512;
    fs::write(
        &conf,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             worker_processes 1;\nworker_rlimit_nofile {limit};\npid {dir}/nginx-idle.pid;\n\
             error_log {dir}/nginx-idle-error.log;\n\
             events {{ worker_connections {connections}; }}\n\
             stream {{ server {{ listen {listen}; proxy_pass {upstream}; }} }}\n",
            limit = fd_limit,
            dir = dir.display()
        ),
    )?;
    run_nginx(&conf, listen)
}

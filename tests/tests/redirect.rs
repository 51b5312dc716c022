//! Wrapped clients are redirected through the proxy (connect4/connect6, sock_ops) and see the
//! original peer (getpeername4/getpeername6); everything else is left alone.
use std::net::SocketAddr;

use interlock_e2e::*;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn wrapped_client_goes_through_proxy_and_sees_original_peer() {
    let server = HttpServer::start(loopback(free_port()));
    let gw = Gateway::start(
        &[Target {
            name: "web",
            address: server.addr,
        }],
        "",
    );

    // A real client, unmodified.
    let url = format!("http://{}/index.html", server.addr);
    let out = gw.wrap(&["curl", "-sS", "--max-time", "10", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), INDEX_BODY);

    // The probe reports what the workload itself observes.
    let out = gw.wrap(&[
        probe_bin().to_str().unwrap(),
        "http",
        &server.addr.to_string(),
    ]);
    let probe = probe_json(&out);
    assert_eq!(
        probe["peer"],
        server.addr.to_string(),
        "getpeername shows the original peer"
    );
    assert!(probe["status"].as_str().unwrap().contains("200"), "{probe}");

    let sessions = gw.wait_sessions_ended(2);
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    let curl = sessions
        .iter()
        .find(|s| s["process"] == "curl")
        .expect("curl session");
    assert_eq!(curl["original_dst"], server.addr.to_string());
    assert_eq!(curl["outcome"], "closed");

    let s = sessions
        .iter()
        .find(|s| s["pid"] == probe["pid"])
        .expect("probe session by pid");
    assert_eq!(s["process"], "probe");
    assert_eq!(s["target"], "web");
    assert_eq!(s["original_dst"], server.addr.to_string());
    assert_eq!(
        s["client_addr"], probe["local"],
        "client address is the probe's own socket"
    );
    assert_eq!(s["cgroup"], probe["cgroup"]);
    assert_eq!(
        s["cgroup_id"], probe["cgroup_id"],
        "cgroup id attested by the kernel"
    );
    assert!(s["cgroup_id"].as_u64().unwrap() > 1);
    assert_eq!(s["outcome"], "closed");
    assert_eq!(s["bytes_up"], 41, "GET /index.html HTTP/1.0 + Host header");
    assert!(s["bytes_down"].as_u64().unwrap() > INDEX_BODY.len() as u64);

    // wrap removed its cgroup afterwards.
    let cgroup = cgroup2_mount()
        .unwrap()
        .join(probe["cgroup"].as_str().unwrap().trim_start_matches('/'));
    assert!(!cgroup.exists(), "{} should be gone", cgroup.display());
    assert_eq!(gw.metric("interlock_origin_lookup_misses_total"), Some(0.0));
}

/// A registered cgroup covers the cgroups below it, as a pod's cgroup covers its containers:
/// a process that moves into a child cgroup of its wrap is still intercepted.
#[test]
fn a_process_in_a_cgroup_below_a_registered_one_is_intercepted() {
    let server = HttpServer::start(loopback(free_port()));
    let gw = Gateway::start(
        &[Target {
            name: "web",
            address: server.addr,
        }],
        "",
    );
    let probe = probe_bin();
    let mount = cgroup2_mount().unwrap();
    let script = format!(
        "cg={}$(sed -n 's/^0:://p' /proc/self/cgroup) && mkdir \"$cg/container\" && \
         echo $$ > \"$cg/container/cgroup.procs\" && exec {} http {}",
        mount.display(),
        probe.display(),
        server.addr
    );
    let out = gw.wrap(&["sh", "-c", &script]);
    let probe = probe_json(&out);
    assert!(probe["status"].as_str().unwrap().contains("200"), "{probe}");
    let cgroup = probe["cgroup"].as_str().unwrap();
    assert!(cgroup.ends_with("/container"), "{probe}");

    let sessions = gw.wait_sessions_ended(1);
    let s = &sessions[0];
    assert_eq!(s["process"], "probe");
    assert_eq!(s["cgroup"], probe["cgroup"]);
    assert_eq!(
        s["cgroup_id"], probe["cgroup_id"],
        "the child's own id is recorded"
    );
    assert_eq!(s["original_dst"], server.addr.to_string());
    assert_eq!(s["outcome"], "closed");

    // The wrap cgroup went with the one below it.
    let wrap = mount.join(cgroup.trim_start_matches('/'));
    let wrap = wrap.parent().unwrap();
    assert!(!wrap.exists(), "{} should be gone", wrap.display());
}

#[test]
fn unwrapped_processes_and_non_targets_are_not_redirected() {
    let target = HttpServer::start(loopback(free_port()));
    let other = HttpServer::start(loopback(free_port()));
    let gw = Gateway::start(
        &[Target {
            name: "web",
            address: target.addr,
        }],
        "",
    );
    let probe = probe_bin();

    // A process outside any wrapped cgroup reaches the target directly.
    let out = std::process::Command::new(&probe)
        .args(["http", &target.addr.to_string()])
        .output()
        .unwrap();
    let direct = probe_json(&out);
    assert!(
        direct["status"].as_str().unwrap().contains("200"),
        "{direct}"
    );

    // A wrapped process dialling a destination that is not a target.
    let out = gw.wrap(&[probe.to_str().unwrap(), "http", &other.addr.to_string()]);
    let non_target = probe_json(&out);
    assert!(
        non_target["status"].as_str().unwrap().contains("200"),
        "{non_target}"
    );
    assert_eq!(non_target["peer"], other.addr.to_string());

    assert!(
        gw.sessions().is_empty(),
        "nothing was intercepted: {:#?}",
        gw.sessions()
    );
    assert_eq!(
        gw.metric("interlock_sessions_started_total{target=\"web\"}"),
        None
    );
}

#[test]
fn ipv6_target_on_loopback() {
    let server = HttpServer::start(format!("[::1]:{}", free_port()).parse().unwrap());
    let gw = Gateway::start(
        &[Target {
            name: "web6",
            address: server.addr,
        }],
        "",
    );
    let out = gw.wrap(&[
        probe_bin().to_str().unwrap(),
        "http",
        &server.addr.to_string(),
    ]);
    let probe = probe_json(&out);
    assert_eq!(
        probe["peer"],
        server.addr.to_string(),
        "getpeername6 shows the original peer"
    );
    assert!(probe["status"].as_str().unwrap().contains("200"), "{probe}");

    let sessions = gw.wait_sessions_ended(1);
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(s["original_dst"], server.addr.to_string());
    assert_eq!(s["client_addr"], probe["local"]);
    assert!(s["client_addr"].as_str().unwrap().starts_with("[::1]:"));
    assert_eq!(s["pid"], probe["pid"]);
    assert_eq!(s["outcome"], "closed");
}

/// A target is a listening service: every destination the kernel delivers to that listener is
/// intercepted, not only the address written in the config. The server is bound to the
/// dual-stack wildcard, so each of these reaches it.
#[test]
fn every_address_that_reaches_a_host_listener_is_intercepted() {
    // A host address that is not loopback: the host side of a veth, there before the gateway.
    let veth = PodNetns::create(41);
    let port = free_port();
    let server = HttpServer::start(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
    let gw = Gateway::start(
        &[Target {
            name: "web",
            address: loopback(port),
        }],
        "",
    );
    let dialled: Vec<String> = [
        "127.0.0.1",
        "127.0.0.2",
        "0.0.0.0",
        "[::1]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:0.0.0.0]",
        "[::ffff:127.0.0.3]",
        veth.host_ip.as_str(),
    ]
    .iter()
    .map(|ip| format!("{ip}:{}", server.addr.port()))
    .collect();
    let mut pids = Vec::new();
    for addr in &dialled {
        let out = gw.wrap(&[probe_bin().to_str().unwrap(), "http", addr]);
        let probe = probe_json(&out);
        assert!(
            probe["status"].as_str().unwrap_or_default().contains("200"),
            "{addr}: {probe}"
        );
        let shown: SocketAddr = probe["peer"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            shown,
            addr.parse().unwrap(),
            "{addr}: the client sees the address it dialled"
        );
        pids.push((addr, probe["pid"].clone()));
    }
    let sessions = gw.wait_sessions_ended(dialled.len());
    for (addr, pid) in pids {
        let session = sessions
            .iter()
            .find(|s| s["pid"] == pid)
            .unwrap_or_else(|| panic!("{addr} was not intercepted: {sessions:#?}"));
        assert_eq!(session["target"], "web", "{addr}");
        assert_eq!(session["outcome"], "closed", "{addr}");
    }
    assert_eq!(gw.metric("interlock_origin_lookup_misses_total"), Some(0.0));
    drop(server);
}

//! A process in another network namespace (a pod stand-in joined by veth) is redirected to
//! the host-side address, and its own loopback is never redirected.
use std::{net::SocketAddr, process::Command};

use interlock_e2e::*;

#[test]
fn pod_netns_client_is_redirected_to_host_side_address() {
    let pod = PodNetns::create(1);
    let server = HttpServer::start(format!("{}:{}", pod.host_ip, free_port()).parse().unwrap());
    let host_loopback = HttpServer::start(SocketAddr::from(([127, 0, 0, 1], free_port())));
    let gw = Gateway::start(
        &[
            Target {
                name: "node-service",
                address: server.addr,
            },
            Target {
                name: "host-loopback",
                address: host_loopback.addr,
            },
        ],
        "",
    );
    let probe = probe_bin();
    let in_pod = |addr: &str| {
        // wrap joins the cgroup first; `ip netns exec` then enters the namespace.
        gw.wrap_cmd(
            Some(&pod.host_ip),
            &[
                "ip",
                "netns",
                "exec",
                &pod.name,
                probe.to_str().unwrap(),
                "http",
                addr,
            ],
        )
        .output()
        .unwrap()
    };

    let seen = probe_json(&in_pod(&server.addr.to_string()));
    assert!(
        seen["status"].as_str().unwrap().contains("200"),
        "{seen}\n{}",
        gw.log()
    );
    assert_eq!(
        seen["peer"],
        server.addr.to_string(),
        "the pod sees the original peer"
    );
    assert!(
        seen["local"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", pod.pod_ip))
    );

    let sessions = gw.wait_sessions_ended(1);
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let s = &sessions[0];
    assert_eq!(s["target"], "node-service");
    assert_eq!(s["original_dst"], server.addr.to_string());
    assert_eq!(
        s["client_addr"], seen["local"],
        "the proxy saw the pod's own address"
    );
    assert_eq!(s["pid"], seen["pid"]);
    assert_eq!(
        s["cgroup"], seen["cgroup"],
        "attributed to the wrapped cgroup"
    );
    assert_eq!(s["outcome"], "closed");

    // The pod's 127.0.0.1 is its own: dialling it must not reach the host's service.
    let lo = probe_json(&in_pod(&host_loopback.addr.to_string()));
    assert_eq!(
        lo["kind"], "ConnectionRefused",
        "pod loopback stays in the pod: {lo}"
    );
    assert_eq!(gw.sessions().len(), 1, "pod loopback was not intercepted");

    // The proxy listens on the host side of the link only because a pod registered it.
    let ss = Command::new("ss").args(["-ltn"]).output().unwrap();
    let listening = String::from_utf8_lossy(&ss.stdout);
    assert!(
        listening.contains(&format!("{}:{}", pod.host_ip, gw.listen_port)),
        "{listening}"
    );
}

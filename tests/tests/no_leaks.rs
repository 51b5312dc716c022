//! Map hygiene under load: 2000 short connections, 64 at a time, plus connects whose upstream
//! refuses, leave SOCK_ORIGINS and FLOWS empty (sock_ops and sock_release clean up).
use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use interlock_e2e::*;

#[test]
fn short_connections_and_failed_connects_leave_maps_empty() {
    let echo = EchoServer::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(
        &[
            Target {
                name: "echo",
                address: echo.addr,
            },
            Target {
                name: "dead",
                address: dead,
            },
        ],
        "",
    );
    let probe = probe_bin();
    let probe = probe.to_str().unwrap();

    let storm = probe_json(&gw.wrap(&[probe, "storm", &echo.addr.to_string(), "2000", "64"]));
    assert_eq!(storm["ok"], 2000, "{storm}\n{}", gw.log());
    let failed = probe_json(&gw.wrap(&[probe, "reset", &dead.to_string(), "50"]));
    assert_eq!(failed["failed_as_expected"], 50, "{failed}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = |map: &str| gw.metric(&format!("interlock_bpf_map_entries{{map=\"{map}\"}}"));
    while Instant::now() < deadline
        && (entries("SOCK_ORIGINS") != Some(0.0) || entries("FLOWS") != Some(0.0))
    {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(entries("SOCK_ORIGINS"), Some(0.0), "cookie entries leaked");
    assert_eq!(entries("FLOWS"), Some(0.0), "source-tuple entries leaked");
    assert_eq!(
        entries("INTERCEPT_CGROUPS"),
        Some(0.0),
        "wrap registrations ended"
    );
    assert_eq!(gw.metric("interlock_origin_lookup_misses_total"), Some(0.0));

    let sessions = gw.wait_sessions_ended(2050);
    let count = |target: &str, outcome: &str| {
        sessions
            .iter()
            .filter(|s| s["target"] == target && s["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("echo", "closed"), 2000);
    assert_eq!(count("dead", "upstream_refused"), 50);
    assert_eq!(sessions.len(), 2050);
}

//! A dead upstream: the client fails fast and the session records why.
use std::net::SocketAddr;

use interlock_e2e::*;

#[test]
fn refused_upstream_fails_fast_and_is_recorded() {
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(
        &[Target {
            name: "dead",
            address: dead,
        }],
        "",
    );
    let out = gw.wrap(&[probe_bin().to_str().unwrap(), "http", &dead.to_string()]);
    assert!(!out.status.success());
    let seen = probe_json(&out);
    assert_eq!(
        seen["kind"], "ConnectionReset",
        "the client is reset, not left hanging: {seen}"
    );
    assert!(seen["elapsed_ms"].as_u64().unwrap() < 1000, "{seen}");

    let sessions = gw.wait_sessions_ended(1);
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["outcome"], "upstream_refused");
    assert_eq!(sessions[0]["bytes_up"], 0, "nothing was forwarded");
    assert!(gw.log().contains("upstream connect failed"));
}

//! The MCP conformance suite (@modelcontextprotocol/conformance, pinned in tests/support)
//! run directly and through Interlock.
use std::{collections::BTreeMap, net::SocketAddr, process::Command};

use interlock_e2e::*;

/// Per-scenario "N passed, M failed" lines of a suite run.
fn results(stdout: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches(['✓', '✗', ' ']);
            let (name, counts) = l.split_once(": ")?;
            counts
                .contains("passed")
                .then(|| (name.to_string(), counts.to_string()))
        })
        .collect()
}

#[test]
fn server_suite_results_are_identical_directly_and_through_interlock() {
    let server = McpServer::everything("streamableHttp");
    let gw = Gateway::start_with_protocol(
        &[Target {
            name: "mcp",
            address: server.addr,
        }],
        "mcp",
        "",
    );
    let baseline = support_dir().join("conformance-baseline.yml");
    let args = |cmd: &mut Command| {
        cmd.args(["server", "--url", &server.url(), "--expected-failures"])
            .arg(&baseline)
            .env("PATH", node22_path());
    };
    let mut direct = Command::new("conformance");
    args(&mut direct);
    let direct = direct.output().unwrap();
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stdout)
    );

    let mut through = gw.wrap_cmd(None, &["conformance"]);
    args(&mut through);
    let through = through.output().unwrap();
    assert!(
        through.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&through.stdout),
        gw.log()
    );

    let (direct, through) = (results(&direct.stdout), results(&through.stdout));
    assert!(direct.len() >= 30, "{direct:#?}");
    assert_eq!(
        direct, through,
        "every scenario behaves the same through Interlock"
    );
    assert!(
        gw.sessions().len() >= 30,
        "the suite really went through the proxy"
    );
}

#[test]
fn client_scenarios_pass_through_interlock() {
    // The suite's fixture servers listen on random ports: intercept every port of this host
    // (127.0.0.1:* takes in ::1 and the other loopback forms too).
    let gw = Gateway::start_with_protocol(
        &[Target {
            name: "fixture",
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
        }],
        "mcp",
        "",
    );
    let client = format!(
        "python3 {}",
        support_dir().join("conformance_client.py").display()
    );
    for scenario in ["initialize", "tools_call"] {
        let out = gw
            .wrap_cmd(
                None,
                &[
                    "conformance",
                    "client",
                    "--command",
                    &client,
                    "--scenario",
                    scenario,
                ],
            )
            .env("PATH", node22_path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{scenario}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            gw.log()
        );
    }
    let records = gw.all_records();
    let calls: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "mcp_message" && r["tool"] == "add_numbers")
        .collect();
    assert!(
        calls.iter().any(
            |c| c["direction"] == "up" && c["arguments"] == serde_json::json!({"a": 2, "b": 3})
        ),
        "{calls:#?}"
    );
}

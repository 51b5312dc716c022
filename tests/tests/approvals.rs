//! Approval holds end to end: the official Python MCP client through the eBPF redirect, a
//! journalling Python SDK server that proves what reached it, a local OIDC issuer for the
//! approvers, and the `interlock approvals` CLI.
use std::{fs, process::Command, thread, time::Duration};

use base64::Engine;
use interlock_e2e::{Gateway, McpServer, OidcIssuer, Target, hold_client_outcomes, require_root};
use serde_json::{Value, json};

const POLICY: &str = "policy:\n  default: allow\n  rules:\n\
    \x20   - name: deletes-need-a-human\n      match: { tool: \"delete_*\" }\n      action: hold\n      reason: deletes are irreversible\n\
    \x20   - name: quick-reads\n      match: { tool: read_file }\n      action: hold\n      timeout: 2s\n";

struct Setup {
    issuer: OidcIssuer,
    server: McpServer,
    journal: std::path::PathBuf,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

/// A gateway whose approvers are the `sre` group at a local issuer. New holds are announced
/// to the issuer's webhook receiver, or to a port nobody listens on.
fn setup(dead_webhook: bool) -> Setup {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let server = McpServer::python_journal(&journal);
    let issuer = OidcIssuer::start();
    let webhook = if dead_webhook {
        format!("http://127.0.0.1:{}/hook", interlock_e2e::free_port())
    } else {
        format!("{}/webhook", issuer.url())
    };
    let approvals = format!(
        "approvals:\n  keepalive: 500ms\n  oidc:\n    issuer: {}\n    audience: interlock\n    allowed_groups: [sre]\n  webhook:\n    url: {webhook}\n",
        issuer.url()
    );
    let gw = Gateway::start_with_protocol(
        &[Target {
            name: "journal",
            address: server.addr,
        }],
        "mcp",
        &format!("{approvals}{POLICY}"),
    );
    Setup {
        issuer,
        server,
        journal,
        gw,
        _dir: dir,
    }
}

impl Setup {
    fn token(&self, who: &str, groups: &[&str]) -> String {
        self.issuer.mint(json!({
            "sub": who, "email": format!("{who}@example.com"), "groups": groups
        }))
    }

    fn executed(&self) -> String {
        fs::read_to_string(&self.journal).unwrap_or_default()
    }
}

fn call(tool: &str, path: &str) -> Value {
    json!([{ "tool": tool, "args": { "path": path } }])
}

/// `interlock approvals approve|deny ID --reason REASON`, which must succeed.
fn decide(gw: &Gateway, token: &str, verb: &str, id: &str, reason: &str) {
    let out = gw.approvals_cli(token, &[verb, id, "--reason", reason]);
    assert!(
        out.status.success(),
        "{verb} {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn records_of_type(gw: &Gateway, kind: &str) -> Vec<Value> {
    gw.all_records()
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect()
}

#[test]
fn approve_deny_and_timeout_as_the_python_client_sees_them() {
    let s = setup(false);
    let bob = s.token("bob", &["sre"]);
    let alice = s.token("alice", &["dev"]);
    let url = s.server.url();

    // Approve: the server sees the call only after the decision.
    let client =
        s.gw.spawn_hold_client(&url, &call("delete_file", "/tmp/approve-me"), Some(&alice));
    let holds = s.gw.wait_holds(&bob, 1);
    let hold = &holds[0];
    assert_eq!(hold["tool"], "delete_file");
    assert_eq!(hold["method"], "tools/call");
    assert_eq!(hold["rule"], "deletes-need-a-human");
    assert_eq!(hold["process"], "python3");
    assert!(hold["pid"].as_u64().unwrap() > 0);
    assert_eq!(hold["arguments"]["path"], "/tmp/approve-me");
    assert_eq!(hold["requester"]["subject"], "alice");
    // Long enough for several keep-alives; the held call has not reached the server.
    thread::sleep(Duration::from_millis(1500));
    assert!(!s.executed().contains("approve-me"), "{}", s.executed());
    let id = hold["hold_id"].as_str().unwrap();
    let listed = s.gw.approvals_cli(&bob, &["list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(id));
    decide(&s.gw, &bob, "approve", id, "cleanup ticket 42");
    let outcomes = hold_client_outcomes(client);
    assert_eq!(
        outcomes[0]["result"], "deleted /tmp/approve-me",
        "{outcomes:?}"
    );
    assert!(s.executed().contains("approve-me"));

    // Deny: the client gets a JSON-RPC error with the reason; the server never sees it.
    let client =
        s.gw.spawn_hold_client(&url, &call("delete_file", "/tmp/deny-me"), Some(&alice));
    let id = s.gw.wait_holds(&bob, 1)[0]["hold_id"]
        .as_str()
        .unwrap()
        .to_string();
    decide(&s.gw, &bob, "deny", &id, "not on a Friday");
    let outcomes = hold_client_outcomes(client);
    let error = outcomes[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("denied by bob@example.com: not on a Friday"),
        "{outcomes:?}"
    );

    // Timeout (the rule's 2 s): denied, and the server never sees it.
    let client =
        s.gw.spawn_hold_client(&url, &call("read_file", "/tmp/too-slow"), None);
    let outcomes = hold_client_outcomes(client);
    let error = outcomes[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("nobody decided within 2s"), "{outcomes:?}");
    let executed = s.executed();
    assert!(
        !executed.contains("deny-me") && !executed.contains("too-slow"),
        "{executed}"
    );
    assert!(s.gw.pending_holds(&bob).is_empty());

    // Each hold's creation and decision are in the sessions' chained records.
    let created = records_of_type(&s.gw, "hold_created");
    assert_eq!(created.len(), 3, "{created:?}");
    let decided = records_of_type(&s.gw, "hold_decided");
    let mut outcomes: Vec<&str> = decided
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["approved", "denied", "timed_out"]);
    let approved = decided.iter().find(|d| d["outcome"] == "approved").unwrap();
    assert_eq!(approved["approver"]["email"], "bob@example.com");
    assert_eq!(approved["approver"]["groups"], json!(["sre"]));
    assert_eq!(approved["reason"], "cleanup ticket 42");
    let timed_out = decided
        .iter()
        .find(|d| d["outcome"] == "timed_out")
        .unwrap();
    assert!(timed_out["approver"].is_null());
    let keepalives =
        s.gw.all_records()
            .iter()
            .filter_map(|r| r["data"].as_str())
            .map(|d| base64::engine::general_purpose::STANDARD.decode(d).unwrap())
            .filter(|d| d.starts_with(b": held for approval"))
            .count();
    assert!(
        keepalives >= 2,
        "keep-alive comments recorded: {keepalives}"
    );
    let verify = s.gw.cli(&["verify"]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // Each new hold was announced to the webhook, with its details.
    let announced = s.issuer.webhooks();
    assert_eq!(announced.len(), 3, "{announced:?}");
    assert!(
        announced[0]["text"]
            .as_str()
            .unwrap()
            .contains("delete_file")
    );
    assert_eq!(announced[0]["interlock"]["rule"], "deletes-need-a-human");
    assert_eq!(
        s.gw.metric("interlock_holds_decided_total{target=\"journal\",outcome=\"approved\"}"),
        Some(1.0)
    );
}

#[test]
fn every_kind_of_bad_approver_token_is_refused_and_the_hold_stays() {
    // A webhook nobody listens on: its failure must not release anything.
    let s = setup(true);
    let alice = s.token("alice", &["sre"]);
    let bob = s.token("bob", &["sre"]);
    let client = s.gw.spawn_hold_client(
        &s.server.url(),
        &call("delete_file", "/tmp/guarded"),
        Some(&alice),
    );
    let id = s.gw.wait_holds(&bob, 1)[0]["hold_id"]
        .as_str()
        .unwrap()
        .to_string();

    let other_issuer = OidcIssuer::start();
    let refused = [
        (
            "expired",
            s.issuer
                .mint(json!({"sub": "bob", "email": "bob@example.com", "groups": ["sre"], "exp_in": -60})),
            "expired",
        ),
        (
            "wrong audience",
            s.issuer
                .mint(json!({"sub": "bob", "email": "bob@example.com", "groups": ["sre"], "aud": "someone-else"})),
            "wrong audience",
        ),
        (
            "wrong issuer (its own key)",
            other_issuer.mint(json!({"sub": "bob", "email": "bob@example.com", "groups": ["sre"]})),
            "approver token rejected",
        ),
        (
            "wrong issuer claim (trusted key)",
            s.issuer.mint(
                json!({"sub": "bob", "email": "bob@example.com", "groups": ["sre"], "iss": "https://evil.example"}),
            ),
            "wrong issuer",
        ),
        ("wrong group", s.token("carol", &["dev"]), "is not an approver"),
        ("self-approval", alice.clone(), "self-approval refused"),
        ("not a JWT", "garbage".to_string(), "not a JWT"),
    ];
    for (case, token, expected) in &refused {
        let out =
            s.gw.approvals_cli(token, &["approve", &id, "--reason", "let me"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: accepted");
        assert!(stderr.contains(expected), "{case}: {stderr}");
    }
    // Listing needs a valid approver too.
    let out = s.gw.approvals_cli(&s.token("carol", &["dev"]), &["list"]);
    assert!(!out.status.success());
    // No token at all.
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/approvals", s.gw.admin_port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "401");

    // Still pending, nothing reached the server, and the webhook failure was counted.
    assert_eq!(s.gw.pending_holds(&bob).len(), 1);
    assert!(s.executed().is_empty());
    assert_eq!(
        s.gw.metric("interlock_approval_webhook_failures_total"),
        Some(1.0)
    );
    assert_eq!(
        s.gw.metric("interlock_approval_rejections_total{how=\"self_approval\"}"),
        Some(1.0)
    );
    decide(&s.gw, &bob, "deny", &id, "tokens were bad");
    let outcomes = hold_client_outcomes(client);
    assert!(
        outcomes[0]["error"]
            .as_str()
            .unwrap()
            .contains("tokens were bad")
    );
}

#[test]
fn a_hundred_concurrent_holds_decided_in_random_order() {
    let s = setup(false);
    let bob = s.token("bob", &["sre"]);
    let calls: Vec<Value> = (0..100)
        .map(|i| json!({ "tool": "delete_file", "args": { "path": format!("/tmp/many-{i}") } }))
        .collect();
    let client =
        s.gw.spawn_hold_client(&s.server.url(), &Value::Array(calls), None);
    let mut holds = s.gw.wait_holds(&bob, 100);
    assert_eq!(holds.len(), 100);
    // A fixed-seed shuffle: random order, reproducible failures.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..holds.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        holds.swap(i, (seed >> 33) as usize % (i + 1));
    }
    for hold in &holds {
        let path = hold["arguments"]["path"].as_str().unwrap();
        let n: u32 = path.trim_start_matches("/tmp/many-").parse().unwrap();
        let verb = if n.is_multiple_of(2) {
            "approve"
        } else {
            "deny"
        };
        let id = hold["hold_id"].as_str().unwrap();
        decide(&s.gw, &bob, verb, id, &format!("{verb} {n}"));
    }
    let outcomes = hold_client_outcomes(client);
    assert_eq!(outcomes.len(), 100);
    for outcome in &outcomes {
        let path = outcome["args"]["path"].as_str().unwrap();
        let n: u32 = path.trim_start_matches("/tmp/many-").parse().unwrap();
        if n.is_multiple_of(2) {
            assert_eq!(outcome["result"], format!("deleted {path}"), "{outcome}");
        } else {
            let error = outcome["error"].as_str().unwrap_or_default();
            assert!(error.contains(&format!("deny {n}")), "{outcome}");
        }
    }
    let executed = s.executed();
    for n in 0..100u32 {
        let seen = executed.contains(&format!("\"/tmp/many-{n}\""));
        assert_eq!(seen, n.is_multiple_of(2), "call {n}: {executed}");
    }
    let decided = records_of_type(&s.gw, "hold_decided");
    assert_eq!(decided.len(), 100);
}

#[test]
fn stopping_the_gateway_denies_held_requests_and_records_them() {
    let mut s = setup(false);
    let bob = s.token("bob", &["sre"]);
    // One SSE client (the SDK) and one JSON-only client (curl).
    let sdk = s.gw.spawn_hold_client(
        &s.server.url(),
        &call("delete_file", "/tmp/at-shutdown"),
        None,
    );
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "delete_file", "arguments": {"path": "/tmp/json-client"}}})
    .to_string();
    let curl =
        s.gw.wrap_cmd(
            None,
            &[
                "curl",
                "-s",
                "--max-time",
                "30",
                "-H",
                "content-type: application/json",
                "-H",
                "accept: application/json",
                "-H",
                "mcp-protocol-version: 2025-06-18",
                "--data",
                &body,
                &s.server.url(),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    s.gw.wait_holds(&bob, 2);
    let started = std::time::Instant::now();
    s.gw.stop();
    assert!(started.elapsed() < Duration::from_secs(15), "stop hung");

    let outcomes = hold_client_outcomes(sdk);
    let error = outcomes[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("gateway is shutting down"), "{outcomes:?}");
    let curl = curl.wait_with_output().unwrap();
    let answer: Value = serde_json::from_slice(&curl.stdout).unwrap_or(Value::Null);
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gateway is shutting down")),
        "{}",
        String::from_utf8_lossy(&curl.stdout)
    );
    assert!(s.executed().is_empty());

    let decided = records_of_type(&s.gw, "hold_decided");
    assert_eq!(decided.len(), 2, "{decided:?}");
    assert!(decided.iter().all(|d| d["outcome"] == "interrupted"));
    let verify = s.gw.cli(&["verify"]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn a_held_call_on_the_legacy_sse_transport_is_answered_on_its_get_stream() {
    require_root();
    let issuer = OidcIssuer::start();
    let server = McpServer::everything("sse");
    let config = format!(
        "approvals:\n  oidc:\n    issuer: {}\n    audience: interlock\n    allowed_groups: [sre]\n\
         policy:\n  rules:\n    - name: sums-wait\n      match: {{ tool: get-sum }}\n      action: hold\n      timeout: 1s\n",
        issuer.url()
    );
    let gw = Gateway::start_with_protocol(
        &[Target {
            name: "everything",
            address: server.addr,
        }],
        "mcp",
        &config,
    );
    let seen = gw.mcp_client(&format!("http://{}/sse", server.addr), "deny");
    assert!(
        seen["echo"].as_str().unwrap().contains("hello interlock"),
        "{seen}"
    );
    let error = seen["denied"].as_str().unwrap_or_default();
    assert!(error.contains("nobody decided within 1s"), "{seen}");
}

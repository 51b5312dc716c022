//! MCP through the eBPF redirect, against independent implementations: the reference
//! server-everything, the official Python SDK as client and as a stateless server.
use std::{fs, process::Command};

use interlock_e2e::*;
use serde_json::Value;

fn mcp_target(server: &McpServer) -> [Target<'static>; 1] {
    [Target {
        name: "mcp",
        address: server.addr,
    }]
}

fn messages(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "mcp_message")
        .collect()
}

#[test]
fn server_everything_streamable_http_through_interlock_records_every_message() {
    let server = McpServer::everything("streamableHttp");
    let gw = Gateway::start_with_protocol(&mcp_target(&server), "mcp", "");
    let seen = gw.mcp_client(&server.url(), "full");
    assert_eq!(seen["echo"], "Echo: hello interlock");
    assert_eq!(seen["sum"], "The sum of 2 and 40 is 42.");
    assert_eq!(
        seen["progress"],
        serde_json::json!([1.0, 2.0, 3.0, 4.0]),
        "progress arrives through the proxy"
    );
    assert!(
        seen["sampling"]
            .as_str()
            .unwrap()
            .contains("sampled by the test client"),
        "{seen}"
    );

    let records = gw.all_records();
    let msgs = messages(&records);
    let find = |pred: &dyn Fn(&Value) -> bool| msgs.iter().filter(|m| pred(m)).count();
    assert!(find(&|m| m["method"] == "initialize" && m["direction"] == "up") >= 1);
    assert!(find(&|m| m["method"] == "tools/list" && m["message_kind"] == "request") >= 1);
    assert_eq!(
        find(&|m| m["tool"] == "echo" && m["arguments"]["message"] == "hello interlock"),
        1
    );
    assert_eq!(
        find(&|m| m["tool"] == "get-sum" && m["arguments"] == serde_json::json!({"a": 2, "b": 40})),
        1
    );
    assert!(find(&|m| m["method"] == "notifications/progress" && m["transport"] == "sse") >= 4);
    assert_eq!(
        find(&|m| m["method"] == "sampling/createMessage" && m["direction"] == "down"),
        1,
        "server-to-client request"
    );
    assert!(
        find(&|m| m["direction"] == "up" && m["message_kind"] == "response") >= 1,
        "the client's sampling answer"
    );
    assert!(
        msgs.iter()
            .filter(|m| m["method"] == "tools/call")
            .all(|m| m["mcp_session_id"].is_string()),
        "calls carry the MCP session id"
    );
    // Each request is answered: ids correlate per (session, direction), and 0 is a valid id.
    let echo_id = msgs.iter().find(|m| m["tool"] == "echo").unwrap()["jsonrpc_id"].clone();
    assert!(msgs.iter().any(|m| m["direction"] == "down"
        && m["jsonrpc_id"] == echo_id
        && m["result"].is_object()));
    assert!(
        gw.sessions().iter().all(|s| s["outcome"] == "closed"),
        "{:#?}",
        gw.sessions()
    );

    // The conversation read back, from its first message (`initialize` has no session id
    // yet), numbered once across its connections.
    let mcp_session = msgs
        .iter()
        .find_map(|m| m["mcp_session_id"].as_str())
        .unwrap();
    let out = gw.cli(&["replay", "--mcp", mcp_session]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    let first = shown
        .lines()
        .find(|l| l.starts_with("#1 "))
        .unwrap_or_default();
    assert!(
        first.contains("MCP client -> server  request") && first.ends_with("initialize"),
        "{shown}"
    );
    let numbers: Vec<usize> = shown
        .lines()
        .filter_map(|l| l.strip_prefix('#')?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(numbers, (1..=numbers.len()).collect::<Vec<_>>(), "{shown}");
}

#[test]
fn deny_rules_answer_json_rpc_errors_and_nothing_reaches_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let server = McpServer::python_journal(&journal);
    let policy = "policy:\n  default: allow\n  rules:\n    - name: no-deletes\n      match: { method: tools/call, tool: \"delete_*\" }\n      action: deny\n      reason: deletes are not allowed here\n    - name: no-etc\n      match: { tool: read_file, args: { path: \"/etc/*\" } }\n      action: deny\n      reason: nothing under /etc\n";
    let gw = Gateway::start_with_protocol(&mcp_target(&server), "mcp", policy);
    let seen = gw.mcp_client(&server.url(), "journal");
    let calls = seen["calls"].as_array().unwrap();
    assert_eq!(calls[0]["result"], "echo: hi");
    assert!(
        calls[1]["error"]
            .as_str()
            .unwrap()
            .contains("denied by Interlock policy rule `no-deletes`: deletes are not allowed here"),
        "{seen}"
    );
    assert!(
        calls[2]["error"]
            .as_str()
            .unwrap()
            .contains("rule `no-etc`"),
        "{seen}"
    );
    assert_eq!(calls[3]["result"], "contents of /tmp/ok");

    // The server's own journal: the denied calls never reached it.
    let journal = fs::read_to_string(&journal).unwrap();
    let executed: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(executed.len(), 2, "{journal}");
    assert_eq!(executed[0]["tool"], "echo");
    assert_eq!(executed[1]["args"]["path"], "/tmp/ok");

    let records = gw.all_records();
    let msgs = messages(&records);
    let denied = msgs.iter().find(|m| m["tool"] == "delete_file").unwrap();
    assert_eq!(denied["policy"]["action"], "deny");
    assert_eq!(denied["policy"]["rule"], "no-deletes");
    assert!(
        msgs.iter().any(|m| m["method"] == "server/discover"),
        "the 2026-07-28 stateless era passed through"
    );
}

#[test]
fn header_body_mismatch_and_bad_input_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let server = McpServer::python_journal(&journal);
    let gw = Gateway::start_with_protocol(&mcp_target(&server), "mcp", "");
    let curl = |args: &[&str]| -> String {
        let mut cmd = vec!["curl", "-s", "-w", "\\n%{http_code}", "--max-time", "10"];
        cmd.extend_from_slice(args);
        let out = gw.wrap(&cmd);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = server.url();
    let headers = [
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
        "-H",
        "mcp-protocol-version: 2026-07-28",
    ];

    // mcp-method says one thing, the body another.
    let call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_file","arguments":{"path":"/x"}}}"#;
    let mut args = headers.to_vec();
    args.extend(["-H", "mcp-method: tools/list", "--data", call, url.as_str()]);
    let answer = curl(&args);
    assert!(
        answer.contains("mcp-method header says `tools/list` but the body calls `tools/call`"),
        "{answer}"
    );
    assert!(answer.contains("\"id\":7"), "{answer}");

    // Malformed JSON-RPC.
    let mut args = headers.to_vec();
    args.extend(["--data", "{not json", url.as_str()]);
    let answer = curl(&args);
    assert!(
        answer.ends_with("400") && answer.contains("Parse error"),
        "{answer}"
    );

    // Non-HTTP bytes on an mcp target: the connection ends with an error, the gateway lives.
    let out = Command::new("bash")
        .args(["-c", &format!("{} wrap --config {} -- bash -c 'exec 3<>/dev/tcp/{}/{}; printf \"\\x16\\x03\\x01garbage\\r\\n\\r\\n\" >&3; cat <&3'", interlock_bin().display(), gw.config.display(), server.addr.ip(), server.addr.port())])
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    assert!(gw.admin_get("/healthz").is_some(), "the gateway survived");

    let journal = fs::read_to_string(&journal).unwrap_or_default();
    assert!(journal.is_empty(), "nothing reached the server: {journal}");
    let sessions = gw.wait_sessions_ended(3);
    assert!(
        sessions.iter().any(|s| s["outcome"] == "error"),
        "the garbage session is recorded: {sessions:#?}"
    );
}

#[test]
fn oversized_and_truncated_bodies_and_a_dying_upstream_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let server = McpServer::python_journal(&journal);
    // Extra target keys ride along with the protocol.
    let gw =
        Gateway::start_with_protocol(&mcp_target(&server), "mcp\n    max_body_bytes: 1KiB", "");
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"{}"}}}}}}"#,
        "x".repeat(4096)
    );
    let out = gw.wrap(&[
        "curl",
        "-s",
        "-w",
        "\\n%{http_code}",
        "-H",
        "content-type: application/json",
        "--data",
        &big,
        &server.url(),
    ]);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.ends_with("413") && answer.contains("over the 1024-byte limit"),
        "{answer}"
    );

    // A body that ends before its Content-Length.
    let script = format!(
        "exec 3<>/dev/tcp/{}/{}; printf 'POST /mcp HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 100\\r\\n\\r\\n{{\"jsonrpc\"' >&3; exec 3>&-",
        server.addr.ip(),
        server.addr.port()
    );
    let out = gw.wrap(&["bash", "-c", &script]);
    assert!(out.status.success());
    assert!(
        fs::read_to_string(&journal).unwrap_or_default().is_empty(),
        "nothing reached the server"
    );

    // An upstream that dies mid-stream: the client sees an error, the gateway lives on.
    let mut everything = McpServer::everything("streamableHttp");
    let gw2 = Gateway::start_with_protocol(&mcp_target(&everything), "mcp", "");
    let script = dir.path().join("client.sh");
    fs::write(
        &script,
        format!(
            "python3 {} {} long",
            support_client().display(),
            everything.url()
        ),
    )
    .unwrap();
    let client = gw2
        .wrap_cmd(None, &["bash", script.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Cut the upstream once the first progress notification has passed through.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !gw2
        .all_records()
        .iter()
        .any(|r| r["method"] == "notifications/progress")
    {
        assert!(std::time::Instant::now() < deadline, "no progress recorded");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    everything.kill();
    let out = client.wait_with_output().unwrap();
    let seen: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("{}"),
    )
    .unwrap();
    assert!(
        !seen["progress"].as_array().unwrap().is_empty(),
        "progress arrived before the cut: {seen}"
    );
    assert!(!seen["error"].is_null(), "the client is told: {seen}");
    assert!(
        gw2.log().contains("upstream died mid-response"),
        "{}",
        gw2.log()
    );
    for gw in [&gw, &gw2] {
        assert!(gw.admin_get("/healthz").is_some(), "the gateway survived");
        let sessions = gw.wait_sessions_ended(1);
        assert!(!sessions.is_empty());
    }
}

fn support_client() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("support/mcp_client.py")
}

#[test]
fn legacy_http_sse_transport_through_interlock() {
    let server = McpServer::everything("sse");
    let gw = Gateway::start_with_protocol(&mcp_target(&server), "mcp", "");
    let url = format!("http://{}/sse", server.addr);
    let seen = gw.mcp_client(&url, "full");
    assert_eq!(seen["echo"], "Echo: hello interlock");
    assert_eq!(seen["progress"], serde_json::json!([1.0, 2.0, 3.0, 4.0]));
    assert!(
        seen["sampling"]
            .as_str()
            .unwrap()
            .contains("sampled by the test client")
    );

    let records = gw.all_records();
    let msgs = messages(&records);
    // Requests go up as POSTs to the relative endpoint; everything comes back on the GET stream.
    let echo = msgs
        .iter()
        .find(|m| m["tool"] == "echo" && m["direction"] == "up")
        .expect("echo call");
    assert!(msgs.iter().any(|m| m["direction"] == "down"
        && m["transport"] == "sse"
        && m["jsonrpc_id"] == echo["jsonrpc_id"]
        && m["result"].is_object()));
    let posts: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "http_request" && r["method"] == "POST")
        .collect();
    assert!(
        posts.iter().all(|p| p["uri"]
            .as_str()
            .unwrap()
            .starts_with("/message?sessionId=")),
        "{posts:#?}"
    );
}

#[test]
fn mcp_inspector_cli_is_a_second_independent_client() {
    let server = McpServer::everything("streamableHttp");
    let gw = Gateway::start_with_protocol(&mcp_target(&server), "mcp", "");
    let url = server.url();
    let inspector = |args: &[&str]| -> Value {
        let mut cmd = vec!["mcp-inspector", "--cli", url.as_str()];
        cmd.extend_from_slice(args);
        let out = gw
            .wrap_cmd(None, &cmd)
            .env("PATH", node22_path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            gw.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let tools = inspector(&["--method", "tools/list"]);
    assert!(
        tools["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "get-sum")
    );
    let sum = inspector(&[
        "--method",
        "tools/call",
        "--tool-name",
        "get-sum",
        "--tool-arg",
        "a=5",
        "--tool-arg",
        "b=6",
    ]);
    assert_eq!(sum["content"][0]["text"], "The sum of 5 and 6 is 11.");

    let records = gw.all_records();
    let msgs = messages(&records);
    let call = msgs
        .iter()
        .find(|m| m["tool"] == "get-sum")
        .expect("the Inspector's call is recorded");
    assert_eq!(call["arguments"], serde_json::json!({"a": 5, "b": 6}));
    let initialize = msgs.iter().find(|m| m["method"] == "initialize").unwrap();
    assert_eq!(
        initialize["jsonrpc_id"], 0,
        "the TypeScript client uses id 0, which is valid"
    );
}

#[test]
fn policy_reloads_on_sighup_and_an_invalid_edit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let server = McpServer::python_journal(&journal);
    let gw =
        Gateway::start_with_protocol(&mcp_target(&server), "mcp", "policy:\n  default: allow\n");
    let first = gw.mcp_client(&server.url(), "journal");
    assert!(
        first["calls"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["error"].is_null()),
        "{first}"
    );

    // Tighten the policy in place and signal the gateway.
    let config = fs::read_to_string(&gw.config).unwrap().replace(
        "policy:\n  default: allow\n",
        "policy:\n  default: allow\n  rules:\n    - name: risky\n      match: { tool: \"delete_*\" }\n      action: deny\n      reason: deletes need a human\n",
    );
    fs::write(&gw.config, config).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gw.log().contains("policy reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = gw.mcp_client(&server.url(), "journal");
    let delete = &second["calls"][1];
    assert!(
        delete["error"]
            .as_str()
            .unwrap()
            .contains("denied by Interlock policy rule `risky`: deletes need a human"),
        "{second}"
    );
    let executed = fs::read_to_string(&journal).unwrap();
    assert_eq!(
        executed.matches("delete_file").count(),
        1,
        "only the call made before the reload: {executed}"
    );

    // Invalid edits are refused and the policy in force stays: a syntax error, and a hold
    // rule with nobody configured to approve it.
    let valid = fs::read_to_string(&gw.config).unwrap();
    let no_approvers = valid.replace("action: deny", "action: hold");
    for (edit, expected) in [
        ("policy: [not, a, policy]\n", "policy not reloaded"),
        (
            no_approvers.as_str(),
            "approvals.oidc is not configured, so nobody could approve them",
        ),
    ] {
        fs::write(&gw.config, edit).unwrap();
        let _ = Command::new("kill")
            .args(["-HUP", &gw.pid().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !gw.log().contains(expected) {
            assert!(std::time::Instant::now() < deadline, "{}", gw.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    // `wrap` reads the config too: put the valid one back.
    fs::write(&gw.config, &valid).unwrap();
    let third = gw.mcp_client(&server.url(), "journal");
    assert!(
        third["calls"][1]["error"]
            .as_str()
            .unwrap()
            .contains("denied by Interlock policy rule `risky`"),
        "{third}"
    );
}

/// The Python SDK's server (uvicorn: HTTP/1.1, keep-alive) behind a plain `http` target.
fn uvicorn_behind_an_http_target(dir: &std::path::Path) -> (McpServer, Gateway) {
    let server = McpServer::python_journal(&dir.join("journal.jsonl"));
    let gw = Gateway::start_with_protocol(
        &[Target {
            name: "web",
            address: server.addr,
        }],
        "http",
        "",
    );
    (server, gw)
}

#[test]
fn a_request_after_the_upstream_closed_the_idle_connection_goes_out_on_a_new_one() {
    // uvicorn closes keep-alive connections idle for 5 s; the client's connection to the
    // gateway stays open, so its next request must not find a dead upstream.
    let dir = tempfile::tempdir().unwrap();
    let (server, gw) = uvicorn_behind_an_http_target(dir.path());
    let script = format!(
        "import http.client, time\n\
         c = http.client.HTTPConnection('{}', {}, timeout=10)\n\
         for pause in (0, 6.5):\n    time.sleep(pause)\n    c.request('GET', '/nowhere')\n    r = c.getresponse(); r.read(); print(r.status, end=' ')\n",
        server.addr.ip(),
        server.addr.port()
    );
    let out = gw.wrap(&["python3", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "404 404 ",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sessions = gw.wait_sessions_ended(1);
    assert_eq!(sessions.len(), 1, "one client connection: {sessions:#?}");
    let records = gw.all_records();
    let answered: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "http_response" && r["generated_by_gateway"] == false)
        .collect();
    assert_eq!(
        answered.len(),
        2,
        "both answered by the server: {answered:#?}"
    );
}

#[test]
fn http_target_keeps_host_keep_alive_and_expect_continue() {
    // uvicorn (under the Python SDK server) speaks HTTP/1.1 with keep-alive.
    let dir = tempfile::tempdir().unwrap();
    let (server, gw) = uvicorn_behind_an_http_target(dir.path());
    let url = format!("http://{}/nowhere", server.addr);
    // Keep-alive: two requests on one connection, compressed encodings requested.
    let out = gw.wrap(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} ",
        "--compressed",
        &url,
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404 404 ");
    // A body sent after 100-continue arrives whole.
    let body = "x".repeat(2048);
    let out = gw.wrap(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Expect: 100-continue",
        "--data",
        &body,
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    let records = gw.all_records();
    let requests: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "http_request")
        .collect();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    let header = |r: &Value, name: &str| {
        r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].clone())
    };
    assert_eq!(
        header(requests[0], "host"),
        Some(Value::from(server.addr.to_string())),
        "Host as the client sent it"
    );
    assert!(
        header(requests[0], "accept-encoding").is_some(),
        "recorded as sent, stripped upstream"
    );
    let sessions = gw.wait_sessions_ended(2);
    assert_eq!(
        sessions.len(),
        2,
        "keep-alive: the first two requests shared one connection"
    );
    let uploaded: u64 = records
        .iter()
        .filter(|r| r["kind"] == "data" && r["direction"] == "up")
        .map(|r| r["len"].as_u64().unwrap())
        .sum();
    assert_eq!(
        uploaded, 2048,
        "the Expect: 100-continue body was read and recorded"
    );
}

#[test]
fn legacy_sse_denials_arrive_on_the_get_stream() {
    let server = McpServer::everything("sse");
    let policy = "policy:\n  rules:\n    - name: no-sums\n      match: { tool: get-sum }\n      action: deny\n      reason: sums are not allowed here\n";
    let gw = Gateway::start_with_protocol(&mcp_target(&server), "mcp", policy);
    let seen = gw.mcp_client(&format!("http://{}/sse", server.addr), "deny");
    assert_eq!(
        seen["echo"], "Echo: hello interlock",
        "allowed calls still work: {seen}"
    );
    assert!(
        seen["denied"]
            .as_str()
            .unwrap_or_default()
            .contains("denied by Interlock policy rule `no-sums`"),
        "the error came back on the client's own transport: {seen}"
    );
    let records = gw.all_records();
    let injected = messages(&records).into_iter().find(|m| {
        m["direction"] == "down" && m["transport"] == "sse" && m["error"]["code"] == -32001
    });
    assert!(
        injected.is_some(),
        "the injected error is recorded on the stream"
    );
}

/// An answer over max_body_bytes still reaches the client whole, and is recorded as an MCP
/// message: the id and method of the request it answers, `truncated` with the sizes, and
/// `replay --mcp` says what it cannot show. Both answer transports: a JSON body (the Python
/// SDK client asks for one) and an SSE event (curl, accepting both, gets the SDK server's
/// default).
#[test]
fn answers_too_large_to_read_are_recorded_as_truncated() {
    for transport in ["json", "sse"] {
        let dir = tempfile::tempdir().unwrap();
        let server = McpServer::python_journal(&dir.path().join("journal.jsonl"));
        // Masking reads whole SSE events up to max_buffer: past it they stream in pieces,
        // and only max_body_bytes bounds what is read for the record.
        let gw = Gateway::start_with_protocol(
            &mcp_target(&server),
            "mcp\n    max_body_bytes: 16KiB",
            "masking:\n  max_buffer: 32KiB\n",
        );
        if transport == "json" {
            let seen = gw.mcp_client(&server.url(), "big");
            assert_eq!(seen["length"], 100_000, "the client got it whole");
        } else {
            let call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"repeat","arguments":{"text":"x","times":100000}}}"#;
            let out = gw.wrap(&[
                "curl",
                "-sS",
                "-H",
                "content-type: application/json",
                "-H",
                "accept: application/json, text/event-stream",
                "-H",
                "mcp-protocol-version: 2025-06-18",
                "--data",
                call,
                &server.url(),
            ]);
            let answer = String::from_utf8_lossy(&out.stdout);
            assert!(answer.starts_with("event: message"), "{answer:.200}");
            assert!(
                answer.contains(&"x".repeat(100_000)),
                "the client got it whole"
            );
        }
        let records = gw.all_records();
        let messages = messages(&records);
        let call = messages
            .iter()
            .find(|m| m["tool"] == "repeat")
            .unwrap_or_else(|| panic!("{transport}: {messages:#?}"));
        let truncated = messages
            .iter()
            .find(|m| !m["truncated"].is_null())
            .unwrap_or_else(|| panic!("{transport}: no truncated message: {messages:#?}"));
        assert_eq!(truncated["jsonrpc_id"], call["jsonrpc_id"], "{transport}");
        assert_eq!(truncated["method"], "tools/call", "{transport}");
        assert_eq!(truncated["transport"], transport);
        assert_eq!(truncated["truncated"]["limit"], 16 * 1024);
        assert!(truncated["truncated"]["bytes"].as_u64().unwrap() > 100_000);
        let mcp_session = truncated["mcp_session_id"].as_str();
        if let Some(id) = mcp_session {
            let out = gw.cli(&["replay", "--mcp", id]).output().unwrap();
            let shown = String::from_utf8_lossy(&out.stdout);
            assert!(
                shown.contains("over the 16384-byte limit (max_body_bytes), so not read"),
                "{shown}"
            );
        }
    }
}

/// On an http target, `bytes_up` and `bytes_down` are the client's bytes on the wire, heads
/// included, as curl itself counts them.
#[test]
fn http_sessions_count_the_bytes_on_the_wire_heads_included() {
    let server = HttpServer::start(std::net::SocketAddr::from(([127, 0, 0, 1], free_port())));
    let gw = Gateway::start_with_protocol(
        &[Target {
            name: "web",
            address: server.addr,
        }],
        "http",
        "",
    );
    let url = format!("http://{}/index.html", server.addr);
    let out = gw.wrap(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{size_request} %{size_header} %{size_download}",
        &url,
    ]);
    let counted: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    let sessions = gw.wait_sessions_ended(1);
    assert_eq!(sessions[0]["bytes_up"], counted[0], "{sessions:#?}");
    assert_eq!(
        sessions[0]["bytes_down"],
        counted[1] + counted[2],
        "{sessions:#?}"
    );
}

/// One tools/call with `curl` under `interlock wrap`, carrying `token` if given:
/// (HTTP status, body).
fn call_with_token(gw: &Gateway, server: &McpServer, token: Option<&str>) -> (u16, Value) {
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                                  "params": {"name": "echo", "arguments": {"message": "hi"}}});
    let authorization = token.map(|t| format!("authorization: Bearer {t}"));
    let mut command = vec![
        "curl",
        "-s",
        "-w",
        "\n%{http_code}",
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
        "-d",
    ];
    let body = call.to_string();
    command.push(&body);
    if let Some(header) = &authorization {
        command.extend(["-H", header]);
    }
    let url = server.url();
    command.push(&url);
    let out = gw.wrap(&command);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.trim_end().rsplit_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn oauth_bearer_tokens_from_trusted_issuers_are_verified_recorded_and_matched_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let server = McpServer::python_journal(&journal);
    let idp = OidcIssuer::start();
    let untrusted = OidcIssuer::start();
    let config = format!(
        "identity:\n  oidc:\n    - issuer: {}\n      audiences: [\"https://mcp.example\"]\n\
         policy:\n  rules:\n    - name: sre-deletes\n      match: {{ tool: delete_file, group: sre }}\n      action: allow\n\
         \x20   - name: no-deletes\n      match: {{ tool: delete_file }}\n      action: deny\n      reason: only SREs delete\n",
        idp.url()
    );
    let gw = Gateway::start_with_protocol(
        &mcp_target(&server),
        "mcp\n    require_oidc_token: true",
        &config,
    );
    let mint = |issuer: &OidcIssuer, claims: Value| {
        let mut all = serde_json::json!({"aud": "https://mcp.example"});
        all.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        issuer.mint(all)
    };
    // The official client, authorised: the groups claim decides what it may do.
    let client = |token: &str| gw.mcp_client_with_token(&server.url(), "journal", Some(token));
    let alice = client(&mint(
        &idp,
        serde_json::json!({"sub": "alice", "groups": ["dev", "sre"]}),
    ));
    assert_eq!(alice["calls"][1]["tool"], "delete_file");
    assert!(alice["calls"][1]["result"].is_string(), "{alice}");
    let bob = client(&mint(
        &idp,
        serde_json::json!({"sub": "bob", "groups": ["dev"]}),
    ));
    assert!(
        bob["calls"][1]["error"]
            .as_str()
            .unwrap()
            .contains("rule `no-deletes`: only SREs delete"),
        "{bob}"
    );

    // Refused before the server: no token, one from an untrusted issuer, an expired one, a
    // wrong audience.
    let refusals = [
        (None, "requires a bearer token from a trusted OIDC issuer"),
        (
            Some(mint(&untrusted, serde_json::json!({"sub": "eve"}))),
            "a token from none of them",
        ),
        (
            Some(mint(
                &idp,
                serde_json::json!({"sub": "carol", "exp_in": -120}),
            )),
            "the token has expired",
        ),
        (
            Some(mint(
                &idp,
                serde_json::json!({"sub": "dave", "aud": "other"}),
            )),
            "wrong audience",
        ),
    ];
    for (token, expected) in &refusals {
        let (status, body) = call_with_token(&gw, &server, token.as_deref());
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], -32002, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{expected}: {body}");
    }

    // The server's journal: alice's delete ran, bob's did not, no refused call arrived.
    let executed: Vec<Value> = fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tools: Vec<&str> = executed
        .iter()
        .map(|e| e["tool"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        [
            "echo",
            "delete_file",
            "read_file",
            "read_file",
            "echo",
            "read_file",
            "read_file"
        ]
    );

    let checks: Vec<Value> = gw
        .all_records()
        .into_iter()
        .filter(|r| r["kind"] == "token_check")
        .collect();
    let verified = checks
        .iter()
        .find(|c| c["outcome"] == "oidc_verified" && c["principal"]["subject"] == "alice")
        .expect("alice's token recorded as verified");
    assert_eq!(verified["principal"]["issuer"], idp.url());
    assert_eq!(
        verified["principal"]["groups"],
        serde_json::json!(["dev", "sre"])
    );
    let outcomes: Vec<(&str, bool)> = checks
        .iter()
        .filter(|c| !c["allowed"].as_bool().unwrap())
        .map(|c| {
            (
                c["outcome"].as_str().unwrap(),
                c["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("missing", false),
            ("missing", false),
            ("rejected", false),
            ("rejected", false)
        ]
    );
}

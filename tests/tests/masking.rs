//! Secret masking through the eBPF redirect: server-everything runs under `env -i` with fake
//! secrets, the official Python client calls `get-env`, and neither the client nor any byte
//! the gateway stored holds a secret in clear text.

use base64::Engine as _;
use interlock_e2e::*;
use serde_json::Value;

const CARD: &str = "4111 1111 1111 1111";
const AWS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const GITHUB_TOKEN: &str = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";

fn fake_jwt() -> String {
    let part = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJlLW5vdC1jaGVja2Vk",
        part(serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        part(serde_json::json!({"sub": "system:serviceaccount:demo:agent"}))
    )
}

fn server_with_secrets() -> (McpServer, Vec<String>) {
    let jwt = fake_jwt();
    let server = McpServer::everything_with_env(
        "streamableHttp",
        &[
            ("AWS_ACCESS_KEY_ID", AWS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
            ("GITHUB_TOKEN", GITHUB_TOKEN),
            ("SERVICE_JWT", &jwt),
            ("BILLING_CARD", CARD),
        ],
    );
    let secrets = vec![
        AWS_KEY_ID.to_string(),
        AWS_SECRET.to_string(),
        GITHUB_TOKEN.to_string(),
        jwt,
        CARD.to_string(),
    ];
    (server, secrets)
}

fn mcp_target(server: &McpServer) -> [Target<'static>; 1] {
    [Target {
        name: "mcp",
        address: server.addr,
    }]
}

#[test]
fn get_env_secrets_are_masked_for_the_client_and_never_stored() {
    let (server, secrets) = server_with_secrets();
    let gw = Gateway::start_with_protocol(&mcp_target(&server), "mcp", "");
    let seen = gw.mcp_client(&server.url(), "env");
    let env = seen["env"].as_str().unwrap();
    for secret in &secrets {
        assert!(!env.contains(secret.as_str()), "client saw {secret}: {env}");
    }
    for tag in [
        "[MASKED:aws_access_key_id]",
        "[MASKED:aws_secret_access_key]",
        "[MASKED:credit_card]",
        "[MASKED:jwt]",
    ] {
        assert!(env.contains(tag), "{tag} missing in {env}");
    }
    assert!(
        !env.contains(GITHUB_TOKEN) && env.contains("GITHUB_TOKEN"),
        "the variable name stays, its value goes: {env}"
    );
    // The client's own echo of a card number: masked on the way back, and in the record of
    // the request it sent.
    assert_eq!(seen["echo"], "Echo: card [MASKED:credit_card]");

    // Nothing the gateway wrote holds a secret, in any encoding.
    let mut files = Vec::new();
    all_bytes(gw.dir.path(), &mut files);
    assert!(
        files.iter().any(|(name, _)| name.contains("segment")),
        "{files:?}"
    );
    for (name, bytes) in &files {
        for secret in &secrets {
            for form in stored_forms(secret) {
                assert!(!contains(bytes, &form), "{name} holds {form}");
            }
        }
    }
    // And decoded: the data records, base64 inside JSON, hold only masked bodies.
    let records = gw.all_records();
    let mut decoded = Vec::new();
    for record in &records {
        if let Some(data) = record["data"].as_str() {
            decoded.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap(),
            );
        }
    }
    assert!(contains(&decoded, "[MASKED:aws_secret_access_key]"));
    for secret in &secrets {
        assert!(!contains(&decoded, secret), "a data record holds {secret}");
    }
    // The records say what was masked, never the value.
    let masked: Vec<&Value> = records.iter().filter(|r| r["kind"] == "masked").collect();
    let down = masked
        .iter()
        .find(|r| r["direction"] == "down" && r["detectors"]["aws_access_key_id"] == 1)
        .unwrap_or_else(|| panic!("{masked:#?}"));
    assert_eq!(down["peer_saw_masked"], true);
    assert!(
        masked.iter().any(|r| r["direction"] == "up"
            && r["detectors"]["credit_card"] == 1
            && r["peer_saw_masked"] == false),
        "the request's card was masked in the record only: {masked:#?}"
    );
    assert!(
        gw.metric("interlock_secrets_masked_total{target=\"mcp\",direction=\"response\",detector=\"credit_card\"}")
            .unwrap_or(0.0)
            >= 2.0
    );
}

#[test]
fn record_only_masking_leaves_the_client_clear_text_but_not_the_record() {
    let (server, secrets) = server_with_secrets();
    let gw = Gateway::start_with_protocol(&mcp_target(&server), "mcp\n    mask: record_only", "");
    let seen = gw.mcp_client(&server.url(), "env");
    let env = seen["env"].as_str().unwrap();
    assert!(
        env.contains(AWS_SECRET),
        "record_only: the client sees clear text"
    );
    let mut files = Vec::new();
    all_bytes(gw.dir.path(), &mut files);
    for (name, bytes) in &files {
        for secret in &secrets {
            for form in stored_forms(secret) {
                assert!(!contains(bytes, &form), "{name} holds {form}");
            }
        }
    }
    let records = gw.all_records();
    assert!(records.iter().any(|r| r["kind"] == "masked"
        && r["peer_saw_masked"] == false
        && r["direction"] == "down"));
}

#[test]
fn a_policy_rule_can_turn_masking_off_and_keep_raw_records_for_one_tool() {
    let (server, _) = server_with_secrets();
    let policy = "policy:\n  rules:\n    - name: env-is-fine\n      match: { tool: get-env }\n      action: allow\n      mask: record_only\n      record_raw: true\n";
    let gw = Gateway::start_with_protocol(&mcp_target(&server), "mcp", policy);
    let seen = gw.mcp_client(&server.url(), "env");
    assert!(seen["env"].as_str().unwrap().contains(AWS_SECRET));
    // Only get-env is exempt: echo still gets the target's default.
    assert_eq!(seen["echo"], "Echo: card [MASKED:credit_card]");
    let records = gw.all_records();
    let raw = records.iter().any(|r| {
        r["kind"] == "data"
            && r["data"].as_str().is_some_and(|d| {
                contains(
                    &base64::engine::general_purpose::STANDARD.decode(d).unwrap(),
                    AWS_SECRET,
                )
            })
    });
    assert!(raw, "record_raw keeps clear text for the rule's calls");
}

#[test]
fn a_secret_split_across_chunks_is_caught_in_sse_and_plain_text() {
    let port = free_port();
    let _server = Proc(
        std::process::Command::new("python3")
            .arg(support_dir().join("split_server.py"))
            .arg(port.to_string())
            .spawn()
            .unwrap(),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr);
    let gw = Gateway::start_with_protocol(
        &[Target {
            name: "split",
            address: addr,
        }],
        "http",
        "",
    );
    for path in ["sse", "text"] {
        let out = gw.wrap(&[
            "curl",
            "-sN",
            "--max-time",
            "5",
            &format!("http://{addr}/{path}"),
        ]);
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{path}: {body}");
        assert!(!body.contains(GITHUB_TOKEN), "{path}: {body}");
        assert!(body.contains("[MASKED:github_token]"), "{path}: {body}");
    }
    let mut files = Vec::new();
    all_bytes(gw.dir.path(), &mut files);
    for (name, bytes) in &files {
        for form in stored_forms(GITHUB_TOKEN) {
            assert!(!contains(bytes, &form), "{name} holds {form}");
        }
    }
}

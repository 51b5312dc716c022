//! Cluster-wide approvals end to end: two gateways ("two nodes") publish their holds as
//! InterlockHolds on the test API server, the approvals service lists and decides them for a
//! single approver through the same `interlock approvals` CLI, and each gateway releases its
//! own hold only for a decision the service signed for exactly that hold and request. A
//! cluster admin's forged decision, and a genuine one copied onto another hold, are written
//! with kubectl and must change nothing but a counter.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use interlock_e2e::{
    Gateway, McpServer, OidcIssuer, Proc, Target,
    apiserver::{ApiServer, kubeconfig_text, kubectl_137},
    free_port, hold_client_outcomes, interlock_bin, require_root, succeed, wait_listening,
};
use serde_json::{Value, json};

const GATEWAY_SA: &str = "system:serviceaccount:interlock:interlock";
const SERVICE_SA: &str = "system:serviceaccount:interlock:interlock-approvals";
const POLICY: &str = "policy:\n  default: allow\n  rules:\n\
    \x20   - name: deletes-need-a-human\n      match: { tool: \"delete_*\" }\n      action: hold\n      reason: deletes are irreversible\n";

struct Cluster {
    api: ApiServer,
    issuer: OidcIssuer,
    keys: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A kubeconfig for a service account of the `interlock` namespace, by a TokenRequest.
    fn kubeconfig(&self, account: &str) -> PathBuf {
        let token = self.api.post(
            &format!("/api/v1/namespaces/interlock/serviceaccounts/{account}/token"),
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
        )["status"]["token"]
            .as_str()
            .unwrap()
            .to_string();
        let path = self.dir.path().join(format!("{account}.kubeconfig"));
        let text = kubeconfig_text(
            &self.api.url,
            &self.api.ca,
            None,
            &format!("token: {token}"),
        );
        fs::write(&path, text).unwrap();
        path
    }

    fn approvals_config(&self, node: &str, kubeconfig: &Path) -> String {
        format!(
            "approvals:\n  keepalive: 500ms\n  oidc:\n    issuer: {}\n    audience: interlock\n    allowed_groups: [sre]\n  \
             cluster:\n    namespace: interlock\n    node_name: {node}\n    decision_key: {}\n    kubeconfig: {}\n",
            self.issuer.url(),
            self.keys.join("decision.pub").display(),
            kubeconfig.display(),
        )
    }

    fn token(&self, who: &str, groups: &[&str]) -> String {
        self.issuer.mint(json!({
            "sub": who, "email": format!("{who}@example.com"), "groups": groups
        }))
    }

    /// kubectl as the cluster admin, which must succeed.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.api.kubectl(&kubectl_137(), args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn holds(&self) -> Vec<Value> {
        let listed: Value = serde_json::from_str(&self.kubectl(&[
            "-n",
            "interlock",
            "get",
            "interlockholds",
            "-o",
            "json",
        ]))
        .unwrap();
        listed["items"].as_array().unwrap().clone()
    }

    fn hold(&self, name: &str) -> Option<Value> {
        self.holds()
            .into_iter()
            .find(|h| h["metadata"]["name"] == name)
    }

    /// Writes `decision` into a hold's status as a cluster admin can: kubectl, no service.
    fn write_decision(&self, name: &str, decision: &Value) {
        let patch = json!({"status": {"decision": decision}}).to_string();
        self.kubectl(&[
            "-n",
            "interlock",
            "patch",
            "interlockhold",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }
}

/// `interlock approvals --admin SERVICE ARGS` with an approver's token.
fn approvals_cli(service: SocketAddr, token: &str, args: &[&str]) -> Output {
    Command::new(interlock_bin())
        .arg("approvals")
        .args(["--admin", &service.to_string()])
        .args(args)
        .env("INTERLOCK_APPROVER_TOKEN", token)
        .output()
        .unwrap()
}

/// The pending holds the service lists, once there are `count`.
fn wait_listed(service: SocketAddr, token: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = approvals_cli(service, token, &["list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let holds: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        if holds.len() >= count {
            return holds;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} holds",
            holds.len()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn rejected(gateway: &Gateway, why: &str) -> f64 {
    gateway
        .metric(&format!(
            "interlock_cluster_decisions_rejected_total{{how=\"{why}\"}}"
        ))
        .unwrap_or(0.0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what} after 20 s");
        thread::sleep(Duration::from_millis(100));
    }
}

fn call(path: &str) -> Value {
    json!([{ "tool": "delete_file", "args": { "path": path } }])
}

#[test]
fn one_approver_decides_two_nodes_holds_and_only_the_services_signed_decision_counts() {
    require_root();
    let api = ApiServer::start(&[
        "--allow-write",
        GATEWAY_SA,
        "--allow-status-write",
        SERVICE_SA,
    ]);
    api.post(
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "interlock"}}),
    );
    for account in ["interlock", "interlock-approvals"] {
        api.post(
            "/api/v1/namespaces/interlock/serviceaccounts",
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}}),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    succeed(
        Command::new(interlock_bin())
            .args(["init", "--out"])
            .arg(&keys),
    );
    let cluster = Cluster {
        api,
        issuer: OidcIssuer::start(),
        keys,
        dir,
    };

    // The approvals service, as its Deployment runs it, with its own service account.
    let service = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let service_config = cluster.dir.path().join("approvals.yaml");
    fs::write(
        &service_config,
        format!(
            "listen: {service}\nnamespace: interlock\nsigning_key: {}\nkubeconfig: {}\n\
             oidc:\n  issuer: {}\n  audience: interlock\n  allowed_groups: [sre]\n",
            cluster.keys.join("decision.key").display(),
            cluster.kubeconfig("interlock-approvals").display(),
            cluster.issuer.url(),
        ),
    )
    .unwrap();
    let service_log = cluster.dir.path().join("approvals-service.log");
    let _service = Proc(
        Command::new(interlock_bin())
            .args(["approvals-service", "--config"])
            .arg(&service_config)
            .stdout(fs::File::create(&service_log).unwrap())
            .stderr(Stdio::from(
                fs::File::options().append(true).open(&service_log).unwrap(),
            ))
            .spawn()
            .unwrap(),
    );
    wait_listening(service);

    // Two nodes' gateways, each with the gateway service account, in front of one server.
    let journal = cluster.dir.path().join("journal.jsonl");
    let server = McpServer::python_journal(&journal);
    let target = [Target {
        name: "journal",
        address: server.addr,
    }];
    let gateway_kubeconfig = cluster.kubeconfig("interlock");
    let node_a = Gateway::start_with_protocol(
        &target,
        "mcp",
        &format!(
            "{}{POLICY}",
            cluster.approvals_config("node-a", &gateway_kubeconfig)
        ),
    );
    let mut node_b = Gateway::start_with_protocol(
        &target,
        "mcp",
        &format!(
            "{}{POLICY}",
            cluster.approvals_config("node-b", &gateway_kubeconfig)
        ),
    );
    let (alice, bob) = (
        cluster.token("alice", &["sre"]),
        cluster.token("bob", &["sre"]),
    );

    // One call held on each node; bob sees both in one list, and decides both.
    let on_a = node_a.spawn_hold_client(&server.url(), &call("/tmp/from-node-a"), Some(&alice));
    let on_b = node_b.spawn_hold_client(&server.url(), &call("/tmp/from-node-b"), Some(&alice));
    let listed = wait_listed(service, &bob, 2);
    let id_of = |path: &str| -> String {
        let hold = listed
            .iter()
            .find(|h| h["arguments"]["path"] == path)
            .unwrap_or_else(|| panic!("no hold of {path}: {listed:?}"));
        hold["hold_id"].as_str().unwrap().to_string()
    };
    let (a1, b1) = (id_of("/tmp/from-node-a"), id_of("/tmp/from-node-b"));
    for (id, node) in [(&a1, "node-a"), (&b1, "node-b")] {
        let hold = cluster.hold(id).unwrap();
        assert_eq!(hold["metadata"]["labels"]["interlock.dev/node"], node);
    }
    let decide = |token: &str, verb: &str, id: &str, reason: &str| {
        approvals_cli(service, token, &[verb, id, "--reason", reason])
    };
    // The requester, an approver herself, cannot approve her own call, on any node.
    let own = decide(&alice, "approve", &a1, "mine");
    assert!(!own.status.success());
    let own = String::from_utf8_lossy(&own.stderr);
    assert!(
        own.contains("403") && own.contains("self-approval"),
        "{own}"
    );
    assert!(decide(&bob, "approve", &a1, "ticket 42").status.success());
    assert!(
        decide(&bob, "deny", &b1, "not on a Friday")
            .status
            .success()
    );
    let outcome_a = hold_client_outcomes(on_a);
    assert_eq!(
        outcome_a[0]["result"], "deleted /tmp/from-node-a",
        "{outcome_a:?}"
    );
    let outcome_b = hold_client_outcomes(on_b);
    let error = outcome_b[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("denied by bob@example.com: not on a Friday"),
        "{outcome_b:?}"
    );
    let executed = fs::read_to_string(&journal).unwrap_or_default();
    assert!(executed.contains("from-node-a") && !executed.contains("from-node-b"));
    // Each node recorded its own decision, with the approver the service verified; and
    // deleted the hold once it ended.
    for (gateway, id, outcome) in [(&node_a, &a1, "approved"), (&node_b, &b1, "denied")] {
        let decided = gateway
            .records_once_ended()
            .into_iter()
            .find(|r| r["kind"] == "hold_decided" && r["hold_id"] == **id)
            .unwrap();
        assert_eq!(decided["outcome"], outcome, "{decided}");
        assert_eq!(decided["approver"]["email"], "bob@example.com", "{decided}");
        wait_for("the decided hold deleted", || cluster.hold(id).is_none());
    }

    // A decision no service signed, written by a cluster admin: ignored, and counted.
    let on_a = node_a.spawn_hold_client(&server.url(), &call("/tmp/forged"), Some(&alice));
    let a2 = wait_listed(service, &bob, 1)[0]["hold_id"]
        .as_str()
        .unwrap()
        .to_string();
    let hold = cluster.hold(&a2).unwrap();
    let forged = json!({
        "holdId": a2, "holdSha256": hold["spec"]["holdSha256"], "outcome": "approved",
        "reason": "trust me", "approver": {"email": "admin@example.com"},
        "decidedAt": "2026-12-08T00:00:00Z", "signature": "AAAA",
    });
    cluster.write_decision(&a2, &forged);
    wait_for("the forged decision counted", || {
        rejected(&node_a, "bad_signature") >= 1.0
    });

    // A genuine decision copied onto another hold. Node b is down, so its approved hold
    // keeps the service's decision; a cluster admin copies it onto node a's hold.
    let on_b = node_b.spawn_hold_client(&server.url(), &call("/tmp/replayed"), Some(&alice));
    let listed = wait_listed(service, &bob, 2);
    let b2 = listed
        .iter()
        .find(|h| h["arguments"]["path"] == "/tmp/replayed")
        .unwrap()["hold_id"]
        .as_str()
        .unwrap()
        .to_string();
    node_b.kill9();
    let _ = on_b.wait_with_output();
    assert!(decide(&bob, "approve", &b2, "fine").status.success());
    let genuine = cluster.hold(&b2).unwrap()["status"]["decision"].clone();
    assert_eq!(genuine["outcome"], "approved");
    cluster.write_decision(&a2, &genuine);
    wait_for("the replayed decision counted", || {
        rejected(&node_a, "other_hold") >= 1.0
    });
    // Neither moved the held call: it is still waiting, and never reached the server.
    thread::sleep(Duration::from_millis(500));
    assert!(cluster.hold(&a2).is_some());
    assert!(!fs::read_to_string(&journal).unwrap().contains("forged"));

    // A hold whose spec was edited (what the approver would see is not what is held) is not
    // decided by the service.
    let mut edited = cluster.hold(&a2).unwrap();
    edited["spec"]["hold"]["arguments"]["path"] = json!("/tmp/harmless");
    edited["status"] = Value::Null;
    let file = cluster.dir.path().join("edited.json");
    fs::write(&file, edited.to_string()).unwrap();
    // The test server serves no OpenAPI document for kubectl's client-side validation.
    cluster.kubectl(&["replace", "--validate=false", "-f", file.to_str().unwrap()]);
    let refused = decide(&bob, "approve", &a2, "looks harmless");
    assert!(!refused.status.success());
    let refused = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refused.contains("409") && refused.contains("edited"),
        "{refused}"
    );
    // The node's own admin listener still decides it; the hold is withdrawn.
    let local = node_a.approvals_cli(&bob, &["deny", &a2, "--reason", "edited under us"]);
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let outcome = hold_client_outcomes(on_a);
    assert!(
        outcome[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("edited under us"),
        "{outcome:?}"
    );
    wait_for("the locally decided hold deleted", || {
        cluster.hold(&a2).is_none()
    });

    // Node b comes back: the hold its crash left behind is cleared, so nobody is asked to
    // decide a request that no longer waits.
    assert!(cluster.hold(&b2).is_some());
    node_b.launch();
    wait_for("the crashed node's hold cleared", || {
        cluster.hold(&b2).is_none()
    });
    let log = fs::read_to_string(&service_log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

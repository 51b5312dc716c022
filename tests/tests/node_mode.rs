//! Node mode on a simulated node: pods are network namespaces with kubelet's cgroup layout,
//! the test API server serves their Pod objects, and the gateway watches it with kube-rs.
//! The official Python MCP client in a selected pod reaches server-everything (in a pod of
//! its own, behind a Service address) through the gateway and is recorded as that pod; an
//! unselected pod goes direct.
use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use interlock_e2e::{
    Gateway, PodNetns, Proc,
    apiserver::ApiServer,
    free_port,
    node::{Driver, Qos, Runtime, SimNode, SimPod},
    require_root, support_dir, wait_listening,
};
use serde_json::{Value, json};

/// The Service address the tools server is published at (no kube-proxy here: the server's
/// own pod answers on it).
const CLUSTER_IP: &str = "10.232.0.10";

struct Cluster {
    api: ApiServer,
    node: SimNode,
    port: u16,
    /// What the journalling server executed (`Upstream::Journal`).
    journal: std::path::PathBuf,
    _server: Proc,
    server_pod: PodNetns,
}

#[derive(PartialEq)]
enum Upstream {
    /// server-everything (npm).
    Everything,
    /// tests/support/mcp_server.py, which journals every tool call it executes.
    Journal,
}

fn cluster() -> Cluster {
    cluster_with(Upstream::Everything)
}

/// The test API server, a node, and an MCP server in its own pod behind Service
/// `team/tools`, whose cluster IP and EndpointSlice both lead to it.
fn cluster_with(upstream: Upstream) -> Cluster {
    cluster_serving(upstream, |_| ApiServer::start(&[]))
}

/// Like `cluster_with`, the API server started by `api` once the node exists.
fn cluster_serving(upstream: Upstream, api: impl FnOnce(&SimNode) -> ApiServer) -> Cluster {
    require_root();
    let node = SimNode::create("node-sim");
    let api = api(&node);
    let server_pod = PodNetns::create(30);
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "-n",
        &server_pod.name,
        "route",
        "add",
        "default",
        "via",
        &server_pod.host_ip,
    ]);
    run(&[
        "-n",
        &server_pod.name,
        "addr",
        "add",
        &format!("{CLUSTER_IP}/32"),
        "dev",
        "lo",
    ]);
    let _ = Command::new("ip")
        .args(["route", "del", &format!("{CLUSTER_IP}/32")])
        .output();
    run(&[
        "route",
        "add",
        &format!("{CLUSTER_IP}/32"),
        "via",
        &server_pod.pod_ip,
    ]);
    let port = free_port();
    let journal = api.dir.path().join("journal.jsonl");
    let mut server = Command::new("ip");
    server.args(["netns", "exec", &server_pod.name]);
    match upstream {
        Upstream::Everything => server
            .args(["env", &format!("PORT={port}"), "node"])
            .arg(support_dir().join("node_modules/.bin/mcp-server-everything"))
            .arg("streamableHttp"),
        Upstream::Journal => server
            .arg("python3")
            .arg(support_dir().join("mcp_server.py"))
            .arg(port.to_string())
            .arg(&journal)
            .arg("0.0.0.0"),
    };
    let server = server
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node, python3 and tests/support peers (cargo xtask setup)");
    let server = Proc(server);
    wait_listening(format!("{}:{port}", server_pod.pod_ip).parse().unwrap());
    let cluster = Cluster {
        api,
        node,
        port,
        journal,
        _server: server,
        server_pod,
    };
    cluster.publish();
    cluster
}

impl Cluster {
    fn gateway(&self, fail_mode: &str) -> Gateway {
        self.gateway_with(&format!("fail_mode: {fail_mode}\n"), "")
    }

    /// A gateway with `extra` config, and `target_keys` for the tools target.
    fn gateway_with(&self, extra: &str, target_keys: &str) -> Gateway {
        Gateway::start_config(&self.gateway_config(extra, target_keys))
    }

    fn gateway_config(&self, extra: &str, target_keys: &str) -> String {
        format!(
            "{extra}kubernetes:\n  kubeconfig: {}\n  node_name: {}\n  pod_proxy_address: {}\n  selections:\n\
             \x20   - name: agents\n      pods: {{matchLabels: {{app: agent}}}}\n      namespaces: {{matchLabels: {{interlock.dev/selected: \"true\"}}}}\n      targets: [tools]\n\
             targets:\n  - name: tools\n    service: team/tools\n    port: {}\n    protocol: mcp\n{target_keys}",
            self.api.kubeconfig.display(),
            self.node.name,
            self.node.node_ip,
            self.port
        )
    }

    /// Service `team/tools` and its EndpointSlice, pointing at the server's pod.
    fn publish(&self) {
        self.api.post(
            "/api/v1/namespaces/team/services",
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "tools"},
                    "spec": {"clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
                             "ports": [{"name": "http", "port": self.port, "targetPort": self.port, "protocol": "TCP"}]}}),
        );
        self.api.post(
            "/apis/discovery.k8s.io/v1/namespaces/team/endpointslices",
            &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "tools-1", "labels": {"kubernetes.io/service-name": "tools"}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": [self.server_pod.pod_ip], "conditions": {"ready": true}}],
                    "ports": [{"name": "http", "port": self.port, "protocol": "TCP"}]}),
        );
    }

    /// A bound token for `sa`, from the TokenRequest API, bound to `pod`.
    fn token(&self, sa: &str, pod: &SimPod) -> String {
        let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.name, "uid": pod.uid}}});
        let minted = self.api.post(
            &format!("/api/v1/namespaces/team/serviceaccounts/{sa}/token"),
            &request,
        );
        minted["status"]["token"].as_str().unwrap().to_string()
    }

    /// A token the API server would never mint (expired, foreign audience or issuer), signed
    /// with its real key.
    fn odd_token(&self, sa: &str, pod: &SimPod, odd: Value) -> String {
        let mut request = json!({"namespace": "team", "serviceAccount": sa, "pod": pod.name});
        request
            .as_object_mut()
            .unwrap()
            .extend(odd.as_object().unwrap().clone());
        self.api.post("/testserver/token", &request)["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A legacy token of `sa`, as the token controller fills it into a new
    /// `kubernetes.io/service-account-token` Secret.
    fn legacy_token(&self, sa: &str) -> String {
        let secret = self.api.post(
            "/api/v1/namespaces/team/secrets",
            &json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
            "metadata": {"name": format!("{sa}-legacy"),
                         "annotations": {"kubernetes.io/service-account.name": sa}}}),
        );
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["token"].as_str().unwrap())
            .unwrap();
        String::from_utf8(token).unwrap()
    }

    fn executed(&self) -> String {
        std::fs::read_to_string(&self.journal).unwrap_or_default()
    }

    fn pod(
        &self,
        tag: u8,
        name: &str,
        app: &str,
        layout: (Driver, Runtime, Qos),
        sa: &str,
    ) -> SimPod {
        let pod = self
            .node
            .pod(tag, "team", name, json!({"app": app}), layout);
        self.api
            .post("/api/v1/namespaces/team/pods", &pod.object(sa));
        pod
    }

    fn url(&self) -> String {
        format!("http://{CLUSTER_IP}:{}/mcp", self.port)
    }
}

/// The official Python MCP client in `pod`'s `app` container; its JSON report.
fn mcp_client(pod: &SimPod, url: &str) -> Value {
    let script = support_dir().join("mcp_client.py");
    let out = pod
        .run("app", &["python3", script.to_str().unwrap(), url, "env"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "MCP client in {}: {}",
        pod.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn wait_for(what: &str, gw: &Gateway, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} not within 15 s:\n{}",
            gw.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every session, once none is still open.
fn ended_sessions(gw: &Gateway) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sessions = gw.sessions();
        if sessions.iter().all(|s| s["outcome"] != "unfinished") || Instant::now() > deadline {
            return sessions;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn metric(gw: &Gateway, series: &str) -> f64 {
    gw.metric(series).unwrap_or(-1.0)
}

#[test]
fn a_selected_pod_is_intercepted_and_recorded_as_that_pod_and_an_unselected_one_goes_direct() {
    let cluster = cluster();
    let agent = cluster.pod(
        1,
        "agent-1",
        "agent",
        (Driver::Systemd, Runtime::Containerd, Qos::Burstable),
        "agent",
    );
    let bystander = cluster.pod(
        2,
        "bystander-1",
        "web",
        (Driver::Cgroupfs, Runtime::CriO, Qos::BestEffort),
        "other",
    );
    let gw = cluster.gateway("open");
    // /readyz waited for the first lists, so the registrations are in.
    assert_eq!(
        metric(&gw, "interlock_pods_intercepted"),
        1.0,
        "{}",
        gw.log()
    );
    assert_eq!(metric(&gw, "interlock_kube_synced"), 1.0);

    let seen = mcp_client(&agent, &cluster.url());
    assert!(seen["env"].is_string(), "{seen}");
    // The client opens a connection per HTTP request: each is a session of the pod.
    let sessions = ended_sessions(&gw);
    assert!(!sessions.is_empty());
    for session in &sessions {
        assert_eq!(session["target"], "tools");
        assert_eq!(session["node"], "node-sim");
        assert_eq!(
            session["original_dst"],
            format!("{CLUSTER_IP}:{}", cluster.port)
        );
        let k8s = &session["kubernetes"];
        assert_eq!(k8s["namespace"], "team", "{session}");
        assert_eq!(k8s["pod"], "agent-1");
        assert_eq!(k8s["uid"], agent.uid.as_str());
        assert_eq!(k8s["container"], "app");
        assert_eq!(k8s["service_account"], "agent");
        assert_eq!(k8s["node"], "node-sim");
        assert_eq!(
            k8s["owner"],
            json!({"kind": "ReplicaSet", "name": "agent-1-rs"})
        );
        assert_eq!(k8s["labels"], json!({"app": "agent"}));
        assert_eq!(k8s["selections"], json!(["agents"]));
        assert_eq!(
            session["pod"]["container_id"],
            agent.containers[0].id.as_str()
        );
    }

    // The bystander reaches the same Service directly: nothing recorded.
    let seen = mcp_client(&bystander, &cluster.url());
    assert!(seen["env"].is_string(), "{seen}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gw.sessions().len(),
        sessions.len(),
        "the unselected pod was intercepted"
    );
}

#[test]
fn containers_that_restart_stay_intercepted_and_deleted_pods_leave_no_registration() {
    let cluster = cluster();
    let mut agent = cluster.pod(
        3,
        "agent-2",
        "agent",
        (Driver::Cgroupfs, Runtime::Containerd, Qos::Guaranteed),
        "agent",
    );
    let gw = cluster.gateway("open");
    assert_eq!(
        metric(&gw, "interlock_pods_intercepted"),
        1.0,
        "{}",
        gw.log()
    );
    let registrations = metric(&gw, "interlock_pod_registrations_total");
    assert_eq!(registrations, 1.0);

    // A restart is a new container cgroup in the same pod: covered by the pod's registration.
    agent.start_container("app");
    mcp_client(&agent, &cluster.url());
    let sessions = ended_sessions(&gw);
    assert!(!sessions.is_empty());
    for session in &sessions {
        assert_eq!(
            session["pod"]["container_id"],
            agent.containers[1].id.as_str()
        );
    }
    assert_eq!(
        metric(&gw, "interlock_pod_registrations_total"),
        registrations,
        "a restart registered again"
    );

    // A pod that gets selected later is registered from its event; deleting pods unregisters.
    let late = cluster.pod(
        4,
        "agent-3",
        "agent",
        (Driver::Systemd, Runtime::CriO, Qos::Guaranteed),
        "agent",
    );
    wait_for("the late pod's registration", &gw, || {
        metric(&gw, "interlock_pods_intercepted") == 2.0
    });
    mcp_client(&late, &cluster.url());
    let late_sessions = ended_sessions(&gw)
        .into_iter()
        .filter(|s| s["kubernetes"]["pod"] == "agent-3")
        .count();
    assert!(late_sessions > 0);
    for name in ["agent-2", "agent-3"] {
        let out = cluster.api.kubectl(
            &interlock_e2e::apiserver::kubectl_137(),
            &["delete", "pod", "-n", "team", name],
        );
        assert!(out.status.success());
    }
    wait_for("the registrations to go", &gw, || {
        metric(&gw, "interlock_pods_intercepted") == 0.0
    });
    assert_eq!(
        metric(&gw, "interlock_bpf_map_entries{map=\"INTERCEPT_CGROUPS\"}"),
        0.0
    );
    assert_eq!(metric(&gw, "interlock_pod_unregistrations_total"), 2.0);
}

#[test]
fn a_closed_mode_restart_lets_no_selected_pod_connect_direct_and_readyz_waits_for_the_resync() {
    let cluster = cluster();
    let agent = cluster.pod(
        5,
        "agent-4",
        "agent",
        (Driver::Systemd, Runtime::Containerd, Qos::BestEffort),
        "agent",
    );
    let mut gw = cluster.gateway("closed");
    mcp_client(&agent, &cluster.url());
    let before = ended_sessions(&gw).len();
    assert!(before > 0);

    gw.kill9();
    // The pinned registration still redirects to a listener that is gone: refused, not direct.
    let url = cluster.url();
    let address: SocketAddr = format!("{CLUSTER_IP}:{}", cluster.port).parse().unwrap();
    let probe = interlock_e2e::probe_bin();
    let out = agent
        .run(
            "app",
            &[probe.to_str().unwrap(), "http", &address.to_string()],
        )
        .output()
        .unwrap();
    let seen = interlock_e2e::probe_json(&out);
    assert_eq!(
        seen["kind"], "ConnectionRefused",
        "a selected pod got past the stopped gateway: {seen}"
    );

    // A pod deleted while the gateway was down is unregistered at the resync.
    let gone = cluster.pod(
        6,
        "agent-5",
        "agent",
        (Driver::Systemd, Runtime::Containerd, Qos::BestEffort),
        "agent",
    );
    drop(gone);
    gw.launch();
    assert!(gw.log().contains("node mode synced"), "{}", gw.log());
    assert_eq!(metric(&gw, "interlock_pods_intercepted"), 1.0);
    mcp_client(&agent, &url);
    let after = ended_sessions(&gw);
    assert!(after.len() > before);
    assert!(after.iter().all(|s| s["kubernetes"]["pod"] == "agent-4"));
}

fn echo_with_token(pod: &SimPod, cluster: &Cluster, token: &str, message: &str) -> (u16, Value) {
    call_echo(pod, cluster, Some(token), message)
}

/// `tools/call echo MESSAGE` from `pod`, with `token` if given, by curl: the HTTP status and
/// the JSON-RPC message that came back (the SSE event's data, or the JSON body).
fn call_echo(pod: &SimPod, cluster: &Cluster, token: Option<&str>, message: &str) -> (u16, Value) {
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": message}}});
    let body = call.to_string();
    let url = cluster.url();
    let mut curl = vec![
        "curl",
        "-s",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        &url,
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
        "-d",
        &body,
    ];
    let authorization = token.map(|t| format!("authorization: Bearer {t}"));
    if let Some(header) = &authorization {
        curl.extend(["-H", header]);
    }
    let out = pod.run("app", &curl).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl: {text}"));
    let json = body
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(body);
    (
        status.parse().unwrap(),
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

fn token_checks(gw: &Gateway) -> Vec<Value> {
    gw.all_records()
        .into_iter()
        .filter(|r| r["kind"] == "token_check")
        .collect()
}

#[test]
fn a_pods_own_bound_token_is_verified_and_a_token_replayed_from_another_pod_never_reaches_the_server()
 {
    let cluster = cluster_with(Upstream::Journal);
    let agent = cluster.pod(
        7,
        "agent-7",
        "agent",
        (Driver::Systemd, Runtime::Containerd, Qos::Burstable),
        "agent",
    );
    let other = cluster.pod(
        8,
        "agent-8",
        "agent",
        (Driver::Cgroupfs, Runtime::Containerd, Qos::Burstable),
        "other",
    );
    let gw = cluster.gateway_with("identity:\n  legacy_tokens: deny\n", "");

    let (status, reply) =
        echo_with_token(&agent, &cluster, &cluster.token("agent", &agent), "mine");
    assert_eq!(status, 200, "{reply}\n{}", gw.log());
    assert_eq!(reply["result"]["content"][0]["text"], "echo: mine");

    let stolen = cluster.token("other", &other);
    let (status, reply) = echo_with_token(&agent, &cluster, &stolen, "stolen");
    assert_eq!(status, 403, "{reply}");
    assert_eq!(
        (reply["id"].as_i64(), reply["error"]["code"].as_i64()),
        (Some(7), Some(-32002))
    );
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("replayed from another pod"), "{message}");
    // The same token from its own pod is fine.
    let (status, _) = echo_with_token(&other, &cluster, &stolen, "theirs");
    assert_eq!(status, 200);

    let refused = |token: &str, expect: &str| {
        let (status, reply) = echo_with_token(&agent, &cluster, token, "refused");
        assert_eq!(status, 403, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(expect), "{message} (expected {expect:?})");
    };
    refused(
        &cluster.odd_token("agent", &agent, json!({"expiresIn": -600})),
        "expired",
    );
    refused(
        &cluster.odd_token("agent", &agent, json!({"audiences": ["someone-else"]})),
        "wrong audience",
    );
    refused(
        &cluster.odd_token("agent", &agent, json!({"issuer": "https://evil.example"})),
        "wrong issuer",
    );
    let legacy = cluster.legacy_token("agent");
    refused(&legacy, "legacy_tokens: deny");

    // A rotated key: the new kid is fetched and the token it signs verifies.
    cluster.api.post(
        "/testserver/rotate",
        &json!({"algorithm": "ES256", "retirePrevious": true}),
    );
    thread::sleep(Duration::from_secs(10)); // the gateway refetches an unknown kid at most every 10 s
    let (status, reply) =
        echo_with_token(&agent, &cluster, &cluster.token("agent", &agent), "rotated");
    assert_eq!(status, 200, "{reply}\n{}", gw.log());

    // The server executed only what carried the caller's own token.
    let executed = cluster.executed();
    for (message, ran) in [
        ("mine", true),
        ("theirs", true),
        ("rotated", true),
        ("stolen", false),
        ("refused", false),
    ] {
        assert_eq!(
            executed.contains(&format!("\"{message}\"")),
            ran,
            "{message}: {executed}"
        );
    }
    let checks = token_checks(&gw);
    let outcomes: Vec<&str> = checks
        .iter()
        .filter_map(|c| c["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes,
        [
            "verified",
            "identity_mismatch",
            "verified",
            "rejected",
            "rejected",
            "rejected",
            "legacy_refused",
            "verified"
        ],
        "{checks:?}"
    );
    let mismatch = &checks[1];
    assert_eq!(mismatch["allowed"], false);
    assert_eq!(mismatch["token"]["pod"], "agent-8");
    assert_eq!(mismatch["token"]["service_account"], "other");
    assert_eq!(mismatch["attested"]["pod"], "agent-7");
    assert_eq!(mismatch["attested"]["pod_uid"], agent.uid.as_str());
    assert_eq!(
        checks[0]["token"]["subject"],
        "system:serviceaccount:team:agent"
    );
}

#[test]
fn legacy_tokens_follow_the_setting_and_a_required_bound_token_refuses_requests_without_one() {
    let cluster = cluster_with(Upstream::Journal);
    let agent = cluster.pod(
        9,
        "agent-9",
        "agent",
        (Driver::Systemd, Runtime::CriO, Qos::Guaranteed),
        "agent",
    );
    let legacy = cluster.legacy_token("agent");
    for (setting, status, outcome) in [
        ("flag", 200, "legacy_flagged"),
        ("allow", 200, "legacy_allowed"),
    ] {
        let gw = cluster.gateway_with(&format!("identity:\n  legacy_tokens: {setting}\n"), "");
        let (got, reply) = echo_with_token(&agent, &cluster, &legacy, setting);
        assert_eq!(got, status, "{setting}: {reply}");
        let checks = token_checks(&gw);
        assert_eq!(checks.len(), 1);
        assert_eq!(
            (
                checks[0]["outcome"].as_str(),
                checks[0]["allowed"].as_bool()
            ),
            (Some(outcome), Some(true))
        );
    }
    let gw = cluster.gateway_with("", "    require_bound_token: true\n");
    let (got, reply) = echo_with_token(&agent, &cluster, "not-a-jwt", "no-token");
    assert_eq!(got, 403, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requires the pod's own service-account token")
    );
    let (got, _) = echo_with_token(&agent, &cluster, &legacy, "legacy-required");
    assert_eq!(got, 403);
    let (got, _) = echo_with_token(&agent, &cluster, &cluster.token("agent", &agent), "bound");
    assert_eq!(got, 200);
    let outcomes: Vec<String> = token_checks(&gw)
        .iter()
        .filter_map(|c| c["outcome"].as_str().map(String::from))
        .collect();
    assert_eq!(outcomes, ["missing", "legacy_refused", "verified"]);
}

#[test]
fn fifty_pods_created_in_a_burst_each_await_interception_and_their_first_connection_is_recorded() {
    let cluster = cluster_with(Upstream::Journal);
    let gw = cluster.gateway_with("", "");
    let interlock = interlock_e2e::interlock_bin();
    let layouts = [
        (Driver::Systemd, Runtime::Containerd, Qos::Burstable),
        (Driver::Cgroupfs, Runtime::CriO, Qos::BestEffort),
        (Driver::Systemd, Runtime::CriO, Qos::Guaranteed),
    ];
    let pods: Vec<SimPod> = (0..50u8)
        .map(|i| {
            cluster.node.pod(
                40 + i,
                "team",
                &format!("burst-{i}"),
                json!({"app": "agent"}),
                layouts[usize::from(i) % 3],
            )
        })
        .collect();
    // Each pod's container starts at once: the await step, then straight to the server.
    let url = cluster.url();
    let runs: Vec<_> = pods
        .iter()
        .map(|pod| {
            cluster.api.post("/api/v1/namespaces/team/pods", &pod.object("agent"));
            let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                              "params": {"name": "echo", "arguments": {"message": pod.name}}});
            let script = format!(
                "{} await --timeout 60s && curl -s -o /dev/null -w '%{{http_code}}' -X POST {url} \
                 -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' -d '{call}'",
                interlock.display()
            );
            pod.run("app", &["sh", "-c", &script]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for (pod, run) in pods.iter().zip(runs) {
        let out = run.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}\n{}",
            pod.name,
            String::from_utf8_lossy(&out.stderr),
            gw.log()
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).ends_with("200"),
            "{}: {:?}",
            pod.name,
            out
        );
    }
    let sessions = ended_sessions(&gw);
    for pod in &pods {
        let recorded = sessions
            .iter()
            .any(|s| s["kubernetes"]["pod"] == pod.name.as_str());
        assert!(
            recorded,
            "{}'s first connection was not intercepted",
            pod.name
        );
        assert!(cluster.executed().contains(&format!("\"{}\"", pod.name)));
    }
    assert_eq!(metric(&gw, "interlock_pods_intercepted"), 50.0);

    // An unselected pod's await fails, saying why.
    let loner = cluster
        .node
        .pod(95, "team", "loner", json!({"app": "web"}), layouts[0]);
    cluster
        .api
        .post("/api/v1/namespaces/team/pods", &loner.object("other"));
    let out = loner
        .run(
            "app",
            &[interlock.to_str().unwrap(), "await", "--timeout", "1s"],
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("is not intercepted after 1s")
            && said.contains("a selection chooses this pod"),
        "{said}"
    );

    for pod in &pods {
        let out = cluster.api.kubectl(
            &interlock_e2e::apiserver::kubectl_137(),
            &["delete", "pod", "-n", "team", &pod.name],
        );
        assert!(out.status.success());
    }
    wait_for("every registration to go", &gw, || {
        metric(&gw, "interlock_pods_intercepted") == 0.0
    });
    assert_eq!(
        metric(&gw, "interlock_bpf_map_entries{map=\"INTERCEPT_CGROUPS\"}"),
        0.0
    );
    wait_for("the tracking maps to empty", &gw, || {
        metric(&gw, "interlock_bpf_map_entries{map=\"SOCK_ORIGINS\"}") == 0.0
            && metric(&gw, "interlock_bpf_map_entries{map=\"FLOWS\"}") == 0.0
    });
}

#[test]
fn an_api_server_that_is_down_at_start_keeps_readyz_at_503_with_a_clear_log_until_it_comes_back() {
    let mut cluster = cluster();
    let agent = cluster.pod(
        96,
        "agent-96",
        "agent",
        (Driver::Systemd, Runtime::Containerd, Qos::Burstable),
        "agent",
    );
    cluster.api.stop();
    let config = cluster.gateway_config("fail_mode: open\n", "");
    let mut gw = Gateway::configure(&config);
    gw.spawn();
    wait_for("the watch failure to be logged", &gw, || {
        gw.log()
            .contains("watching the API server failed; retrying with backoff")
    });
    let readyz = gw.admin_get("/readyz").unwrap_or_default();
    assert!(
        readyz.contains("waiting for the first pod list from the API server"),
        "{readyz}"
    );
    assert!(metric(&gw, "interlock_kube_watch_errors_total{resource=\"pods\"}") >= 1.0);

    // The server comes back (same address, same CA): the watches recover on their own.
    cluster.api.restart();
    cluster.publish();
    cluster
        .api
        .post("/api/v1/namespaces/team/pods", &agent.object("agent"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw
        .admin_get("/readyz")
        .is_none_or(|r| !r.starts_with("ready"))
    {
        assert!(
            Instant::now() < deadline,
            "not ready 60 s after the API server came back:\n{}",
            gw.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    wait_for("the pod's registration", &gw, || {
        metric(&gw, "interlock_pods_intercepted") == 1.0
    });
    mcp_client(&agent, &cluster.url());
    assert!(
        ended_sessions(&gw)
            .iter()
            .any(|s| s["kubernetes"]["pod"] == "agent-96")
    );
}

/// `tools/call echo MESSAGE` from `pod`, with no token: the JSON-RPC reply.
fn echo(pod: &SimPod, cluster: &Cluster, message: &str) -> Value {
    call_echo(pod, cluster, None, message).1
}

#[test]
fn a_deny_rule_for_one_service_account_on_one_tool_applies_to_that_service_account_only() {
    let cluster = cluster_with(Upstream::Journal);
    let agent = cluster.pod(
        97,
        "agent-97",
        "agent",
        (Driver::Systemd, Runtime::Containerd, Qos::Burstable),
        "agent",
    );
    let other = cluster.pod(
        98,
        "agent-98",
        "agent",
        (Driver::Systemd, Runtime::Containerd, Qos::Burstable),
        "other",
    );
    let policy = "policy:\n  default: allow\n  rules:\n    - name: agent-may-not-echo\n      match: { service_account: agent, namespace: team, tool: echo }\n      action: deny\n      reason: not for this service account\n";
    let gw = cluster.gateway_with(policy, "");
    let denied = echo(&agent, &cluster, "from-agent");
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not for this service account"),
        "{denied}\n{}",
        gw.log()
    );
    let allowed = echo(&other, &cluster, "from-other");
    assert_eq!(
        allowed["result"]["content"][0]["text"], "echo: from-other",
        "{allowed}"
    );
    let executed = cluster.executed();
    assert!(
        !executed.contains("from-agent") && executed.contains("from-other"),
        "{executed}"
    );
}

/// An address on the host's `lo`, removed again on drop.
/// kubectl in a pod, with a kubeconfig as its in-cluster config would give it: the API
/// server's endpoint, the bundle `interlock ca-bundle` prints, and `token`.
fn pod_kubectl(
    pod: &SimPod,
    cluster: &Cluster,
    bundle: &std::path::Path,
    token: &str,
    args: &[&str],
) -> std::process::Output {
    let kubeconfig = cluster
        .api
        .dir
        .path()
        .join(format!("{}-kubeconfig", pod.name));
    let text = interlock_e2e::apiserver::kubeconfig_text(
        &cluster.api.url,
        bundle,
        Some("kubernetes.default.svc"),
        &format!("token: {token}"),
    );
    std::fs::write(&kubeconfig, text).unwrap();
    let kubectl = interlock_e2e::apiserver::kubectl_137();
    let mut command = vec![
        kubectl.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ];
    command.extend(args);
    pod.run("app", &command).output().unwrap()
}

#[test]
fn a_selected_pods_kubectl_reaches_the_api_server_as_that_pod_and_a_replayed_token_is_refused_with_a_status()
 {
    // The API server listens on an address of its own, which pods reach through the host:
    // its EndpointSlice address, part of the target `service: default/kubernetes`.
    let api_address =
        interlock_e2e::node::HostAddress::add(&format!("10.231.{}.1", std::process::id() % 250));
    let cluster = cluster_serving(Upstream::Everything, |_| {
        ApiServer::start(&["--listen", &format!("{}:0", api_address.0)])
    });
    let agent = cluster.pod(
        11,
        "agent-11",
        "agent",
        (Driver::Systemd, Runtime::Containerd, Qos::Burstable),
        "agent",
    );
    let other = cluster.pod(
        12,
        "agent-12",
        "agent",
        (Driver::Cgroupfs, Runtime::CriO, Qos::BestEffort),
        "other",
    );
    let key = cluster.api.dir.path().join("interception/ca.key");
    let config = format!(
        "interception_ca:\n  key: {}\nkubernetes:\n  kubeconfig: {}\n  node_name: {}\n  pod_proxy_address: {}\n  selections:\n\
         \x20   - name: agents\n      pods: {{matchLabels: {{app: agent}}}}\n      targets: [kube]\n\
         targets:\n  - name: kube\n    service: default/kubernetes\n    port: 443\n    protocol: kubernetes\n    upstream_ca: {}\n",
        key.display(),
        cluster.api.kubeconfig.display(),
        cluster.node.name,
        cluster.node.node_ip,
        cluster.api.ca.display()
    );
    let gw = Gateway::start_config(&config);
    let out = gw
        .cli(&[
            "ca-bundle",
            "--cluster-ca",
            cluster.api.ca.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = cluster.api.dir.path().join("bundle.crt");
    std::fs::write(&bundle, &out.stdout).unwrap();

    // The pod's own bound token: served, and recorded as that pod and that service account.
    let own = cluster.token("agent", &agent);
    let out = pod_kubectl(
        &agent,
        &cluster,
        &bundle,
        &own,
        &["get", "pods", "-n", "team", "-o", "name"],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod/agent-11"));

    // Another pod's token, replayed: a Forbidden Status, and the server never sees it.
    let stolen = cluster.token("other", &other);
    let out = pod_kubectl(
        &agent,
        &cluster,
        &bundle,
        &stolen,
        &["get", "secrets", "-n", "team"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Error from server (Forbidden)"), "{stderr}");
    assert!(stderr.contains("replayed from another pod"), "{stderr}");
    let requests = cluster.api.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r["path"] == "/api/v1/namespaces/team/secrets"
                || r["user"] == "system:serviceaccount:team:other"),
        "the replayed token reached the API server: {requests:?}"
    );

    let records = gw.all_records();
    let listed = records
        .iter()
        .find(|r| r["kind"] == "kube_request" && r["verb"] == "list" && r["resource"] == "pods")
        .expect("the pod's list is a kube_request");
    assert_eq!(
        listed["user"]["subject"],
        "system:serviceaccount:team:agent"
    );
    let start = records
        .iter()
        .find(|r| r["kind"] == "session_start" && r["session_id"] == listed["session_id"])
        .unwrap();
    assert_eq!(start["kubernetes"]["pod"], "agent-11");
    assert_eq!(start["kubernetes"]["service_account"], "agent");
    assert_eq!(start["protocol"], "kubernetes");
    // replay names the pod the session came from.
    let session = listed["session_id"].as_str().unwrap();
    let replay = gw.cli(&["replay", session]).output().unwrap();
    let replay = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.contains("  pod:    team/agent-11 container app, service account agent"),
        "{replay}"
    );
    let checks: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "token_check")
        .collect();
    assert!(checks.iter().any(|c| c["outcome"] == "verified"));
    assert!(
        checks
            .iter()
            .any(|c| c["outcome"] == "identity_mismatch" && c["allowed"] == false)
    );
    // The refused request is a pair like any other, by the built-in rule `token-binding`.
    let refused = records
        .iter()
        .find(|r| r["kind"] == "kube_request" && r["policy"]["rule"] == "token-binding")
        .expect("the refused request is a kube_request");
    assert_eq!(refused["resource"], "secrets");
    assert!(records.iter().any(|r| r["kind"] == "kube_response"
        && r["session_id"] == refused["session_id"]
        && r["stream"] == refused["stream"]
        && r["code"] == 403
        && r["reason"] == "Forbidden"));
}

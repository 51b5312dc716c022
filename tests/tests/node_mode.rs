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
    _server: Proc,
    _server_pod: PodNetns,
}

/// The test API server, a node, and server-everything in its own pod behind Service
/// `team/tools`, whose cluster IP and EndpointSlice both lead to it.
fn cluster() -> Cluster {
    require_root();
    let api = ApiServer::start(&[]);
    let node = SimNode::create("node-sim");
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
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &server_pod.name,
            "env",
            &format!("PORT={port}"),
            "node",
        ])
        .arg(support_dir().join("node_modules/.bin/mcp-server-everything"))
        .arg("streamableHttp")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node and tests/support/node_modules (cargo xtask setup)");
    let server = Proc(server);
    wait_listening(format!("{}:{port}", server_pod.pod_ip).parse().unwrap());
    api.post(
        "/api/v1/namespaces/team/services",
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "tools"},
                "spec": {"clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
                         "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}]}}),
    );
    api.post(
        "/apis/discovery.k8s.io/v1/namespaces/team/endpointslices",
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "tools-1", "labels": {"kubernetes.io/service-name": "tools"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [server_pod.pod_ip], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}),
    );
    Cluster {
        api,
        node,
        port,
        _server: server,
        _server_pod: server_pod,
    }
}

impl Cluster {
    fn gateway(&self, fail_mode: &str) -> Gateway {
        Gateway::start_config(&format!(
            "fail_mode: {fail_mode}\nkubernetes:\n  kubeconfig: {}\n  node_name: {}\n  pod_proxy_address: {}\n  selections:\n\
             \x20   - name: agents\n      pods: {{matchLabels: {{app: agent}}}}\n      namespaces: {{matchLabels: {{interlock.dev/selected: \"true\"}}}}\n      targets: [tools]\n\
             targets:\n  - name: tools\n    service: team/tools\n    port: {}\n    protocol: mcp\n",
            self.api.kubeconfig.display(),
            self.node.name,
            self.node.node_ip,
            self.port
        ))
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

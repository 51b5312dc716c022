//! The test Kubernetes API server speaks the real wire protocol: kubectl 1.30 and 1.37 and the
//! official Python client list, watch and read Status errors from it over TLS (h2 by ALPN),
//! and the service-account tokens it mints verify against its own discovery document and JWKS
//! with PyJWT, and authenticate only while the objects they are bound to exist.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use interlock_e2e::{
    Proc,
    apiserver::{ApiServer, json_of, kube_python, kubectl_130, kubectl_137},
    support_dir,
};
use serde_json::{Value, json};

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl prints `get -w` rows as they come; this collects them on a channel.
fn watch_rows(server: &ApiServer, kubectl: &std::path::Path) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args(["get", "pods", "-n", "team", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Proc(child), rx)
}

fn next_row(rows: &mpsc::Receiver<String>, server: &ApiServer) -> String {
    rows.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("no watch row in 10 s; server log:\n{}", server.log()))
}

#[test]
fn kubectl_1_30_and_1_37_get_watch_and_read_raw_paths_over_h2() {
    let server = ApiServer::start(&[]);
    for kubectl in [kubectl_130(), kubectl_137()] {
        let version = stdout(&server.kubectl(&kubectl, &["version", "-o", "json"]));
        let version: Value = serde_json::from_str(&version).unwrap();
        assert_eq!(
            version["serverVersion"]["gitVersion"],
            "v1.33.0-interlock-testserver"
        );

        // Server-side printing: the columns come from the server's Table.
        let pods = stdout(&server.kubectl(&kubectl, &["get", "pods", "-A", "-l", "app=web"]));
        let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["NAMESPACE", "NAME", "STATUS", "NODE", "CREATED", "AT"]
        );
        assert!(
            pods.contains("web") && pods.contains("node-1") && !pods.contains("db"),
            "{pods}"
        );
        let on_node = stdout(&server.kubectl(
            &kubectl,
            &[
                "get",
                "pods",
                "-n",
                "team",
                "--field-selector",
                "spec.nodeName=node-2",
                "-o",
                "name",
            ],
        ));
        assert_eq!(on_node.trim(), "pod/db");

        let raw: Value = serde_json::from_str(&stdout(&server.kubectl(
            &kubectl,
            &["get", "--raw", "/api/v1/namespaces/team/pods/web"],
        )))
        .unwrap();
        assert_eq!(
            (raw["kind"].as_str(), raw["spec"]["nodeName"].as_str()),
            (Some("Pod"), Some("node-1"))
        );
        assert!(
            raw["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| u.len() == 36)
        );

        let missing = server.kubectl(&kubectl, &["get", "pod", "-n", "team", "missing"]);
        assert_eq!(
            String::from_utf8_lossy(&missing.stderr).trim(),
            "Error from server (NotFound): pods \"missing\" not found"
        );
        let bad = server.kubectl(
            &kubectl,
            &["get", "pods", "--field-selector", "spec.hostname=x"],
        );
        assert!(
            String::from_utf8_lossy(&bad.stderr)
                .contains("field label not supported: spec.hostname")
        );

        // A watch sees the current pods, then a pod created and deleted through the API.
        let (_watch, rows) = watch_rows(&server, &kubectl);
        let first = next_row(&rows, &server);
        assert!(first.starts_with("EVENT"), "{first}");
        let mut initial = [next_row(&rows, &server), next_row(&rows, &server)];
        initial.sort();
        assert!(
            initial[0].starts_with("ADDED") && initial[0].contains(" db "),
            "{initial:?}"
        );
        assert!(
            initial[1].starts_with("ADDED") && initial[1].contains(" web "),
            "{initial:?}"
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "watched"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        server.post("/api/v1/namespaces/team/pods", &pod);
        let added = next_row(&rows, &server);
        assert!(
            added.starts_with("ADDED") && added.contains("watched"),
            "{added}"
        );
        stdout(&server.kubectl(&kubectl, &["delete", "pod", "-n", "team", "watched"]));
        let deleted = next_row(&rows, &server);
        assert!(
            deleted.starts_with("DELETED") && deleted.contains("watched"),
            "{deleted}"
        );
    }
    // client-go negotiates h2 by ALPN, as it does with a real API server.
    let requests = server.requests();
    let versions: Vec<&str> = requests
        .iter()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert!(
        !versions.is_empty() && versions.iter().all(|v| *v == "HTTP/2.0"),
        "{versions:?}"
    );
}

#[test]
fn the_python_client_lists_watches_with_bookmarks_and_gets_410_after_compaction() {
    let server = ApiServer::start(&["--bookmark-interval", "0.5s"]);
    let out = Command::new(kube_python())
        .arg(support_dir().join("kube_client.py"))
        .arg(&server.kubeconfig)
        .output()
        .expect("target/kube-peers (cargo xtask setup)");
    let out = json_of(&out);
    assert_eq!(out["web_pods"], json!(["web"]));
    assert_eq!(out["node_2_pods"], json!(["db"]));
    assert_eq!(out["missing"]["code"], 404);
    assert_eq!(out["missing"]["status"]["kind"], "Status");
    assert_eq!(out["missing"]["status"]["reason"], "NotFound");
    assert_eq!(
        out["missing"]["status"]["details"],
        json!({"name": "missing", "kind": "pods"})
    );

    let events: Vec<(String, String)> = serde_json::from_value(out["watch"].clone()).unwrap();
    let changes: Vec<(&str, &str)> = events
        .iter()
        .filter(|(kind, _)| kind != "BOOKMARK")
        .map(|(kind, name)| (kind.as_str(), name.as_str()))
        .collect();
    // The relabel moved py-pod out of app=web, so this watch saw it leave, not its deletion.
    assert_eq!(changes, [("ADDED", "py-pod"), ("DELETED", "py-pod")]);
    let bookmarks: Vec<u64> = events
        .iter()
        .filter(|(kind, _)| kind == "BOOKMARK")
        .map(|(_, rv)| rv.parse().unwrap())
        .collect();
    assert!(
        !bookmarks.is_empty(),
        "no bookmark in 4 s at a 0.5 s interval: {events:?}"
    );
    assert!(bookmarks.windows(2).all(|w| w[0] <= w[1]), "{bookmarks:?}");
    assert_eq!(out["expired"], json!({"code": 410, "reason": "Expired"}));
}

/// PyJWT's verdict on a token, with the server's discovery document and JWKS.
fn verify(server: &ApiServer, audience: &str, token: &str) -> Result<Value, String> {
    let out = Command::new("python3")
        .arg(support_dir().join("verify_token.py"))
        .args([&server.url, server.ca.to_str().unwrap(), audience, token])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(serde_json::from_str(&text).unwrap())
    } else {
        Err(text)
    }
}

fn token_request(server: &ApiServer, sa: &str, body: Value) -> std::process::Output {
    server.post_as(
        None,
        &format!("/api/v1/namespaces/team/serviceaccounts/{sa}/token"),
        &body,
    )
}

/// `kubectl get --raw PATH` with `token` instead of the admin's.
fn get_with(server: &ApiServer, token: &str, path: &str) -> std::process::Output {
    server.kubectl(&kubectl_137(), &["get", "--raw", path, "--token", token])
}

#[test]
fn service_account_tokens_verify_against_the_jwks_and_authenticate_while_bound() {
    let server = ApiServer::start(&[
        "--issuer",
        "https://oidc.eks.eu-west-1.amazonaws.com/id/TESTCLUSTER",
    ]);
    let pod = server.get("/api/v1/namespaces/team/pods/web");
    let sa = server.get("/api/v1/namespaces/team/serviceaccounts/agent");
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["https://oidc.eks.eu-west-1.amazonaws.com/id/TESTCLUSTER", "mcp.example"],
                 "expirationSeconds": 3600,
                 "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web", "uid": pod["metadata"]["uid"]}},
    });
    let minted = json_of(&token_request(&server, "agent", request.clone()));
    assert_eq!(minted["kind"], "TokenRequest");
    let token = minted["status"]["token"].as_str().unwrap().to_string();

    let verified = verify(&server, "mcp.example", &token).expect("PyJWT verifies the bound token");
    assert_eq!(verified["header"]["alg"], "RS256");
    let claims = &verified["claims"];
    assert_eq!(
        claims["iss"],
        "https://oidc.eks.eu-west-1.amazonaws.com/id/TESTCLUSTER"
    );
    assert_eq!(claims["sub"], "system:serviceaccount:team:agent");
    let k8s = &claims["kubernetes.io"];
    assert_eq!(k8s["namespace"], "team");
    assert_eq!(
        k8s["pod"],
        json!({"name": "web", "uid": pod["metadata"]["uid"]})
    );
    assert_eq!(
        k8s["serviceaccount"],
        json!({"name": "agent", "uid": sa["metadata"]["uid"]})
    );
    assert_eq!(k8s["node"]["name"], "node-1");
    for claim in ["exp", "nbf", "iat", "jti"] {
        assert!(!claims[claim].is_null(), "{claim} missing: {claims}");
    }
    assert!(
        verify(&server, "someone-else", &token)
            .unwrap_err()
            .contains("InvalidAudienceError")
    );

    // The token is the pod's identity at the API server: it reads, it may not write, and it
    // stops working when the pod is gone.
    let pods = json_of(&get_with(&server, &token, "/api/v1/namespaces/team/pods"));
    assert_eq!(pods["kind"], "PodList");
    let denied = server.post_as(
        Some(&token),
        "/api/v1/namespaces/team/pods",
        &json!({"metadata": {"name": "x"}}),
    );
    let denied = String::from_utf8_lossy(&denied.stderr);
    assert!(
        denied.contains("Forbidden") && denied.contains("system:serviceaccount:team:agent"),
        "{denied}"
    );
    let too_short = token_request(&server, "agent", json!({"spec": {"expirationSeconds": 60}}));
    assert!(
        String::from_utf8_lossy(&too_short.stderr)
            .contains("may not specify a duration less than 10 minutes")
    );
    let wrong_uid = token_request(
        &server,
        "agent",
        json!({"spec": {"boundObjectRef": {"kind": "Pod", "name": "web", "uid": "not-the-uid"}}}),
    );
    assert!(!wrong_uid.status.success());
    stdout(&server.kubectl(&kubectl_137(), &["delete", "pod", "-n", "team", "web"]));
    let revoked = get_with(&server, &token, "/api/v1/namespaces/team/pods");
    assert!(
        String::from_utf8_lossy(&revoked.stderr).contains("Unauthorized"),
        "a deleted pod's token still works"
    );

    // A legacy token is filled into its Secret by the token controller, and dies with it.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                        "metadata": {"name": "agent-legacy", "annotations": {"kubernetes.io/service-account.name": "agent"}}});
    let secret = server.post("/api/v1/namespaces/team/secrets", &secret);
    use base64::Engine;
    let legacy = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["token"].as_str().unwrap())
        .unwrap();
    let legacy = String::from_utf8(legacy).unwrap();
    let claims =
        &verify(&server, "legacy", &legacy).expect("PyJWT verifies the legacy token")["claims"];
    assert_eq!(claims["iss"], "kubernetes/serviceaccount");
    assert_eq!(
        claims["kubernetes.io/serviceaccount/secret.name"],
        "agent-legacy"
    );
    assert!(claims.get("exp").is_none() && claims.get("aud").is_none());
    assert!(
        get_with(&server, &legacy, "/api/v1/namespaces/team/pods")
            .status
            .success()
    );
    stdout(&server.kubectl(
        &kubectl_137(),
        &["delete", "secret", "-n", "team", "agent-legacy"],
    ));
    assert!(
        !get_with(&server, &legacy, "/api/v1/namespaces/team/pods")
            .status
            .success()
    );

    // Rotation: a new ES256 key is published beside the old one and signs from now on.
    let rotated = server.post("/testserver/rotate", &json!({"algorithm": "ES256"}));
    let jwks = server.get("/openid/v1/jwks");
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[1], rotated["kid"]);
    let fresh = json_of(&token_request(&server, "other", json!({"spec": {}})));
    let fresh = fresh["status"]["token"].as_str().unwrap();
    let verified = verify(
        &server,
        "https://oidc.eks.eu-west-1.amazonaws.com/id/TESTCLUSTER",
        fresh,
    )
    .unwrap();
    assert_eq!(
        (
            verified["header"]["alg"].as_str(),
            verified["header"]["kid"].as_str()
        ),
        (Some("ES256"), rotated["kid"].as_str())
    );
    assert!(
        verified["claims"]["kubernetes.io"].get("pod").is_none(),
        "an unbound token names no pod"
    );
}

#[test]
fn exec_over_websocket_runs_a_real_process_for_kubectl_and_the_python_client() {
    let server = ApiServer::start(&[]);
    for kubectl in [kubectl_130(), kubectl_137()] {
        let out = server.kubectl(
            &kubectl,
            &[
                "exec",
                "-n",
                "team",
                "web",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "out\n",
            "{}",
            kubectl.display()
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("err"), "{stderr}");
        assert_eq!(
            out.status.code(),
            Some(3),
            "the exit code from the error channel: {stderr}"
        );

        let mut cat = Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&server.kubeconfig)
            .args(["exec", "-i", "-n", "team", "web", "--", "cat"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        cat.stdin
            .take()
            .unwrap()
            .write_all(b"typed on stdin\n")
            .unwrap();
        let out = cat.wait_with_output().unwrap();
        assert_eq!(
            stdout(&out),
            "typed on stdin\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success());

        let out = server.kubectl(&kubectl, &["exec", "-n", "team", "missing", "--", "true"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("pods \"missing\" not found"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let exec_requests: Vec<Value> = server
        .requests()
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap_or_default().ends_with("/exec"))
        .collect();
    assert!(
        exec_requests.iter().all(|r| r["version"] == "HTTP/1.1"),
        "{exec_requests:?}"
    );

    let out = Command::new(kube_python())
        .arg(support_dir().join("kube_exec.py"))
        .args([server.kubeconfig.to_str().unwrap(), "team", "web"])
        .output()
        .unwrap();
    let out = json_of(&out);
    assert_eq!(out["stdout"], "out\n");
    assert_eq!(out["stderr"], "err\n");
    assert_eq!(out["returncode"], 3);
    assert_eq!(out["echoed"], "hello\n");
    assert_eq!(out["cat_returncode"], 0);
}

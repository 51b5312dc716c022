//! The API-server path on one box: kubectl and curl, run under `interlock wrap`, reach the
//! test API server through the gateway, which terminates their TLS with a leaf from the
//! interception CA and opens TLS again to the server, verified against the cluster's CA.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Output,
};

use base64::Engine as _;
use interlock_e2e::{apiserver::*, *};
use serde_json::Value;

struct Setup {
    api: ApiServer,
    gateway: Gateway,
    /// The cluster CA then the interception CA, as `interlock ca-bundle` prints them.
    bundle: PathBuf,
    token: String,
}

impl Setup {
    fn start() -> Setup {
        Setup::start_with("", "")
    }

    /// With more config (policy, approvals) before the target, and more keys for the target.
    fn start_with(extra_config: &str, target_keys: &str) -> Setup {
        Setup::start_trusting(extra_config, target_keys, None)
    }

    /// The gateway trusting `upstream_ca` for the API server instead of the cluster's CA.
    fn start_trusting(extra_config: &str, target_keys: &str, upstream_ca: Option<&Path>) -> Setup {
        require_root();
        let api = ApiServer::start(&[]);
        let address = api.url.trim_start_matches("https://").to_string();
        let key = api.dir.path().join("interception/ca.key");
        let mut gateway = Gateway::configure(&format!(
            "{extra_config}interception_ca:\n  key: {}\n  addresses: [127.0.0.1]\ntargets:\n  - name: kube\n    \
             address: \"{address}\"\n    protocol: kubernetes\n    upstream_ca: {}\n{target_keys}",
            key.display(),
            upstream_ca.unwrap_or(&api.ca).display()
        ));
        gateway.launch();
        let out = gateway
            .cli(&["ca-bundle", "--cluster-ca", api.ca.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bundle = api.dir.path().join("bundle.crt");
        fs::write(&bundle, &out.stdout).unwrap();
        let token = fs::read_to_string(api.dir.path().join("admin.token")).unwrap();
        Setup {
            api,
            gateway,
            bundle,
            token: token.trim().to_string(),
        }
    }

    /// A kubeconfig as a pod's in-cluster config reads: the server, the CA to trust, the
    /// token, and the name to ask TLS for, if not the address.
    fn kubeconfig(&self, name: &str, ca: &Path, server_name: Option<&str>) -> PathBuf {
        self.kubeconfig_as(name, ca, server_name, &format!("token: {}", self.token))
    }

    /// A kubeconfig whose user authenticates with `user` (its YAML keys, `; `-separated).
    fn kubeconfig_as(
        &self,
        name: &str,
        ca: &Path,
        server_name: Option<&str>,
        user: &str,
    ) -> PathBuf {
        let text = kubeconfig_text(&self.api.url, ca, server_name, user);
        let path = self.api.dir.path().join(name);
        fs::write(&path, text).unwrap();
        path
    }

    /// curl under `interlock wrap`, trusting the bundle, with the admin token from a file
    /// (a command line is recorded): `options`, then the server's `path`.
    fn wrapped_curl(&self, options: &[&str], path: &str) -> Output {
        let header = self.api.dir.path().join("authorization");
        fs::write(&header, format!("Authorization: Bearer {}\n", self.token)).unwrap();
        let header = format!("@{}", header.display());
        let url = format!("{}{path}", self.api.url);
        let mut command = vec!["curl", "-sS", "--cacert", self.bundle.to_str().unwrap()];
        command.extend(["-H", &header]);
        command.extend(options);
        command.push(&url);
        self.gateway.wrap(&command)
    }

    fn wrapped_kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let kubectl = kubectl_137();
        let mut command = vec![kubectl.to_str().unwrap(), "--kubeconfig"];
        command.push(kubeconfig.to_str().unwrap());
        command.extend(args);
        self.gateway.wrap(&command)
    }
}

fn pod_names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}/{}", p["metadata"]["namespace"], p["metadata"]["name"]))
        .collect();
    names.sort();
    names
}

#[test]
fn kubectl_and_curl_reach_the_api_server_through_terminated_and_reencrypted_tls() {
    let setup = Setup::start();
    let direct = pod_names(&json_of(
        &setup
            .api
            .kubectl(&kubectl_137(), &["get", "pods", "-A", "-o", "json"]),
    ));
    assert!(!direct.is_empty());

    // By address: kubectl sends no SNI, so the leaf names the address it dialled.
    let by_address = setup.kubeconfig("by-address", &setup.bundle, None);
    let out = setup.wrapped_kubectl(&by_address, &["get", "pods", "-A", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pod_names(&json_of(&out)), direct);

    // By name, as in-cluster clients dial kubernetes.default.svc: the SNI names the leaf and
    // is what the gateway asks the API server for.
    let by_name = setup.kubeconfig("by-name", &setup.bundle, Some("kubernetes.default.svc"));
    let out = setup.wrapped_kubectl(&by_name, &["get", "namespaces", "-o", "name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/team"));

    // An HTTP/1.1 client is spoken for in HTTP/1.1 upstream, as ALPN agreed with it.
    let out = setup.wrapped_curl(&["--fail", "--http1.1"], "/api/v1/namespaces/team/pods");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_of(&out)["kind"], "PodList");

    let requests = setup.api.requests();
    let version_of = |path: &str| {
        requests
            .iter()
            .filter(|r| r["path"] == path)
            .map(|r| r["version"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    // The direct kubectl and the one through the gateway: both HTTP/2 at the server.
    assert_eq!(version_of("/api/v1/pods"), ["HTTP/2.0", "HTTP/2.0"]);
    assert_eq!(version_of("/api/v1/namespaces/team/pods"), ["HTTP/1.1"]);

    // Recorded as the client spoke, with the token redacted.
    let records = setup.gateway.records_once_ended();
    let heads: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "http_request")
        .collect();
    let pods = heads
        .iter()
        .find(|r| r["uri"].as_str().unwrap().contains("/api/v1/pods"))
        .expect("the LIST of pods is recorded");
    assert_eq!(pods["version"], "HTTP/2.0");
    assert!(
        pods["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "authorization" && h[1] == "[REDACTED]")
    );
    assert!(heads.iter().any(|r| r["version"] == "HTTP/1.1"));
    let starts: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "session_start")
        .collect();
    assert_eq!(starts.len(), 3);
    assert!(starts.iter().all(|s| s["protocol"] == "kubernetes"));
    let everything = serde_json::to_string(&records).unwrap();
    assert!(
        !everything.contains(&setup.token),
        "the bearer token is in the records"
    );
}

#[test]
fn a_client_that_does_not_trust_the_interception_ca_fails_cleanly_and_is_recorded() {
    let setup = Setup::start();
    // The cluster's CA alone, as a pod not given the bundle has.
    let untrusting = setup.kubeconfig("untrusting", &setup.api.ca, None);
    let out = setup.wrapped_kubectl(&untrusting, &["get", "namespaces"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certificate signed by unknown authority"),
        "{stderr}"
    );
    let ended = setup.gateway.wait_sessions_ended(1);
    assert!(
        ended
            .iter()
            .all(|s| s["outcome"] == "tls_rejected_by_client"),
        "{ended:?}"
    );
    // kubectl tries more than once; each attempt is counted.
    let rejected = setup.gateway.metric(
        "interlock_sessions_ended_total{target=\"kube\",outcome=\"tls_rejected_by_client\"}",
    );
    assert!(rejected >= Some(1.0), "{rejected:?}");
    let records = setup.gateway.records_once_ended();
    let end = records.iter().find(|r| r["kind"] == "session_end").unwrap();
    assert!(
        end["error"]
            .as_str()
            .unwrap()
            .contains("interlock ca-bundle"),
        "the record says what to do: {end}"
    );
    assert!(
        setup
            .gateway
            .log()
            .contains("TLS with the client failed; nothing was relayed"),
        "{}",
        setup.gateway.log()
    );
    // Nothing reached the server but the test's own look at its log.
    let requests = setup.api.requests();
    assert!(
        requests.iter().all(|r| r["path"] == "/testserver/requests"),
        "{requests:?}"
    );

    // The gateway serves the next client that does trust it.
    let trusting = setup.kubeconfig("trusting", &setup.bundle, None);
    let out = setup.wrapped_kubectl(&trusting, &["get", "namespaces", "-o", "name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client that authenticates with a certificate is refused with a Status that says why
    // and what to use instead: its certificate cannot pass the terminator.
    let dir = setup.api.dir.path();
    let (cert, key) = (dir.join("jane.crt"), dir.join("jane.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=jane/O=sre", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let with_certificate = setup.kubeconfig_as(
        "with-certificate",
        &setup.bundle,
        None,
        &format!(
            "client-certificate: {}; client-key: {}",
            cert.display(),
            key.display()
        ),
    );
    let before = setup.api.requests().len();
    let out = setup.wrapped_kubectl(&with_certificate, &["get", "namespaces"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Error from server (Forbidden): denied by Interlock policy rule `client-certificate`: this connection authenticates with a client certificate"),
        "{stderr}"
    );
    assert!(
        stderr.contains("authenticate with a bearer token instead"),
        "{stderr}"
    );
    // Only the test's own look at the log reached the server.
    assert_eq!(setup.api.requests().len(), before + 1);

    // A client asking for a name the CA may not certify gets no leaf at all.
    let out = setup.gateway.wrap(&[
        "curl",
        "-sS",
        "--cacert",
        setup.bundle.to_str().unwrap(),
        "--connect-to",
        &format!(
            "evil.example.com:443:{}",
            setup.api.url.trim_start_matches("https://")
        ),
        "https://evil.example.com/version",
    ]);
    assert!(!out.status.success());
    let log = setup.gateway.log();
    assert!(
        log.contains("evil.example.com, which the interception CA may not certify"),
        "{log}"
    );
}

/// What the API-server path's policy test configures: approvers from a local issuer, a hold
/// on namespace deletion and a denial of some Secrets.
fn held_and_denied(issuer: &OidcIssuer) -> String {
    format!(
        "approvals:\n  oidc:\n    issuer: {}\n    audience: interlock\n    allowed_groups: [sre]\n\
         policy:\n  default: allow\n  rules:\n\
         \x20   - name: namespace-deletes-need-a-human\n      match: {{ kube: {{ verb: delete, resource: namespaces }} }}\n      action: hold\n      reason: a namespace takes everything in it along\n\
         \x20   - name: no-break-glass-secrets\n      match: {{ kube: {{ verb: get, resource: secrets, name: \"break-glass-*\" }} }}\n      action: deny\n      reason: break-glass credentials are read in the vault only\n\
         \x20   - name: no-unmasked-streams\n      match: {{ kube: {{ upgrade: \"SPDY/*\" }} }}\n      action: deny\n      reason: SPDY exec output reaches the client unmasked; use kubectl 1.30 or later\n",
        issuer.url()
    )
}

impl Setup {
    /// kubectl under `interlock wrap`, in the background.
    fn spawn_wrapped_kubectl(&self, kubeconfig: &Path, args: &[&str]) -> std::process::Child {
        let kubectl = kubectl_137();
        let mut command = vec![kubectl.to_str().unwrap(), "--kubeconfig"];
        command.push(kubeconfig.to_str().unwrap());
        command.extend(args);
        self.gateway
            .wrap_cmd(None, &command)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The paths of the requests the server received with `method`.
    fn received(&self, method: &str) -> Vec<String> {
        self.api
            .requests()
            .iter()
            .filter(|r| r["method"] == method)
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect()
    }
}

#[test]
fn api_requests_are_recorded_as_operations_secrets_masked_and_risky_verbs_held_or_denied() {
    let issuer = OidcIssuer::start();
    let setup = Setup::start_with(&held_and_denied(&issuer), "");
    let kubeconfig = setup.kubeconfig("pod", &setup.bundle, Some("kubernetes.default.svc"));
    const PASSWORD: &str = "hunter2-correct-horse-battery";
    let encoded = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
    for name in ["db-creds", "break-glass-root"] {
        setup.api.post(
            "/api/v1/namespaces/team/secrets",
            &serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": "team"},
                "data": {"password": encoded},
            }),
        );
    }
    for name in ["doomed", "spared"] {
        setup.api.post(
            "/api/v1/namespaces",
            &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        );
    }

    // A Secret read: the client sees the value masked.
    let out = setup.wrapped_kubectl(
        &kubeconfig,
        &["get", "secret", "db-creds", "-n", "team", "-o", "json"],
    );
    let secret = json_of(&out);
    assert_eq!(secret["metadata"]["name"], "db-creds");
    let shown = secret["data"]["password"].as_str().unwrap();
    assert!(shown.starts_with("[MASKED:"), "{shown}");

    // kubectl apply keeps the object it applied, values included, in an annotation: that
    // copy is masked too, for the client and in the records.
    let manifest = setup.api.dir.path().join("applied.yaml");
    fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: applied\n  namespace: team\n\
             stringData:\n  password: {PASSWORD}\n"
        ),
    )
    .unwrap();
    let apply = || {
        let out = setup.wrapped_kubectl(
            &kubeconfig,
            &[
                "apply",
                "--validate=false",
                "-f",
                manifest.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    apply();
    let out = setup.wrapped_kubectl(
        &kubeconfig,
        &["get", "secret", "applied", "-n", "team", "-o", "json"],
    );
    let applied = json_of(&out);
    let annotation =
        &applied["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"];
    let copy: Value = serde_json::from_str(annotation.as_str().unwrap()).unwrap();
    let kept = copy["stringData"]["password"].as_str().unwrap();
    assert!(kept.starts_with("[MASKED:"), "{applied}");
    // Still JSON, so applying again through the gateway works.
    fs::write(
        &manifest,
        fs::read_to_string(&manifest)
            .unwrap()
            .replace("namespace: team", "namespace: team\n  labels: {tier: db}"),
    )
    .unwrap();
    apply();
    // A JSON Patch (an array of operations) of a Secret: each value masked where it lands.
    // (From a file: a value on kubectl's command line would be in the session's cmdline.)
    let operations = setup.api.dir.path().join("patch.json");
    fs::write(
        &operations,
        format!(r#"[{{"op":"replace","path":"/stringData/password","value":"{PASSWORD}"}}]"#),
    )
    .unwrap();
    let out = setup.wrapped_kubectl(
        &kubeconfig,
        &[
            "patch",
            "secret",
            "applied",
            "-n",
            "team",
            "--type=json",
            "--patch-file",
            operations.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A denied read: kubectl prints the Forbidden Status; the server never saw the request.
    let out = setup.wrapped_kubectl(
        &kubeconfig,
        &["get", "secret", "break-glass-root", "-n", "team"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Error from server (Forbidden): denied by Interlock policy rule `no-break-glass-secrets`: break-glass credentials are read in the vault only"),
        "{stderr}"
    );

    // A watch streams through: an event made after it started reaches kubectl while it runs.
    let mut watch = setup.spawn_wrapped_kubectl(
        &kubeconfig,
        &["get", "pods", "-n", "team", "-w", "-o", "name"],
    );
    let lines = {
        let stdout = watch.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let first = lines
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap();
    assert!(first.starts_with("pod/"), "{first}");
    setup.api.post(
        "/api/v1/namespaces/team/pods",
        &serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "watched-late", "namespace": "team"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the pod created during the watch reaches kubectl");
        if line == "pod/watched-late" {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();

    // Holds: approved, the deletion reaches the server; denied, kubectl prints why and the
    // server never sees it.
    let approver = issuer
        .mint(serde_json::json!({"sub": "alice", "email": "alice@example.com", "groups": ["sre"]}));
    for (namespace, verb, reason) in [
        ("doomed", "approve", "ticket 42"),
        ("spared", "deny", "not during the freeze"),
    ] {
        let client = setup.spawn_wrapped_kubectl(
            &kubeconfig,
            &["delete", "namespace", namespace, "--wait=false"],
        );
        let holds = setup.gateway.wait_holds(&approver, 1);
        assert_eq!(holds[0]["kube"]["verb"], "delete");
        assert_eq!(holds[0]["kube"]["resource"], "namespaces");
        assert_eq!(holds[0]["kube"]["name"], namespace);
        assert!(setup.received("DELETE").is_empty() || verb == "deny");
        let hold_id = holds[0]["hold_id"].as_str().unwrap();
        let decided = setup
            .gateway
            .approvals_cli(&approver, &[verb, hold_id, "--reason", reason]);
        assert!(
            decided.status.success(),
            "{}",
            String::from_utf8_lossy(&decided.stderr)
        );
        let out = client.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if verb == "approve" {
            assert!(out.status.success(), "{stderr}");
        } else {
            assert!(!out.status.success());
            assert!(
                stderr.contains("Error from server (Forbidden): held by Interlock policy rule `namespace-deletes-need-a-human` and denied by alice@example.com: not during the freeze"),
                "{stderr}"
            );
        }
    }
    assert_eq!(setup.received("DELETE"), ["/api/v1/namespaces/doomed"]);
    assert!(
        !setup
            .received("GET")
            .iter()
            .any(|p| p.contains("break-glass")),
        "the denied read reached the server"
    );

    // An exec over SPDY (as kubectl before 1.30 made it) is denied by the rule on its upgrade.
    let kubectl = kubectl_137();
    let out = setup
        .gateway
        .wrap_cmd(
            None,
            &[
                kubectl.to_str().unwrap(),
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "exec",
                "-n",
                "team",
                "web",
                "--",
                "true",
            ],
        )
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("use kubectl 1.30 or later"), "{stderr}");
    assert!(
        !setup
            .received("GET")
            .iter()
            .chain(&setup.received("POST"))
            .any(|p| p.ends_with("/exec")),
        "the SPDY exec reached the server"
    );

    // Impersonation headers are recorded with the request (the API server decides whether
    // the caller may; this one ignores them).
    let out = setup.wrapped_kubectl(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-n",
            "team",
            "--as",
            "jane",
            "--as-group",
            "sre",
            "-o",
            "name",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client that offers protobuf is answered in JSON, which the gateway can read and mask.
    let out = setup.wrapped_curl(
        &[
            "--fail",
            "-H",
            "Accept: application/vnd.kubernetes.protobuf, application/json",
        ],
        "/api/v1/namespaces/team/secrets",
    );
    let list = json_of(&out);
    assert_eq!(list["kind"], "SecretList");
    // (This server keeps an applied Secret's stringData as it came.)
    assert!(list["items"].as_array().unwrap().iter().all(|s| {
        s["data"]["password"]
            .as_str()
            .or(s["stringData"]["password"].as_str())
            .unwrap()
            .starts_with("[MASKED:")
    }));
    let accepts: Vec<Value> = setup
        .api
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/api/v1/namespaces/team/secrets" && r["method"] == "GET")
        .map(|r| r["accept"].clone())
        .collect();
    assert_eq!(accepts, ["application/json"]);

    // Every request is a kube_request with its kube_response, by stream, in its session.
    let records = setup.gateway.records_once_ended();
    let of_kind =
        |kind: &str| -> Vec<&Value> { records.iter().filter(|r| r["kind"] == kind).collect() };
    let (requests, responses) = (of_kind("kube_request"), of_kind("kube_response"));
    let answer_to = |request: &Value| -> Value {
        responses
            .iter()
            .find(|r| r["session_id"] == request["session_id"] && r["stream"] == request["stream"])
            .map(|r| (*r).clone())
            .unwrap_or_else(|| {
                let session: Vec<String> = records
                    .iter()
                    .filter(|r| r["session_id"] == request["session_id"])
                    .map(|r| format!("{} {}", r["kind"], r["stream"]))
                    .collect();
                panic!("no kube_response for {request} in {session:?}")
            })
    };
    let find = |verb: &str, resource: &str, name: Option<&str>| -> &Value {
        requests
            .iter()
            .find(|r| {
                r["verb"] == verb
                    && r["resource"] == resource
                    && name.is_none_or(|n| r["name"] == n)
            })
            .unwrap_or_else(|| panic!("no kube_request {verb} {resource} {name:?} in {requests:?}"))
    };
    let read = find("get", "secrets", Some("db-creds"));
    assert_eq!(read["namespace"], "team");
    assert_eq!(read["api_version"], "v1");
    assert_eq!(read["policy"]["action"], "allow");
    let answer = answer_to(read);
    assert_eq!(answer["code"], 200);
    assert_eq!(answer["object_kind"], "Secret");
    assert_eq!(answer["name"], "db-creds");
    assert!(answer["resource_version"].is_string());
    let denied = find("get", "secrets", Some("break-glass-root"));
    assert_eq!(denied["policy"]["action"], "deny");
    let answer = answer_to(denied);
    assert_eq!(answer["code"], 403);
    assert_eq!(answer["reason"], "Forbidden");
    assert_eq!(answer["generated_by_gateway"], true);
    let watched = find("watch", "pods", None);
    assert!(answer_to(watched)["events"].as_u64().unwrap() >= 1);
    let held = find("delete", "namespaces", Some("doomed"));
    assert_eq!(held["policy"]["action"], "hold");
    assert_eq!(answer_to(held)["code"], 200);
    assert_eq!(
        answer_to(find("delete", "namespaces", Some("spared")))["code"],
        403
    );
    assert_eq!(answer_to(find("list", "secrets", None))["items"], 3);
    // The second apply patched the Secret: a body that names no kind, masked as a Secret's.
    assert_eq!(
        answer_to(find("patch", "secrets", Some("applied")))["code"],
        200
    );
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "hold_decided" && r["outcome"] == "approved")
    );
    let spdy = requests
        .iter()
        .find(|r| r["upgrade"] == "SPDY/3.1")
        .expect("the SPDY exec is a kube_request");
    assert_eq!(spdy["policy"]["rule"], "no-unmasked-streams");
    assert_eq!(spdy["subresource"], "exec");
    let impersonating = requests
        .iter()
        .find(|r| r["impersonate"]["user"] == "jane")
        .expect("the impersonating list is recorded with whom it impersonates");
    assert_eq!(
        impersonating["impersonate"]["groups"],
        serde_json::json!(["sre"])
    );
    assert_eq!(impersonating["verb"], "list");
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "hold_decided" && r["outcome"] == "denied")
    );

    // replay shows the operations as RBAC reads them.
    let session = read["session_id"].as_str().unwrap();
    let out = setup.gateway.cli(&["replay", session]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = format!("kube [{}] get secrets team/db-creds", read["stream"]);
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("-> 200 Secret db-creds in "), "{text}");

    // The JSON Patch went into the record masked, still a patch.
    let patch_sessions: Vec<&Value> = requests
        .iter()
        .filter(|r| r["verb"] == "patch" && r["name"] == "applied")
        .map(|r| &r["session_id"])
        .collect();
    let operations = records
        .iter()
        .filter(|r| r["kind"] == "data" && r["direction"] == "up")
        .filter(|r| patch_sessions.contains(&&r["session_id"]))
        .filter_map(|r| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str()?)
                .ok()?;
            serde_json::from_slice::<Value>(&data).ok()
        })
        .find(Value::is_array)
        .expect("the JSON Patch's body is recorded");
    assert_eq!(operations[0]["path"], "/stringData/password");
    assert!(
        operations[0]["value"]
            .as_str()
            .unwrap()
            .starts_with("[MASKED:"),
        "{operations}"
    );
    // Nothing the gateway wrote holds the password, in any form it could be stored in.
    let mut files = Vec::new();
    all_bytes(setup.gateway.dir.path(), &mut files);
    for form in stored_forms(PASSWORD).iter().chain([&encoded]) {
        for (path, bytes) in &files {
            assert!(
                !contains(bytes, form),
                "{path} holds the Secret's value ({form})"
            );
        }
    }
}

#[test]
fn exec_is_recorded_by_channel_masked_and_plays_back_as_asciicast() {
    let setup = Setup::start();
    let kubeconfig = setup.kubeconfig("pod", &setup.bundle, Some("kubernetes.default.svc"));
    const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    // stdin in, stdout and stderr out, and a non-zero exit code on the error channel.
    let script = format!("read line; echo \"got $line\"; echo {AWS_KEY}; echo oops >&2; exit 3");
    let mut child = setup
        .gateway
        .wrap_cmd(
            None,
            &[
                kubectl_137().to_str().unwrap(),
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "exec",
                "-i",
                "-n",
                "team",
                "web",
                "--",
                "sh",
                "-c",
                &script,
            ],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"typed-by-the-pod\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // kubectl passes the remote exit code through.
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("got typed-by-the-pod"), "{stdout}");
    assert!(stdout.contains("[MASKED:aws_access_key_id]"), "{stdout}");
    assert!(!stdout.contains(AWS_KEY));
    assert!(stderr.contains("oops"), "{stderr}");

    let records = setup.gateway.records_once_ended();
    let exec = records
        .iter()
        .find(|r| r["kind"] == "kube_request" && r["subresource"] == "exec")
        .expect("the exec is a kube_request");
    assert_eq!(exec["verb"], "connect");
    // The command line is recorded masked, as every record is.
    let recorded_script = script.replace(AWS_KEY, "[MASKED:aws_access_key_id]");
    assert_eq!(
        exec["command"],
        serde_json::json!(["sh", "-c", recorded_script])
    );
    let channel = |name: &str| -> String {
        records
            .iter()
            .filter(|r| {
                r["kind"] == "kube_channel"
                    && r["session_id"] == exec["session_id"]
                    && r["stream"] == exec["stream"]
                    && r["channel"] == name
            })
            .map(|r| {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(r["data"].as_str().unwrap())
                    .unwrap();
                String::from_utf8(data).unwrap()
            })
            .collect()
    };
    assert!(channel("stdin").contains("typed-by-the-pod"));
    assert!(channel("stdout").contains("got typed-by-the-pod\n[MASKED:aws_access_key_id]"));
    assert!(channel("stderr").contains("oops"));
    let status: Value = serde_json::from_str(&channel("error")).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    let upgraded = records
        .iter()
        .find(|r| {
            r["kind"] == "kube_response"
                && r["session_id"] == exec["session_id"]
                && r["stream"] == exec["stream"]
        })
        .unwrap();
    assert_eq!(upgraded["code"], 101);

    // Exported as asciicast v2, it plays in asciinema with the typed line and the output.
    let session = exec["session_id"].as_str().unwrap();
    let out = setup
        .gateway
        .cli(&["replay", "--asciicast", session])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cast = String::from_utf8(out.stdout).unwrap();
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["interlock"]["pod"], "web");
    assert_eq!(header["interlock"]["namespace"], "team");
    assert_eq!(header["command"], format!("sh -c {recorded_script}"));
    assert!(
        cast.lines()
            .skip(1)
            .any(|l| l.contains("\"i\"") && l.contains("typed-by-the-pod"))
    );
    let file = setup.api.dir.path().join("exec.cast");
    fs::write(&file, &cast).unwrap();
    let played = std::process::Command::new(asciinema())
        .arg("cat")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        played.status.success(),
        "{}",
        String::from_utf8_lossy(&played.stderr)
    );
    let played = String::from_utf8_lossy(&played.stdout);
    assert!(played.contains("got typed-by-the-pod"), "{played}");
    assert!(played.contains("oops"), "{played}");

    // Nothing the gateway wrote holds the key.
    let mut files = Vec::new();
    all_bytes(setup.gateway.dir.path(), &mut files);
    for form in stored_forms(AWS_KEY) {
        for (path, bytes) in &files {
            assert!(!contains(bytes, &form), "{path} holds the key ({form})");
        }
    }
}

#[test]
fn bad_input_on_the_api_server_path_gets_a_clear_answer_and_the_next_request_is_served() {
    let setup = Setup::start_with("", "    max_body_bytes: 64KiB\n");
    let kubeconfig = setup.kubeconfig("pod", &setup.bundle, Some("kubernetes.default.svc"));
    let token_file = setup.api.dir.path().join("token");
    fs::write(&token_file, &setup.token).unwrap();
    let address = setup.api.url.trim_start_matches("https://").to_string();
    let rude = |scenario: &str| -> Value {
        let client = interlock_e2e::probe_bin().with_file_name("kube-rude-client");
        let out = setup.gateway.wrap(&[
            client.to_str().unwrap(),
            scenario,
            &address,
            "--ca",
            setup.bundle.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{scenario}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // Bytes that are no HTTP, after a good handshake: a 400, and the connection closes.
    let garbage = rude("garbage");
    assert!(
        garbage["answer"]
            .as_str()
            .unwrap()
            .starts_with("HTTP/1.1 400"),
        "{garbage}"
    );
    assert_eq!(garbage["closed"], true);

    // An HTTP/2 body reset mid-way: the stream is gone, the connection serves the next one.
    let reset = rude("h2-reset");
    assert_eq!(reset["next_status"], 200, "{reset}");
    assert!(reset["next_body"]["gitVersion"].is_string(), "{reset}");
    let created = setup.api.requests();
    assert!(
        !created
            .iter()
            .any(|r| r["method"] == "POST" && r["path"] == "/api/v1/namespaces/team/configmaps"),
        "the reset create reached the server: {created:?}"
    );

    // A WebSocket frame claiming 2^63 bytes: the exec stream ends, nothing more.
    let websocket = rude("ws-bad-length");
    assert_eq!(websocket["upgraded"], 101, "{websocket}");
    assert_eq!(websocket["closed"], true, "{websocket}");

    // SPDY that cannot be read: relayed and recorded as bytes from there on, until it ends.
    let spdy = rude("spdy-garbage");
    assert_eq!(spdy["upgraded"], true, "{spdy}");
    assert_eq!(spdy["closed"], true, "{spdy}");
    let records = setup.gateway.records_once_ended();
    let forward = records
        .iter()
        .find(|r| r["kind"] == "kube_request" && r["subresource"] == "portforward")
        .expect("the port-forward is a kube_request");
    let unread: Vec<u8> = records
        .iter()
        .filter(|r| r["kind"] == "data" && r["session_id"] == forward["session_id"])
        .filter_map(|r| {
            base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str()?)
                .ok()
        })
        .flatten()
        .collect();
    assert!(
        contains(&unread, "this is not SPDY"),
        "the unread bytes are recorded"
    );

    // A body over max_body_bytes: a Status kubectl prints, and nothing reaches the server.
    let big = setup.api.dir.path().join("big.json");
    let data = base64::engine::general_purpose::STANDARD.encode("x".repeat(100 << 10));
    fs::write(
        &big,
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "big", "namespace": "team"}, "data": {"blob": data}})
        .to_string(),
    )
    .unwrap();
    let out = setup.wrapped_kubectl(
        &kubeconfig,
        &["create", "-f", big.to_str().unwrap(), "--validate=false"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Error from server (RequestEntityTooLarge)"),
        "{stderr}"
    );
    assert!(stderr.contains("max_body_bytes"), "{stderr}");

    // A malformed Status from upstream reaches the client as it was, and is recorded.
    let out = setup.wrapped_curl(&["-w", "\n%{http_code}"], "/testserver/malformed-status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n500"), "{text}");
    assert!(text.contains(r#""message":"cut o"#), "{text}");

    // And the gateway serves the next client as if nothing happened.
    let out = setup.wrapped_kubectl(&kubeconfig, &["get", "namespaces", "-o", "name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/team"));
    let log = setup.gateway.log();
    assert!(!log.contains("panicked"), "{log}");
    let records = setup.gateway.records_once_ended();
    let malformed = records
        .iter()
        .find(|r| r["kind"] == "kube_response" && r["code"] == 500)
        .expect("the malformed answer is a kube_response");
    assert!(malformed.get("object_kind").is_none(), "{malformed}");
    let ended: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "session_end")
        .collect();
    assert!(
        ended.iter().any(|e| e["outcome"] == "error"
            && e["error"]
                .as_str()
                .unwrap_or_default()
                .contains("WebSocket with the client")),
        "{ended:?}"
    );
}

#[test]
fn two_hundred_watches_through_one_gateway_each_see_an_event_as_it_happens() {
    let setup = Setup::start();
    let token_file = setup.api.dir.path().join("token");
    fs::write(&token_file, &setup.token).unwrap();
    let address = setup.api.url.trim_start_matches("https://").to_string();
    let watchers = interlock_e2e::probe_bin().with_file_name("kube-watchers");
    let mut child = setup
        .gateway
        .wrap_cmd(
            None,
            &[
                watchers.to_str().unwrap(),
                &address,
                "--ca",
                setup.bundle.to_str().unwrap(),
                "--token-file",
                token_file.to_str().unwrap(),
                "--watches",
                "200",
                "--expect",
                "seen-by-all",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let open = setup
        .gateway
        .metric("interlock_sessions_active")
        .unwrap_or_default();
    assert!(open >= 200.0, "{open} sessions open");
    setup.api.post(
        "/api/v1/namespaces/team/pods",
        &serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "seen-by-all", "namespace": "team"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    );
    let report: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(report["watches"], 200, "{report}");
    assert_eq!(report["saw"], 200, "{report}");
    let _ = child.kill();
    let _ = child.wait();
    // Every watch was its own recorded session, each ended once its client went.
    let ended = setup.gateway.wait_sessions_ended(200);
    assert!(ended.len() >= 200);
}

#[test]
fn the_python_client_lists_watches_and_execs_through_the_gateway() {
    let setup = Setup::start();
    let kubeconfig = setup.kubeconfig("python", &setup.bundle, None);
    let python = kube_python();
    let run = |script: &str, args: &[&str]| -> Value {
        let script = support_dir().join(script);
        let mut command = vec![python.to_str().unwrap(), script.to_str().unwrap()];
        command.extend(args);
        json_of(&setup.gateway.wrap(&command))
    };
    let listed = run("kube_client.py", &[kubeconfig.to_str().unwrap()]);
    assert_eq!(listed["web_pods"], serde_json::json!(["web"]));
    assert_eq!(listed["missing"]["status"]["reason"], "NotFound");
    let changes: Vec<Value> = listed["watch"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e[0] != "BOOKMARK")
        .cloned()
        .collect();
    assert_eq!(
        changes,
        [
            serde_json::json!(["ADDED", "py-pod"]),
            serde_json::json!(["DELETED", "py-pod"])
        ]
    );
    assert_eq!(
        listed["expired"],
        serde_json::json!({"code": 410, "reason": "Expired"})
    );

    let exec = run(
        "kube_exec.py",
        &[kubeconfig.to_str().unwrap(), "team", "web"],
    );
    assert_eq!(exec["stdout"], "out\n");
    assert_eq!(exec["stderr"], "err\n");
    assert_eq!(exec["returncode"], 3);
    assert_eq!(exec["echoed"], "hello\n");

    let records = setup.gateway.records_once_ended();
    let kube: Vec<(String, String)> = records
        .iter()
        .filter(|r| r["kind"] == "kube_request")
        .map(|r| {
            let resource = r["resource"].as_str().unwrap_or_default();
            let sub = r["subresource"]
                .as_str()
                .map(|s| format!("/{s}"))
                .unwrap_or_default();
            (
                r["verb"].as_str().unwrap().to_string(),
                format!("{resource}{sub}"),
            )
        })
        .collect();
    for expected in [
        ("list", "pods"),
        ("watch", "pods"),
        ("create", "pods"),
        ("patch", "pods"),
        ("delete", "pods"),
        ("connect", "pods/exec"),
    ] {
        assert!(
            kube.iter()
                .any(|(v, r)| (v.as_str(), r.as_str()) == expected),
            "{expected:?} not in {kube:?}"
        );
    }
    let stdin: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "kube_channel" && r["channel"] == "stdin")
        .collect();
    // The Python client writes stdin as text messages, channel byte first.
    assert!(!stdin.is_empty(), "the Python client's stdin is recorded");
}

#[test]
fn kube_rs_lists_watches_and_execs_through_the_gateway() {
    let setup = Setup::start();
    let kubeconfig = setup.kubeconfig("kube-rs", &setup.bundle, None);
    let client = interlock_e2e::probe_bin().with_file_name("kube-rs-client");
    let out = setup
        .gateway
        .wrap(&[client.to_str().unwrap(), kubeconfig.to_str().unwrap()]);
    let report = json_of(&out);
    assert!(
        report["listed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "web"),
        "{report}"
    );
    assert!(report["web_uid"].is_string());
    assert_eq!(report["watch_saw_created"], true, "{report}");
    assert_eq!(report["exec_stdout"], "from kube-rs\n");
    assert_eq!(report["exec_status"], "Success");
    let records = setup.gateway.records_once_ended();
    let verbs: Vec<&str> = records
        .iter()
        .filter(|r| r["kind"] == "kube_request")
        .filter_map(|r| r["verb"].as_str())
        .collect();
    for verb in ["list", "get", "watch", "create", "delete", "connect"] {
        assert!(verbs.contains(&verb), "{verb} not in {verbs:?}");
    }
}

#[test]
fn an_interactive_exec_through_a_real_terminal_is_recorded_and_plays_back() {
    let setup = Setup::start();
    let kubeconfig = setup.kubeconfig("tty", &setup.bundle, Some("kubernetes.default.svc"));
    let kubectl = kubectl_137();
    let interlock = interlock_bin();
    let driver = support_dir().join("kube_tty.py");
    let config = setup.gateway.config.to_str().unwrap().to_string();
    let out = std::process::Command::new("python3")
        .arg(&driver)
        .args([
            interlock.to_str().unwrap(),
            "wrap",
            "--config",
            &config,
            "--",
        ])
        .arg(&kubectl)
        .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
        .args(["exec", "-it", "-n", "team", "web", "--", "sh"])
        .output()
        .unwrap();
    let seen = json_of(&out);
    assert_eq!(seen["prompt"], true, "{seen}");
    // The terminal's size reached the pod's terminal through a resize message.
    assert_eq!(seen["size"], true, "{seen}");
    assert_eq!(seen["typed"], true, "{seen}");
    assert_eq!(seen["exit"], 5, "{seen}");

    let records = setup.gateway.records_once_ended();
    let exec = records
        .iter()
        .find(|r| r["kind"] == "kube_request" && r["subresource"] == "exec")
        .unwrap();
    assert_eq!(exec["tty"], true);
    let session = exec["session_id"].as_str().unwrap();
    let out = setup
        .gateway
        .cli(&["replay", "--asciicast", session])
        .output()
        .unwrap();
    let cast = String::from_utf8(out.stdout).unwrap();
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(100), Some(30))
    );
    let events: Vec<Value> = cast
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let typed: String = events
        .iter()
        .filter(|e| e[1] == "i")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert!(typed.contains("echo typed-$((6*7))"), "{typed:?}");
    assert!(
        events.iter().any(|e| e[1] == "r" && e[2] == "100x30"),
        "{events:?}"
    );
    let file = setup.api.dir.path().join("tty.cast");
    fs::write(&file, &cast).unwrap();
    let played = std::process::Command::new(asciinema())
        .arg("cat")
        .arg(&file)
        .output()
        .unwrap();
    let played = String::from_utf8_lossy(&played.stdout);
    assert!(played.contains("typed-42"), "{played}");
}

/// A "pod" port for port-forward: the test API server forwards a pod's port to this host's
/// loopback port of the same number. Each connection gets one line back, with an AWS key.
fn pong_server(key: &'static str) -> u16 {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(mut connection) = connection else {
                return;
            };
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = std::io::BufReader::new(connection.try_clone().unwrap());
                if reader.read_line(&mut line).is_ok() {
                    let _ = writeln!(connection, "pong {} {key}", line.trim());
                }
            });
        }
    });
    port
}

/// Starts `kubectl port-forward` under wrap and returns it with the local port it listens on.
fn port_forward(
    setup: &Setup,
    kubectl: &Path,
    kubeconfig: &Path,
    port: u16,
) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let mut child = setup
        .gateway
        .wrap_cmd(
            None,
            &[
                kubectl.to_str().unwrap(),
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "port-forward",
                "-n",
                "team",
                "pod/web",
                &format!(":{port}"),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let local = lines
        .find_map(|line| {
            line.ok()?
                .strip_prefix("Forwarding from 127.0.0.1:")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("kubectl port-forward says where it listens");
    // kubectl logs each connection; read on so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, local)
}

/// One line through a forwarded local port, and the answer.
fn ask(local: u16, line: &str) -> String {
    use std::io::{Read, Write};
    let mut connection = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    connection
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    writeln!(connection, "{line}").unwrap();
    let mut answer = String::new();
    let _ = connection.read_to_string(&mut answer);
    answer
}

#[test]
fn port_forward_is_recorded_as_its_connections_whichever_way_the_client_speaks() {
    const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    let setup = Setup::start();
    let kubeconfig = setup.kubeconfig("pod", &setup.bundle, Some("kubernetes.default.svc"));
    let port = pong_server(AWS_KEY);
    // kubectl 1.30 speaks SPDY over a plain upgrade; 1.37 tunnels SPDY in WebSocket messages.
    for (kubectl, name) in [
        (kubectl_130(), "kubectl-130"),
        (kubectl_137(), "kubectl-137"),
    ] {
        let (mut child, local) = port_forward(&setup, &kubectl, &kubeconfig, port);
        for connection in 0..2 {
            let answer = ask(local, &format!("hello-{name}-{connection}"));
            // A forwarded connection may carry any protocol: its bytes cross unchanged.
            assert_eq!(
                answer,
                format!("pong hello-{name}-{connection} {AWS_KEY}\n")
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    // The Python client speaks v4.channel.k8s.io.
    let script = support_dir().join("kube_portforward.py");
    let python = kube_python();
    let out = json_of(&setup.gateway.wrap(&[
        python.to_str().unwrap(),
        script.to_str().unwrap(),
        kubeconfig.to_str().unwrap(),
        "team",
        "web",
        &port.to_string(),
        "hello-python",
    ]));
    assert_eq!(out["answer"], format!("pong hello-python {AWS_KEY}\n"));
    // A port nothing listens on: the kubelet's error comes back on the error stream.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let (mut child, local) = port_forward(&setup, &kubectl_137(), &kubeconfig, closed_port);
    assert_eq!(ask(local, "anyone"), "");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let records = loop {
        let records = setup.gateway.all_records();
        let refused = records.iter().any(|r| {
            r["kind"] == "kube_port_forward" && r["port"] == closed_port && r["channel"] == "error"
        });
        if refused || std::time::Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();

    let decoded = |r: &Value| -> String {
        let data = r["data"].as_str().unwrap_or_default();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
        )
        .unwrap()
    };
    let requests: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "kube_request" && r["subresource"] == "portforward")
        .collect();
    assert_eq!(requests.len(), 4, "{requests:?}");
    let mut protocols = Vec::new();
    for request in &requests {
        assert_eq!(request["verb"], "connect");
        let of_this = |r: &&Value| {
            r["session_id"] == request["session_id"] && r["stream"] == request["stream"]
        };
        let response = records
            .iter()
            .filter(of_this)
            .find(|r| r["kind"] == "kube_response")
            .unwrap();
        assert_eq!(response["code"], 101);
        assert!(response.get("unparsed").is_none(), "{response}");
        protocols.push(response["upgraded_to"].as_str().unwrap().to_string());
        let forwarded: Vec<&Value> = records
            .iter()
            .filter(of_this)
            .filter(|r| r["kind"] == "kube_port_forward")
            .collect();
        let sent: String = forwarded
            .iter()
            .filter(|r| r["direction"] == "up" && r["channel"] == "data")
            .map(|r| decoded(r))
            .collect();
        let answered: String = forwarded
            .iter()
            .filter(|r| r["direction"] == "down" && r["channel"] == "data")
            .map(|r| decoded(r))
            .collect();
        let forwarded_port = forwarded.first().map(|r| r["port"].as_u64().unwrap());
        if forwarded_port == Some(u64::from(closed_port)) {
            let error: String = forwarded
                .iter()
                .filter(|r| r["channel"] == "error")
                .map(|r| decoded(r))
                .collect();
            assert!(error.contains("connect"), "{error}");
            continue;
        }
        assert_eq!(forwarded_port, Some(u64::from(port)));
        // The pod's answer is masked in the record.
        assert!(
            answered.contains("pong hello-") && answered.contains("[MASKED:aws_access_key_id]"),
            "{answered}"
        );
        if sent.contains("python") {
            // Only the WebSocket client names its ports in the request; kubectl names each
            // stream's port as it opens it.
            assert_eq!(request["ports"], serde_json::json!([port]));
            continue;
        }
        // Over SPDY, each local connection is its own pair of streams, opened and closed.
        for connection in 0..2 {
            assert!(sent.contains(&format!("-{connection}\n")), "{sent}");
        }
        let connections: std::collections::BTreeSet<u64> = forwarded
            .iter()
            .map(|r| r["connection"].as_u64().unwrap())
            .collect();
        assert_eq!(connections.len(), 2, "{forwarded:?}");
        for event in ["opened", "closed"] {
            assert!(forwarded.iter().any(|r| r["event"] == event), "no {event}");
        }
    }
    protocols.sort();
    assert_eq!(
        protocols,
        [
            "SPDY/3.1",
            "SPDY/3.1+portforward.k8s.io",
            "SPDY/3.1+portforward.k8s.io",
            "v4.channel.k8s.io"
        ]
    );

    // replay reads them as port-forward lines.
    let session = requests[0]["session_id"].as_str().unwrap();
    let replay = setup.gateway.cli(&["replay", session]).output().unwrap();
    let replay = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.contains(&format!("port-forward {port} connection")),
        "{replay}"
    );

    // Nothing the gateway wrote holds the key.
    let mut files = Vec::new();
    all_bytes(setup.gateway.dir.path(), &mut files);
    for form in stored_forms(AWS_KEY) {
        for (path, bytes) in &files {
            assert!(!contains(bytes, &form), "{path} holds the key ({form})");
        }
    }
}

/// kubectl with `args` under wrap, `input` on its stdin.
fn kubectl_with_input(
    setup: &Setup,
    kubectl: &Path,
    kubeconfig: &Path,
    args: &[&str],
    input: &str,
) -> Output {
    use std::io::Write;
    let mut command = vec![
        kubectl.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ];
    command.extend(args);
    let mut child = setup
        .gateway
        .wrap_cmd(None, &command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn attach_and_an_old_kubectls_spdy_exec_are_recorded_by_channel() {
    let setup = Setup::start();
    let kubeconfig = setup.kubeconfig("pod", &setup.bundle, Some("kubernetes.default.svc"));
    // kubectl 1.29 speaks SPDY for exec: one stream a channel.
    let out = kubectl_with_input(
        &setup,
        &kubectl_129(),
        &kubeconfig,
        &[
            "exec",
            "-i",
            "-n",
            "team",
            "web",
            "--",
            "sh",
            "-c",
            "read l; echo \"got $l\"; echo err >&2; exit 3",
        ],
        "typed-over-spdy\n",
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert_eq!(stdout, "got typed-over-spdy\n");
    assert!(stderr.contains("err"), "{stderr}");
    // attach joins the container's process (the test server starts its command, a shell).
    let out = kubectl_with_input(
        &setup,
        &kubectl_137(),
        &kubeconfig,
        &["attach", "-i", "-n", "team", "web"],
        "echo attached-over-websocket; exit\n",
    );
    assert!(
        out.status.success(),
        "{}\n{:#?}\n{}",
        String::from_utf8_lossy(&out.stderr),
        setup.gateway.records_once_ended(),
        setup.gateway.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "attached-over-websocket\n"
    );

    let records = setup.gateway.records_once_ended();
    let decoded = |r: &Value| -> String {
        let data = r["data"].as_str().unwrap_or_default();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
        )
        .unwrap()
    };
    for (subresource, protocol, typed, printed) in [
        ("exec", "SPDY/3.1", "typed-over-spdy", "got typed-over-spdy"),
        (
            "attach",
            "v5.channel.k8s.io",
            "echo attached-over-websocket",
            "attached-over-websocket",
        ),
    ] {
        let request = records
            .iter()
            .find(|r| r["kind"] == "kube_request" && r["subresource"] == subresource)
            .unwrap_or_else(|| panic!("no {subresource} request"));
        assert_eq!(request["verb"], "connect");
        let of_this = |r: &&Value| {
            r["session_id"] == request["session_id"] && r["stream"] == request["stream"]
        };
        let response = records
            .iter()
            .filter(of_this)
            .find(|r| r["kind"] == "kube_response")
            .unwrap();
        assert_eq!(response["upgraded_to"], protocol);
        assert!(response.get("unparsed").is_none(), "{response}");
        let channel = |name: &str| -> String {
            records
                .iter()
                .filter(of_this)
                .filter(|r| r["kind"] == "kube_channel" && r["channel"] == name)
                .map(decoded)
                .collect()
        };
        assert!(
            channel("stdin").contains(typed),
            "{subresource}: {}",
            channel("stdin")
        );
        assert!(
            channel("stdout").contains(printed),
            "{subresource}: {}",
            channel("stdout")
        );
        let status: Value = serde_json::from_str(&channel("error")).unwrap();
        match subresource {
            "exec" => {
                assert_eq!(status["reason"], "NonZeroExitCode");
                assert!(channel("stderr").contains("err"));
            }
            _ => assert_eq!(status["status"], "Success"),
        }
    }
}

#[test]
fn an_api_server_the_gateway_cannot_verify_is_answered_with_a_status_saying_what_to_fix() {
    // A CA that did not sign the API server's certificate.
    let stranger = tempfile::tempdir().unwrap();
    let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = stranger.path().join("wrong-ca.crt");
    fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
    let setup = Setup::start_trusting("", "", Some(&ca));
    let kubeconfig = setup.kubeconfig("pod", &setup.bundle, Some("kubernetes.default.svc"));
    let out = setup.wrapped_kubectl(
        &kubeconfig,
        &["get", "--raw", "/api/v1/namespaces/team/pods"],
    );
    assert!(!out.status.success());
    // kubectl prints the Status (for discovery it would print only "unknown").
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Error from server (ServiceUnavailable)"),
        "{stderr}"
    );
    assert!(stderr.contains("upstream_ca"), "{stderr}");
    assert!(
        setup
            .api
            .requests()
            .iter()
            .all(|r| r["path"] != "/api/v1/namespaces/team/pods")
    );
    let records = setup.gateway.records_once_ended();
    let refused = records
        .iter()
        .find(|r| r["kind"] == "kube_response" && r["code"] == 502)
        .expect("a 502 kube_response");
    assert_eq!(refused["generated_by_gateway"], true);
    assert!(
        refused["message"].as_str().unwrap().contains("upstream_ca"),
        "{refused}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "kube_request" && r["stream"] == refused["stream"])
    );
}

#[test]
fn an_exec_in_which_nothing_moves_for_idle_timeout_is_closed_and_says_why() {
    let setup = Setup::start_with("", "    idle_timeout: 1s\n");
    let kubeconfig = setup.kubeconfig("pod", &setup.bundle, Some("kubernetes.default.svc"));
    let out = setup.wrapped_kubectl(
        &kubeconfig,
        &["exec", "-n", "team", "web", "--", "sleep", "60"],
    );
    // Cut long before the command would have ended.
    assert!(!out.status.success());
    let records = setup.gateway.records_once_ended();
    let exec = records
        .iter()
        .find(|r| r["kind"] == "kube_request" && r["subresource"] == "exec")
        .unwrap();
    let end = records
        .iter()
        .find(|r| r["kind"] == "session_end" && r["session_id"] == exec["session_id"])
        .expect("the exec's session ended");
    assert_eq!(end["outcome"], "timeout", "{end}");
    assert!(
        end["error"].as_str().unwrap().contains("idle_timeout"),
        "{end}"
    );
}

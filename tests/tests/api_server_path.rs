//! The API-server path on one box: kubectl and curl, run under `interlock wrap`, reach the
//! test API server through the gateway, which terminates their TLS with a leaf from the
//! interception CA and opens TLS again to the server, verified against the cluster's CA.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Output,
};

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
        require_root();
        let api = ApiServer::start(&[]);
        let address = api.url.trim_start_matches("https://").to_string();
        let key = api.dir.path().join("interception/ca.key");
        let mut gateway = Gateway::configure(&format!(
            "interception_ca:\n  key: {}\n  addresses: [127.0.0.1]\ntargets:\n  - name: kube\n    \
             address: \"{address}\"\n    protocol: kubernetes\n    upstream_ca: {}\n",
            key.display(),
            api.ca.display()
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
        let server_name = server_name
            .map(|n| format!("    tls-server-name: {n}\n"))
            .unwrap_or_default();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\n{server_name}users:\n- name: u\n  user:\n    token: {}\n\
             contexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
            self.api.url,
            ca.display(),
            self.token
        );
        let path = self.api.dir.path().join(name);
        fs::write(&path, text).unwrap();
        path
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

    // An HTTP/1.1 client is spoken for in HTTP/1.1 upstream, as ALPN agreed with it. (The
    // header comes from a file: a command line is recorded.)
    let header = setup.api.dir.path().join("authorization");
    fs::write(&header, format!("Authorization: Bearer {}\n", setup.token)).unwrap();
    let out = setup.gateway.wrap(&[
        "curl",
        "-sS",
        "--fail",
        "--http1.1",
        "--cacert",
        setup.bundle.to_str().unwrap(),
        "-H",
        &format!("@{}", header.display()),
        &format!("{}/api/v1/namespaces/team/pods", setup.api.url),
    ]);
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
    let records = setup.gateway.all_records();
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
    let records = setup.gateway.all_records();
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

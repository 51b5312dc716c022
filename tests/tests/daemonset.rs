//! The rendered DaemonSet, run as a kubelet would run it, on a simulated node: its container's
//! command, args and env (the downward API filled in), its mounts (ConfigMap and Secrets as
//! files, host paths as they are, or mapped to temporary directories where they would touch
//! this host), a read-only root, and only the capabilities it lists. A selected pod is then
//! intercepted. If the manifests and the binary drift apart, this fails.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use interlock_e2e::{
    Proc,
    apiserver::{ApiServer, kubeconfig_text, kubectl_137},
    deploy::*,
    interlock_bin,
    node::{Driver, HostAddress, Qos, Runtime, SimNode},
    require_root, succeed,
};
use serde_json::{Value, json};

/// The bpffs directory the rendered config pins to; this test removes what it pinned there.
const PINS: &str = "/sys/fs/bpf/interlock";

/// Assembles a root as the container runtime would (a tmpfs, the host's /usr and libraries
/// for the dynamically linked test build, /proc, /sys, /dev, then each volume at its mount
/// path), makes it read-only, and runs the rest of the arguments chrooted into it.
/// Arguments: ROOT, then `MOUNT_PATH SOURCE ro|rw` triples, `--`, the command.
const CONTAINER: &str = r#"
set -eu
root=$1; shift
mount --make-rprivate /
mount -t tmpfs -o mode=0755 container-root "$root"
for top in usr lib lib64 bin sbin; do
  if [ -L "/$top" ]; then cp -P "/$top" "$root/$top"
  elif [ -d "/$top" ]; then mkdir "$root/$top"; mount --rbind "/$top" "$root/$top"; fi
done
for special in proc sys dev; do mkdir "$root/$special"; mount --rbind "/$special" "$root/$special"; done
while [ "$1" != "--" ]; do
  target="$root$1"; mkdir -p "$target"; mount --rbind "$2" "$target"
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$target"; fi
  shift 3
done
shift
touch "$root/interlock"; mount --bind "$INTERLOCK" "$root/interlock"
mount -o remount,bind,ro "$root"
exec chroot "$root" "$@"
"#;

/// Stops the gateway, then removes its pins (in `fail_mode: closed` they outlive it).
struct Running(Option<Proc>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut gateway) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &gateway.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && gateway.0.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(gateway);
        }
        let _ = fs::remove_dir_all(PINS);
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

#[test]
fn the_rendered_daemonset_runs_as_a_kubelet_would_run_it_and_intercepts_a_selected_pod() {
    require_root();
    assert!(
        !Path::new(PINS).exists(),
        "{PINS} holds a gateway's pins; this test runs the DaemonSet's config, which pins there: \
         stop that gateway or remove them"
    );
    let api_address = HostAddress::add(&format!("10.232.{}.1", std::process::id() % 250));
    // The manifests' RBAC lets the gateway write the bundle ConfigMaps and its webhook's
    // caBundle: the test server allows its service account writes.
    let api = ApiServer::start(&[
        "--listen",
        &format!("{}:0", api_address.0),
        "--allow-write",
        "system:serviceaccount:interlock:interlock",
    ]);
    let node = SimNode::create("node-ds");
    let rendered = objects(&render("overlays/eks"));
    let daemonset = object(&rendered, "DaemonSet", Some("interlock"));
    let pod_spec = &daemonset["spec"]["template"]["spec"];
    let container = &pod_spec["containers"][0];
    let work = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = work.path().join(name);
        fs::create_dir_all(&path).unwrap();
        path
    };

    // What the cluster holds: the gateway's own pod on the node, its service account's
    // bound token, the keys `interlock init` made, a selected namespace.
    api.post(
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "interlock"}}),
    );
    // The manifests' own ServiceAccount.
    api.post(
        "/api/v1/namespaces/interlock/serviceaccounts",
        object(&rendered, "ServiceAccount", Some("interlock")),
    );
    let gateway_pod = "interlock-ds-test";
    let gateway_pod_uid = "6f0f63f4-7c9a-4c65-8d2e-1d8f3a1b2c3d";
    api.post(
        "/api/v1/namespaces/interlock/pods",
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": gateway_pod, "namespace": "interlock", "uid": gateway_pod_uid},
            "spec": {"nodeName": node.name, "serviceAccountName": text(&pod_spec["serviceAccountName"]),
                     "containers": [{"name": text(&container["name"]), "image": text(&container["image"])}]},
            "status": {"phase": "Running", "podIP": node.node_ip}}),
    );
    let token = api.post(
        &format!(
            "/api/v1/namespaces/interlock/serviceaccounts/{}/token",
            text(&pod_spec["serviceAccountName"])
        ),
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": gateway_pod, "uid": gateway_pod_uid}}}),
    )["status"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    api.post(
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "agents", "labels": {"interlock.dev/selected": "true"}}}),
    );
    api.post(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        object(&rendered, "MutatingWebhookConfiguration", Some("interlock")),
    );
    let keys = work.path().join("keys");
    succeed(
        Command::new(interlock_bin())
            .args(["init", "--out"])
            .arg(&keys),
    );
    let secrets = objects(&fs::read_to_string(keys.join("secrets.yaml")).unwrap());

    // The volumes, as the kubelet would lay them out.
    let mut mounts: Vec<(String, PathBuf, bool)> = Vec::new();
    let spool = dir("host-var-lib-interlock");
    for mount in container["volumeMounts"].as_array().unwrap() {
        let volume = pod_spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let name = text(&volume["name"]);
        let source = if volume["configMap"].is_object() {
            let source = dir(&format!("volume-{name}"));
            // The decision key's ConfigMap comes from `interlock init`; the config's from the
            // rendered manifests.
            let from_init = secrets.iter().find(|o| {
                o["kind"] == "ConfigMap" && o["metadata"]["name"] == volume["configMap"]["name"]
            });
            match from_init {
                Some(configmap) => {
                    for (key, value) in configmap["data"].as_object().unwrap() {
                        fs::write(source.join(key), text(value)).unwrap();
                    }
                }
                None => {
                    fs::write(source.join("interlock.yaml"), gateway_config(&rendered)).unwrap()
                }
            }
            source
        } else if volume["secret"].is_object() {
            let secret = secrets
                .iter()
                .find(|s| s["metadata"]["name"] == volume["secret"]["secretName"])
                .unwrap();
            let source = dir(&format!("volume-{name}"));
            for (key, value) in secret["data"].as_object().unwrap() {
                let file = source.join(key);
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str().unwrap())
                    .unwrap();
                fs::write(&file, bytes).unwrap();
                let mode = volume["secret"]["defaultMode"].as_u64().unwrap() as u32;
                fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            }
            source
        } else if let Some(path) = volume["hostPath"]["path"].as_str() {
            // The spool is this host's own directory in a cluster; here a fresh one.
            match path {
                "/var/lib/interlock" => spool.clone(),
                other => PathBuf::from(other),
            }
        } else {
            assert!(
                volume["emptyDir"].is_object(),
                "volume {name}: an unknown kind"
            );
            dir(&format!("volume-{name}"))
        };
        let read_only = mount["readOnly"].as_bool().unwrap_or(false);
        mounts.push((text(&mount["mountPath"]).to_string(), source, read_only));
    }
    // automountServiceAccountToken: the kubelet's projected volume and its environment.
    assert_eq!(pod_spec["automountServiceAccountToken"], true);
    let account = dir("serviceaccount");
    fs::write(account.join("token"), &token).unwrap();
    fs::copy(&api.ca, account.join("ca.crt")).unwrap();
    fs::write(account.join("namespace"), "interlock").unwrap();
    mounts.push((
        "/var/run/secrets/kubernetes.io/serviceaccount".into(),
        account,
        true,
    ));
    let (api_host, api_port) = api
        .url
        .trim_start_matches("https://")
        .rsplit_once(':')
        .unwrap();
    let mut env = vec![
        format!("KUBERNETES_SERVICE_HOST={api_host}"),
        format!("KUBERNETES_SERVICE_PORT={api_port}"),
    ];
    for variable in container["env"].as_array().unwrap() {
        let value = match text(&variable["valueFrom"]["fieldRef"]["fieldPath"]) {
            "" => text(&variable["value"]).to_string(),
            "spec.nodeName" => node.name.clone(),
            "status.hostIP" => node.node_ip.clone(),
            "metadata.name" => gateway_pod.into(),
            "metadata.namespace" => "interlock".into(),
            other => panic!("a downward API field this test does not fill: {other}"),
        };
        env.push(format!("{}={value}", text(&variable["name"])));
    }
    // Exactly the capabilities the container adds: the bounding set of the gateway's process.
    let security = &container["securityContext"];
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["readOnlyRootFilesystem"], true);
    let capabilities: Vec<String> = security["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("+{}", text(c).to_ascii_lowercase()))
        .collect();
    let bounding = format!("-all,{}", capabilities.join(","));
    let mut privileges = vec!["--bounding-set", &bounding, "--inh-caps", "-all"];
    if security["allowPrivilegeEscalation"] == false {
        privileges.push("--no-new-privs");
    }

    let root = dir("root");
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--", "sh", "-c", CONTAINER, "container"])
        .arg(&root);
    for (path, source, read_only) in &mounts {
        command
            .arg(path)
            .arg(source)
            .arg(if *read_only { "ro" } else { "rw" });
    }
    command
        .arg("--")
        .args(["/usr/bin/env", "-i"])
        .args(&env)
        .args([
            "/usr/bin/setpriv",
            "--bounding-set",
            &bounding,
            "--inh-caps",
            "-all",
            "--",
        ])
        .arg("/interlock")
        .args(container["args"].as_array().unwrap().iter().map(text))
        .env("INTERLOCK", interlock_bin())
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.path().join("gateway.log")).unwrap());
    let log = || fs::read_to_string(work.path().join("gateway.log")).unwrap_or_default();
    let gateway = Running(Some(Proc(command.spawn().unwrap())));

    // Ready as the readiness probe asks.
    let probe = &container["readinessProbe"]["httpGet"];
    let ready_url = format!(
        "http://{}:{}{}",
        text(&probe["host"]),
        probe["port"],
        text(&probe["path"])
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = Command::new("curl")
            .args(["-sf", &ready_url])
            .output()
            .is_ok_and(|o| o.status.success());
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready at {ready_url}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    the_webhook_prepares_selected_pods_only(&api, &rendered, work.path());

    // A selected pod's kubectl reaches the API server through the gateway.
    let pod = node.pod(
        41,
        "agents",
        "agent-ds",
        json!({"interlock.dev/intercept": "true"}),
        (Driver::Systemd, Runtime::Containerd, Qos::Burstable),
    );
    api.post("/api/v1/namespaces/agents/pods", &pod.object("default"));
    let pod_token = api.post(
        "/api/v1/namespaces/agents/serviceaccounts/default/token",
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.name, "uid": pod.uid}}}),
    )["status"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let host_config = work.path().join("host.yaml");
    let interception_key = keys.join("interception-ca.key");
    fs::write(
        &host_config,
        format!(
            "{}\ninterception_ca:\n  key: {}\nrecording:\n  dir: {}\n  signing_key: {}\n",
            "targets: []",
            interception_key.display(),
            spool.display(),
            keys.join("signing.key").display()
        ),
    )
    .unwrap();
    let bundle = succeed(
        Command::new(interlock_bin())
            .args(["ca-bundle", "--config"])
            .arg(&host_config)
            .arg("--cluster-ca")
            .arg(&api.ca),
    );
    let bundle_file = work.path().join("bundle.crt");
    fs::write(&bundle_file, &bundle.stdout).unwrap();
    let kubeconfig = work.path().join("pod-kubeconfig");
    fs::write(
        &kubeconfig,
        kubeconfig_text(
            &api.url,
            &bundle_file,
            Some("kubernetes.default.svc"),
            &format!("token: {pod_token}"),
        ),
    )
    .unwrap();
    let kubectl = kubectl_137();
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        // The gateway registers the pod once its watch sees it.
        let out = pod
            .run(
                "app",
                &[
                    kubectl.to_str().unwrap(),
                    "--kubeconfig",
                    kubeconfig.to_str().unwrap(),
                    "get",
                    "pods",
                    "-n",
                    "agents",
                    "-o",
                    "name",
                ],
            )
            .output()
            .unwrap();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod/agent-ds"));
    drop(gateway);

    // Recorded, in the spool on the node's disk, as that pod.
    let cli = |args: &[&str]| -> Value {
        let out = succeed(
            Command::new(interlock_bin())
                .args(args)
                .arg("--config")
                .arg(&host_config),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let sessions = cli(&["sessions", "list", "--json"]);
    let intercepted = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kubernetes"]["pod"] == "agent-ds")
        .unwrap_or_else(|| panic!("no session of pod agent-ds in {sessions}\n{}", log()));
    let records = cli(&["replay", text(&intercepted["id"]), "--json"]);
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "kube_request" && r["resource"] == "pods" && r["verb"] == "list"),
        "{records}"
    );
    let verified = Command::new(interlock_bin())
        .args(["verify", "--config"])
        .arg(&host_config)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    drop(pod);
    drop(node);
    drop(api_address);
}

/// A pod as the API server sends it to admission: the ServiceAccount admission plugin has
/// added the `kube-api-access-*` volume already.
fn admitted_pod(namespace: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "registry.example/app:1",
                "volumeMounts": [{"name": "kube-api-access-5x8zq", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
            "volumes": [{"name": "kube-api-access-5x8zq", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}]
        }
    })
}

/// Sends an AdmissionReview for `pod` to the gateway's webhook as the API server would.
fn review(work: &Path, ca: &Path, pod: &Value, dry_run: bool) -> Value {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "a8b1c2d3-0000-4000-8000-00000000000", "operation": "CREATE", "dryRun": dry_run,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod["metadata"]["namespace"], "name": pod["metadata"]["name"],
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": null, "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    let file = work.join("review.json");
    fs::write(&file, review.to_string()).unwrap();
    let out = succeed(
        Command::new(deploy_tool("python"))
            .arg(interlock_e2e::support_dir().join("admission_review.py"))
            .args(["127.0.0.1:15443", "interlock-webhook.interlock.svc"])
            .arg(ca)
            .arg(&file),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn the_webhook_prepares_selected_pods_only(api: &ApiServer, rendered: &[Value], work: &Path) {
    let daemonset = object(rendered, "DaemonSet", Some("interlock"));
    let image = text(&daemonset["spec"]["template"]["spec"]["containers"][0]["image"]);
    // The gateway published the interception CA as the webhook's caBundle: what the API
    // server trusts when it calls the webhook.
    let configuration =
        api.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/interlock");
    let ca_bundle = base64::engine::general_purpose::STANDARD
        .decode(text(
            &configuration["webhooks"][0]["clientConfig"]["caBundle"],
        ))
        .unwrap();
    let ca = work.join("webhook-ca.crt");
    fs::write(&ca, &ca_bundle).unwrap();
    let ca_pem = String::from_utf8(ca_bundle).unwrap();
    assert!(ca_pem.contains("BEGIN CERTIFICATE"), "{configuration}");

    // Selected: the await container first, with the gateway's own image, and the bundle as
    // the pod's ca.crt.
    let selected = admitted_pod(
        "agents",
        "agent-web",
        json!({"interlock.dev/intercept": "true"}),
    );
    let answer = review(work, &ca, &selected, false);
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let patched = &answer["patched"];
    let first = &patched["spec"]["initContainers"][0];
    assert_eq!(first["name"], "interlock-await");
    assert_eq!(first["image"], image);
    assert_eq!(first["command"], json!(["/interlock", "await"]));
    assert_eq!(
        patched["spec"]["volumes"][0]["projected"]["sources"][1]["configMap"]["name"],
        "interlock-ca-bundle"
    );
    assert_eq!(
        patched["spec"]["containers"],
        selected["spec"]["containers"]
    );
    // The bundle is in the pod's namespace: the cluster CA, then the interception CA.
    let bundle = api.get("/api/v1/namespaces/agents/configmaps/interlock-ca-bundle");
    let bundle = text(&bundle["data"]["ca.crt"]);
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    assert!(bundle.trim_end().ends_with(ca_pem.trim_end()), "{bundle}");

    // Not selected (no label): admitted unchanged.
    let other = admitted_pod("agents", "plain-web", json!({"app": "web"}));
    let answer = review(work, &ca, &other, false);
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"]["patch"].is_null(), "{answer}");
    assert_eq!(answer["patched"], other);

    // A dry run is answered the same, and writes nothing.
    api.post(
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "agents-dry", "labels": {"interlock.dev/selected": "true"}}}),
    );
    // The gateway's namespace watch must see the new namespace's labels first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let dry = admitted_pod(
        "agents-dry",
        "agent-dry",
        json!({"interlock.dev/intercept": "true"}),
    );
    loop {
        let answer = review(work, &ca, &dry, true);
        if !answer["response"]["patch"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dry run was never patched: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let written = api.kubectl(
        &kubectl_137(),
        &[
            "get",
            "configmap",
            "interlock-ca-bundle",
            "-n",
            "agents-dry",
        ],
    );
    assert!(!written.status.success(), "a dry run wrote the bundle");
}

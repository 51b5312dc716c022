//! One simulated pod on a simulated node, for the demo (the tests build theirs with
//! `interlock_e2e::node`): kubelet's cgroup layout, a network namespace routed through the
//! host, and the Pod object posted to the API server, scheduled on the node and running.
//!
//! Prints one JSON line once the pod exists: the node's address (where pods reach the
//! gateway), the pod's bound service-account token from the TokenRequest API, and `enter`,
//! the command prefix that runs a command in the pod's container (its cgroup, then its network
//! namespace). The pod is held until standard input closes, then removed, node and all.
use std::{
    io::{Read, Write},
    path::PathBuf,
    process::{Command, Stdio},
};

use clap::Parser;
use interlock_e2e::node::{Driver, Qos, Runtime, SimNode};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "A simulated pod on a simulated node, held until stdin closes")]
struct Args {
    /// The admin kubeconfig of the API server the Pod object is posted to.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// kubectl, to post with.
    #[arg(long)]
    kubectl: PathBuf,
    #[arg(long, default_value = "node-demo")]
    node: String,
    #[arg(long, default_value = "team")]
    namespace: String,
    #[arg(long, default_value = "agent-1")]
    name: String,
    /// The pod's labels, `key=value`.
    #[arg(long = "label")]
    labels: Vec<String>,
    #[arg(long, default_value = "agent")]
    service_account: String,
}

/// `kubectl create --raw PATH -f -` with `body`, as the admin; the answer, parsed.
fn post(args: &Args, path: &str, body: &Value) -> Result<Value, String> {
    let mut child = Command::new(&args.kubectl)
        .arg("--kubeconfig")
        .arg(&args.kubeconfig)
        .args(["create", "--raw", path, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args.kubectl.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(body.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "POST {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("POST {path}: {e}"))
}

fn main() {
    let args = Args::parse();
    let labels: serde_json::Map<String, Value> = args
        .labels
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect();
    let node = SimNode::create(&args.node);
    let pod = node.pod(
        40,
        &args.namespace,
        &args.name,
        Value::Object(labels),
        (Driver::Systemd, Runtime::Containerd, Qos::Burstable),
    );
    let created = post(
        &args,
        &format!("/api/v1/namespaces/{}/pods", args.namespace),
        &pod.object(&args.service_account),
    )
    .and_then(|_| {
        let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.name, "uid": pod.uid}}});
        post(
            &args,
            &format!(
                "/api/v1/namespaces/{}/serviceaccounts/{}/token",
                args.namespace, args.service_account
            ),
            &request,
        )
    });
    let minted = match created {
        Ok(minted) => minted,
        Err(e) => {
            eprintln!("sim-pod: {e}");
            std::process::exit(1);
        }
    };
    let entered = pod.run("app", &[]);
    let enter: Vec<String> = std::iter::once(entered.get_program())
        .chain(entered.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!(
        "{}",
        json!({
            "node_ip": node.node_ip,
            "pod_ip": pod.netns.pod_ip,
            "uid": pod.uid,
            "token": minted["status"]["token"],
            "enter": enter,
        })
    );
    let _ = std::io::stdout().flush();
    // Held until whoever started it is done: a closed stdin, or its end.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(pod);
    drop(node);
}

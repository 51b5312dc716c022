//! kube-rs, the Rust Kubernetes client, as a third independent client: it lists and reads
//! pods, watches for a pod it creates and deletes, and runs an exec over WebSocket. Prints one
//! JSON line of what it saw.
//!
//! usage: kube-rs-client KUBECONFIG
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    api::{AttachParams, DeleteParams, ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::io::AsyncReadExt;

type Failed = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: kube-rs-client KUBECONFIG");
    match run(&path).await {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("kube-rs-client: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(path: &str) -> Result<serde_json::Value, Failed> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let pods: Api<Pod> = Api::namespaced(client, "team");

    let listed: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let web = pods.get("web").await?;

    // A watch that must see the pod this client creates, then its deletion.
    let mut events = watcher(pods.clone(), watcher::Config::default())
        .touched_objects()
        .boxed();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "rs-pod", "namespace": "team"},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }))?;
    let mut seen_created = false;
    let mut created = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.try_next()).await? {
        // The first touched objects are the initial list; create once the watch runs.
        if !created {
            pods.create(&PostParams::default(), &pod).await?;
            created = true;
        }
        if event.metadata.name.as_deref() == Some("rs-pod") {
            seen_created = true;
            break;
        }
    }
    pods.delete("rs-pod", &DeleteParams::default()).await?;

    let mut attached = pods
        .exec(
            "web",
            ["sh", "-c", "echo from kube-rs"],
            &AttachParams::default().stdout(true).stderr(false),
        )
        .await?;
    let mut stdout = String::new();
    attached
        .stdout()
        .ok_or("the exec has no stdout")?
        .read_to_string(&mut stdout)
        .await?;
    let status = attached
        .take_status()
        .ok_or("the exec has no status")?
        .await;
    attached.join().await?;
    Ok(json!({
        "listed": listed,
        "web_uid": web.metadata.uid,
        "watch_saw_created": seen_created,
        "exec_stdout": stdout,
        "exec_status": status.and_then(|s| s.status),
    }))
}

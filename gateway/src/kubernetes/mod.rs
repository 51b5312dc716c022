//! Node mode: the gateway watches its node's pods, the namespaces, and the Services and
//! EndpointSlices that service targets name, through kube-runtime reflectors, and keeps the
//! eBPF maps in step: selected pods registered (`registrar`), service addresses in TARGETS
//! (`services`). Ready once every first list is in and applied.
//!
//! - `config`: the `kubernetes:` section;
//! - `selector`: label selectors, strict;
//! - `request_info`: what an API-server request is, as the API server reads it;
//! - `webhook`: the admission webhook that prepares selected pods.
pub mod client;
pub mod config;
mod keys;
mod registrar;
pub mod request_info;
pub mod selector;
mod services;
pub mod webhook;

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

use self::{
    config::KubernetesConfig,
    registrar::{Registrar, ResolvedSelection},
    services::{ServiceTarget, ServiceTargets},
};
use crate::{
    config::Config,
    ebpf::{Dataplane, ProxyAddrs},
    identity::PodDirectory,
    interception_ca::InterceptionCa,
    telemetry::{
        events::{InternalEvent, KubeWatchFailed},
        metrics,
    },
    tokens::ServiceAccountTokens,
};

/// While selected pods wait for their cgroup, how often they are looked for again.
const PENDING_RETRY: Duration = Duration::from_millis(100);
/// How often everything is reconciled even when no watch event came.
const RESYNC: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NodeModeError {
    #[error(
        "node mode needs the node's name: set kubernetes.node_name, or NODE_NAME from the \
         downward API (fieldRef spec.nodeName)"
    )]
    NoNodeName,
    #[error(
        "node mode needs the address pods reach this node on: set \
         kubernetes.pod_proxy_address, or HOST_IP from the downward API (fieldRef status.hostIP)"
    )]
    NoPodProxyAddress,
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
    #[error("the interception CA, for the webhook: {0}")]
    Ca(#[from] crate::interception_ca::CaError),
}

/// The running node mode: `synced` turns true once the first lists are applied.
pub struct NodeMode {
    pub synced: Arc<AtomicBool>,
    pub directory: Arc<PodDirectory>,
    /// Verifies bearer service-account tokens with the cluster's keys.
    pub tokens: Arc<ServiceAccountTokens>,
}

/// Drives a reflector's watch, waking the reconciler on every change and reporting failures.
fn drive<K>(
    resource: &'static str,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let item = tokio::select! {
                _ = stop.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(_)) => changed.notify_one(),
                Some(Err(error)) => KubeWatchFailed {
                    resource,
                    error: &error,
                }
                .emit(),
                None => return,
            }
        }
    });
}

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    changed: &Arc<Notify>,
    stop: &CancellationToken,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    drive(resource, stream, changed.clone(), stop.clone());
    store
}

/// Starts the watches and the reconciler. `own` are the gateway's own addresses, which a
/// service target never takes in.
pub async fn start(
    config: &Config,
    kubernetes: &KubernetesConfig,
    dataplane: Arc<Dataplane>,
    own: &[IpAddr],
    stop: CancellationToken,
) -> Result<NodeMode, NodeModeError> {
    let node = kubernetes.node_name().ok_or(NodeModeError::NoNodeName)?;
    let pod_proxy = kubernetes
        .pod_proxy_address()
        .ok_or(NodeModeError::NoPodProxyAddress)?;
    let (client, cluster_ca) = client::client(kubernetes.kubeconfig.as_deref()).await?;
    let changed = Arc::new(Notify::new());
    let pods = watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        "pods",
        &changed,
        &stop,
    );
    let namespaces = watch(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        "namespaces",
        &changed,
        &stop,
    );
    let service_targets: Vec<ServiceTarget> = config
        .targets
        .iter()
        .enumerate()
        .filter_map(|(index, t)| {
            Some(ServiceTarget {
                index: index as u32,
                service: t.service.clone()?,
                port: t.port?,
            })
        })
        .collect();
    let services = (!service_targets.is_empty()).then(|| {
        (
            watch(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
                "services",
                &changed,
                &stop,
            ),
            watch(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default(),
                "endpointslices",
                &changed,
                &stop,
            ),
        )
    });

    if let Some(webhook_config) = &kubernetes.webhook {
        let ca = Arc::new(InterceptionCa::load(&config.interception_ca)?);
        if let Some(name) = &webhook_config.configuration {
            match webhook::publish_ca_bundle(&client, name, ca.cert_pem()).await {
                Ok(()) => {
                    info!(configuration = %name, "published the interception CA as the webhook's caBundle")
                }
                Err(e) => {
                    tracing::warn!(configuration = %name, error = %e, "could not publish the interception CA as the webhook's caBundle; the API server cannot call the webhook until it is set (check RBAC: get and patch on that MutatingWebhookConfiguration)")
                }
            }
        }
        let answering = webhook::Webhook::new(
            client.clone(),
            webhook_config,
            namespaces.clone(),
            kubernetes.selections.clone(),
            &ca,
            &cluster_ca,
        )
        .await;
        webhook::serve(webhook_config, ca, Arc::new(answering), stop.clone()).await?;
    }
    let selections = kubernetes
        .selections
        .iter()
        .map(|selection| ResolvedSelection {
            // Every selected pod can prove its interception with `interlock await`.
            targets: selection
                .targets
                .iter()
                .map(String::as_str)
                .chain([config::AWAIT_TARGET])
                .filter_map(|name| config.targets.iter().position(|t| t.name == name))
                .collect(),
            selection: selection.clone(),
        })
        .collect();
    let proxy = ProxyAddrs {
        v4: pod_proxy
            .is_ipv4()
            .then(|| std::net::SocketAddr::new(pod_proxy, config.listen.port())),
        v6: pod_proxy.is_ipv6().then(|| {
            std::net::SocketAddr::new(
                pod_proxy,
                config.listen_v6.map_or(config.listen.port(), |l| l.port()),
            )
        }),
    };
    let directory = Arc::new(PodDirectory::default());
    let mut registrar = Registrar::new(
        dataplane.clone(),
        directory.clone(),
        proxy,
        selections,
        node.clone(),
    );
    let adopted = registrar.adopt();
    let mut service_targets = ServiceTargets::new(dataplane, service_targets, own);
    let synced = Arc::new(AtomicBool::new(false));
    let node_mode = NodeMode {
        synced: synced.clone(),
        directory,
        tokens: Arc::new(ServiceAccountTokens::new(
            config.identity.clone(),
            Box::new(keys::ApiServerKeys {
                client: client.clone(),
            }),
        )),
    };
    info!(node = %node, %pod_proxy, adopted, "node mode: watching the API server");
    tokio::spawn(async move {
        // Nothing is reconciled from a partial picture: a pod missing from an unfinished
        // list would be unregistered.
        let first_lists = async {
            pods.wait_until_ready().await.ok();
            namespaces.wait_until_ready().await.ok();
            if let Some((services, slices)) = &services {
                services.wait_until_ready().await.ok();
                slices.wait_until_ready().await.ok();
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = first_lists => {}
        }
        loop {
            if let Some((services, slices)) = &services {
                service_targets.reconcile(services, slices);
            }
            let done = registrar.reconcile(&pods, &namespaces);
            if !synced.swap(true, Ordering::Relaxed) {
                metrics().kube_synced.set(1);
                info!(
                    intercepted = done.intercepted,
                    waiting_for_cgroup = done.waiting,
                    "node mode synced: registrations applied"
                );
            }
            let wait = if done.waiting > 0 {
                PENDING_RETRY
            } else {
                RESYNC
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
    Ok(node_mode)
}

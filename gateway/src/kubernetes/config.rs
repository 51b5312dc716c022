//! The `kubernetes:` section: node mode. The gateway watches the pods on its node and
//! intercepts the ones a selection chooses, for the targets that selection names.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use serde::Deserialize;

use super::selector::LabelSelector;
use crate::protocols::target::ServiceRef;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file; in the cluster the service account's in-cluster config is used.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The node whose pods are watched; defaults to $NODE_NAME (the downward API's
    /// `spec.nodeName`).
    #[serde(default)]
    pub node_name: Option<String>,
    /// The address pods reach the gateway on: the node IP, by default $HOST_IP (the downward
    /// API's `status.hostIP`). Intercepted pod connections are rewritten to it.
    #[serde(default)]
    pub pod_proxy_address: Option<IpAddr>,
    pub selections: Vec<Selection>,
    /// The reserved address `interlock await` dials: only an intercepted pod's connect to it
    /// reaches the gateway, which answers with the pod it attests. Link-local, unused by EKS.
    #[serde(
        default = "default_await_address",
        deserialize_with = "crate::config::values::socket_addr"
    )]
    pub await_address: SocketAddr,
    /// The admission webhook that prepares selected pods as they are created.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

/// The mutating admission webhook: a selected pod gets the `interlock await` init container
/// and trusts the interception CA (its projected `ca.crt` becomes the bundle).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where it is served, over TLS.
    #[serde(deserialize_with = "crate::config::values::socket_addr")]
    pub listen: SocketAddr,
    /// The Service in front of it, `NAMESPACE/NAME`: its certificate, issued by the
    /// interception CA, names `NAME.NAMESPACE.svc`.
    #[serde(deserialize_with = "crate::protocols::target::service_ref")]
    pub service: Option<ServiceRef>,
    /// The MutatingWebhookConfiguration whose `caBundle` is set to the interception CA at
    /// start; none leaves it to whoever applies it.
    #[serde(default)]
    pub configuration: Option<String>,
    /// The image of the `interlock await` init container; by default the gateway's own, read
    /// from its pod ($POD_NAME in $POD_NAMESPACE, from the downward API).
    #[serde(default)]
    pub await_image: Option<String>,
    /// The ConfigMap holding the bundle (the cluster CA, then the interception CA) under
    /// `ca.crt`, kept current in each namespace where a selected pod is admitted.
    #[serde(default = "default_bundle_configmap")]
    pub bundle_configmap: String,
}

fn default_bundle_configmap() -> String {
    "interlock-ca-bundle".into()
}

impl WebhookConfig {
    /// The name the API server dials: `NAME.NAMESPACE.svc`.
    pub fn server_name(&self) -> Option<String> {
        let service = self.service.as_ref()?;
        Some(format!("{}.{}.svc", service.name, service.namespace))
    }
}

/// The internal target that answers `interlock await`, in every selection.
pub const AWAIT_TARGET: &str = "interlock-await";

pub const DEFAULT_AWAIT_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 255, 77)), 15077);

fn default_await_address() -> SocketAddr {
    DEFAULT_AWAIT_ADDRESS
}

/// Which pods are intercepted, and for which targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    pub name: String,
    /// Pods whose labels match; `{}` takes every pod (of the selected namespaces).
    pub pods: LabelSelector,
    /// Namespaces whose labels match; every namespace when absent.
    #[serde(default)]
    pub namespaces: Option<LabelSelector>,
    /// Names from `targets`; the selected pods' connections to other targets go direct.
    pub targets: Vec<String>,
}

impl Selection {
    /// Whether this selection chooses a pod with `pod_labels` in a namespace with
    /// `namespace_labels`.
    pub fn chooses(
        &self,
        pod_labels: &std::collections::BTreeMap<String, String>,
        namespace_labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.pods.matches(pod_labels)
            && self
                .namespaces
                .as_ref()
                .is_none_or(|n| n.matches(namespace_labels))
    }
}

impl KubernetesConfig {
    pub fn node_name(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
    }

    pub fn pod_proxy_address(&self) -> Option<IpAddr> {
        self.pod_proxy_address
            .or_else(|| std::env::var("HOST_IP").ok()?.parse().ok())
    }
}

//! The `kubernetes:` section: node mode. The gateway watches the pods on its node and
//! intercepts the ones a selection chooses, for the targets that selection names.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use serde::Deserialize;

use super::selector::LabelSelector;

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

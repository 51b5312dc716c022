//! Targets named by Service: a `service: NS/NAME` target is the Service's cluster IPs at its
//! port, plus the addresses of its EndpointSlices at the matching target port, so a pod that
//! dials an endpoint directly (or a headless Service) is intercepted too. Kept current in the
//! TARGETS map as Services and endpoints change.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use crate::{ebpf::Dataplane, protocols::target::ServiceRef};

/// Addresses that are never redirected unless a target names them by `address`: rewriting
/// them would break the node. The EKS Pod Identity agent and IMDS, in both families.
pub const NEVER_REDIRECTED: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

pub struct ServiceTarget {
    pub index: u32,
    pub service: ServiceRef,
    pub port: u16,
}

pub struct ServiceTargets {
    pub dataplane: Arc<Dataplane>,
    pub targets: Vec<ServiceTarget>,
    /// NEVER_REDIRECTED plus the gateway's own addresses.
    pub never: Vec<IpAddr>,
    current: HashMap<u32, Vec<SocketAddr>>,
}

impl ServiceTargets {
    pub fn new(dataplane: Arc<Dataplane>, targets: Vec<ServiceTarget>, own: &[IpAddr]) -> Self {
        ServiceTargets {
            dataplane,
            targets,
            never: NEVER_REDIRECTED.iter().chain(own).copied().collect(),
            current: HashMap::new(),
        }
    }

    pub fn reconcile(&mut self, services: &Store<Service>, slices: &Store<EndpointSlice>) {
        for target in &self.targets {
            let mut addresses = resolve(target, services, slices);
            addresses.retain(|a| !self.never.contains(&a.ip()));
            addresses.sort();
            addresses.dedup();
            if self.current.get(&target.index) == Some(&addresses) {
                continue;
            }
            match self.dataplane.set_service_target(target.index, &addresses) {
                Ok(()) => {
                    tracing::info!(
                        service = %target.service,
                        port = target.port,
                        addresses = ?addresses,
                        "service target addresses updated"
                    );
                    self.current.insert(target.index, addresses);
                }
                Err(e) => {
                    tracing::error!(service = %target.service, error = %e, "service target not updated")
                }
            }
        }
    }
}

fn resolve(
    target: &ServiceTarget,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
) -> Vec<SocketAddr> {
    let reference = ObjectRef::new(&target.service.name).within(&target.service.namespace);
    let Some(service) = services.get(&reference) else {
        return Vec::new();
    };
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let Some(port) = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == i32::from(target.port))
    else {
        tracing::warn!(service = %target.service, port = target.port, "the Service has no such port; nothing intercepted for it");
        return Vec::new();
    };
    let cluster_ips = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default();
    let mut addresses: Vec<SocketAddr> = cluster_ips
        .iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, target.port))
        .collect();
    for slice in slices.state() {
        let owned = slice.namespace().as_deref() == Some(target.service.namespace.as_str())
            && slice.labels().get("kubernetes.io/service-name") == Some(&target.service.name);
        if !owned {
            continue;
        }
        // The slice port of the Service port's name (unnamed when the Service has one port).
        let Some(endpoint_port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            addresses.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, endpoint_port)),
            );
        }
    }
    addresses
}

//! Which pods of this node are intercepted: each pod a selection chooses has its pod-level
//! cgroup registered (the eBPF programs match it as an ancestor of every container's), for
//! the union of the targets its selections name. Pods that go, or stop being chosen, are
//! unregistered.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{ResourceExt, runtime::reflector::Store};

use super::config::Selection;
use crate::{
    cgroup,
    ebpf::{Dataplane, ProxyAddrs, TargetSet},
    identity::{KnownPod, Owner, PodDirectory, PodIdentity},
    kubelet::{PodCgroup, QosClass, find_pod_dir},
    telemetry::{
        events::{InternalEvent, PodRegistered, PodUnregistered},
        metrics,
    },
};

/// A selection with its target names resolved to config indices.
pub struct ResolvedSelection {
    pub selection: Selection,
    pub targets: Vec<usize>,
}

struct Registered {
    cgroup_id: u64,
    /// None for a registration adopted from an earlier gateway: it is written again.
    targets: Option<TargetSet>,
}

pub struct Registrar {
    pub dataplane: Arc<Dataplane>,
    pub directory: Arc<PodDirectory>,
    pub proxy: ProxyAddrs,
    pub selections: Vec<ResolvedSelection>,
    pub node: String,
    registered: HashMap<String, Registered>,
    /// Selected pods whose cgroup is not there yet, with when they were first seen.
    pending: HashMap<String, Instant>,
}

/// What a reconcile did, for the log and readiness.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub intercepted: usize,
    /// Selected pods whose cgroup does not exist yet (not started on this node).
    pub waiting: usize,
}

impl Registrar {
    pub fn new(
        dataplane: Arc<Dataplane>,
        directory: Arc<PodDirectory>,
        proxy: ProxyAddrs,
        selections: Vec<ResolvedSelection>,
        node: String,
    ) -> Registrar {
        Registrar {
            dataplane,
            directory,
            proxy,
            selections,
            node,
            registered: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Takes over the pod registrations a previous gateway left in the pinned map
    /// (`fail_mode: closed`), so they hold until the first reconcile keeps or drops them.
    pub fn adopt(&mut self) -> usize {
        let ids = self.dataplane.intercepted_cgroups();
        if ids.is_empty() {
            return 0;
        }
        let root = self.dataplane.cgroup_root().to_path_buf();
        let cgroups = cgroup::all_cgroups(&root);
        for id in ids {
            let Some(path) = cgroups.get(&id) else {
                continue;
            };
            let relative = path.strip_prefix(&root).unwrap_or(path);
            if let Some(pod) = PodCgroup::of(&relative.to_string_lossy())
                && pod.container_id.is_none()
            {
                self.registered.insert(
                    pod.pod_uid,
                    Registered {
                        cgroup_id: id,
                        targets: None,
                    },
                );
            }
        }
        self.registered.len()
    }

    /// The selections that choose a pod, given its namespace's labels.
    fn chosen(&self, pod: &Pod, namespaces: &Store<Namespace>) -> Vec<&ResolvedSelection> {
        let namespace_labels = pod
            .namespace()
            .and_then(|ns| namespaces.get(&kube::runtime::reflector::ObjectRef::new(&ns)))
            .map(|ns| ns.labels().clone())
            .unwrap_or_default();
        self.selections
            .iter()
            .filter(|s| s.selection.chooses(pod.labels(), &namespace_labels))
            .collect()
    }

    pub fn reconcile(&mut self, pods: &Store<Pod>, namespaces: &Store<Namespace>) -> Reconciled {
        let root = self.dataplane.cgroup_root().to_path_buf();
        let mut wanted = HashSet::new();
        for pod in pods.state() {
            let Some(uid) = pod.uid() else { continue };
            let status = pod.status.as_ref();
            let phase = status.and_then(|s| s.phase.as_deref());
            // A finished pod's containers are gone; its cgroup goes with them.
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let chosen = self.chosen(&pod, namespaces);
            if chosen.is_empty() {
                continue;
            }
            wanted.insert(uid.clone());
            let names: Vec<String> = chosen.iter().map(|s| s.selection.name.clone()).collect();
            let targets = TargetSet::of(chosen.iter().flat_map(|s| s.targets.iter().copied()));
            self.directory
                .insert(known_pod(&pod, &uid, names.clone(), &self.node));
            if self
                .registered
                .get(&uid)
                .is_some_and(|r| r.targets == Some(targets))
            {
                continue;
            }
            let first_seen = *self.pending.entry(uid.clone()).or_insert_with(Instant::now);
            let qos = status
                .and_then(|s| s.qos_class.as_deref())
                .and_then(QosClass::from_status);
            let Some(cgroup_id) = qos.and_then(|qos| pod_cgroup_id(&root, &uid, qos)) else {
                continue;
            };
            if let Err(e) = self
                .dataplane
                .register_cgroup(cgroup_id, self.proxy, targets)
            {
                tracing::error!(pod = %pod.name_any(), error = %e, "pod not intercepted");
                continue;
            }
            self.pending.remove(&uid);
            self.registered.insert(
                uid.clone(),
                Registered {
                    cgroup_id,
                    targets: Some(targets),
                },
            );
            PodRegistered {
                namespace: &pod.namespace().unwrap_or_default(),
                pod: &pod.name_any(),
                uid: &uid,
                cgroup_id,
                selections: &names,
                latency: first_seen.elapsed(),
            }
            .emit();
        }
        let gone: Vec<String> = self
            .registered
            .keys()
            .filter(|uid| !wanted.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(registered) = self.registered.remove(&uid) {
                self.dataplane.unregister_cgroup(registered.cgroup_id);
                PodUnregistered {
                    uid: &uid,
                    cgroup_id: registered.cgroup_id,
                }
                .emit();
            }
            self.directory.remove(&uid);
        }
        self.pending.retain(|uid, _| wanted.contains(uid));
        metrics().pods_intercepted.set(self.registered.len() as i64);
        Reconciled {
            intercepted: self.registered.len(),
            waiting: self.pending.len(),
        }
    }
}

fn pod_cgroup_id(root: &std::path::Path, uid: &str, qos: QosClass) -> Option<u64> {
    let dir: PathBuf = find_pod_dir(root, uid, qos)?;
    cgroup::cgroup_id(&dir).ok()
}

/// The runtime id in a status's `containerID` (`containerd://<id>`, `cri-o://<id>`).
fn runtime_id(container_id: &str) -> Option<String> {
    Some(container_id.split_once("://")?.1.to_string())
}

fn known_pod(pod: &Pod, uid: &str, selections: Vec<String>, node: &str) -> KnownPod {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let containers = status
        .into_iter()
        .flat_map(|s| {
            let all = [
                &s.container_statuses,
                &s.init_container_statuses,
                &s.ephemeral_container_statuses,
            ];
            all.into_iter().flatten().flatten()
        })
        .filter_map(|c| Some((runtime_id(c.container_id.as_deref()?)?, c.name.clone())))
        .collect();
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| Owner {
            kind: o.kind.clone(),
            name: o.name.clone(),
        });
    KnownPod {
        identity: PodIdentity {
            namespace: pod.namespace().unwrap_or_default(),
            pod: pod.name_any(),
            uid: uid.to_string(),
            container: None,
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            node: spec
                .and_then(|s| s.node_name.clone())
                .unwrap_or_else(|| node.to_string()),
            owner,
            labels: pod.labels().clone().into_iter().collect::<BTreeMap<_, _>>(),
            selections,
        },
        containers,
    }
}

//! Who is behind a connection: the kernel-attested cgroup and process, read at accept time.
//! A process in a pod is placed in it by its cgroup path (`kubelet`); in node mode the
//! `PodDirectory` adds what the API server says of that pod, joined by the pod's uid.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    sync::RwLock,
};

use serde::{Deserialize, Serialize};

use crate::{cgroup, kubelet::PodCgroup};

/// The kernel-attested workload, as records, holds and policy all see it. Records flatten it:
/// its fields sit beside the record's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub cgroup_id: u64,
    /// The cgroup path relative to the cgroup2 mount, when the process still existed.
    pub cgroup: Option<String>,
    /// Thread-group id (the process id) in the node's pid namespace.
    pub pid: u32,
    /// /proc/PID/comm at connect time.
    pub process: String,
    /// /proc/PID/cmdline at connect time.
    pub cmdline: Vec<String>,
    /// The Kubernetes pod (and container) that the cgroup path places the process in; absent
    /// for processes outside pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodCgroup>,
    /// In node mode, the pod as the API server describes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Box<PodIdentity>>,
}

/// A person or workload as a verified bearer token names it: an OIDC token, or a
/// service-account token (its subject and the groups the API server would give it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A pod as the API server describes it, for the workload whose cgroup is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    /// The container of the connecting process, found by its cgroup's container id in the
    /// pod's container statuses; absent while the status does not list it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub service_account: String,
    pub node: String,
    /// The controller that owns the pod (a ReplicaSet, StatefulSet, DaemonSet, Job…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    pub labels: BTreeMap<String, String>,
    /// The selections that chose the pod.
    pub selections: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// A pod the directory knows: its identity, without a container, and its containers by id.
#[derive(Debug, Clone)]
pub struct KnownPod {
    pub identity: PodIdentity,
    /// (runtime container id, container name), init and ephemeral containers included.
    pub containers: Vec<(String, String)>,
}

/// The intercepted pods of this node by uid, written by node mode, read at accept time.
#[derive(Debug, Default)]
pub struct PodDirectory {
    pods: RwLock<HashMap<String, KnownPod>>,
}

impl PodDirectory {
    pub fn insert(&self, pod: KnownPod) {
        let uid = pod.identity.uid.clone();
        self.pods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, pod);
    }

    pub fn remove(&self, uid: &str) {
        self.pods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// How many pods are intercepted.
    pub fn count(&self) -> usize {
        self.pods.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The identity of the pod a cgroup is in, with the container its id names.
    pub fn identify(&self, cgroup: &PodCgroup) -> Option<PodIdentity> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        let known = pods.get(&cgroup.pod_uid)?;
        let mut identity = known.identity.clone();
        identity.container = cgroup.container_id.as_ref().and_then(|id| {
            known
                .containers
                .iter()
                .find(|(known_id, _)| known_id == id)
                .map(|(_, name)| name.clone())
        });
        Some(identity)
    }
}

impl Workload {
    /// `pid_tgid` as `bpf_get_current_pid_tgid` returns it: tgid in the upper half.
    pub fn from_kernel(cgroup_id: u64, pid_tgid: u64) -> Workload {
        let pid = (pid_tgid >> 32) as u32;
        let proc_dir = format!("/proc/{pid}");
        // A process that already exited leaves these empty; the cgroup id still attests it.
        let process = fs::read_to_string(format!("{proc_dir}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        let cmdline = fs::read(format!("{proc_dir}/cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|arg| !arg.is_empty())
                    .map(|arg| String::from_utf8_lossy(arg).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let cgroup = cgroup::cgroup_of(&pid.to_string())
            .ok()
            .map(|p| format!("/{}", p.display()));
        let pod = cgroup.as_deref().and_then(PodCgroup::of);
        Workload {
            cgroup_id,
            cgroup,
            pid,
            process,
            cmdline,
            pod,
            kubernetes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid_tgid = u64::from(std::process::id()) << 32;
        let w = Workload::from_kernel(1, pid_tgid);
        assert_eq!(w.pid, std::process::id());
        assert!(!w.process.is_empty());
        assert!(!w.cmdline.is_empty());
        assert!(w.cgroup.is_some());
    }

    #[test]
    fn vanished_process_still_has_cgroup_id() {
        let w = Workload::from_kernel(42, u64::from(u32::MAX - 1) << 32);
        assert_eq!(w.cgroup_id, 42);
        assert!(w.process.is_empty());
    }
}

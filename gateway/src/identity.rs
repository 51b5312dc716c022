//! Who is behind a connection: the kernel-attested cgroup and process, read at accept time.
//! A process in a pod is placed in it by its cgroup path (`kubelet`); the pod's names and
//! service-account token build on this later.
use std::fs;

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

//! Session caps: no workload can take every session, and all of them together stay below the
//! file descriptor limit, so the gateway keeps accepting and other workloads keep being served.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{config::Limits, identity::Workload, vocabulary::Refusal};

/// Descriptors kept for the gateway itself: listeners, the record store, the control and
/// admin sockets, Kinesis connections.
const FD_RESERVE: u64 = 256;

/// Raises RLIMIT_NOFILE as far as this process may: both limits to the kernel's ceiling
/// (`fs.nr_open`, with CAP_SYS_RESOURCE, as the gateway has), else the soft limit to the hard
/// one. Returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with valid rlimit structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        for max in [ceiling.max(limit.rlim_max), limit.rlim_max] {
            let raised = libc::rlimit {
                rlim_cur: max,
                rlim_max: max,
            };
            if max > limit.rlim_cur && libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return max;
            }
        }
    }
    limit.rlim_cur
}

/// What the per-workload cap counts: a pod as a whole (all its containers, and every
/// process in them), or else the leaf cgroup (a `wrap`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkloadKey {
    Pod(String),
    Cgroup(u64),
}

impl WorkloadKey {
    pub fn of(workload: &Workload) -> WorkloadKey {
        match &workload.pod {
            Some(pod) => WorkloadKey::Pod(pod.pod_uid.clone()),
            None => WorkloadKey::Cgroup(workload.cgroup_id),
        }
    }
}

pub struct SessionLimits {
    max_sessions: usize,
    max_per_workload: usize,
    /// Open sessions by workload; the node total is their sum.
    open: Mutex<(usize, HashMap<WorkloadKey, usize>)>,
    /// The most open at once since `take_peak`.
    peak: std::sync::atomic::AtomicUsize,
}

impl SessionLimits {
    /// The default node cap is what the descriptors allow (two a session, after a reserve),
    /// and no more than the eBPF maps can track.
    pub fn new(limits: &Limits, fd_limit: u64) -> Arc<Self> {
        let from_fds = (fd_limit.saturating_sub(FD_RESERVE) / 2).max(1) as usize;
        let trackable = interlock_common::MAX_TRACKED_SOCKETS as usize;
        Arc::new(SessionLimits {
            max_sessions: limits.max_sessions.unwrap_or(from_fds.min(trackable)),
            max_per_workload: limits.max_sessions_per_workload,
            open: Mutex::new((0, HashMap::new())),
            peak: Default::default(),
        })
    }

    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// Sessions open now, and the most that were open at once since the last call.
    pub fn take_peak(&self) -> (usize, usize) {
        let open = self.open.lock().expect("limits lock").0;
        let peak = self.peak.swap(open, std::sync::atomic::Ordering::Relaxed);
        (open, peak.max(open))
    }

    /// A place for one more session of `workload`, held until the permit drops.
    pub fn try_acquire(self: &Arc<Self>, workload: WorkloadKey) -> Result<SessionPermit, Refusal> {
        let mut open = self.open.lock().expect("limits lock");
        let (total, by_workload) = &mut *open;
        if *total >= self.max_sessions {
            return Err(Refusal::Node(self.max_sessions));
        }
        let mine = by_workload.entry(workload.clone()).or_default();
        if *mine >= self.max_per_workload {
            return Err(Refusal::Workload(self.max_per_workload));
        }
        *mine += 1;
        *total += 1;
        self.peak
            .fetch_max(*total, std::sync::atomic::Ordering::Relaxed);
        Ok(SessionPermit {
            limits: self.clone(),
            workload,
        })
    }
}

pub struct SessionPermit {
    limits: Arc<SessionLimits>,
    workload: WorkloadKey,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("limits lock");
        let (total, by_workload) = &mut *open;
        *total -= 1;
        if let Some(mine) = by_workload.get_mut(&self.workload) {
            *mine -= 1;
            if *mine == 0 {
                by_workload.remove(&self.workload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_at_its_cap_leaves_room_for_others_and_permits_give_it_back() {
        let limits = SessionLimits::new(
            &Limits {
                max_sessions: Some(3),
                max_sessions_per_workload: 2,
            },
            1 << 20,
        );
        let a = || WorkloadKey::Cgroup(1);
        let a1 = limits.try_acquire(a()).unwrap();
        let a2 = limits.try_acquire(a()).unwrap();
        assert_eq!(limits.try_acquire(a()).err(), Some(Refusal::Workload(2)));
        let _b1 = limits.try_acquire(WorkloadKey::Cgroup(2)).unwrap();
        assert_eq!(
            limits.try_acquire(WorkloadKey::Cgroup(3)).err(),
            Some(Refusal::Node(3))
        );
        drop(a1);
        let a3 = limits.try_acquire(a()).unwrap();
        assert!(limits.try_acquire(WorkloadKey::Cgroup(3)).is_err());
        assert_eq!(limits.take_peak(), (3, 3));
        drop((a2, a3));
        assert_eq!(limits.take_peak(), (1, 3), "the peak outlives the sessions");
        assert_eq!(limits.take_peak(), (1, 1));
    }

    #[test]
    fn a_pods_containers_share_its_cap() {
        let limits = SessionLimits::new(
            &Limits {
                max_sessions: None,
                max_sessions_per_workload: 2,
            },
            1 << 20,
        );
        let in_container = |cgroup_id: u64, container: &str| {
            let path = format!(
                "kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-{container}.scope"
            );
            let workload = Workload {
                cgroup_id,
                pod: crate::kubelet::PodCgroup::of(&path),
                ..Workload::from_kernel(0, 0)
            };
            WorkloadKey::of(&workload)
        };
        let app = in_container(10, &"a".repeat(64));
        let sidecar = in_container(11, &"b".repeat(64));
        assert_eq!(app, sidecar, "two containers, one pod");
        let _one = limits.try_acquire(app).unwrap();
        let _two = limits.try_acquire(sidecar.clone()).unwrap();
        assert_eq!(
            limits.try_acquire(sidecar).err(),
            Some(Refusal::Workload(2))
        );
        let outside = WorkloadKey::of(&Workload::from_kernel(12, 0));
        assert_eq!(outside, WorkloadKey::Cgroup(12));
        assert!(limits.try_acquire(outside).is_ok());
    }

    #[test]
    fn the_node_cap_defaults_to_what_descriptors_and_maps_allow() {
        let limits = SessionLimits::new(&Limits::default(), 1_024 + FD_RESERVE);
        assert_eq!(limits.max_sessions(), 512);
        let limits = SessionLimits::new(&Limits::default(), 1 << 20);
        assert_eq!(limits.max_sessions(), 65_536);
    }
}

//! Kubelet's cgroup layout: which pod, and which container of it, a cgroup belongs to, and
//! where a pod's own cgroup is. Both cgroup drivers lay pods out by QoS class:
//! - systemd: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/
//!   cri-containerd-<id>.scope` (CRI-O: `crio-<id>.scope`);
//! - cgroupfs: `kubepods/burstable/pod<uid>/<id>`.
//!
//! Guaranteed pods sit directly under `kubepods`, with no QoS level. Some installs nest
//! `kubepods` deeper (kind: `kubelet.slice/kubelet-kubepods.slice`), so the pod is found by
//! its own path component wherever it is.
use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The class as the pod's `status.qosClass` names it.
    pub fn from_status(class: &str) -> Option<QosClass> {
        match class {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }

    /// The QoS level's name in cgroup paths; None for Guaranteed, which has no level.
    fn level(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// The pod a cgroup belongs to, as its path says: attested by the kernel, since a process
/// cannot leave the cgroup its container runtime put it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCgroup {
    /// The pod's uid, with dashes as the API server writes it.
    pub pod_uid: String,
    pub qos: QosClass,
    /// The container's runtime id, when the cgroup is a container's rather than the pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

impl PodCgroup {
    /// Reads a cgroup path (relative to the cgroup2 mount, with or without a leading `/`);
    /// None when it is not under a pod.
    pub fn of(path: &str) -> Option<PodCgroup> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let at = parts.iter().position(|p| pod_uid(p).is_some())?;
        let pod_uid = pod_uid(parts[at])?;
        let qos = match parts.get(at.wrapping_sub(1)).map(|p| qos_level(p)) {
            Some(Some(qos)) => qos,
            _ => QosClass::Guaranteed,
        };
        let container_id = parts.get(at + 1).and_then(|p| container_id(p));
        Some(PodCgroup {
            pod_uid,
            qos,
            container_id,
        })
    }
}

/// The pod uid a path component names: `pod<uid>` (cgroupfs), or
/// `kubepods[-<qos>]-pod<uid with _>.slice` (systemd).
fn pod_uid(component: &str) -> Option<String> {
    let uid = match component.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1.replace('_', "-"),
        None => component.strip_prefix("pod")?.to_string(),
    };
    is_uid(&uid).then_some(uid)
}

/// A uid as the API server writes it: 8-4-4-4-12 hex digits.
fn is_uid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn qos_level(component: &str) -> Option<QosClass> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    match name.rsplit(['-', '/']).next()? {
        "burstable" => Some(QosClass::Burstable),
        "besteffort" => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// The runtime's container id in a container's cgroup name: `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope` (systemd), or the bare id (cgroupfs). CRI-O's
/// `crio-conmon-<id>.scope` is its monitor, not a container.
fn container_id(component: &str) -> Option<String> {
    let id = match component.strip_suffix(".scope") {
        Some(scope) if scope.starts_with("crio-conmon-") => return None,
        Some(scope) => scope.rsplit_once('-')?.1,
        None => component,
    };
    (id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Where a pod's own cgroup is under the cgroup2 mount `root`: the usual places of both
/// drivers first, then anywhere within a few levels (nested `kubepods`). None when the pod
/// has no cgroup on this node (not started yet, or gone).
pub fn find_pod_dir(root: &Path, pod_uid: &str, qos: QosClass) -> Option<PathBuf> {
    let underscored = pod_uid.replace('-', "_");
    let systemd_slice = match qos.level() {
        Some(level) => format!("kubepods-{level}-pod{underscored}.slice"),
        None => format!("kubepods-pod{underscored}.slice"),
    };
    let (systemd, cgroupfs) = match qos.level() {
        Some(level) => (
            root.join("kubepods.slice")
                .join(format!("kubepods-{level}.slice"))
                .join(&systemd_slice),
            root.join("kubepods")
                .join(level)
                .join(format!("pod{pod_uid}")),
        ),
        None => (
            root.join("kubepods.slice").join(&systemd_slice),
            root.join("kubepods").join(format!("pod{pod_uid}")),
        ),
    };
    if let Some(found) = [systemd, cgroupfs].into_iter().find(|dir| dir.is_dir()) {
        return Some(found);
    }
    search(root, pod_uid, 5)
}

/// A bounded walk for the directory whose name is the pod's own component.
fn search(dir: &Path, pod_uid: &str, depth: usize) -> Option<PathBuf> {
    if depth == 0 {
        return None;
    }
    for entry in fs::read_dir(dir).ok()?.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if pod_uid_matches(&name, pod_uid) {
            return Some(entry.path());
        }
        // Only the kubelet's own levels lead to pods: its roots and slices, and cgroupfs's QoS
        // levels.
        if (name.starts_with("kube") || name == "burstable" || name == "besteffort")
            && let Some(found) = search(&entry.path(), pod_uid, depth - 1)
        {
            return Some(found);
        }
    }
    None
}

fn pod_uid_matches(component: &str, uid: &str) -> bool {
    pod_uid(component).is_some_and(|found| found == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3c2a1e-7b5d-4c9a-8e21-3d4f5a6b7c8d";
    const ID: &str = "4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a7b8c9d";

    #[test]
    fn pods_are_read_from_every_layout() {
        let underscored = UID.replace('-', "_");
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/cri-containerd-{ID}.scope"
                ),
                QosClass::Burstable,
                Some(ID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice/crio-{ID}.scope"
                ),
                QosClass::BestEffort,
                Some(ID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-pod{underscored}.slice/cri-containerd-{ID}.scope"
                ),
                QosClass::Guaranteed,
                Some(ID),
            ),
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                QosClass::Burstable,
                Some(ID),
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                QosClass::Guaranteed,
                Some(ID),
            ),
            (
                format!("kubepods/besteffort/pod{UID}"),
                QosClass::BestEffort,
                None,
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{underscored}.slice/cri-containerd-{ID}.scope"
                ),
                QosClass::Burstable,
                Some(ID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/crio-conmon-{ID}.scope"
                ),
                QosClass::Burstable,
                None,
            ),
        ];
        for (path, qos, container) in cases {
            let pod = PodCgroup::of(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(pod.pod_uid, UID, "{path}");
            assert_eq!(pod.qos, qos, "{path}");
            assert_eq!(pod.container_id.as_deref(), container, "{path}");
        }
    }

    #[test]
    fn other_cgroups_are_no_pod() {
        for path in [
            "/",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/interlock-wrap-01a1fcdaa5c17714ad22f611578489ff",
            "/kubepods/burstable/podnot-a-uid/abc",
        ] {
            assert_eq!(PodCgroup::of(path), None, "{path}");
        }
    }

    /// Real directories, laid out as each driver makes them, found by uid and class.
    #[test]
    fn pod_dirs_are_found_under_both_drivers_and_nested_roots() {
        let underscored = UID.replace('-', "_");
        let layouts = [
            (
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice"
                ),
                QosClass::Burstable,
            ),
            (
                format!("kubepods/besteffort/pod{UID}"),
                QosClass::BestEffort,
            ),
            (
                format!("kubepods.slice/kubepods-pod{underscored}.slice"),
                QosClass::Guaranteed,
            ),
            (format!("kubepods/pod{UID}"), QosClass::Guaranteed),
            (
                format!(
                    "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{underscored}.slice"
                ),
                QosClass::Burstable,
            ),
            (
                format!("kubelet-nested/kubepods/burstable/pod{UID}"),
                QosClass::Burstable,
            ),
        ];
        for (layout, qos) in layouts {
            let root = tempfile::tempdir().unwrap();
            let pod_dir = root.path().join(&layout);
            fs::create_dir_all(pod_dir.join(format!("cri-containerd-{ID}.scope"))).unwrap();
            assert_eq!(
                find_pod_dir(root.path(), UID, qos),
                Some(pod_dir),
                "{layout}"
            );
            let other = "11111111-2222-3333-4444-555555555555";
            assert_eq!(find_pod_dir(root.path(), other, qos), None, "{layout}");
        }
    }

    #[test]
    fn qos_classes_read_as_the_api_writes_them() {
        assert_eq!(
            QosClass::from_status("BestEffort"),
            Some(QosClass::BestEffort)
        );
        assert_eq!(
            QosClass::from_status("Guaranteed"),
            Some(QosClass::Guaranteed)
        );
        assert_eq!(QosClass::from_status("burstable"), None);
    }
}

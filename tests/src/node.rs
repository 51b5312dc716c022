//! A simulated Kubernetes node for node-mode tests: kubelet's cgroup layout (systemd or
//! cgroupfs driver, containerd or CRI-O names, every QoS class) under a nested kubelet root,
//! "pods" that are network namespaces routed through the host, a node address they reach the
//! gateway on, and the Pod objects to serve from the test API server. Everything is removed
//! when the guards drop.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

use crate::{PodNetns, cgroup2_mount, ip};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Runtime {
    Containerd,
    CriO,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    fn level(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }

    fn class(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

pub struct SimNode {
    pub name: String,
    /// Where this node's kubelet cgroups live: `<cgroup2>/kubelet-ilk<pid>.slice`, a nested
    /// root as kind and some installs have.
    pub root: PathBuf,
    /// The node IP: a host address (on `lo`, as this kernel has no dummy links), reached by
    /// every pod through its default route.
    pub node_ip: String,
    forwarding_was: String,
}

const FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";

impl SimNode {
    pub fn create(name: &str) -> SimNode {
        let mount = cgroup2_mount().expect("a cgroup2 mount");
        let id = std::process::id() % 10_000;
        let root = mount.join(format!("kubelet-ilk{id}.slice"));
        remove_tree(&root);
        fs::create_dir_all(&root).unwrap();
        let node_ip = format!("10.230.{}.1", id % 250);
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{node_ip}/32"), "dev", "lo"])
            .output();
        ip(&["addr", "add", &format!("{node_ip}/32"), "dev", "lo"]);
        // Pods reach each other through the host, as through a CNI's routes.
        let forwarding_was = fs::read_to_string(FORWARDING).unwrap_or_default();
        fs::write(FORWARDING, "1").unwrap();
        SimNode {
            name: name.into(),
            root,
            node_ip,
            forwarding_was,
        }
    }

    /// A pod with one container (`app`), its cgroups made as kubelet and the runtime would
    /// make them, and its network namespace routed through the host.
    pub fn pod(
        &self,
        tag: u8,
        namespace: &str,
        name: &str,
        labels: Value,
        layout: (Driver, Runtime, Qos),
    ) -> SimPod {
        let uid = uuid_v4();
        let netns = PodNetns::create(tag);
        ip(&[
            "-n",
            &netns.name,
            "route",
            "add",
            "default",
            "via",
            &netns.host_ip,
        ]);
        let (driver, runtime, qos) = layout;
        let underscored = uid.replace('-', "_");
        let pod_dir = match (driver, qos.level()) {
            (Driver::Systemd, Some(level)) => self
                .root
                .join("kubepods.slice")
                .join(format!("kubepods-{level}.slice"))
                .join(format!("kubepods-{level}-pod{underscored}.slice")),
            (Driver::Systemd, None) => self
                .root
                .join("kubepods.slice")
                .join(format!("kubepods-pod{underscored}.slice")),
            (Driver::Cgroupfs, Some(level)) => self
                .root
                .join("kubepods")
                .join(level)
                .join(format!("pod{uid}")),
            (Driver::Cgroupfs, None) => self.root.join("kubepods").join(format!("pod{uid}")),
        };
        fs::create_dir_all(&pod_dir).unwrap();
        let mut pod = SimPod {
            name: name.into(),
            namespace: namespace.into(),
            uid,
            labels,
            qos,
            driver,
            runtime,
            netns,
            pod_dir,
            containers: Vec::new(),
            node: self.name.clone(),
        };
        pod.start_container("app");
        pod
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        remove_tree(&self.root);
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.node_ip), "dev", "lo"])
            .output();
        let _ = fs::write(FORWARDING, self.forwarding_was.trim());
    }
}

pub struct Container {
    pub name: String,
    /// The runtime's 64-hex-digit container id.
    pub id: String,
    pub dir: PathBuf,
}

pub struct SimPod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: Value,
    pub qos: Qos,
    driver: Driver,
    runtime: Runtime,
    pub netns: PodNetns,
    pub pod_dir: PathBuf,
    pub containers: Vec<Container>,
    node: String,
}

impl SimPod {
    /// A new container cgroup in the pod (a start, or a restart under a new id), as the
    /// runtime names it.
    pub fn start_container(&mut self, name: &str) -> &Container {
        let id = format!(
            "{}{}",
            uuid_v4().replace('-', ""),
            uuid_v4().replace('-', "")
        );
        let dir = match (self.driver, self.runtime) {
            (Driver::Systemd, Runtime::Containerd) => {
                self.pod_dir.join(format!("cri-containerd-{id}.scope"))
            }
            (Driver::Systemd, Runtime::CriO) => self.pod_dir.join(format!("crio-{id}.scope")),
            (Driver::Cgroupfs, _) => self.pod_dir.join(&id),
        };
        fs::create_dir_all(&dir).unwrap();
        self.containers.push(Container {
            name: name.into(),
            id,
            dir,
        });
        self.containers.last().unwrap()
    }

    /// `command` in the latest container named `container`: it joins that container's cgroup,
    /// then the pod's network namespace.
    pub fn run(&self, container: &str, command: &[&str]) -> Command {
        let dir = &self
            .containers
            .iter()
            .rev()
            .find(|c| c.name == container)
            .expect("container")
            .dir;
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo $$ > \"$1/cgroup.procs\" && shift && exec ip netns exec \"$@\"",
            "sh",
        ])
        .arg(dir)
        .arg(&self.netns.name)
        .args(command);
        cmd
    }

    /// The Pod object kubelet would have reported by now: scheduled on the node, running, with
    /// the QoS class and the container statuses (ids included) the gateway joins on.
    pub fn object(&self, service_account: &str) -> Value {
        let prefix = match self.runtime {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
        };
        let mut statuses: Vec<Value> = Vec::new();
        for c in &self.containers {
            // The latest container of a name is its current one.
            statuses.retain(|s| s["name"] != c.name.as_str());
            statuses.push(json!({
                "name": c.name, "containerID": format!("{prefix}://{}", c.id),
                "image": "registry.example/app:1", "imageID": "registry.example/app@sha256:00",
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
            }));
        }
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": self.name, "namespace": self.namespace, "uid": self.uid, "labels": self.labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{}-rs", self.name), "uid": uuid_v4(), "controller": true}],
            },
            "spec": {
                "nodeName": self.node, "serviceAccountName": service_account,
                "containers": [{"name": "app", "image": "registry.example/app:1"}],
            },
            "status": {"phase": "Running", "podIP": self.netns.pod_ip, "qosClass": self.qos.class(), "containerStatuses": statuses},
        })
    }
}

impl Drop for SimPod {
    fn drop(&mut self) {
        remove_tree(&self.pod_dir);
    }
}

/// Kills what runs in a cgroup tree and removes it, deepest first.
fn remove_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let mut dirs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        dirs.push(d);
    }
    for d in dirs.iter().rev() {
        for _ in 0..50 {
            if fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An address of this host (on `lo`) that pods reach through their default route, for a
/// server they must reach (the test API server); removed on drop.
pub struct HostAddress(pub String);

impl HostAddress {
    pub fn add(address: &str) -> HostAddress {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{address}/32"), "dev", "lo"])
            .output();
        ip(&["addr", "add", &format!("{address}/32"), "dev", "lo"]);
        HostAddress(address.into())
    }
}

impl Drop for HostAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"])
            .output();
    }
}

//! `interlock await`: the start gate of a selected pod, run as its first init container. It
//! returns only once the kernel redirects this pod's connections: it dials the reserved
//! await address, which reaches nothing unless the pod is intercepted, and the gateway
//! answers with the pod uid it attests for the socket, which must be this pod's own (read
//! from this process's cgroup). The pod's other containers start after it, so none of them
//! runs a moment uncovered.
use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{cgroup, kubelet::PodCgroup};

const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
const RETRY: Duration = Duration::from_millis(100);

pub fn await_interception(address: SocketAddr, timeout: Duration) -> Result<()> {
    let own = cgroup::cgroup_of("self")?;
    let Some(pod) = PodCgroup::of(&own.to_string_lossy()) else {
        bail!(
            "this process's cgroup ({}) is not in a Kubernetes pod: run `interlock await` as an \
             init container of the pod to gate",
            own.display()
        );
    };
    let deadline = Instant::now() + timeout;
    loop {
        let last = match ask(address) {
            Ok(answer) if answer["pod_uid"] == pod.pod_uid.as_str() => {
                println!(
                    "intercepted: pod {}/{} (uid {})",
                    answer["namespace"].as_str().unwrap_or("?"),
                    answer["pod"].as_str().unwrap_or("?"),
                    pod.pod_uid
                );
                return Ok(());
            }
            Ok(answer) => format!("the gateway attests another pod: {answer}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!(
                "pod {} is not intercepted after {}: last attempt: {last}; check that the \
                 gateway runs on this node, that a selection chooses this pod, and the \
                 gateway's log",
                pod.pod_uid,
                humantime::format_duration(timeout)
            );
        }
        std::thread::sleep(RETRY);
    }
}

fn ask(address: SocketAddr) -> Result<serde_json::Value, String> {
    let stream = TcpStream::connect_timeout(&address, ATTEMPT_TIMEOUT)
        .map_err(|e| format!("{address}: {e} (not intercepted yet)"))?;
    stream
        .set_read_timeout(Some(ATTEMPT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("{address}: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("{address} answered {line:?}: {e}"))
}

//! cgroup v2 helpers: find the mount, name our own cgroup, create and remove wrap cgroups.
use std::{
    fs,
    io::{self, BufRead},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Why the cgroup of a process, or the cgroup2 mount, could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Not a `source`: the message already says it, and `{:#}` would print it twice.
    #[error("reading {path}: {error}")]
    Read { path: String, error: io::Error },
    #[error(
        "no cgroup2 filesystem is mounted; Interlock needs cgroup v2 (mount it with \
         `mount -t cgroup2 none /sys/fs/cgroup`)"
    )]
    NoCgroup2,
    #[error("no cgroup v2 entry in /proc/{0}/cgroup")]
    NotInCgroup2(String),
}

type Result<T> = std::result::Result<T, CgroupError>;

fn read_error(path: impl Into<String>) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.into();
    move |error| CgroupError::Read { path, error }
}

/// The cgroup2 mount point, read from /proc/self/mountinfo. Nodes usually mount it at
/// /sys/fs/cgroup; hybrid hosts at /sys/fs/cgroup/unified.
pub fn cgroup2_mount() -> Result<PathBuf> {
    const MOUNTINFO: &str = "/proc/self/mountinfo";
    let file = fs::File::open(MOUNTINFO).map_err(read_error(MOUNTINFO))?;
    for line in io::BufReader::new(file).lines() {
        let line = line.map_err(read_error(MOUNTINFO))?;
        // Fields: id parent major:minor root mount-point options [optional...] - fstype ...
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mount_point) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(unescape_mount_path(mount_point)));
        }
    }
    Err(CgroupError::NoCgroup2)
}

/// mountinfo escapes spaces and a few other bytes as octal (`\040`).
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 path of a process relative to the mount, from /proc/PID/cgroup (`0::/path`).
pub fn cgroup_of(pid: &str) -> Result<PathBuf> {
    let path = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&path).map_err(read_error(path))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
        .ok_or_else(|| CgroupError::NotInCgroup2(pid.to_string()))
}

/// The cgroup id the kernel reports through `bpf_get_current_cgroup_id`: the directory's inode.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .map_err(read_error(path.display().to_string()))?
        .ino())
}

/// The directory wrap cgroups are created in: the parent of the gateway's own cgroup, so
/// they sit beside it and inherit the same limits (on a node: beside the gateway pod).
pub fn wrap_parent(mount: &Path) -> Result<PathBuf> {
    let own = cgroup_of("self")?;
    Ok(mount.join(own.parent().unwrap_or(Path::new(""))))
}

/// Every cgroup under `root` by id: to forget registrations whose cgroup is gone, and to
/// tell which pod a registration left by an earlier gateway was for.
pub fn all_cgroups(root: &Path) -> std::collections::HashMap<u64, PathBuf> {
    let mut ids = std::collections::HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        ids.insert(meta.ino(), dir.clone());
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    ids
}

/// Kills every process in the cgroup (cgroup v2 `cgroup.kill`, Linux 5.14).
pub fn kill_all(path: &Path) -> io::Result<()> {
    fs::write(path.join("cgroup.kill"), "1")
}

/// Whether no process is left in the cgroup or below it.
pub fn is_empty(path: &Path) -> bool {
    // `populated` counts the cgroups below too: a process may have moved into one.
    fs::read_to_string(path.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|l| l == "populated 0"))
}

/// Removes an empty cgroup and the cgroups below it, deepest first: cgroupfs removes a
/// directory only once nothing is under it, and its files only with it.
pub fn remove(path: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove(&entry.path())?;
        }
    }
    fs::remove_dir(path)
}

/// Name prefix of the cgroups `interlock wrap` runs commands in.
pub const WRAP_PREFIX: &str = "interlock-wrap-";
/// Between a wrap cgroup's id and its pod proxy address, if it has one.
const WRAP_VIA: &str = "-via-";

/// Tells one gateway's wrap cgroups from another's on the same host (a second gateway with
/// its own config, or tests): derived from the control socket path, which a restart keeps.
pub fn gateway_tag(control_socket: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(control_socket.as_os_str().as_encoded_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// A wrap cgroup's name: its gateway's tag, an id, and the pod proxy address if any, so that
/// a restarted gateway can take its registrations over (`live_wraps`) with their listeners.
pub fn wrap_name(tag: &str, id: uuid::Uuid, pod_proxy: Option<std::net::IpAddr>) -> String {
    let via = pod_proxy
        .map(|ip| format!("{WRAP_VIA}{ip}"))
        .unwrap_or_default();
    format!("{WRAP_PREFIX}{tag}-{}{via}", id.simple())
}

pub struct LiveWrap {
    pub path: PathBuf,
    pub cgroup_id: u64,
    pub pod_proxy: Option<std::net::IpAddr>,
}

/// The wrap cgroups of the gateway tagged `tag` under `parent` that still hold processes.
pub fn live_wraps(parent: &Path, tag: &str) -> Vec<LiveWrap> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rest = name
                .strip_prefix(WRAP_PREFIX)?
                .strip_prefix(tag)?
                .strip_prefix('-')?;
            let pod_proxy = match rest.split_once(WRAP_VIA) {
                Some((_, ip)) => Some(ip.parse().ok()?),
                None => None,
            };
            let path = entry.path();
            if is_empty(&path) {
                return None;
            }
            Some(LiveWrap {
                cgroup_id: entry.metadata().ok()?.ino(),
                path,
                pod_proxy,
            })
        })
        .collect()
}

/// Removes empty wrap cgroups under `parent` that no registration owns: left by a wrap or
/// a gateway that was killed. Cgroups that still hold processes are left until they exit.
pub fn remove_orphaned_wraps(parent: &Path, owned: &std::collections::HashSet<u64>) -> usize {
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(WRAP_PREFIX))
        .filter(|e| e.metadata().is_ok_and(|m| !owned.contains(&m.ino())))
        .filter(|e| remove(&e.path()).is_ok())
        .count()
}

/// Moves the calling process into the cgroup whose `cgroup.procs` path is given. Only
/// async-signal-safe calls: it runs between fork and exec.
pub fn join_cgroup_in_child(procs_path: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: plain syscalls on a NUL-terminated path and a static buffer.
    unsafe {
        let fd = libc::open(procs_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_names_carry_the_gateway_and_the_pod_proxy() {
        let id = uuid::Uuid::now_v7();
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (
            gateway_tag(Path::new("/run/interlock/control.sock")),
            gateway_tag(Path::new("/run/other/control.sock")),
        );
        assert_ne!(ours, theirs);
        for pod_proxy in [
            None,
            Some("10.231.1.1".parse().unwrap()),
            Some("fd00::1".parse().unwrap()),
        ] {
            let path = dir.path().join(wrap_name(&ours, id, pod_proxy));
            fs::create_dir(&path).unwrap();
            // A cgroup with a process in it or below says so in cgroup.events.
            fs::write(path.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
            let live = live_wraps(dir.path(), &ours);
            assert_eq!(live.len(), 1);
            assert_eq!(live[0].pod_proxy, pod_proxy);
            assert_eq!(live[0].path, path);
            assert!(
                live_wraps(dir.path(), &theirs).is_empty(),
                "another gateway's"
            );
            fs::write(path.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
            assert!(
                live_wraps(dir.path(), &ours).is_empty(),
                "an empty cgroup is not live"
            );
            fs::remove_dir_all(&path).unwrap();
        }
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(
            unescape_mount_path("/sys/fs/cgroup\\040x"),
            "/sys/fs/cgroup x"
        );
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn finds_cgroup2_and_own_cgroup() {
        let mount = cgroup2_mount().expect("this machine has cgroup v2");
        assert!(mount.join("cgroup.procs").exists(), "{}", mount.display());
        let own = cgroup_of("self").unwrap();
        assert!(mount.join(own).join("cgroup.procs").exists());
    }
}

//! Loads the eBPF programs, attaches them at the cgroup2 root and owns their maps.
//!
//! `fail_mode: open` keeps links and maps tied to this process: when it dies, even by SIGKILL,
//! the kernel detaches everything and workloads connect directly. `fail_mode: closed` pins
//! links and maps under `bpffs_dir`, so they outlive the process and keep redirecting to a
//! listener that is gone, which refuses the connection until a gateway is back.
//!
//! - `error`: why the dataplane could not start or change;
//! - `pins`: the links and maps pinned in bpffs.
pub mod error;
mod pins;

use std::{
    collections::HashSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps, links::FdLink},
};
use interlock_common::{
    AddrKey, InterceptConfig, MAX_CONFIG_TARGETS, NOT_A_TARGET, Origin, Settings, names,
};
use tracing::{info, warn};

pub use self::{error::DataplaneError, pins::detach_pinned};
use self::{
    error::{Result, step},
    pins::{pin_link, prepare_bpffs},
};
use crate::{
    cgroup,
    config::{Config, FailMode},
};

/// The object built by `cargo xtask build-ebpf`, embedded by build.rs (empty when it was not
/// built, so that userspace still compiles for `cargo clippy` and unit tests).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interlock.bpf.o"));

const PINNED_MAPS: [&str; 6] = [
    names::INTERCEPT_CGROUPS,
    names::TARGETS,
    names::HOST_ADDRS,
    names::SOCK_ORIGINS,
    names::FLOWS,
    names::SETTINGS,
];

/// Where a cgroup's intercepted connections are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyAddrs {
    pub v4: Option<SocketAddr>,
    pub v6: Option<SocketAddr>,
}

/// Which targets a registration is intercepted for (bit i: target i of the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetSet([u64; MAX_CONFIG_TARGETS / 64]);

impl TargetSet {
    pub fn all() -> TargetSet {
        TargetSet([u64::MAX; MAX_CONFIG_TARGETS / 64])
    }

    pub fn of(indices: impl IntoIterator<Item = usize>) -> TargetSet {
        let mut words = [0; MAX_CONFIG_TARGETS / 64];
        for index in indices.into_iter().filter(|i| *i < MAX_CONFIG_TARGETS) {
            words[index / 64] |= 1 << (index % 64);
        }
        TargetSet(words)
    }
}

impl ProxyAddrs {
    fn to_intercept_config(self, targets: TargetSet) -> InterceptConfig {
        let (proxy_ip4, proxy_port4) = match self.v4 {
            Some(SocketAddr::V4(a)) => (u32::from_ne_bytes(a.ip().octets()), a.port()),
            _ => (0, 0),
        };
        let (proxy_ip6, proxy_port6) = match self.v6 {
            Some(SocketAddr::V6(a)) => (ipv6_words(a.ip()), a.port()),
            _ => ([0; 4], 0),
        };
        InterceptConfig {
            proxy_ip4,
            proxy_ip6,
            proxy_port4,
            proxy_port6,
            targets: targets.0,
        }
    }
}

fn ipv6_words(ip: &Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The map key for an address as the kernel sees it.
pub fn addr_key(addr: SocketAddr) -> AddrKey {
    match addr.ip() {
        IpAddr::V4(ip) => AddrKey::from_ipv4(u32::from_ne_bytes(ip.octets()), addr.port()),
        IpAddr::V6(ip) => AddrKey::from_ipv6(ipv6_words(&ip), addr.port()),
    }
}

/// The address an `AddrKey` stands for; v4-mapped keys come back as IPv4.
pub fn key_addr(key: &AddrKey) -> SocketAddr {
    let mut octets = [0u8; 16];
    for (i, word) in key.addr.iter().enumerate() {
        octets[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let ip = Ipv6Addr::from(octets);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(IpAddr::V4(v4), key.port),
        None => SocketAddr::new(IpAddr::V6(ip), key.port),
    }
}

pub struct Dataplane {
    // Holds the programs; in open mode also their links, which detach when this drops.
    _ebpf: Ebpf,
    intercept: Mutex<HashMap<MapData, u64, InterceptConfig>>,
    targets: Mutex<HashMap<MapData, AddrKey, u32>>,
    host_addrs: Mutex<HashMap<MapData, [u32; 4], u8>>,
    sock_origins: Mutex<HashMap<MapData, u64, Origin>>,
    flows: Mutex<HashMap<MapData, AddrKey, Origin>>,
    /// The TARGETS keys each service target holds now, by target index.
    service_keys: Mutex<std::collections::HashMap<u32, Vec<AddrKey>>>,
    cgroup_root: PathBuf,
}

impl Dataplane {
    /// Loads, attaches and configures the programs for this gateway process.
    pub fn start(config: &Config) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let cgroup_root = cgroup::cgroup2_mount()?;
        let pin_dir = (config.fail_mode == FailMode::Closed).then(|| config.bpffs_dir.clone());
        match &pin_dir {
            Some(dir) => prepare_bpffs(dir)?,
            None if config.bpffs_dir.exists() => {
                warn!(
                    dir = %config.bpffs_dir.display(),
                    "removing programs pinned by an earlier fail_mode: closed gateway"
                );
                detach_pinned(&config.bpffs_dir)?;
            }
            None => {}
        }

        let mut loader = EbpfLoader::new();
        let map_pins: Vec<(&str, PathBuf)> = pin_dir
            .iter()
            .flat_map(|dir| {
                PINNED_MAPS
                    .iter()
                    .map(move |m| (*m, dir.join("maps").join(m)))
            })
            .collect();
        for (name, path) in &map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        start_ebpf_logger(&mut ebpf);

        let root = fs::File::open(&cgroup_root).map_err(step(format!(
            "opening cgroup2 root {}",
            cgroup_root.display()
        )))?;
        let links_dir = pin_dir.as_ref().map(|d| d.join("links"));
        attach_all(&mut ebpf, &root, links_dir.as_deref())?;
        write_settings(&mut ebpf, config)?;

        let dataplane = Dataplane {
            intercept: Mutex::new(take_map(&mut ebpf, names::INTERCEPT_CGROUPS)?),
            targets: Mutex::new(take_map(&mut ebpf, names::TARGETS)?),
            host_addrs: Mutex::new(take_map(&mut ebpf, names::HOST_ADDRS)?),
            sock_origins: Mutex::new(take_map(&mut ebpf, names::SOCK_ORIGINS)?),
            flows: Mutex::new(take_map(&mut ebpf, names::FLOWS)?),
            service_keys: Mutex::default(),
            _ebpf: ebpf,
            cgroup_root,
        };
        let host_addrs = dataplane.refresh_host_addrs()?;
        dataplane.set_targets(config, &host_addrs)?;
        info!(
            cgroup_root = %dataplane.cgroup_root.display(),
            fail_mode = ?config.fail_mode,
            "eBPF programs attached"
        );
        Ok(dataplane)
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Replaces the TARGETS map with the configured targets.
    fn set_targets(&self, config: &Config, host_addrs: &HashSet<IpAddr>) -> Result<()> {
        let keys = target_keys(config, host_addrs)?;
        let mut targets = self.targets.lock().expect("targets lock");
        let stale: Vec<AddrKey> = targets.keys().filter_map(|key| key.ok()).collect();
        for key in stale {
            targets
                .remove(&key)
                .map_err(step("removing a stale target from the TARGETS map"))?;
        }
        for (key, index) in keys {
            targets
                .insert(key, index, 0)
                .map_err(step("adding a target to the TARGETS map (is it full?)"))?;
        }
        Ok(())
    }

    /// Points the addresses of a service target (its cluster IPs and endpoints) at it,
    /// replacing the ones it had. An address another target holds is left to that one.
    pub fn set_service_target(&self, index: u32, addresses: &[SocketAddr]) -> Result<()> {
        let mut targets = self.targets.lock().expect("targets lock");
        let mut held = self.service_keys.lock().expect("service keys lock");
        let previous = held.remove(&index).unwrap_or_default();
        let mut now = Vec::new();
        for key in addresses.iter().map(|a| addr_key(*a)) {
            match targets.get(&key, 0) {
                Ok(other) if other != index => {
                    warn!(
                        address = %key_addr(&key),
                        target = index,
                        other,
                        "a service address is already another target's; left to that one"
                    );
                    continue;
                }
                _ => {}
            }
            targets.insert(key, index, 0).map_err(step(
                "adding a service address to the TARGETS map (is it full?)",
            ))?;
            now.push(key);
        }
        for gone in previous.iter().filter(|k| !now.contains(k)) {
            let _ = targets.remove(gone);
        }
        held.insert(index, now);
        Ok(())
    }

    /// Makes HOST_ADDRS hold the host's current non-loopback addresses; returns them.
    pub fn refresh_host_addrs(&self) -> Result<HashSet<IpAddr>> {
        let current: HashSet<IpAddr> = if_addrs::get_if_addrs()
            .map_err(step("listing the host's network addresses"))?
            .into_iter()
            .map(|interface| canonical_ip(interface.ip()))
            .filter(|ip| !ip.is_loopback())
            .collect();
        let word_key = |ip: &IpAddr| addr_key(SocketAddr::new(*ip, 0)).addr;
        let wanted: HashSet<[u32; 4]> = current.iter().map(word_key).collect();
        let mut map = self.host_addrs.lock().expect("host addrs lock");
        let stored: Vec<[u32; 4]> = map.keys().filter_map(|key| key.ok()).collect();
        for gone in stored.iter().filter(|key| !wanted.contains(*key)) {
            let _ = map.remove(gone);
        }
        for key in wanted.iter().filter(|key| !stored.contains(key)) {
            map.insert(*key, 1, 0).map_err(step(
                "adding a host address to the HOST_ADDRS map (is it full?)",
            ))?;
        }
        Ok(current)
    }

    pub fn register_cgroup(
        &self,
        cgroup_id: u64,
        proxy: ProxyAddrs,
        targets: TargetSet,
    ) -> Result<()> {
        self.intercept
            .lock()
            .expect("intercept lock")
            .insert(cgroup_id, proxy.to_intercept_config(targets), 0)
            .map_err(step(
                "adding the cgroup to the INTERCEPT_CGROUPS map (is it full?)",
            ))
    }

    pub fn unregister_cgroup(&self, cgroup_id: u64) {
        // Absent keys are fine: the sweeper may have removed it already.
        let _ = self
            .intercept
            .lock()
            .expect("intercept lock")
            .remove(&cgroup_id);
    }

    pub fn intercepted_cgroups(&self) -> Vec<u64> {
        self.intercept
            .lock()
            .expect("intercept lock")
            .keys()
            .filter_map(|key| key.ok())
            .collect()
    }

    /// Removes registrations whose cgroup no longer exists (after a crash in closed mode, the
    /// pinned map still holds the old gateway's registrations), and empty wrap cgroups that
    /// no registration owns (left by a wrap or a gateway that was killed).
    pub fn forget_vanished_cgroups(&self) -> Result<usize> {
        let live = cgroup::all_cgroups(&self.cgroup_root);
        let stale: Vec<u64> = self
            .intercepted_cgroups()
            .into_iter()
            .filter(|id| !live.contains_key(id))
            .collect();
        for id in &stale {
            self.unregister_cgroup(*id);
        }
        let owned = self.intercepted_cgroups().into_iter().collect();
        let parent = cgroup::wrap_parent(&self.cgroup_root)?;
        Ok(stale.len() + cgroup::remove_orphaned_wraps(&parent, &owned))
    }

    /// The origin of an accepted connection, found by its peer (the client's source tuple).
    /// The entry is deleted: each connection is claimed once.
    pub fn take_flow(&self, peer: SocketAddr) -> Option<Origin> {
        let key = addr_key(canonical_peer(peer));
        let mut flows = self.flows.lock().expect("flows lock");
        let origin = flows.get(&key, 0).ok()?;
        let _ = flows.remove(&key);
        Some(origin)
    }

    /// Entry counts of the maps whose leaks would matter, for /metrics.
    pub fn map_entry_counts(&self) -> [(&'static str, usize); 3] {
        [
            (
                names::SOCK_ORIGINS,
                self.sock_origins.lock().expect("lock").keys().count(),
            ),
            (
                names::FLOWS,
                self.flows.lock().expect("lock").keys().count(),
            ),
            (
                names::INTERCEPT_CGROUPS,
                self.intercept.lock().expect("lock").keys().count(),
            ),
        ]
    }
}

/// A dual-stack listener reports IPv4 peers as `::ffff:a.b.c.d`; keys use the same mapping,
/// but normalise so both listener kinds give the same key.
fn canonical_peer(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(peer.ip()), peer.port())
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// TARGETS entries: each target under its own address, except that a target on this host (a
/// loopback, unspecified or host address) goes under `AddrKey::this_host`, which connect4/6
/// look up for a destination at any address of the host. The gateway's own listening ports
/// go there too, marked `NOT_A_TARGET`, so that a whole-host target (`127.0.0.1:*`) leaves
/// them alone. Two entries on one key are an error: the kernel could deliver both to one
/// listener.
fn target_keys(config: &Config, host_addrs: &HashSet<IpAddr>) -> Result<Vec<(AddrKey, u32)>> {
    let own = [
        ("listen", Some(config.listen)),
        ("listen_v6", config.listen_v6),
        ("admin", Some(config.admin)),
    ];
    let own = own.into_iter().filter_map(|(key, addr)| {
        Some((format!("the gateway's own `{key}`"), addr?, NOT_A_TARGET))
    });
    // Service targets come and go with their Service (`set_service_target`).
    let targets = config
        .targets
        .iter()
        .enumerate()
        .filter_map(|(index, target)| {
            Some((
                format!("target `{}`", target.name),
                target.address?,
                index as u32,
            ))
        });
    let mut keys: Vec<(AddrKey, u32, String, SocketAddr)> = Vec::new();
    for (label, address, value) in targets.chain(own) {
        let ip = canonical_ip(address.ip());
        let on_this_host = value == NOT_A_TARGET
            || ip.is_loopback()
            || ip.is_unspecified()
            || host_addrs.contains(&ip);
        let key = if on_this_host {
            AddrKey::this_host(address.port())
        } else {
            addr_key(address)
        };
        match keys.iter().find(|(k, ..)| *k == key) {
            // listen and listen_v6 share a port.
            Some((_, NOT_A_TARGET, ..)) if value == NOT_A_TARGET => continue,
            Some((_, _, other, other_address)) => {
                return Err(DataplaneError::Invalid(format!(
                    "{other} ({other_address}) and {label} ({address}) are the same port of \
                     this host: a listener there is reached through every address of the host, \
                     so keep one of them"
                )));
            }
            None => keys.push((key, value, label, address)),
        }
    }
    Ok(keys
        .into_iter()
        .map(|(key, value, ..)| (key, value))
        .collect())
}

fn write_settings(ebpf: &mut Ebpf, config: &Config) -> Result<()> {
    let settings = Settings {
        gateway_tgid: std::process::id(),
        fail_closed: u32::from(config.fail_mode == FailMode::Closed),
        host_netns_cookie: own_netns_cookie()?,
    };
    let map = ebpf
        .map_mut(names::SETTINGS)
        .ok_or_else(|| DataplaneError::Invalid("map SETTINGS missing from object".into()))?;
    let mut array: Array<_, Settings> =
        Array::try_from(map).map_err(step("opening the SETTINGS map"))?;
    array
        .set(0, settings, 0)
        .map_err(step("writing the SETTINGS map"))
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<HashMap<MapData, K, V>> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| DataplaneError::Invalid(format!("map {name} missing from object")))?;
    HashMap::try_from(map).map_err(step(format!("map {name} has an unexpected type")))
}

/// Loads and attaches one program at the cgroup2 root, pinning its link in closed mode.
macro_rules! attach_program {
    ($ebpf:expr, $ty:ty, $name:expr, $root:expr, $links_dir:expr) => {{
        let prog: &mut $ty = program($ebpf, $name)?;
        prog.load()
            .map_err(step(format!("the verifier rejected {}", $name)))?;
        let id = prog
            .attach($root.as_fd(), CgroupAttachMode::Single)
            .map_err(step(format!("attaching {} at the cgroup2 root", $name)))?;
        if let Some(dir) = $links_dir {
            let doing = || format!("taking the link of {} to pin it", $name);
            let link = prog.take_link(id).map_err(step(doing()))?;
            let link = FdLink::try_from(link).map_err(step(doing()))?;
            pin_link(link, &dir.join($name))?;
        }
    }};
}

fn attach_all(ebpf: &mut Ebpf, root: &fs::File, links_dir: Option<&Path>) -> Result<()> {
    for name in [
        names::CONNECT4,
        names::CONNECT6,
        names::GETPEERNAME4,
        names::GETPEERNAME6,
    ] {
        attach_program!(ebpf, CgroupSockAddr, name, root, links_dir);
    }
    attach_program!(ebpf, SockOps, names::SOCK_OPS, root, links_dir);
    attach_program!(ebpf, CgroupSock, names::SOCK_RELEASE, root, links_dir);
    Ok(())
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| DataplaneError::Invalid(format!("program {name} missing from object")))?;
    prog.try_into()
        .map_err(step(format!("program {name} has an unexpected type")))
}

/// SO_NETNS_COOKIE (Linux 5.14); not yet exported by the libc crate.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace the gateway runs in (the host's).
fn own_netns_cookie() -> Result<u64> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(step("opening a socket to read the host's netns cookie"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    use std::os::fd::AsRawFd;
    // SAFETY: getsockopt into a u64 with its correct length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(step("reading SO_NETNS_COOKIE needs Linux 5.14 or newer")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

/// Forwards log lines from the eBPF programs (aya-log) into tracing.
fn start_ebpf_logger(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            // SAFETY: the logger owns its ring-buffer fd for as long as the AsyncFd owns it.
            let Ok(mut fd) = (unsafe { tokio::io::unix::AsyncFd::register(logger) }) else {
                return;
            };
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => warn!(error = %e, "eBPF log forwarding unavailable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_on_this_host_share_one_key_per_port_and_conflicts_are_named() {
        let host: HashSet<IpAddr> = ["10.1.2.3".parse().unwrap()].into();
        let config = |targets: &str| Config::parse(&format!("targets:\n{targets}")).unwrap();
        let keys = target_keys(
            &config(
                "  - { name: any, address: \"127.0.0.1:*\" }\n  - { name: exact, address: \"[::1]:80\" }\n  \
                 - { name: node, address: \"10.1.2.3:81\" }\n  - { name: remote, address: \"192.0.2.7:80\" }\n",
            ),
            &host,
        )
        .unwrap();
        assert_eq!(
            keys,
            vec![
                (AddrKey::this_host(0), 0),
                (AddrKey::this_host(80), 1),
                (AddrKey::this_host(81), 2),
                (addr_key("192.0.2.7:80".parse().unwrap()), 3),
                // listen and listen_v6 (one port), admin: never intercepted.
                (AddrKey::this_host(15001), NOT_A_TARGET),
                (AddrKey::this_host(15000), NOT_A_TARGET),
            ]
        );
        let error = target_keys(
            &config("  - { name: a, address: \"127.0.0.1:80\" }\n  - { name: b, address: \"10.1.2.3:80\" }\n"),
            &host,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("target `a` (127.0.0.1:80) and target `b` (10.1.2.3:80)"),
            "{error}"
        );
    }

    #[test]
    fn loopback_and_unspecified_destinations_are_recognised_in_both_forms() {
        for local in [
            "127.0.0.1:1",
            "127.9.8.7:1",
            "0.0.0.0:1",
            "[::1]:1",
            "[::]:1",
            "[::ffff:127.0.0.2]:1",
            "[::ffff:0.0.0.0]:1",
        ] {
            let key = addr_key(local.parse().unwrap());
            assert!(key.is_loopback_or_unspecified(), "{local}");
        }
        for remote in [
            "10.0.0.1:1",
            "[::2]:1",
            "[::ffff:10.0.0.1]:1",
            "[2001:db8::1]:1",
        ] {
            let key = addr_key(remote.parse().unwrap());
            assert!(!key.is_loopback_or_unspecified(), "{remote}");
        }
        assert!(addr_key("1.2.3.4:5".parse().unwrap()).is_v4());
        assert!(!addr_key("[::1]:5".parse().unwrap()).is_v4());
    }

    #[test]
    fn addr_keys_round_trip_both_families() {
        for text in [
            "127.0.0.1:8080",
            "10.1.2.3:443",
            "[::1]:8080",
            "[fd00::5]:1",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(key_addr(&addr_key(addr)), addr);
        }
    }

    #[test]
    fn ipv4_keys_match_the_kernel_layout() {
        // The kernel gives user_ip4 as network-order bytes in memory.
        let key = addr_key("127.0.0.1:80".parse().unwrap());
        assert_eq!(key.addr[3].to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(key.addr[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
        assert_eq!(key.port, 80);
    }

    #[test]
    fn mapped_peers_are_canonical() {
        let mapped: SocketAddr = "[::ffff:10.0.0.2]:5000".parse().unwrap();
        assert_eq!(canonical_peer(mapped), "10.0.0.2:5000".parse().unwrap());
    }
}

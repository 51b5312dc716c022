//! Maps shared by all programs. Capacities come from `interlock-common`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use interlock_common::{
    AddrKey, InterceptConfig, MAX_HOST_ADDRS, MAX_INTERCEPT_CGROUPS, MAX_TARGETS,
    MAX_TRACKED_SOCKETS, Origin, Settings,
};

/// cgroup id → where that cgroup's connections are sent.
#[map]
pub static INTERCEPT_CGROUPS: HashMap<u64, InterceptConfig> =
    HashMap::with_max_entries(MAX_INTERCEPT_CGROUPS, 0);

/// Destination → index of the target in the gateway's config.
#[map]
pub static TARGETS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Socket cookie → original destination, for `getpeername` and for `sock_ops`.
/// The host network namespace's own non-loopback addresses (AddrKey.addr form), kept current
/// by the gateway: a connect to one of them reaches the same listeners as loopback does.
#[map]
pub static HOST_ADDRS: HashMap<[u32; 4], u8> = HashMap::with_max_entries(MAX_HOST_ADDRS, 0);

#[map]
pub static SOCK_ORIGINS: HashMap<u64, Origin> = HashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// Client source tuple → original destination, for the proxy's accept path.
#[map]
pub static FLOWS: HashMap<AddrKey, Origin> = HashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn settings() -> Settings {
    SETTINGS.get(0).copied().unwrap_or_default()
}

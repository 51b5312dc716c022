//! `#[repr(C)]` types shared by the eBPF programs and the userspace gateway.
//!
//! Addresses are kept as four `u32` words whose *memory* bytes are the IPv6 address in network
//! order, exactly as the kernel exposes `user_ip6` / `local_ip6`. IPv4 addresses use the
//! v4-mapped form `::ffff:a.b.c.d`, so one key type covers both families.
#![no_std]

/// Names of the maps and programs in the object, used by the loader to find them.
pub mod names {
    pub const INTERCEPT_CGROUPS: &str = "INTERCEPT_CGROUPS";
    pub const TARGETS: &str = "TARGETS";
    pub const HOST_ADDRS: &str = "HOST_ADDRS";
    pub const SOCK_ORIGINS: &str = "SOCK_ORIGINS";
    pub const FLOWS: &str = "FLOWS";
    pub const SETTINGS: &str = "SETTINGS";

    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const GETPEERNAME4: &str = "getpeername4";
    pub const GETPEERNAME6: &str = "getpeername6";
    pub const SOCK_OPS: &str = "sock_ops";
    pub const SOCK_RELEASE: &str = "sock_release";
}

/// Map capacities. The gateway reports their fill level in `/metrics`.
pub const MAX_INTERCEPT_CGROUPS: u32 = 16_384;
pub const MAX_TARGETS: u32 = 4_096;
pub const MAX_HOST_ADDRS: u32 = 1_024;
pub const MAX_TRACKED_SOCKETS: u32 = 65_536;

/// A TARGETS value that is no target: the gateway's own listening ports, which a whole-host
/// target must not take in.
pub const NOT_A_TARGET: u32 = u32::MAX;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// An IP address (v4-mapped for IPv4) and a host-order port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad: u16,
}

impl AddrKey {
    /// The key for an IPv4 address given as the kernel stores it (network-order bytes).
    #[inline(always)]
    pub fn from_ipv4(ip4_be: u32, port: u16) -> Self {
        Self {
            addr: [0, 0, V4_MAPPED_PREFIX_WORD, ip4_be],
            port,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub fn from_ipv6(ip6_be: [u32; 4], port: u16) -> Self {
        Self {
            addr: ip6_be,
            port,
            _pad: 0,
        }
    }

    /// The TARGETS key of a listener on this host: `[::]:port`. A listener bound to a wildcard
    /// is reached through every address of the host, so targets at a loopback, unspecified or
    /// local address are stored under this key, and connects to any of those addresses look
    /// it up.
    #[inline(always)]
    pub fn this_host(port: u16) -> Self {
        Self {
            addr: [0; 4],
            port,
            _pad: 0,
        }
    }

    /// Whether `connect()` to this address stays on the host's loopback: 127.0.0.0/8, ::1,
    /// and the unspecified addresses (the kernel connects those to loopback), in both the
    /// IPv4 and the v4-mapped form.
    #[inline(always)]
    pub fn is_loopback_or_unspecified(&self) -> bool {
        let [a, b, c, d] = self.addr;
        if a != 0 || b != 0 {
            return false;
        }
        if c == V4_MAPPED_PREFIX_WORD {
            let ip4 = u32::from_be(d);
            return ip4 >> 24 == 127 || ip4 == 0;
        }
        c == 0 && (d == 0 || d == u32::from_be(1))
    }

    /// Whether the address is IPv4 (v4-mapped).
    #[inline(always)]
    pub fn is_v4(&self) -> bool {
        self.addr[0] == 0 && self.addr[1] == 0 && self.addr[2] == V4_MAPPED_PREFIX_WORD
    }
}

/// The third word of `::ffff:a.b.c.d`: bytes `00 00 ff ff` in memory.
pub const V4_MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// How many targets a gateway may have: each registration says which of them it covers in
/// a bitmap of this many bits.
pub const MAX_CONFIG_TARGETS: usize = 256;

/// Where the proxy listens for one intercepted cgroup, and which targets it is intercepted
/// for. A zero port means "no listener for this family": such connections are left alone
/// (fail open) or refused (fail closed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterceptConfig {
    pub proxy_ip4: u32,
    pub proxy_ip6: [u32; 4],
    pub proxy_port4: u16,
    pub proxy_port6: u16,
    /// Bit `i` set: connections to target `i` are intercepted. A pod selection names its
    /// targets; a wrap takes them all.
    pub targets: [u64; MAX_CONFIG_TARGETS / 64],
}

impl InterceptConfig {
    /// Whether target `target` is covered. Branch-free and without an indexed load: the
    /// verifier refuses a variable offset into the stack copy the programs hold.
    #[inline(always)]
    pub fn covers(&self, target: u16) -> bool {
        let word_index = u64::from(target / 64);
        let mut word = 0;
        let mut i = 0;
        while i < self.targets.len() {
            word |= self.targets[i] & 0u64.wrapping_sub(u64::from(word_index == i as u64));
            i += 1;
        }
        (word >> (target % 64)) & 1 == 1
    }
}

/// What `connect4`/`connect6` saw before rewriting the destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub socket_cookie: u64,
    pub cgroup_id: u64,
    pub pid_tgid: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at connect time.
    pub connect_ns: u64,
    pub original_dst: AddrKey,
    pub family: u16,
    /// The matched target: its index in the gateway's config (the TARGETS value).
    pub target: u16,
}

/// Node-wide settings, in a one-element array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The gateway's own process: its sockets are never redirected.
    pub gateway_tgid: u32,
    /// 1 when `fail_mode: closed`: a socket that cannot be tracked is refused, not let through.
    pub fail_closed: u32,
    /// Cookie of the host network namespace. Loopback destinations dialled from any other
    /// namespace are never redirected.
    pub host_netns_cookie: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are plain-old-data `#[repr(C)]` structs with explicit padding fields.
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::InterceptConfig {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::Settings {}
}

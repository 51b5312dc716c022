//! `cgroup/connect4` and `cgroup/connect6` (BPF_PROG_TYPE_CGROUP_SOCK_ADDR).
//!
//! Minimum kernel: 4.17 for the hooks, 5.7 for `bpf_get_netns_cookie` and
//! `bpf_get_current_ancestor_cgroup_id` in them.
//!
//! Who is matched: a task whose cgroup, or any ancestor of it, is registered in
//! INTERCEPT_CGROUPS, so that registering a pod's cgroup covers every container in it from
//! the moment it exists. The ancestors are looked up only when the task's own cgroup is not
//! registered: one helper call and one map lookup per level.
//!
//! What is matched: a target the registration covers (its bitmap of target indices), by the
//! exact destination, then a whole-host target (`ip:*`), then, when the
//! destination is an address of this host (127.0.0.0/8, ::1, 0.0.0.0, ::, their v4-mapped
//! forms, or an address in HOST_ADDRS), the host-local target on that port: the kernel may
//! deliver any of those to the same listener. Loopback and unspecified destinations dialled
//! from another network namespace are that namespace's own, and never redirected.
//! Return 1 lets `connect()` proceed (possibly to a rewritten address); 0 fails it with EPERM.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
        },
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use interlock_common::{AF_INET, AF_INET6, AddrKey, InterceptConfig, NOT_A_TARGET, Origin};

use crate::maps::{HOST_ADDRS, INTERCEPT_CGROUPS, SOCK_ORIGINS, TARGETS, settings};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
/// Cgroup levels below the root that are searched for a registered ancestor. Kubelet puts a
/// container four levels down (kubepods, QoS class, pod, container); nested installs and
/// wraps inside pods go a few deeper.
const MAX_CGROUP_LEVELS: i32 = 16;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the lifetime of the call.
    let sa = unsafe { &mut *ctx.sock_addr };
    let dst = AddrKey::from_ipv4(sa.user_ip4, u16::from_be(sa.user_port as u16));
    let Some(proxy) = redirect_for(&ctx, sa.type_, &dst, AF_INET) else {
        return ALLOW;
    };
    match proxy {
        Redirect::To(cfg) if cfg.proxy_port4 != 0 => {
            sa.user_ip4 = cfg.proxy_ip4;
            sa.user_port = u32::from(cfg.proxy_port4.to_be());
            ALLOW
        }
        _ => untrackable(),
    }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4.
    let sa = unsafe { &mut *ctx.sock_addr };
    let ip6 = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let dst = AddrKey::from_ipv6(ip6, u16::from_be(sa.user_port as u16));
    let Some(proxy) = redirect_for(&ctx, sa.type_, &dst, AF_INET6) else {
        return ALLOW;
    };
    // An IPv4 destination on an IPv6 socket (v4-mapped), or no IPv6 listener: the proxy's
    // IPv4 listener, v4-mapped, which a dual-stack socket reaches. (A V6ONLY socket cannot
    // connect there, and so is refused rather than let past the proxy.)
    let (ip, port) = match proxy {
        Redirect::To(cfg) if cfg.proxy_port6 != 0 && !dst.is_v4() => {
            (cfg.proxy_ip6, cfg.proxy_port6)
        }
        Redirect::To(cfg) if cfg.proxy_port4 != 0 => (
            AddrKey::from_ipv4(cfg.proxy_ip4, 0).addr,
            cfg.proxy_port4,
        ),
        _ => return untrackable(),
    };
    // The verifier only accepts 4-byte stores into user_ip6.
    sa.user_ip6[0] = ip[0];
    sa.user_ip6[1] = ip[1];
    sa.user_ip6[2] = ip[2];
    sa.user_ip6[3] = ip[3];
    sa.user_port = u32::from(port.to_be());
    ALLOW
}

enum Redirect {
    To(InterceptConfig),
    /// The socket should be intercepted but its origin could not be stored.
    Untracked,
}

/// Decides whether this connect is intercepted and, if so, records its origin.
#[inline(always)]
fn redirect_for(
    ctx: &SockAddrContext,
    sock_type: u32,
    dst: &AddrKey,
    family: u16,
) -> Option<Redirect> {
    if sock_type != SOCK_STREAM {
        return None;
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let cfg = intercept_config(cgroup_id)?;
    let settings = settings();
    let on_loopback = dst.is_loopback_or_unspecified();
    // A pod's loopback is its own: the host's service at the same address is not the target.
    if on_loopback
        && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != settings.host_netns_cookie
    {
        return None;
    }
    let target = target_for(dst, on_loopback)?;
    if !cfg.covers(target) {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == settings.gateway_tgid {
        return None;
    }
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let origin = Origin {
        socket_cookie,
        cgroup_id,
        pid_tgid,
        connect_ns: unsafe { bpf_ktime_get_ns() },
        original_dst: *dst,
        family,
        target,
    };
    if SOCK_ORIGINS.insert(&socket_cookie, &origin, 0).is_err() {
        aya_log_ebpf::error!(
            ctx,
            "interlock: SOCK_ORIGINS is full; connection not tracked"
        );
        return Some(Redirect::Untracked);
    }
    Some(Redirect::To(cfg))
}

/// The registration of the task's cgroup or, failing that, of its nearest registered ancestor.
#[inline(always)]
fn intercept_config(cgroup_id: u64) -> Option<InterceptConfig> {
    // SAFETY: copies out of the map; the value is plain data.
    if let Some(cfg) = unsafe { INTERCEPT_CGROUPS.get(&cgroup_id) } {
        return Some(*cfg);
    }
    let mut nearest = None;
    // Level 0 is the root, never registered. Past the task's own depth the helper returns 0.
    for level in 1..MAX_CGROUP_LEVELS {
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor == 0 || ancestor == cgroup_id {
            break;
        }
        if let Some(cfg) = unsafe { INTERCEPT_CGROUPS.get(&ancestor) } {
            nearest = Some(*cfg);
        }
    }
    nearest
}

/// The target a destination belongs to: an exact one, a whole host (a target written `ip:*`,
/// stored with port 0), or, for any address of this host, a listener on this host (see
/// `AddrKey::this_host`).
#[inline(always)]
fn target_for(dst: &AddrKey, on_loopback: bool) -> Option<u16> {
    let lookup = |key: &AddrKey| unsafe { TARGETS.get(key) }.copied();
    let target = |index: u32| (index != NOT_A_TARGET).then_some(index as u16);
    let any_port = AddrKey { port: 0, ..*dst };
    if let Some(index) = lookup(dst).or_else(|| lookup(&any_port)) {
        return target(index);
    }
    if !on_loopback && unsafe { HOST_ADDRS.get(&dst.addr) }.is_none() {
        return None;
    }
    target(lookup(&AddrKey::this_host(dst.port)).or_else(|| lookup(&AddrKey::this_host(0)))?)
}

/// A connection that should be intercepted but cannot be: refuse it when failing closed,
/// otherwise let it go direct.
#[inline(always)]
fn untrackable() -> i32 {
    if settings().fail_closed != 0 {
        REFUSE
    } else {
        ALLOW
    }
}

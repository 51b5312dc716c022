//! `cgroup/connect4` and `cgroup/connect6` (BPF_PROG_TYPE_CGROUP_SOCK_ADDR).
//!
//! Minimum kernel: 4.17 for the hooks, 5.7 for `bpf_get_netns_cookie` in them.
//! Return 1 lets `connect()` proceed (possibly to a rewritten address); 0 fails it with EPERM.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use interlock_common::{AF_INET, AF_INET6, AddrKey, InterceptConfig, Origin};

use crate::maps::{INTERCEPT_CGROUPS, SOCK_ORIGINS, TARGETS, settings};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the lifetime of the call.
    let sa = unsafe { &mut *ctx.sock_addr };
    let dst = AddrKey::from_ipv4(sa.user_ip4, u16::from_be(sa.user_port as u16));
    let is_loopback = (u32::from_be(sa.user_ip4) >> 24) == 127;
    let Some(proxy) = redirect_for(&ctx, sa.type_, &dst, is_loopback, AF_INET) else {
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
    let is_loopback = ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && u32::from_be(ip6[3]) == 1;
    let Some(proxy) = redirect_for(&ctx, sa.type_, &dst, is_loopback, AF_INET6) else {
        return ALLOW;
    };
    match proxy {
        Redirect::To(cfg) if cfg.proxy_port6 != 0 => {
            // The verifier only accepts 4-byte stores into user_ip6.
            sa.user_ip6[0] = cfg.proxy_ip6[0];
            sa.user_ip6[1] = cfg.proxy_ip6[1];
            sa.user_ip6[2] = cfg.proxy_ip6[2];
            sa.user_ip6[3] = cfg.proxy_ip6[3];
            sa.user_port = u32::from(cfg.proxy_port6.to_be());
            ALLOW
        }
        _ => untrackable(),
    }
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
    dst_is_loopback: bool,
    family: u16,
) -> Option<Redirect> {
    if sock_type != SOCK_STREAM {
        return None;
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a copy out of the map; the value is plain data.
    let cfg = unsafe { INTERCEPT_CGROUPS.get(&cgroup_id) }.copied()?;
    // An exact target, or a whole host (a target written `ip:*`, stored with port 0).
    let any_port = AddrKey { port: 0, ..*dst };
    unsafe { TARGETS.get(dst).or_else(|| TARGETS.get(&any_port)) }?;
    let settings = settings();
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == settings.gateway_tgid {
        return None;
    }
    // A pod's loopback is its own: the host's service at the same address is not the target.
    if dst_is_loopback
        && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != settings.host_netns_cookie
    {
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
        _pad: 0,
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

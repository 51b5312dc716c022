//! `cgroup/getpeername4` and `cgroup/getpeername6` (BPF_PROG_TYPE_CGROUP_SOCK_ADDR).
//!
//! Minimum kernel: 5.8. A redirected client asks for its peer and is told the original
//! destination, so TLS SNI checks, logging and `ss`-style tools in the workload stay truthful.
use aya_ebpf::{
    EbpfContext, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use interlock_common::{AF_INET, AF_INET6};

use crate::maps::SOCK_ORIGINS;

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a copy out of the map; the value is plain data.
    if let Some(origin) = unsafe { SOCK_ORIGINS.get(&cookie) }.copied()
        && origin.family == AF_INET
    {
        // SAFETY: the kernel hands us a valid bpf_sock_addr for the lifetime of the call.
        let sa = unsafe { &mut *ctx.sock_addr };
        sa.user_ip4 = origin.original_dst.addr[3];
        sa.user_port = u32::from(origin.original_dst.port.to_be());
    }
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: as in getpeername4.
    if let Some(origin) = unsafe { SOCK_ORIGINS.get(&cookie) }.copied()
        && origin.family == AF_INET6
    {
        let sa = unsafe { &mut *ctx.sock_addr };
        let ip6 = origin.original_dst.addr;
        // The verifier only accepts 4-byte stores into user_ip6.
        sa.user_ip6[0] = ip6[0];
        sa.user_ip6[1] = ip6[1];
        sa.user_ip6[2] = ip6[2];
        sa.user_ip6[3] = ip6[3];
        sa.user_port = u32::from(origin.original_dst.port.to_be());
    }
    1
}

//! `sockops` (BPF_PROG_TYPE_SOCK_OPS).
//!
//! Minimum kernel: 4.13; the state callback needs 4.16.
//! When a tracked client connection is established, its origin is copied under the client's
//! source tuple, which is what the proxy sees as the peer of the accepted socket. The callback
//! runs before the client's final ACK is sent, so the entry exists before the proxy can accept.
//! The tuple entry is deleted when the connection reaches TCP_CLOSE (the proxy also deletes it
//! on accept), which covers clients that vanish before the proxy accepts.
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use interlock_common::{AF_INET, AddrKey};

use crate::maps::{FLOWS, SOCK_ORIGINS};

/// The verifier only allows 4-byte loads at constant offsets from the context pointer, so the
/// array is read word by word rather than copied.
#[inline(always)]
fn local_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    // SAFETY: reads of fields of the context the kernel passed in.
    unsafe {
        let ops = ctx.ops;
        [
            core::ptr::read_volatile(&raw const (*ops).local_ip6[0]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[1]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[2]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[3]),
        ]
    }
}

#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a copy out of the map; the value is plain data.
    let Some(origin) = unsafe { SOCK_ORIGINS.get(&cookie) }.copied() else {
        return 1;
    };
    let client = if u32::from(origin.family) == ctx.family() && origin.family == AF_INET {
        AddrKey::from_ipv4(ctx.local_ip4(), ctx.local_port() as u16)
    } else {
        AddrKey::from_ipv6(local_ip6(&ctx), ctx.local_port() as u16)
    };
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // Ask for state changes so the tuple entry can be dropped on close.
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            if FLOWS.insert(&client, &origin, 0).is_err() {
                aya_log_ebpf::error!(&ctx, "interlock: FLOWS is full; proxy will not find origin");
            }
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            // Only drop the entry if it is still ours: the tuple may already belong to a newer
            // connection.
            if let Some(current) = unsafe { FLOWS.get(&client) }
                && current.socket_cookie == cookie
            {
                let _ = FLOWS.remove(&client);
            }
        }
        _ => {}
    }
    1
}

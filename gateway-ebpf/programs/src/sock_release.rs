//! `cgroup/sock_release` (BPF_PROG_TYPE_CGROUP_SOCK).
//!
//! Minimum kernel: 5.9 for the hook, 5.10 for `bpf_get_socket_cookie` in it.
//! The cookie entry lives exactly as long as the client socket, because `getpeername` needs it
//! for that long. Deleting it here also covers connects that fail before TCP starts (no route,
//! no local port), which never reach `sock_ops`.
use aya_ebpf::{
    EbpfContext, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock,
    programs::SockContext,
};

use crate::maps::SOCK_ORIGINS;

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = SOCK_ORIGINS.remove(&cookie);
    1
}

//! Interlock's eBPF programs. All attach at the cgroup2 root; each file holds one program type
//! and documents its minimum kernel.
//!
//! Data flow for one intercepted TCP connection:
//! 1. `connect4`/`connect6` store the original destination under the socket cookie and rewrite
//!    the destination to the proxy.
//! 2. `sock_ops` copies that record under the client's source tuple once the connection is
//!    established; the proxy finds it by the accepted socket's peer address and deletes it.
//! 3. `getpeername4`/`getpeername6` show the client the original peer.
//! 4. `sock_release` deletes the cookie entry when the client socket goes away; `sock_ops`
//!    deletes the tuple entry when the connection closes, so nothing outlives its socket.
#![no_std]
#![no_main]

mod connect;
mod getpeername;
mod maps;
mod sock_ops;
mod sock_release;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

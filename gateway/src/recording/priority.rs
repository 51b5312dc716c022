//! The record writer's scheduling priority: idle while it keeps up, normal while someone
//! waits on a record or a backlog builds.
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
};

use crate::telemetry::events::{InternalEvent, WriterPriorityUnchanged};

/// The writer runs at idle priority while it keeps up, so that encoding records (about as
/// much CPU per call as forwarding it) only uses CPU no other thread wants. At normal
/// priority that work landed on the cores the data path and its peers were about to run on
/// (MCP bench on two cores, added p99 ~190 µs at normal priority, ~130 µs idle). An
/// idle-priority thread gets almost nothing of a CPU that other load keeps busy, so it runs
/// at normal priority while someone waits on a record (see `PriorityHandle::raise`) and
/// while a backlog builds, until it has caught up. Nothing is lost meanwhile: a full
/// channel makes the data path wait.
pub(super) struct WriterPriority {
    idle: bool,
    /// Backlog at which the writer stops yielding the CPU.
    boost_backlog: usize,
    /// Set once the priority cannot change: it stays as it is, and that was said once.
    fixed: bool,
    handle: Arc<PriorityHandle>,
}

/// What senders share with the writer about its priority.
#[derive(Default)]
pub(super) struct PriorityHandle {
    /// The writer's kernel thread id once it runs at idle priority; 0 before.
    tid: AtomicI32,
    /// Set by a sender that raised the writer.
    pub(super) raised: AtomicBool,
}

impl PriorityHandle {
    /// Raises the writer to normal priority for a record someone waits on: at idle priority
    /// behind two busy loops on two cores, a TCP session's first byte (which waits for its
    /// `session_start` on disk) took ~108 ms at p50 instead of ~0.6 ms.
    pub(super) fn raise(&self) {
        let tid = self.tid.load(Ordering::Acquire);
        if tid != 0 {
            self.raised.store(true, Ordering::Release);
            // A failure is reported by the writer when it cannot rise itself either.
            let _ = set_policy(tid, false);
        }
    }
}

/// Sets a thread's scheduling policy: idle, or normal.
fn set_policy(tid: libc::pid_t, idle: bool) -> io::Result<()> {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // Priority 0, the only one these policies take; musl's struct has more (unused) fields.
    // SAFETY: sched_param is plain integers, for which all zeroes is valid.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: a plain syscall with a valid parameter.
    match unsafe { libc::sched_setscheduler(tid, policy, &param) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Leaving idle priority needs CAP_SYS_NICE, or an RLIMIT_NICE that allows nice 0.
pub(super) fn can_leave_idle_priority() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) } == 0 && limit.rlim_cur >= 20 {
        return true;
    }
    const CAP_SYS_NICE: u32 = 23;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

impl WriterPriority {
    /// Called on the writer thread. A writer that could not rise again stays at normal
    /// priority: starving it would hold up every session start.
    pub(super) fn lowered(handle: Arc<PriorityHandle>, boost_backlog: usize) -> Self {
        let mut priority = WriterPriority {
            idle: false,
            boost_backlog,
            fixed: false,
            handle,
        };
        if !can_leave_idle_priority() {
            priority.fixed = true;
            WriterPriorityUnchanged {
                idle: true,
                error: &io::Error::other(
                    "without CAP_SYS_NICE it could not rise again when records back up",
                ),
            }
            .emit();
            return priority;
        }
        priority.set(true);
        if priority.idle {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            priority.handle.tid.store(tid, Ordering::Release);
        }
        priority
    }

    /// `waited_on`: someone waits on a record about to be written.
    pub(super) fn follow(&mut self, backlog: usize, waited_on: bool) {
        if self.fixed {
            return;
        }
        if self.handle.raised.swap(false, Ordering::AcqRel) {
            self.idle = false;
        }
        let idle = if waited_on {
            false
        } else if self.idle {
            backlog < self.boost_backlog
        } else {
            backlog < self.boost_backlog / 4
        };
        if idle != self.idle {
            self.set(idle);
        }
    }

    fn set(&mut self, idle: bool) {
        match set_policy(0, idle) {
            Ok(()) => self.idle = idle,
            Err(error) => {
                self.fixed = true;
                WriterPriorityUnchanged {
                    idle,
                    error: &error,
                }
                .emit();
            }
        }
    }
}

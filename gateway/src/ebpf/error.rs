//! Why the dataplane could not start or change.
use crate::cgroup::CgroupError;

/// Why the dataplane could not start or change. Not `source`s: each message already says
/// its cause, and `{:#}` would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this interlock binary was built without its eBPF object; build it with `cargo xtask \
         build` (which runs `cargo xtask build-ebpf` first)"
    )]
    NoObject,
    #[error(
        "loading the eBPF object failed; the gateway needs root (CAP_BPF, CAP_PERFMON, \
         CAP_NET_ADMIN) and a kernel with BTF (5.14 or newer, as the README says): {0}"
    )]
    Load(aya::EbpfError),
    /// A kernel or file-system step failed: what was being done, and why.
    #[error("{doing}: {error}")]
    Step {
        doing: String,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Cgroup(#[from] CgroupError),
    /// The configuration asks for what cannot work here; the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, DataplaneError>;

/// Names the step an error came from.
pub fn step<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    doing: impl Into<String>,
) -> impl FnOnce(E) -> DataplaneError {
    let doing = doing.into();
    move |error| DataplaneError::Step {
        doing,
        error: error.into(),
    }
}

//! The record store's settings in the `recording` section: fsync policy and the spool bound.
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    Always,
    #[default]
    Interval,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spool {
    /// Upper bound for the segment files (e.g. `10GiB`).
    #[serde(
        default = "spool_max_bytes",
        deserialize_with = "crate::config::values::byte_size"
    )]
    pub max_bytes: u64,
    #[serde(default)]
    pub when_full: WhenFull,
}

impl Default for Spool {
    fn default() -> Self {
        Spool {
            max_bytes: spool_max_bytes(),
            when_full: WhenFull::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse new sessions; established ones carry on. Alerted by metric and log.
    #[default]
    FailClosed,
    /// Let new sessions through unrecorded, and record how many once space returns.
    FailOpen,
}

fn spool_max_bytes() -> u64 {
    10 << 30
}

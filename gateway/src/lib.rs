//! Interlock's node gateway: one module per concern.
pub mod admin;
pub mod approvals;
pub mod cgroup;
pub mod commands;
pub mod config;
pub mod ebpf;
pub mod identity;
pub mod masking;
pub mod patterns;
pub mod policy;
pub mod protocols;
pub mod proxy;
pub mod recording;
pub mod sinks;
pub mod sse;
pub mod telemetry;
pub mod vocabulary;

//! Interlock's node gateway: one module per concern.
pub mod admin;
pub mod approvals;
pub mod commands;
pub mod config;
pub mod ebpf;
pub mod identity;
pub mod masking;
pub mod policy;
pub mod protocols;
pub mod proxy;
pub mod recording;
pub mod sinks;
pub mod telemetry;

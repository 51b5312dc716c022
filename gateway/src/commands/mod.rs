//! The CLI's subcommands, one module each.
pub mod approvals;
pub mod approvals_service;
pub mod asciicast;
pub mod await_interception;
pub mod ca_bundle;
pub mod init;
pub mod run;
pub mod sessions;
pub mod wrap;

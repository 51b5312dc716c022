//! The CLI's subcommands, one module each.
pub mod run;
pub mod sessions;
pub mod wrap;

//! Kinesis Data Streams sink, split as Vector splits its sinks:
//! - `config`: the SDK client from `recording.kinesis`;
//! - `request_builder`: spool frames to PutRecords entries (partition key, chunking);
//! - `service`: one batch delivered, retrying only what failed;
//! - `sink`: the loop from spool to stream, with linger and checkpoints;
//! - `source`: reading the stream back (for `--from kinesis` and `tail`).
pub mod config;
pub mod request_builder;
pub mod service;
pub mod sink;
pub mod source;
#[cfg(test)]
mod tests;

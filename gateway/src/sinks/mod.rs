//! Destinations records are shipped to from the spool. The spool itself is the file store.
pub mod kinesis;

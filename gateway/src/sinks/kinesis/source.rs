//! Reading records back from the stream: every shard from TRIM_HORIZON (or LATEST for
//! `tail`), chunks reassembled, each record with its exact bytes so `verify` can check the
//! hash chain.
use std::{collections::HashMap, time::Duration};

use aws_sdk_kinesis::{Client, types::ShardIteratorType};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use super::request_builder::Chunk;
use crate::recording::{record::Record, store::StoredRecord};

/// Why the stream could not be read back. Not `source`s: each message already says its
/// cause, and `{:#}` would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("chunk {index} of {record} is out of range")]
    ChunkOutOfRange { index: u32, record: String },
    #[error("chunk data is not base64: {0}")]
    ChunkNotBase64(base64::DecodeError),
    #[error("stream record is not a record: {0}")]
    NotARecord(serde_json::Error),
    /// An SDK error with its whole cause chain, after what we were doing.
    #[error("{doing}: {error}")]
    Sdk { doing: String, error: String },
    /// Whoever took the records stopped taking them.
    #[error("{0}")]
    Emit(std::io::Error),
}

type Result<T> = std::result::Result<T, SourceError>;

/// Puts chunked records back together.
#[derive(Default)]
pub struct Assembler {
    pending: HashMap<String, Vec<Option<Vec<u8>>>>,
}

impl Assembler {
    /// Feeds one Kinesis record; returns a whole record's bytes when one is complete.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>> {
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
            return Ok(Some(data.to_vec()));
        };
        let parts = self
            .pending
            .entry(chunk.chunk_of.clone())
            .or_insert_with(|| vec![None; chunk.count as usize]);
        let slot =
            parts
                .get_mut(chunk.index as usize)
                .ok_or_else(|| SourceError::ChunkOutOfRange {
                    index: chunk.index,
                    record: chunk.chunk_of.clone(),
                })?;
        *slot = Some(
            BASE64
                .decode(chunk.data)
                .map_err(SourceError::ChunkNotBase64)?,
        );
        if parts.iter().all(Option::is_some) {
            let parts = self.pending.remove(&chunk.chunk_of).expect("present");
            return Ok(Some(parts.into_iter().flatten().flatten().collect()));
        }
        Ok(None)
    }

    /// Record ids with chunks still missing.
    pub fn incomplete(&self) -> Vec<String> {
        self.pending.keys().cloned().collect()
    }
}

/// An SDK error with its whole cause chain, after what we were doing.
fn sdk_error(doing: String, e: impl std::error::Error + 'static) -> SourceError {
    SourceError::Sdk {
        doing,
        error: aws_sdk_kinesis::error::DisplayErrorContext(e).to_string(),
    }
}

pub fn parse(raw: Vec<u8>) -> Result<StoredRecord> {
    let record: Record = serde_json::from_slice(&raw).map_err(SourceError::NotARecord)?;
    Ok(StoredRecord {
        record,
        raw,
        crc_ok: true,
    })
}

async fn shard_ids(client: &Client, stream: &str) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut next_token = None;
    loop {
        let request = match &next_token {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let output = request
            .send()
            .await
            .map_err(|e| sdk_error(format!("listing shards of stream {stream}"), e))?;
        ids.extend(output.shards().iter().map(|s| s.shard_id().to_string()));
        match output.next_token() {
            Some(token) => next_token = Some(token.to_string()),
            None => return Ok(ids),
        }
    }
}

async fn iterator(
    client: &Client,
    stream: &str,
    shard: &str,
    kind: ShardIteratorType,
) -> Result<Option<String>> {
    let output = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(kind)
        .send()
        .await
        .map_err(|e| sdk_error(format!("shard iterator for {shard}"), e))?;
    Ok(output.shard_iterator().map(str::to_string))
}

/// Everything in the stream now, reassembled, in shard order.
pub async fn read_all(client: &Client, stream: &str) -> Result<(Vec<StoredRecord>, Vec<String>)> {
    let mut assembler = Assembler::default();
    let mut records = Vec::new();
    for shard in shard_ids(client, stream).await? {
        let mut next = iterator(client, stream, &shard, ShardIteratorType::TrimHorizon).await?;
        while let Some(it) = next {
            let output = client
                .get_records()
                .shard_iterator(it)
                .limit(10_000)
                .send()
                .await
                .map_err(|e| sdk_error(format!("reading shard {shard}"), e))?;
            for record in output.records() {
                if let Some(raw) = assembler.feed(record.data().as_ref())? {
                    records.push(parse(raw)?);
                }
            }
            let caught_up =
                output.records().is_empty() && output.millis_behind_latest().unwrap_or(0) == 0;
            next = if caught_up {
                None
            } else {
                output.next_shard_iterator().map(str::to_string)
            };
        }
    }
    Ok((records, assembler.incomplete()))
}

/// Follows every shard and hands each whole record's bytes to `emit`, until `emit` fails.
pub async fn tail(
    client: &Client,
    stream: &str,
    from_latest: bool,
    mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<()> {
    let kind = if from_latest {
        ShardIteratorType::Latest
    } else {
        ShardIteratorType::TrimHorizon
    };
    let mut iterators = Vec::new();
    for shard in shard_ids(client, stream).await? {
        if let Some(it) = iterator(client, stream, &shard, kind.clone()).await? {
            iterators.push(it);
        }
    }
    let mut assembler = Assembler::default();
    loop {
        let mut idle = true;
        for it in iterators.iter_mut() {
            let output = client
                .get_records()
                .shard_iterator(it.as_str())
                .send()
                .await
                .map_err(|e| sdk_error("reading the stream".into(), e))?;
            for record in output.records() {
                idle = false;
                if let Some(raw) = assembler.feed(record.data().as_ref())? {
                    emit(&raw).map_err(SourceError::Emit)?;
                }
            }
            if let Some(next) = output.next_shard_iterator() {
                *it = next.to_string();
            }
        }
        if idle {
            // GetRecords allows five calls per second per shard.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

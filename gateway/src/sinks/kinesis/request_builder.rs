//! Turns spool frames into Kinesis records. The partition key is the session id, so a
//! session's records stay in order on one shard. A record larger than the stream allows
//! (data plus key) is split into ordered chunks carrying what is needed to reassemble it.
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Kinesis limits per PutRecords call.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 5 << 20;

/// One Kinesis record to put.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub partition_key: String,
    pub data: Bytes,
}

impl Entry {
    /// What counts against the per-request limit: data plus partition key.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// A piece of a record too large for one Kinesis record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// The `record_id` of the record this is part of.
    pub chunk_of: String,
    /// 0-based position of this piece.
    pub index: u32,
    pub count: u32,
    /// This piece of the record's JSON bytes, base64.
    pub data: String,
}

#[derive(Deserialize)]
struct Ids<'a> {
    #[serde(borrow)]
    session_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    record_id: std::borrow::Cow<'a, str>,
}

/// The entries for one record as stored in the spool (its exact JSON bytes).
pub fn entries_for(payload: &[u8], max_record_bytes: usize) -> Result<Vec<Entry>, String> {
    let ids: Ids =
        serde_json::from_slice(payload).map_err(|e| format!("spool frame is not a record: {e}"))?;
    let partition_key = ids.session_id.into_owned();
    if payload.len() + partition_key.len() <= max_record_bytes {
        return Ok(vec![Entry {
            partition_key,
            data: Bytes::copy_from_slice(payload),
        }]);
    }
    // Room for the envelope around each piece, then base64's 4/3.
    const ENVELOPE: usize = 256;
    let budget = max_record_bytes
        .checked_sub(partition_key.len() + ids.record_id.len() + ENVELOPE)
        .filter(|b| *b >= 1024)
        .ok_or_else(|| format!("max_record_bytes {max_record_bytes} is too small to chunk into"))?;
    let piece = budget / 4 * 3;
    let count = payload.len().div_ceil(piece) as u32;
    Ok(payload
        .chunks(piece)
        .enumerate()
        .map(|(index, part)| {
            let chunk = Chunk {
                chunk_of: ids.record_id.to_string(),
                index: index as u32,
                count,
                data: BASE64.encode(part),
            };
            Entry {
                partition_key: partition_key.clone(),
                data: Bytes::from(serde_json::to_vec(&chunk).expect("chunks serialize")),
            }
        })
        .collect())
}

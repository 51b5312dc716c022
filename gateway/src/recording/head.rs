//! The signed store head: every segment the store has held, with its size, frame count and
//! the hash of its last frame, signed with the record key. The per-session hash chains show a
//! record removed from a session; the head shows a segment removed, cut short or swapped for
//! another, whose sessions would otherwise vanish without a trace. `verify` holds the segments
//! on disk against it; segments removed after a sink shipped them are told apart by the
//! sink's checkpoint.
//!
//! The head is rewritten at most once a second, at each segment roll and when the writer
//! stops, so it can lag the newest second of writes: segments are checked to be at least as
//! long as the head says.
use std::{
    collections::HashSet,
    fs,
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{
    chain::{Sealer, key_id, sha256_hex},
    store::{self, FRAME_HEADER},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    pub index: u64,
    pub bytes: u64,
    pub frames: u64,
    /// Where the last frame starts, and the SHA-256 of its payload; none for a segment that
    /// predates the head (its size is still checked).
    pub last_frame: Option<(u64, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoreHead {
    version: u32,
    key_id: String,
    segments: Vec<SegmentEntry>,
    /// ed25519 over the JSON of `segments`.
    signature: String,
}

pub fn head_path(dir: &Path) -> PathBuf {
    dir.join("head.json")
}

/// What the store held when the head was last written; empty if there is no valid head.
pub fn load_entries(dir: &Path, key: &VerifyingKey) -> Vec<SegmentEntry> {
    read_head(dir)
        .ok()
        .flatten()
        .filter(|head| check_signature(head, key).is_ok())
        .map(|head| head.segments)
        .unwrap_or_default()
}

fn read_head(dir: &Path) -> io::Result<Option<StoreHead>> {
    match fs::read(head_path(dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn check_signature(head: &StoreHead, key: &VerifyingKey) -> Result<(), String> {
    let signed = serde_json::to_vec(&head.segments).expect("entries serialize");
    let signature = BASE64
        .decode(&head.signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or("its signature is not an ed25519 signature")?;
    key.verify(&signed, &signature)
        .map_err(|_| format!("its signature does not verify with key {}", key_id(key)))
}

/// Writes the head atomically (temp file, fsync, rename), readable by the owner only.
pub fn write(dir: &Path, segments: &[SegmentEntry], sealer: &Sealer) -> io::Result<()> {
    let signed = serde_json::to_vec(segments).expect("entries serialize");
    let seal = sealer.seal(&signed);
    let head = StoreHead {
        version: 1,
        key_id: seal.key_id,
        segments: segments.to_vec(),
        signature: seal.signature,
    };
    let tmp = dir.join("head.json.tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = store::create_private_file(&tmp, fs::OpenOptions::new().write(true))?;
    file.write_all(&serde_json::to_vec(&head).expect("heads serialize"))?;
    file.sync_all()?;
    fs::rename(&tmp, head_path(dir))?;
    fs::File::open(dir)?.sync_all()
}

/// The SHA-256 of the payload of the frame at `offset` in a segment.
pub fn frame_hash(segment: &Path, offset: u64) -> io::Result<String> {
    let mut file = fs::File::open(segment)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut header = [0u8; FRAME_HEADER];
    file.read_exact(&mut header)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    if len > store::MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no frame there"));
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact(&mut payload)?;
    Ok(sha256_hex(&payload))
}

/// Where the last frame of a batch of whole frames starts, counted from the batch's start.
pub fn last_frame_start(frames: &[u8]) -> Option<u64> {
    let mut at = 0;
    let mut last = None;
    while at + FRAME_HEADER <= frames.len() {
        last = Some(at as u64);
        let len = u32::from_le_bytes(frames[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += FRAME_HEADER + len;
    }
    last
}

/// A way the segments on disk disagree with the signed head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum StoreProblem {
    /// There are segments but no head, or one that does not verify.
    HeadMissing { detail: String },
    /// A segment the head lists, not shipped yet, is gone.
    SegmentMissing {
        segment: u64,
        bytes: u64,
        frames: u64,
    },
    /// A segment is shorter than the head says.
    SegmentTruncated {
        segment: u64,
        expected: u64,
        found: u64,
    },
    /// A segment's last frame is not the one the head names: it was replaced or altered.
    SegmentReplaced { segment: u64 },
    /// A segment on disk between others that the head does not list.
    SegmentGap { segment: u64 },
}

impl std::fmt::Display for StoreProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreProblem::HeadMissing { detail } => write!(
                f,
                "the store head is missing or invalid ({detail}): segments removed from this store cannot be told"
            ),
            StoreProblem::SegmentMissing {
                segment,
                bytes,
                frames,
            } => write!(
                f,
                "segment {segment} is missing: it held {frames} records in {bytes} bytes and was not shipped"
            ),
            StoreProblem::SegmentTruncated {
                segment,
                expected,
                found,
            } => write!(
                f,
                "segment {segment} is truncated: {found} bytes, the head says at least {expected}"
            ),
            StoreProblem::SegmentReplaced { segment } => write!(
                f,
                "segment {segment} was replaced or altered: its last frame is not the one the head names"
            ),
            StoreProblem::SegmentGap { segment } => write!(
                f,
                "segment {segment} is missing: the segments before and after it are present"
            ),
        }
    }
}

/// Holds the segments on disk against the signed head. Segments below `shipped_before` (the
/// sink's checkpoint) may have been removed after shipping.
pub fn check(dir: &Path, key: &VerifyingKey, shipped_before: u64) -> io::Result<Vec<StoreProblem>> {
    let on_disk = store::list_segments(dir)?;
    let mut problems = Vec::new();
    let head = match read_head(dir) {
        Ok(Some(head)) => match check_signature(&head, key) {
            Ok(()) => Some(head),
            Err(detail) => {
                problems.push(StoreProblem::HeadMissing { detail });
                None
            }
        },
        Ok(None) if on_disk.is_empty() => return Ok(problems),
        Ok(None) => {
            problems.push(StoreProblem::HeadMissing {
                detail: format!("no {}", head_path(dir).display()),
            });
            None
        }
        Err(e) => {
            problems.push(StoreProblem::HeadMissing {
                detail: e.to_string(),
            });
            None
        }
    };
    let entries = head.map(|h| h.segments).unwrap_or_default();
    for entry in &entries {
        let Some((_, path)) = on_disk.iter().find(|(index, _)| *index == entry.index) else {
            if entry.index >= shipped_before {
                problems.push(StoreProblem::SegmentMissing {
                    segment: entry.index,
                    bytes: entry.bytes,
                    frames: entry.frames,
                });
            }
            continue;
        };
        let found = fs::metadata(path)?.len();
        if found < entry.bytes {
            problems.push(StoreProblem::SegmentTruncated {
                segment: entry.index,
                expected: entry.bytes,
                found,
            });
        } else if let Some((offset, hash)) = &entry.last_frame
            && frame_hash(path, *offset).ok().as_ref() != Some(hash)
        {
            problems.push(StoreProblem::SegmentReplaced {
                segment: entry.index,
            });
        }
    }
    // Segments the head does not list yet (the newest second of writes) come after it.
    let listed = |index: u64| entries.iter().any(|e| e.index == index);
    let present: Vec<u64> = on_disk.iter().map(|(index, _)| *index).collect();
    if let (Some(first), Some(last)) = (present.first(), present.last()) {
        for index in *first..=*last {
            if !present.contains(&index) && !listed(index) {
                problems.push(StoreProblem::SegmentGap { segment: index });
            }
        }
    }
    Ok(problems)
}

/// Keeps the signed store head in step with the segments the writer writes.
pub(super) struct HeadKeeper {
    entries: Vec<SegmentEntry>,
    written_at: Instant,
    dirty: bool,
    /// Sessions with records in the active segment: its index once it is finished.
    sessions: HashSet<Arc<str>>,
}

/// How often the head is rewritten while records flow (and at every segment roll).
const HEAD_INTERVAL: Duration = Duration::from_secs(1);

impl HeadKeeper {
    /// The head as the store had it, any segment on disk it does not list (a store from
    /// before the head, or the last second before a crash), and the new active segment.
    pub(super) fn start(dir: &Path, sealer: &Sealer, active: u64) -> io::Result<Self> {
        let mut entries = load_entries(dir, &sealer.verifying_key());
        for (index, path) in store::list_segments(dir)? {
            let bytes = fs::metadata(&path)?.len();
            match entries.iter_mut().find(|e| e.index == index) {
                Some(entry) => entry.bytes = entry.bytes.max(bytes),
                None => entries.push(SegmentEntry {
                    index,
                    bytes,
                    frames: 0,
                    last_frame: None,
                }),
            }
        }
        entries.sort_by_key(|e| e.index);
        if let Some(entry) = entries.iter_mut().find(|e| e.index == active) {
            // A new segment is always empty.
            entry.last_frame = None;
        }
        let mut keeper = HeadKeeper {
            entries,
            written_at: Instant::now(),
            dirty: true,
            sessions: Default::default(),
        };
        keeper.write(dir, sealer)?;
        Ok(keeper)
    }

    /// Notes a batch of `count` frames, of `sessions`, just written at the end of the active
    /// segment.
    pub(super) fn wrote(
        &mut self,
        dir: &Path,
        (index, end): (u64, u64),
        frames: &[u8],
        count: u64,
        sessions: &mut Vec<Arc<str>>,
    ) {
        let Some(last) = last_frame_start(frames) else {
            return;
        };
        if self.entries.last().is_none_or(|e| e.index != index) {
            if let Some(finished) = self.entries.last().map(|e| e.index) {
                self.write_index(dir, finished);
            }
            self.entries.push(SegmentEntry {
                index,
                bytes: 0,
                frames: 0,
                last_frame: None,
            });
            // A finished segment goes into the head at once.
            self.written_at = Instant::now() - HEAD_INTERVAL;
        }
        self.sessions.extend(sessions.drain(..));
        let entry = self.entries.last_mut().expect("just pushed");
        entry.bytes = end;
        entry.frames += count;
        // Hashed when the head is written, from the page cache.
        entry.last_frame = Some((end - frames.len() as u64 + last, String::new()));
        self.dirty = true;
    }

    /// Writes the finished segment's session list, and starts the next one's.
    fn write_index(&mut self, dir: &Path, index: u64) {
        let sessions = std::mem::take(&mut self.sessions);
        if let Err(e) = store::write_segment_index(dir, index, sessions.iter().map(|s| &**s)) {
            tracing::warn!(dir = %dir.display(), segment = index, error = %e, "the segment's session index could not be written; replay reads that segment whole");
        }
    }

    /// At stop: the active segment is finished too (the next start opens a new one).
    pub(super) fn finish(&mut self, dir: &Path, sealer: &Sealer) {
        if let Some(active) = self.entries.last().map(|e| e.index)
            && !self.sessions.is_empty()
        {
            self.write_index(dir, active);
        }
        self.write_if_due(dir, sealer, true);
    }

    pub(super) fn write_if_due(&mut self, dir: &Path, sealer: &Sealer, now: bool) {
        if self.dirty
            && (now || self.written_at.elapsed() >= HEAD_INTERVAL)
            && let Err(e) = self.write(dir, sealer)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "the store head could not be written; verify cannot vouch for the newest segments until it is");
        }
    }

    fn write(&mut self, dir: &Path, sealer: &Sealer) -> io::Result<()> {
        for entry in &mut self.entries {
            if let Some((offset, hash)) = &mut entry.last_frame
                && hash.is_empty()
            {
                *hash = frame_hash(&store::segment_path(dir, entry.index), *offset)?;
            }
        }
        write(dir, &self.entries, sealer)?;
        self.written_at = Instant::now();
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_starts_are_found_in_a_batch() {
        let mut batch = Vec::new();
        store::SegmentWriter::frame_with(&mut batch, |b| b.extend_from_slice(b"first"));
        let second_at = batch.len() as u64;
        store::SegmentWriter::frame_with(&mut batch, |b| b.extend_from_slice(b"second"));
        assert_eq!(last_frame_start(&batch), Some(second_at));
        assert_eq!(last_frame_start(&[]), None);
    }
}

//! The embedded record store: append-only segment files under `<dir>/segments/`.
//!
//! Each record is one frame: `u32 length (LE) | u32 CRC-32 of the payload (LE) | payload`, the
//! payload being the record's JSON. A gateway start opens a new segment, so a torn tail left by
//! a crash is never appended to; readers report it and read on.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::record::Record;

pub const FRAME_HEADER: usize = 8;
/// Frames larger than this are treated as corruption rather than allocated.
pub const MAX_FRAME: u32 = 256 << 20;

pub fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    segments_dir(dir).join(format!("{index:020}.seg"))
}

/// Appends frames to the newest segment, rolling to a new one past `segment_bytes`.
pub struct SegmentWriter {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    index: u64,
    written: u64,
}

impl SegmentWriter {
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(segments_dir(dir))?;
        let index = list_segments(dir)?.last().map(|(i, _)| i + 1).unwrap_or(1);
        let file = create_segment(dir, index)?;
        Ok(SegmentWriter {
            dir: dir.to_path_buf(),
            segment_bytes,
            file,
            index,
            written: 0,
        })
    }

    /// Appends the frame for `record` to `buf`, which the caller writes in one go, and returns
    /// the payload (the record's exact bytes). The JSON is serialized in place; the header is
    /// filled in afterwards.
    pub fn frame_into<'a>(buf: &'a mut Vec<u8>, record: &Record) -> &'a [u8] {
        Self::frame_with(buf, |buf| {
            serde_json::to_writer(buf, record).expect("records always serialize")
        })
    }

    /// Frames whatever `write_payload` appends to the buffer.
    pub fn frame_with(buf: &mut Vec<u8>, write_payload: impl FnOnce(&mut Vec<u8>)) -> &[u8] {
        let header_at = buf.len();
        buf.extend_from_slice(&[0; FRAME_HEADER]);
        write_payload(buf);
        let payload = &buf[header_at + FRAME_HEADER..];
        let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
        buf[header_at..header_at + 4].copy_from_slice(&len.to_le_bytes());
        buf[header_at + 4..header_at + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
        &buf[header_at + FRAME_HEADER..]
    }

    /// Writes a batch of whole frames. Frames never straddle segments. A failed write is cut
    /// back off the file, so a full disk never leaves a torn frame behind.
    pub fn write_frames(&mut self, frames: &[u8]) -> io::Result<()> {
        if self.written > 0 && self.written + frames.len() as u64 > self.segment_bytes {
            self.file.sync_data()?;
            self.file = create_segment(&self.dir, self.index + 1)?;
            self.index += 1;
            self.written = 0;
        }
        if let Err(e) = self.file.write_all(frames) {
            let _ = self.file.set_len(self.written);
            return Err(e);
        }
        self.written += frames.len() as u64;
        Ok(())
    }

    /// Where the next frame will go: everything before it is written.
    pub fn position(&self) -> (u64, u64) {
        (self.index, self.written)
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn create_segment(dir: &Path, index: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, index))?;
    // Make the new directory entry durable too, or a crash could lose the whole segment.
    File::open(segments_dir(dir))?.sync_all()?;
    Ok(file)
}

/// Segment files in order, with their index.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let seg_dir = segments_dir(dir);
    let mut segments = Vec::new();
    let entries = match fs::read_dir(&seg_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(segments),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let index = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(index) = index {
            segments.push((index, path));
        }
    }
    segments.sort();
    Ok(segments)
}

#[derive(serde::Deserialize)]
struct Ids {
    session_id: String,
    seq: u64,
}

/// A problem found while reading the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    pub offset: u64,
    pub what: String,
    /// The session and seq of the damaged record, when they can still be read from it.
    pub record: Option<(String, u64)>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte {}: {}",
            self.segment.display(),
            self.offset,
            self.what
        )
    }
}

/// A record as read back, with its exact bytes (what the hash chain covers).
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub record: Record,
    pub raw: Vec<u8>,
    /// False when the frame's CRC did not match but the bytes still decoded.
    pub crc_ok: bool,
}

/// Everything readable in the store, in write order, plus what could not be read.
pub fn read_all(dir: &Path) -> io::Result<(Vec<StoredRecord>, Vec<Damage>)> {
    let mut records = Vec::new();
    let mut damage = Vec::new();
    for (_, path) in list_segments(dir)? {
        let bytes = fs::read(&path)?;
        read_segment(&path, &bytes, &mut records, &mut damage);
    }
    Ok((records, damage))
}

fn read_segment(
    path: &Path,
    bytes: &[u8],
    records: &mut Vec<StoredRecord>,
    damage: &mut Vec<Damage>,
) {
    let mut pos = 0usize;
    let report = |offset: usize, what: String| Damage {
        segment: path.to_path_buf(),
        offset: offset as u64,
        what,
        record: None,
    };
    while pos < bytes.len() {
        let Some(header) = bytes.get(pos..pos + FRAME_HEADER) else {
            damage.push(report(
                pos,
                "truncated frame header (interrupted write)".into(),
            ));
            return;
        };
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            damage.push(report(
                pos,
                format!("frame length {len} is implausible; rest of segment skipped"),
            ));
            return;
        }
        let start = pos + FRAME_HEADER;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            damage.push(report(pos, "truncated frame (interrupted write)".into()));
            return;
        };
        let crc_ok = crc32fast::hash(payload) == crc;
        if !crc_ok {
            damage.push(report(
                pos,
                "CRC mismatch: record altered or corrupted".into(),
            ));
        }
        match serde_json::from_slice::<Record>(payload) {
            // A record whose CRC fails but still decodes is kept, flagged, so that `verify`
            // can name its session and seq.
            Ok(record) => records.push(StoredRecord {
                record,
                raw: payload.to_vec(),
                crc_ok,
            }),
            Err(e) if crc_ok => damage.push(report(pos, format!("undecodable record: {e}"))),
            // Damaged beyond decoding: still name its session and seq if they are legible.
            Err(_) => {
                if let (Some(last), Ok(ids)) =
                    (damage.last_mut(), serde_json::from_slice::<Ids>(payload))
                {
                    last.record = Some((ids.session_id, ids.seq));
                }
            }
        }
        pos = start + len as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::record::{DataChunk, Direction, RecordBody};

    fn record(seq: u64, data: &'static [u8]) -> Record {
        Record::new(
            "s",
            seq,
            time::OffsetDateTime::UNIX_EPOCH,
            None,
            RecordBody::Data(DataChunk {
                direction: Direction::Up,
                offset: 0,
                len: data.len() as u64,
                data: bytes::Bytes::from_static(data),
            }),
        )
    }

    fn write(dir: &Path, records: &[Record], segment_bytes: u64) {
        let mut w = SegmentWriter::open(dir, segment_bytes).unwrap();
        for r in records {
            let mut buf = Vec::new();
            SegmentWriter::frame_into(&mut buf, r);
            w.write_frames(&buf).unwrap();
        }
        w.sync().unwrap();
    }

    #[test]
    fn frames_round_trip_across_segment_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<_> = (0..50).map(|i| record(i, b"hello")).collect();
        write(dir.path(), &records, 1024);
        assert!(
            list_segments(dir.path()).unwrap().len() > 1,
            "small segments must roll"
        );
        let (back, damage) = read_all(dir.path()).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(
            back.into_iter().map(|r| r.record).collect::<Vec<_>>(),
            records
        );
    }

    #[test]
    fn torn_tail_and_flipped_byte_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[record(0, b"aaaa"), record(1, b"bbbb"), record(2, b"cccc")],
            1 << 20,
        );
        let (_, path) = list_segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        // Flip a byte inside the second record's payload, and cut the third in half.
        let first_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        bytes[FRAME_HEADER + first_len + FRAME_HEADER + 5] ^= 0x01;
        let cut = bytes.len() - 10;
        bytes.truncate(cut);
        fs::write(&path, &bytes).unwrap();
        let (records, damage) = read_all(dir.path()).unwrap();
        assert_eq!(records.iter().filter(|r| r.crc_ok).count(), 1);
        assert_eq!(damage.len(), 2, "{damage:?}");
        assert!(damage[0].what.contains("CRC mismatch"));
        assert!(damage[1].what.contains("truncated"));
    }

    #[test]
    fn garbage_segment_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(segments_dir(dir.path())).unwrap();
        fs::write(
            segments_dir(dir.path()).join("00000000000000000001.seg"),
            [0xffu8; 64],
        )
        .unwrap();
        let (records, damage) = read_all(dir.path()).unwrap();
        assert!(records.is_empty());
        assert_eq!(damage.len(), 1);
    }
}

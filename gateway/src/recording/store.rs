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

const FRAME_HEADER: usize = 8;
/// Frames larger than this are treated as corruption rather than allocated.
const MAX_FRAME: u32 = 256 << 20;

pub fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

/// Appends frames to the newest segment, rolling to a new one past `segment_bytes`.
pub struct SegmentWriter {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    written: u64,
    next_index: u64,
}

impl SegmentWriter {
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        let seg_dir = segments_dir(dir);
        fs::create_dir_all(&seg_dir)?;
        let next_index = list_segments(dir)?.last().map(|(i, _)| i + 1).unwrap_or(1);
        let file = create_segment(&seg_dir, next_index)?;
        Ok(SegmentWriter {
            dir: seg_dir,
            segment_bytes,
            file,
            written: 0,
            next_index: next_index + 1,
        })
    }

    /// Appends the frame for `record` to `buf`, which the caller writes in one go. The JSON is
    /// serialized in place; the header is filled in afterwards.
    pub fn frame_into(buf: &mut Vec<u8>, record: &Record) {
        let header_at = buf.len();
        buf.extend_from_slice(&[0; FRAME_HEADER]);
        serde_json::to_writer(&mut *buf, record).expect("records always serialize");
        let payload = &buf[header_at + FRAME_HEADER..];
        let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
        buf[header_at..header_at + 4].copy_from_slice(&len.to_le_bytes());
        buf[header_at + 4..header_at + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes a batch of whole frames. Frames never straddle segments.
    pub fn write_frames(&mut self, frames: &[u8]) -> io::Result<()> {
        if self.written > 0 && self.written + frames.len() as u64 > self.segment_bytes {
            self.file.sync_data()?;
            self.file = create_segment(&self.dir, self.next_index)?;
            self.next_index += 1;
            self.written = 0;
        }
        self.file.write_all(frames)?;
        self.written += frames.len() as u64;
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn create_segment(seg_dir: &Path, index: u64) -> io::Result<File> {
    let path = seg_dir.join(format!("{index:020}.seg"));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    // Make the new directory entry durable too, or a crash could lose the whole segment.
    File::open(seg_dir)?.sync_all()?;
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

/// A problem found while reading the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    pub offset: u64,
    pub what: String,
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

/// Everything readable in the store, in write order, plus what could not be read.
pub fn read_all(dir: &Path) -> io::Result<(Vec<Record>, Vec<Damage>)> {
    let mut records = Vec::new();
    let mut damage = Vec::new();
    for (_, path) in list_segments(dir)? {
        let bytes = fs::read(&path)?;
        read_segment(&path, &bytes, &mut records, &mut damage);
    }
    Ok((records, damage))
}

fn read_segment(path: &Path, bytes: &[u8], records: &mut Vec<Record>, damage: &mut Vec<Damage>) {
    let mut pos = 0usize;
    let report = |offset: usize, what: String| Damage {
        segment: path.to_path_buf(),
        offset: offset as u64,
        what,
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
        if crc32fast::hash(payload) != crc {
            damage.push(report(
                pos,
                "CRC mismatch: record altered or corrupted".into(),
            ));
        } else {
            match serde_json::from_slice::<Record>(payload) {
                Ok(record) => records.push(record),
                Err(e) => damage.push(report(pos, format!("undecodable record: {e}"))),
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
        assert_eq!(back, records);
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
        assert_eq!(records.len(), 1);
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

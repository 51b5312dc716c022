//! The embedded record store: append-only segment files under `<dir>/segments/`.
//!
//! Each record is one frame: `u32 length (LE) | u32 CRC-32 of the payload (LE) | payload`, the
//! payload being the record's JSON. A gateway start opens a new segment, so a torn tail left by
//! a crash is never appended to; readers report it and read on.
use std::{
    fs::{self, DirBuilder, File, OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::record::Record;

pub const FRAME_HEADER: usize = 8;
/// Frames larger than this are treated as corruption rather than allocated.
pub const MAX_FRAME: u32 = 256 << 20;

pub fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

/// Makes `dir` (and missing parents) a directory only its owner may enter, whatever the umask:
/// records hold command lines and raw session bytes. A directory that another user can write
/// to, or that another user owns, is refused, since records there could be altered or
/// deleted; one that others can merely read (an older store) is closed to them.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            return fs::set_permissions(dir, Permissions::from_mode(0o700));
        }
        Err(e) => return Err(e),
    };
    let mode = meta.mode() & 0o7777;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this gateway's uid {me}: another user could alter \
                 or delete its records; point recording.dir elsewhere or `chown {me} {}`",
                dir.display(),
                meta.uid(),
                dir.display()
            ),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by other users (mode {mode:04o}), who could alter or delete \
                 records: run `chmod 700 {}`",
                dir.display(),
                dir.display()
            ),
        ));
    }
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:04o}"), "record store was readable by other users; now 0700");
        fs::set_permissions(dir, Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Opens a new file only its owner may read or write, whatever the umask.
pub fn create_private_file(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options.create_new(true).mode(0o600).open(path)?;
    file.set_permissions(Permissions::from_mode(0o600))?;
    Ok(file)
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
        private_dir(dir)?;
        private_dir(&segments_dir(dir))?;
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
    let file = create_private_file(&segment_path(dir, index), OpenOptions::new().append(true))?;
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
    read_segments(dir, |_| true)
}

/// The records in the segments that may hold `session_id`: those whose index lists it, and
/// those without an index (the active one, or older than indexes).
pub fn read_session(dir: &Path, session_id: &str) -> io::Result<(Vec<StoredRecord>, Vec<Damage>)> {
    read_segments(dir, |index| {
        match fs::read_to_string(index_path(dir, index)) {
            Ok(sessions) => sessions.lines().any(|id| id == session_id),
            Err(_) => true,
        }
    })
}

fn read_segments(
    dir: &Path,
    wanted: impl Fn(u64) -> bool,
) -> io::Result<(Vec<StoredRecord>, Vec<Damage>)> {
    let mut records = Vec::new();
    let mut damage = Vec::new();
    for (index, path) in list_segments(dir)? {
        if wanted(index) {
            let bytes = fs::read(&path)?;
            read_segment(&path, &bytes, &mut records, &mut damage);
        }
    }
    Ok((records, damage))
}

/// Where the list of sessions with records in a finished segment is kept, so that reading
/// one session back opens only its segments.
pub fn index_path(dir: &Path, index: u64) -> PathBuf {
    dir.join("index").join(format!("{index:020}.sessions"))
}

/// Writes a finished segment's session list, one id a line.
pub fn write_segment_index<'a>(
    dir: &Path,
    index: u64,
    sessions: impl Iterator<Item = &'a str>,
) -> io::Result<()> {
    private_dir(&dir.join("index"))?;
    let mut list: Vec<&str> = sessions.collect();
    list.sort_unstable();
    let path = index_path(dir, index);
    let _ = fs::remove_file(&path);
    let mut file = create_private_file(&path, OpenOptions::new().write(true))?;
    for id in list {
        writeln!(file, "{id}")?;
    }
    file.sync_data()
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

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn the_store_is_private_whatever_the_umask() {
        // The umask is process-wide, and the other tests' stores would be refused as too open
        // while it is 0: the test runs alone in a child of this test binary.
        const CHILD: &str = "INTERLOCK_TEST_UMASK_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let name = "recording::store::tests::the_store_is_private_whatever_the_umask";
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            assert!(
                child.status.success(),
                "the umask test failed in its child:\n{}{}",
                String::from_utf8_lossy(&child.stdout),
                String::from_utf8_lossy(&child.stderr)
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("records");
        // SAFETY: umask has no preconditions.
        let before = unsafe { libc::umask(0) };
        let writer = SegmentWriter::open(&store, 1 << 20);
        let checkpoint = crate::recording::spool::Checkpoint::new(&store, "kinesis")
            .and_then(|c| c.save(Default::default()).map(|()| c));
        unsafe { libc::umask(before) };
        let (mut writer, _checkpoint) = (writer.unwrap(), checkpoint.unwrap());
        writer.write_frames(b"x").unwrap();
        assert_eq!(mode(&store), 0o700);
        assert_eq!(mode(&segments_dir(&store)), 0o700);
        assert_eq!(mode(&store.join("checkpoints")), 0o700);
        assert_eq!(mode(&store.join("checkpoints/kinesis.json")), 0o600);
        for (_, segment) in list_segments(&store).unwrap() {
            assert_eq!(mode(&segment), 0o600, "{}", segment.display());
        }
    }

    #[test]
    fn a_store_others_can_write_is_refused_and_one_they_can_read_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let open_dir = dir.path().join("open");
        fs::create_dir(&open_dir).unwrap();
        fs::set_permissions(&open_dir, Permissions::from_mode(0o777)).unwrap();
        let error = SegmentWriter::open(&open_dir, 1 << 20)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("writable by other users (mode 0777)")
                && error.contains(&format!("chmod 700 {}", open_dir.display())),
            "{error}"
        );
        assert!(
            list_segments(&open_dir).unwrap().is_empty(),
            "nothing written"
        );
        fs::set_permissions(&open_dir, Permissions::from_mode(0o755)).unwrap();
        SegmentWriter::open(&open_dir, 1 << 20).unwrap();
        assert_eq!(mode(&open_dir), 0o700);
    }

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

//! The spool: the segment files seen as a queue. The writer publishes how far it has written;
//! each sink reads from its checkpoint and saves a new checkpoint only after its destination
//! acknowledged, so delivery is at least once and a restart resumes where the sink stopped.
use std::{
    fs,
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::{
    record::UnrecordedGap,
    store::{self, FRAME_HEADER, MAX_FRAME},
};

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Shared accounting: how big the spool is and whether it may take new sessions.
pub struct SpoolState {
    bytes: AtomicU64,
    pub max_bytes: u64,
    /// Set while writes fail (disk full, I/O errors).
    write_failing: AtomicBool,
    /// Sessions let through unrecorded under `when_full: fail_open`, not yet reported.
    unrecorded: Mutex<Option<UnrecordedGap>>,
}

impl SpoolState {
    pub fn new(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let bytes = store::list_segments(dir)?
            .iter()
            .filter_map(|(_, path)| fs::metadata(path).ok())
            .map(|m| m.len())
            .sum();
        Ok(SpoolState {
            bytes: AtomicU64::new(bytes),
            max_bytes,
            write_failing: AtomicBool::new(false),
            unrecorded: Mutex::new(None),
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn added(&self, n: u64) {
        let now = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        crate::telemetry::metrics().spool_bytes.set(now as i64);
    }

    pub fn removed(&self, n: u64) {
        let now = self.bytes().saturating_sub(n);
        self.bytes.store(now, Ordering::Relaxed);
        crate::telemetry::metrics().spool_bytes.set(now as i64);
    }

    pub fn set_write_failing(&self, failing: bool) {
        self.write_failing.store(failing, Ordering::Relaxed);
    }

    /// Whether a new session can be recorded now.
    pub fn has_room(&self) -> bool {
        !self.write_failing.load(Ordering::Relaxed) && self.bytes() < self.max_bytes
    }

    pub fn note_unrecorded(&self) {
        let now = OffsetDateTime::now_utc();
        let mut gap = self.unrecorded.lock().expect("gap lock");
        match gap.as_mut() {
            Some(g) => {
                g.sessions += 1;
                g.last = now;
            }
            None => {
                *gap = Some(UnrecordedGap {
                    sessions: 1,
                    first: now,
                    last: now,
                })
            }
        }
    }

    pub fn take_unrecorded(&self) -> Option<UnrecordedGap> {
        self.unrecorded.lock().expect("gap lock").take()
    }
}

/// A sink's saved position, written atomically (temp file, fsync, rename).
pub struct Checkpoint {
    path: PathBuf,
}

impl Checkpoint {
    pub fn new(dir: &Path, sink: &str) -> io::Result<Checkpoint> {
        let checkpoints = dir.join("checkpoints");
        store::private_dir(&checkpoints)?;
        Ok(Checkpoint {
            path: checkpoints.join(format!("{sink}.json")),
        })
    }

    pub fn load(&self) -> io::Result<Position> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "checkpoint {} is unreadable ({e}); delete it to re-ship the whole spool",
                        self.path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Position::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, position: Position) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        // A temp file left by a crash mid-save is stale.
        let _ = fs::remove_file(&tmp);
        let mut file = store::create_private_file(&tmp, fs::OpenOptions::new().write(true))?;
        file.write_all(&serde_json::to_vec(&position).expect("positions serialize"))?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// One frame read from the spool, with the position just after it.
pub struct SpoolFrame {
    pub payload: Vec<u8>,
    pub next: Position,
}

/// Reads frames in order from a position, never past what the writer has committed.
pub struct SpoolReader {
    dir: PathBuf,
    position: Position,
    committed: watch::Receiver<Position>,
    file: Option<(u64, fs::File)>,
}

impl SpoolReader {
    pub fn new(dir: &Path, from: Position, committed: watch::Receiver<Position>) -> SpoolReader {
        SpoolReader {
            dir: dir.to_path_buf(),
            position: from,
            committed,
            file: None,
        }
    }

    /// Up to `max` frames, waiting until at least one is available. `None` when the writer
    /// has stopped and everything was read.
    pub async fn next_frames(&mut self, max: usize) -> Option<Vec<SpoolFrame>> {
        loop {
            let committed = *self.committed.borrow_and_update();
            match self.read_available(committed, max) {
                Ok(frames) if !frames.is_empty() => return Some(frames),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reading the spool failed; retrying"),
            }
            if self.committed.changed().await.is_err() {
                // Writer gone: drain what is left, then stop.
                let committed = *self.committed.borrow();
                let frames = self.read_available(committed, max).unwrap_or_default();
                return (!frames.is_empty()).then_some(frames);
            }
        }
    }

    fn read_available(&mut self, committed: Position, max: usize) -> io::Result<Vec<SpoolFrame>> {
        let mut frames = Vec::new();
        while frames.len() < max && self.position < committed {
            if self.position.segment < committed.segment && !self.open_current()? {
                // This segment is gone or finished: move to the next one that exists.
                self.advance_segment(committed)?;
                continue;
            }
            if self.position.segment == committed.segment {
                self.open_current()?;
            }
            let limit = if self.position.segment == committed.segment {
                Some(committed.offset)
            } else {
                None
            };
            match self.read_frame(limit)? {
                Some(frame) => {
                    self.position = frame.next;
                    frames.push(frame);
                }
                None if self.position.segment < committed.segment => {
                    self.advance_segment(committed)?
                }
                None => break,
            }
        }
        Ok(frames)
    }

    /// Opens the file of the current segment if needed; false if it does not exist.
    fn open_current(&mut self) -> io::Result<bool> {
        if self
            .file
            .as_ref()
            .is_some_and(|(s, _)| *s == self.position.segment)
        {
            return Ok(true);
        }
        let path = store::segment_path(&self.dir, self.position.segment);
        match fs::File::open(&path) {
            Ok(mut file) => {
                file.seek(SeekFrom::Start(self.position.offset))?;
                self.file = Some((self.position.segment, file));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn advance_segment(&mut self, committed: Position) -> io::Result<()> {
        let next = store::list_segments(&self.dir)?
            .into_iter()
            .map(|(index, _)| index)
            .find(|&index| index > self.position.segment)
            .unwrap_or(committed.segment);
        self.position = Position {
            segment: next,
            offset: 0,
        };
        self.file = None;
        Ok(())
    }

    /// The next whole frame, or None at the end of what may be read. A damaged frame in a
    /// finished segment ends that segment (it is reported by `verify` as missing records).
    fn read_frame(&mut self, limit: Option<u64>) -> io::Result<Option<SpoolFrame>> {
        let Some((_, file)) = self.file.as_mut() else {
            return Ok(None);
        };
        let offset = self.position.offset;
        if limit.is_some_and(|l| offset + FRAME_HEADER as u64 > l) {
            return Ok(None);
        }
        let mut header = [0u8; FRAME_HEADER];
        if read_full(file, &mut header)? < FRAME_HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            tracing::error!(
                segment = self.position.segment,
                offset,
                "implausible frame length; skipping the rest of the segment"
            );
            return Ok(None);
        }
        let mut payload = vec![0u8; len as usize];
        if read_full(file, &mut payload)? < payload.len() {
            return Ok(None);
        }
        let next = Position {
            segment: self.position.segment,
            offset: offset + FRAME_HEADER as u64 + u64::from(len),
        };
        if crc32fast::hash(&payload) != crc {
            tracing::error!(
                segment = self.position.segment,
                offset,
                "CRC mismatch in spool; frame not shipped"
            );
            self.position = next;
            return self.read_frame(limit);
        }
        Ok(Some(SpoolFrame { payload, next }))
    }
}

fn read_full(file: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    if filled < buf.len() {
        // Rewind so a partly written frame is read again once complete.
        file.seek(SeekFrom::Current(-(filled as i64)))?;
    }
    Ok(filled)
}

/// Deletes segments wholly before `position`; returns the bytes freed.
pub fn remove_shipped_segments(dir: &Path, position: Position) -> io::Result<u64> {
    let mut freed = 0;
    for (index, path) in store::list_segments(dir)? {
        if index >= position.segment {
            break;
        }
        freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&path)?;
    }
    Ok(freed)
}

//! Session recording. Relay tasks hand records to a bounded channel; one writer thread frames
//! them, writes each batch with a single write, and fsyncs when a batch holds a record that
//! must be durable (`session_start` before any byte goes upstream, and `session_end`) or when
//! `SYNC_INTERVAL` has passed. The byte path never waits on the disk, except through
//! back-pressure when the writer falls a whole channel behind, which loses nothing.
//! Sequence numbers are given by the writer, in the order records reach it, so both relay
//! directions of a session can send concurrently without reordering anything.
pub mod record;
pub mod sessions;
pub mod store;

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use self::{
    record::{DataChunk, Direction, Record, RecordBody, SessionEnd, SessionStart},
    store::SegmentWriter,
};
use crate::telemetry::events::{InternalEvent, RecordWriteFailed, RecordsWritten};

/// With 16 KiB chunks this bounds the backlog a slow disk can build to 16 MiB.
const CHANNEL_DEPTH: usize = 1024;
const MAX_BATCH: usize = 1024;
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

struct Entry {
    session_id: Arc<str>,
    ts: OffsetDateTime,
    body: RecordBody,
}

enum Command {
    Append(Entry),
    /// Append and fsync before answering.
    AppendDurable(Entry, oneshot::Sender<io::Result<()>>),
    /// Write what came before, sync, and stop.
    Shutdown,
}

/// Handle to the writer thread. Cloning is cheap.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Command>,
}

pub struct RecorderThread {
    handle: thread::JoinHandle<()>,
}

impl RecorderThread {
    /// Stops the writer once everything sent before this call is written and synced.
    pub async fn stop(self, recorder: &Recorder) {
        let _ = recorder.tx.send(Command::Shutdown).await;
        let _ = tokio::task::spawn_blocking(move || self.handle.join()).await;
    }
}

impl Recorder {
    pub fn start(dir: &Path, segment_bytes: u64) -> io::Result<(Recorder, RecorderThread)> {
        let writer = SegmentWriter::open(dir, segment_bytes).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "opening the record store {}: {e}; check recording.dir",
                    dir.display()
                ),
            )
        })?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let dir = dir.to_path_buf();
        let handle = thread::Builder::new()
            .name("interlock-recorder".into())
            .spawn(move || write_loop(writer, rx, dir))?;
        Ok((Recorder { tx }, RecorderThread { handle }))
    }

    pub fn session(&self, session_id: &str) -> SessionRecorder {
        SessionRecorder {
            recorder: self.clone(),
            session_id: session_id.into(),
        }
    }

    async fn send(&self, command: Command) -> io::Result<()> {
        self.tx.send(command).await.map_err(|_| writer_gone())
    }
}

fn writer_gone() -> io::Error {
    io::Error::other("the recorder has stopped; the gateway is shutting down")
}

/// The records of one session.
pub struct SessionRecorder {
    recorder: Recorder,
    session_id: Arc<str>,
}

impl SessionRecorder {
    fn entry(&self, body: RecordBody) -> Entry {
        Entry {
            session_id: self.session_id.clone(),
            ts: OffsetDateTime::now_utc(),
            body,
        }
    }

    /// Returns once the record is on disk.
    pub async fn start(&self, start: SessionStart) -> io::Result<()> {
        self.durable(RecordBody::SessionStart(start)).await
    }

    pub async fn data(&self, direction: Direction, offset: u64, data: Bytes) -> io::Result<()> {
        let len = data.len() as u64;
        let entry = self.entry(RecordBody::Data(DataChunk {
            direction,
            offset,
            len,
            data,
        }));
        self.recorder.send(Command::Append(entry)).await
    }

    /// Returns once the record is on disk.
    pub async fn end(&self, end: SessionEnd) -> io::Result<()> {
        self.durable(RecordBody::SessionEnd(end)).await
    }

    async fn durable(&self, body: RecordBody) -> io::Result<()> {
        let (ack, done) = oneshot::channel();
        self.recorder
            .send(Command::AppendDurable(self.entry(body), ack))
            .await?;
        done.await.map_err(|_| writer_gone())?
    }
}

/// Gives the entry the next sequence number of its session; a session's counter is dropped
/// with its `session_end`.
fn number(next_seq: &mut HashMap<Arc<str>, u64>, entry: Entry) -> Record {
    let is_end = matches!(entry.body, RecordBody::SessionEnd(_));
    let counter = next_seq.entry(entry.session_id.clone()).or_insert(0);
    let seq = *counter;
    *counter += 1;
    if is_end {
        next_seq.remove(&entry.session_id);
    }
    Record::new(&entry.session_id, seq, entry.ts, entry.body)
}

fn write_loop(mut writer: SegmentWriter, mut rx: mpsc::Receiver<Command>, dir: PathBuf) {
    let mut frames = Vec::with_capacity(1 << 20);
    let mut acks = Vec::new();
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut next_seq: HashMap<Arc<str>, u64> = HashMap::new();
    let mut stopping = false;
    while !stopping && let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        frames.clear();
        let mut records = 0;
        for command in batch {
            let entry = match command {
                Command::Append(entry) => entry,
                Command::AppendDurable(entry, ack) => {
                    acks.push(ack);
                    entry
                }
                Command::Shutdown => {
                    stopping = true;
                    continue;
                }
            };
            let record = number(&mut next_seq, entry);
            records += 1;
            SegmentWriter::frame_into(&mut frames, &record);
        }
        let must_sync = !acks.is_empty() || last_sync.elapsed() >= SYNC_INTERVAL;
        let result = writer
            .write_frames(&frames)
            .and_then(|()| if must_sync { writer.sync() } else { Ok(()) });
        match &result {
            Ok(()) => {
                RecordsWritten {
                    records,
                    bytes: frames.len() as u64,
                    synced: must_sync,
                }
                .emit();
                unsynced = !must_sync;
                if must_sync {
                    last_sync = Instant::now();
                }
            }
            Err(error) => RecordWriteFailed { error, dir: &dir }.emit(),
        }
        for ack in acks.drain(..) {
            let _ = ack.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
    if unsynced && let Err(error) = writer.sync() {
        RecordWriteFailed {
            error: &error,
            dir: &dir,
        }
        .emit();
    }
}

#[cfg(test)]
mod tests {
    use super::{record::Outcome, *};

    #[tokio::test]
    async fn session_records_arrive_in_order_and_durably() {
        let dir = tempfile::tempdir().unwrap();
        let (recorder, thread) = Recorder::start(dir.path(), 1 << 20).unwrap();
        let session = recorder.session("sess-1");
        session
            .start(SessionStart {
                node: "n".into(),
                target: "t".into(),
                protocol: "tcp".into(),
                original_dst: "127.0.0.1:1".into(),
                client_addr: "127.0.0.1:2".into(),
                cgroup_id: 7,
                cgroup: None,
                pid: 1,
                process: "p".into(),
                cmdline: vec![],
            })
            .await
            .unwrap();
        // session_start is durable as soon as start() returns.
        let (records, _) = store::read_all(dir.path()).unwrap();
        assert_eq!(records.len(), 1);
        for i in 0..100u64 {
            session
                .data(Direction::Up, i, Bytes::from(vec![i as u8]))
                .await
                .unwrap();
        }
        session
            .end(SessionEnd {
                bytes_up: 100,
                bytes_down: 0,
                duration_ms: 1,
                outcome: Outcome::Closed,
                error: None,
            })
            .await
            .unwrap();
        drop(session);
        thread.stop(&recorder).await;
        let (records, damage) = store::read_all(dir.path()).unwrap();
        assert!(damage.is_empty());
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..102).collect::<Vec<_>>());
    }
}

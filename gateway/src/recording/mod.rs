//! Session recording. Relay tasks hand what they saw to a bounded channel; one writer thread
//! builds and encodes the records, frames them, writes each batch with a single write, and
//! fsyncs when a batch holds a record that must be durable (`session_start` before any byte
//! goes upstream, and `session_end`), and otherwise as `recording.fsync` says. The byte path
//! never waits on the disk, nor on the work a record needs (encoding, masking the recorded
//! copy, reading MCP messages out of a response), except through back-pressure when the
//! writer falls a whole channel behind, which loses nothing.
//! Sequence numbers are given by the writer, in the order records reach it, so both relay
//! directions of a session can send concurrently without reordering anything.
pub mod chain;
pub mod config;
pub mod head;
mod priority;
pub mod record;
pub mod sessions;
pub mod spool;
pub mod store;
pub mod verify;

use std::{
    collections::HashMap,
    io,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use self::{
    chain::{Sealer, sha256_hex},
    config::FsyncPolicy,
    head::HeadKeeper,
    priority::{PriorityHandle, WriterPriority},
    record::{DataChunk, Direction, Record, RecordBody, SessionEnd, SessionStart},
    spool::{Position, SpoolState},
    store::SegmentWriter,
};
use crate::telemetry::events::{
    InternalEvent, RecordBuildFailed, RecordWriteFailed, RecordsWritten, SpoolGapRecorded,
};

/// With 16 KiB chunks this bounds the backlog a slow disk can build to 16 MiB.
const CHANNEL_DEPTH: usize = 1024;
const MAX_BATCH: usize = 1024;
/// How often a busy writer looks for new records. The data path does not wake it for a
/// record nobody waits on: waking a sleeping thread costs the sender a syscall and, across
/// cores, an interrupt, in the middle of forwarding a request. Records someone waits on
/// (`session_start`, `session_end`) wake it at once. MCP bench on two cores, Interlock's added
/// p99 minus nginx's: woken per batch, then lingering 50 µs ~70 µs; polling every 1 ms
/// ~78 µs, 200 µs ~58 µs, 100 µs ~54 µs.
const POLL: Duration = Duration::from_micros(100);
/// After this many empty polls (10 ms) the writer sleeps until a record arrives.
const QUIET_POLLS: u32 = 100;
/// Backlog at which the writer stops yielding the CPU (see `WriterPriority`).
const BOOST_BACKLOG: usize = CHANNEL_DEPTH / 4;

pub struct WriterOptions {
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
}

struct Entry {
    session_id: Arc<str>,
    ts: OffsetDateTime,
    body: EntryBody,
}

// Entries move by value through the channel; boxing the large variant would cost an
// allocation per record to save a copy.
#[allow(clippy::large_enum_variant)]
enum EntryBody {
    Ready(RecordBody),
    Deferred(Deferred),
}

/// Builds records on the writer thread, from what the data path saw, so that the request
/// or response it came from is forwarded without waiting for that work.
pub type Deferred = Box<dyn FnOnce() -> Vec<RecordBody> + Send>;

enum Command {
    Append(Entry),
    /// Append and fsync before answering.
    AppendDurable(Entry, oneshot::Sender<io::Result<()>>),
    /// Time for an interval fsync, even if nothing new arrives.
    Tick,
    /// Write what came before, sync, and stop.
    Shutdown,
}

/// Handle to the writer thread. Cloning is cheap.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Command>,
    spool: Arc<SpoolState>,
    /// The writer thread, woken at once for records someone waits on.
    writer: thread::Thread,
    priority: Arc<PriorityHandle>,
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
    /// Starts the writer thread. The watch carries the spool position up to which
    /// everything is written, for sinks to read up to.
    pub fn start(
        dir: &Path,
        options: WriterOptions,
        sealer: Sealer,
        spool: Arc<SpoolState>,
    ) -> io::Result<(Recorder, RecorderThread, watch::Receiver<Position>)> {
        let writer = SegmentWriter::open(dir, options.segment_bytes).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "opening the record store {}: {e}; check recording.dir",
                    dir.display()
                ),
            )
        })?;
        let (segment, offset) = writer.position();
        let head = HeadKeeper::start(dir, &sealer, segment)?;
        let (committed_tx, committed) = watch::channel(Position { segment, offset });
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let priority = Arc::new(PriorityHandle::default());
        let writer_loop = WriteLoop {
            priority: priority.clone(),
            writer,
            head,
            dir: dir.to_path_buf(),
            sealer,
            spool: spool.clone(),
            committed: committed_tx,
            fsync: options.fsync,
            fsync_interval: options.fsync_interval,
        };
        let handle = thread::Builder::new()
            .name("interlock-recorder".into())
            .spawn(move || writer_loop.run(rx))?;
        if options.fsync == FsyncPolicy::Interval {
            let ticks = tx.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(options.fsync_interval);
                loop {
                    interval.tick().await;
                    if ticks.send(Command::Tick).await.is_err() {
                        return;
                    }
                }
            });
        }
        let writer = handle.thread().clone();
        Ok((
            Recorder {
                tx,
                spool,
                writer,
                priority,
            },
            RecorderThread { handle },
            committed,
        ))
    }

    pub fn spool(&self) -> &SpoolState {
        &self.spool
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
#[derive(Clone)]
pub struct SessionRecorder {
    recorder: Recorder,
    session_id: Arc<str>,
}

impl SessionRecorder {
    pub fn id(&self) -> &str {
        &self.session_id
    }

    fn entry(&self, body: EntryBody) -> Entry {
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

    /// Bytes of one direction; the writer gives them their offset in that direction.
    pub async fn data(&self, direction: Direction, data: Bytes) -> io::Result<()> {
        let entry = self.entry(EntryBody::Ready(RecordBody::Data(DataChunk::new(
            direction, data,
        ))));
        self.recorder.send(Command::Append(entry)).await
    }

    /// Any other record of the session (HTTP heads, MCP messages).
    pub async fn record(&self, body: RecordBody) -> io::Result<()> {
        let entry = self.entry(EntryBody::Ready(body));
        self.recorder.send(Command::Append(entry)).await
    }

    /// Records what `build` makes, built on the writer thread but stamped and ordered now.
    pub async fn record_later(&self, build: Deferred) -> io::Result<()> {
        let entry = self.entry(EntryBody::Deferred(build));
        self.recorder.send(Command::Append(entry)).await
    }

    /// Returns once the record is on disk.
    pub async fn end(&self, end: SessionEnd) -> io::Result<()> {
        self.durable(RecordBody::SessionEnd(end)).await
    }

    async fn durable(&self, body: RecordBody) -> io::Result<()> {
        let (ack, done) = oneshot::channel();
        self.recorder
            .send(Command::AppendDurable(
                self.entry(EntryBody::Ready(body)),
                ack,
            ))
            .await?;
        self.recorder.priority.raise();
        self.recorder.writer.unpark();
        done.await.map_err(|_| writer_gone())?
    }
}

/// Where each open session's chain stands.
#[derive(Default)]
struct ChainState {
    next_seq: u64,
    last_hash: Option<String>,
    /// Where the next data chunk of each direction (up, down) starts.
    data_offsets: [u64; 2],
}

/// Builds the entry's records, numbers them, links them to their session's chain and frames
/// them into `frames`; `session_end` is sealed (signed over its bytes without the seal) and
/// ends the chain. Returns how many records were framed.
fn chain_and_frame(
    chains: &mut HashMap<Arc<str>, ChainState>,
    sealer: &Sealer,
    frames: &mut Vec<u8>,
    entry: Entry,
) -> u64 {
    let bodies = match entry.body {
        EntryBody::Ready(body) => vec![body],
        // A builder that panics loses its records, never the writer thread.
        EntryBody::Deferred(build) => match std::panic::catch_unwind(AssertUnwindSafe(build)) {
            Ok(bodies) => bodies,
            Err(_) => {
                RecordBuildFailed {
                    session_id: &entry.session_id,
                }
                .emit();
                return 0;
            }
        },
    };
    let framed = bodies.len() as u64;
    for mut body in bodies {
        let state = chains.entry(entry.session_id.clone()).or_default();
        if let RecordBody::Data(chunk) = &mut body {
            let next = &mut state.data_offsets[chunk.direction as usize];
            chunk.offset = *next;
            *next += chunk.len;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let prev_hash = state.last_hash.take();
        if let RecordBody::SessionEnd(end) = body {
            let mut record = Record::new(
                &entry.session_id,
                seq,
                entry.ts,
                prev_hash,
                RecordBody::SessionEnd(end),
            );
            let unsealed = serde_json::to_vec(&record).expect("records always serialize");
            let seal = sealer.seal(&unsealed);
            if let RecordBody::SessionEnd(end) = &mut record.body {
                end.seal = Some(seal);
            }
            SegmentWriter::frame_into(frames, &record);
            chains.remove(&entry.session_id);
            continue;
        }
        let body_json = serde_json::to_vec(&body).expect("records always serialize");
        let written = SegmentWriter::frame_with(frames, |buf| {
            record::write_with_encoded_body(
                buf,
                &entry.session_id,
                seq,
                entry.ts,
                prev_hash.as_deref(),
                &body_json,
            )
        });
        state.last_hash = Some(sha256_hex(written));
    }
    framed
}

/// The next command: polled while records flow, waited for once they stop.
fn next_command(rx: &mut mpsc::Receiver<Command>, quiet_polls: &mut u32) -> Option<Command> {
    loop {
        match rx.try_recv() {
            Ok(command) => {
                *quiet_polls = 0;
                return Some(command);
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if *quiet_polls < QUIET_POLLS => {
                *quiet_polls += 1;
                thread::park_timeout(POLL);
            }
            Err(mpsc::error::TryRecvError::Empty) => {
                *quiet_polls = 0;
                return rx.blocking_recv();
            }
        }
    }
}

struct WriteLoop {
    priority: Arc<PriorityHandle>,
    writer: SegmentWriter,
    head: HeadKeeper,
    dir: PathBuf,
    sealer: Sealer,
    spool: Arc<SpoolState>,
    committed: watch::Sender<Position>,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
}

impl WriteLoop {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut priority = WriterPriority::lowered(self.priority.clone(), BOOST_BACKLOG);
        let mut frames = Vec::with_capacity(1 << 20);
        let mut acks = Vec::new();
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        let mut chains: HashMap<Arc<str>, ChainState> = HashMap::new();
        let mut stopping = false;
        let mut quiet_polls = 0;
        let mut batch_sessions: Vec<Arc<str>> = Vec::new();
        while !stopping && let Some(first) = next_command(&mut rx, &mut quiet_polls) {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let waited_on = batch
                .iter()
                .any(|command| matches!(command, Command::AppendDurable(..)));
            priority.follow(batch.len() + rx.len(), waited_on);
            frames.clear();
            let mut records = 0;
            if self.spool.has_room()
                && let Some(gap) = self.spool.take_unrecorded()
            {
                SpoolGapRecorded {
                    sessions: gap.sessions,
                }
                .emit();
                let id = format!("spool-gap-{}", uuid::Uuid::now_v7());
                let record = Record::new(&id, 0, gap.last, None, RecordBody::SpoolGap(gap));
                SegmentWriter::frame_into(&mut frames, &record);
                batch_sessions.push(id.into());
                records += 1;
            }
            for command in batch {
                let entry = match command {
                    Command::Append(entry) => entry,
                    Command::AppendDurable(entry, ack) => {
                        acks.push(ack);
                        entry
                    }
                    Command::Tick => continue,
                    Command::Shutdown => {
                        stopping = true;
                        continue;
                    }
                };
                // A session's records tend to come in runs: one index entry per run.
                if batch_sessions.last() != Some(&entry.session_id) {
                    batch_sessions.push(entry.session_id.clone());
                }
                records += chain_and_frame(&mut chains, &self.sealer, &mut frames, entry);
            }
            let must_sync = self.fsync == FsyncPolicy::Always
                || !acks.is_empty()
                || (unsynced || !frames.is_empty()) && last_sync.elapsed() >= self.fsync_interval;
            let result = self.write(&frames, must_sync);
            if result.is_ok() {
                let position = self.writer.position();
                self.head
                    .wrote(&self.dir, position, &frames, records, &mut batch_sessions);
                self.head.write_if_due(&self.dir, &self.sealer, false);
            }
            batch_sessions.clear();
            match &result {
                Ok(()) => {
                    if records > 0 || must_sync {
                        RecordsWritten {
                            records,
                            bytes: frames.len() as u64,
                            synced: must_sync,
                        }
                        .emit();
                    }
                    unsynced = !must_sync && (unsynced || !frames.is_empty());
                    if must_sync {
                        last_sync = Instant::now();
                    }
                }
                // The batch is dropped (and cut back off the file): its sessions show the gap
                // as missing records, and new sessions are refused until writes work again.
                Err(error) => RecordWriteFailed {
                    error,
                    dir: &self.dir,
                    records,
                }
                .emit(),
            }
            for ack in acks.drain(..) {
                let _ = ack.send(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                });
            }
            priority.follow(rx.len(), false);
        }
        self.head.finish(&self.dir, &self.sealer);
        if unsynced && let Err(error) = self.writer.sync() {
            RecordWriteFailed {
                error: &error,
                dir: &self.dir,
                records: 0,
            }
            .emit();
        }
    }

    fn write(&mut self, frames: &[u8], sync: bool) -> io::Result<()> {
        let result = self
            .writer
            .write_frames(frames)
            .and_then(|()| if sync { self.writer.sync() } else { Ok(()) });
        self.spool.set_write_failing(result.is_err());
        if result.is_ok() && !frames.is_empty() {
            self.spool.added(frames.len() as u64);
            let (segment, offset) = self.writer.position();
            self.committed.send_replace(Position { segment, offset });
        }
        result
    }
}

#[cfg(test)]
pub(crate) fn test_recorder(dir: &Path) -> (Recorder, RecorderThread, watch::Receiver<Position>) {
    let sealer = Sealer::load(&dir.join("key.pem"), true).unwrap();
    let options = WriterOptions {
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::Interval,
        fsync_interval: Duration::from_secs(1),
    };
    let spool = Arc::new(SpoolState::new(dir, u64::MAX).unwrap());
    Recorder::start(dir, options, sealer, spool).unwrap()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{priority::can_leave_idle_priority, record::Outcome, *};
    use crate::identity::Workload;

    fn session_start() -> SessionStart {
        SessionStart {
            node: "n".into(),
            target: "t".into(),
            protocol: "tcp".into(),
            original_dst: "127.0.0.1:1".into(),
            client_addr: "127.0.0.1:2".into(),
            workload: Workload {
                cgroup_id: 7,
                cgroup: None,
                pid: 1,
                process: "p".into(),
                cmdline: vec![],
                pod: None,
                kubernetes: None,
            },
        }
    }

    /// The writer's scheduling policy, as a record builder sees it on the writer thread.
    fn writer_policy() -> i32 {
        // SAFETY: a plain syscall on the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// A record that holds the writer until `release` is sent; returns once it holds. What
    /// is sent meanwhile shares no batch with it. Yields the writer's policy when released.
    async fn hold_writer(
        session: &SessionRecorder,
    ) -> (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<i32>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (report, released_at) = std::sync::mpsc::channel();
        let holding = Arc::new(AtomicBool::new(false));
        let signal = holding.clone();
        session
            .record_later(Box::new(move || {
                signal.store(true, Ordering::SeqCst);
                let _ = held.recv();
                let _ = report.send(writer_policy());
                Vec::new()
            }))
            .await
            .unwrap();
        while !holding.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (release, released_at)
    }

    #[tokio::test]
    async fn session_records_arrive_in_order_and_durably() {
        let dir = tempfile::tempdir().unwrap();
        let (recorder, thread, _) = test_recorder(dir.path());
        let session = recorder.session("sess-1");
        session.start(session_start()).await.unwrap();
        // session_start is durable as soon as start() returns.
        let (records, _) = store::read_all(dir.path()).unwrap();
        assert_eq!(records.len(), 1);
        for i in 0..100u64 {
            session
                .data(Direction::Up, Bytes::from(vec![i as u8]))
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
                seal: None,
            })
            .await
            .unwrap();
        drop(session);
        thread.stop(&recorder).await;
        let (records, damage) = store::read_all(dir.path()).unwrap();
        assert!(damage.is_empty());
        let seqs: Vec<u64> = records.iter().map(|r| r.record.seq).collect();
        assert_eq!(seqs, (0..102).collect::<Vec<_>>());
        let offsets: Vec<u64> = records
            .iter()
            .filter_map(|r| match &r.record.body {
                RecordBody::Data(chunk) => Some(chunk.offset),
                _ => None,
            })
            .collect();
        assert_eq!(offsets, (0..100).collect::<Vec<_>>(), "one byte each");
        let key = Sealer::load(&dir.path().join("key.pem"), false)
            .unwrap()
            .verifying_key();
        let verdicts = verify::verify(&records, &[], &key);
        assert_eq!(verdicts.len(), 1);
        assert!(
            verdicts[0].problems.is_empty(),
            "{:?}",
            verdicts[0].problems
        );
    }

    #[tokio::test]
    async fn the_writer_yields_the_cpu_until_a_backlog_builds() {
        let dir = tempfile::tempdir().unwrap();
        let (recorder, thread, _) = test_recorder(dir.path());
        let session = recorder.session("sess-3");
        // Each probe notes the writer's scheduling policy as it builds its record.
        let policies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let probe = || {
            let policies = policies.clone();
            Box::new(move || {
                policies.lock().unwrap().push(writer_policy());
                Vec::new()
            }) as Deferred
        };
        let probes_done = |n: usize| {
            let policies = policies.clone();
            async move {
                while policies.lock().unwrap().len() < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        session.record_later(probe()).await.unwrap();
        probes_done(1).await;
        // A backlog builds while the writer is held.
        let (release, _) = hold_writer(&session).await;
        for _ in 0..2 * BOOST_BACKLOG {
            session.record_later(probe()).await.unwrap();
        }
        release.send(()).unwrap();
        probes_done(1 + 2 * BOOST_BACKLOG).await;
        session.record_later(probe()).await.unwrap();
        probes_done(2 + 2 * BOOST_BACKLOG).await;
        let policies = policies.lock().unwrap().clone();
        if !can_leave_idle_priority() {
            assert!(
                policies.iter().all(|&p| p == libc::SCHED_OTHER),
                "a writer that could not rise again never lowers itself: {policies:?}"
            );
            drop(session);
            thread.stop(&recorder).await;
            return;
        }
        assert_eq!(policies[0], libc::SCHED_IDLE, "idle while it keeps up");
        assert!(
            policies[1..=2 * BOOST_BACKLOG]
                .iter()
                .all(|&p| p == libc::SCHED_OTHER),
            "normal priority through the backlog: {policies:?}"
        );
        assert_eq!(
            policies.last(),
            Some(&libc::SCHED_IDLE),
            "idle again once caught up"
        );
        drop(session);
        thread.stop(&recorder).await;
    }

    #[tokio::test]
    async fn a_record_someone_waits_on_raises_the_writer_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (recorder, thread, _) = test_recorder(dir.path());
        let session = recorder.session("sess-4");
        let can_rise = can_leave_idle_priority();
        let (release, released_at) = hold_writer(&session).await;
        // The start is sent while the writer is busy: the sender raises it there and then,
        // since a starved writer could not raise itself.
        let starting = tokio::spawn({
            let session = session.clone();
            async move { session.start(session_start()).await }
        });
        while can_rise && !recorder.priority.raised.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        release.send(()).unwrap();
        assert_eq!(released_at.recv().unwrap(), libc::SCHED_OTHER);
        starting.await.unwrap().unwrap();
        let (release, released_at) = hold_writer(&session).await;
        release.send(()).unwrap();
        let expected = match can_rise {
            true => libc::SCHED_IDLE,
            // A writer that could not rise again never lowers itself.
            false => libc::SCHED_OTHER,
        };
        assert_eq!(
            released_at.recv().unwrap(),
            expected,
            "idle again once the record is on disk"
        );
        drop(session);
        thread.stop(&recorder).await;
    }

    #[tokio::test]
    async fn deferred_records_keep_their_place_and_a_panicking_builder_loses_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (recorder, thread, _) = test_recorder(dir.path());
        let session = recorder.session("sess-2");
        let head = |status| {
            RecordBody::HttpResponse(record::HttpResponseHead {
                status,
                headers: vec![],
                generated_by_gateway: false,
            })
        };
        session.record(head(200)).await.unwrap();
        session
            .record_later(Box::new(move || vec![head(201), head(202)]))
            .await
            .unwrap();
        session
            .record_later(Box::new(|| panic!("a bug in a record builder")))
            .await
            .unwrap();
        session.record(head(203)).await.unwrap();
        drop(session);
        thread.stop(&recorder).await;
        let (records, _) = store::read_all(dir.path()).unwrap();
        let statuses: Vec<(u64, u16)> = records
            .iter()
            .map(|r| match &r.record.body {
                RecordBody::HttpResponse(head) => (r.record.seq, head.status),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(statuses, [(0, 200), (1, 201), (2, 202), (3, 203)]);
    }
}

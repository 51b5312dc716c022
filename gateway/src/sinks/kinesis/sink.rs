//! The loop from spool to stream: gather frames into batches (at most 500 records and 5 MiB,
//! or what arrived within `linger`), deliver, then checkpoint and drop shipped segments.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{
    request_builder::{Entry, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, entries_for},
    service::KinesisService,
};
use crate::{
    recording::spool::{Checkpoint, Position, SpoolReader, SpoolState, remove_shipped_segments},
    telemetry::metrics,
};

pub struct KinesisSink {
    pub service: KinesisService,
    pub reader: SpoolReader,
    pub checkpoint: Checkpoint,
    pub dir: PathBuf,
    pub spool: Arc<SpoolState>,
    pub max_record_bytes: usize,
    pub linger: Duration,
}

/// Entries waiting to be put, and the spool position up to which every frame is included.
#[derive(Default)]
struct Batch {
    entries: Vec<Entry>,
    bytes: usize,
    complete_up_to: Option<Position>,
    since: Option<Instant>,
}

impl Batch {
    fn fits(&self, entry: &Entry) -> bool {
        self.entries.len() < MAX_BATCH_RECORDS && self.bytes + entry.size() <= MAX_BATCH_BYTES
    }
}

impl KinesisSink {
    /// Runs until the spool's writer stops and everything read was delivered, or until
    /// `stop` fires (the rest is shipped after the next start).
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch = Batch::default();
        loop {
            let linger_left = batch
                .since
                .map(|since| self.linger.saturating_sub(since.elapsed()))
                .unwrap_or(Duration::MAX);
            let frames = tokio::select! {
                _ = stop.cancelled() => return,
                frames = self.reader.next_frames(MAX_BATCH_RECORDS) => frames,
                _ = tokio::time::sleep(linger_left) => {
                    self.flush(&mut batch).await;
                    continue;
                }
            };
            let Some(frames) = frames else {
                self.flush(&mut batch).await;
                info!("spool writer stopped; Kinesis sink finished");
                return;
            };
            for frame in frames {
                let entries = match entries_for(&frame.payload, self.max_record_bytes) {
                    Ok(entries) => entries,
                    Err(e) => {
                        error!(error = %e, position = ?frame.next, "skipping an unshippable spool frame");
                        Vec::new()
                    }
                };
                for entry in entries {
                    if !batch.fits(&entry) {
                        self.flush(&mut batch).await;
                    }
                    batch.bytes += entry.size();
                    batch.entries.push(entry);
                    batch.since.get_or_insert_with(Instant::now);
                }
                batch.complete_up_to = Some(frame.next);
            }
            if batch.entries.len() >= MAX_BATCH_RECORDS {
                self.flush(&mut batch).await;
            }
        }
    }

    async fn flush(&mut self, batch: &mut Batch) {
        let full = std::mem::take(batch);
        if let Some(since) = full.since {
            metrics()
                .oldest_unshipped_seconds
                .set(since.elapsed().as_secs() as i64);
        }
        if !full.entries.is_empty() {
            self.service.deliver(full.entries).await;
        }
        metrics().oldest_unshipped_seconds.set(0);
        // Frames split across batches are checkpointed only once wholly delivered.
        if let Some(position) = full.complete_up_to {
            if let Err(e) = self.checkpoint.save(position) {
                error!(error = %e, "saving the Kinesis checkpoint failed; records may be shipped twice");
                return;
            }
            match remove_shipped_segments(&self.dir, position) {
                Ok(freed) => self.spool.removed(freed),
                Err(e) => error!(error = %e, "removing shipped segments failed"),
            }
        }
    }
}

//! Delivers one batch with PutRecords. Only the records that failed are resent (the response
//! says which, by position); throttling and transport errors back off exponentially with
//! full jitter. A batch is never given up on: the spool holds it, and new sessions are
//! refused once the spool fills (or let through unrecorded, as configured).
use std::time::Duration;

use aws_sdk_kinesis::{Client, primitives::Blob, types::PutRecordsRequestEntry};
use tracing::warn;

use super::request_builder::Entry;
use crate::telemetry::metrics;

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

pub struct KinesisService {
    pub client: Client,
    pub stream: String,
}

impl KinesisService {
    pub async fn deliver(&self, entries: Vec<Entry>) {
        let mut pending = entries;
        let mut attempt = 0u32;
        while !pending.is_empty() {
            if attempt > 0 {
                metrics().ship_retries.inc();
                tokio::time::sleep(backoff(attempt)).await;
            }
            attempt += 1;
            match self.put(&pending).await {
                Ok(failed) if failed.is_empty() => {
                    metrics().records_shipped.inc_by(pending.len() as u64);
                    return;
                }
                Ok(failed) => {
                    let shipped = pending.len() - failed.len();
                    metrics().records_shipped.inc_by(shipped as u64);
                    metrics().records_resent.inc_by(failed.len() as u64);
                    warn!(
                        stream = %self.stream,
                        failed = failed.len(),
                        of = pending.len(),
                        "PutRecords partly failed; resending only the failed records"
                    );
                    pending = failed;
                }
                Err(error) => warn!(
                    stream = %self.stream,
                    attempt,
                    %error,
                    "PutRecords failed; retrying with backoff. Records stay in the spool"
                ),
            }
        }
    }

    /// Puts the entries; returns the ones the stream did not take.
    async fn put(&self, entries: &[Entry]) -> Result<Vec<Entry>, String> {
        let records = entries
            .iter()
            .map(|e| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&e.partition_key)
                    .data(Blob::new(e.data.to_vec()))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .put_records()
            .stream_name(&self.stream)
            .set_records(Some(records))
            .send()
            .await
            .map_err(|e| format!("{}", aws_sdk_kinesis::error::DisplayErrorContext(e)))?;
        if output.failed_record_count().unwrap_or(0) == 0 {
            return Ok(Vec::new());
        }
        if output.records().len() != entries.len() {
            return Err(format!(
                "PutRecords answered {} results for {} records",
                output.records().len(),
                entries.len()
            ));
        }
        Ok(output
            .records()
            .iter()
            .zip(entries)
            .filter(|(result, _)| result.error_code().is_some())
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)).
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    ceiling.mul_f64(f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        for attempt in 1..30 {
            let d = backoff(attempt);
            assert!(d <= BACKOFF_CAP);
            assert!(d <= BACKOFF_BASE * (1 << attempt.min(16)));
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(5)).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
    }
}

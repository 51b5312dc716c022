//! Verifies sessions: sequence complete, hash chain unbroken, seal valid. Works on records
//! from any source (the file store or the stream), given their exact bytes.
use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::{
    chain::{check_seal, sha256_hex},
    record::RecordBody,
    store::StoredRecord,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The record at `seq` is not what was written.
    Tampered { seq: u64, detail: String },
    /// Records `from..=to` are absent.
    Missing { from: u64, to: u64 },
    /// No valid `session_end` seal: the session was interrupted (gateway crash) or its end
    /// was removed.
    Unsealed { last_seq: u64 },
    /// Sessions went through unrecorded while the spool was full (`when_full: fail_open`).
    Unrecorded {
        sessions: u64,
        first: String,
        last: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Tampered { seq, detail } => write!(f, "tampered at seq {seq}: {detail}"),
            Problem::Missing { from, to } if from == to => write!(f, "missing record seq {from}"),
            Problem::Missing { from, to } => write!(f, "missing records seq {from}..={to}"),
            Problem::Unrecorded {
                sessions,
                first,
                last,
            } => {
                write!(
                    f,
                    "{sessions} sessions went through unrecorded between {first} and {last}"
                )
            }
            Problem::Unsealed { last_seq } => write!(
                f,
                "unsealed: no sealed session_end after seq {last_seq} (interrupted, or its end was removed)"
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionVerdict {
    pub session_id: String,
    pub records: usize,
    pub problems: Vec<Problem>,
}

impl SessionVerdict {
    pub fn status(&self) -> &'static str {
        match self.problems.first() {
            None => "intact",
            Some(Problem::Tampered { .. }) => "tampered",
            Some(Problem::Missing { .. }) => "missing",
            Some(Problem::Unsealed { .. }) => "unsealed",
            Some(Problem::Unrecorded { .. }) => "unrecorded",
        }
    }
}

/// One verdict per session, in session-id order. Duplicates (at-least-once delivery) are
/// fine when byte-identical. `damaged` names records that exist but could not be decoded.
pub fn verify(
    records: &[StoredRecord],
    damaged: &[(String, u64)],
    key: &VerifyingKey,
) -> Vec<SessionVerdict> {
    let mut sessions: BTreeMap<&str, BTreeMap<u64, Vec<&StoredRecord>>> = BTreeMap::new();
    for r in records {
        sessions
            .entry(&r.record.session_id)
            .or_default()
            .entry(r.record.seq)
            .or_default()
            .push(r);
    }
    for (session, _) in damaged {
        sessions.entry(session).or_default();
    }
    sessions
        .into_iter()
        .map(|(session_id, by_seq)| {
            let damaged_seqs: Vec<u64> = damaged
                .iter()
                .filter(|(s, _)| s == session_id)
                .map(|(_, seq)| *seq)
                .collect();
            verify_session(session_id, &by_seq, &damaged_seqs, key)
        })
        .collect()
}

fn verify_session(
    session_id: &str,
    by_seq: &BTreeMap<u64, Vec<&StoredRecord>>,
    damaged_seqs: &[u64],
    key: &VerifyingKey,
) -> SessionVerdict {
    let mut problems: Vec<Problem> = damaged_seqs
        .iter()
        .map(|&seq| Problem::Tampered {
            seq,
            detail: "frame damaged beyond decoding (CRC mismatch)".into(),
        })
        .collect();
    // A gateway's own event, one record: its bytes are held by the store head.
    if let Some(RecordBody::RegistrationsAdopted(_)) = by_seq.get(&0).map(|c| &c[0].record.body) {
        return SessionVerdict {
            session_id: session_id.to_string(),
            records: 1,
            problems,
        };
    }
    if let Some(RecordBody::SpoolGap(gap)) = by_seq.get(&0).map(|c| &c[0].record.body) {
        let format = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        problems.push(Problem::Unrecorded {
            sessions: gap.sessions,
            first: format(gap.first),
            last: format(gap.last),
        });
        return SessionVerdict {
            session_id: session_id.to_string(),
            records: 1,
            problems,
        };
    }
    let mut tampered = |seq, detail: &str| {
        problems.push(Problem::Tampered {
            seq,
            detail: detail.to_string(),
        });
    };
    let mut expected = 0u64;
    let mut previous: Option<&StoredRecord> = None;
    let mut missing = Vec::new();
    let mut sealed = false;
    for (&seq, copies) in by_seq {
        let r = copies[0];
        if copies.iter().any(|c| c.raw != r.raw) {
            tampered(seq, "two different records carry this seq");
        }
        if !r.crc_ok {
            tampered(seq, "frame CRC does not match its bytes");
        }
        if seq > expected {
            missing.push(Problem::Missing {
                from: expected,
                to: seq - 1,
            });
            previous = None;
        }
        if sealed {
            tampered(seq, "record after the sealed session_end");
        }
        match (&previous, &r.record.prev_hash) {
            (None, Some(_)) if seq == 0 => tampered(0, "session_start must not have a prev_hash"),
            (Some(prev), Some(hash)) if *hash != sha256_hex(&prev.raw) => tampered(
                prev.record.seq,
                &format!("its bytes do not hash to seq {seq}'s prev_hash"),
            ),
            (Some(prev), None) => tampered(
                seq,
                &format!("prev_hash is missing (follows seq {})", prev.record.seq),
            ),
            _ => {}
        }
        if seq == 0 && !matches!(r.record.body, RecordBody::SessionStart(_)) {
            tampered(0, "seq 0 is not a session_start");
        }
        if let RecordBody::SessionEnd(end) = &r.record.body {
            match &end.seal {
                None => {}
                Some(seal) => {
                    let mut unsealed = r.record.clone();
                    if let RecordBody::SessionEnd(end) = &mut unsealed.body {
                        end.seal = None;
                    }
                    let bytes = serde_json::to_vec(&unsealed).expect("records always serialize");
                    match check_seal(key, seal, &bytes) {
                        Ok(()) => sealed = true,
                        Err(e) => tampered(seq, &format!("{e:#}")),
                    }
                }
            }
        }
        expected = seq + 1;
        previous = Some(r);
    }
    problems.extend(missing);
    if !sealed {
        problems.push(Problem::Unsealed {
            last_seq: expected.saturating_sub(1),
        });
    }
    // Tampering first, then gaps, then a missing seal: the most serious finding leads.
    problems.sort_by_key(|p| match p {
        Problem::Tampered { .. } => 0,
        Problem::Missing { .. } => 1,
        Problem::Unsealed { .. } | Problem::Unrecorded { .. } => 2,
    });
    SessionVerdict {
        session_id: session_id.to_string(),
        records: by_seq.values().count(),
        problems,
    }
}

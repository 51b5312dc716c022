//! Reading sessions back from the store: summaries for `sessions list`, records for `replay`.
use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
};

use serde::Serialize;
use time::OffsetDateTime;

use super::{
    record::{Direction, Record, RecordBody},
    store::{self, Damage, StoredRecord},
};
use crate::identity::Workload;

fn mcp(record: &Record) -> Option<&super::record::McpMessage> {
    match &record.body {
        RecordBody::McpMessage(m) => Some(m),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub id: String,
    pub node: String,
    pub target: String,
    pub original_dst: String,
    pub client_addr: String,
    #[serde(flatten)]
    pub workload: Workload,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The `session_end` outcome, or `unfinished` while open or after a crash.
    pub outcome: String,
    pub records: u64,
}

/// Records from the file store or the stream, and what could not be read.
pub struct Store {
    pub records: Vec<StoredRecord>,
    pub damage: Vec<String>,
    /// Records known to exist but unreadable: (session id, seq).
    pub damaged: Vec<(String, u64)>,
}

impl Store {
    pub fn open(dir: &Path) -> std::io::Result<Store> {
        Ok(Store::from_read(store::read_all(dir)?))
    }

    /// Only what one session's replay needs: the segments that may hold it.
    pub fn open_session(dir: &Path, session_id: &str) -> std::io::Result<Store> {
        Ok(Store::from_read(store::read_session(dir, session_id)?))
    }

    fn from_read((records, damage): (Vec<StoredRecord>, Vec<Damage>)) -> Store {
        Store {
            records,
            damaged: damage.iter().filter_map(|d| d.record.clone()).collect(),
            damage: damage.iter().map(Damage::to_string).collect(),
        }
    }

    /// One summary per session, oldest first.
    pub fn sessions(&self) -> Vec<SessionSummary> {
        let mut by_id: BTreeMap<&str, SessionSummary> = BTreeMap::new();
        for record in self.intact() {
            match &record.body {
                RecordBody::SessionStart(s) => {
                    by_id.insert(
                        &record.session_id,
                        SessionSummary {
                            id: record.session_id.clone(),
                            node: s.node.clone(),
                            target: s.target.clone(),
                            original_dst: s.original_dst.clone(),
                            client_addr: s.client_addr.clone(),
                            workload: s.workload.clone(),
                            started_at: record.ts,
                            ended_at: None,
                            bytes_up: 0,
                            bytes_down: 0,
                            outcome: "unfinished".into(),
                            records: 1,
                        },
                    );
                }
                RecordBody::Data(chunk) => {
                    if let Some(summary) = by_id.get_mut(record.session_id.as_str()) {
                        summary.records += 1;
                        if summary.ended_at.is_none() {
                            match chunk.direction {
                                Direction::Up => summary.bytes_up += chunk.len,
                                Direction::Down => summary.bytes_down += chunk.len,
                            }
                        }
                    }
                }
                // Reported by `interlock verify`; not a session.
                RecordBody::SpoolGap(_) | RecordBody::RegistrationsAdopted(_) => {}
                RecordBody::HttpRequest(_)
                | RecordBody::HttpResponse(_)
                | RecordBody::KubeRequest(_)
                | RecordBody::KubeResponse(_)
                | RecordBody::KubeChannel(_)
                | RecordBody::KubePortForward(_)
                | RecordBody::McpMessage(_)
                | RecordBody::Masked(_)
                | RecordBody::HoldCreated(_)
                | RecordBody::HoldDecided(_)
                | RecordBody::TokenCheck(_) => {
                    if let Some(summary) = by_id.get_mut(record.session_id.as_str()) {
                        summary.records += 1;
                    }
                }
                RecordBody::SessionEnd(end) => {
                    if let Some(summary) = by_id.get_mut(record.session_id.as_str()) {
                        summary.records += 1;
                        summary.ended_at = Some(record.ts);
                        summary.bytes_up = end.bytes_up;
                        summary.bytes_down = end.bytes_down;
                        summary.outcome = end.outcome.as_str().into();
                    }
                }
            }
        }
        let mut sessions: Vec<_> = by_id.into_values().collect();
        sessions.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        sessions
    }

    /// Records whose CRC matched.
    fn intact(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| r.crc_ok).map(|r| &r.record)
    }

    /// The MCP messages of one `Mcp-Session-Id`, from every connection, in time order. The
    /// `initialize` request goes out before the server assigns the id: a message without one
    /// belongs to the conversation when its connection carries the conversation and its
    /// JSON-RPC id is answered there with the session id.
    pub fn mcp_session_records(&self, mcp_session_id: &str) -> Vec<&Record> {
        let in_session = |r: &&Record| {
            mcp(r).is_some_and(|m| m.mcp_session_id.as_deref() == Some(mcp_session_id))
        };
        let answered: HashSet<(&str, String)> = self
            .intact()
            .filter(in_session)
            .filter_map(|r| {
                let id = mcp(r)?.jsonrpc_id.as_ref()?;
                Some((r.session_id.as_str(), id.to_string()))
            })
            .collect();
        let opens_it = |r: &&Record| {
            mcp(r).is_some_and(|m| {
                m.mcp_session_id.is_none()
                    && m.jsonrpc_id.as_ref().is_some_and(|id| {
                        answered.contains(&(r.session_id.as_str(), id.to_string()))
                    })
            })
        };
        let mut records: Vec<&Record> = self
            .intact()
            .filter(|r| in_session(r) || opens_it(r))
            .collect();
        records.sort_by_key(|r| r.ts);
        records
    }

    /// The records of one session in sequence order.
    pub fn session_records(&self, session_id: &str) -> Vec<&Record> {
        let mut records: Vec<&Record> = self
            .intact()
            .filter(|r| r.session_id == session_id)
            .collect();
        records.sort_by_key(|r| r.seq);
        records
    }
}

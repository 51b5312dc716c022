//! MCP sessions across the node's connections, known by `Mcp-Session-Id`, and the legacy
//! HTTP+SSE streams that answers to other connections' POSTs travel on.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::telemetry::events::{InternalEvent, McpSessionEnded};

/// MCP sessions seen on this node, by `Mcp-Session-Id`. A session ends with DELETE or, since
/// TypeScript clients never send one, after `idle` without traffic.
pub struct McpSessions {
    idle: Duration,
    sessions: Mutex<HashMap<String, Tracked>>,
    /// Legacy HTTP+SSE streams by their POST endpoint (`/message?sessionId=…`): responses to
    /// POSTs travel on the GET stream, so a denial is injected there.
    legacy_streams: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<Value>>>,
}

struct Tracked {
    target: String,
    last_seen: Instant,
}

impl McpSessions {
    pub fn new(idle: Duration) -> Self {
        McpSessions {
            idle,
            sessions: Mutex::new(HashMap::new()),
            legacy_streams: Mutex::new(HashMap::new()),
        }
    }

    pub fn touch(&self, id: &str, target: &str) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        match sessions.get_mut(id) {
            Some(tracked) => tracked.last_seen = Instant::now(),
            None => {
                sessions.insert(
                    id.into(),
                    Tracked {
                        target: target.into(),
                        last_seen: Instant::now(),
                    },
                );
                crate::telemetry::metrics()
                    .mcp_sessions_active
                    .set(sessions.len() as i64);
            }
        }
    }

    pub fn close(&self, id: &str) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if let Some(tracked) = sessions.remove(id) {
            McpSessionEnded {
                id,
                target: &tracked.target,
                how: "deleted",
                active: sessions.len(),
            }
            .emit();
        }
    }

    /// Forgets sessions idle for longer than the limit; returns how many.
    pub fn expire_idle(&self) -> usize {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let expired: Vec<(String, String)> = sessions
            .iter()
            .filter(|(_, t)| t.last_seen.elapsed() > self.idle)
            .map(|(id, t)| (id.clone(), t.target.clone()))
            .collect();
        for (id, target) in &expired {
            sessions.remove(id);
            McpSessionEnded {
                id,
                target,
                how: "idle",
                active: sessions.len(),
            }
            .emit();
        }
        expired.len()
    }

    /// A legacy GET stream announced `endpoint`; messages sent here are written into it.
    pub fn register_legacy_stream(
        &self,
        endpoint: &str,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.legacy_streams
            .lock()
            .expect("streams lock")
            .insert(endpoint.into(), tx);
        rx
    }

    pub fn unregister_legacy_stream(&self, endpoint: &str) {
        self.legacy_streams
            .lock()
            .expect("streams lock")
            .remove(endpoint);
    }

    /// Whether `uri` is the POST endpoint of an open legacy stream.
    pub fn is_legacy_endpoint(&self, uri: &str) -> bool {
        self.legacy_streams
            .lock()
            .expect("streams lock")
            .contains_key(uri)
    }

    /// Sends `message` down the legacy stream whose endpoint is `uri`; false if there is none.
    pub fn inject_legacy(&self, uri: &str, message: Value) -> bool {
        self.legacy_streams
            .lock()
            .expect("streams lock")
            .get(uri)
            .is_some_and(|tx| tx.send(message).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_by_delete_or_idleness() {
        let sessions = McpSessions::new(Duration::from_millis(30));
        sessions.touch("a", "t");
        sessions.touch("b", "t");
        sessions.close("a");
        assert_eq!(sessions.sessions.lock().unwrap().len(), 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(sessions.expire_idle(), 1);
        assert_eq!(sessions.sessions.lock().unwrap().len(), 0);
    }
}

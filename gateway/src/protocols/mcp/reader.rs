//! Reads MCP messages out of answers as they stream: SSE events (on the data path for a GET
//! stream, which may announce a legacy endpoint; on the record writer otherwise) or a JSON
//! body gathered up to the body limit. Answers too large to read are recorded as truncated.
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{
    jsonrpc::{parse_messages, summarize, truncated_answers},
    sessions::McpSessions,
};
use crate::{
    masking::stream::BodyKind,
    protocols::{http::inspect::ResponseReader, l7::Exchange},
    recording::record::{DataChunk, McpMessage, RecordBody},
    sse::SseParser,
    vocabulary::Direction,
};

/// What the reader of an answer knows of the request it answers.
#[derive(Clone)]
pub struct McpAnswering {
    /// The MCP session: the response's, else the request's.
    pub session: Option<String>,
    /// The requests (id, method) the answer answers, for a message too large to read.
    pub answers: Arc<Vec<(Value, Option<String>)>>,
    /// The target's `max_body_bytes`.
    pub limit: usize,
}

/// How a response body is read for MCP messages as it streams.
enum ResponseParse {
    None,
    /// Events read on the data path: a GET stream may announce a legacy endpoint.
    Sse(SseParser),
    /// Events read on the record writer, with each chunk's record: a POST's answer, which
    /// only the record reads.
    SseForRecord(Arc<Mutex<SseParser>>),
    /// A JSON body, gathered up to the body limit and parsed at its end.
    Json(Vec<u8>),
    /// A JSON body over the limit: its size so far. Recorded as truncated at its end.
    JsonTooLarge(u64),
}

pub struct McpReader {
    parse: ResponseParse,
    answering: McpAnswering,
    sessions: Arc<McpSessions>,
    /// Set once a legacy HTTP+SSE stream announces its POST endpoint.
    legacy: Option<(String, UnboundedReceiver<Value>)>,
    /// Gateway messages for the legacy stream, waiting for the next event boundary.
    injected: Vec<Value>,
}

impl McpReader {
    pub fn new(
        sessions: Arc<McpSessions>,
        kind: BodyKind,
        get_stream: bool,
        answering: McpAnswering,
    ) -> Self {
        let limit = answering.limit;
        let parse = match kind {
            BodyKind::Sse if get_stream => ResponseParse::Sse(SseParser::new(limit)),
            BodyKind::Sse => {
                ResponseParse::SseForRecord(Arc::new(Mutex::new(SseParser::new(limit))))
            }
            BodyKind::Json => ResponseParse::Json(Vec::new()),
            BodyKind::JsonLines | BodyKind::Text | BodyKind::Binary => ResponseParse::None,
        };
        McpReader {
            parse,
            answering,
            sessions,
            legacy: None,
            injected: Vec::new(),
        }
    }
}

impl ResponseReader for McpReader {
    async fn on_piece(&mut self, exchange: &Exchange, recorded: Bytes) {
        let session = self.answering.session.as_deref();
        let limit = self.answering.limit;
        if let ResponseParse::SseForRecord(parser) = &self.parse {
            let (parser, session) = (parser.clone(), session.map(str::to_string));
            let answers = self.answering.answers.clone();
            // The chunk and the messages in it, in one handoff.
            exchange
                .log
                .later(move || {
                    let mut parser = parser.lock().unwrap_or_else(PoisonError::into_inner);
                    let events = parser.feed(&recorded);
                    let mut records =
                        vec![RecordBody::Data(DataChunk::new(Direction::Down, recorded))];
                    records.extend(mcp_records(
                        events.iter().map(|event| event.data.as_bytes()),
                        session.as_deref(),
                        "sse",
                    ));
                    for bytes in parser.take_oversized() {
                        let truncated = truncated_answers(
                            &answers,
                            bytes,
                            limit as u64,
                            session.as_deref(),
                            "sse",
                        );
                        records.extend(truncated.into_iter().map(RecordBody::McpMessage));
                    }
                    records
                })
                .await;
            return;
        }
        exchange.log.data(Direction::Down, recorded.clone()).await;
        match &mut self.parse {
            ResponseParse::Sse(parser) => {
                let mut datas = Vec::new();
                for event in parser.feed(&recorded) {
                    if event.event.as_deref() == Some("endpoint") && self.legacy.is_none() {
                        let rx = self.sessions.register_legacy_stream(&event.data);
                        self.legacy = Some((event.data.clone(), rx));
                    }
                    datas.push(event.data.into_bytes());
                }
                let oversized = parser.take_oversized();
                record_mcp_in(exchange, datas, session, "sse").await;
                for bytes in oversized {
                    let truncated = truncated_answers(&[], bytes, limit as u64, session, "sse");
                    record_messages(exchange, truncated).await;
                }
            }
            ResponseParse::Json(buf) if buf.len() + recorded.len() <= limit => {
                buf.extend_from_slice(&recorded)
            }
            ResponseParse::Json(buf) => {
                let seen = (buf.len() + recorded.len()) as u64;
                self.parse = ResponseParse::JsonTooLarge(seen);
            }
            ResponseParse::JsonTooLarge(seen) => *seen += recorded.len() as u64,
            ResponseParse::None | ResponseParse::SseForRecord(_) => {}
        }
    }

    async fn injection(&mut self) {
        let message = match &mut self.legacy {
            Some((_, rx)) => rx.recv().await,
            None => None,
        };
        match message {
            Some(message) => self.injected.push(message),
            // No legacy stream, or nobody left to send into it.
            None => std::future::pending().await,
        }
    }

    /// Queued gateway messages, as SSE events; only between events.
    async fn inject(&mut self, exchange: &Exchange) -> Vec<Bytes> {
        let at_boundary = matches!(&self.parse, ResponseParse::Sse(p) if p.at_boundary());
        if self.injected.is_empty() || !at_boundary {
            return Vec::new();
        }
        let session = self.answering.session.as_deref();
        let mut events = Vec::new();
        for message in self.injected.drain(..) {
            let summary = summarize(&message, Direction::Down, session, "sse");
            exchange.log.record(RecordBody::McpMessage(summary)).await;
            let event = Bytes::from(format!("event: message\ndata: {message}\n\n"));
            exchange.log.data(Direction::Down, event.clone()).await;
            events.push(event);
        }
        events
    }

    async fn finish(self, exchange: &Exchange) {
        if let Some((endpoint, _)) = &self.legacy {
            self.sessions.unregister_legacy_stream(endpoint);
        }
        let session = self.answering.session.as_deref();
        match self.parse {
            ResponseParse::Json(buf) => record_mcp_in(exchange, vec![buf], session, "json").await,
            ResponseParse::JsonTooLarge(bytes) => {
                let truncated = truncated_answers(
                    &self.answering.answers,
                    bytes,
                    self.answering.limit as u64,
                    session,
                    "json",
                );
                record_messages(exchange, truncated).await;
            }
            _ => {}
        }
    }
}

/// Records summaries made on the data path, off it.
async fn record_messages(exchange: &Exchange, messages: Vec<McpMessage>) {
    exchange
        .log
        .later(move || messages.into_iter().map(RecordBody::McpMessage).collect())
        .await;
}

/// Records the MCP messages in parts of an answer (SSE events' data, or a JSON body).
async fn record_mcp_in(
    exchange: &Exchange,
    parts: Vec<Vec<u8>>,
    session: Option<&str>,
    transport: &'static str,
) {
    if parts.is_empty() {
        return;
    }
    let session = session.map(str::to_string);
    exchange
        .log
        .later(move || {
            mcp_records(
                parts.iter().map(Vec::as_slice),
                session.as_deref(),
                transport,
            )
            .collect()
        })
        .await;
}

/// The records of the MCP messages in parts of an answer.
fn mcp_records<'a>(
    parts: impl Iterator<Item = &'a [u8]>,
    session: Option<&str>,
    transport: &str,
) -> impl Iterator<Item = RecordBody> {
    parts
        .flat_map(|part| parse_messages(part).unwrap_or_default())
        .map(move |message| {
            RecordBody::McpMessage(summarize(&message, Direction::Down, session, transport))
        })
}

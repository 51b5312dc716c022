//! JSON-RPC answers the gateway gives in the upstream's place: refusals and parse errors,
//! on the POST itself or, for legacy HTTP+SSE, on the client's GET stream.
use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::Value;

use super::{jsonrpc::summarize, sessions::McpSessions};
use crate::{
    protocols::{
        http::reply::{ProxyBody, generated},
        l7::Exchange,
    },
    recording::record::RecordBody,
    vocabulary::Direction,
};

/// Answers with JSON-RPC (one message or a batch), recorded as the gateway's.
pub async fn generated_json(
    exchange: &Exchange,
    status: StatusCode,
    reply: &Value,
    session: Option<&str>,
) -> Response<ProxyBody> {
    let messages = match reply {
        Value::Array(batch) => batch.clone(),
        single => vec![single.clone()],
    };
    for message in &messages {
        let summary = summarize(message, Direction::Down, session, "json");
        exchange.log.record(RecordBody::McpMessage(summary)).await;
    }
    let body = serde_json::to_vec(reply).expect("JSON values serialize");
    generated(exchange, status, "application/json", body.into()).await
}

/// Legacy HTTP+SSE: answers travel on the client's GET stream, and the POST gets 202. None
/// when `uri` is not a legacy endpoint (or its stream is gone).
pub async fn answer_on_legacy_stream(
    exchange: &Exchange,
    sessions: &McpSessions,
    uri: Option<&str>,
    answers: &[Value],
) -> Option<Response<ProxyBody>> {
    let uri = uri?;
    if !answers
        .iter()
        .all(|a| sessions.inject_legacy(uri, a.clone()))
    {
        return None;
    }
    Some(
        generated(
            exchange,
            StatusCode::ACCEPTED,
            "text/plain",
            Bytes::from_static(b"Accepted"),
        )
        .await,
    )
}

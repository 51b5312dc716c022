//! The MCP inspector: every JSON-RPC message recorded and decided by the policy before it is
//! forwarded; refusals answered in JSON-RPC; holds waiting for a human; answers read for
//! MCP messages as they stream back.
//! - `jsonrpc`: messages and their summaries;
//! - `decide`: the policy's decision on a POST;
//! - `holds`: held requests;
//! - `reader`: MCP messages read out of answers;
//! - `answers`: JSON-RPC answers the gateway gives;
//! - `sessions`: MCP sessions and legacy streams across connections.
pub mod answers;
pub mod decide;
pub mod holds;
pub mod jsonrpc;
pub mod reader;
pub mod sessions;

use std::sync::Arc;

use bytes::Bytes;
use hyper::{
    Response, StatusCode,
    http::{request, response},
};
use serde_json::Value;

use self::{
    answers::{answer_on_legacy_stream, generated_json},
    decide::{McpEvaluation, evaluate, requests_answered},
    holds::HoldDesk,
    jsonrpc::{IDENTITY_REFUSED, POLICY_DENIED, error_response, summarize},
    reader::{McpAnswering, McpReader},
};
use crate::{
    masking::{MaskReport, Masker, stream::BodyKind},
    policy::Policy,
    protocols::{
        http::{
            inspect::{Forward, Inspector, Verdict},
            reply::{ProxyBody, generated, header_str},
            upstream::Upstream,
        },
        l7::{Exchange, Masking},
    },
    recording::record::{McpMessage, RecordBody},
    vocabulary::Direction,
};

pub struct McpInspector {
    /// The policy as it was when the connection opened.
    pub policy: Arc<Policy>,
    pub desk: Arc<HoldDesk>,
}

impl Inspector for McpInspector {
    type Answering = McpAnswering;
    type Reader = McpReader;

    async fn on_request(
        &self,
        exchange: &Arc<Exchange>,
        upstream: &Arc<Upstream>,
        head: &request::Parts,
        body: Bytes,
    ) -> Verdict<McpAnswering> {
        let sessions = &self.desk.sessions;
        // MCP sessions are known by header, not by connection: one session spans many.
        let request_session = header_str(&head.headers, "mcp-session-id").map(str::to_string);
        if let Some(id) = &request_session {
            if head.method == hyper::Method::DELETE {
                sessions.close(id);
            } else {
                sessions.touch(id, &exchange.target.name);
            }
        }
        let mut evaluation = (head.method == hyper::Method::POST)
            .then(|| evaluate(&self.policy, exchange, head, &body));
        let masking = evaluation
            .as_ref()
            .map_or_else(|| exchange.target_masking(), |e| e.masking);
        let body = exchange.log.request_body(body, masking).await;
        let held = evaluation.as_mut().and_then(|e| e.held.take());
        let answering = McpAnswering {
            session: request_session,
            // What the answer answers, should it be too large to read.
            answers: Arc::new(
                evaluation
                    .as_ref()
                    .map(|e| requests_answered(&e.messages))
                    .unwrap_or_default(),
            ),
            limit: exchange.target.max_body_bytes as usize,
        };
        if let Some(evaluation) = evaluation
            && let Some(refusal) = self
                .refuse(
                    exchange,
                    evaluation,
                    masking,
                    answering.session.as_deref(),
                    head.uri.path_and_query().map(|p| p.as_str()),
                )
                .await
        {
            return Verdict::Answer(refusal);
        }
        if let Some(held) = held {
            return self
                .desk
                .hold(exchange, upstream, held, head, body, masking, answering)
                .await;
        }
        Verdict::Forward(Forward {
            body,
            masking,
            answering,
        })
    }

    /// A JSON-RPC error for each request the body holds, so the client's SDK reports the
    /// reason rather than a transport failure.
    async fn refused(
        &self,
        exchange: &Exchange,
        head: &request::Parts,
        body: &Bytes,
        reason: String,
    ) -> Response<ProxyBody> {
        let message = format!("refused by Interlock: {reason}");
        let ids: Vec<Value> = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(batch)) => batch.iter().filter_map(|m| m.get("id").cloned()).collect(),
            Ok(single) => single.get("id").cloned().into_iter().collect(),
            Err(_) => Vec::new(),
        };
        let session = header_str(&head.headers, "mcp-session-id");
        let reply = match ids.len() {
            0 => error_response(&Value::Null, IDENTITY_REFUSED, &message),
            1 => error_response(&ids[0], IDENTITY_REFUSED, &message),
            _ => Value::Array(
                ids.iter()
                    .map(|id| error_response(id, IDENTITY_REFUSED, &message))
                    .collect(),
            ),
        };
        generated_json(exchange, StatusCode::FORBIDDEN, &reply, session).await
    }

    fn on_response(
        &self,
        exchange: &Exchange,
        mut answering: McpAnswering,
        head: &response::Parts,
        kind: BodyKind,
        get_stream: bool,
    ) -> McpReader {
        let sessions = &self.desk.sessions;
        if let Some(id) = header_str(&head.headers, "mcp-session-id") {
            sessions.touch(id, &exchange.target.name);
            answering.session = Some(id.to_string());
        }
        McpReader::new(sessions.clone(), kind, get_stream, answering)
    }
}

impl McpInspector {
    /// Records the request's MCP messages (masked unless `record_raw`); returns the response
    /// to send instead of forwarding, if any.
    async fn refuse(
        &self,
        exchange: &Exchange,
        evaluation: McpEvaluation,
        masking: Masking,
        session: Option<&str>,
        legacy_endpoint: Option<&str>,
    ) -> Option<Response<ProxyBody>> {
        if let Some(error) = evaluation.parse_error {
            let reply = error_response(
                &Value::Null,
                -32700,
                &format!("Parse error: {error} (rejected by Interlock)"),
            );
            return Some(generated_json(exchange, StatusCode::BAD_REQUEST, &reply, session).await);
        }
        let message_count = evaluation.messages.len();
        let (masker, messages) = (exchange.masker().clone(), evaluation.messages);
        let session_id = session.map(str::to_string);
        exchange
            .log
            .later(move || {
                messages
                    .into_iter()
                    .map(|(message, decision)| {
                        let mut summary =
                            summarize(&message, Direction::Up, session_id.as_deref(), "json");
                        summary.policy = decision;
                        if !masking.record_raw {
                            mask_summary(&masker, &mut summary);
                        }
                        RecordBody::McpMessage(summary)
                    })
                    .collect()
            })
            .await;
        let refusals = evaluation.refusals;
        if refusals.is_empty() {
            return None;
        }
        let errors: Vec<Value> = refusals
            .iter()
            .filter_map(|(id, text)| {
                id.as_ref()
                    .map(|id| error_response(id, POLICY_DENIED, text))
            })
            .collect();
        let sessions = &self.desk.sessions;
        if let Some(accepted) =
            answer_on_legacy_stream(exchange, sessions, legacy_endpoint, &errors).await
        {
            return Some(accepted);
        }
        let reply = match (errors.len(), message_count) {
            (_, 1) => errors.into_iter().next().unwrap_or(Value::Null),
            _ => Value::Array(errors),
        };
        if reply.is_null() {
            // Only notifications were refused: nothing to answer but an acceptance.
            let accepted = generated(
                exchange,
                StatusCode::ACCEPTED,
                "application/json",
                Bytes::new(),
            );
            return Some(accepted.await);
        }
        Some(generated_json(exchange, StatusCode::OK, &reply, session).await)
    }
}

/// A request's summary, masked for the record: it was made from the clear-text body.
fn mask_summary(masker: &Masker, summary: &mut McpMessage) {
    let mut report = MaskReport::default();
    for value in [
        &mut summary.arguments,
        &mut summary.result,
        &mut summary.error,
    ]
    .into_iter()
    .flatten()
    {
        masker.mask_value(value, &mut report);
    }
    for text in [&mut summary.resource_uri, &mut summary.prompt]
        .into_iter()
        .flatten()
    {
        masker.mask_string(text, &mut report);
    }
}

//! The policy's decision on an MCP POST: every message in it decided, the masking that
//! applies, what is refused and what is held, before anything is recorded or forwarded.
use bytes::Bytes;
use hyper::http::request::Parts;
use serde_json::Value;

use super::jsonrpc::{Fields, JsonRpcError, parse_messages};
use crate::{
    identity::Principal,
    policy::{Action, Decision, Operation, Policy, Request},
    protocols::{
        http::reply::header_str,
        l7::{Exchange, Masking, hold},
    },
};

/// An MCP POST body read and decided, before anything is recorded or forwarded.
pub struct McpEvaluation {
    /// Why the body is not JSON-RPC, when it is not.
    pub parse_error: Option<JsonRpcError>,
    /// The request's messages, with the policy's decision on each that has a method. Their
    /// summaries are made on the record writer, off the data path.
    pub messages: Vec<(Value, Option<Decision>)>,
    /// (JSON-RPC id, refusal text) of every message that must not go through.
    pub refusals: Vec<(Option<Value>, String)>,
    /// The target's masking, or the first matching rule's override.
    pub masking: Masking,
    /// The message a `hold` rule matched; the whole request waits on it.
    pub held: Option<HeldCall>,
}

/// A request message that waits for approval.
pub struct HeldCall {
    pub id: Value,
    pub method: String,
    pub tool: Option<String>,
    pub arguments: Option<Value>,
    pub decision: Decision,
}

pub fn evaluate(policy: &Policy, exchange: &Exchange, head: &Parts, body: &Bytes) -> McpEvaluation {
    let headers = &head.headers;
    let mut evaluation = McpEvaluation {
        parse_error: None,
        messages: Vec::new(),
        refusals: Vec::new(),
        masking: exchange.target_masking(),
        held: None,
    };
    let messages = match parse_messages(body) {
        Ok(messages) => messages,
        Err(e) => {
            evaluation.parse_error = Some(e);
            return evaluation;
        }
    };
    let header_method = header_str(headers, "mcp-method");
    let header_name = header_str(headers, "mcp-name");
    let mut overridden = false;
    let count = messages.len();
    for message in messages {
        let fields = Fields::of(&message);
        let Some(method) = fields.method else {
            evaluation.messages.push((message, None));
            continue;
        };
        let decision = match mismatch(header_method, header_name, method, fields.name(), count) {
            Some(reason) => Decision {
                action: Action::Deny,
                rule: Some("header-body-mismatch".into()),
                reason: Some(reason),
                timeout: None,
                mask: None,
                record_raw: None,
            },
            None => policy.decide(&Request {
                target: &exchange.target.name,
                workload: &exchange.workload,
                caller: head.extensions.get::<Principal>(),
                operation: Operation::Mcp {
                    method,
                    tool: fields.tool,
                    arguments: fields.arguments,
                },
            }),
        };
        if !overridden && (decision.mask.is_some() || decision.record_raw.is_some()) {
            overridden = true;
            evaluation.masking = Masking {
                apply: decision.mask.unwrap_or(evaluation.masking.apply),
                record_raw: decision.record_raw.unwrap_or(evaluation.masking.record_raw),
            };
        }
        match decision.action {
            Action::Allow => {}
            Action::Deny => evaluation
                .refusals
                .push((fields.id.cloned(), hold::rule_text(&decision))),
            // One hold per request: a second held message in a batch waits with the first.
            Action::Hold if evaluation.held.is_none() => {
                evaluation.held = Some(HeldCall {
                    id: fields.id.cloned().unwrap_or(Value::Null),
                    method: method.to_string(),
                    tool: fields.tool.map(str::to_string),
                    arguments: fields.arguments.cloned(),
                    decision: decision.clone(),
                })
            }
            Action::Hold => {}
        }
        evaluation.messages.push((message, Some(decision)));
    }
    // A batch with a denied message is refused whole; its held message is not worth a wait.
    if !evaluation.refusals.is_empty()
        && let Some(held) = evaluation.held.take()
    {
        evaluation.refusals.push((
            Some(held.id),
            format!(
                "{} (and another message in the same batch was denied)",
                hold::rule_text(&held.decision)
            ),
        ));
    }
    evaluation
}

/// The requests (id and method) among a POST's messages: what its answer answers.
pub fn requests_answered(messages: &[(Value, Option<Decision>)]) -> Vec<(Value, Option<String>)> {
    messages
        .iter()
        .filter_map(|(message, _)| {
            let fields = Fields::of(message);
            Some((fields.id?.clone(), Some(fields.method?.to_string())))
        })
        .collect()
}

/// Stateless MCP puts the method and name in headers too; they must agree with the body.
fn mismatch(
    header_method: Option<&str>,
    header_name: Option<&str>,
    method: &str,
    name: Option<&str>,
    messages: usize,
) -> Option<String> {
    if messages != 1 {
        return None;
    }
    if let Some(h) = header_method
        && h != method
    {
        return Some(format!(
            "mcp-method header says `{h}` but the body calls `{method}`"
        ));
    }
    if let (Some(h), Some(n)) = (header_name, name)
        && h != n
    {
        return Some(format!(
            "mcp-name header says `{h}` but the body names `{n}`"
        ));
    }
    None
}

//! MCP messages: JSON-RPC 2.0, single or batched, summarised for the record and the policy.
use serde_json::{Value, json};

use crate::{
    recording::record::{McpMessage, Truncated},
    vocabulary::Direction,
};

/// Why a body is not JSON-RPC; the text goes back to the client in a parse error.
#[derive(Debug, thiserror::Error)]
pub enum JsonRpcError {
    #[error("empty JSON-RPC batch")]
    EmptyBatch,
    #[error("body is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("JSON-RPC message is not an object")]
    NotAnObject,
    #[error("JSON-RPC message lacks \"jsonrpc\": \"2.0\"")]
    NoVersion,
    #[error("JSON-RPC message has neither a method nor a result or error")]
    NeitherMethodNorResult,
}

/// The messages of a JSON-RPC body (a single object or a batch array).
pub fn parse_messages(body: &[u8]) -> Result<Vec<Value>, JsonRpcError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(batch)) if batch.is_empty() => Err(JsonRpcError::EmptyBatch),
        Ok(Value::Array(batch)) => {
            batch.iter().try_for_each(check)?;
            Ok(batch)
        }
        Ok(single) => {
            check(&single)?;
            Ok(vec![single])
        }
        Err(e) => Err(JsonRpcError::NotJson(e)),
    }
}

fn check(message: &Value) -> Result<(), JsonRpcError> {
    let object = message.as_object().ok_or(JsonRpcError::NotAnObject)?;
    if object.get("jsonrpc") != Some(&Value::from("2.0")) {
        return Err(JsonRpcError::NoVersion);
    }
    let has_method = object.get("method").is_some_and(Value::is_string);
    let is_response = object.contains_key("result") || object.contains_key("error");
    if !has_method && !is_response {
        return Err(JsonRpcError::NeitherMethodNorResult);
    }
    Ok(())
}

/// What the policy and the record read from one message, borrowed from it.
pub struct Fields<'a> {
    pub method: Option<&'a str>,
    pub id: Option<&'a Value>,
    pub tool: Option<&'a str>,
    pub arguments: Option<&'a Value>,
    pub resource_uri: Option<&'a str>,
    pub prompt: Option<&'a str>,
}

impl<'a> Fields<'a> {
    pub fn of(message: &'a Value) -> Self {
        let method = message.get("method").and_then(Value::as_str);
        let params = message.get("params");
        let param = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_str);
        let is = |m: &str| method == Some(m);
        Fields {
            method,
            id: message.get("id"),
            tool: is("tools/call").then(|| param("name")).flatten(),
            arguments: (is("tools/call") || is("prompts/get"))
                .then(|| params.and_then(|p| p.get("arguments")))
                .flatten(),
            resource_uri: method
                .filter(|m| m.starts_with("resources/"))
                .and(param("uri")),
            prompt: is("prompts/get").then(|| param("name")).flatten(),
        }
    }

    /// The tool, prompt or resource the message names.
    pub fn name(&self) -> Option<&'a str> {
        self.tool.or(self.prompt).or(self.resource_uri)
    }
}

/// The record of one message.
pub fn summarize(
    message: &Value,
    direction: Direction,
    mcp_session_id: Option<&str>,
    transport: &str,
) -> McpMessage {
    let fields = Fields::of(message);
    let message_kind = match (fields.method, fields.id, message.get("error")) {
        (Some(_), Some(_), _) => "request",
        (Some(_), None, _) => "notification",
        (None, _, Some(_)) => "error",
        (None, _, None) => "response",
    };
    McpMessage {
        direction,
        mcp_session_id: mcp_session_id.map(str::to_string),
        message_kind: message_kind.into(),
        jsonrpc_id: fields.id.cloned(),
        tool: fields.tool.map(str::to_string),
        arguments: fields.arguments.cloned(),
        resource_uri: fields.resource_uri.map(str::to_string),
        prompt: fields.prompt.map(str::to_string),
        result: message.get("result").cloned(),
        error: message.get("error").cloned(),
        method: fields.method.map(str::to_string),
        transport: transport.into(),
        policy: None,
        truncated: None,
    }
}

/// The records of answers too large to read: one for each request they answer (id and
/// method), or one without an id when no request is known (a GET stream).
pub fn truncated_answers(
    answers: &[(Value, Option<String>)],
    bytes: u64,
    limit: u64,
    mcp_session_id: Option<&str>,
    transport: &str,
) -> Vec<McpMessage> {
    let unknown = [(Value::Null, None)];
    let answered = if answers.is_empty() {
        &unknown[..]
    } else {
        answers
    };
    answered
        .iter()
        .map(|(id, method)| McpMessage {
            direction: Direction::Down,
            mcp_session_id: mcp_session_id.map(str::to_string),
            message_kind: if id.is_null() { "unknown" } else { "response" }.into(),
            jsonrpc_id: (!id.is_null()).then(|| id.clone()),
            method: method.clone(),
            tool: None,
            arguments: None,
            resource_uri: None,
            prompt: None,
            result: None,
            error: None,
            transport: transport.into(),
            policy: None,
            truncated: Some(Truncated { bytes, limit }),
        })
        .collect()
}

/// A JSON-RPC error response the gateway sends itself.
pub fn error_response(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// JSON-RPC code for requests refused by policy (implementation-defined server error range).
pub const POLICY_DENIED: i64 = -32001;

/// JSON-RPC code for requests whose bearer token is not the connecting pod's.
pub const IDENTITY_REFUSED: i64 = -32002;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_batch_and_bad_messages() {
        let call = br#"{"jsonrpc":"2.0","id":0,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;
        let m = parse_messages(call).unwrap();
        let s = summarize(&m[0], Direction::Up, Some("s1"), "json");
        assert_eq!(s.message_kind, "request");
        assert_eq!(s.jsonrpc_id, Some(json!(0)), "id 0 is a valid id");
        assert_eq!(s.tool.as_deref(), Some("echo"));
        assert_eq!(s.arguments, Some(json!({"message": "hi"})));
        let batch = br#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":3,"result":{}}]"#;
        let m = parse_messages(batch).unwrap();
        assert_eq!(
            summarize(&m[0], Direction::Up, None, "json").message_kind,
            "notification"
        );
        assert_eq!(
            summarize(&m[1], Direction::Up, None, "json").message_kind,
            "response"
        );
        assert!(
            parse_messages(b"{\"id\":1}")
                .unwrap_err()
                .to_string()
                .contains("jsonrpc")
        );
        assert!(parse_messages(b"[]").is_err());
        assert!(
            parse_messages(b"not json")
                .unwrap_err()
                .to_string()
                .contains("not JSON")
        );
    }
}

//! The session record schema, version 1. Documented in docs/records.md; change both together.
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use super::chain::Seal;
pub use crate::identity::Principal;
pub use crate::vocabulary::{Direction, HoldOutcome, Outcome};
use crate::{
    identity::Workload,
    kubernetes::request_info::{Impersonation, RequestInfo},
};

/// 2 added the `kubernetes` pod identity to the workload (node mode); 3 added `kube_request`
/// and `kube_response` (the API-server path) and a hold's `kube`; 4 added `kube_port_forward`
/// and a `kube_request`'s `ports`. Readers take 1 to 4.
pub const SCHEMA_VERSION: u32 = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub schema_version: u32,
    /// `<session_id>:<seq>`: stable, so consumers can deduplicate.
    pub record_id: String,
    pub session_id: String,
    /// 0 for `session_start`, then one more per record of the session.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    /// SHA-256 (hex) of the previous record of this session, exactly as written; null for
    /// seq 0.
    pub prev_hash: Option<String>,
    #[serde(flatten)]
    pub body: RecordBody,
}

impl Record {
    pub fn new(
        session_id: &str,
        seq: u64,
        ts: OffsetDateTime,
        prev_hash: Option<String>,
        body: RecordBody,
    ) -> Self {
        Record {
            schema_version: SCHEMA_VERSION,
            record_id: format!("{session_id}:{seq}"),
            session_id: session_id.to_string(),
            seq,
            ts,
            prev_hash,
            body,
        }
    }
}

/// Writes a record whose body was serialized beforehand (off the writer thread). The bytes are
/// exactly those `serde_json::to_vec(&Record)` gives: the common fields, then the body's.
pub fn write_with_encoded_body(
    out: &mut Vec<u8>,
    session_id: &str,
    seq: u64,
    ts: OffsetDateTime,
    prev_hash: Option<&str>,
    body_json: &[u8],
) {
    #[derive(Serialize)]
    struct Header<'a> {
        schema_version: u32,
        record_id: String,
        session_id: &'a str,
        seq: u64,
        #[serde(with = "time::serde::rfc3339")]
        ts: OffsetDateTime,
        prev_hash: Option<&'a str>,
    }
    let header = Header {
        schema_version: SCHEMA_VERSION,
        record_id: format!("{session_id}:{seq}"),
        session_id,
        seq,
        ts,
        prev_hash,
    };
    serde_json::to_writer(&mut *out, &header).expect("headers always serialize");
    // `{...header}` + `,` + `"kind":...}`: one object, fields in Record's order.
    out.pop();
    out.push(b',');
    out.extend_from_slice(&body_json[1..]);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordBody {
    SessionStart(SessionStart),
    Data(DataChunk),
    SessionEnd(SessionEnd),
    /// An HTTP request head (`http` and `mcp` targets); its body follows as `data` up.
    HttpRequest(HttpRequestHead),
    /// An HTTP response head; its body follows as `data` down.
    HttpResponse(HttpResponseHead),
    /// One JSON-RPC message of an MCP exchange, single or out of a batch or SSE stream.
    McpMessage(McpMessage),
    /// Secrets were masked in a body: which detectors fired and how often, never the values.
    Masked(MaskedBody),
    /// Sessions that were let through unrecorded (`when_full: fail_open`), written as soon as
    /// the spool has room again. Its session id is `spool-gap-<uuid>`.
    SpoolGap(UnrecordedGap),
    /// A gateway started and took over the live registrations of the one before it: their
    /// sessions open then were cut, and their next connections are intercepted. Its session
    /// id is `gateway-start-<uuid>`.
    RegistrationsAdopted(RegistrationsAdopted),
    /// A request held for a human decision: what waits, for whom, and until when.
    HoldCreated(Hold),
    /// How a hold ended: approved or denied (by whom, why), timed out, or interrupted.
    HoldDecided(HoldDecision),
    /// A request's bearer token checked against the pod the kernel attests (node mode).
    TokenCheck(TokenCheck),
    /// An API-server request (`kubernetes` targets), read as the API server reads it; its
    /// head and body are in the `http_request` and `data` records beside it.
    KubeRequest(KubeRequest),
    /// The answer to a `kube_request`, once its body has ended (a watch's, when it closes).
    KubeResponse(KubeResponse),
    /// One message of an exec or attach stream, by channel, masked like any body.
    KubeChannel(KubeChannelData),
    /// One event of a port-forward stream: a connection to a pod's port opened, bytes either
    /// way (masked in the record), its end.
    KubePortForward(KubePortForward),
}

/// The channels of the Kubernetes streaming protocols (`v4.channel.k8s.io`,
/// `v5.channel.k8s.io`): the first byte of every binary message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KubeChannel {
    Stdin,
    Stdout,
    Stderr,
    /// The closing `Status`, with the exit code.
    Error,
    /// A terminal size, `{"Width":…,"Height":…}`.
    Resize,
    /// v5: the sender closed the channel its one byte of `data` names.
    Close,
    /// A channel number the protocols do not define.
    Other(u8),
}

impl KubeChannel {
    pub fn of(byte: u8) -> KubeChannel {
        match byte {
            0 => KubeChannel::Stdin,
            1 => KubeChannel::Stdout,
            2 => KubeChannel::Stderr,
            3 => KubeChannel::Error,
            4 => KubeChannel::Resize,
            255 => KubeChannel::Close,
            other => KubeChannel::Other(other),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeChannelData {
    /// The `kube_request` that opened the stream.
    pub stream: u64,
    pub channel: KubeChannel,
    /// The message without its channel byte, base64-encoded; masked unless `record_raw`.
    #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
    pub data: Bytes,
}

/// The two streams of one forwarded connection: its bytes, and the errors the kubelet reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortForwardChannel {
    Data,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortForwardEvent {
    /// The client opened the stream (SPDY); `data` is empty.
    Opened,
    Data,
    /// The sender in `direction` sent its last byte.
    Closed,
    /// The stream was reset (SPDY RST_STREAM); `data` is empty.
    Reset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubePortForward {
    /// The `kube_request` that opened the port-forward.
    pub stream: u64,
    /// The pod's port.
    pub port: u16,
    /// Which forwarded connection: kubectl's `requestID`, or over WebSocket the port's index.
    pub connection: u64,
    pub channel: PortForwardChannel,
    /// Up: toward the pod.
    pub direction: Direction,
    pub event: PortForwardEvent,
    /// The bytes, base64-encoded; masked unless `record_raw`. The wire carries them unchanged.
    #[serde(
        default,
        serialize_with = "to_base64",
        deserialize_with = "from_base64",
        skip_serializing_if = "Bytes::is_empty"
    )]
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeRequest {
    /// Pairs the request with its `kube_response`: HTTP/2 answers interleave.
    pub stream: u64,
    #[serde(flatten)]
    pub info: RequestInfo,
    /// Who the request's verified bearer token names; none without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Principal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonate: Option<Impersonation>,
    /// The protocol asked for in `Upgrade` (exec, attach, port-forward).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<String>,
    pub policy: crate::policy::Decision,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeResponse {
    pub stream: u64,
    pub code: u16,
    /// The gateway answered (a denial, a refused token, an upstream that failed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generated_by_gateway: bool,
    /// The object answered, from its `kind` and `metadata` (`kind` names the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// A list's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<u64>,
    /// A watch's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// A `Status` answer's reason and message (masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A 101's protocol: the WebSocket subprotocol, or the `Upgrade` (SPDY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_to: Option<String>,
    /// The upgraded stream is relayed and recorded as bytes, not read (the `base64.` protocols).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unparsed: bool,
    /// From the request to the response head.
    pub latency_ms: f64,
}

/// What a request's service-account token proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenOutcome {
    /// A bound token of the very pod the connection comes from.
    Verified,
    /// A valid token from a trusted OIDC issuer (`identity.oidc`).
    OidcVerified,
    /// A legacy token of the pod's own service account, let through (`legacy_tokens`).
    LegacyAllowed,
    LegacyFlagged,
    LegacyRefused,
    /// A valid token of another pod or service account: replayed, and refused.
    IdentityMismatch,
    /// Expired, wrong audience or issuer, bad signature, unknown key. An OIDC token is
    /// refused for it only where the target requires one.
    Rejected,
    /// The target requires a token (bound, or OIDC) and the request had none.
    Missing,
    /// The cluster's or the OIDC issuer's keys could not be fetched, so nothing could be
    /// verified.
    KeysUnavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCheck {
    pub outcome: TokenOutcome,
    /// Whether the request went on.
    pub allowed: bool,
    /// Who the token says the caller is, when it verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<crate::tokens::TokenIdentity>,
    /// Who the caller is as policy sees it (`subject`, `group`): a verified OIDC token's
    /// subject and groups, or a service-account token's subject and the groups the API
    /// server gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
    /// Who the kernel and the API server say the caller is (the session's workload has the
    /// rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attested: Option<AttestedPod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedPod {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub pod_uid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStart {
    pub node: String,
    pub target: String,
    pub protocol: String,
    /// The address the client dialled, as "ip:port".
    pub original_dst: String,
    /// The client's source address as the proxy saw it.
    pub client_addr: String,
    #[serde(flatten)]
    pub workload: Workload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataChunk {
    pub direction: Direction,
    /// Offset of the first byte of this chunk within its direction's stream.
    pub offset: u64,
    pub len: u64,
    /// The bytes, base64-encoded (standard alphabet, padded).
    #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
    pub data: Bytes,
}

impl DataChunk {
    /// A chunk whose offset the record writer sets, in the order chunks reach it.
    pub fn new(direction: Direction, data: Bytes) -> DataChunk {
        DataChunk {
            direction,
            offset: 0,
            len: data.len() as u64,
            data,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEnd {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub outcome: Outcome,
    /// What went wrong, for outcomes other than `closed`.
    pub error: Option<String>,
    /// Signature over this record written without `seal`; see `chain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Seal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequestHead {
    pub method: String,
    pub uri: String,
    pub version: String,
    /// Header names and values; credentials (Authorization, Cookie) are redacted.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Set when the gateway answered itself (policy denial, oversized body, dead upstream).
    pub generated_by_gateway: bool,
}

/// A held request, as recorded and as the approval API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub hold_id: String,
    /// The held request's session (`interlock replay` it). Not `session_id`: as a record,
    /// the hold's fields share one object with the record header's.
    pub in_session: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub target: String,
    #[serde(flatten)]
    pub workload: Workload,
    /// Who the workload's own bearer token names, if it sent one (not verified here; used
    /// to refuse self-approval).
    pub requester: Option<Principal>,
    pub method: String,
    pub tool: Option<String>,
    /// Masked unless the rule keeps raw records.
    pub arguments: Option<serde_json::Value>,
    pub rule: Option<String>,
    pub reason: Option<String>,
    /// A held API-server request: what it would do. Boxed: most holds are MCP calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<Box<RequestInfo>>,
}

/// Sessions that were not recorded, reported in a `spool_gap` record once space returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnrecordedGap {
    pub sessions: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub first: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldDecision {
    pub hold_id: String,
    pub outcome: HoldOutcome,
    /// The verified approver, for approve and deny.
    pub approver: Option<Principal>,
    pub reason: Option<String>,
    pub waited_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrationsAdopted {
    pub node: String,
    /// The adopted cgroups: (cgroup id, path).
    pub cgroups: Vec<(u64, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskedBody {
    pub direction: Direction,
    /// Detector name → secrets masked.
    pub detectors: crate::masking::MaskReport,
    /// Whether the receiving peer got the masked body too, or only the record did.
    pub peer_saw_masked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpMessage {
    pub direction: Direction,
    /// The `Mcp-Session-Id` the message belongs to, if the server assigned one.
    pub mcp_session_id: Option<String>,
    /// `request`, `notification`, `response` or `error`.
    pub message_kind: String,
    /// The JSON-RPC id (0 is valid); absent for notifications.
    pub jsonrpc_id: Option<serde_json::Value>,
    pub method: Option<String>,
    /// `tools/call`: the tool name and its arguments.
    pub tool: Option<String>,
    pub arguments: Option<serde_json::Value>,
    /// `resources/*`: the resource URI; `prompts/get`: the prompt name.
    pub resource_uri: Option<String>,
    pub prompt: Option<String>,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    /// How it travelled: `json` body or `sse` event.
    pub transport: String,
    /// The policy decision, for client requests.
    pub policy: Option<crate::policy::Decision>,
    /// Set when the message was too large to read as JSON-RPC (over the target's
    /// `max_body_bytes`). Its id, and as `method` the method of the request it answers, then
    /// come from that request; its bytes are in the session's data records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncated>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truncated {
    /// The message's size.
    pub bytes: u64,
    /// The limit it went over.
    pub limit: u64,
}

fn to_base64<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    // Streams the encoding into the serializer: no intermediate String per chunk.
    s.collect_str(&base64::display::Base64Display::new(data, &BASE64))
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    BASE64
        .decode(text.as_bytes())
        .map(Bytes::from)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_bodies_give_the_same_bytes_as_whole_records() {
        let ts = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let bodies = [
            RecordBody::Data(DataChunk {
                direction: Direction::Down,
                offset: 7,
                len: 2,
                data: Bytes::from_static(b"\xff\""),
            }),
            RecordBody::HttpRequest(HttpRequestHead {
                method: "POST".into(),
                uri: "/mcp?x=\"y\"".into(),
                version: "HTTP/1.1".into(),
                headers: vec![("host".into(), "a".into())],
            }),
            // Body fields share the object with the header's: none may repeat a header key.
            RecordBody::HoldCreated(Hold {
                hold_id: "h".into(),
                in_session: "sess".into(),
                created_at: ts,
                expires_at: ts,
                target: "t".into(),
                workload: Workload {
                    cgroup_id: 7,
                    cgroup: Some("/c".into()),
                    pid: 1,
                    process: "p".into(),
                    cmdline: vec!["p".into()],
                    pod: None,
                    kubernetes: None,
                },
                requester: None,
                method: "tools/call".into(),
                tool: Some("x".into()),
                arguments: Some(serde_json::json!({"a": 1})),
                rule: Some("r".into()),
                reason: None,
                kube: None,
            }),
            RecordBody::KubeRequest(KubeRequest {
                stream: 3,
                info: crate::kubernetes::request_info::parse(
                    &hyper::Method::DELETE,
                    &"/api/v1/namespaces/team".parse().unwrap(),
                ),
                user: None,
                impersonate: Some(Impersonation {
                    user: Some("jane".into()),
                    ..Impersonation::default()
                }),
                upgrade: None,
                policy: crate::policy::Decision {
                    action: crate::policy::Action::Hold,
                    rule: Some("r".into()),
                    reason: None,
                    timeout: None,
                    mask: None,
                    record_raw: None,
                },
            }),
            RecordBody::KubeResponse(KubeResponse {
                stream: 3,
                code: 200,
                generated_by_gateway: false,
                object_kind: Some("Namespace".into()),
                namespace: None,
                name: Some("team".into()),
                resource_version: Some("12".into()),
                items: None,
                events: None,
                reason: None,
                message: None,
                upgraded_to: None,
                unparsed: false,
                latency_ms: 1.5,
            }),
            RecordBody::KubeChannel(KubeChannelData {
                stream: 3,
                channel: KubeChannel::of(1),
                data: Bytes::from_static(b"total 0\n"),
            }),
            RecordBody::KubeChannel(KubeChannelData {
                stream: 3,
                channel: KubeChannel::of(9),
                data: Bytes::new(),
            }),
            RecordBody::KubePortForward(KubePortForward {
                stream: 5,
                port: 8080,
                connection: 2,
                channel: PortForwardChannel::Data,
                direction: Direction::Up,
                event: PortForwardEvent::Data,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\n"),
            }),
            RecordBody::KubePortForward(KubePortForward {
                stream: 5,
                port: 8080,
                connection: 2,
                channel: PortForwardChannel::Error,
                direction: Direction::Down,
                event: PortForwardEvent::Reset,
                data: Bytes::new(),
            }),
            RecordBody::HoldDecided(HoldDecision {
                hold_id: "h".into(),
                outcome: HoldOutcome::Approved,
                approver: Some(Principal {
                    issuer: Some("https://idp".into()),
                    subject: Some("bob".into()),
                    email: None,
                    groups: vec!["sre".into()],
                }),
                reason: Some("ok".into()),
                waited_ms: 5,
            }),
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            for prev in [None, Some("ab".to_string())] {
                let record = Record::new("sess", i as u64, ts, prev.clone(), body.clone());
                let mut out = Vec::new();
                let body_json = serde_json::to_vec(&body).unwrap();
                write_with_encoded_body(
                    &mut out,
                    "sess",
                    i as u64,
                    ts,
                    prev.as_deref(),
                    &body_json,
                );
                assert_eq!(
                    String::from_utf8(out.clone()).unwrap(),
                    serde_json::to_string(&record).unwrap()
                );
                let read_back: Record = serde_json::from_slice(&out).unwrap();
                assert_eq!(read_back, record);
            }
        }
    }

    #[test]
    fn records_round_trip_through_json_with_kind_tag() {
        let ts = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let chunk = Record::new(
            "s1",
            1,
            ts,
            Some("ab".into()),
            RecordBody::Data(DataChunk {
                direction: Direction::Up,
                offset: 0,
                len: 3,
                data: Bytes::from_static(b"\x00hi"),
            }),
        );
        let json = serde_json::to_value(&chunk).unwrap();
        assert_eq!(json["kind"], "data");
        assert_eq!(json["record_id"], "s1:1");
        assert_eq!(json["data"], "AGhp");
        assert_eq!(json["schema_version"], 4);
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, chunk);
    }

    #[test]
    fn a_version_1_session_start_still_reads() {
        let v1 = r#"{"schema_version":1,"record_id":"s:0","session_id":"s","seq":0,"ts":"2026-11-21T06:45:50.16528537Z","prev_hash":null,"kind":"session_start","node":"vm","target":"demo","protocol":"tcp","original_dst":"127.0.0.1:18080","client_addr":"127.0.0.1:55896","cgroup_id":25,"cgroup":"/w","pid":12504,"process":"curl","cmdline":["curl"]}"#;
        let record: Record = serde_json::from_str(v1).unwrap();
        assert_eq!(record.schema_version, 1);
        let RecordBody::SessionStart(start) = record.body else {
            panic!("not a session_start: {record:?}");
        };
        assert_eq!(
            (start.workload.process.as_str(), start.workload.kubernetes),
            ("curl", None)
        );
    }
}

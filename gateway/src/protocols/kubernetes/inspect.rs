//! The API-server inspector: each request read as the API server reads it, decided by the
//! policy and recorded as a `kube_request`; its answer summed up in a `kube_response` once the
//! body ends. Denials and refused holds are answered with a Forbidden `Status`, which kubectl
//! prints as `Error from server (Forbidden): …`.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    HeaderMap, Response, StatusCode,
    header::{self, HeaderValue},
    http::{request, response},
    upgrade::OnUpgrade,
};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::{Value, json};

use super::{
    channels::{self, CHANNEL_PROTOCOLS, Reading, SPDY_TUNNEL},
    spdy::{self, relay::SpdyTap},
};

use crate::{
    approvals::Approvals,
    identity::Principal,
    kubernetes::request_info::{self, Impersonation, RequestInfo},
    masking::{MaskReport, stream::BodyKind},
    policy::{Action, Decision, Operation, Policy, Request},
    protocols::{
        http::{
            inspect::{Forward, Inspector, ResponseReader, Verdict},
            reply::{ProxyBody, generated, header_str},
            tunnel,
            upstream::Upstream,
        },
        l7::{
            Exchange, Masking, Pump,
            hold::{self, HeldOperation},
        },
    },
    recording::record::{KubeRequest, KubeResponse, RecordBody},
    vocabulary::{Direction, HoldOutcome},
};

/// The media type of protobuf-encoded Kubernetes objects, which nothing here can read.
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

pub struct KubeInspector {
    /// The policy as it was when the connection opened.
    pub policy: Arc<Policy>,
    pub approvals: Arc<Approvals>,
    /// Numbers this connection's requests, to pair each with its answer.
    streams: AtomicU64,
    /// The client's TLS carried a certificate: every request is refused.
    client_certificate: bool,
}

impl KubeInspector {
    pub fn new(policy: Arc<Policy>, approvals: Arc<Approvals>) -> Self {
        KubeInspector {
            policy,
            approvals,
            streams: AtomicU64::new(0),
            client_certificate: false,
        }
    }

    /// For a client that authenticated with a certificate.
    pub fn refusing_client_certificates(self, client_certificate: bool) -> Self {
        KubeInspector {
            client_certificate,
            ..self
        }
    }

    /// The policy's decision, unless a client certificate refuses the request first.
    fn decide(&self, request: &Request) -> Decision {
        if !self.client_certificate {
            return self.policy.decide(request);
        }
        Decision {
            action: Action::Deny,
            rule: Some(CLIENT_CERTIFICATE_RULE.into()),
            reason: Some(
                "this connection authenticates with a client certificate, which cannot reach the API server through Interlock's TLS termination; authenticate with a bearer token instead (the pod's service-account token, or an exec credential plugin)"
                    .into(),
            ),
            timeout: None,
            mask: None,
            record_raw: None,
        }
    }
}

/// The built-in rule that refuses requests of a client that sent a certificate.
const CLIENT_CERTIFICATE_RULE: &str = "client-certificate";
/// The built-in rule that refuses a request whose bearer token is not the pod's own.
const TOKEN_BINDING_RULE: &str = "token-binding";

/// What the gateway keeps of a forwarded request, to sum up its answer.
pub struct KubeAnswering {
    stream: u64,
    started: Instant,
    watch: bool,
    /// port-forward: its ports, by which its channels are read.
    ports: Option<Vec<u16>>,
    /// For an exec or attach stream, which is masked message by message.
    masking: Masking,
}

impl Inspector for KubeInspector {
    type Answering = KubeAnswering;
    type Reader = KubeReader;

    fn prepare(&self, head: &mut request::Parts) {
        ask_for_json(&mut head.headers);
    }

    async fn on_request(
        &self,
        exchange: &Arc<Exchange>,
        _upstream: &Arc<Upstream>,
        head: &request::Parts,
        body: Bytes,
    ) -> Verdict<KubeAnswering> {
        let (stream, started) = (self.streams.fetch_add(1, Ordering::Relaxed), Instant::now());
        let info = request_info::parse(&head.method, &head.uri);
        let impersonate = Impersonation::of(&head.headers);
        let upgrade = header_str(&head.headers, "upgrade");
        let caller = head.extensions.get::<Principal>();
        let decision = self.decide(&Request {
            target: &exchange.target.name,
            workload: &exchange.workload,
            caller,
            operation: Operation::Kube {
                info: &info,
                impersonate: impersonate.as_ref(),
                upgrade,
            },
        });
        let target = exchange.target_masking();
        let masking = Masking {
            apply: decision.mask.unwrap_or(target.apply),
            record_raw: decision.record_raw.unwrap_or(target.record_raw),
        };
        let answering = KubeAnswering {
            stream,
            started,
            watch: info.verb == "watch",
            ports: (info.subresource.as_deref() == Some("portforward")).then(|| info.ports.clone()),
            masking,
        };
        let recorded = recordable(exchange, &info, masking);
        let request = KubeRequest {
            stream: answering.stream,
            info: recorded.clone(),
            user: caller.cloned(),
            impersonate,
            upgrade: upgrade.map(str::to_string),
            policy: decision.clone(),
        };
        exchange.log.record(RecordBody::KubeRequest(request)).await;
        // A Secret's body is masked as one even when it names no kind (a patch).
        let secret = (info.resource.as_deref() == Some("secrets") && info.subresource.is_none())
            .then_some("Secret");
        let body = exchange.log.request_body_as(body, masking, secret).await;
        match decision.action {
            Action::Allow => Verdict::Forward(Forward {
                body,
                masking,
                answering,
            }),
            Action::Deny => {
                let message = hold::rule_text(&decision);
                Verdict::Answer(forbidden(exchange, &answering, &info, message).await)
            }
            Action::Hold => {
                let operation = HeldOperation {
                    method: info.verb.clone(),
                    tool: info.resource_path(),
                    arguments: None,
                    kube: Some(recorded),
                };
                let wait = hold::open(
                    &self.approvals,
                    exchange,
                    &decision,
                    masking,
                    &head.headers,
                    operation,
                )
                .await;
                let (approvals, exchange) = (self.approvals.clone(), exchange.clone());
                Verdict::Hold(Box::pin(async move {
                    let (hold, verdict, waited) = wait.verdict(&approvals).await;
                    hold::record_verdict(&exchange, &hold, &verdict, waited).await;
                    if verdict.outcome == HoldOutcome::Approved {
                        return Verdict::Forward(Forward {
                            body,
                            masking,
                            answering,
                        });
                    }
                    let message = hold::refusal_text(&decision, &verdict, waited);
                    Verdict::Answer(forbidden(&exchange, &answering, &info, message).await)
                }))
            }
        }
    }

    /// A bearer token that is not the pod's: a Forbidden `Status`, as the API server would
    /// refuse it; nothing goes upstream. Recorded as a pair like any request, refused by the
    /// built-in rule `token-binding` (the `token_check` record says why).
    async fn refused(
        &self,
        exchange: &Exchange,
        head: &request::Parts,
        _body: &Bytes,
        reason: String,
    ) -> Response<ProxyBody> {
        let answering = KubeAnswering {
            stream: self.streams.fetch_add(1, Ordering::Relaxed),
            started: Instant::now(),
            watch: false,
            ports: None,
            masking: exchange.target_masking(),
        };
        let info = request_info::parse(&head.method, &head.uri);
        let request = KubeRequest {
            stream: answering.stream,
            info: recordable(exchange, &info, answering.masking),
            user: None,
            impersonate: Impersonation::of(&head.headers),
            upgrade: header_str(&head.headers, "upgrade").map(str::to_string),
            policy: Decision {
                action: Action::Deny,
                rule: Some(TOKEN_BINDING_RULE.into()),
                reason: Some(reason.clone()),
                timeout: None,
                mask: None,
                record_raw: None,
            },
        };
        exchange.log.record(RecordBody::KubeRequest(request)).await;
        forbidden(exchange, &answering, &info, reason).await
    }

    fn body_kind(&self, answering: &KubeAnswering, kind: BodyKind) -> BodyKind {
        match kind {
            // A watch answers one JSON event a line, for as long as it runs.
            BodyKind::Json if answering.watch => BodyKind::JsonLines,
            other => other,
        }
    }

    /// exec, attach and port-forward are read by channel or by SPDY stream; anything else
    /// (the base64 protocols) is relayed and recorded as bytes, with a warning that it went
    /// unread.
    fn upgraded(
        &self,
        exchange: Arc<Exchange>,
        answering: KubeAnswering,
        head: &response::Parts,
        client: OnUpgrade,
        upstream: OnUpgrade,
    ) -> Pump {
        // A WebSocket names its subprotocol; SPDY names itself in Upgrade.
        let websocket = header_str(&head.headers, "sec-websocket-protocol");
        let protocol = websocket
            .or_else(|| header_str(&head.headers, "upgrade"))
            .unwrap_or("")
            .to_string();
        let stream = answering.stream;
        let reading = match (websocket, answering.ports) {
            (Some(channel), ports) if CHANNEL_PROTOCOLS.contains(&channel) => match ports {
                Some(ports) => Some(Reading::port_forward(ports)),
                None => Some(Reading::Exec),
            },
            (Some(SPDY_TUNNEL), _) => Some(Reading::spdy(SpdyTap::new(
                exchange.clone(),
                stream,
                answering.masking,
            ))),
            _ => None,
        };
        let spdy = websocket.is_none() && protocol.to_ascii_lowercase().starts_with("spdy/3");
        let summary = KubeResponse {
            upgraded_to: Some(protocol.clone()),
            unparsed: reading.is_none() && !spdy,
            ..answered(stream, 101, answering.started.elapsed())
        };
        Box::pin(async move {
            exchange.log.record(RecordBody::KubeResponse(summary)).await;
            match reading {
                Some(reading) => {
                    let masking = answering.masking;
                    channels::relay(exchange, stream, masking, reading, client, upstream).await
                }
                None if spdy => {
                    let tap = SpdyTap::new(exchange, stream, answering.masking);
                    spdy::relay::relay(tap, client, upstream).await
                }
                None => {
                    tracing::warn!(target_name = %exchange.target.name, protocol, "an upgraded stream in a protocol Interlock does not read: relayed and recorded as bytes");
                    tunnel::relay_bytes(exchange, client, upstream).await;
                }
            }
        })
    }

    /// A `Status`, as the API server answers its own errors, so clients print the message.
    async fn failed(
        &self,
        exchange: &Exchange,
        answering: Option<&KubeAnswering>,
        status: StatusCode,
        message: String,
    ) -> Response<ProxyBody> {
        let reason = match status {
            StatusCode::GATEWAY_TIMEOUT => "Timeout",
            StatusCode::BAD_GATEWAY => "ServiceUnavailable",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
            StatusCode::BAD_REQUEST => "BadRequest",
            _ => "InternalError",
        };
        let failure = Failure {
            status,
            reason,
            message,
            details: json!({}),
        };
        status_answer(exchange, answering, failure).await
    }

    fn on_response(
        &self,
        exchange: &Exchange,
        answering: KubeAnswering,
        head: &response::Parts,
        _kind: BodyKind,
        _get_stream: bool,
    ) -> KubeReader {
        KubeReader {
            code: head.status.as_u16(),
            latency: answering.started.elapsed(),
            answering,
            limit: exchange.target.max_body_bytes as usize,
            gathered: Vec::new(),
            truncated: false,
            events: 0,
        }
    }
}

/// The request as records keep it: an exec's command and the selectors masked, unless the
/// target or rule keeps raw records.
fn recordable(exchange: &Exchange, info: &RequestInfo, masking: Masking) -> RequestInfo {
    let mut recorded = info.clone();
    if !masking.record_raw {
        let masker = exchange.masker();
        let mut report = MaskReport::default();
        let texts = recorded.command.iter_mut().chain(
            [&mut recorded.label_selector, &mut recorded.field_selector]
                .into_iter()
                .flatten(),
        );
        for text in texts {
            masker.mask_string(text, &mut report);
        }
    }
    recorded
}

/// Where the client asked for protobuf, asks for JSON instead: a protobuf answer could be
/// neither masked nor summed up. Every client that offers protobuf also takes JSON.
fn ask_for_json(headers: &mut HeaderMap) {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if !accept.contains(PROTOBUF) {
        return;
    }
    let kept: Vec<&str> = accept
        .split(',')
        .map(str::trim)
        .filter(|range| {
            range
                .split(';')
                .next()
                .is_some_and(|t| t.trim() != PROTOBUF)
        })
        .collect();
    let json = if kept.is_empty() {
        "application/json".to_string()
    } else {
        kept.join(",")
    };
    if let Ok(value) = HeaderValue::from_str(&json) {
        headers.insert(header::ACCEPT, value);
    }
}

/// What the gateway refuses or failed to do, as a `Status` says it.
struct Failure {
    status: StatusCode,
    reason: &'static str,
    message: String,
    details: Value,
}

/// A Forbidden `Status` naming the request's object.
async fn forbidden(
    exchange: &Exchange,
    answering: &KubeAnswering,
    info: &RequestInfo,
    message: String,
) -> Response<ProxyBody> {
    let failure = Failure {
        status: StatusCode::FORBIDDEN,
        reason: "Forbidden",
        message,
        details: json!({
            "name": info.name,
            "group": info.api_group,
            "kind": info.resource,
        }),
    };
    status_answer(exchange, Some(answering), failure).await
}

/// A failure `Status`, recorded with its `kube_response` when the request has a
/// `kube_request`.
async fn status_answer(
    exchange: &Exchange,
    answering: Option<&KubeAnswering>,
    failure: Failure,
) -> Response<ProxyBody> {
    let code = failure.status.as_u16();
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": failure.message,
        "reason": failure.reason,
        "details": failure.details,
        "code": code,
    });
    let body = Bytes::from(status.to_string());
    let response = generated(exchange, failure.status, "application/json", body).await;
    if let Some(answering) = answering {
        exchange
            .log
            .record(RecordBody::KubeResponse(KubeResponse {
                generated_by_gateway: true,
                object_kind: Some("Status".into()),
                reason: Some(failure.reason.into()),
                message: Some(failure.message),
                ..answered(answering.stream, code, answering.started.elapsed())
            }))
            .await;
    }
    response
}

/// An answer's summary before its body is read.
fn answered(stream: u64, code: u16, latency: Duration) -> KubeResponse {
    KubeResponse {
        stream,
        code,
        generated_by_gateway: false,
        object_kind: None,
        namespace: None,
        name: None,
        resource_version: None,
        items: None,
        events: None,
        reason: None,
        message: None,
        upgraded_to: None,
        unparsed: false,
        latency_ms: latency.as_secs_f64() * 1000.0,
    }
}

/// Records an answer as it streams, and keeps what it needs to sum it up: the body (as
/// recorded, so masked) up to the target's `max_body_bytes`, or a watch's event count.
pub struct KubeReader {
    answering: KubeAnswering,
    code: u16,
    latency: Duration,
    limit: usize,
    gathered: Vec<u8>,
    truncated: bool,
    events: u64,
}

impl ResponseReader for KubeReader {
    async fn on_piece(&mut self, exchange: &Exchange, recorded: Bytes) {
        if self.answering.watch {
            self.events += memchr::memchr_iter(b'\n', &recorded).count() as u64;
        } else if self.gathered.len() + recorded.len() <= self.limit {
            self.gathered.extend_from_slice(&recorded);
        } else {
            self.truncated = true;
        }
        exchange.log.data(Direction::Down, recorded).await;
    }

    async fn injection(&mut self) {
        std::future::pending().await
    }

    async fn inject(&mut self, _exchange: &Exchange) -> Vec<Bytes> {
        Vec::new()
    }

    async fn finish(self, exchange: &Exchange) {
        // Parsed on the record writer, off the data path.
        exchange
            .log
            .later(move || vec![RecordBody::KubeResponse(self.summary())])
            .await;
    }
}

impl KubeReader {
    fn summary(self) -> KubeResponse {
        let mut response = KubeResponse {
            events: self.answering.watch.then_some(self.events),
            ..answered(self.answering.stream, self.code, self.latency)
        };
        if self.truncated {
            return response;
        }
        // Only the fields a summary needs are kept: a list's items are counted, not built.
        let Ok(object) = serde_json::from_slice::<Answered>(&self.gathered) else {
            return response;
        };
        let metadata = object.metadata.unwrap_or_default();
        response.namespace = metadata.namespace;
        response.name = metadata.name;
        response.resource_version = metadata.resource_version;
        // A list's items, or a server-side Table's rows.
        response.items = object.items.or(object.rows).map(|items| items.len() as u64);
        if object.kind.as_deref() == Some("Status") {
            response.reason = object.reason;
            response.message = object.message;
        }
        response.object_kind = object.kind;
        response
    }
}

/// What a summary reads of an answer.
#[derive(Deserialize)]
struct Answered {
    kind: Option<String>,
    metadata: Option<AnsweredMetadata>,
    items: Option<Vec<IgnoredAny>>,
    rows: Option<Vec<IgnoredAny>>,
    reason: Option<String>,
    message: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnsweredMetadata {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_after(accept: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, accept.parse().unwrap());
        ask_for_json(&mut headers);
        headers[header::ACCEPT].to_str().unwrap().to_string()
    }

    #[test]
    fn protobuf_is_negotiated_down_to_json() {
        // client-go's default for core types, and kubectl's Table request.
        assert_eq!(
            accept_after("application/vnd.kubernetes.protobuf, */*"),
            "*/*"
        );
        assert_eq!(
            accept_after(
                "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
            ),
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        );
        assert_eq!(
            accept_after("application/vnd.kubernetes.protobuf;stream=watch"),
            "application/json"
        );
        assert_eq!(accept_after("application/json"), "application/json");
    }

    #[test]
    fn answers_are_summed_up_from_their_recorded_body() {
        let reader = |body: &str, watch: bool| KubeReader {
            answering: KubeAnswering {
                stream: 4,
                started: Instant::now(),
                watch,
                ports: None,
                masking: Masking {
                    apply: Default::default(),
                    record_raw: false,
                },
            },
            code: 200,
            latency: Duration::from_millis(3),
            limit: 1 << 20,
            gathered: body.as_bytes().to_vec(),
            truncated: false,
            events: 2,
        };
        let secret = reader(
            r#"{"kind":"Secret","metadata":{"name":"db","namespace":"team","resourceVersion":"17"},"data":{"password":"[MASKED:kubernetes_secret]"}}"#,
            false,
        )
        .summary();
        assert_eq!(secret.object_kind.as_deref(), Some("Secret"));
        assert_eq!(secret.name.as_deref(), Some("db"));
        assert_eq!(secret.namespace.as_deref(), Some("team"));
        assert_eq!(secret.resource_version.as_deref(), Some("17"));
        assert_eq!(secret.latency_ms, 3.0);
        let list = reader(
            r#"{"kind":"PodList","metadata":{"resourceVersion":"9"},"items":[{},{}]}"#,
            false,
        )
        .summary();
        assert_eq!(list.items, Some(2));
        let status = reader(
            r#"{"kind":"Status","status":"Failure","reason":"NotFound","message":"pods \"x\" not found","code":404}"#,
            false,
        )
        .summary();
        assert_eq!(status.reason.as_deref(), Some("NotFound"));
        assert_eq!(status.message.as_deref(), Some("pods \"x\" not found"));
        let watch = reader("", true).summary();
        assert_eq!(watch.events, Some(2));
        assert_eq!(reader("not json", false).summary().object_kind, None);
    }
}

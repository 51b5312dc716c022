//! Requests held for a human decision. A client that takes SSE gets its stream at once, kept
//! alive by comments until the verdict; any other waits for its answer. Approved, the request
//! is forwarded; otherwise it is answered with a JSON-RPC error saying why.
use std::{pin::pin, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited, channel::Channel};
use hyper::{
    HeaderMap, Request, Response, StatusCode,
    header::{self, HeaderValue},
    http::request,
};
use serde_json::Value;

use super::{
    answers::{answer_on_legacy_stream, generated_json},
    decide::HeldCall,
    jsonrpc::{POLICY_DENIED, error_response, parse_messages},
    reader::{McpAnswering, McpReader},
    sessions::McpSessions,
};
use crate::{
    approvals::{Approvals, HoldWait},
    masking::{
        MaskReport,
        stream::{BodyKind, BodyMasker, Piece},
    },
    policy::Decision,
    protocols::{
        http::{
            inspect::{Forward, Verdict},
            reply::header_str,
            response::{Outlet, ResponseStream, deliver, gather_ready, stream_body},
            upstream::{Upstream, upstream_request},
        },
        l7::{
            Exchange, Masking,
            hold::{self, HeldOperation},
        },
    },
    vocabulary::{Direction, HoldOutcome},
};

/// Who decides holds, and where legacy answers go: what every hold on the node shares.
pub struct HoldDesk {
    pub approvals: Arc<Approvals>,
    pub sessions: Arc<McpSessions>,
}

/// A held request's context while it waits.
struct HeldStream {
    request_id: Value,
    decision: Decision,
    masking: Masking,
    answering: McpAnswering,
}

impl HoldDesk {
    /// Registers and records the hold; the verdict says how the request then goes on.
    #[allow(clippy::too_many_arguments)]
    pub async fn hold(
        self: &Arc<Self>,
        exchange: &Arc<Exchange>,
        upstream: &Arc<Upstream>,
        held: HeldCall,
        head: &request::Parts,
        body: Bytes,
        masking: Masking,
        answering: McpAnswering,
    ) -> Verdict<McpAnswering> {
        let operation = HeldOperation {
            method: held.method,
            tool: held.tool,
            arguments: held.arguments,
            kube: None,
        };
        let wait = hold::open(
            &self.approvals,
            exchange,
            &held.decision,
            masking,
            &head.headers,
            operation,
        )
        .await;
        // Legacy HTTP+SSE: the answer goes on the client's GET stream, never on this POST.
        let legacy_endpoint = head
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|uri| self.sessions.is_legacy_endpoint(uri));
        let stream = HeldStream {
            request_id: held.id,
            decision: held.decision,
            masking,
            answering,
        };
        if accepts_sse(&head.headers) && legacy_endpoint.is_none() {
            // Answer at once and keep the stream alive: clients' read timeouts restart with
            // each keep-alive, while a plain POST would hit them after a long wait.
            let (tx, channel) = Channel::new(4);
            exchange.drive(Box::pin(self.clone().held_sse(
                exchange.clone(),
                upstream.clone(),
                wait,
                stream,
                upstream_request(owned_head(head), body),
                tx,
            )));
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            exchange
                .log
                .response_head(StatusCode::OK, &headers, true)
                .await;
            let mut response = Response::new(Either::Right(channel));
            *response.headers_mut() = headers;
            return Verdict::Answer(response);
        }
        let (desk, exchange) = (self.clone(), exchange.clone());
        Verdict::Hold(Box::pin(async move {
            let (hold, verdict, waited) = wait.verdict(&desk.approvals).await;
            hold::record_verdict(&exchange, &hold, &verdict, waited).await;
            if verdict.outcome == HoldOutcome::Approved {
                return Verdict::Forward(Forward {
                    body,
                    masking: stream.masking,
                    answering: stream.answering,
                });
            }
            let error = error_response(
                &stream.request_id,
                POLICY_DENIED,
                &hold::refusal_text(&stream.decision, &verdict, waited),
            );
            let answers = std::slice::from_ref(&error);
            let legacy_endpoint = legacy_endpoint.as_deref();
            if let Some(accepted) =
                answer_on_legacy_stream(&exchange, &desk.sessions, legacy_endpoint, answers).await
            {
                return Verdict::Answer(accepted);
            }
            let session = stream.answering.session.as_deref();
            Verdict::Answer(generated_json(&exchange, StatusCode::OK, &error, session).await)
        }))
    }

    /// A held request whose client takes SSE: the stream is already open. Keep-alive
    /// comments flow until the verdict; then the upstream's answer, or the refusal, follows
    /// as events.
    async fn held_sse(
        self: Arc<Self>,
        exchange: Arc<Exchange>,
        upstream: Arc<Upstream>,
        wait: HoldWait,
        held: HeldStream,
        request: Request<Full<Bytes>>,
        tx: http_body_util::channel::Sender<Bytes, std::io::Error>,
    ) {
        let mut out = Outlet::Stream(tx);
        let hold_id = wait.hold.hold_id.clone();
        let keepalive = self.approvals.config.keepalive;
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let mut verdict = pin!(wait.verdict(&self.approvals));
        let (hold, verdict, waited) = loop {
            tokio::select! {
                v = &mut verdict => break v,
                _ = ticks.tick() => {
                    let comment = Bytes::from_static(b": held for approval\n\n");
                    exchange.log.data(Direction::Down, comment.clone()).await;
                    if out.send(comment).await.is_ok() {
                        continue;
                    }
                }
                _ = exchange.client_gone.cancelled() => {}
            }
            // The client went away: nobody is left to answer.
            self.approvals.abandon(&hold_id);
            break verdict.await;
        };
        hold::record_verdict(&exchange, &hold, &verdict, waited).await;
        if verdict.outcome != HoldOutcome::Approved {
            let error = error_response(
                &held.request_id,
                POLICY_DENIED,
                &hold::refusal_text(&held.decision, &verdict, waited),
            );
            self.send_events(&exchange, &mut out, &held, &[error], EventSource::Gateway)
                .await;
            return;
        }
        let response = match upstream.send(request).await {
            Ok(response) => response,
            Err(e) => {
                let error = error_response(
                    &held.request_id,
                    -32603,
                    &format!(
                        "approved, but upstream {} failed: {e} (Interlock)",
                        exchange.target.destination()
                    ),
                );
                self.send_events(&exchange, &mut out, &held, &[error], EventSource::Gateway)
                    .await;
                return;
            }
        };
        let (parts, mut body) = response.into_parts();
        exchange
            .log
            .response_head(parts.status, &parts.headers, false)
            .await;
        let kind = BodyKind::of(header_str(&parts.headers, "content-type"));
        if kind == BodyKind::Sse {
            let reader = McpReader::new(self.sessions.clone(), kind, false, held.answering);
            let stream = ResponseStream::new(reader, held.masking, kind);
            let ready = gather_ready(&mut body, Bytes::new());
            stream_body(exchange, body, ready, out, stream).await;
            return;
        }
        // A JSON answer becomes events on the stream the client already reads.
        let messages = match Limited::new(body, held.answering.limit).collect().await {
            Ok(body) => {
                let body = body.to_bytes();
                // What the upstream sent, masked like every record (the events that carry it
                // to the client are recorded, and counted, as they go out).
                let recorded = if held.masking.record_raw {
                    None
                } else {
                    exchange
                        .masker()
                        .mask_body(&body, &mut MaskReport::default())
                };
                exchange
                    .log
                    .data(Direction::Down, recorded.map_or(body.clone(), Bytes::from))
                    .await;
                parse_messages(&body).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let events = messages.unwrap_or_else(|e| {
            vec![error_response(
                &held.request_id,
                -32603,
                &format!(
                    "approved, but upstream answered HTTP {} with no JSON-RPC message ({e}) (Interlock)",
                    parts.status
                ),
            )]
        });
        self.send_events(&exchange, &mut out, &held, &events, EventSource::Upstream)
            .await;
    }

    /// Writes JSON-RPC messages as SSE events, recorded like any response.
    async fn send_events(
        &self,
        exchange: &Exchange,
        out: &mut Outlet<'_>,
        held: &HeldStream,
        messages: &[Value],
        source: EventSource,
    ) {
        let reader = McpReader::new(
            self.sessions.clone(),
            BodyKind::Sse,
            false,
            held.answering.clone(),
        );
        let mut stream = ResponseStream::new(reader, held.masking, BodyKind::Sse);
        let mut text = String::new();
        for message in messages {
            text.push_str(&format!("event: message\ndata: {message}\n\n"));
        }
        let mut masker = BodyMasker::new(exchange.masker(), BodyKind::Sse);
        let pieces = match source {
            EventSource::Upstream => {
                let mut pieces = masker.feed(text.as_bytes());
                pieces.extend(masker.finish());
                pieces
            }
            EventSource::Gateway => vec![Piece {
                raw: Bytes::from(text),
                masked: None,
            }],
        };
        for piece in pieces {
            if deliver(exchange, out, &mut stream, piece).await.is_err() {
                break;
            }
        }
        if source == EventSource::Upstream {
            let report = std::mem::take(&mut masker.report);
            exchange
                .log
                .masked(Direction::Down, report, held.masking.apply.responses())
                .await;
        }
    }
}

/// Where events written into a held request's stream come from.
#[derive(PartialEq)]
enum EventSource {
    /// The upstream's answer: masked like any response.
    Upstream,
    /// The gateway's own refusal: nothing in it to mask.
    Gateway,
}

/// A copy of a request head, for a request that goes upstream once its hold is decided.
fn owned_head(head: &request::Parts) -> request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = head.method.clone();
    *copy.uri_mut() = head.uri.clone();
    *copy.version_mut() = head.version;
    *copy.headers_mut() = head.headers.clone();
    copy.into_parts().0
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    header_str(headers, "accept").is_some_and(|a| a.contains("text/event-stream"))
}

//! HTTP/1.1 proxying for `http` and `mcp` targets, with hyper on both sides of one client
//! connection. Request bodies are read (bounded) so they can be recorded and, for MCP, checked
//! against the policy before anything is forwarded. Response bodies stream through frame by
//! frame: each frame is recorded and forwarded as it arrives, and SSE events are parsed on the
//! way, so progress notifications reach the client as they are sent.
use std::{
    convert::Infallible,
    future::{Future, poll_fn},
    pin::{Pin, pin},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::{BodyExt, Either, Full, Limited, channel::Channel};
use hyper::{
    HeaderMap, Request, Response, StatusCode,
    body::Incoming,
    client::conn::http1::SendRequest,
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::mcp;
use crate::{
    approvals::{self, Approvals, HoldWait, Verdict},
    masking::{
        MaskApply, MaskReport, Masker,
        stream::{BodyKind, BodyMasker, Piece},
    },
    policy::{Action, Decision, Policy},
    protocols::target::{Protocol, Target},
    proxy::relay::RelayResult,
    recording::{
        SessionRecorder,
        record::{
            DataChunk, Direction, Hold, HoldDecision, HoldOutcome, HttpRequestHead,
            HttpResponseHead, MaskedBody, McpMessage, Outcome, RecordBody,
        },
    },
    telemetry::events::{InternalEvent, SecretsMasked},
};
use crate::{identity::Workload, sse::SseParser};

type ProxyBody = Either<Full<Bytes>, Channel<Bytes, std::io::Error>>;
type Pump = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Opens a new connection to the session's upstream.
pub type Redial =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>> + Send + Sync>;

/// The receiving ends of `HttpSession::pumps` and `HttpSession::upstreams`, for `serve`.
pub struct PumpQueue {
    pumps: mpsc::UnboundedReceiver<Pump>,
    upstreams: mpsc::UnboundedReceiver<Pump>,
}

/// What a session's task drives besides the client connection: its upstream connections,
/// then its response pumps, all polled on every pass. (FuturesUnordered wakes its task
/// again whenever it has polled all of its futures, to be fair to other tasks; with sets
/// this small that was a spare pass over the whole session three times per call.)
struct Driven {
    queues: PumpQueue,
    upstreams: Vec<Pump>,
    pumps: Vec<Pump>,
}

impl Driven {
    fn poll(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(upstream)) = self.queues.upstreams.poll_recv(cx) {
            self.upstreams.push(upstream);
        }
        while let Poll::Ready(Some(pump)) = self.queues.pumps.poll_recv(cx) {
            self.pumps.push(pump);
        }
        // Upstream connections first: they feed the pumps. One is dropped as soon as it
        // ends: only then does its sender report it closed, so the next request can redial.
        self.upstreams
            .retain_mut(|upstream| upstream.as_mut().poll(cx).is_pending());
        self.pumps
            .retain_mut(|pump| pump.as_mut().poll(cx).is_pending());
    }
}

/// Everything one client connection's requests share.
pub struct HttpSession {
    pub session: SessionRecorder,
    pub target: Target,
    pub workload: Workload,
    pub policy: Arc<Policy>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Response-body pumps, handed to the connection's own task (see `serve`).
    pumps: mpsc::UnboundedSender<Pump>,
    /// Upstream connections opened after the first one, driven by that task too.
    upstreams: mpsc::UnboundedSender<Pump>,
    /// For when the upstream closed an idle connection and a request must still go out.
    redial: Redial,
    /// Set when a request timed out on the upstream connection, which still owes its answer.
    upstream_stale: AtomicBool,
    /// Cancelled when the client connection is gone, so long-lived streams stop at once.
    client_gone: CancellationToken,
    /// MCP sessions across all connections, by `Mcp-Session-Id`.
    mcp_sessions: Arc<mcp::McpSessions>,
    masker: Arc<Masker>,
    approvals: Arc<Approvals>,
}

/// Where masking applies to one exchange: the target's setting, or a matching rule's.
#[derive(Debug, Clone, Copy)]
struct Masking {
    apply: MaskApply,
    record_raw: bool,
}

/// What every session on the node shares.
pub struct NodeServices {
    pub mcp_sessions: Arc<mcp::McpSessions>,
    pub masker: Arc<Masker>,
    pub approvals: Arc<Approvals>,
}

impl HttpSession {
    pub fn new(
        session: SessionRecorder,
        target: Target,
        workload: Workload,
        policy: Arc<Policy>,
        services: NodeServices,
        redial: Redial,
    ) -> (Self, PumpQueue) {
        let NodeServices {
            mcp_sessions,
            masker,
            approvals,
        } = services;
        let (pumps, pump_queue) = mpsc::unbounded_channel();
        let (upstreams, upstream_queue) = mpsc::unbounded_channel();
        let session = HttpSession {
            upstreams,
            redial,
            upstream_stale: AtomicBool::new(false),
            session,
            target,
            workload,
            policy,
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            pumps,
            client_gone: CancellationToken::new(),
            mcp_sessions,
            masker,
            approvals,
        };
        (
            session,
            PumpQueue {
                pumps: pump_queue,
                upstreams: upstream_queue,
            },
        )
    }
}

/// The client connection, counting the bytes that cross its socket each way: the session's
/// `bytes_up` and `bytes_down` are the client's bytes on the wire, heads included.
struct Counted {
    client: TcpStream,
    ctx: Arc<HttpSession>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.client).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.ctx.bytes_up.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.client).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &polled {
            self.ctx
                .bytes_down
                .fetch_add(*written as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.client).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = &polled {
            self.ctx
                .bytes_down
                .fetch_add(*written as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.client.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.client).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.client).poll_shutdown(cx)
    }
}

pub async fn serve(
    client: TcpStream,
    upstream: TcpStream,
    ctx: Arc<HttpSession>,
    pump_queue: PumpQueue,
    hard_stop: &CancellationToken,
) -> RelayResult {
    let finish = |ctx: &HttpSession, outcome, error| RelayResult {
        bytes_up: ctx.bytes_up.load(Ordering::Relaxed),
        bytes_down: ctx.bytes_down.load(Ordering::Relaxed),
        outcome,
        error,
    };
    let (sender, upstream_conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(pair) => pair,
            Err(e) => {
                return finish(
                    &ctx,
                    Outcome::Error,
                    Some(format!("upstream HTTP handshake: {e}")),
                );
            }
        };
    let mut driven = Driven {
        queues: pump_queue,
        upstreams: vec![Box::pin(async move {
            let _ = upstream_conn.await;
        })],
        pumps: Vec::new(),
    };
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let (ctx, sender) = (service_ctx.clone(), sender.clone());
        async move { Ok::<_, Infallible>(handle(req, &ctx, &sender).await) }
    });
    let mut conn = pin!(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // Also bounds an idle keep-alive connection: the wait for the next request's head.
            .header_read_timeout(ctx.target.header_read_timeout)
            .serve_connection(
                TokioIo::new(Counted {
                    client,
                    ctx: ctx.clone()
                }),
                service
            )
    );
    let mut stopped = pin!(hard_stop.cancelled());
    // The client side, the upstream side and every response pump run in this one task, so
    // a request and its answer cross no task or thread: each such hop costs a wake-up and
    // often a context switch. The upstream side is polled both before and after the client
    // side, so an answer read from upstream reaches the client, and a request read from the
    // client goes upstream, in the same pass.
    let (outcome, error) = poll_fn(|cx| {
        driven.poll(cx);
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(match result {
                Ok(()) => (Outcome::Closed, None),
                Err(e) if e.is_parse() || e.is_parse_too_large() => (
                    Outcome::Error,
                    Some(format!("malformed HTTP from the client: {e}")),
                ),
                Err(e) if e.is_timeout() => (
                    Outcome::Timeout,
                    Some(format!(
                        "no complete request head within header_read_timeout ({})",
                        humantime::format_duration(ctx.target.header_read_timeout)
                    )),
                ),
                Err(e) => (Outcome::Reset, Some(e.to_string())),
            });
        }
        driven.poll(cx);
        match stopped.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready((Outcome::Shutdown, Some("gateway shut down".into()))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    // A response still streaming (a long-lived SSE GET) has nobody to go to any more; its
    // pump records what it had and ends.
    ctx.client_gone.cancel();
    poll_fn(|cx| {
        driven.poll(cx);
        if driven.pumps.is_empty() || stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
    finish(&ctx, outcome, error)
}

async fn handle(
    req: Request<Incoming>,
    ctx: &Arc<HttpSession>,
    sender: &Arc<tokio::sync::Mutex<SendRequest<Full<Bytes>>>>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let (method, mut uri) = (parts.method.to_string(), parts.uri.to_string());
    let (version, headers) = (format!("{:?}", parts.version), parts.headers.clone());
    let (masker, record_raw) = (ctx.masker.clone(), ctx.target.record_raw);
    record_later(ctx, move || {
        if !record_raw {
            masker.mask_string(&mut uri, &mut MaskReport::default());
        }
        let headers = recordable_headers(&masker, record_raw, &headers);
        vec![RecordBody::HttpRequest(HttpRequestHead {
            method,
            uri,
            version,
            headers,
        })]
    })
    .await;
    // MCP sessions are known by header, not by connection: one session spans many.
    let request_session = header_str(&parts.headers, "mcp-session-id").map(str::to_string);
    if let Some(id) = &request_session {
        if parts.method == hyper::Method::DELETE {
            ctx.mcp_sessions.close(id);
        } else {
            ctx.mcp_sessions.touch(id, &ctx.target.name);
        }
    }

    let limit = ctx.target.max_body_bytes as usize;
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let (status, message) = if e.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "request body over the {limit}-byte limit (max_body_bytes of target {})",
                        ctx.target.name
                    ),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("request body ended early: {e}"),
                )
            };
            return generated(ctx, status, "text/plain", message.into_bytes().into()).await;
        }
    };
    let mut evaluation = (ctx.target.protocol == Protocol::Mcp
        && parts.method == hyper::Method::POST)
        .then(|| evaluate_mcp(ctx, &parts.headers, &body));
    let masking = evaluation
        .as_ref()
        .map_or_else(|| target_masking(ctx), |e| e.masking);
    let body = mask_request_body(ctx, body, masking).await;
    let held = evaluation.as_mut().and_then(|e| e.held.take());
    // What the answer answers, should it be too large to read.
    let answers = Arc::new(
        evaluation
            .as_ref()
            .map(|e| requests_answered(&e.messages))
            .unwrap_or_default(),
    );
    if let Some(evaluation) = evaluation
        && let Some(refusal) = refuse(
            ctx,
            evaluation,
            masking,
            request_session.as_deref(),
            parts.uri.path_and_query().map(|p| p.as_str()),
        )
        .await
    {
        return refusal;
    }

    if let Some(held) = held {
        let wait = open_hold(ctx, &held, masking, &parts.headers).await;
        strip_forwarding_headers(&mut parts.headers);
        let request = Request::from_parts(parts, Full::new(body));
        // Legacy HTTP+SSE: the answer goes on the client's GET stream, never on this POST.
        let legacy_endpoint = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|uri| ctx.mcp_sessions.is_legacy_endpoint(uri));
        let stream = HeldStream {
            request_id: held.id,
            decision: held.decision,
            masking,
            limit,
            session: request_session,
            answers: answers.clone(),
        };
        if accepts_sse(request.headers()) && legacy_endpoint.is_none() {
            // Answer at once and keep the stream alive: clients' read timeouts restart with
            // each keep-alive, while a plain POST would hit them after a long wait.
            let (tx, channel) = Channel::new(4);
            let _ = ctx.pumps.send(Box::pin(held_sse(
                ctx.clone(),
                wait,
                stream,
                request,
                sender.clone(),
                tx,
            )));
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            record_head(ctx, StatusCode::OK, &headers, true).await;
            let mut response = Response::new(Either::Right(channel));
            *response.headers_mut() = headers;
            return response;
        }
        let (hold, verdict, waited) = wait.verdict(&ctx.approvals).await;
        record_verdict(ctx, &hold, &verdict, waited).await;
        if verdict.outcome != HoldOutcome::Approved {
            let error = mcp::error_response(
                &stream.request_id,
                mcp::POLICY_DENIED,
                &held_refusal_text(&stream.decision, &verdict, waited),
            );
            let legacy_endpoint = legacy_endpoint.as_deref();
            let answers = std::slice::from_ref(&error);
            if let Some(accepted) = answer_on_legacy_stream(ctx, legacy_endpoint, answers).await {
                return accepted;
            }
            return generated_json(ctx, StatusCode::OK, &error, stream.session.as_deref()).await;
        }
        let answering = (stream.session, answers);
        return forward(ctx, sender, request, masking, limit, answering).await;
    }
    strip_forwarding_headers(&mut parts.headers);
    let upstream_req = Request::from_parts(parts, Full::new(body));
    forward(
        ctx,
        sender,
        upstream_req,
        masking,
        limit,
        (request_session, answers),
    )
    .await
}

/// The requests (id and method) among a POST's messages: what its answer answers.
fn requests_answered(messages: &[(Value, Option<Decision>)]) -> Vec<(Value, Option<String>)> {
    messages
        .iter()
        .filter_map(|(message, _)| {
            let fields = mcp::Fields::of(message);
            Some((fields.id?.clone(), Some(fields.method?.to_string())))
        })
        .collect()
}

/// The request's MCP session, and the requests its answer answers.
type Answering = (Option<String>, Arc<Vec<(Value, Option<String>)>>);

/// The proxy reads bodies, so it must get them uncompressed; the body is complete, so the
/// client's Expect was already answered.
fn strip_forwarding_headers(headers: &mut HeaderMap) {
    for name in [
        header::ACCEPT_ENCODING,
        header::EXPECT,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
}

/// Sends a request upstream. Servers close keep-alive connections that sit idle (uvicorn
/// after 5 s), while the client's connection, and a held request, may wait far longer: a
/// request that finds its upstream connection closed goes out on a new one.
async fn send_upstream(
    ctx: &HttpSession,
    sender: &tokio::sync::Mutex<SendRequest<Full<Bytes>>>,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, String> {
    let mut sender = sender.lock().await;
    if ctx.upstream_stale.swap(false, Ordering::Relaxed) {
        *sender = redial(ctx).await?;
    }
    let unsent = match sender.ready().await {
        Ok(()) => match sender.try_send_request(request).await {
            Ok(response) => return Ok(response),
            // Not a byte of it went out, so it can go again.
            Err(mut e) => match e.take_message() {
                Some(request) => request,
                None => return Err(e.into_error().to_string()),
            },
        },
        Err(_) => request,
    };
    *sender = redial(ctx).await?;
    sender.ready().await.map_err(|e| e.to_string())?;
    sender.send_request(unsent).await.map_err(|e| e.to_string())
}

/// A new upstream connection, driven by the session's task like the first.
async fn redial(ctx: &HttpSession) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = (ctx.redial)()
        .await
        .map_err(|e| format!("reconnecting: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("reconnecting: {e}"))?;
    let _ = ctx.upstreams.send(Box::pin(async move {
        let _ = conn.await;
    }));
    tracing::debug!(target_name = %ctx.target.name, "the upstream had closed the idle connection; reconnected");
    Ok(sender)
}

/// Sends a request upstream and streams its answer back through a pump.
async fn forward(
    ctx: &Arc<HttpSession>,
    sender: &tokio::sync::Mutex<SendRequest<Full<Bytes>>>,
    upstream_req: Request<Full<Bytes>>,
    masking: Masking,
    limit: usize,
    (request_session, answers): Answering,
) -> Response<ProxyBody> {
    let get_stream = upstream_req.method() == hyper::Method::GET;
    let waited = ctx.target.upstream_response_timeout;
    let response = match tokio::time::timeout(waited, send_upstream(ctx, sender, upstream_req))
        .await
    {
        Ok(Ok(response)) => response,
        Err(_elapsed) => {
            // That connection still owes the answer: the next request goes out on a new one.
            ctx.upstream_stale.store(true, Ordering::Relaxed);
            let message = format!(
                "upstream {} sent no response within upstream_response_timeout ({}) of target {}",
                ctx.target.address,
                humantime::format_duration(waited),
                ctx.target.name
            );
            return generated(
                ctx,
                StatusCode::GATEWAY_TIMEOUT,
                "text/plain",
                message.into_bytes().into(),
            )
            .await;
        }
        Ok(Err(e)) => {
            let message = format!("upstream {} failed: {e}", ctx.target.address);
            return generated(
                ctx,
                StatusCode::BAD_GATEWAY,
                "text/plain",
                message.into_bytes().into(),
            )
            .await;
        }
    };
    let (mut parts, mut body) = response.into_parts();
    record_head(ctx, parts.status, &parts.headers, false).await;
    let response_session = header_str(&parts.headers, "mcp-session-id").map(str::to_string);
    if let Some(id) = &response_session {
        ctx.mcp_sessions.touch(id, &ctx.target.name);
    }
    parts.headers.remove(header::TRANSFER_ENCODING);
    let kind = BodyKind::of(header_str(&parts.headers, "content-type"));
    let stream = response_stream(
        ctx,
        kind,
        masking,
        limit,
        (response_session.or(request_session), answers),
        get_stream,
    );
    let body_changes = stream.kind.is_some() && masking.apply.responses();
    let ready = gather_ready(&mut body, Bytes::new());
    if matches!(ready.1, Some(Ok(()))) && !ready.0.is_empty() {
        // The whole body came with the head (most answers to a call do): it goes out with
        // the head in one write, so the client wakes once, not again for the last chunk.
        let mut whole = BytesMut::new();
        // The body is complete, so the upstream cannot fail it any more.
        let _ = pump(ctx, body, ready, &mut Outlet::Whole(&mut whole), stream).await;
        if body_changes {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, whole.len().into());
        }
        return Response::from_parts(parts, Either::Left(Full::new(whole.freeze())));
    }
    if body_changes {
        // The masked body's length is only known at its end: it goes out chunked.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let (tx, channel) = Channel::new(4);
    // The connection's task is gone only once the client is, and then nobody reads this.
    let _ = ctx.pumps.send(Box::pin(stream_body(
        ctx.clone(),
        body,
        ready,
        Outlet::Stream(tx),
        stream,
    )));
    Response::from_parts(parts, Either::Right(channel))
}

/// Where a response's forwarded bytes go.
enum Outlet<'a> {
    /// Streamed to the client as they are processed.
    Stream(http_body_util::channel::Sender<Bytes, std::io::Error>),
    /// Gathered, for a body that was complete on arrival and goes out with its head.
    Whole(&'a mut BytesMut),
}

impl Outlet<'_> {
    /// Fails once the client is gone.
    async fn send(&mut self, data: Bytes) -> Result<(), ()> {
        match self {
            Outlet::Stream(tx) => tx.send_data(data).await.map_err(|_| ()),
            Outlet::Whole(whole) => {
                whole.extend_from_slice(&data);
                Ok(())
            }
        }
    }
}

/// How a response body of this kind is masked and read for MCP messages.
fn response_stream(
    ctx: &HttpSession,
    kind: BodyKind,
    masking: Masking,
    limit: usize,
    (mcp_session, answers): Answering,
    get_stream: bool,
) -> ResponseStream {
    let parse = match (ctx.target.protocol, &kind) {
        (Protocol::Mcp, BodyKind::Sse) if get_stream => ResponseParse::Sse(SseParser::new(limit)),
        (Protocol::Mcp, BodyKind::Sse) => {
            ResponseParse::SseForRecord(Arc::new(Mutex::new(SseParser::new(limit))))
        }
        (Protocol::Mcp, BodyKind::Json) => ResponseParse::Json(Vec::new()),
        _ => ResponseParse::None,
    };
    // Masking runs unless neither the client nor the record gets masked text, or the
    // body is binary.
    let masks =
        (masking.apply.responses() || !masking.record_raw) && !matches!(kind, BodyKind::Binary);
    ResponseStream {
        parse,
        mcp_session,
        answers,
        limit,
        masking,
        kind: masks.then_some(kind),
    }
}

/// A held request's context while it waits.
struct HeldStream {
    request_id: Value,
    decision: Decision,
    masking: Masking,
    limit: usize,
    session: Option<String>,
    answers: Arc<Vec<(Value, Option<String>)>>,
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    header_str(headers, "accept").is_some_and(|a| a.contains("text/event-stream"))
}

/// Registers and records a hold (arguments masked unless the rule keeps raw records).
async fn open_hold(
    ctx: &HttpSession,
    held: &HeldCall,
    masking: Masking,
    headers: &HeaderMap,
) -> HoldWait {
    let mut arguments = held.arguments.clone();
    if !masking.record_raw
        && let Some(arguments) = &mut arguments
    {
        ctx.masker.mask_value(arguments, &mut MaskReport::default());
    }
    let created_at = time::OffsetDateTime::now_utc();
    let timeout = held
        .decision
        .timeout
        .unwrap_or(ctx.approvals.config.default_timeout);
    let hold = Hold {
        hold_id: uuid::Uuid::now_v7().to_string(),
        in_session: ctx.session.id().to_string(),
        created_at,
        expires_at: created_at + timeout,
        target: ctx.target.name.clone(),
        workload: ctx.workload.clone(),
        requester: approvals::requester_of(header_str(headers, "authorization")),
        method: held.method.clone(),
        tool: held.tool.clone(),
        arguments,
        rule: held.decision.rule.clone(),
        reason: held.decision.reason.clone(),
    };
    record(ctx, RecordBody::HoldCreated(hold.clone())).await;
    ctx.approvals.open(hold, timeout)
}

async fn record_verdict(ctx: &HttpSession, hold: &Hold, verdict: &Verdict, waited: Duration) {
    record(
        ctx,
        RecordBody::HoldDecided(HoldDecision {
            hold_id: hold.hold_id.clone(),
            outcome: verdict.outcome,
            approver: verdict.approver.clone(),
            reason: verdict.reason.clone(),
            waited_ms: waited.as_millis() as u64,
        }),
    )
    .await;
}

/// The JSON-RPC error text for a hold that was not approved.
fn held_refusal_text(decision: &Decision, verdict: &Verdict, waited: Duration) -> String {
    let rule = decision.rule.as_deref().unwrap_or("default");
    let reason = verdict.reason.as_deref().unwrap_or("no reason given");
    match verdict.outcome {
        HoldOutcome::Denied => {
            let who = verdict
                .approver
                .as_ref()
                .and_then(|a| a.email.clone().or(a.subject.clone()))
                .unwrap_or_else(|| "an approver".into());
            format!("held by Interlock policy rule `{rule}` and denied by {who}: {reason}")
        }
        HoldOutcome::TimedOut => format!(
            "held by Interlock policy rule `{rule}` for approval; nobody decided within {}s, so it is denied",
            waited.as_secs()
        ),
        HoldOutcome::Interrupted | HoldOutcome::Approved => format!(
            "held by Interlock policy rule `{rule}` for approval, and the wait was cut short ({reason}); denied"
        ),
    }
}

/// Records a response head, the upstream's or one the gateway made.
async fn record_head(
    ctx: &HttpSession,
    status: StatusCode,
    headers: &HeaderMap,
    generated_by_gateway: bool,
) {
    let (masker, record_raw, headers) =
        (ctx.masker.clone(), ctx.target.record_raw, headers.clone());
    record_later(ctx, move || {
        vec![RecordBody::HttpResponse(HttpResponseHead {
            status: status.as_u16(),
            headers: recordable_headers(&masker, record_raw, &headers),
            generated_by_gateway,
        })]
    })
    .await;
}

/// A held request whose client takes SSE: the stream is already open. Keep-alive comments
/// flow until the verdict; then the upstream's answer, or the refusal, follows as events.
async fn held_sse(
    ctx: Arc<HttpSession>,
    wait: HoldWait,
    held: HeldStream,
    request: Request<Full<Bytes>>,
    sender: Arc<tokio::sync::Mutex<SendRequest<Full<Bytes>>>>,
    tx: http_body_util::channel::Sender<Bytes, std::io::Error>,
) {
    let mut out = Outlet::Stream(tx);
    let hold_id = wait.hold.hold_id.clone();
    let keepalive = ctx.approvals.config.keepalive;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let mut verdict = pin!(wait.verdict(&ctx.approvals));
    let (hold, verdict, waited) = loop {
        tokio::select! {
            v = &mut verdict => break v,
            _ = ticks.tick() => {
                let comment = Bytes::from_static(b": held for approval\n\n");
                record_data(&ctx, Direction::Down, comment.clone()).await;
                if out.send(comment).await.is_ok() {
                    continue;
                }
            }
            _ = ctx.client_gone.cancelled() => {}
        }
        // The client went away: nobody is left to answer.
        ctx.approvals.abandon(&hold_id);
        break verdict.await;
    };
    record_verdict(&ctx, &hold, &verdict, waited).await;
    if verdict.outcome != HoldOutcome::Approved {
        let error = mcp::error_response(
            &held.request_id,
            mcp::POLICY_DENIED,
            &held_refusal_text(&held.decision, &verdict, waited),
        );
        send_events(&ctx, &mut out, &held, &[error], EventSource::Gateway).await;
        return;
    }
    let response = match send_upstream(&ctx, &sender, request).await {
        Ok(response) => response,
        Err(e) => {
            let error = mcp::error_response(
                &held.request_id,
                -32603,
                &format!(
                    "approved, but upstream {} failed: {e} (Interlock)",
                    ctx.target.address
                ),
            );
            send_events(&ctx, &mut out, &held, &[error], EventSource::Gateway).await;
            return;
        }
    };
    let (parts, mut body) = response.into_parts();
    record_head(&ctx, parts.status, &parts.headers, false).await;
    let kind = BodyKind::of(header_str(&parts.headers, "content-type"));
    if matches!(kind, BodyKind::Sse) {
        let stream = response_stream(
            &ctx,
            kind,
            held.masking,
            held.limit,
            (held.session.clone(), held.answers.clone()),
            false,
        );
        let ready = gather_ready(&mut body, Bytes::new());
        stream_body(ctx.clone(), body, ready, out, stream).await;
        return;
    }
    // A JSON answer becomes events on the stream the client already reads.
    let messages = match Limited::new(body, held.limit).collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            // What the upstream sent, masked like every record (the events that carry it
            // to the client are recorded, and counted, as they go out).
            let recorded = if held.masking.record_raw {
                None
            } else {
                ctx.masker.mask_body(&body, &mut MaskReport::default())
            };
            record_data(
                &ctx,
                Direction::Down,
                recorded.map_or(body.clone(), Bytes::from),
            )
            .await;
            mcp::parse_messages(&body).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let events = messages.unwrap_or_else(|e| {
        vec![mcp::error_response(
            &held.request_id,
            -32603,
            &format!(
                "approved, but upstream answered HTTP {} with no JSON-RPC message ({e}) (Interlock)",
                parts.status
            ),
        )]
    });
    send_events(&ctx, &mut out, &held, &events, EventSource::Upstream).await;
}

/// Where events written into a held request's stream come from.
#[derive(PartialEq)]
enum EventSource {
    /// The upstream's answer: masked like any response.
    Upstream,
    /// The gateway's own refusal: nothing in it to mask.
    Gateway,
}

/// Writes JSON-RPC messages as SSE events, recorded like any response.
async fn send_events(
    ctx: &HttpSession,
    out: &mut Outlet<'_>,
    held: &HeldStream,
    messages: &[Value],
    source: EventSource,
) {
    let mut stream = response_stream(
        ctx,
        BodyKind::Sse,
        held.masking,
        held.limit,
        (held.session.clone(), held.answers.clone()),
        false,
    );
    let mut text = String::new();
    for message in messages {
        text.push_str(&format!("event: message\ndata: {message}\n\n"));
    }
    let mut masker = BodyMasker::new(&ctx.masker, BodyKind::Sse);
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
    let mut legacy = None;
    for piece in pieces {
        if deliver(
            ctx,
            out,
            &mut stream,
            &mut legacy,
            piece,
            held.session.as_deref(),
        )
        .await
        .is_err()
        {
            break;
        }
    }
    if source == EventSource::Upstream {
        record_masked(
            ctx,
            Direction::Down,
            std::mem::take(&mut masker.report),
            held.masking.apply.responses(),
        )
        .await;
    }
}

fn target_masking(ctx: &HttpSession) -> Masking {
    Masking {
        apply: ctx.target.mask.unwrap_or_default(),
        record_raw: ctx.target.record_raw,
    }
}

/// Records the request body (masked unless `record_raw`) and returns what to forward.
async fn mask_request_body(ctx: &HttpSession, body: Bytes, masking: Masking) -> Bytes {
    if body.is_empty() {
        return body;
    }
    if !masking.apply.requests() {
        // The upstream gets the body as sent, so only the record's copy is masked, and that
        // is done off the data path.
        let (masker, target, raw) = (ctx.masker.clone(), ctx.target.name.clone(), body.clone());
        record_later(ctx, move || {
            let mut report = MaskReport::default();
            let recorded = if masking.record_raw {
                raw
            } else {
                masker.mask_body(&raw, &mut report).map_or(raw, Bytes::from)
            };
            let chunk = RecordBody::Data(DataChunk::new(Direction::Up, recorded));
            std::iter::once(chunk)
                .chain(masked_record(&target, Direction::Up, report, false))
                .collect()
        })
        .await;
        return body;
    }
    // The upstream gets the masked body, so it is masked here, on the data path.
    let mut report = MaskReport::default();
    let masked = ctx.masker.mask_body(&body, &mut report).map(Bytes::from);
    let recorded = match (&masked, masking.record_raw) {
        (Some(masked), false) => masked.clone(),
        _ => body.clone(),
    };
    record_data(ctx, Direction::Up, recorded).await;
    record_masked(ctx, Direction::Up, report, true).await;
    masked.unwrap_or(body)
}

async fn record_masked(
    ctx: &HttpSession,
    direction: Direction,
    report: MaskReport,
    peer_saw_masked: bool,
) {
    if let Some(masked) = masked_record(&ctx.target.name, direction, report, peer_saw_masked) {
        record(ctx, masked).await;
    }
}

/// Counts what was masked, and says so in a record; None when nothing was.
fn masked_record(
    target: &str,
    direction: Direction,
    report: MaskReport,
    peer_saw_masked: bool,
) -> Option<RecordBody> {
    if report.is_empty() {
        return None;
    }
    for (detector, count) in &report.0 {
        SecretsMasked {
            target,
            direction,
            detector,
            count: *count,
        }
        .emit();
    }
    Some(RecordBody::Masked(MaskedBody {
        direction,
        detectors: report,
        peer_saw_masked,
    }))
}

/// How one response body is read, masked and recorded as it streams.
struct ResponseStream {
    parse: ResponseParse,
    mcp_session: Option<String>,
    /// The requests this answers (id, method), for a message too large to read.
    answers: Arc<Vec<(Value, Option<String>)>>,
    limit: usize,
    masking: Masking,
    /// The body's kind when it is masked; None when it passes through untouched.
    kind: Option<BodyKind>,
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

/// Streams one response body to the client: each frame is masked (per SSE event, whole JSON
/// body, or text window), recorded, read for MCP messages, and forwarded.
async fn pump(
    ctx: &HttpSession,
    mut body: Incoming,
    ready: Ready,
    out: &mut Outlet<'_>,
    mut stream: ResponseStream,
) -> Option<hyper::Error> {
    let mcp_session = stream.mcp_session.take();
    let session = mcp_session.as_deref();
    let mut masker = stream
        .kind
        .take()
        .map(|kind| BodyMasker::new(&ctx.masker, kind));
    // Set once a legacy HTTP+SSE stream announces its POST endpoint.
    let mut legacy: Option<(String, tokio::sync::mpsc::UnboundedReceiver<Value>)> = None;
    let mut injected: Vec<Value> = Vec::new();
    let mut complete = false;
    let mut upstream_error = None;
    let mut ready = Some(ready);
    'frames: loop {
        let (data, end) = match ready.take() {
            Some(ready) => ready,
            None => match next_frame(&mut body, ctx, &mut legacy).await {
                NextFrame::Data(data) => gather_ready(&mut body, data),
                NextFrame::Injected(message) => {
                    injected.push(message);
                    (Bytes::new(), None)
                }
                NextFrame::End(end) => (Bytes::new(), Some(end)),
                NextFrame::ClientGone => break,
            },
        };
        let pieces = match &mut masker {
            Some(masker) => masker.feed(&data),
            None if data.is_empty() => Vec::new(),
            None => vec![Piece {
                raw: data,
                masked: None,
            }],
        };
        for piece in pieces {
            if deliver(ctx, out, &mut stream, &mut legacy, piece, session)
                .await
                .is_err()
            {
                break 'frames; // the client went away
            }
        }
        match end {
            Some(Ok(())) => {
                complete = true;
                break;
            }
            Some(Err(e)) => {
                upstream_error = Some(e);
                break;
            }
            None => {}
        }
        let between_events = !masker.as_ref().is_some_and(BodyMasker::holding);
        if between_events
            && inject(ctx, out, &stream.parse, &mut injected, session)
                .await
                .is_err()
        {
            break;
        }
    }
    if let Some(masker) = &mut masker {
        if complete {
            for piece in masker.finish() {
                if deliver(ctx, out, &mut stream, &mut legacy, piece, session)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        let report = std::mem::take(&mut masker.report);
        record_masked(
            ctx,
            Direction::Down,
            report,
            stream.masking.apply.responses(),
        )
        .await;
    }
    if let Some((endpoint, _)) = legacy {
        ctx.mcp_sessions.unregister_legacy_stream(&endpoint);
    }
    match stream.parse {
        ResponseParse::Json(buf) => record_mcp_in(ctx, vec![buf], session, "json").await,
        ResponseParse::JsonTooLarge(bytes) => {
            let truncated = mcp::truncated_answers(
                &stream.answers,
                bytes,
                stream.limit as u64,
                session,
                "json",
            );
            record_later(ctx, move || {
                truncated.into_iter().map(RecordBody::McpMessage).collect()
            })
            .await;
        }
        _ => {}
    }
    upstream_error
}

/// What a streaming response's pump waits for next.
enum NextFrame {
    Data(Bytes),
    /// A gateway message for a legacy HTTP+SSE stream.
    Injected(Value),
    End(Result<(), hyper::Error>),
    ClientGone,
}

async fn next_frame(
    body: &mut Incoming,
    ctx: &HttpSession,
    legacy: &mut Option<(String, tokio::sync::mpsc::UnboundedReceiver<Value>)>,
) -> NextFrame {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            Some(message) = async {
                match legacy.as_mut() {
                    Some((_, rx)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => return NextFrame::Injected(message),
            _ = ctx.client_gone.cancelled() => return NextFrame::ClientGone,
        };
        match frame {
            None => return NextFrame::End(Ok(())),
            Some(Err(e)) => return NextFrame::End(Err(e)),
            // Trailers carry nothing to forward here.
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return NextFrame::Data(data);
                }
            }
        }
    }
}

/// Streams a response body to the client; an upstream that dies mid-body cuts the client's
/// response too, so it cannot pass for complete.
async fn stream_body(
    ctx: Arc<HttpSession>,
    body: Incoming,
    ready: Ready,
    mut out: Outlet<'static>,
    stream: ResponseStream,
) {
    let Some(e) = pump(&ctx, body, ready, &mut out, stream).await else {
        return;
    };
    tracing::warn!(target_name = %ctx.target.name, error = %e, "upstream died mid-response; the client's response is cut");
    if let Outlet::Stream(tx) = out {
        tx.abort(std::io::Error::other(format!(
            "upstream died mid-response: {e}"
        )));
    }
}

/// What a body had delivered so far, and how it ended, if it did.
type Ready = (Bytes, Option<Result<(), hyper::Error>>);

/// Most a response pump gathers before it masks, records and forwards.
const GATHER_BYTES: usize = 64 << 10;

/// Appends the frames the upstream has already delivered, so that a burst of small SSE
/// events is masked, recorded and written to the client once rather than event by event.
/// Also returns how the body ended, if it did.
fn gather_ready(body: &mut Incoming, mut first: Bytes) -> Ready {
    let mut gathered: Option<BytesMut> = None;
    let mut end = None;
    while gathered.as_ref().map_or(first.len(), |g| g.len()) < GATHER_BYTES {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    match &mut gathered {
                        None if first.is_empty() => first = data,
                        None => {
                            let mut both = BytesMut::from(&first[..]);
                            both.extend_from_slice(&data);
                            gathered = Some(both);
                        }
                        Some(gathered) => gathered.extend_from_slice(&data),
                    }
                }
            }
            Some(Some(Err(e))) => {
                end = Some(Err(e));
                break;
            }
            Some(None) => {
                end = Some(Ok(()));
                break;
            }
            None => break,
        }
    }
    (gathered.map_or(first, BytesMut::freeze), end)
}

/// Records one piece of a response (masked unless `record_raw`), reads MCP messages from
/// what was recorded, and forwards it (masked when responses are).
async fn deliver(
    ctx: &HttpSession,
    out: &mut Outlet<'_>,
    stream: &mut ResponseStream,
    legacy: &mut Option<(String, tokio::sync::mpsc::UnboundedReceiver<Value>)>,
    piece: Piece,
    session: Option<&str>,
) -> Result<(), ()> {
    let recorded = if stream.masking.record_raw {
        piece.raw.clone()
    } else {
        piece.masked_or_raw().clone()
    };
    let forwarded = if stream.masking.apply.responses() {
        piece.masked_or_raw().clone()
    } else {
        piece.raw
    };
    if let ResponseParse::SseForRecord(parser) = &stream.parse {
        let (parser, session) = (parser.clone(), session.map(str::to_string));
        let (answers, limit) = (stream.answers.clone(), stream.limit as u64);
        // The chunk and the messages in it, in one handoff.
        record_later(ctx, move || {
            let mut parser = parser.lock().unwrap_or_else(PoisonError::into_inner);
            let events = parser.feed(&recorded);
            let mut records = vec![RecordBody::Data(DataChunk::new(Direction::Down, recorded))];
            records.extend(mcp_records(
                events.iter().map(|event| event.data.as_bytes()),
                session.as_deref(),
                "sse",
            ));
            for bytes in parser.take_oversized() {
                let truncated =
                    mcp::truncated_answers(&answers, bytes, limit, session.as_deref(), "sse");
                records.extend(truncated.into_iter().map(RecordBody::McpMessage));
            }
            records
        })
        .await;
        return out.send(forwarded).await;
    }
    record_data(ctx, Direction::Down, recorded.clone()).await;
    match &mut stream.parse {
        ResponseParse::Sse(parser) => {
            let mut datas = Vec::new();
            for event in parser.feed(&recorded) {
                if event.event.as_deref() == Some("endpoint") && legacy.is_none() {
                    let rx = ctx.mcp_sessions.register_legacy_stream(&event.data);
                    *legacy = Some((event.data.clone(), rx));
                }
                datas.push(event.data.into_bytes());
            }
            let oversized = parser.take_oversized();
            record_mcp_in(ctx, datas, session, "sse").await;
            for bytes in oversized {
                let truncated =
                    mcp::truncated_answers(&[], bytes, stream.limit as u64, session, "sse");
                record_later(ctx, move || {
                    truncated.into_iter().map(RecordBody::McpMessage).collect()
                })
                .await;
            }
        }
        ResponseParse::Json(buf) if buf.len() + recorded.len() <= stream.limit => {
            buf.extend_from_slice(&recorded)
        }
        ResponseParse::Json(buf) => {
            let seen = (buf.len() + recorded.len()) as u64;
            stream.parse = ResponseParse::JsonTooLarge(seen);
        }
        ResponseParse::JsonTooLarge(seen) => *seen += recorded.len() as u64,
        ResponseParse::None | ResponseParse::SseForRecord(_) => {}
    }
    out.send(forwarded).await
}

/// Writes queued gateway messages into an SSE stream, only between events.
async fn inject(
    ctx: &HttpSession,
    out: &mut Outlet<'_>,
    parse: &ResponseParse,
    queued: &mut Vec<Value>,
    session: Option<&str>,
) -> Result<(), ()> {
    if queued.is_empty() || !matches!(parse, ResponseParse::Sse(p) if p.at_boundary()) {
        return Ok(());
    }
    for message in queued.drain(..) {
        record_mcp(
            ctx,
            mcp::summarize(&message, Direction::Down, session, "sse"),
        )
        .await;
        let event = Bytes::from(format!("event: message\ndata: {message}\n\n"));
        record_data(ctx, Direction::Down, event.clone()).await;
        out.send(event).await?;
    }
    Ok(())
}

/// An MCP POST body read and decided, before anything is recorded or forwarded.
struct McpEvaluation {
    /// Parse error text when the body is not JSON-RPC.
    parse_error: Option<String>,
    /// The request's messages, with the policy's decision on each that has a method. Their
    /// summaries are made on the record writer, off the data path.
    messages: Vec<(Value, Option<Decision>)>,
    /// (JSON-RPC id, refusal text) of every message that must not go through.
    refusals: Vec<(Option<Value>, String)>,
    /// The target's masking, or the first matching rule's override.
    masking: Masking,
    /// The message a `hold` rule matched; the whole request waits on it.
    held: Option<HeldCall>,
}

/// A request message that waits for approval.
struct HeldCall {
    id: Value,
    method: String,
    tool: Option<String>,
    arguments: Option<Value>,
    decision: Decision,
}

fn evaluate_mcp(ctx: &HttpSession, headers: &HeaderMap, body: &Bytes) -> McpEvaluation {
    let mut evaluation = McpEvaluation {
        parse_error: None,
        messages: Vec::new(),
        refusals: Vec::new(),
        masking: target_masking(ctx),
        held: None,
    };
    let messages = match mcp::parse_messages(body) {
        Ok(messages) => messages,
        Err(e) => {
            evaluation.parse_error = Some(e.to_string());
            return evaluation;
        }
    };
    let header_method = header_str(headers, "mcp-method");
    let header_name = header_str(headers, "mcp-name");
    let mut overridden = false;
    let count = messages.len();
    for message in messages {
        let fields = mcp::Fields::of(&message);
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
            None => ctx.policy.decide(&crate::policy::Request {
                target: &ctx.target.name,
                workload: &ctx.workload,
                method,
                tool: fields.tool,
                arguments: fields.arguments,
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
                .push((fields.id.cloned(), refusal_text(&decision))),
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
                refusal_text(&held.decision)
            ),
        ));
    }
    evaluation
}

/// Records the request's MCP messages (masked unless `record_raw`); returns the response to
/// send instead of forwarding, if any.
async fn refuse(
    ctx: &HttpSession,
    evaluation: McpEvaluation,
    masking: Masking,
    session: Option<&str>,
    legacy_endpoint: Option<&str>,
) -> Option<Response<ProxyBody>> {
    if let Some(error) = evaluation.parse_error {
        let reply = mcp::error_response(
            &Value::Null,
            -32700,
            &format!("Parse error: {error} (rejected by Interlock)"),
        );
        return Some(generated_json(ctx, StatusCode::BAD_REQUEST, &reply, session).await);
    }
    let message_count = evaluation.messages.len();
    let (masker, messages) = (ctx.masker.clone(), evaluation.messages);
    let session_id = session.map(str::to_string);
    record_later(ctx, move || {
        messages
            .into_iter()
            .map(|(message, decision)| {
                let mut summary =
                    mcp::summarize(&message, Direction::Up, session_id.as_deref(), "json");
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
                .map(|id| mcp::error_response(id, mcp::POLICY_DENIED, text))
        })
        .collect();
    if let Some(accepted) = answer_on_legacy_stream(ctx, legacy_endpoint, &errors).await {
        return Some(accepted);
    }
    let reply = match (errors.len(), message_count) {
        (_, 1) => errors.into_iter().next().unwrap_or(Value::Null),
        _ => Value::Array(errors),
    };
    if reply.is_null() {
        // Only notifications were refused: nothing to answer but an acceptance.
        return Some(generated(ctx, StatusCode::ACCEPTED, "application/json", Bytes::new()).await);
    }
    Some(generated_json(ctx, StatusCode::OK, &reply, session).await)
}

/// Legacy HTTP+SSE: answers travel on the client's GET stream, and the POST gets 202. None
/// when `uri` is not a legacy endpoint (or its stream is gone).
async fn answer_on_legacy_stream(
    ctx: &HttpSession,
    uri: Option<&str>,
    answers: &[Value],
) -> Option<Response<ProxyBody>> {
    let uri = uri?;
    if !answers
        .iter()
        .all(|a| ctx.mcp_sessions.inject_legacy(uri, a.clone()))
    {
        return None;
    }
    Some(
        generated(
            ctx,
            StatusCode::ACCEPTED,
            "text/plain",
            Bytes::from_static(b"Accepted"),
        )
        .await,
    )
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

fn refusal_text(decision: &Decision) -> String {
    let rule = decision.rule.as_deref().unwrap_or("default");
    let reason = decision.reason.as_deref().unwrap_or("no reason given");
    match decision.action {
        Action::Hold => format!("held by Interlock policy rule `{rule}` ({reason})"),
        _ => format!("denied by Interlock policy rule `{rule}`: {reason}"),
    }
}

async fn generated_json(
    ctx: &HttpSession,
    status: StatusCode,
    reply: &Value,
    session: Option<&str>,
) -> Response<ProxyBody> {
    let messages = match reply {
        Value::Array(batch) => batch.clone(),
        single => vec![single.clone()],
    };
    for message in &messages {
        record_mcp(
            ctx,
            mcp::summarize(message, Direction::Down, session, "json"),
        )
        .await;
    }
    let body = serde_json::to_vec(reply).expect("JSON values serialize");
    generated(ctx, status, "application/json", body.into()).await
}

/// A response the gateway makes itself, recorded as such.
async fn generated(
    ctx: &HttpSession,
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<ProxyBody> {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    record_head(ctx, status, &headers, true).await;
    if !body.is_empty() {
        record_data(ctx, Direction::Down, body.clone()).await;
    }
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Headers as recorded: credentials are redacted whole, other values masked.
fn recordable_headers(
    masker: &Masker,
    record_raw: bool,
    headers: &HeaderMap,
) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = match name.as_str() {
                "authorization" | "proxy-authorization" | "cookie" | "set-cookie" => {
                    "[REDACTED]".to_string()
                }
                _ => {
                    let mut text = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    if !record_raw {
                        masker.mask_string(&mut text, &mut MaskReport::default());
                    }
                    text
                }
            };
            (name.to_string(), value)
        })
        .collect()
}

async fn record(ctx: &HttpSession, body: crate::recording::record::RecordBody) {
    // A failed record means the recorder stopped (shutdown); the session then ends anyway.
    let _ = ctx.session.record(body).await;
}

async fn record_data(ctx: &HttpSession, direction: Direction, data: Bytes) {
    let _ = ctx.session.data(direction, data).await;
}

/// Records what `build` makes from what was seen, off the data path (see
/// `SessionRecorder::record_later`).
async fn record_later(ctx: &HttpSession, build: impl FnOnce() -> Vec<RecordBody> + Send + 'static) {
    let _ = ctx.session.record_later(Box::new(build)).await;
}

/// Records the MCP messages in parts of an answer (SSE events' data, or a JSON body).
async fn record_mcp_in(
    ctx: &HttpSession,
    parts: Vec<Vec<u8>>,
    session: Option<&str>,
    transport: &'static str,
) {
    if parts.is_empty() {
        return;
    }
    let session = session.map(str::to_string);
    record_later(ctx, move || {
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
        .flat_map(|part| mcp::parse_messages(part).unwrap_or_default())
        .map(move |message| {
            RecordBody::McpMessage(mcp::summarize(
                &message,
                Direction::Down,
                session,
                transport,
            ))
        })
}

async fn record_mcp(ctx: &HttpSession, message: McpMessage) {
    record(ctx, RecordBody::McpMessage(message)).await;
}

//! What a protocol inspector plugs into the HTTP layer: a decision on each request before
//! anything goes upstream, and a reader for each answer as it streams back. MCP is one
//! inspector; a target of protocol `http` gets `Plain`, which records and forwards.
use std::{future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use hyper::{
    Response, StatusCode,
    http::{request, response},
    upgrade::OnUpgrade,
};

use super::{
    reply::{ProxyBody, generated_text},
    tunnel,
    upstream::Upstream,
};
use crate::{
    masking::stream::BodyKind,
    protocols::l7::{Exchange, Masking, Pump},
    vocabulary::Direction,
};

pub trait Inspector: Send + Sync + 'static {
    /// What the inspector keeps of a forwarded request, to read its answer.
    type Answering: Send + 'static;
    type Reader: ResponseReader;

    /// Adjusts a request's head before anything reads it (the API-server path asks for JSON
    /// where a client asked for protobuf, so that answers can be read and masked).
    fn prepare(&self, _head: &mut request::Parts) {}

    /// Decides a request whose complete body is `body`. The inspector records the body (with
    /// `ExchangeLog::request_body`, under the masking it chose) and what it read in it.
    fn on_request(
        &self,
        exchange: &Arc<Exchange>,
        upstream: &Arc<Upstream>,
        head: &request::Parts,
        body: Bytes,
    ) -> impl Future<Output = Verdict<Self::Answering>> + Send;

    /// The protocol's own answer to a request the gateway refuses before reading it (a
    /// bearer token that is not the pod's): by default a 403 with the reason.
    fn refused(
        &self,
        exchange: &Exchange,
        _head: &request::Parts,
        _body: &Bytes,
        reason: String,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        generated_text(exchange, StatusCode::FORBIDDEN, reason)
    }

    /// How an answer's body is read for masking, when the request says more than its content
    /// type does (a watch is JSON lines).
    fn body_kind(&self, _answering: &Self::Answering, kind: BodyKind) -> BodyKind {
        kind
    }

    /// Relays a connection the upstream upgraded (101), on the connection's own task. By
    /// default as bytes, recorded like a tcp session.
    fn upgraded(
        &self,
        exchange: Arc<Exchange>,
        _answering: Self::Answering,
        _head: &response::Parts,
        client: OnUpgrade,
        upstream: OnUpgrade,
    ) -> Pump {
        Box::pin(tunnel::relay_bytes(exchange, client, upstream))
    }

    /// The gateway's own answer to a request it could not take or forward (a body over the
    /// limit, an upstream that failed or was too slow): by default plain text. `answering`
    /// is there once the inspector let the request go.
    fn failed(
        &self,
        exchange: &Exchange,
        _answering: Option<&Self::Answering>,
        status: StatusCode,
        message: String,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        generated_text(exchange, status, message)
    }

    /// A reader for the answer to a forwarded request; `get_stream` for a GET's answer.
    fn on_response(
        &self,
        exchange: &Exchange,
        answering: Self::Answering,
        head: &response::Parts,
        kind: BodyKind,
        get_stream: bool,
    ) -> Self::Reader;
}

/// What becomes of one request.
pub enum Verdict<A> {
    /// Send it upstream.
    Forward(Forward<A>),
    /// Refused or answered by the gateway, in the protocol's own terms; nothing goes upstream.
    Answer(Response<ProxyBody>),
    /// Waits for a human decision, then is forwarded or answered. Nothing has gone upstream
    /// yet, so the upstream response timeout does not run while it waits.
    Hold(Pin<Box<dyn Future<Output = Verdict<A>> + Send>>),
}

pub struct Forward<A> {
    /// The body to send: masked when the masking says requests are.
    pub body: Bytes,
    pub masking: Masking,
    pub answering: A,
}

/// Reads one response body as it streams. Every piece passes through `on_piece` as it is
/// recorded (masked unless `record_raw`), before it is forwarded.
pub trait ResponseReader: Send + 'static {
    /// Records the piece, and whatever the inspector reads in it.
    fn on_piece(&mut self, exchange: &Exchange, recorded: Bytes)
    -> impl Future<Output = ()> + Send;

    /// Resolves when the gateway has something to write into this stream; never, for most.
    fn injection(&mut self) -> impl Future<Output = ()> + Send;

    /// What the gateway writes into the stream now, recorded; called between events only.
    fn inject(&mut self, exchange: &Exchange) -> impl Future<Output = Vec<Bytes>> + Send;

    /// Records what the inspector gathered once the body ends, complete or not.
    fn finish(self, exchange: &Exchange) -> impl Future<Output = ()> + Send;
}

/// The inspector of `http` targets: every request is recorded and forwarded as it is.
pub struct Plain;

impl Inspector for Plain {
    type Answering = ();
    type Reader = PlainReader;

    async fn on_request(
        &self,
        exchange: &Arc<Exchange>,
        _upstream: &Arc<Upstream>,
        _head: &request::Parts,
        body: Bytes,
    ) -> Verdict<()> {
        let masking = exchange.target_masking();
        let body = exchange.log.request_body(body, masking).await;
        Verdict::Forward(Forward {
            body,
            masking,
            answering: (),
        })
    }

    fn on_response(
        &self,
        _exchange: &Exchange,
        (): (),
        _head: &response::Parts,
        _kind: BodyKind,
        _get_stream: bool,
    ) -> PlainReader {
        PlainReader
    }
}

/// Records each piece of an answer and reads nothing in it.
pub struct PlainReader;

impl ResponseReader for PlainReader {
    async fn on_piece(&mut self, exchange: &Exchange, recorded: Bytes) {
        exchange.log.data(Direction::Down, recorded).await;
    }

    async fn injection(&mut self) {
        std::future::pending().await
    }

    async fn inject(&mut self, _exchange: &Exchange) -> Vec<Bytes> {
        Vec::new()
    }

    async fn finish(self, _exchange: &Exchange) {}
}

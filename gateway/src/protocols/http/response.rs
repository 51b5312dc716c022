//! Answers from upstream, streamed back frame by frame: each frame is masked (per SSE event,
//! whole JSON body, or text window), recorded and read by the inspector, then forwarded, so
//! progress notifications reach the client as they are sent. A 101 answer turns the
//! connection into a tunnel, which the inspector relays.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::{BodyExt, Either, Full, channel::Channel};
use hyper::{Request, Response, StatusCode, body::Incoming, header, upgrade::OnUpgrade};

use super::{
    inspect::{Forward, Inspector, ResponseReader},
    reply::{ProxyBody, header_str},
    upstream::Upstream,
};
use crate::{
    masking::stream::{BodyKind, BodyMasker, Piece},
    protocols::l7::{Exchange, Masking},
    vocabulary::Direction,
};

/// Most a response pump gathers before it masks, records and forwards.
const GATHER_BYTES: usize = 64 << 10;

/// The client stopped reading: what was to be sent has nowhere to go.
#[derive(Debug)]
pub struct ClientGone;

/// Where a response's forwarded bytes go.
pub enum Outlet<'a> {
    /// Streamed to the client as they are processed.
    Stream(http_body_util::channel::Sender<Bytes, std::io::Error>),
    /// Gathered, for a body that was complete on arrival and goes out with its head.
    Whole(&'a mut BytesMut),
}

impl Outlet<'_> {
    pub async fn send(&mut self, data: Bytes) -> Result<(), ClientGone> {
        match self {
            Outlet::Stream(tx) => tx.send_data(data).await.map_err(|_| ClientGone),
            Outlet::Whole(whole) => {
                whole.extend_from_slice(&data);
                Ok(())
            }
        }
    }
}

/// How one response body is masked and read as it streams.
pub struct ResponseStream<R> {
    reader: R,
    masking: Masking,
    /// The body's kind when it is masked; None when it passes through untouched.
    kind: Option<BodyKind>,
}

impl<R: ResponseReader> ResponseStream<R> {
    pub fn new(reader: R, masking: Masking, kind: BodyKind) -> Self {
        // Masking runs unless neither the client nor the record gets masked text, or the
        // body is binary.
        let masks = (masking.apply.responses() || !masking.record_raw) && kind != BodyKind::Binary;
        ResponseStream {
            reader,
            masking,
            kind: masks.then_some(kind),
        }
    }

    /// Whether the forwarded body differs from the upstream's.
    fn changes_body(&self) -> bool {
        self.kind.is_some() && self.masking.apply.responses()
    }
}

/// Sends a request upstream and streams its answer back through a pump.
pub async fn forward<I: Inspector>(
    exchange: &Arc<Exchange>,
    upstream: &Upstream,
    inspector: &I,
    request: Request<Full<Bytes>>,
    forward: Forward<I::Answering>,
    client_upgrade: OnUpgrade,
) -> Response<ProxyBody> {
    let get_stream = request.method() == hyper::Method::GET;
    let target = &exchange.target;
    let waited = target.upstream_response_timeout;
    let mut response = match tokio::time::timeout(waited, upstream.send(request)).await {
        Ok(Ok(response)) => response,
        Err(_elapsed) => {
            upstream.mark_stale();
            let message = format!(
                "upstream {} sent no response within upstream_response_timeout ({}) of target {}",
                target.destination(),
                humantime::format_duration(waited),
                target.name
            );
            let status = StatusCode::GATEWAY_TIMEOUT;
            return inspector
                .failed(exchange, Some(&forward.answering), status, message)
                .await;
        }
        Ok(Err(e)) => {
            let message = format!("upstream {} failed: {e}", target.destination());
            let status = StatusCode::BAD_GATEWAY;
            return inspector
                .failed(exchange, Some(&forward.answering), status, message)
                .await;
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (parts, _) = response.into_parts();
        exchange
            .log
            .response_head(parts.status, &parts.headers, false)
            .await;
        exchange.drive(inspector.upgraded(
            exchange.clone(),
            forward.answering,
            &parts,
            client_upgrade,
            upstream_upgrade,
        ));
        return Response::from_parts(parts, Either::Left(Full::new(Bytes::new())));
    }
    let (mut parts, mut body) = response.into_parts();
    exchange
        .log
        .response_head(parts.status, &parts.headers, false)
        .await;
    parts.headers.remove(header::TRANSFER_ENCODING);
    let kind = BodyKind::of(header_str(&parts.headers, "content-type"));
    let kind = inspector.body_kind(&forward.answering, kind);
    let reader = inspector.on_response(exchange, forward.answering, &parts, kind, get_stream);
    let stream = ResponseStream::new(reader, forward.masking, kind);
    let body_changes = stream.changes_body();
    let ready = gather_ready(&mut body, Bytes::new());
    if matches!(ready.1, Some(Ok(()))) && !ready.0.is_empty() {
        // The whole body came with the head (most answers to a call do): it goes out with
        // the head in one write, so the client wakes once, not again for the last chunk.
        let mut whole = BytesMut::new();
        // The body is complete, so the upstream cannot fail it any more.
        let _ = pump(
            exchange,
            body,
            ready,
            &mut Outlet::Whole(&mut whole),
            stream,
        )
        .await;
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
    exchange.drive(Box::pin(stream_body(
        exchange.clone(),
        body,
        ready,
        Outlet::Stream(tx),
        stream,
    )));
    Response::from_parts(parts, Either::Right(channel))
}

/// Streams a response body to the client; an upstream that dies mid-body cuts the client's
/// response too, so it cannot pass for complete.
pub async fn stream_body<R: ResponseReader>(
    exchange: Arc<Exchange>,
    body: Incoming,
    ready: Ready,
    mut out: Outlet<'static>,
    stream: ResponseStream<R>,
) {
    let Some(e) = pump(&exchange, body, ready, &mut out, stream).await else {
        return;
    };
    tracing::warn!(target_name = %exchange.target.name, error = %e, "upstream died mid-response; the client's response is cut");
    if let Outlet::Stream(tx) = out {
        tx.abort(std::io::Error::other(format!(
            "upstream died mid-response: {e}"
        )));
    }
}

/// Streams one response body to the client; returns the upstream's error if it failed it.
async fn pump<R: ResponseReader>(
    exchange: &Exchange,
    mut body: Incoming,
    ready: Ready,
    out: &mut Outlet<'_>,
    mut stream: ResponseStream<R>,
) -> Option<hyper::Error> {
    let mut masker = stream
        .kind
        .take()
        .map(|kind| BodyMasker::new(exchange.masker(), kind));
    let mut complete = false;
    let mut upstream_error = None;
    let mut ready = Some(ready);
    'frames: loop {
        let (data, end) = match ready.take() {
            Some(ready) => ready,
            None => match next_frame(&mut body, exchange, &mut stream.reader).await {
                NextFrame::Data(data) => gather_ready(&mut body, data),
                NextFrame::Injection => (Bytes::new(), None),
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
            if deliver(exchange, out, &mut stream, piece).await.is_err() {
                break 'frames;
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
        if !masker.as_ref().is_some_and(BodyMasker::holding) {
            for event in stream.reader.inject(exchange).await {
                if out.send(event).await.is_err() {
                    break 'frames;
                }
            }
        }
    }
    if let Some(masker) = &mut masker {
        if complete {
            for piece in masker.finish() {
                if deliver(exchange, out, &mut stream, piece).await.is_err() {
                    break;
                }
            }
        }
        let report = std::mem::take(&mut masker.report);
        exchange
            .log
            .masked(Direction::Down, report, stream.masking.apply.responses())
            .await;
    }
    stream.reader.finish(exchange).await;
    upstream_error
}

/// What a streaming response's pump waits for next.
enum NextFrame {
    Data(Bytes),
    /// The gateway has something to write into the stream.
    Injection,
    End(Result<(), hyper::Error>),
    ClientGone,
}

async fn next_frame(
    body: &mut Incoming,
    exchange: &Exchange,
    reader: &mut impl ResponseReader,
) -> NextFrame {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = reader.injection() => return NextFrame::Injection,
            _ = exchange.client_gone.cancelled() => return NextFrame::ClientGone,
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

/// What a body had delivered so far, and how it ended, if it did.
pub type Ready = (Bytes, Option<Result<(), hyper::Error>>);

/// Appends the frames the upstream has already delivered, so that a burst of small SSE
/// events is masked, recorded and written to the client once rather than event by event.
/// Also returns how the body ended, if it did.
pub fn gather_ready(body: &mut Incoming, mut first: Bytes) -> Ready {
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

/// Records one piece of a response (masked unless `record_raw`) through the reader, and
/// forwards it (masked when responses are).
pub async fn deliver<R: ResponseReader>(
    exchange: &Exchange,
    out: &mut Outlet<'_>,
    stream: &mut ResponseStream<R>,
    piece: Piece,
) -> Result<(), ClientGone> {
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
    stream.reader.on_piece(exchange, recorded).await;
    out.send(forwarded).await
}

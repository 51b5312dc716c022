//! The HTTP layer for `http` and `mcp` targets: hyper on both sides of one client
//! connection. The client may speak HTTP/1.1 or HTTP/2 (told apart by its first bytes); the
//! upstream is spoken to in HTTP/1.1, or in HTTP/2 where TLS agreed on it. An inspector decides each request before anything is
//! forwarded, and reads each answer as it streams back.
//! - `request`: one request, from head to verdict;
//! - `response`: the answer streamed back, and upgrades;
//! - `upstream`: the upstream connections, and redial;
//! - `tunnel`: an upgraded connection relayed as bytes;
//! - `inspect`: what an inspector implements;
//! - `reply`: answers the gateway makes itself.
pub mod inspect;
pub mod reply;
pub mod request;
pub mod response;
pub mod tunnel;
pub mod upstream;

use std::{
    convert::Infallible,
    future::poll_fn,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};

use self::{
    inspect::Inspector,
    upstream::{Connection, Redial, Upstream},
};
use crate::protocols::{
    error::{SessionError, SessionResult},
    l7::{Exchange, Pump},
};

/// What a session's task drives besides the client connection: its upstream connections,
/// then its pumps, all polled on every pass. (FuturesUnordered wakes its task again whenever
/// it has polled all of its futures, to be fair to other tasks; with sets this small that
/// was a spare pass over the whole session three times per call.)
struct Driven {
    upstream_queue: mpsc::UnboundedReceiver<Pump>,
    pump_queue: mpsc::UnboundedReceiver<Pump>,
    upstreams: Vec<Pump>,
    pumps: Vec<Pump>,
}

impl Driven {
    fn poll(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(upstream)) = self.upstream_queue.poll_recv(cx) {
            self.upstreams.push(upstream);
        }
        while let Poll::Ready(Some(pump)) = self.pump_queue.poll_recv(cx) {
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

/// The client connection, counting the bytes that cross its socket each way: the session's
/// `bytes_up` and `bytes_down` are the client's bytes on the wire, heads included.
struct Counted<S> {
    client: S,
    exchange: Arc<Exchange>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.client).poll_read(cx, buf);
        self.exchange.count_up(buf.filled().len() - before);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.client).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &polled {
            self.exchange.count_down(*written);
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
            self.exchange.count_down(*written);
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

/// Serves one client connection over any stream (TLS-terminated later) until it closes.
pub async fn serve<S, I>(
    client: S,
    upstream: Option<Connection>,
    redial: Redial,
    exchange: Arc<Exchange>,
    pump_queue: mpsc::UnboundedReceiver<Pump>,
    inspector: I,
) -> SessionResult
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    I: Inspector,
{
    let finish = |exchange: &Exchange, error| {
        let (bytes_up, bytes_down) = exchange.bytes();
        SessionResult {
            bytes_up,
            bytes_down,
            error,
        }
    };
    let (upstream, upstream_queue) =
        match Upstream::start(upstream, redial, &exchange.target.name).await {
            Ok(started) => started,
            Err(e) => return finish(&exchange, Some(SessionError::UpstreamHandshake(e))),
        };
    let mut driven = Driven {
        upstream_queue,
        pump_queue,
        upstreams: Vec::new(),
        pumps: Vec::new(),
    };
    let (upstream, inspector) = (Arc::new(upstream), Arc::new(inspector));
    let service_exchange = exchange.clone();
    let service = service_fn(move |request| {
        let (exchange, upstream) = (service_exchange.clone(), upstream.clone());
        let inspector = inspector.clone();
        async move {
            let response = request::handle(request, &exchange, &upstream, &*inspector).await;
            Ok::<_, Infallible>(response)
        }
    });
    let header_read_timeout = exchange.target.header_read_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also bounds an idle keep-alive connection: the wait for the next request's head.
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let counted = Counted {
        client,
        exchange: exchange.clone(),
    };
    let mut connection =
        pin!(builder.serve_connection_with_upgrades(TokioIo::new(counted), service));
    let mut stopped = pin!(exchange.hard_stop.cancelled());
    // The client side, the upstream side and every pump run in this one task, so a request
    // and its answer cross no task or thread: each such hop costs a wake-up and often a
    // context switch. The upstream side is polled both before and after the client side, so
    // an answer read from upstream reaches the client, and a request read from the client
    // goes upstream, in the same pass.
    let error = poll_fn(|cx| {
        driven.poll(cx);
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(result.err().map(|e| client_error(e, header_read_timeout)));
        }
        driven.poll(cx);
        match stopped.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(SessionError::Shutdown)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    // A response still streaming (a long-lived SSE GET) has nobody to go to any more; its
    // pump records what it had and ends. An upgraded tunnel runs on until either side ends.
    exchange.client_gone.cancel();
    poll_fn(|cx| {
        driven.poll(cx);
        if driven.pumps.is_empty() || stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
    finish(&exchange, error.or_else(|| exchange.take_end()))
}

/// Why the client's connection failed, as the session records it.
fn client_error(
    error: Box<dyn std::error::Error + Send + Sync>,
    header_read_timeout: std::time::Duration,
) -> SessionError {
    match error.downcast::<hyper::Error>() {
        Ok(e) if e.is_parse() || e.is_parse_too_large() => SessionError::MalformedRequest(*e),
        Ok(e) if e.is_timeout() => SessionError::HeaderReadTimeout(header_read_timeout),
        Ok(e) => SessionError::Client(e),
        Err(other) => SessionError::Client(other),
    }
}

//! The session's upstream side: HTTP/1.1 or HTTP/2 connections to the target, over plain
//! TCP or TLS, opened again when the upstream closed an idle one, and the form a request
//! takes to go there.
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, Uri, Version,
    body::Incoming,
    client::conn::{http1, http2},
    header::{self, HeaderValue},
    http::{request, uri},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::mpsc,
};

use crate::protocols::l7::Pump;

/// HTTP/2 pings on an otherwise quiet connection: a dead API server connection (a watch
/// that would wait for minutes) is noticed within `PING_EVERY + PING_TIMEOUT`.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Any stream an upstream connection runs over: TCP, or TLS over TCP.
pub trait UpstreamIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> UpstreamIo for T {}

/// One connection to the upstream, and whether it speaks HTTP/2 (as TLS ALPN agreed).
pub struct Connection {
    pub io: Box<dyn UpstreamIo>,
    pub http2: bool,
}

impl Connection {
    pub fn http1(io: impl UpstreamIo) -> Connection {
        Connection {
            io: Box::new(io),
            http2: false,
        }
    }

    /// New plain HTTP/1.1 connections through `dial`.
    pub fn plain_redial(dial: Dial) -> Redial {
        Box::new(move || {
            let connecting = dial();
            Box::pin(async move { connecting.await.map(Connection::http1) })
        })
    }
}

/// Opens a new TCP connection to the session's upstream.
pub type Dial =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> + Send + Sync>;

/// Opens a new connection to the session's upstream, ready for HTTP.
pub type Redial =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<Connection>> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting: {0}")]
    Redial(io::Error),
    #[error("connecting: {0}")]
    Handshake(hyper::Error),
    #[error("{0}")]
    Send(hyper::Error),
}

/// The sending half of the current connection.
enum Sender {
    /// One request at a time, each waiting for the previous answer.
    Http1(http1::SendRequest<Full<Bytes>>),
    /// Multiplexed: a clone sends, so a long watch holds up nothing.
    Http2(http2::SendRequest<Full<Bytes>>),
}

pub struct Upstream {
    /// None until a connection is made: when the first could not be, each request tries a
    /// new one, and a failure is answered to the client rather than closing its connection.
    sender: tokio::sync::Mutex<Option<Sender>>,
    redial: Redial,
    /// Set when a request timed out on the current HTTP/1.1 connection, which still owes its
    /// answer.
    stale: AtomicBool,
    /// Connections opened after the first, for the session's task to drive.
    connections: mpsc::UnboundedSender<Pump>,
    target_name: String,
}

impl Upstream {
    /// The upstream over its first connection (none: it could not be made), and the queue
    /// of the connections to drive: the first is already in it.
    pub async fn start(
        connection: Option<Connection>,
        redial: Redial,
        target_name: &str,
    ) -> Result<(Upstream, mpsc::UnboundedReceiver<Pump>), hyper::Error> {
        let (connections, queue) = mpsc::unbounded_channel();
        let sender = match connection {
            Some(connection) => {
                let (sender, connection) = handshake(connection).await?;
                let _ = connections.send(connection);
                Some(sender)
            }
            None => None,
        };
        let upstream = Upstream {
            sender: tokio::sync::Mutex::new(sender),
            redial,
            stale: AtomicBool::new(false),
            connections,
            target_name: target_name.to_string(),
        };
        Ok((upstream, queue))
    }

    /// The current connection still owes an answer that nobody waits for any more: the next
    /// request goes out on a new one. (An HTTP/2 stream is reset when its wait is dropped.)
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    /// Sends a request upstream. Servers close keep-alive connections that sit idle (uvicorn
    /// after 5 s), while the client's connection, and a held request, may wait far longer: a
    /// request that finds its upstream connection closed goes out on a new one.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.sender.lock().await;
        let stale = self.stale.swap(false, Ordering::Relaxed);
        if let Some(Sender::Http2(http2)) = &*sender
            && !http2.is_closed()
        {
            let mut http2 = http2.clone();
            drop(sender);
            let unsent = match http2.ready().await {
                Ok(()) => match http2.try_send_request(http2_form(request)).await {
                    Ok(response) => return Ok(response),
                    Err(mut e) => match e.take_message() {
                        Some(request) => request,
                        None => return Err(UpstreamError::Send(e.into_error())),
                    },
                },
                Err(_) => request,
            };
            return self
                .send_on_new(&mut *self.sender.lock().await, unsent)
                .await;
        }
        if let Some(Sender::Http1(http1)) = &mut *sender
            && !stale
        {
            let unsent = match http1.ready().await {
                Ok(()) => match http1.try_send_request(http1_form(request)).await {
                    Ok(response) => return Ok(response),
                    // Not a byte of it went out, so it can go again.
                    Err(mut e) => match e.take_message() {
                        Some(request) => request,
                        None => return Err(UpstreamError::Send(e.into_error())),
                    },
                },
                Err(_) => request,
            };
            return self.send_on_new(&mut sender, unsent).await;
        }
        self.send_on_new(&mut sender, request).await
    }

    /// Sends on a new connection, which becomes the current one.
    async fn send_on_new(
        &self,
        current: &mut Option<Sender>,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let connection = (self.redial)().await.map_err(UpstreamError::Redial)?;
        let (sender, connection) = handshake(connection)
            .await
            .map_err(UpstreamError::Handshake)?;
        let _ = self.connections.send(connection);
        tracing::debug!(target_name = %self.target_name, "the upstream had closed the idle connection; reconnected");
        match current.insert(sender) {
            Sender::Http1(http1) => {
                http1.ready().await.map_err(UpstreamError::Send)?;
                http1.send_request(http1_form(request)).await
            }
            Sender::Http2(http2) => {
                http2.ready().await.map_err(UpstreamError::Send)?;
                let sending = http2.clone().send_request(http2_form(request));
                sending.await
            }
        }
        .map_err(UpstreamError::Send)
    }
}

async fn handshake(connection: Connection) -> Result<(Sender, Pump), hyper::Error> {
    let io = TokioIo::new(connection.io);
    if connection.http2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await?;
        let connection = Box::pin(async move {
            let _ = connection.await;
        });
        return Ok((Sender::Http2(sender), connection));
    }
    let (sender, connection) = http1::handshake(io).await?;
    // With upgrades, a 101 answer hands the connection over to the tunnel.
    let connection = connection.with_upgrades();
    Ok((
        Sender::Http1(sender),
        Box::pin(async move {
            let _ = connection.await;
        }),
    ))
}

/// The request as it goes upstream, with the complete `body`. The proxy reads bodies, so it
/// must get them uncompressed; the body is complete, so the client's Expect was already
/// answered and its length is the body's own. Its form (origin or absolute, Host or
/// :authority) is settled by the connection it goes out on.
pub fn upstream_request(mut head: request::Parts, body: Bytes) -> Request<Full<Bytes>> {
    for name in [
        header::ACCEPT_ENCODING,
        header::EXPECT,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        head.headers.remove(name);
    }
    Request::from_parts(head, Full::new(body))
}

/// HTTP/1.1 in origin form, whatever the client spoke.
fn http1_form(mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    if request.version() == Version::HTTP_2 {
        // An HTTP/2 client names the host in the :authority pseudo-header, which HTTP/1.1
        // carries as Host.
        if let Some(authority) = request.uri().authority()
            && !request.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        *request.uri_mut() = request
            .uri()
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
    }
    *request.version_mut() = Version::HTTP_11;
    request
}

/// HTTP/2 in absolute form: an HTTP/1.1 client's Host becomes the :authority (HTTP/2 upstreams
/// are TLS, so the scheme is https).
fn http2_form(mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    if request.uri().authority().is_none()
        && let Some(host) = request.headers_mut().remove(header::HOST)
        && let Ok(authority) = uri::Authority::try_from(host.as_bytes())
    {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(uri::Scheme::HTTPS);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(uri::PathAndQuery::from_static("/"));
        }
        if let Ok(absolute) = Uri::from_parts(parts) {
            *request.uri_mut() = absolute;
        }
    }
    request.headers_mut().remove(header::HOST);
    *request.version_mut() = Version::HTTP_2;
    request
}

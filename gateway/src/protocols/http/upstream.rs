//! The session's upstream side: HTTP/1.1 connections to the target, opened again when the
//! upstream closed an idle one, and the form a request takes to go there.
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, Uri, Version,
    body::Incoming,
    client::conn::http1::SendRequest,
    header::{self, HeaderValue},
    http::request,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::mpsc};

use crate::protocols::l7::Pump;

/// Opens a new connection to the session's upstream.
pub type Redial =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("reconnecting: {0}")]
    Redial(io::Error),
    #[error("reconnecting: {0}")]
    Handshake(hyper::Error),
    #[error("{0}")]
    Send(hyper::Error),
}

pub struct Upstream {
    sender: tokio::sync::Mutex<SendRequest<Full<Bytes>>>,
    redial: Redial,
    /// Set when a request timed out on the current connection, which still owes its answer.
    stale: AtomicBool,
    /// Connections opened after the first, for the session's task to drive.
    connections: mpsc::UnboundedSender<Pump>,
    target_name: String,
}

impl Upstream {
    /// The upstream over its first connection, and the queue of the connections to drive:
    /// the first is already in it.
    pub async fn start(
        stream: TcpStream,
        redial: Redial,
        target_name: &str,
    ) -> Result<(Upstream, mpsc::UnboundedReceiver<Pump>), hyper::Error> {
        let (sender, connection) = handshake(stream).await?;
        let (connections, queue) = mpsc::unbounded_channel();
        let _ = connections.send(connection);
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
    /// request goes out on a new one.
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
        if self.stale.swap(false, Ordering::Relaxed) {
            *sender = self.redial().await?;
        }
        let unsent = match sender.ready().await {
            Ok(()) => match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                // Not a byte of it went out, so it can go again.
                Err(mut e) => match e.take_message() {
                    Some(request) => request,
                    None => return Err(UpstreamError::Send(e.into_error())),
                },
            },
            Err(_) => request,
        };
        *sender = self.redial().await?;
        sender.ready().await.map_err(UpstreamError::Send)?;
        sender
            .send_request(unsent)
            .await
            .map_err(UpstreamError::Send)
    }

    /// A new upstream connection, driven by the session's task like the first.
    async fn redial(&self) -> Result<SendRequest<Full<Bytes>>, UpstreamError> {
        let stream = (self.redial)().await.map_err(UpstreamError::Redial)?;
        let (sender, connection) = handshake(stream).await.map_err(UpstreamError::Handshake)?;
        let _ = self.connections.send(connection);
        tracing::debug!(target_name = %self.target_name, "the upstream had closed the idle connection; reconnected");
        Ok(sender)
    }
}

async fn handshake(stream: TcpStream) -> Result<(SendRequest<Full<Bytes>>, Pump), hyper::Error> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // With upgrades, a 101 answer hands the connection over to the tunnel.
    let connection = connection.with_upgrades();
    Ok((
        sender,
        Box::pin(async move {
            let _ = connection.await;
        }),
    ))
}

/// The request as it goes upstream: HTTP/1.1 in origin form, whatever the client spoke, with
/// the complete `body`. The proxy reads bodies, so it must get them uncompressed; the body is
/// complete, so the client's Expect was already answered and its length is the body's own.
pub fn upstream_request(mut head: request::Parts, body: Bytes) -> Request<Full<Bytes>> {
    for name in [
        header::ACCEPT_ENCODING,
        header::EXPECT,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        head.headers.remove(name);
    }
    if head.version == Version::HTTP_2 {
        // An HTTP/2 client names the host in the :authority pseudo-header, which HTTP/1.1
        // carries as Host.
        if let Some(authority) = head.uri.authority()
            && !head.headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            head.headers.insert(header::HOST, host);
        }
        head.uri = head
            .uri
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
    }
    head.version = Version::HTTP_11;
    Request::from_parts(head, Full::new(body))
}

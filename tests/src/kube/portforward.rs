//! `pods/NAME/portforward`, as kube-apiserver and the kubelet serve it. A pod's port is this
//! host's loopback port of the same number: a test starts its "pod" server there.
//!
//! Three ways in, all served:
//! - SPDY/3.1 over a plain upgrade (`Upgrade: SPDY/3.1`, kubectl up to 1.30);
//! - the same SPDY tunnelled in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`,
//!   kubectl 1.31 and later);
//! - `v4.channel.k8s.io` (the Python client): channel 2i carries port i's bytes and 2i+1 its
//!   errors, and each channel's first message from the server starts with the port.
//!
//! In SPDY, kubectl opens two streams per local connection, `error` then `data`, tied by a
//! `requestid` header; the server answers each with SYN_REPLY, copies the data stream to and
//! from the pod's port, and closes both when the pod's side ends. kubectl waits for the error
//! stream to close before it counts a connection done.
use std::collections::HashMap;

use futures_util::{SinkExt, StreamExt};
use hyper::{HeaderMap, Response, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::derive_accept_key, protocol::Role},
};

use super::{
    api::{Body, switching_protocols},
    spdy::{
        FIN, Frame, GOAWAY, Headers, PING, RST_STREAM, SYN_STREAM, control, data, read_frame,
        writer,
    },
    status::ApiError,
};

const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
const CHANNELS: &str = "v4.channel.k8s.io";

/// Answers the upgrade and serves the port-forward on the upgraded connection.
pub fn upgrade(
    headers: &HeaderMap,
    on_upgrade: OnUpgrade,
    ports: Vec<u16>,
) -> Result<Response<Body>, ApiError> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    if value("upgrade").eq_ignore_ascii_case("SPDY/3.1") {
        if value("x-stream-protocol-version") != "portforward.k8s.io" {
            return Err(ApiError::BadRequest(
                "port-forward speaks X-Stream-Protocol-Version portforward.k8s.io".into(),
            ));
        }
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                serve_spdy(TokioIo::new(upgraded)).await;
            }
        });
        return Ok(switching_protocols(
            "SPDY/3.1",
            &[("x-stream-protocol-version", "portforward.k8s.io")],
        ));
    }
    if !value("upgrade").eq_ignore_ascii_case("websocket") {
        return Err(ApiError::BadRequest(
            "port-forward takes a SPDY/3.1 or WebSocket upgrade".into(),
        ));
    }
    let offered: Vec<&str> = value("sec-websocket-protocol")
        .split(',')
        .map(str::trim)
        .collect();
    let Some(protocol) = [SPDY_TUNNEL, CHANNELS]
        .into_iter()
        .find(|p| offered.contains(p))
    else {
        return Err(ApiError::BadRequest(format!(
            "no supported port-forward subprotocol offered (got {offered:?})"
        )));
    };
    if protocol == CHANNELS && ports.is_empty() {
        return Err(ApiError::BadRequest(
            "port-forward over WebSocket needs at least one port in ports=".into(),
        ));
    }
    let key = value("sec-websocket-key");
    if key.is_empty() {
        return Err(ApiError::BadRequest("Sec-WebSocket-Key is missing".into()));
    }
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        match protocol {
            SPDY_TUNNEL => serve_spdy(tunnel(socket)).await,
            _ => serve_channels(socket, ports).await,
        }
    });
    Ok(switching_protocols(
        "websocket",
        &[
            ("sec-websocket-accept", &accept),
            ("sec-websocket-protocol", protocol),
        ],
    ))
}

/// The WebSocket as a byte stream: each binary message in, each write out as one message.
fn tunnel<S>(socket: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (near, far) = tokio::io::duplex(256 * 1024);
    let (mut far_read, mut far_write) = tokio::io::split(far);
    let (mut sink, mut messages) = socket.split();
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            match message {
                Message::Binary(bytes) if far_write.write_all(&bytes).await.is_ok() => {}
                Message::Binary(_) | Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = far_write.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 32 * 1024];
        while let Ok(n @ 1..) = far_read.read(&mut buffer).await {
            if sink
                .send(Message::binary(buffer[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = sink.close().await;
    });
    near
}

/// One forwarded connection: kubectl's two streams, and the pod's socket once open.
#[derive(Default)]
struct Forward {
    error_stream: Option<u32>,
    data_stream: Option<u32>,
    to_pod: Option<tokio::net::tcp::OwnedWriteHalf>,
}

async fn serve_spdy(io: impl AsyncRead + AsyncWrite + Send + 'static) {
    let (mut from_client, to_client) = tokio::io::split(io);
    let frames = writer(to_client);
    let mut headers = Headers::new();
    let mut forwards: HashMap<String, Forward> = HashMap::new();
    let mut request_of: HashMap<u32, String> = HashMap::new();
    while let Ok(frame) = read_frame(&mut from_client).await {
        match frame {
            Frame::Control { kind, payload, .. } if kind == SYN_STREAM => {
                let Some((stream, opened, reply)) = headers.accept(&payload) else {
                    return;
                };
                let _ = frames.send(reply).await;
                let request = opened.get("requestid").cloned().unwrap_or_default();
                request_of.insert(stream, request.clone());
                let forward = forwards.entry(request).or_default();
                let port: u16 = opened.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
                match opened.get("streamtype").map(String::as_str) {
                    Some("error") => forward.error_stream = Some(stream),
                    Some("data") => {
                        forward.data_stream = Some(stream);
                        forward.to_pod =
                            open_to_pod(port, stream, forward.error_stream, frames.clone()).await;
                    }
                    _ => {}
                }
            }
            Frame::Control { kind, payload, .. } if kind == RST_STREAM && payload.len() >= 4 => {
                let stream = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                if let Some(request) = request_of.remove(&stream) {
                    forwards.remove(&request);
                }
            }
            Frame::Control {
                kind: PING,
                flags,
                payload,
            } => {
                let _ = frames.send(control(PING, flags, &payload)).await;
            }
            Frame::Control { kind: GOAWAY, .. } => return,
            Frame::Control { .. } => {}
            Frame::Data {
                stream,
                flags,
                payload,
            } => {
                let forward = request_of.get(&stream).and_then(|r| forwards.get_mut(r));
                let Some(forward) = forward.filter(|f| f.data_stream == Some(stream)) else {
                    continue;
                };
                if let Some(pod) = forward.to_pod.as_mut() {
                    if pod.write_all(&payload).await.is_err() {
                        forward.to_pod = None;
                    } else if flags & FIN != 0 {
                        let _ = pod.shutdown().await;
                    }
                }
            }
        }
    }
}

/// Connects to the pod's port and copies what it sends to the data stream; a refused
/// connection is reported on the error stream, as the kubelet reports it.
async fn open_to_pod(
    port: u16,
    data_stream: u32,
    error_stream: Option<u32>,
    frames: mpsc::Sender<Vec<u8>>,
) -> Option<tokio::net::tcp::OwnedWriteHalf> {
    let close = |stream: u32| data(stream, FIN, &[]);
    match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(pod) => {
            let (mut from_pod, to_pod) = pod.into_split();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 32 * 1024];
                while let Ok(n @ 1..) = from_pod.read(&mut buffer).await {
                    if frames
                        .send(data(data_stream, 0, &buffer[..n]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = frames.send(close(data_stream)).await;
                if let Some(error_stream) = error_stream {
                    let _ = frames.send(close(error_stream)).await;
                }
            });
            Some(to_pod)
        }
        Err(e) => {
            if let Some(error_stream) = error_stream {
                let message = format!(
                    "error forwarding port {port} to pod: failed to connect to localhost:{port}: {e}"
                );
                let _ = frames
                    .send(data(error_stream, FIN, message.as_bytes()))
                    .await;
            }
            let _ = frames.send(close(data_stream)).await;
            None
        }
    }
}

/// `v4.channel.k8s.io`: each port's connection opens with the WebSocket, one pair of
/// channels a port.
async fn serve_channels<S>(socket: WebSocketStream<S>, ports: Vec<u16>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut messages) = socket.split();
    let (frames, mut outgoing) = mpsc::channel::<Vec<u8>>(64);
    let mut to_pods = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let (data_channel, error_channel) = (2 * index as u8, 2 * index as u8 + 1);
        // Each channel's first message is the port, little-endian.
        for channel in [data_channel, error_channel] {
            let mut first = vec![channel];
            first.extend_from_slice(&port.to_le_bytes());
            let _ = frames.send(first).await;
        }
        match TcpStream::connect(("127.0.0.1", *port)).await {
            Ok(pod) => {
                let (mut from_pod, to_pod) = pod.into_split();
                let frames = frames.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 32 * 1024];
                    while let Ok(n @ 1..) = from_pod.read(&mut buffer).await {
                        let mut frame = vec![data_channel];
                        frame.extend_from_slice(&buffer[..n]);
                        if frames.send(frame).await.is_err() {
                            return;
                        }
                    }
                });
                to_pods.push(Some(to_pod));
            }
            Err(e) => {
                let mut frame = vec![error_channel];
                frame.extend_from_slice(format!("error forwarding port {port}: {e}").as_bytes());
                let _ = frames.send(frame).await;
                to_pods.push(None);
            }
        }
    }
    drop(frames);
    loop {
        tokio::select! {
            frame = outgoing.recv() => match frame {
                Some(frame) => {
                    if sink.send(Message::binary(frame)).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            message = messages.next() => match message {
                Some(Ok(message @ (Message::Binary(_) | Message::Text(_)))) => {
                    let bytes = message.into_data();
                    let Some((&channel, payload)) = bytes.split_first() else { continue };
                    let pod = to_pods.get_mut(usize::from(channel / 2)).and_then(Option::as_mut);
                    if let Some(pod) = pod.filter(|_| channel % 2 == 0)
                        && pod.write_all(payload).await.is_err()
                    {
                        to_pods[usize::from(channel / 2)] = None;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = sink.close().await;
}

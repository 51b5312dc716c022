//! A SPDY connection relayed with its bytes unchanged and recorded stream by stream: a
//! port-forward's connections as `kube_port_forward` records, an old kubectl's exec or
//! attach streams as `kube_channel` records, like the WebSocket ones.
//!
//! Unlike a WebSocket exec, nothing is masked on the wire: a port-forward carries any
//! protocol (TLS, a database's), which rewriting would break. The record is masked.
use std::{collections::HashMap, io, sync::Arc, sync::Mutex};

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;

use super::{Frame, SpdyReader};
use crate::{
    masking::MaskReport,
    protocols::{
        copy::{self, AnyStream, Source},
        http::tunnel::both_upgraded,
        l7::{Exchange, Masking},
    },
    recording::record::{
        KubeChannel, KubeChannelData, KubePortForward, PortForwardChannel, PortForwardEvent,
        RecordBody,
    },
    vocabulary::Direction,
};

/// What a stream carries, from the headers that opened it.
#[derive(Debug, Clone, Copy)]
enum Role {
    Channel(KubeChannel),
    Port {
        port: u16,
        connection: u64,
        channel: PortForwardChannel,
    },
}

impl Role {
    fn of(headers: &[(String, String)]) -> Option<Role> {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(port) = header("port") {
            let channel = match header("streamtype")? {
                "data" => PortForwardChannel::Data,
                "error" => PortForwardChannel::Error,
                _ => return None,
            };
            return Some(Role::Port {
                port: port.parse().ok()?,
                connection: header("requestid").and_then(|id| id.parse().ok())?,
                channel,
            });
        }
        let channel = match header("streamtype")? {
            "stdin" => KubeChannel::Stdin,
            "stdout" => KubeChannel::Stdout,
            "stderr" => KubeChannel::Stderr,
            "error" => KubeChannel::Error,
            "resize" => KubeChannel::Resize,
            _ => return None,
        };
        Some(Role::Channel(channel))
    }
}

/// Records what both directions of one SPDY connection carry.
pub struct SpdyTap {
    exchange: Arc<Exchange>,
    /// The `kube_request` that opened the connection.
    stream: u64,
    masking: Masking,
    /// Streams are opened by one side and written by both.
    roles: Mutex<HashMap<u32, Role>>,
}

/// One direction's reader; None once it could not be read (its bytes are then recorded raw).
pub struct Side {
    direction: Direction,
    reader: Option<SpdyReader>,
}

impl Side {
    pub fn new(direction: Direction) -> Side {
        Side {
            direction,
            reader: Some(SpdyReader::default()),
        }
    }
}

impl SpdyTap {
    pub fn new(exchange: Arc<Exchange>, stream: u64, masking: Masking) -> Arc<SpdyTap> {
        Arc::new(SpdyTap {
            exchange,
            stream,
            masking,
            roles: Mutex::new(HashMap::new()),
        })
    }

    /// Records what `bytes` complete on `side`, before they are forwarded.
    pub async fn observe(&self, side: &mut Side, bytes: &Bytes) {
        let direction = side.direction;
        let Some(reader) = side.reader.as_mut() else {
            let (masked, report) = self.for_record(bytes);
            self.exchange.log.data(direction, masked).await;
            self.exchange.log.masked(direction, report, false).await;
            return;
        };
        let frames = match reader.read(bytes) {
            Ok(frames) => frames,
            Err(e) => {
                tracing::warn!(target_name = %self.exchange.target.name, error = %e, ?direction, "a SPDY stream that cannot be read: its bytes are relayed and recorded unread from here on");
                side.reader = None;
                let (masked, report) = self.for_record(bytes);
                self.exchange.log.data(direction, masked).await;
                self.exchange.log.masked(direction, report, false).await;
                return;
            }
        };
        for frame in frames {
            self.record(direction, frame).await;
        }
    }

    async fn record(&self, direction: Direction, frame: Frame) {
        let (stream, event, data) = match frame {
            Frame::Opened { stream, headers } => {
                let Some(role) = Role::of(&headers) else {
                    tracing::warn!(target_name = %self.exchange.target.name, ?headers, "a SPDY stream of a kind Interlock does not know: its data is recorded as bytes");
                    return;
                };
                self.roles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(stream, role);
                (stream, PortForwardEvent::Opened, Bytes::new())
            }
            Frame::Data { stream, data } => (stream, PortForwardEvent::Data, data),
            Frame::Finished { stream } => (stream, PortForwardEvent::Closed, Bytes::new()),
            Frame::Reset { stream, .. } => (stream, PortForwardEvent::Reset, Bytes::new()),
        };
        let role = {
            let mut roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                PortForwardEvent::Reset => roles.remove(&stream),
                _ => roles.get(&stream).copied(),
            }
        };
        let (data, report) = self.for_record(&data);
        let body = match role {
            Some(Role::Port {
                port,
                connection,
                channel,
            }) => RecordBody::KubePortForward(KubePortForward {
                stream: self.stream,
                port,
                connection,
                channel,
                direction,
                event,
                data,
            }),
            // An exec's streams need no opening or closing record: the closing Status says
            // how the command ended.
            Some(Role::Channel(channel)) if event == PortForwardEvent::Data => {
                RecordBody::KubeChannel(KubeChannelData {
                    stream: self.stream,
                    channel,
                    data,
                })
            }
            Some(Role::Channel(_)) => return,
            None if data.is_empty() => return,
            None => {
                self.exchange.log.data(direction, data).await;
                self.exchange.log.masked(direction, report, false).await;
                return;
            }
        };
        self.exchange.log.record(body).await;
        self.exchange.log.masked(direction, report, false).await;
    }

    fn for_record(&self, data: &Bytes) -> (Bytes, MaskReport) {
        for_record(&self.exchange, self.masking.record_raw, data)
    }
}

/// Bytes as the record keeps them (masked, unless the target keeps raw records), and what was
/// masked in them; what crosses the wire is left alone.
pub fn for_record(exchange: &Exchange, record_raw: bool, data: &Bytes) -> (Bytes, MaskReport) {
    let mut report = MaskReport::default();
    match exchange.masker().mask_text(data, &mut report) {
        Some(masked) if !record_raw => (masked.into(), report),
        _ => (data.clone(), report),
    }
}

/// A source whose chunks the tap reads before they are forwarded.
struct Tapped<S> {
    source: S,
    side: Side,
    tap: Arc<SpdyTap>,
}

impl<S: Source> Source for Tapped<S> {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let chunk = self.source.next_chunk().await?;
        if let Some(chunk) = &chunk {
            self.tap.observe(&mut self.side, chunk).await;
        }
        Ok(chunk)
    }
}

/// Relays an upgraded SPDY connection (`Upgrade: SPDY/3.1`) through the copy loop, which
/// keeps its idle timeout and half-closes; the tap records instead of the loop.
pub async fn relay(tap: Arc<SpdyTap>, client: OnUpgrade, upstream: OnUpgrade) {
    let exchange = tap.exchange.clone();
    let Some((client, upstream)) = both_upgraded(&exchange, client, upstream).await else {
        return;
    };
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let tapped = |source, direction| Tapped {
        source: AnyStream(source),
        side: Side::new(direction),
        tap: tap.clone(),
    };
    let relayed = copy::relay(
        (tapped(client_read, Direction::Up), client_write),
        (tapped(upstream_read, Direction::Down), upstream_write),
        None,
        &exchange.hard_stop,
        exchange.target.idle_timeout,
    )
    .await;
    if let Some(error) = relayed.error {
        exchange.end_with(error);
    }
}

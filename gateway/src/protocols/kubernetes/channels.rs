//! Upgraded WebSocket streams of the API server, relayed message by message:
//! - exec and attach (`v4.channel.k8s.io`, `v5.channel.k8s.io`): each binary message's first
//!   byte names its channel, and each is recorded as a `kube_channel` record, masked like any
//!   body, then forwarded. Output (stdout, stderr, the closing Status) is masked for the
//!   client as responses are, input as requests are.
//! - port-forward over `v4.channel.k8s.io` (the Python client): channel 2i carries port i's
//!   bytes and 2i+1 its errors, recorded as `kube_port_forward` records.
//! - port-forward as SPDY in binary messages (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31+),
//!   read by the SPDY tap.
//!
//! Port-forward bytes cross unchanged (they may be any protocol); their record is masked.
//! Each message is masked on its own: a secret split across two messages is not caught. A
//! terminal's output is never held back waiting for the next message.
use std::{collections::HashSet, sync::Arc};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, Utf8Bytes, protocol::Role},
};

use super::spdy::relay::{Side, SpdyTap, for_record};
use crate::{
    masking::MaskReport,
    protocols::{
        error::SessionError,
        http::tunnel::both_upgraded,
        l7::{Exchange, Masking},
    },
    recording::record::{
        KubeChannel, KubeChannelData, KubePortForward, PortForwardChannel, PortForwardEvent,
        RecordBody,
    },
    vocabulary::Direction,
};

/// The subprotocols whose binary messages start with a channel byte. The `base64.` variants
/// (text messages) are relayed as bytes instead.
pub const CHANNEL_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The WebSocket subprotocol kubectl 1.31+ tunnels a SPDY port-forward in.
pub const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// How a stream's messages are read, with what the reading keeps.
pub enum Reading {
    /// exec and attach: the channel byte names stdin, stdout, ….
    Exec,
    /// port-forward over a channel protocol.
    PortForward(PortChannels),
    /// SPDY bytes, tunnelled in binary messages, read by each direction's reader.
    Spdy(Arc<SpdyTap>, Box<[Side; 2]>),
}

pub struct PortChannels {
    /// The ports the request named: channels 2i and 2i+1 are port i's.
    ports: Vec<u16>,
    /// The channels whose first message (which starts with the port) the API server has sent.
    seen: HashSet<u8>,
}

impl Reading {
    pub fn port_forward(ports: Vec<u16>) -> Reading {
        Reading::PortForward(PortChannels {
            ports,
            seen: HashSet::new(),
        })
    }

    pub fn spdy(tap: Arc<SpdyTap>) -> Reading {
        let sides = [Side::new(Direction::Up), Side::new(Direction::Down)];
        Reading::Spdy(tap, Box::new(sides))
    }
}

/// How long a peer has to answer a close before its socket is dropped anyway.
const CLOSE_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Relays one upgraded stream until either side closes it.
pub async fn relay(
    exchange: Arc<Exchange>,
    stream: u64,
    masking: Masking,
    reading: Reading,
    client: OnUpgrade,
    upstream: OnUpgrade,
) {
    let Some((client, upstream)) = both_upgraded(&exchange, client, upstream).await else {
        return;
    };
    // The handshakes are done: both sides speak WebSocket from the first byte.
    let client = WebSocketStream::from_raw_socket(client, Role::Server, None).await;
    let upstream = WebSocketStream::from_raw_socket(upstream, Role::Client, None).await;
    let (mut to_client, mut from_client) = client.split();
    let (mut to_upstream, mut from_upstream) = upstream.split();
    let mut channels = Channels {
        exchange: &exchange,
        stream,
        masking,
        reading,
    };
    // As the copy loop does: checked once per idle_timeout, so a stream is cut after between
    // one and two timeouts in which no message (pings aside) crossed either way.
    let idle_timeout = exchange.target.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut moved = false;
    // The direction a close message crossed in, when one did.
    let mut closed_toward = None;
    let error = loop {
        let (message, direction) = tokio::select! {
            message = from_client.next() => (message, Direction::Up),
            message = from_upstream.next() => (message, Direction::Down),
            () = &mut idle => {
                if !moved {
                    break Some(SessionError::Idle(idle_timeout));
                }
                moved = false;
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                continue;
            }
            _ = exchange.hard_stop.cancelled() => break Some(SessionError::Shutdown),
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => break Some(SessionError::WebSocket(peer(direction), e)),
            None => break None,
        };
        let closing = message.is_close();
        // Each side's WebSocket answers its own pings.
        if message.is_ping() || message.is_pong() {
            continue;
        }
        moved = true;
        let message = channels.pass(direction, message).await;
        let sent = match direction {
            Direction::Up => to_upstream.send(message).await,
            Direction::Down => to_client.send(message).await,
        };
        if let Err(e) = sent {
            let to = match direction {
                Direction::Up => Direction::Down,
                Direction::Down => Direction::Up,
            };
            break Some(SessionError::WebSocket(peer(to), e));
        }
        if closing {
            closed_toward = Some(direction);
            break None;
        }
    };
    // A close crossed: its sender's side is closed first (which sends the answer its
    // WebSocket owes), then its receiver's answer is awaited before that socket is dropped:
    // a socket closed with unread bytes is reset, and a reset can discard what the peer had
    // yet to read (the closing Status among it).
    match closed_toward {
        Some(Direction::Down) => {
            let _ = to_upstream.close().await;
            close_answered(&mut from_client).await;
            let _ = to_client.close().await;
        }
        Some(Direction::Up) => {
            let _ = to_client.close().await;
            close_answered(&mut from_upstream).await;
            let _ = to_upstream.close().await;
        }
        None => {
            let _ = tokio::join!(to_client.close(), to_upstream.close());
        }
    }
    if let Some(error) = error {
        exchange.end_with(error);
    }
}

/// Waits, for at most CLOSE_ANSWER_WAIT, for a peer sent a close to answer with its own.
async fn close_answered<S, E>(messages: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, E>> + Unpin,
{
    let answer = async {
        while let Some(Ok(message)) = messages.next().await {
            if message.is_close() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_ANSWER_WAIT, answer).await;
}

/// The side a message in `direction` comes from.
fn peer(direction: Direction) -> &'static str {
    match direction {
        Direction::Up => "client",
        Direction::Down => "API server",
    }
}

struct Channels<'a> {
    exchange: &'a Exchange,
    stream: u64,
    masking: Masking,
    reading: Reading,
}

impl Channels<'_> {
    /// Records one message and returns what to forward.
    async fn pass(&mut self, direction: Direction, message: Message) -> Message {
        match &mut self.reading {
            Reading::Exec => self.pass_exec(direction, message).await,
            Reading::PortForward(channels) => {
                let (exchange, stream) = (self.exchange, self.stream);
                let record_raw = self.masking.record_raw;
                record_port(exchange, stream, record_raw, channels, direction, &message).await;
                message
            }
            Reading::Spdy(tap, sides) => {
                if let Message::Binary(bytes) = &message {
                    let side = &mut sides[usize::from(direction == Direction::Down)];
                    tap.observe(side, bytes).await;
                }
                message
            }
        }
    }

    /// Records one message by its channel and returns what to forward. Binary and text
    /// messages alike start with their channel (the Python client writes stdin as text).
    async fn pass_exec(&self, direction: Direction, message: Message) -> Message {
        let (payload, text) = match message {
            Message::Binary(payload) => (payload, false),
            Message::Text(text) => (Bytes::from(text), true),
            // Close frames carry no channel byte.
            other => return other,
        };
        let rebuild = |payload: Bytes| match text {
            // Masking replaces whole UTF-8 matches with ASCII, so text stays text.
            true => Utf8Bytes::try_from(payload.clone())
                .map(Message::Text)
                .unwrap_or(Message::Binary(payload)),
            false => Message::Binary(payload),
        };
        let Some((&first, data)) = payload.split_first() else {
            return rebuild(payload);
        };
        let channel = KubeChannel::of(first);
        let mut report = MaskReport::default();
        let masked = match channel {
            KubeChannel::Resize | KubeChannel::Close => None,
            _ => self.exchange.masker().mask_text(data, &mut report),
        };
        let recorded = match (&masked, self.masking.record_raw) {
            (Some(masked), false) => Bytes::from(masked.clone()),
            _ => payload.slice(1..),
        };
        self.exchange
            .log
            .record(RecordBody::KubeChannel(KubeChannelData {
                stream: self.stream,
                channel,
                data: recorded,
            }))
            .await;
        let peer_sees_masked = match direction {
            Direction::Up => self.masking.apply.requests(),
            Direction::Down => self.masking.apply.responses(),
        };
        self.exchange
            .log
            .masked(direction, report, peer_sees_masked && masked.is_some())
            .await;
        match masked {
            Some(masked) if peer_sees_masked => {
                let mut forwarded = Vec::with_capacity(masked.len() + 1);
                forwarded.push(first);
                forwarded.extend_from_slice(&masked);
                rebuild(forwarded.into())
            }
            _ => rebuild(payload),
        }
    }
}

/// Records a port-forward message as its port's data or error; it is forwarded unchanged.
async fn record_port(
    exchange: &Exchange,
    stream: u64,
    record_raw: bool,
    channels: &mut PortChannels,
    direction: Direction,
    message: &Message,
) {
    let payload = match message {
        Message::Binary(payload) => payload.clone(),
        Message::Text(text) => Bytes::from(text.clone()),
        _ => return,
    };
    let Some((&channel, mut data)) = payload.split_first() else {
        return;
    };
    // The API server starts each channel with the port, two bytes little-endian.
    if direction == Direction::Down && channels.seen.insert(channel) {
        data = data.get(2..).unwrap_or_default();
    }
    let index = usize::from(channel / 2);
    let (data, report) = for_record(exchange, record_raw, &payload.slice_ref(data));
    let record = KubePortForward {
        stream,
        port: channels.ports.get(index).copied().unwrap_or_default(),
        connection: index as u64,
        channel: match channel % 2 {
            0 => PortForwardChannel::Data,
            _ => PortForwardChannel::Error,
        },
        direction,
        event: PortForwardEvent::Data,
        data,
    };
    exchange
        .log
        .record(RecordBody::KubePortForward(record))
        .await;
    exchange.log.masked(direction, report, false).await;
}

//! exec and attach streams (`v4.channel.k8s.io`, `v5.channel.k8s.io`), relayed message by
//! message: each binary message's first byte names its channel, and each is recorded as a
//! `kube_channel` record, masked like any body, then forwarded. Output (stdout, stderr, the
//! closing Status) is masked for the client as responses are, input as requests are.
//!
//! Each message is masked on its own: a secret split across two messages is not caught. A
//! terminal's output is never held back waiting for the next message.
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, Utf8Bytes, protocol::Role},
};

use crate::{
    masking::MaskReport,
    protocols::{
        error::SessionError,
        http::tunnel::both_upgraded,
        l7::{Exchange, Masking},
    },
    recording::record::{KubeChannel, KubeChannelData, RecordBody},
    vocabulary::Direction,
};

/// The subprotocols whose binary messages start with a channel byte. The `base64.` variants
/// (text messages) and port-forward are relayed as bytes instead.
pub const CHANNEL_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// Relays one exec or attach stream until either side closes it.
pub async fn relay(
    exchange: Arc<Exchange>,
    stream: u64,
    masking: Masking,
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
    let channels = Channels {
        exchange: &exchange,
        stream,
        masking,
    };
    let error = loop {
        let (message, direction) = tokio::select! {
            message = from_client.next() => (message, Direction::Up),
            message = from_upstream.next() => (message, Direction::Down),
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
            break None;
        }
    };
    let _ = tokio::join!(to_client.close(), to_upstream.close());
    if let Some(error) = error {
        exchange.end_with(error);
    }
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
}

impl Channels<'_> {
    /// Records one message by its channel and returns what to forward. Binary and text
    /// messages alike start with their channel (the Python client writes stdin as text).
    async fn pass(&self, direction: Direction, message: Message) -> Message {
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

//! The copy loop: relays bytes between a client and an upstream, recording each chunk before
//! it is forwarded. It runs over any stream: tcp sessions and upgraded HTTP connections
//! (WebSocket) alike. Both directions run concurrently so neither can block the other, and
//! half-closes are passed on.
use std::{
    future::Future,
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::tcp::OwnedReadHalf,
    time::{Instant, sleep},
};
use tokio_util::sync::CancellationToken;

use super::error::{SessionError, SessionResult};
use crate::{recording::SessionRecorder, vocabulary::Direction};

/// Read size per chunk. Each chunk becomes one data record.
const CHUNK: usize = 16 * 1024;

/// Where one direction's bytes come from, a chunk at a time; None at the end.
pub trait Source: Send {
    fn next_chunk(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;
}

/// A TCP socket waits for data before it takes a buffer: an idle session holds none.
impl Source for OwnedReadHalf {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            self.readable().await?;
            let mut buf = BytesMut::with_capacity(CHUNK);
            match self.try_read_buf(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(buf.freeze())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Any other stream (an upgraded connection) is read into a buffer it holds while it waits.
pub struct AnyStream<R>(pub R);

impl<R: AsyncRead + Unpin + Send> Source for AnyStream<R> {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let mut buf = BytesMut::with_capacity(CHUNK);
        match self.0.read_buf(&mut buf).await? {
            0 => Ok(None),
            _ => Ok(Some(buf.freeze())),
        }
    }
}

/// Relays until both sides are done, or neither sends a byte for `idle_timeout`. `session`
/// is None only for sessions let through unrecorded under `when_full: fail_open`.
pub async fn relay<CR, CW, UR, UW>(
    (client_read, client_write): (CR, CW),
    (upstream_read, upstream_write): (UR, UW),
    session: Option<&SessionRecorder>,
    hard_stop: &CancellationToken,
    idle_timeout: Duration,
) -> SessionResult
where
    CR: Source,
    UR: Source,
    CW: AsyncWrite + Unpin + Send,
    UW: AsyncWrite + Unpin + Send,
{
    let bytes_up = AtomicU64::new(0);
    let bytes_down = AtomicU64::new(0);
    let up = pump(
        client_read,
        upstream_write,
        Direction::Up,
        session,
        &bytes_up,
    );
    let down = pump(
        upstream_read,
        client_write,
        Direction::Down,
        session,
        &bytes_down,
    );
    // Checked once per idle_timeout rather than re-armed per chunk: a session is cut after
    // between one and two timeouts of silence, at no cost on the byte path.
    let idle = sleep(idle_timeout);
    tokio::pin!(up, down, idle);
    let moved = || bytes_up.load(Ordering::Relaxed) + bytes_down.load(Ordering::Relaxed);
    let mut moved_at_last_check = 0;

    let (mut up_done, mut down_done) = (false, false);
    let error = loop {
        tokio::select! {
            result = &mut up, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(e) => break Some(SessionError::Io(e)),
            },
            result = &mut down, if !down_done => match result {
                Ok(()) => down_done = true,
                Err(e) => break Some(SessionError::Io(e)),
            },
            () = &mut idle => {
                if moved() == moved_at_last_check {
                    break Some(SessionError::Idle(idle_timeout));
                }
                moved_at_last_check = moved();
                idle.as_mut().reset(Instant::now() + idle_timeout);
            }
            _ = hard_stop.cancelled() => break Some(SessionError::Shutdown),
        }
        if up_done && down_done {
            break None;
        }
    };
    SessionResult {
        bytes_up: bytes_up.load(Ordering::Relaxed),
        bytes_down: bytes_down.load(Ordering::Relaxed),
        error,
    }
}

/// Copies one direction until EOF, then half-closes the other side.
async fn pump(
    mut from: impl Source,
    mut to: impl AsyncWrite + Unpin,
    direction: Direction,
    session: Option<&SessionRecorder>,
    counter: &AtomicU64,
) -> io::Result<()> {
    while let Some(chunk) = from.next_chunk().await? {
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        // Recorded before it is forwarded: what reaches the peer is always in the record.
        if let Some(session) = session {
            session.data(direction, chunk.clone()).await?;
        }
        to.write_all(&chunk).await?;
    }
    // A peer that already went away cannot take our FIN; that is not an error.
    let _ = to.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::{
        recording::{record::RecordBody, store},
        vocabulary::Outcome,
    };

    /// Real TCP sockets on loopback, in-process: an echo-like peer that answers after the
    /// client half-closes, which only works if half-close is propagated.
    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_records_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (recorder, writer, _) = crate::recording::test_recorder(dir.path());
        let session = recorder.session("relay-test");

        let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream_listener.local_addr().unwrap();
        let upstream_task = tokio::spawn(async move {
            let (mut s, _) = upstream_listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got.repeat(2)).await.unwrap();
        });
        let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy_listener.local_addr().unwrap();
        let client_task = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(proxy_addr).await.unwrap();
            c.write_all(&vec![7u8; 100_000]).await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            back
        });
        let (client, _) = proxy_listener.accept().await.unwrap();
        let upstream = tokio::net::TcpStream::connect(upstream_addr).await.unwrap();
        let result = relay(
            client.into_split(),
            upstream.into_split(),
            Some(&session),
            &CancellationToken::new(),
            Duration::from_secs(60),
        )
        .await;
        upstream_task.await.unwrap();
        assert_eq!(client_task.await.unwrap(), vec![7u8; 200_000]);
        assert_eq!((result.bytes_up, result.bytes_down), (100_000, 200_000));
        assert_eq!(result.outcome(), Outcome::Closed);

        drop(session);
        writer.stop(&recorder).await;
        let (records, _) = store::read_all(dir.path()).unwrap();
        let mut up = Vec::new();
        let mut down = Vec::new();
        for r in records {
            if let RecordBody::Data(c) = r.record.body {
                let stream = if c.direction == Direction::Up {
                    &mut up
                } else {
                    &mut down
                };
                assert_eq!(c.offset as usize, stream.len(), "offsets are contiguous");
                stream.extend_from_slice(&c.data);
            }
        }
        assert_eq!(up, vec![7u8; 100_000]);
        assert_eq!(down, vec![7u8; 200_000]);
    }
}

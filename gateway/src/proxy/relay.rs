//! Byte-for-byte relay between client and upstream, recording each chunk before forwarding it.
//! Both directions run concurrently so neither can block the other; half-closes are passed on.
use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::recording::{
    SessionRecorder,
    record::{Direction, Outcome},
};

/// Read size per chunk. Each chunk becomes one data record.
const CHUNK: usize = 16 * 1024;

#[derive(Debug)]
pub struct RelayResult {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub outcome: Outcome,
    pub error: Option<String>,
}

/// Relays until both sides are done. `session` is None only for sessions let through
/// unrecorded under `when_full: fail_open`.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    session: Option<&SessionRecorder>,
    hard_stop: &CancellationToken,
) -> RelayResult
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
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
    tokio::pin!(up, down);

    let (mut up_done, mut down_done) = (false, false);
    let failure = loop {
        tokio::select! {
            result = &mut up, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(e) => break Some(e),
            },
            result = &mut down, if !down_done => match result {
                Ok(()) => down_done = true,
                Err(e) => break Some(e),
            },
            _ = hard_stop.cancelled() => {
                break Some(io::Error::other("gateway shut down before the session ended"));
            }
        }
        if up_done && down_done {
            break None;
        }
    };
    let (outcome, error) = match failure {
        None => (Outcome::Closed, None),
        Some(e) if hard_stop.is_cancelled() => (Outcome::Shutdown, Some(e.to_string())),
        Some(e) => (classify(&e), Some(e.to_string())),
    };
    RelayResult {
        bytes_up: bytes_up.load(Ordering::Relaxed),
        bytes_down: bytes_down.load(Ordering::Relaxed),
        outcome,
        error,
    }
}

fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Outcome::Reset,
        _ => Outcome::Error,
    }
}

/// Copies one direction until EOF, then half-closes the other side.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    direction: Direction,
    session: Option<&SessionRecorder>,
    counter: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        if from.read_buf(&mut buf).await? == 0 {
            // A peer that already went away cannot take our FIN; that is not an error.
            let _ = to.shutdown().await;
            return Ok(());
        }
        let chunk = buf.split().freeze();
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        // Recorded before it is forwarded: what reaches the peer is always in the record.
        if let Some(session) = session {
            session.data(direction, chunk.clone()).await?;
        }
        to.write_all(&chunk).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{record::RecordBody, store};

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
        let result = relay(client, upstream, Some(&session), &CancellationToken::new()).await;
        upstream_task.await.unwrap();
        assert_eq!(client_task.await.unwrap(), vec![7u8; 200_000]);
        assert_eq!((result.bytes_up, result.bytes_down), (100_000, 200_000));
        assert_eq!(result.outcome, Outcome::Closed);

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

//! Byte-for-byte relay between client and upstream, recording each chunk before forwarding it.
//! Both directions run concurrently so neither can block the other; half-closes are passed on.
use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    time::{Instant, sleep},
};
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

/// Relays until both sides are done, or neither sends a byte for `idle_timeout`. `session`
/// is None only for sessions let through unrecorded under `when_full: fail_open`.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    session: Option<&SessionRecorder>,
    hard_stop: &CancellationToken,
    idle_timeout: Duration,
) -> RelayResult {
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
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
    let failure = loop {
        tokio::select! {
            result = &mut up, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(e) => break Some((classify(&e), e.to_string())),
            },
            result = &mut down, if !down_done => match result {
                Ok(()) => down_done = true,
                Err(e) => break Some((classify(&e), e.to_string())),
            },
            () = &mut idle => {
                if moved() == moved_at_last_check {
                    break Some((
                        Outcome::Timeout,
                        format!("idle for {}: no byte either way (idle_timeout)", humantime::format_duration(idle_timeout)),
                    ));
                }
                moved_at_last_check = moved();
                idle.as_mut().reset(Instant::now() + idle_timeout);
            }
            _ = hard_stop.cancelled() => {
                break Some((Outcome::Shutdown, "gateway shut down before the session ended".into()));
            }
        }
        if up_done && down_done {
            break None;
        }
    };
    let (outcome, error) = match failure {
        None => (Outcome::Closed, None),
        Some((outcome, error)) => (outcome, Some(error)),
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

/// Copies one direction until EOF, then half-closes the other side. A buffer exists only
/// while there is something to read: an idle session holds none.
async fn pump(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    session: Option<&SessionRecorder>,
    counter: &AtomicU64,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = BytesMut::with_capacity(CHUNK);
        match from.try_read_buf(&mut buf) {
            Ok(0) => {
                // A peer that already went away cannot take our FIN; that is not an error.
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        let chunk = buf.freeze();
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
    use tokio::io::AsyncReadExt;

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
        let result = relay(
            client,
            upstream,
            Some(&session),
            &CancellationToken::new(),
            Duration::from_secs(60),
        )
        .await;
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

//! How the proxy opens upstream connections. Kept behind a trait (as ztunnel does with its
//! socket factory) so that socket options, source binding or marking can change in one place.
use std::{future::Future, io, net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use crate::recording::record::Outcome;

pub trait UpstreamConnector: Send + Sync + 'static {
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

/// Plain TCP with a connect timeout and Nagle off, so the proxy adds no coalescing delay the
/// client did not ask for.
pub struct TcpConnector {
    pub timeout: Duration,
}

impl UpstreamConnector for TcpConnector {
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no answer within {:?} (upstream_connect_timeout)",
                        self.timeout
                    ),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// The session outcome for a failed upstream connect.
pub fn connect_failure_outcome(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::UpstreamRefused,
        io::ErrorKind::TimedOut => Outcome::UpstreamTimeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            Outcome::UpstreamUnreachable
        }
        _ => Outcome::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connect_is_classified() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let connector = TcpConnector {
            timeout: Duration::from_secs(2),
        };
        let err = connector
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap_err();
        assert_eq!(connect_failure_outcome(&err), Outcome::UpstreamRefused);
    }
}

//! An upgraded connection (a 101 answer: a WebSocket) relayed as bytes both ways, recorded
//! like a tcp session: what an inspector does with an upgrade unless it reads the protocol.
use std::sync::Arc;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use crate::protocols::{
    copy::{self, AnyStream},
    l7::Exchange,
};

/// Both sides' upgraded connections, once both upgrades complete; None (logged) otherwise.
pub async fn both_upgraded(
    exchange: &Exchange,
    client: OnUpgrade,
    upstream: OnUpgrade,
) -> Option<(TokioIo<Upgraded>, TokioIo<Upgraded>)> {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => Some((TokioIo::new(client), TokioIo::new(upstream))),
        Err(e) => {
            tracing::warn!(target_name = %exchange.target.name, error = %e, "the upgrade did not complete; the connection ends");
            None
        }
    }
}

pub async fn relay_bytes(exchange: Arc<Exchange>, client: OnUpgrade, upstream: OnUpgrade) {
    let Some((client, upstream)) = both_upgraded(&exchange, client, upstream).await else {
        return;
    };
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    // The client's bytes are counted where they cross its socket, so the relay's own
    // count is not added; how the tunnel ended is the session's outcome.
    let relayed = copy::relay(
        (AnyStream(client_read), client_write),
        (AnyStream(upstream_read), upstream_write),
        Some(exchange.log.session()),
        &exchange.hard_stop,
        exchange.target.idle_timeout,
    )
    .await;
    if let Some(error) = relayed.error {
        exchange.end_with(error);
    }
}

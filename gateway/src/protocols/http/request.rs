//! One request from the client: its head recorded, its body read whole (bounded by the
//! target's `max_body_bytes`), the inspector's verdict on it, and then its way upstream.
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::{Request, Response, StatusCode, body::Incoming};

use super::{
    inspect::{Inspector, Verdict},
    reply::ProxyBody,
    response,
    upstream::{Upstream, upstream_request},
};
use crate::protocols::l7::{
    Exchange,
    identity::{self, Refused},
};

pub async fn handle<I: Inspector>(
    mut request: Request<Incoming>,
    exchange: &Arc<Exchange>,
    upstream: &Arc<Upstream>,
    inspector: &I,
) -> Response<ProxyBody> {
    // Taken before anything else: an answer of 101 hands this connection to a tunnel.
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut head, body) = request.into_parts();
    inspector.prepare(&mut head);
    exchange.log.request_head(&head).await;
    let limit = exchange.target.max_body_bytes as usize;
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let (status, message) = if e.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "request body over the {limit}-byte limit (max_body_bytes of target {})",
                        exchange.target.name
                    ),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("request body ended early: {e}"),
                )
            };
            return inspector.failed(exchange, None, status, message).await;
        }
    };
    match identity::check(exchange, &head.headers).await {
        // Policy reads who the caller is from the request (`Parts::extensions`).
        Ok(Some(principal)) => {
            head.extensions.insert(principal);
        }
        Ok(None) => {}
        Err(Refused(reason)) => return inspector.refused(exchange, &head, &body, reason).await,
    }
    let mut verdict = inspector.on_request(exchange, upstream, &head, body).await;
    loop {
        match verdict {
            Verdict::Hold(decided) => verdict = decided.await,
            Verdict::Answer(answer) => return answer,
            Verdict::Forward(forward) => {
                let request = upstream_request(head, forward.body.clone());
                return response::forward(
                    exchange,
                    upstream,
                    inspector,
                    request,
                    forward,
                    client_upgrade,
                )
                .await;
            }
        }
    }
}

//! Answers the gateway writes itself, and the header reading every part of the HTTP layer
//! shares.
use bytes::Bytes;
use http_body_util::{Either, Full, channel::Channel};
use hyper::{
    HeaderMap, Response, StatusCode,
    header::{self, HeaderValue},
};

use crate::{protocols::l7::Exchange, vocabulary::Direction};

/// A body sent to the client: whole, or streamed from a pump.
pub type ProxyBody = Either<Full<Bytes>, Channel<Bytes, std::io::Error>>;

/// A response the gateway makes itself, recorded as such.
pub async fn generated(
    exchange: &Exchange,
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<ProxyBody> {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    exchange.log.response_head(status, &headers, true).await;
    if !body.is_empty() {
        exchange.log.data(Direction::Down, body.clone()).await;
    }
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A plain-text answer naming what went wrong.
pub async fn generated_text(
    exchange: &Exchange,
    status: StatusCode,
    message: String,
) -> Response<ProxyBody> {
    generated(exchange, status, "text/plain", message.into_bytes().into()).await
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

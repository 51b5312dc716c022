//! How configuration values are written: addresses, sizes, durations and counts, shared by
//! every module's own config section.
use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Deserializer, de};

pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_socket_addr(&text).map_err(de::Error::custom)
}

pub(crate) fn worker_count<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::num::NonZeroUsize>, D::Error> {
    Option::<usize>::deserialize(d)?
        .map(|n| {
            std::num::NonZeroUsize::new(n).ok_or_else(|| {
                de::Error::custom(
                    "0 workers could serve no session; write at least 1, or null for one per CPU",
                )
            })
        })
        .transpose()
}

pub(crate) fn optional_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| parse_socket_addr(&text).map_err(de::Error::custom))
        .transpose()
}

pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let not_an_address = || {
        format!(
            "`{text}` is not an ip:port address; write a literal IP and port such as \
             127.0.0.1:8080 or [::1]:8080 (host names are not resolved)"
        )
    };
    let addr: SocketAddr = text.parse().map_err(|_| not_an_address())?;
    if addr.port() == 0 {
        return Err(format!("`{text}` has port 0; give the real port"));
    }
    Ok(addr)
}

/// A size as bytes, or with a unit: `10GiB`, `512MB`.
pub(crate) fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                de::Error::custom(format!(
                    "`{text}` is not a size ({e}); write e.g. 10GiB or 512MiB"
                ))
            }),
    }
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. 500ms, 5s or 2m"
        ))
    })
}

pub(crate) fn optional_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| {
            humantime::parse_duration(&text).map_err(|e| {
                de::Error::custom(format!("`{text}` is not a duration ({e}); write e.g. 30s"))
            })
        })
        .transpose()
}

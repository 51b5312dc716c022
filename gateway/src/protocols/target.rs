//! What the gateway intercepts: a named address with its protocol and per-target limits, as
//! the `targets` section of the config writes it.
use std::{collections::HashMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use interlock_common::MAX_CONFIG_TARGETS;
use serde::{Deserialize, Deserializer, de};

use crate::config::values;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    /// `ip:port`, or `ip:*` for every port of the host (held as port 0). A target has an
    /// address or a service.
    #[serde(default, deserialize_with = "target_addr")]
    pub address: Option<SocketAddr>,
    /// `NAMESPACE/NAME` of a Kubernetes Service (node mode): its cluster IPs at `port`, and
    /// its endpoints at the matching target port, kept current as they change.
    #[serde(default, deserialize_with = "service_ref")]
    pub service: Option<ServiceRef>,
    /// The Service port of a `service` target.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Largest HTTP request or JSON response body read for inspection (`http`, `mcp`).
    #[serde(
        default = "defaults::max_body_bytes",
        deserialize_with = "crate::config::values::byte_size"
    )]
    pub max_body_bytes: u64,
    /// `http`/`mcp`: where secrets are masked (default: responses). Records are masked in
    /// every mode.
    #[serde(default)]
    pub mask: Option<crate::masking::MaskApply>,
    /// Keep clear text in the records of this target. Off unless said explicitly.
    #[serde(default)]
    pub record_raw: bool,
    /// `http`/`mcp` in node mode: every request must carry the connecting pod's own bound
    /// service-account token.
    #[serde(default)]
    pub require_bound_token: bool,
    /// `http`/`mcp`: every request must carry a valid bearer token from an `identity.oidc`
    /// issuer (an MCP client's OAuth token).
    #[serde(default)]
    pub require_oidc_token: bool,
    /// `http`/`mcp`: how long a client may take to send a request's head.
    #[serde(
        default = "defaults::header_read_timeout",
        deserialize_with = "crate::config::values::duration"
    )]
    pub header_read_timeout: Duration,
    /// `http`/`mcp`: how long the upstream may take to answer a forwarded request with a
    /// response head (a held request is not forwarded, and so not timed, while it waits).
    #[serde(
        default = "defaults::upstream_response_timeout",
        deserialize_with = "crate::config::values::duration"
    )]
    pub upstream_response_timeout: Duration,
    /// `kubernetes`: the CA the API server's certificate is verified against (PEM); by
    /// default the in-cluster `ca.crt` of the gateway's own pod.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// A session in which no byte moves either way for this long is closed; so is an exec,
    /// attach or port-forward stream in which no message does (pings aside).
    #[serde(
        default = "defaults::idle_timeout",
        deserialize_with = "crate::config::values::duration"
    )]
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Target {
    /// Where the target is, for messages: its address, or its Service and port.
    pub fn destination(&self) -> String {
        match (&self.address, &self.service, self.port) {
            (Some(address), ..) => address.to_string(),
            (None, Some(service), Some(port)) => format!("service {service} port {port}"),
            _ => "nowhere".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// Bytes relayed and recorded as they are.
    #[default]
    Tcp,
    /// HTTP/1.1 understood: requests and responses recorded as such.
    Http,
    /// HTTP plus MCP: every JSON-RPC message recorded and checked against the policy.
    Mcp,
    /// The Kubernetes API server: TLS terminated with the interception CA and opened again
    /// upstream, then HTTP/1.1 or HTTP/2 understood.
    Kubernetes,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Mcp => "mcp",
            Protocol::Kubernetes => "kubernetes",
        })
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "http" => Ok(Protocol::Http),
            "mcp" => Ok(Protocol::Mcp),
            "kubernetes" => Ok(Protocol::Kubernetes),
            other => Err(de::Error::custom(format!(
                "unknown protocol `{other}`; expected tcp, http, mcp or kubernetes"
            ))),
        }
    }
}

/// `NAMESPACE/NAME`, for any config key that names a Service.
pub fn service_ref<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ServiceRef>, D::Error> {
    let text = String::deserialize(d)?;
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(Some(ServiceRef {
                namespace: namespace.into(),
                name: name.into(),
            }))
        }
        _ => Err(de::Error::custom(format!(
            "`{text}` is not NAMESPACE/NAME; write e.g. default/kubernetes"
        ))),
    }
}

/// A target address: `ip:port`, or `ip:*` for every port of that host (stored as port 0).
fn target_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    let address = match text.strip_suffix(":*") {
        Some(ip) => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 0))
                .map_err(|_| {
                    de::Error::custom(format!(
                        "`{text}` is not ip:* ; write e.g. 127.0.0.1:* or [::1]:*"
                    ))
                })
        }
        None => values::parse_socket_addr(&text).map_err(de::Error::custom),
    };
    address.map(Some)
}

/// Deserializes the target list, rejecting duplicate names and addresses where they occur.
pub(crate) fn targets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Target>, D::Error> {
    struct TargetsVisitor;
    impl<'de> de::Visitor<'de> for TargetsVisitor {
        type Value = Vec<Target>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of targets")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Target>, A::Error> {
            let mut targets: Vec<Target> = Vec::new();
            let mut by_name = HashMap::new();
            let mut by_addr = HashMap::new();
            while let Some(target) = seq.next_element::<Target>()? {
                let index = targets.len();
                if target.name.is_empty() {
                    return Err(de::Error::custom(format!(
                        "targets[{index}] has an empty name"
                    )));
                }
                if let Some(first) = by_name.insert(target.name.clone(), index) {
                    return Err(de::Error::custom(format!(
                        "duplicate target name `{}` in targets[{index}] (first used by \
                         targets[{first}]); target names must be unique",
                        target.name
                    )));
                }
                if index >= MAX_CONFIG_TARGETS {
                    return Err(de::Error::custom(format!(
                        "targets[{index}]: a gateway takes at most {MAX_CONFIG_TARGETS} targets; \
                         cover a host's ports with one `ip:*` target"
                    )));
                }
                let destination = match (target.address, &target.service, target.port) {
                    (Some(address), None, None) => address.to_string(),
                    (None, Some(service), Some(port)) => format!("service {service}:{port}"),
                    (None, Some(_), None) => {
                        return Err(de::Error::custom(format!(
                            "targets[{index}] (`{}`) names a service but no `port`; give the \
                             Service port clients dial",
                            target.name
                        )));
                    }
                    _ => {
                        return Err(de::Error::custom(format!(
                            "targets[{index}] (`{}`) needs either `address` or `service` with \
                             `port`",
                            target.name
                        )));
                    }
                };
                if let Some(first) = by_addr.insert(destination.clone(), index) {
                    return Err(de::Error::custom(format!(
                        "duplicate target address {destination} in targets[{index}] (first used by \
                         targets[{first}]); each address can belong to one target only"
                    )));
                }
                if target.address.is_some_and(|a| a.ip().is_unspecified()) {
                    return Err(de::Error::custom(format!(
                        "target address {destination} is unspecified; give the address clients dial"
                    )));
                }
                targets.push(target);
            }
            Ok(targets)
        }
    }
    d.deserialize_seq(TargetsVisitor)
}

mod defaults {
    use std::time::Duration;

    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn upstream_response_timeout() -> Duration {
        Duration::from_secs(120)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn max_body_bytes() -> u64 {
        8 << 20
    }
}

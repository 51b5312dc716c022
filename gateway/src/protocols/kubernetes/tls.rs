//! TLS on both sides of an API-server session. The client's TLS is terminated with a leaf
//! from the interception CA, for the name it asked for (SNI) or else the address it dialled;
//! the API server is spoken to over a new TLS connection with that same name and the
//! protocol the client agreed (ALPN), verified against the cluster's CA.
use std::{
    collections::HashMap,
    fmt, io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    AlertDescription, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    server::{
        Acceptor, ClientHello, ResolvesServerCert,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use tokio::net::TcpStream;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector, server::TlsStream};

use crate::{
    interception_ca::{CaError, IN_CLUSTER_CA, InterceptionCa, InterceptionCaConfig, LeafName},
    protocols::{
        error::TlsError,
        http::upstream::{Connection, Dial, Redial},
        target::{Protocol, Target},
    },
};

const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The node's TLS for `kubernetes` targets: the interception CA, and how each target's API
/// server is verified.
pub struct ApiServerTls {
    ca: InterceptionCa,
    upstreams: HashMap<String, Arc<ClientConfig>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(
        "cluster CA {path} of target `{target}`: {reason}; set the target's `upstream_ca` to the PEM file of the CA that signs the API server's certificate"
    )]
    UpstreamCa {
        target: String,
        path: PathBuf,
        reason: String,
    },
}

impl ApiServerTls {
    /// The TLS for the config's `kubernetes` targets; none when it has none.
    pub fn load(
        ca: &InterceptionCaConfig,
        targets: &[Target],
    ) -> Result<Option<ApiServerTls>, TlsSetupError> {
        let kubernetes: Vec<&Target> = targets
            .iter()
            .filter(|t| t.protocol == Protocol::Kubernetes)
            .collect();
        if kubernetes.is_empty() {
            return Ok(None);
        }
        let mut upstreams = HashMap::new();
        for target in kubernetes {
            let path = target
                .upstream_ca
                .clone()
                .unwrap_or_else(|| PathBuf::from(IN_CLUSTER_CA));
            let roots = cluster_roots(&path).map_err(|reason| TlsSetupError::UpstreamCa {
                target: target.name.clone(),
                path: path.clone(),
                reason,
            })?;
            let config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsSetupError::UpstreamCa {
                    target: target.name.clone(),
                    path,
                    reason: e.to_string(),
                })?
                .with_root_certificates(roots)
                .with_no_client_auth();
            upstreams.insert(target.name.clone(), Arc::new(config));
        }
        Ok(Some(ApiServerTls {
            ca: InterceptionCa::load(ca)?,
            upstreams,
        }))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cluster_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())?;
    for cert in certs {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(roots)
}

/// The client's TLS, terminated.
pub struct Terminated {
    pub stream: TlsStream<TcpStream>,
    /// What the client asked for, and what the API server is asked for.
    pub name: LeafName,
    /// The protocol agreed with the client, if any, to agree with the API server too.
    pub alpn: Option<Vec<u8>>,
    /// The client authenticated with a certificate, which cannot reach the API server
    /// through a terminator: its requests are refused.
    pub client_certificate: bool,
}

impl ApiServerTls {
    /// Terminates the client's TLS, presenting a leaf for the name it asked for, or for
    /// `dialled` when it sent none.
    pub async fn accept(&self, client: TcpStream, dialled: IpAddr) -> Result<Terminated, TlsError> {
        let start = LazyConfigAcceptor::new(Acceptor::default(), client)
            .await
            .map_err(TlsError::Client)?;
        let name = leaf_name(&start.client_hello(), dialled);
        if !self.ca.permits(&name) {
            return Err(TlsError::NameNotPermitted(name));
        }
        let leaf = self.ca.leaf(&name).map_err(TlsError::Ca)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Client(io::Error::other(e)))?
            .with_client_cert_verifier(Arc::new(NoticeClientCertificate(provider())))
            .with_cert_resolver(Arc::new(Leaf(leaf)));
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        let stream =
            start
                .into_stream(Arc::new(config))
                .await
                .map_err(|e| match rejection(&e) {
                    Some(alert) => TlsError::RejectedByClient {
                        name: name.clone(),
                        alert,
                    },
                    None => TlsError::Client(e),
                })?;
        let session = stream.get_ref().1;
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let client_certificate = session.peer_certificates().is_some_and(|c| !c.is_empty());
        Ok(Terminated {
            stream,
            name,
            alpn,
            client_certificate,
        })
    }

    /// How to reach the API server of `target` for one terminated client: TLS for the
    /// client's name, offering the protocol it agreed.
    pub fn upstream(&self, target: &str, client: &Terminated) -> Result<UpstreamTls, TlsError> {
        let base = self.upstreams.get(target).ok_or_else(|| {
            TlsError::Upstream(io::Error::other(format!(
                "target `{target}` has no TLS to its API server"
            )))
        })?;
        let server_name = match &client.name {
            LeafName::Dns(dns) => ServerName::try_from(dns.clone())
                .map_err(|e| TlsError::Upstream(io::Error::other(e)))?,
            LeafName::Ip(ip) => ServerName::from(*ip),
        };
        // A copy shares the base's session cache, so reconnects resume.
        let mut config = ClientConfig::clone(base);
        config.alpn_protocols = client.alpn.clone().into_iter().collect();
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// TLS to one client's API server, for every connection its session opens.
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl UpstreamTls {
    /// TLS over `tcp`; a failure says to check `upstream_ca`, as the client is told.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Connection> {
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| io::Error::other(TlsError::Upstream(e)))?;
        let http2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
        Ok(Connection {
            io: Box::new(tls),
            http2,
        })
    }

    /// New connections through `dial`, each with its own TLS.
    pub fn redial(self: Arc<Self>, dial: Dial) -> Redial {
        Box::new(move || {
            let (tls, connecting) = (self.clone(), dial());
            Box::pin(async move { tls.connect(connecting.await?).await })
        })
    }
}

/// The name to certify: the SNI when the client sent one (any in-cluster client does for a
/// name), else the address it dialled.
fn leaf_name(hello: &ClientHello<'_>, dialled: IpAddr) -> LeafName {
    match hello.server_name() {
        Some(name) => LeafName::Dns(name.to_ascii_lowercase()),
        None => LeafName::Ip(dialled),
    }
}

/// The alert a client sends when it does not trust the certificate it was shown.
fn rejection(error: &io::Error) -> Option<AlertDescription> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied),
        ) => Some(*alert),
        _ => None,
    }
}

/// Asks for a client certificate, optionally, only to learn that the client has one: its
/// requests are then refused with a Status saying why, where a client never asked would fail
/// with no explanation at the API server. The certificate is trusted for nothing, so its
/// chain is not checked; its handshake signature is, as the TLS library requires.
#[derive(Debug)]
struct NoticeClientCertificate(Arc<CryptoProvider>);

impl ClientCertVerifier for NoticeClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The one leaf minted for this connection's name.
struct Leaf(Arc<CertifiedKey>);

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Leaf")
    }
}

impl ResolvesServerCert for Leaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

//! The cluster CA the test server mints at start, and its serving certificate: the names and
//! addresses clients use for an API server (`kubernetes.default.svc`, the Service IP, loopback)
//! plus any given. ALPN offers h2 and http/1.1, as kube-apiserver does.
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};

pub struct ClusterTls {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub server: Arc<ServerConfig>,
}

const SERVING_NAMES: &[&str] = &[
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "127.0.0.1",
    "::1",
];

/// Mints the serving certificate; the CA's key is `ca_key_pem` when given (a restart in the
/// same state dir keeps the CA clients already trust), else new.
pub fn mint(extra_names: &[String], ca_key_pem: Option<&str>) -> Result<ClusterTls, String> {
    let fail = |what: &str, e: rcgen::Error| format!("{what}: {e}");
    let ca_key = match ca_key_pem {
        Some(pem) => KeyPair::from_pem(pem).map_err(|e| fail("CA key", e))?,
        None => KeyPair::generate().map_err(|e| fail("CA key", e))?,
    };
    let ca_key_pem = ca_key.serialize_pem();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
    ca.distinguished_name
        .push(DnType::CommonName, "interlock-testserver-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail("CA", e))?;
    let issuer = Issuer::new(ca, ca_key);

    let names: Vec<String> = SERVING_NAMES
        .iter()
        .map(|n| n.to_string())
        .chain(extra_names.iter().cloned())
        .collect();
    let leaf_key = KeyPair::generate().map_err(|e| fail("serving key", e))?;
    let mut leaf = CertificateParams::new(names).map_err(|e| fail("serving certificate", e))?;
    leaf.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| fail("serving certificate", e))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(
            vec![
                leaf_cert.der().clone(),
                CertificateDer::from(ca_cert.der().to_vec()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .map_err(|e| format!("TLS: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ClusterTls {
        ca_pem: ca_cert.pem(),
        ca_key_pem,
        server: Arc::new(server),
    })
}

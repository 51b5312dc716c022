//! The interception CA: what signs the certificates the gateway presents when it terminates
//! a pod's TLS to the API server. Its certificate carries X.509 name constraints that permit
//! only the API server's names and addresses, so its key, if stolen, can impersonate
//! nothing else. Pods trust it through the bundle `interlock ca-bundle` prints.
//!
//! The key is the secret: a file (in Kubernetes, mounted from a Secret), generated here with
//! mode 0600 when absent. The certificate is issued from it at start, with the same subject
//! each time, so a bundle published earlier still verifies the leaves signed now.
use std::{
    collections::HashMap,
    fs,
    io::Write,
    net::IpAddr,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};
use serde::Deserialize;

/// The names every in-cluster client may use for the API server.
pub const API_SERVER_NAMES: [&str; 4] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];
/// Where a pod (and the gateway's own pod) reads the cluster's CA.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
const SUBJECT: &str = "Interlock interception CA";
/// Leaves live a day and are minted again after half of it, so a cached one never expires
/// in use.
const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const LEAF_REFRESH: Duration = Duration::from_secs(12 * 3600);
/// Bounds the cache against clients that send many names (each must be permitted anyway).
const MAX_CACHED_LEAVES: usize = 256;

/// The `interception_ca:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptionCaConfig {
    /// The CA's private key (PEM, PKCS#8). Generated here, mode 0600, when the file is absent.
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// Names permitted besides `API_SERVER_NAMES`: the cluster endpoint's host (on EKS,
    /// `<id>.<zone>.<region>.eks.amazonaws.com`).
    #[serde(default)]
    pub names: Vec<String>,
    /// Addresses permitted: the `default/kubernetes` ClusterIP(s), and any endpoint address
    /// pods dial directly. With none, no leaf may name an address.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

impl Default for InterceptionCaConfig {
    fn default() -> Self {
        InterceptionCaConfig {
            key: default_key(),
            names: Vec::new(),
            addresses: Vec::new(),
        }
    }
}

fn default_key() -> PathBuf {
    PathBuf::from("/var/lib/interlock/interception-ca.key")
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("interception CA key {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "interception CA key {0} is readable by group or others; `chmod 600` it (anyone who reads it can intercept the API server's traffic)"
    )]
    KeyExposed(PathBuf),
    #[error("interception CA key {path} is not a PEM PKCS#8 private key: {reason}")]
    KeyInvalid { path: PathBuf, reason: String },
    #[error("`{0}` is not a name this CA may certify (interception_ca.names and .addresses)")]
    NotPermitted(String),
    #[error("minting a certificate: {0}")]
    Mint(String),
}

/// What a leaf certifies: the name the client asked for (SNI), or the address it dialled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeafName {
    Dns(String),
    Ip(IpAddr),
}

impl std::fmt::Display for LeafName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeafName::Dns(name) => f.write_str(name),
            LeafName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

pub struct InterceptionCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    names: Vec<String>,
    addresses: Vec<IpAddr>,
    leaves: Mutex<HashMap<LeafName, (Arc<CertifiedKey>, Instant)>>,
}

impl InterceptionCa {
    /// Loads the key (or generates it) and issues the CA certificate with today's
    /// constraints.
    pub fn load(config: &InterceptionCaConfig) -> Result<InterceptionCa, CaError> {
        let key = load_or_generate_key(&config.key)?;
        let names: Vec<String> = API_SERVER_NAMES
            .iter()
            .map(|n| n.to_string())
            .chain(config.names.iter().map(|n| n.to_ascii_lowercase()))
            .collect();
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| CaError::Mint(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, SUBJECT);
        // Leaves only: it can sign no CA below it.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
        params.name_constraints = Some(name_constraints(&names, &config.addresses));
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Mint(e.to_string()))?;
        Ok(InterceptionCa {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            names,
            addresses: config.addresses.clone(),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// What pods should trust for the API server: the cluster's CA, then this one.
    pub fn bundle(&self, cluster_ca_pem: &str) -> String {
        let mut bundle = cluster_ca_pem.trim_end().to_string();
        bundle.push('\n');
        bundle.push_str(&self.cert_pem);
        bundle
    }

    pub fn permits(&self, name: &LeafName) -> bool {
        match name {
            LeafName::Dns(dns) => self.names.iter().any(|n| n.eq_ignore_ascii_case(dns)),
            LeafName::Ip(ip) => self.addresses.contains(ip),
        }
    }

    /// The certificate and key to present for `name`, from the cache when one is fresh.
    pub fn leaf(&self, name: &LeafName) -> Result<Arc<CertifiedKey>, CaError> {
        if !self.permits(name) {
            return Err(CaError::NotPermitted(name.to_string()));
        }
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((leaf, minted)) = leaves.get(name)
            && minted.elapsed() < LEAF_REFRESH
        {
            return Ok(leaf.clone());
        }
        let leaf = Arc::new(self.mint(name)?);
        if leaves.len() >= MAX_CACHED_LEAVES {
            leaves.clear();
        }
        leaves.insert(name.clone(), (leaf.clone(), Instant::now()));
        Ok(leaf)
    }

    fn mint(&self, name: &LeafName) -> Result<CertifiedKey, CaError> {
        let fail = |e: rcgen::Error| CaError::Mint(e.to_string());
        let key = KeyPair::generate().map_err(fail)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.subject_alt_names = vec![match name {
            LeafName::Dns(dns) => rcgen::SanType::DnsName(dns.clone().try_into().map_err(fail)?),
            LeafName::Ip(ip) => rcgen::SanType::IpAddress(*ip),
        }];
        // No subject: OpenSSL checks a common name against the DNS constraints as if it were
        // a name, which an address never passes. The SAN is then critical, as RFC 5280 asks.
        params.distinguished_name = DistinguishedName::new();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
        params.not_after = time::OffsetDateTime::now_utc() + LEAF_LIFETIME;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(fail)?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&private)
            .map_err(|e| CaError::Mint(e.to_string()))?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signing,
        ))
    }
}

/// Permitted: the names (and their subdomains, as RFC 5280 reads a DNS constraint) and each
/// address alone. Without addresses, every address is excluded: a constraint of one kind
/// leaves the other kinds free.
fn name_constraints(names: &[String], addresses: &[IpAddr]) -> NameConstraints {
    let mut permitted: Vec<GeneralSubtree> = names
        .iter()
        .map(|n| GeneralSubtree::DnsName(n.clone()))
        .collect();
    permitted.extend(addresses.iter().map(|ip| {
        GeneralSubtree::IpAddress(match ip {
            IpAddr::V4(v4) => CidrSubnet::from_v4_prefix(v4.octets(), 32),
            IpAddr::V6(v6) => CidrSubnet::from_v6_prefix(v6.octets(), 128),
        })
    }));
    let excluded = if addresses.is_empty() {
        vec![
            GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([0; 4], 0)),
            GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix([0; 16], 0)),
        ]
    } else {
        Vec::new()
    };
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

/// A new interception CA key (ECDSA P-256, PKCS#8 PEM when serialized).
pub fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate().map_err(|e| CaError::Mint(e.to_string()))
}

fn load_or_generate_key(path: &Path) -> Result<KeyPair, CaError> {
    let file_error = |source| CaError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(pem) => {
            let mode = fs::metadata(path).map_err(file_error)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(CaError::KeyExposed(path.to_path_buf()));
            }
            KeyPair::from_pem(&pem).map_err(|e| CaError::KeyInvalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = new_key()?;
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(file_error)?;
            }
            // create_new: never overwrite a key another gateway wrote meanwhile.
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(file_error)?;
            file.write_all(key.serialize_pem().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(file_error)?;
            tracing::warn!(
                path = %path.display(),
                "generated a new interception CA key: whoever holds it can intercept API-server \
                 traffic of pods that trust it; keep it on this host only, or in Kubernetes \
                 mount it from a Secret (interception_ca.key)"
            );
            Ok(key)
        }
        Err(e) => Err(file_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{
        RootCertStore,
        client::{WebPkiServerVerifier, danger::ServerCertVerifier},
        pki_types::{ServerName, UnixTime},
    };

    use super::*;

    fn ca(dir: &Path, names: &[&str], addresses: &[&str]) -> InterceptionCa {
        InterceptionCa::load(&InterceptionCaConfig {
            key: dir.join("ca.key"),
            names: names.iter().map(|n| n.to_string()).collect(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        })
        .unwrap()
    }

    /// What a client does with the leaf: webpki's chain and name check against the CA alone.
    fn verify(
        ca: &InterceptionCa,
        chain: &[CertificateDer<'static>],
        name: &str,
    ) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A leaf signed by the CA's key for any name, as a thief holding the key could make.
    fn forged(ca: &InterceptionCa, san: rcgen::SanType) -> Vec<CertificateDer<'static>> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![san];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        vec![cert.der().clone(), ca.cert_der.clone()]
    }

    #[test]
    fn leaves_for_the_api_servers_names_verify_and_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(
            dir.path(),
            &["ABC.gr7.eu-west-1.eks.amazonaws.com"],
            &["10.100.0.1"],
        );
        for name in [
            "kubernetes.default.svc",
            "abc.gr7.eu-west-1.eks.amazonaws.com",
            "10.100.0.1",
        ] {
            let leaf_name = match name.parse::<IpAddr>() {
                Ok(ip) => LeafName::Ip(ip),
                Err(_) => LeafName::Dns(name.into()),
            };
            let leaf = ca.leaf(&leaf_name).unwrap();
            verify(&ca, &leaf.cert, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(Arc::ptr_eq(&leaf, &ca.leaf(&leaf_name).unwrap()), "cached");
        }
        let refused = ca.leaf(&LeafName::Dns("example.com".into())).err().unwrap();
        assert!(
            refused
                .to_string()
                .contains("not a name this CA may certify")
        );
        assert!(ca.leaf(&LeafName::Ip("10.0.0.9".parse().unwrap())).is_err());
    }

    #[test]
    fn a_stolen_key_can_impersonate_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), &[], &["10.100.0.1"]);
        let dns = |n: &str| rcgen::SanType::DnsName(n.to_string().try_into().unwrap());
        let e = verify(
            &ca,
            &forged(&ca, dns("login.example.com")),
            "login.example.com",
        )
        .unwrap_err();
        assert!(e.contains("NameConstraintViolation"), "{e}");
        let ip = rcgen::SanType::IpAddress("10.0.0.9".parse().unwrap());
        let e = verify(&ca, &forged(&ca, ip), "10.0.0.9").unwrap_err();
        assert!(e.contains("NameConstraintViolation"), "{e}");
        // The same forgery for a permitted name verifies: the constraint is what refused.
        verify(&ca, &forged(&ca, dns("kubernetes")), "kubernetes").unwrap();

        let no_addresses = tempfile::tempdir().unwrap();
        let ca = super::tests::ca(no_addresses.path(), &[], &[]);
        let ip = rcgen::SanType::IpAddress("10.100.0.1".parse().unwrap());
        let e = verify(&ca, &forged(&ca, ip), "10.100.0.1").unwrap_err();
        assert!(e.contains("NameConstraintViolation"), "{e}");
    }

    #[test]
    fn the_key_is_generated_private_kept_across_restarts_and_refused_when_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let first = ca(dir.path(), &[], &[]);
        let path = dir.path().join("ca.key");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let second = ca(dir.path(), &[], &[]);
        // A leaf of the restarted CA verifies against the certificate published before.
        let leaf = second.leaf(&LeafName::Dns("kubernetes".into())).unwrap();
        verify(&first, &leaf.cert, "kubernetes").unwrap();
        assert!(
            first
                .bundle("CLUSTER\n")
                .starts_with("CLUSTER\n-----BEGIN CERTIFICATE-----")
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = InterceptionCa::load(&InterceptionCaConfig {
            key: path.clone(),
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not a key").unwrap();
        let e = InterceptionCa::load(&InterceptionCaConfig {
            key: path,
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("not a PEM PKCS#8 private key"),
            "{e}"
        );
    }
}

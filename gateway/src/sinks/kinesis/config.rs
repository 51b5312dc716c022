//! Builds the Kinesis client: the default credential chain (on EKS: Pod Identity or IRSA),
//! rustls with ring, explicit timeouts (the SDK sets none), and optional endpoint and region
//! overrides for tests and VPC endpoints. `Kinesis` is the `recording.kinesis` config section.
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_kinesis::Client;
use aws_smithy_http_client::{Builder, tls};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kinesis {
    pub stream: String,
    /// Defaults to the SDK's chain (AWS_REGION, profile, IMDS).
    #[serde(default)]
    pub region: Option<String>,
    /// Override for tests or VPC endpoints, e.g. http://127.0.0.1:4567.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// How long a partly filled batch waits for more records.
    #[serde(
        default = "linger",
        deserialize_with = "crate::config::values::duration"
    )]
    pub linger: Duration,
    /// The stream's maximum record size (data plus partition key); larger records are split.
    #[serde(
        default = "max_record_bytes",
        deserialize_with = "crate::config::values::byte_size"
    )]
    pub max_record_bytes: u64,
    /// Timeout for one PutRecords or GetRecords call, retries included.
    #[serde(
        default = "kinesis_timeout",
        deserialize_with = "crate::config::values::duration"
    )]
    pub timeout: Duration,
}

fn linger() -> Duration {
    Duration::from_millis(200)
}
fn max_record_bytes() -> u64 {
    1 << 20
}
fn kinesis_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The roots Kinesis's certificate is verified against: the system's, when it has any, else
/// the Mozilla roots built in. The image is FROM scratch, with no system store, and the SDK's
/// default (system roots only) would find none.
fn trust_store() -> tls::TrustStore {
    if !rustls_native_certs::load_native_certs().certs.is_empty() {
        return tls::TrustStore::default();
    }
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .fold(tls::TrustStore::empty(), |store, root| {
            store.with_pem_certificate(pem::encode(&pem::Pem::new("CERTIFICATE", root.to_vec())))
        })
}

pub async fn client(config: &Kinesis) -> Client {
    let mut http = Builder::new().tls_provider(tls::Provider::Rustls(
        tls::rustls_provider::CryptoMode::Ring,
    ));
    match tls::TlsContext::builder()
        .with_trust_store(trust_store())
        .build()
    {
        Ok(context) => http = http.tls_context(context),
        Err(e) => {
            tracing::warn!(error = %e, "the TLS roots for Kinesis could not be set; using the SDK's defaults")
        }
    }
    let http = http.build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(config.timeout)
                .operation_attempt_timeout(config.timeout / 2)
                .connect_timeout(std::time::Duration::from_secs(3))
                .build(),
        )
        // The sink retries forever on its own terms; the SDK only smooths transient errors.
        .retry_config(RetryConfig::standard().with_max_attempts(2));
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    Client::new(&loader.load().await)
}

//! Builds the Kinesis client: the default credential chain (on EKS: Pod Identity or IRSA),
//! rustls with ring, explicit timeouts (the SDK sets none), and optional endpoint and region
//! overrides for tests and VPC endpoints.
use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_kinesis::Client;
use aws_smithy_http_client::{Builder, tls};

use crate::config::Kinesis;

pub async fn client(config: &Kinesis) -> Client {
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
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

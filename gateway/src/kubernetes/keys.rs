//! The cluster's service-account issuer and signing keys, read from the API server itself
//! (`/.well-known/openid-configuration` and `/openid/v1/jwks`) with the gateway's own
//! credentials, so no route to the public issuer URL is needed.
use std::{future::Future, pin::Pin, time::Duration};

use kube::Client;

use crate::tokens::{FetchedKeys, KeySource};

pub struct ApiServerKeys {
    pub client: Client,
}

impl ApiServerKeys {
    async fn get(&self, path: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
        let request = hyper::Request::get(path)
            .body(kube::client::Body::empty())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .send(request)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {path}: {}", response.status()));
        }
        let max_age = response
            .headers()
            .get(hyper::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = response
            .into_body()
            .collect_bytes()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        Ok((body.to_vec(), max_age))
    }
}

/// `max-age=N` of a Cache-Control value.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|n| n.parse().ok())
        .map(Duration::from_secs)
}

impl KeySource for ApiServerKeys {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<FetchedKeys, String>> + Send + '_>> {
        Box::pin(async move {
            let (discovery, _) = self.get("/.well-known/openid-configuration").await?;
            let discovery: serde_json::Value = serde_json::from_slice(&discovery)
                .map_err(|e| format!("the issuer's discovery document does not parse: {e}"))?;
            let issuer = discovery["issuer"]
                .as_str()
                .ok_or("the issuer's discovery document names no issuer")?
                .to_string();
            let (jwks, max_age) = self.get("/openid/v1/jwks").await?;
            let keys = serde_json::from_slice(&jwks)
                .map_err(|e| format!("the cluster's JWKS does not parse: {e}"))?;
            Ok(FetchedKeys {
                issuer,
                keys,
                max_age,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(max_age("no-store"), None);
    }
}

//! Service-account tokens, verified offline as the API server's authenticator would: the
//! signature against the cluster's JWKS (cached as its Cache-Control says, fetched again on
//! an unknown `kid`, at most every `KEYS_MIN_REFRESH`), asymmetric algorithms only, `iss`,
//! `aud` and the lifetime with a small skew. Bound tokens name their pod; legacy tokens (from
//! a Secret) name only a namespace and service account. Binding a token to the kernel-attested
//! pod is the caller's (`protocols::l7::identity`). Tokens of other issuers (`identity.oidc`)
//! are `oidc`'s.
pub mod oidc;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{Jwk, JwkSet},
};
use serde::{Deserialize, Serialize};

/// The issuer every legacy service-account token carries.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// How soon an unknown `kid` may send for the keys again: EKS throttles its JWKS endpoint.
const KEYS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// How long keys are kept when the JWKS response says nothing of caching.
const KEYS_DEFAULT_TTL: Duration = Duration::from_secs(300);

const ASYMMETRIC: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LegacyTokens {
    /// Refused.
    Deny,
    /// Let through and recorded as legacy: it names no pod, so it cannot be bound to one.
    #[default]
    Flag,
    /// Let through, recorded as verified for its service account.
    Allow,
}

/// The `identity:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Audiences a bound token may carry to be accepted here; by default the issuer's own
    /// (what a pod's projected token carries).
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub legacy_tokens: LegacyTokens,
    /// Allowed clock difference for `exp` and `nbf`.
    #[serde(
        default = "default_skew",
        deserialize_with = "crate::config::values::duration"
    )]
    pub clock_skew: Duration,
    /// Other issuers whose bearer tokens are verified and recorded: MCP clients' OAuth
    /// tokens, for example.
    #[serde(default)]
    pub oidc: Vec<oidc::OidcIssuerConfig>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            audiences: Vec::new(),
            legacy_tokens: LegacyTokens::default(),
            clock_skew: default_skew(),
            oidc: Vec::new(),
        }
    }
}

fn default_skew() -> Duration {
    Duration::from_secs(60)
}

/// Every verifier of bearer tokens the gateway has: the cluster's service-account tokens
/// (node mode only) and the `identity.oidc` issuers.
#[derive(Default)]
pub struct TokenVerifiers {
    pub service_accounts: Option<Arc<ServiceAccountTokens>>,
    pub oidc: Vec<oidc::OidcIssuer>,
}

impl TokenVerifiers {
    pub fn new(
        config: &IdentityConfig,
        service_accounts: Option<Arc<ServiceAccountTokens>>,
    ) -> Result<TokenVerifiers, String> {
        let oidc = config
            .oidc
            .iter()
            .enumerate()
            .map(|(index, issuer)| {
                oidc::OidcIssuer::new(issuer.clone(), &format!("identity.oidc[{index}].issuer"))
            })
            .collect::<Result<_, _>>()?;
        Ok(TokenVerifiers {
            service_accounts,
            oidc,
        })
    }

    /// The trusted OIDC issuer a token claims to come from, if it is one.
    pub fn oidc_issuer_of(&self, token: &str) -> Option<&oidc::OidcIssuer> {
        // Every request with a bearer token asks: decode nothing when no issuer is trusted.
        if self.oidc.is_empty() {
            return None;
        }
        let claimed = oidc::claimed_issuer(token)?;
        self.oidc.iter().find(|i| i.config.issuer == claimed)
    }
}

/// The cluster's issuer and keys, as its discovery document and JWKS give them.
pub struct FetchedKeys {
    pub issuer: String,
    pub keys: JwkSet,
    /// From the JWKS response's Cache-Control `max-age`.
    pub max_age: Option<Duration>,
}

/// Where the keys come from (node mode: the API server, through its client).
pub trait KeySource: Send + Sync {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<FetchedKeys, String>> + Send + '_>>;
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIdentity {
    pub issuer: String,
    pub subject: String,
    pub namespace: String,
    pub service_account: String,
    /// The pod a bound token names; None for a legacy token or one bound to no pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    pub legacy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT of this cluster: some other bearer token, left alone.
    #[error("not a service-account token of this cluster")]
    NotOurs,
    #[error("{0}")]
    Invalid(String),
    #[error("the cluster's keys cannot be fetched ({0}); the request is refused until they can")]
    KeysUnavailable(String),
}

struct Cached {
    fetched: FetchedKeys,
    at: Instant,
}

pub struct ServiceAccountTokens {
    pub config: IdentityConfig,
    source: Box<dyn KeySource>,
    cache: tokio::sync::Mutex<Option<Cached>>,
    last_fetch: Mutex<Option<Instant>>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<BoundClaim>,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    legacy_namespace: Option<String>,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    legacy_service_account: Option<String>,
}

#[derive(Deserialize)]
struct BoundClaim {
    namespace: String,
    serviceaccount: Named,
    pod: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
    #[serde(default)]
    uid: Option<String>,
}

impl ServiceAccountTokens {
    pub fn new(config: IdentityConfig, source: Box<dyn KeySource>) -> Self {
        ServiceAccountTokens {
            config,
            source,
            cache: tokio::sync::Mutex::new(None),
            last_fetch: Mutex::new(None),
        }
    }

    /// Verifies a bearer token; `NotOurs` for anything that is not this cluster's.
    pub async fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::NotOurs)?;
        let unverified: Claims = jsonwebtoken::dangerous::insecure_decode(token)
            .map_err(|_| TokenError::NotOurs)?
            .claims;
        let mut cache = self.cache.lock().await;
        let stale = cache
            .as_ref()
            .is_none_or(|c| c.at.elapsed() > c.fetched.max_age.unwrap_or(KEYS_DEFAULT_TTL));
        if stale {
            *cache = Some(self.fetch().await?);
        }
        let issuer = cache
            .as_ref()
            .map(|c| c.fetched.issuer.clone())
            .unwrap_or_default();
        if unverified.iss != issuer && unverified.iss != LEGACY_ISSUER {
            // Shaped like a service-account token, but from elsewhere: refused, not let by.
            if unverified.kubernetes.is_some() {
                return Err(TokenError::Invalid(format!(
                    "wrong issuer `{}`: this cluster's is `{issuer}`",
                    unverified.iss
                )));
            }
            return Err(TokenError::NotOurs);
        }
        let kid = header.kid.clone().unwrap_or_default();
        let known = |cache: &Option<Cached>| {
            cache
                .as_ref()
                .and_then(|c| c.fetched.keys.find(&kid).cloned())
        };
        // An unknown key may be a rotation since the last fetch (EKS rotates weekly).
        if known(&cache).is_none() && self.may_refetch() {
            *cache = Some(self.fetch().await?);
        }
        let jwk = known(&cache).ok_or_else(|| {
            TokenError::Invalid(format!(
                "signed by key `{kid}`, which the cluster does not publish (forged, or from another cluster)"
            ))
        })?;
        drop(cache);
        self.check(token, &header.alg, &jwk, &issuer, &unverified)
    }

    fn may_refetch(&self) -> bool {
        let last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|at| at.elapsed() >= KEYS_MIN_REFRESH)
    }

    async fn fetch(&self) -> Result<Cached, TokenError> {
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let fetched = self
            .source
            .fetch()
            .await
            .map_err(TokenError::KeysUnavailable)?;
        Ok(Cached {
            fetched,
            at: Instant::now(),
        })
    }

    fn check(
        &self,
        token: &str,
        algorithm: &Algorithm,
        jwk: &Jwk,
        issuer: &str,
        unverified: &Claims,
    ) -> Result<TokenIdentity, TokenError> {
        if !ASYMMETRIC.contains(algorithm) {
            return Err(TokenError::Invalid(format!(
                "signed with {algorithm:?}; only asymmetric algorithms are accepted"
            )));
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| TokenError::Invalid(format!("the cluster's key is unusable: {e}")))?;
        let legacy = unverified.iss == LEGACY_ISSUER;
        let mut validation = Validation::new(*algorithm);
        validation.leeway = self.config.clock_skew.as_secs();
        if legacy {
            validation.set_issuer(&[LEGACY_ISSUER]);
            validation.validate_exp = false;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
        } else {
            validation.set_issuer(&[issuer]);
            validation.validate_nbf = true;
            let audiences = if self.config.audiences.is_empty() {
                vec![issuer.to_string()]
            } else {
                self.config.audiences.clone()
            };
            validation.set_audience(&audiences);
        }
        let claims: Claims = jsonwebtoken::decode(token, &key, &validation)
            .map_err(|e| TokenError::Invalid(explain(&e, &self.config.audiences)))?
            .claims;
        let identity = match (&claims.kubernetes, legacy) {
            (Some(bound), false) => TokenIdentity {
                issuer: claims.iss.clone(),
                subject: claims.sub.clone(),
                namespace: bound.namespace.clone(),
                service_account: bound.serviceaccount.name.clone(),
                pod: bound.pod.as_ref().map(|p| p.name.clone()),
                pod_uid: bound.pod.as_ref().and_then(|p| p.uid.clone()),
                legacy: false,
            },
            (_, true) => TokenIdentity {
                issuer: claims.iss.clone(),
                subject: claims.sub.clone(),
                namespace: claims.legacy_namespace.clone().unwrap_or_default(),
                service_account: claims.legacy_service_account.clone().unwrap_or_default(),
                pod: None,
                pod_uid: None,
                legacy: true,
            },
            (None, false) => {
                return Err(TokenError::Invalid(
                    "no kubernetes.io claim: not a service-account token".into(),
                ));
            }
        };
        Ok(identity)
    }
}

/// What was wrong with a token, in words an operator can act on.
fn explain(error: &jsonwebtoken::errors::Error, audiences: &[String]) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired; the pod's kubelet refreshes projected tokens, so a client holding an old copy must read it again".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf); check the node's clock".into(),
        ErrorKind::InvalidAudience => format!("wrong audience; accepted here: {}", if audiences.is_empty() { "the cluster issuer".to_string() } else { audiences.join(", ") }),
        ErrorKind::InvalidIssuer => "wrong issuer: not this cluster's".into(),
        ErrorKind::InvalidSignature => "bad signature: the token was altered or not signed by this cluster".into(),
        _ => format!("invalid token: {error}"),
    }
}

//! OIDC-issued bearer tokens (ID tokens, and JWT access tokens shaped like them), verified
//! with openidconnect: the issuer's discovery document and JWKS, fetched again when a
//! signature fails on a key set older than `KEYS_MIN_REFRESH`; asymmetric algorithms only;
//! `iss`, any of the accepted audiences, and the lifetime. Used for MCP clients' OAuth
//! tokens (`identity.oidc`) and for approvers (`approvals.oidc`).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use openidconnect::{
    AdditionalClaims, ClaimsVerificationError, ClientId, IdToken, IssuerUrl, Nonce,
    core::{
        CoreGenderClaim, CoreIdTokenVerifier, CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm, CoreProviderMetadata,
    },
};
use serde::{Deserialize, Serialize};

use crate::identity::Principal;

/// Keys are fetched again after this long, or sooner when a signature fails.
const KEYS_TTL: Duration = Duration::from_secs(300);
const KEYS_MIN_REFRESH: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// What identity providers sign tokens with. Never HMAC (a gateway holds no client secret)
/// and never `none`.
const ASYMMETRIC_ALGORITHMS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// One trusted issuer of `identity.oidc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// Issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// A token must carry one of these in `aud`.
    pub audiences: Vec<String>,
    /// The claim that lists the caller's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

pub fn default_groups_claim() -> String {
    "groups".into()
}

/// An issuer URL must be https; plain http only on loopback, for testing.
pub fn validate_issuer_url(field: &str, url: &str) -> Result<(), String> {
    let loopback = ["http://127.0.0.1", "http://[::1]", "http://localhost"]
        .iter()
        .any(|prefix| url.starts_with(prefix));
    if url.starts_with("https://") || loopback {
        return Ok(());
    }
    Err(format!(
        "{field} `{url}` must be an https URL (plain http only on loopback, for testing)"
    ))
}

/// Claims outside the standard set, so the groups claim can have any configured name.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OtherClaims(HashMap<String, serde_json::Value>);
impl AdditionalClaims for OtherClaims {}

type OidcToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot reach the OIDC issuer: {0}")]
    IssuerUnavailable(String),
}

struct Keys {
    metadata: CoreProviderMetadata,
    fetched: Instant,
}

pub struct OidcIssuer {
    pub config: OidcIssuerConfig,
    issuer: IssuerUrl,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Option<Keys>>,
}

impl OidcIssuer {
    /// `field` names the config key in errors.
    pub fn new(config: OidcIssuerConfig, field: &str) -> Result<OidcIssuer, String> {
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| format!("{field} `{}`: {e}", config.issuer))?;
        let http = reqwest::Client::builder()
            // Discovery must not be redirected elsewhere (openidconnect's advice).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client for OIDC discovery: {e}"))?;
        Ok(OidcIssuer {
            config,
            issuer,
            http,
            keys: tokio::sync::Mutex::new(None),
        })
    }

    /// Verifies a token and says who it names.
    pub async fn verify(&self, token: &str) -> Result<Principal, OidcError> {
        let token: OidcToken = token
            .parse()
            .map_err(|e| OidcError::Invalid(format!("not a JWT ({e})")))?;
        let mut keys = self.keys.lock().await;
        let stale = keys.as_ref().is_none_or(|k| k.fetched.elapsed() > KEYS_TTL);
        if stale {
            *keys = Some(self.fetch().await?);
        }
        let mut result = self.check(&token, keys.as_ref().expect("fetched above"));
        // The issuer may have rotated its keys since the last fetch.
        if matches!(
            result,
            Err(ClaimsVerificationError::SignatureVerification(_))
        ) && keys
            .as_ref()
            .is_some_and(|k| k.fetched.elapsed() > KEYS_MIN_REFRESH)
        {
            *keys = Some(self.fetch().await?);
            result = self.check(&token, keys.as_ref().expect("fetched above"));
        }
        result.map_err(|e| OidcError::Invalid(self.explain(&e)))
    }

    async fn fetch(&self) -> Result<Keys, OidcError> {
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| OidcError::IssuerUnavailable(format!("{}: {e}", self.config.issuer)))?;
        Ok(Keys {
            metadata,
            fetched: Instant::now(),
        })
    }

    fn check(&self, token: &OidcToken, keys: &Keys) -> Result<Principal, ClaimsVerificationError> {
        let first = self.config.audiences.first().cloned().unwrap_or_default();
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(first),
            self.issuer.clone(),
            keys.metadata.jwks().clone(),
        )
        .set_allowed_algs(ASYMMETRIC_ALGORITHMS)
        // Any one accepted audience will do; checked below, after the signature.
        .require_audience_match(false);
        // The tokens come from a sign-in elsewhere: there is no nonce to compare.
        let claims = token.claims(&verifier, |_: Option<&Nonce>| Ok(()))?;
        let accepted = claims
            .audiences()
            .iter()
            .any(|aud| self.config.audiences.iter().any(|a| a == aud.as_str()));
        if !accepted {
            let found: Vec<&str> = claims.audiences().iter().map(|a| a.as_str()).collect();
            return Err(ClaimsVerificationError::InvalidAudience(format!(
                "found {found:?}"
            )));
        }
        let groups = match claims.additional_claims().0.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str().map(String::from))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(Principal {
            issuer: Some(claims.issuer().to_string()),
            subject: Some(claims.subject().to_string()),
            email: claims.email().map(|e| e.to_string()),
            groups,
        })
    }

    /// What was wrong with a token, and what to do about it.
    fn explain(&self, error: &ClaimsVerificationError) -> String {
        let issuer = &self.config.issuer;
        match error {
            ClaimsVerificationError::Expired(_) => {
                format!("the token has expired; get a fresh one from {issuer}")
            }
            ClaimsVerificationError::InvalidAudience(detail) => format!(
                "wrong audience ({detail}); accepted here: {}",
                self.config.audiences.join(", ")
            ),
            ClaimsVerificationError::InvalidIssuer(detail) => {
                format!("wrong issuer ({detail}); expected {issuer}")
            }
            ClaimsVerificationError::SignatureVerification(e) => {
                format!("bad signature ({e}); the token was not signed by {issuer}")
            }
            other => other.to_string(),
        }
    }
}

/// The `iss` a JWT claims, read before anything is verified, to choose its verifier.
pub fn claimed_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Issuer {
        iss: String,
    }
    jsonwebtoken::dangerous::insecure_decode::<Issuer>(token)
        .ok()
        .map(|t| t.claims.iss)
}

//! Approver authentication: OIDC ID tokens checked against the configured issuer (discovery
//! and JWKS via openidconnect), audience, expiry, and the allowed groups or e-mails.
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

use super::config::OidcConfig;
use crate::recording::record::Principal;

/// Keys are fetched again after this long, or sooner when a token names an unknown key.
const KEYS_TTL: Duration = Duration::from_secs(300);
const KEYS_MIN_REFRESH: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// What identity providers sign ID tokens with. Never HMAC (a gateway holds no client secret)
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

/// Claims outside the standard set, so the groups claim can have any configured name.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OtherClaims(HashMap<String, serde_json::Value>);
impl AdditionalClaims for OtherClaims {}

type ApproverToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no approver token: send `Authorization: Bearer <OIDC ID token>` (the CLI takes --token-file or INTERLOCK_APPROVER_TOKEN)"
    )]
    Missing,
    #[error("approver token rejected: {0}")]
    Invalid(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("cannot reach the approvers' OIDC issuer: {0}; holds stay pending, try again")]
    IssuerUnavailable(String),
}

struct Keys {
    metadata: CoreProviderMetadata,
    fetched: Instant,
}

pub struct ApproverVerifier {
    config: OidcConfig,
    issuer: IssuerUrl,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Option<Keys>>,
}

impl ApproverVerifier {
    pub fn new(config: OidcConfig) -> Result<ApproverVerifier, String> {
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| format!("approvals.oidc.issuer `{}`: {e}", config.issuer))?;
        let http = reqwest::Client::builder()
            // Discovery must not be redirected elsewhere (openidconnect's advice).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client for OIDC discovery: {e}"))?;
        Ok(ApproverVerifier {
            config,
            issuer,
            http,
            keys: tokio::sync::Mutex::new(None),
        })
    }

    /// Verifies an ID token and the approver's membership; returns who it is.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let token: ApproverToken = token
            .parse()
            .map_err(|e| AuthError::Invalid(format!("not a JWT ID token ({e})")))?;
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
        let principal = result.map_err(|e| AuthError::Invalid(explain(&e, &self.config)))?;
        self.allowed(&principal)?;
        Ok(principal)
    }

    async fn fetch(&self) -> Result<Keys, AuthError> {
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| AuthError::IssuerUnavailable(format!("{}: {e}", self.config.issuer)))?;
        Ok(Keys {
            metadata,
            fetched: Instant::now(),
        })
    }

    fn check(
        &self,
        token: &ApproverToken,
        keys: &Keys,
    ) -> Result<Principal, ClaimsVerificationError> {
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.config.audience.clone()),
            self.issuer.clone(),
            keys.metadata.jwks().clone(),
        )
        .set_allowed_algs(ASYMMETRIC_ALGORITHMS);
        // Approver tokens come from a sign-in elsewhere: there is no nonce to compare.
        let claims = token.claims(&verifier, |_: Option<&Nonce>| Ok(()))?;
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

    fn allowed(&self, who: &Principal) -> Result<(), AuthError> {
        let by_group = who
            .groups
            .iter()
            .any(|g| self.config.allowed_groups.contains(g));
        let by_email = who.email.as_ref().is_some_and(|e| {
            self.config
                .allowed_emails
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(e))
        });
        if by_group || by_email {
            return Ok(());
        }
        Err(AuthError::NotAllowed(format!(
            "{} is not an approver: not in allowed_groups {:?} and not in allowed_emails; ask an admin to add you",
            who.email
                .as_deref()
                .or(who.subject.as_deref())
                .unwrap_or("this token"),
            self.config.allowed_groups
        )))
    }
}

/// What was wrong with a token, and what to do about it.
fn explain(error: &ClaimsVerificationError, config: &OidcConfig) -> String {
    match error {
        ClaimsVerificationError::Expired(_) => {
            "the ID token has expired; sign in again for a fresh one".into()
        }
        ClaimsVerificationError::InvalidAudience(detail) => format!(
            "wrong audience ({detail}); the token must be issued for `{}`",
            config.audience
        ),
        ClaimsVerificationError::InvalidIssuer(detail) => format!(
            "wrong issuer ({detail}); approvers sign in at {}",
            config.issuer
        ),
        ClaimsVerificationError::SignatureVerification(e) => format!(
            "bad signature ({e}); the token was not signed by {}",
            config.issuer
        ),
        other => other.to_string(),
    }
}

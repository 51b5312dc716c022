//! Approver authentication: an OIDC ID token verified by `tokens::oidc` (the configured
//! issuer and audience), then the allowed groups or e-mails.
use super::config::OidcConfig;
use crate::{
    recording::record::Principal,
    tokens::oidc::{OidcError, OidcIssuer, OidcIssuerConfig},
};

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

pub struct ApproverVerifier {
    config: OidcConfig,
    issuer: OidcIssuer,
}

impl ApproverVerifier {
    pub fn new(config: OidcConfig) -> Result<ApproverVerifier, String> {
        let issuer = OidcIssuer::new(
            OidcIssuerConfig {
                issuer: config.issuer.clone(),
                audiences: vec![config.audience.clone()],
                groups_claim: config.groups_claim.clone(),
            },
            "approvals.oidc.issuer",
        )?;
        Ok(ApproverVerifier { config, issuer })
    }

    /// Verifies an ID token and the approver's membership; returns who it is.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let principal = self.issuer.verify(token).await.map_err(|e| match e {
            OidcError::Invalid(reason) => AuthError::Invalid(reason),
            OidcError::IssuerUnavailable(reason) => AuthError::IssuerUnavailable(reason),
        })?;
        self.allowed(&principal)?;
        Ok(principal)
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

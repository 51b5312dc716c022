//! Bearer tokens on a request, checked before anything goes upstream.
//! - A service-account token must be the token of the pod the kernel attests for this
//!   connection: a valid token replayed from another pod is refused as `identity_mismatch`,
//!   with both identities in the record.
//! - A token from a trusted OIDC issuer (`identity.oidc`) is verified and its subject and
//!   groups recorded; an invalid one is refused where the target requires one.
//!
//! Other tokens pass untouched, unless the target requires a token (`require_bound_token`,
//! `require_oidc_token`). What a verified token says is handed to policy as a `Principal`.
use hyper::HeaderMap;

use super::Exchange;
use crate::{
    identity::{PodIdentity, Principal},
    recording::record::{AttestedPod, RecordBody, TokenCheck, TokenOutcome},
    telemetry::events::{InternalEvent, TokenChecked},
    tokens::{
        LegacyTokens, TokenError, TokenIdentity, TokenVerifiers,
        oidc::{OidcError, OidcIssuer},
    },
};

/// Why a request is refused, for the protocol's own error.
pub struct Refused(pub String);

fn attested(pod: Option<&PodIdentity>) -> Option<AttestedPod> {
    pod.map(|p| AttestedPod {
        namespace: p.namespace.clone(),
        service_account: p.service_account.clone(),
        pod: p.pod.clone(),
        pod_uid: p.uid.clone(),
    })
}

/// What the API server's authenticator makes of a service-account token: its subject, and
/// the groups every service account is in.
fn service_account_principal(token: &TokenIdentity) -> Principal {
    Principal {
        issuer: Some(token.issuer.clone()),
        subject: Some(token.subject.clone()),
        email: None,
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", token.namespace),
            "system:authenticated".into(),
        ],
    }
}

/// What one check found, before it is recorded.
struct Finding {
    outcome: TokenOutcome,
    allowed: bool,
    token: Option<TokenIdentity>,
    principal: Option<Principal>,
    reason: Option<String>,
}

impl Finding {
    fn refused(outcome: TokenOutcome, token: Option<TokenIdentity>, reason: String) -> Self {
        Finding {
            outcome,
            allowed: false,
            token,
            principal: None,
            reason: Some(reason),
        }
    }

    fn service_account(outcome: TokenOutcome, token: TokenIdentity) -> Self {
        Finding {
            outcome,
            allowed: true,
            principal: Some(service_account_principal(&token)),
            token: Some(token),
            reason: None,
        }
    }
}

/// Checks the request's bearer token; records what it found. On success, who a verified
/// token says the caller is.
pub async fn check(exchange: &Exchange, headers: &HeaderMap) -> Result<Option<Principal>, Refused> {
    let bearer = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let pod = exchange.workload.kubernetes.as_deref();
    let finding = match find(exchange, &exchange.tokens, bearer, pod).await {
        Some(finding) => finding,
        None => return Ok(None),
    };
    conclude(exchange, pod, finding).await
}

/// None when there is nothing to record: no token the gateway can check, and none required.
async fn find(
    exchange: &Exchange,
    tokens: &TokenVerifiers,
    bearer: Option<&str>,
    pod: Option<&PodIdentity>,
) -> Option<Finding> {
    let target = &exchange.target;
    if !target.require_bound_token
        && let Some((bearer, issuer)) = bearer.and_then(|b| Some((b, tokens.oidc_issuer_of(b)?)))
    {
        return Some(oidc(issuer, bearer, target.require_oidc_token).await);
    }
    if target.require_oidc_token {
        let issuers: Vec<&str> = tokens
            .oidc
            .iter()
            .map(|i| i.config.issuer.as_str())
            .collect();
        let reason = format!(
            "this target requires a bearer token from a trusted OIDC issuer ({}), and the \
             request has {}",
            issuers.join(", "),
            if bearer.is_some() {
                "a token from none of them"
            } else {
                "none"
            }
        );
        return Some(Finding::refused(TokenOutcome::Missing, None, reason));
    }
    let required = target.require_bound_token;
    let (Some(service_accounts), Some(bearer)) = (&tokens.service_accounts, bearer) else {
        let reason = "this target requires the pod's own service-account token \
                      (Authorization: Bearer), and the request has none";
        return required.then(|| Finding::refused(TokenOutcome::Missing, None, reason.into()));
    };
    let token = match service_accounts.verify(bearer).await {
        Ok(token) => token,
        Err(TokenError::NotOurs) => {
            let reason = "this target requires the pod's own service-account token; the \
                          bearer token is not one of this cluster's";
            return required.then(|| Finding::refused(TokenOutcome::Missing, None, reason.into()));
        }
        Err(error @ TokenError::KeysUnavailable(_)) => {
            let reason = error.to_string();
            return Some(Finding::refused(
                TokenOutcome::KeysUnavailable,
                None,
                reason,
            ));
        }
        Err(TokenError::Invalid(reason)) => {
            return Some(Finding::refused(TokenOutcome::Rejected, None, reason));
        }
    };
    Some(bind(
        token,
        pod,
        service_accounts.config.legacy_tokens,
        required,
    ))
}

/// A verified service-account token against the pod the kernel attests.
fn bind(
    token: TokenIdentity,
    pod: Option<&PodIdentity>,
    legacy_tokens: LegacyTokens,
    required: bool,
) -> Finding {
    let same_account = pod.is_some_and(|p| {
        p.namespace == token.namespace && p.service_account == token.service_account
    });
    if !same_account {
        let reason = match pod {
            Some(p) => format!(
                "the token is {}'s, but the connection comes from pod {}/{} (service account \
                 {}): a token replayed from another pod",
                token.subject, p.namespace, p.pod, p.service_account
            ),
            None => format!(
                "the token is {}'s, but the connection comes from no pod this node knows",
                token.subject
            ),
        };
        return Finding::refused(TokenOutcome::IdentityMismatch, Some(token), reason);
    }
    if token.legacy {
        return match (legacy_tokens, required) {
            (LegacyTokens::Deny, _) => Finding::refused(
                TokenOutcome::LegacyRefused,
                Some(token),
                "legacy (Secret-based) service-account tokens are refused here \
                 (identity.legacy_tokens: deny); mount a projected token"
                    .into(),
            ),
            (_, true) => Finding::refused(
                TokenOutcome::LegacyRefused,
                Some(token),
                "this target requires a bound token; a legacy token names no pod".into(),
            ),
            (LegacyTokens::Flag, false) => {
                Finding::service_account(TokenOutcome::LegacyFlagged, token)
            }
            (LegacyTokens::Allow, false) => {
                Finding::service_account(TokenOutcome::LegacyAllowed, token)
            }
        };
    }
    if pod.is_some_and(|p| token.pod_uid.as_deref() == Some(p.uid.as_str())) {
        return Finding::service_account(TokenOutcome::Verified, token);
    }
    let reason = match (&token.pod, pod) {
        (Some(name), Some(p)) => format!(
            "the token is bound to pod {}/{name}, but the connection comes from pod {}/{}: a token replayed from another pod",
            token.namespace, p.namespace, p.pod
        ),
        _ => "the token is bound to no pod; this node accepts only a pod's own bound token".into(),
    };
    Finding::refused(TokenOutcome::IdentityMismatch, Some(token), reason)
}

/// A token that claims a trusted OIDC issuer. Where none is required, an invalid one is
/// recorded and let through: the upstream, which issued the challenge, refuses it itself.
async fn oidc(issuer: &OidcIssuer, bearer: &str, required: bool) -> Finding {
    let (outcome, reason) = match issuer.verify(bearer).await {
        Ok(principal) => {
            return Finding {
                outcome: TokenOutcome::OidcVerified,
                allowed: true,
                token: None,
                principal: Some(principal),
                reason: None,
            };
        }
        Err(OidcError::Invalid(reason)) => (TokenOutcome::Rejected, reason),
        Err(error @ OidcError::IssuerUnavailable(_)) => {
            (TokenOutcome::KeysUnavailable, error.to_string())
        }
    };
    Finding {
        allowed: !required,
        ..Finding::refused(outcome, None, reason)
    }
}

async fn conclude(
    exchange: &Exchange,
    pod: Option<&PodIdentity>,
    finding: Finding,
) -> Result<Option<Principal>, Refused> {
    let check = TokenCheck {
        outcome: finding.outcome,
        allowed: finding.allowed,
        token: finding.token,
        principal: finding.principal.clone(),
        attested: attested(pod),
        reason: finding.reason.clone(),
    };
    let outcome = serde_json::to_value(check.outcome).unwrap_or_default();
    TokenChecked {
        target: &exchange.target.name,
        outcome: outcome.as_str().unwrap_or("unknown"),
        allowed: check.allowed,
        reason: check.reason.as_deref(),
    }
    .emit();
    exchange.log.record(RecordBody::TokenCheck(check)).await;
    if finding.allowed {
        Ok(finding.principal)
    } else {
        Err(Refused(finding.reason.unwrap_or_default()))
    }
}

//! Token binding: a request's `Authorization: Bearer` service-account token must be the
//! token of the pod the kernel attests for this connection. A valid token replayed from
//! another pod is refused as `identity_mismatch`, with both identities in the record.
//! Tokens that are not this cluster's pass untouched, unless the target requires a bound
//! token (`require_bound_token`).
use hyper::HeaderMap;

use super::Exchange;
use crate::{
    identity::PodIdentity,
    recording::record::{AttestedPod, RecordBody, TokenCheck, TokenOutcome},
    telemetry::events::{InternalEvent, TokenChecked},
    tokens::{LegacyTokens, TokenError, TokenIdentity},
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

/// Checks the request's bearer token against the connection's pod; records what it found.
pub async fn check(exchange: &Exchange, headers: &HeaderMap) -> Result<(), Refused> {
    let required = exchange.target.require_bound_token;
    let bearer = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let pod = exchange.workload.kubernetes.as_deref();
    let (Some(tokens), Some(bearer)) = (&exchange.tokens, bearer) else {
        if !required {
            return Ok(());
        }
        let reason = "this target requires the pod's own service-account token \
                      (Authorization: Bearer), and the request has none"
            .to_string();
        return refuse(exchange, TokenOutcome::Missing, None, pod, reason).await;
    };
    let token = match tokens.verify(bearer).await {
        Ok(token) => token,
        Err(TokenError::NotOurs) if !required => return Ok(()),
        Err(TokenError::NotOurs) => {
            let reason = "this target requires the pod's own service-account token; the \
                          bearer token is not one of this cluster's"
                .to_string();
            return refuse(exchange, TokenOutcome::Missing, None, pod, reason).await;
        }
        Err(error @ TokenError::KeysUnavailable(_)) => {
            return refuse(
                exchange,
                TokenOutcome::KeysUnavailable,
                None,
                pod,
                error.to_string(),
            )
            .await;
        }
        Err(TokenError::Invalid(reason)) => {
            return refuse(exchange, TokenOutcome::Rejected, None, pod, reason).await;
        }
    };
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
        return refuse(
            exchange,
            TokenOutcome::IdentityMismatch,
            Some(token),
            pod,
            reason,
        )
        .await;
    }
    if token.legacy {
        return match (tokens.config.legacy_tokens, required) {
            (LegacyTokens::Deny, _) => {
                let reason = "legacy (Secret-based) service-account tokens are refused here \
                              (identity.legacy_tokens: deny); mount a projected token"
                    .to_string();
                refuse(
                    exchange,
                    TokenOutcome::LegacyRefused,
                    Some(token),
                    pod,
                    reason,
                )
                .await
            }
            (_, true) => {
                let reason =
                    "this target requires a bound token; a legacy token names no pod".to_string();
                refuse(
                    exchange,
                    TokenOutcome::LegacyRefused,
                    Some(token),
                    pod,
                    reason,
                )
                .await
            }
            (LegacyTokens::Flag, false) => {
                allow(exchange, TokenOutcome::LegacyFlagged, token, pod).await
            }
            (LegacyTokens::Allow, false) => {
                allow(exchange, TokenOutcome::LegacyAllowed, token, pod).await
            }
        };
    }
    let same_pod = pod.is_some_and(|p| token.pod_uid.as_deref() == Some(p.uid.as_str()));
    if same_pod {
        return allow(exchange, TokenOutcome::Verified, token, pod).await;
    }
    let reason = match (&token.pod, pod) {
        (Some(name), Some(p)) => format!(
            "the token is bound to pod {}/{name}, but the connection comes from pod {}/{}: a token replayed from another pod",
            token.namespace, p.namespace, p.pod
        ),
        _ => "the token is bound to no pod; this node accepts only a pod's own bound token".into(),
    };
    refuse(
        exchange,
        TokenOutcome::IdentityMismatch,
        Some(token),
        pod,
        reason,
    )
    .await
}

async fn allow(
    exchange: &Exchange,
    outcome: TokenOutcome,
    token: TokenIdentity,
    pod: Option<&PodIdentity>,
) -> Result<(), Refused> {
    let check = TokenCheck {
        outcome,
        allowed: true,
        token: Some(token),
        attested: attested(pod),
        reason: None,
    };
    emit(exchange, &check);
    exchange.log.record(RecordBody::TokenCheck(check)).await;
    Ok(())
}

fn emit(exchange: &Exchange, check: &TokenCheck) {
    let outcome = serde_json::to_value(check.outcome).unwrap_or_default();
    TokenChecked {
        target: &exchange.target.name,
        outcome: outcome.as_str().unwrap_or("unknown"),
        allowed: check.allowed,
        reason: check.reason.as_deref(),
    }
    .emit();
}

async fn refuse(
    exchange: &Exchange,
    outcome: TokenOutcome,
    token: Option<TokenIdentity>,
    pod: Option<&PodIdentity>,
    reason: String,
) -> Result<(), Refused> {
    let check = TokenCheck {
        outcome,
        allowed: false,
        token,
        attested: attested(pod),
        reason: Some(reason.clone()),
    };
    emit(exchange, &check);
    exchange.log.record(RecordBody::TokenCheck(check)).await;
    Err(Refused(reason))
}

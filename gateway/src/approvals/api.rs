//! The approval API on the admin listener. Every call needs an approver's ID token.
//!
//! - `GET /approvals`: pending holds, oldest first.
//! - `POST /approvals/<id>/approve` and `POST /approvals/<id>/deny` with `{"reason": "…"}`.
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    DecideError,
    oidc::{ApproverVerifier, AuthError},
};
use crate::{
    identity::Principal,
    recording::record::Hold,
    telemetry::events::{ApprovalRejected, InternalEvent},
};

const MAX_DECISION_BYTES: usize = 64 << 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: String,
}

/// Where holds are listed and decided: a gateway's own (`Approvals`), or the cluster's
/// (`cluster::service::ClusterIndex`).
pub trait HoldIndex {
    /// The pending holds, oldest first.
    fn list(&self) -> impl Future<Output = Result<Vec<Hold>, DecideError>> + Send;
    /// Approves or denies a pending hold for a verified approver.
    fn decide(
        &self,
        hold_id: &str,
        approver: Principal,
        approve: bool,
        reason: String,
    ) -> impl Future<Output = Result<Hold, DecideError>> + Send;
}

pub async fn handle(
    index: &impl HoldIndex,
    verifier: Option<&ApproverVerifier>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(verifier) = verifier else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "approvals are not configured on this gateway; set approvals.oidc",
        );
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let approver = match verifier.verify(authorization).await {
        Ok(approver) => approver,
        Err(e) => {
            let (status, why) = match &e {
                AuthError::Missing => (StatusCode::UNAUTHORIZED, "missing_token"),
                AuthError::Invalid(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
                AuthError::NotAllowed(_) => (StatusCode::FORBIDDEN, "not_allowed"),
                AuthError::IssuerUnavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "issuer_unavailable")
                }
            };
            return rejected(status, why, &e.to_string());
        }
    };
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["approvals"]) => match index.list().await {
            Ok(holds) => json_response(StatusCode::OK, &json!({ "holds": holds })),
            Err(e) => decide_error(e),
        },
        (&Method::POST, ["approvals", id, verb @ ("approve" | "deny")]) => {
            let (id, approve) = (id.to_string(), *verb == "approve");
            let body = match Limited::new(req.into_body(), MAX_DECISION_BYTES)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
            };
            let reason = match serde_json::from_slice::<DecisionBody>(&body) {
                Ok(d) if !d.reason.trim().is_empty() => d.reason,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "send {\"reason\": \"…\"}: every decision needs a reason",
                    );
                }
            };
            match index.decide(&id, approver.clone(), approve, reason).await {
                Ok(hold) => json_response(
                    StatusCode::OK,
                    &json!({
                        "hold_id": hold.hold_id,
                        "decision": if approve { "approved" } else { "denied" },
                        "approver": approver,
                    }),
                ),
                Err(e) => decide_error(e),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "try GET /approvals, POST /approvals/<id>/approve or POST /approvals/<id>/deny",
        ),
    }
}

fn decide_error(e: DecideError) -> Response<Full<Bytes>> {
    let message = e.to_string();
    match e {
        DecideError::NotFound(_) => rejected(StatusCode::NOT_FOUND, "not_found", &message),
        DecideError::SelfApproval => rejected(StatusCode::FORBIDDEN, "self_approval", &message),
        DecideError::Edited(_) => rejected(StatusCode::CONFLICT, "edited", &message),
        DecideError::Unavailable(_) => error(StatusCode::SERVICE_UNAVAILABLE, &message),
    }
}

fn rejected(status: StatusCode, why: &'static str, message: &str) -> Response<Full<Bytes>> {
    ApprovalRejected {
        why,
        error: message,
    }
    .emit();
    error(status, message)
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

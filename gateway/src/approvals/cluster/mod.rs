//! Cluster-wide approvals: the Kubernetes API is the shared index of holds.
//!
//! - Each node gateway writes an `InterlockHold` (deploy/base/crd-interlockhold.yaml) for
//!   every hold it opens, labelled with its node, watches its node's holds, and deletes each
//!   once it ends (`node`).
//! - The approvals service (`interlock approvals-service`, in `commands`) lists them for the
//!   whole cluster, verifies the approver as the admin listener does, and writes the decision
//!   into the hold's `status`, signed with its ed25519 key.
//! - The gateway releases a hold only for a decision that verifies under the pinned public
//!   key, names this hold, and was made over this exact request. RBAC keeps everyone but the
//!   service off `interlockholds/status`; the signature keeps out even cluster admins.
pub mod node;

use std::path::Path;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use ed25519_dalek::{
    Signature, Signer, SigningKey, Verifier, VerifyingKey,
    pkcs8::{DecodePrivateKey, DecodePublicKey},
};
use kube::core::{ApiResource, GroupVersionKind, Object};
use serde::{Deserialize, Serialize};

use crate::{
    identity::Principal, recording::chain::sha256_hex, recording::record::Hold,
    vocabulary::HoldOutcome,
};

pub const GROUP: &str = "interlock.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "InterlockHold";
pub const PLURAL: &str = "interlockholds";
/// The node whose gateway holds the request: each gateway watches only its own.
pub const NODE_LABEL: &str = "interlock.dev/node";
/// What every signed decision starts with, so a signature made for anything else (the same
/// key signing another kind of message) can never pass as a decision.
const SIGNED_CONTEXT: &str = "interlock.dev/hold-decision/v1";

/// An `InterlockHold` as stored in the API server.
pub type InterlockHold = Object<HoldSpec, HoldStatus>;

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// What the gateway writes: the hold as the admin listener lists it, and its digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldSpec {
    pub hold: Hold,
    /// `hold_digest` of `hold` as the gateway wrote it: the service refuses to decide a hold
    /// whose spec was edited since, and the gateway accepts only decisions made over it.
    pub hold_sha256: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HoldStatus {
    pub decision: Option<SignedDecision>,
}

/// A decision as the approvals service writes it into `status.decision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedDecision {
    pub hold_id: String,
    pub hold_sha256: String,
    pub outcome: HoldOutcome,
    pub reason: String,
    /// The approver, as the service verified their OIDC token.
    pub approver: Principal,
    /// RFC 3339.
    pub decided_at: String,
    /// ed25519 over `signed_bytes`, base64.
    pub signature: String,
}

/// The bytes a decision's signature covers: every field but the signature, in a fixed order.
fn signed_bytes(decision: &SignedDecision) -> Vec<u8> {
    #[derive(Serialize)]
    struct Signed<'a> {
        context: &'a str,
        hold_id: &'a str,
        hold_sha256: &'a str,
        outcome: HoldOutcome,
        reason: &'a str,
        approver: &'a Principal,
        decided_at: &'a str,
    }
    serde_json::to_vec(&Signed {
        context: SIGNED_CONTEXT,
        hold_id: &decision.hold_id,
        hold_sha256: &decision.hold_sha256,
        outcome: decision.outcome,
        reason: &decision.reason,
        approver: &decision.approver,
        decided_at: &decision.decided_at,
    })
    .expect("plain data serializes")
}

/// The SHA-256 of a hold's JSON. serde_json writes struct fields in declaration order and
/// object keys sorted, so the digest is the same however the API server reordered the keys.
pub fn hold_digest(hold: &Hold) -> String {
    sha256_hex(&serde_json::to_vec(hold).expect("a hold serializes"))
}

/// Signs a decision (the service's half).
pub fn sign(key: &SigningKey, mut decision: SignedDecision) -> SignedDecision {
    decision.signature = BASE64.encode(key.sign(&signed_bytes(&decision)).to_bytes());
    decision
}

/// Why a decision read from the API server is not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "its signature does not verify under the pinned key (edited, or not made by the approvals service)"
    )]
    BadSignature,
    #[error("it was signed for another hold (replayed)")]
    OtherHold,
    #[error("it was made over another request than the one held here")]
    OtherRequest,
    #[error("it is neither approved nor denied")]
    NotADecision,
    #[error("the approver is the identity that made the request")]
    SelfApproval,
}

impl Rejection {
    /// The metric label.
    pub fn why(self) -> &'static str {
        match self {
            Rejection::BadSignature => "bad_signature",
            Rejection::OtherHold => "other_hold",
            Rejection::OtherRequest => "other_request",
            Rejection::NotADecision => "not_a_decision",
            Rejection::SelfApproval => "self_approval",
        }
    }
}

/// Checks a decision found on the resource named `hold_name` (the gateway's half): signed by
/// the pinned key, for this hold, approving or denying.
pub fn verify(
    key: &VerifyingKey,
    hold_name: &str,
    decision: &SignedDecision,
) -> Result<(), Rejection> {
    let signature = BASE64
        .decode(&decision.signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or(Rejection::BadSignature)?;
    key.verify(&signed_bytes(decision), &signature)
        .map_err(|_| Rejection::BadSignature)?;
    if decision.hold_id != hold_name {
        return Err(Rejection::OtherHold);
    }
    if !matches!(
        decision.outcome,
        HoldOutcome::Approved | HoldOutcome::Denied
    ) {
        return Err(Rejection::NotADecision);
    }
    Ok(())
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the decision-signing key {}: {e}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        format!(
            "{} is not an ed25519 PKCS#8 PEM private key ({e}); `interlock init` makes one",
            path.display()
        )
    })
}

pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the decision key {}: {e}", path.display()))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
        format!(
            "{} is not an ed25519 public key PEM ({e}); use the decision.pub `interlock init` wrote",
            path.display()
        )
    })
}

/// The namespaced API of holds.
pub fn holds_api(client: kube::Client, namespace: &str) -> kube::Api<InterlockHold> {
    kube::Api::namespaced_with(client, namespace, &api_resource())
}

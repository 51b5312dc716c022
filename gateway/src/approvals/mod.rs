//! Approval holds: a request a policy rule holds waits here for a verified human decision,
//! a timeout, or the gateway's shutdown. Protocol-agnostic: a hold knows who asked for
//! what; the protocol decides how the waiting client is kept and answered.
pub mod api;
pub mod cluster;
pub mod config;
pub mod oidc;
pub mod webhook;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use self::cluster::{Rejection, SignedDecision, node::NodeHolds};
pub use self::config::ApprovalsConfig;
use crate::{
    recording::record::{Hold, HoldOutcome, Principal},
    telemetry::events::{ClusterDecisionRejected, HoldDecided, HoldOpened, InternalEvent},
};

/// How a hold ended, as the waiting request learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: HoldOutcome,
    pub approver: Option<Principal>,
    pub reason: Option<String>,
}

impl Verdict {
    fn without_approver(outcome: HoldOutcome, reason: Option<&str>) -> Verdict {
        Verdict {
            outcome,
            approver: None,
            reason: reason.map(String::from),
        }
    }
}

const STOPPING: &str = "the gateway is shutting down";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error(
        "no pending hold `{0}`: it was decided, timed out, or never existed; run `interlock approvals list`"
    )]
    NotFound(String),
    #[error(
        "self-approval refused: you are the identity that made this request; another approver must decide it"
    )]
    SelfApproval,
    #[error(
        "hold `{0}` was edited since its gateway wrote it, so it cannot be decided: what you would approve is not what is held; find who wrote it (the API server's audit log)"
    )]
    Edited(String),
    #[error("the hold index is unavailable: {0}; holds stay pending, try again")]
    Unavailable(String),
}

struct Pending {
    hold: Hold,
    decide: oneshot::Sender<Verdict>,
}

pub struct Approvals {
    pub config: ApprovalsConfig,
    pending: Mutex<HashMap<String, Pending>>,
    /// Set at shutdown: every hold opened afterwards is interrupted at once.
    closed: std::sync::atomic::AtomicBool,
    pub verifier: Option<oidc::ApproverVerifier>,
    webhook: Option<webhook::Webhook>,
    /// With cluster-wide approvals: where this node's holds are published.
    cluster: Option<Arc<NodeHolds>>,
}

/// A hold in progress, for the request that waits on it.
pub struct HoldWait {
    pub hold: Hold,
    timeout: Duration,
    started: Instant,
    verdict: oneshot::Receiver<Verdict>,
}

impl Approvals {
    pub fn new(
        config: ApprovalsConfig,
        cluster: Option<Arc<NodeHolds>>,
    ) -> Result<Approvals, String> {
        let verifier = config
            .oidc
            .clone()
            .map(oidc::ApproverVerifier::new)
            .transpose()?;
        let webhook = config
            .webhook
            .clone()
            .map(webhook::Webhook::new)
            .transpose()?;
        Ok(Approvals {
            config,
            pending: Mutex::new(HashMap::new()),
            closed: false.into(),
            verifier,
            webhook,
            cluster,
        })
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a hold that ends in a denial after `timeout`; the caller waits on it.
    pub fn open(&self, hold: Hold, timeout: Duration) -> HoldWait {
        let (decide, verdict) = oneshot::channel();
        HoldOpened {
            target: &hold.target,
            hold_id: &hold.hold_id,
            rule: hold.rule.as_deref(),
            timeout,
        }
        .emit();
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = decide.send(Verdict::without_approver(
                HoldOutcome::Interrupted,
                Some(STOPPING),
            ));
        } else {
            if let Some(webhook) = &self.webhook {
                webhook.announce(&hold);
            }
            self.pending().insert(
                hold.hold_id.clone(),
                Pending {
                    hold: hold.clone(),
                    decide,
                },
            );
            if let Some(cluster) = &self.cluster {
                cluster.publish(&hold);
            }
        }
        HoldWait {
            hold,
            timeout,
            started: Instant::now(),
            verdict,
        }
    }

    /// The pending holds, oldest first.
    pub fn list_pending(&self) -> Vec<Hold> {
        let mut holds: Vec<Hold> = self.pending().values().map(|p| p.hold.clone()).collect();
        holds.sort_by_key(|h| h.created_at);
        holds
    }

    /// Approves or denies a pending hold for a verified approver.
    pub fn decide_pending(
        &self,
        hold_id: &str,
        approver: Principal,
        approve: bool,
        reason: String,
    ) -> Result<Hold, DecideError> {
        let mut pending = self.pending();
        let entry = pending
            .get(hold_id)
            .ok_or_else(|| DecideError::NotFound(hold_id.into()))?;
        if requested_by(&entry.hold, &approver) {
            return Err(DecideError::SelfApproval);
        }
        let Pending { hold, decide } = pending.remove(hold_id).expect("present under the lock");
        let outcome = if approve {
            HoldOutcome::Approved
        } else {
            HoldOutcome::Denied
        };
        // The waiting request may be gone (client hung up); the decision still stands.
        let _ = decide.send(Verdict {
            outcome,
            approver: Some(approver),
            reason: Some(reason),
        });
        Ok(hold)
    }

    /// Interrupts every pending hold and every later one: the gateway is stopping.
    pub fn shutdown(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        for (_, pending) in self.pending().drain() {
            let _ = pending.decide.send(Verdict::without_approver(
                HoldOutcome::Interrupted,
                Some(STOPPING),
            ));
        }
    }

    /// Forgets a hold whose client went away before a decision.
    pub fn abandon(&self, hold_id: &str) {
        self.pending().remove(hold_id);
        self.withdraw(hold_id);
    }

    fn withdraw(&self, hold_id: &str) {
        if let Some(cluster) = &self.cluster {
            cluster.withdraw(hold_id);
        }
    }

    /// Acts on the signed decisions this node's holds receive from the approvals service.
    /// Their signature and hold name were checked by the watch; here they must also have been
    /// made over the request held here, by someone other than its requester.
    pub async fn apply_cluster_decisions(&self, mut decisions: mpsc::Receiver<SignedDecision>) {
        while let Some(decision) = decisions.recv().await {
            if let Err(rejection) = self.decide_signed(&decision) {
                ClusterDecisionRejected {
                    hold_id: &decision.hold_id,
                    why: rejection.why(),
                    error: &rejection.to_string(),
                }
                .emit();
            }
        }
    }

    fn decide_signed(&self, decision: &SignedDecision) -> Result<(), Rejection> {
        let mut pending = self.pending();
        // Already ended here (decided, timed out, withdrawn): nothing to release.
        let Some(entry) = pending.get(&decision.hold_id) else {
            return Ok(());
        };
        if cluster::hold_digest(&entry.hold) != decision.hold_sha256 {
            return Err(Rejection::OtherRequest);
        }
        if requested_by(&entry.hold, &decision.approver) {
            return Err(Rejection::SelfApproval);
        }
        let Pending { decide, .. } = pending
            .remove(&decision.hold_id)
            .expect("present under the lock");
        let _ = decide.send(Verdict {
            outcome: decision.outcome,
            approver: Some(decision.approver.clone()),
            reason: Some(decision.reason.clone()),
        });
        Ok(())
    }
}

impl api::HoldIndex for Approvals {
    async fn list(&self) -> Result<Vec<Hold>, DecideError> {
        Ok(self.list_pending())
    }

    async fn decide(
        &self,
        hold_id: &str,
        approver: Principal,
        approve: bool,
        reason: String,
    ) -> Result<Hold, DecideError> {
        self.decide_pending(hold_id, approver, approve, reason)
    }
}

impl HoldWait {
    /// Waits for the decision or the timeout. A decision that races the timeout wins if it
    /// got the hold out of the pending map first.
    pub async fn verdict(mut self, approvals: &Approvals) -> (Hold, Verdict, Duration) {
        let deadline = tokio::time::Instant::from_std(self.started + self.timeout);
        let verdict = tokio::select! {
            verdict = &mut self.verdict => verdict.ok(),
            _ = tokio::time::sleep_until(deadline) => {
                if approvals.pending().remove(&self.hold.hold_id).is_some() {
                    Some(Verdict::without_approver(HoldOutcome::TimedOut, None))
                } else {
                    self.verdict.await.ok()
                }
            }
        }
        .unwrap_or_else(|| {
            // Abandoned: the client went away and the hold was withdrawn.
            Verdict::without_approver(
                HoldOutcome::Interrupted,
                Some("the client went away before a decision"),
            )
        });
        let waited = self.started.elapsed();
        approvals.withdraw(&self.hold.hold_id);
        HoldDecided {
            target: &self.hold.target,
            hold_id: &self.hold.hold_id,
            outcome: verdict.outcome,
            waited,
        }
        .emit();
        (self.hold, verdict, waited)
    }
}

/// Whether `approver` is who made the held request (self-approval).
pub fn requested_by(hold: &Hold, approver: &Principal) -> bool {
    hold.requester
        .as_ref()
        .is_some_and(|requester| same_person(requester, approver))
}

/// Whether an approver is the person or workload that made the request: the same subject
/// at the same issuer, or the same e-mail address.
fn same_person(requester: &Principal, approver: &Principal) -> bool {
    let same_subject = requester.subject.is_some()
        && requester.subject == approver.subject
        && requester.issuer == approver.issuer;
    let same_email = match (&requester.email, &approver.email) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    };
    same_subject || same_email
}

/// Who a request's own bearer token names, read without verification: it is only used to
/// refuse self-approval, where trusting a forged claim can only refuse more.
pub fn requester_of(authorization: Option<&str>) -> Option<Principal> {
    use base64::Engine;
    let token = authorization?.strip_prefix("Bearer ")?.trim();
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let text = |key: &str| claims.get(key).and_then(|v| v.as_str()).map(String::from);
    Some(Principal {
        issuer: text("iss"),
        subject: text("sub"),
        email: text("email"),
        groups: Vec::new(),
    })
}

#[cfg(test)]
mod tests;

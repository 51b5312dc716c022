//! What every protocol's hold shares: the `hold_created` record and its registration with the
//! approvers, the `hold_decided` record, and the text a refused hold is answered with.
use std::time::Duration;

use hyper::HeaderMap;

use super::{Exchange, Masking};
use crate::{
    approvals::{self, Approvals, HoldWait, Verdict},
    kubernetes::request_info::RequestInfo,
    masking::MaskReport,
    policy::{Action, Decision},
    recording::record::{Hold, HoldDecision, RecordBody},
    vocabulary::HoldOutcome,
};

/// The operation a hold keeps back: an MCP call, or an API-server request.
pub struct HeldOperation {
    pub method: String,
    pub tool: Option<String>,
    pub arguments: Option<serde_json::Value>,
    pub kube: Option<RequestInfo>,
}

/// Records the hold (arguments masked unless the rule keeps raw records) and registers it.
pub async fn open(
    approvals: &Approvals,
    exchange: &Exchange,
    decision: &Decision,
    masking: Masking,
    headers: &HeaderMap,
    mut held: HeldOperation,
) -> HoldWait {
    if !masking.record_raw
        && let Some(arguments) = &mut held.arguments
    {
        exchange
            .masker()
            .mask_value(arguments, &mut MaskReport::default());
    }
    let created_at = time::OffsetDateTime::now_utc();
    let timeout = decision.timeout.unwrap_or(approvals.config.default_timeout);
    let authorization = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let hold = Hold {
        hold_id: uuid::Uuid::now_v7().to_string(),
        in_session: exchange.log.session_id().to_string(),
        created_at,
        expires_at: created_at + timeout,
        target: exchange.target.name.clone(),
        workload: exchange.workload.clone(),
        requester: approvals::requester_of(authorization),
        method: held.method,
        tool: held.tool,
        arguments: held.arguments,
        rule: decision.rule.clone(),
        reason: decision.reason.clone(),
        kube: held.kube.map(Box::new),
    };
    exchange
        .log
        .record(RecordBody::HoldCreated(hold.clone()))
        .await;
    approvals.open(hold, timeout)
}

pub async fn record_verdict(exchange: &Exchange, hold: &Hold, verdict: &Verdict, waited: Duration) {
    exchange
        .log
        .record(RecordBody::HoldDecided(HoldDecision {
            hold_id: hold.hold_id.clone(),
            outcome: verdict.outcome,
            approver: verdict.approver.clone(),
            reason: verdict.reason.clone(),
            waited_ms: waited.as_millis() as u64,
        }))
        .await;
}

/// The rule behind a denial or a hold, and its reason.
pub fn rule_text(decision: &Decision) -> String {
    let rule = decision.rule.as_deref().unwrap_or("default");
    let reason = decision.reason.as_deref().unwrap_or("no reason given");
    match decision.action {
        Action::Hold => format!("held by Interlock policy rule `{rule}` ({reason})"),
        _ => format!("denied by Interlock policy rule `{rule}`: {reason}"),
    }
}

/// Why a hold that was not approved is refused: who denied it, or how the wait ended.
pub fn refusal_text(decision: &Decision, verdict: &Verdict, waited: Duration) -> String {
    let rule = decision.rule.as_deref().unwrap_or("default");
    let reason = verdict.reason.as_deref().unwrap_or("no reason given");
    match verdict.outcome {
        HoldOutcome::Denied => {
            let who = verdict
                .approver
                .as_ref()
                .and_then(|a| a.email.clone().or(a.subject.clone()))
                .unwrap_or_else(|| "an approver".into());
            format!("held by Interlock policy rule `{rule}` and denied by {who}: {reason}")
        }
        HoldOutcome::TimedOut => format!(
            "held by Interlock policy rule `{rule}` for approval; nobody decided within {}s, so it is denied",
            waited.as_secs()
        ),
        HoldOutcome::Interrupted | HoldOutcome::Approved => format!(
            "held by Interlock policy rule `{rule}` for approval, and the wait was cut short ({reason}); denied"
        ),
    }
}

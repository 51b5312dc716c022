use std::time::Duration;

use base64::Engine;

use super::*;
use crate::{approvals::config::OidcConfig, identity::Workload};

const LONG: Duration = Duration::from_secs(300);

fn approvals() -> Approvals {
    Approvals::new(ApprovalsConfig::default()).unwrap()
}

fn hold(id: &str, requester: Option<Principal>) -> Hold {
    let now = time::OffsetDateTime::now_utc();
    Hold {
        hold_id: id.into(),
        in_session: "s".into(),
        created_at: now,
        expires_at: now,
        target: "demo-mcp".into(),
        workload: Workload {
            cgroup_id: 7,
            cgroup: Some("/x".into()),
            pid: 1,
            process: "python3".into(),
            cmdline: vec!["python3".into()],
            pod: None,
            kubernetes: None,
        },
        requester,
        method: "tools/call".into(),
        tool: Some("trigger-x".into()),
        arguments: None,
        rule: Some("risky".into()),
        reason: None,
        kube: None,
    }
}

fn person(issuer: &str, subject: &str, email: &str) -> Principal {
    Principal {
        issuer: Some(issuer.into()),
        subject: Some(subject.into()),
        email: Some(email.into()),
        groups: vec!["sre".into()],
    }
}

#[tokio::test]
async fn an_approval_reaches_the_waiting_request_once() {
    let approvals = approvals();
    let wait = approvals.open(hold("h1", None), Duration::from_secs(30));
    assert_eq!(approvals.list().len(), 1);
    let bob = person("https://idp", "bob", "bob@example.com");
    approvals
        .decide("h1", bob.clone(), true, "looks fine".into())
        .unwrap();
    assert!(approvals.list().is_empty());
    let (_, verdict, _) = wait.verdict(&approvals).await;
    assert_eq!(verdict.outcome, HoldOutcome::Approved);
    assert_eq!(verdict.approver, Some(bob.clone()));
    assert_eq!(verdict.reason.as_deref(), Some("looks fine"));
    assert_eq!(
        approvals.decide("h1", bob, false, "again".into()),
        Err(DecideError::NotFound("h1".into()))
    );
}

#[tokio::test]
async fn a_hold_nobody_decides_times_out_and_leaves_the_list() {
    let approvals = approvals();
    let wait = approvals.open(hold("h1", None), Duration::from_millis(50));
    let (_, verdict, waited) = wait.verdict(&approvals).await;
    assert_eq!(verdict.outcome, HoldOutcome::TimedOut);
    assert!(waited >= Duration::from_millis(50));
    assert!(approvals.list().is_empty());
}

#[tokio::test]
async fn the_requester_cannot_approve_their_own_request() {
    let approvals = approvals();
    let alice = person("https://idp", "alice", "Alice@Example.com");
    let _wait = approvals.open(hold("h1", Some(alice.clone())), LONG);
    assert_eq!(
        approvals.decide("h1", alice.clone(), true, "mine".into()),
        Err(DecideError::SelfApproval)
    );
    // The same person by e-mail under another subject is still the requester.
    let alias = person("https://other", "a-2", "alice@example.com");
    assert_eq!(
        approvals.decide("h1", alias, true, "mine".into()),
        Err(DecideError::SelfApproval)
    );
    assert_eq!(
        approvals.list().len(),
        1,
        "a refused decision leaves the hold"
    );
    let bob = person("https://idp", "bob", "bob@example.com");
    approvals.decide("h1", bob, false, "no".into()).unwrap();
}

#[tokio::test]
async fn shutdown_interrupts_pending_and_later_holds() {
    let approvals = approvals();
    let pending = approvals.open(hold("h1", None), LONG);
    approvals.shutdown();
    let later = approvals.open(hold("h2", None), LONG);
    for wait in [pending, later] {
        let (_, verdict, _) = wait.verdict(&approvals).await;
        assert_eq!(verdict.outcome, HoldOutcome::Interrupted);
        assert_eq!(verdict.reason.as_deref(), Some(STOPPING));
    }
    assert!(approvals.list().is_empty());
}

#[tokio::test]
async fn an_abandoned_hold_is_withdrawn() {
    let approvals = approvals();
    let wait = approvals.open(hold("h1", None), LONG);
    approvals.abandon("h1");
    assert!(approvals.list().is_empty());
    let (_, verdict, _) = wait.verdict(&approvals).await;
    assert_eq!(verdict.outcome, HoldOutcome::Interrupted);
}

#[test]
fn requester_is_read_from_the_bearer_token() {
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"iss":"https://idp","sub":"alice","email":"alice@example.com"}"#);
    let header = format!("Bearer eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
    assert_eq!(
        requester_of(Some(&header)),
        Some(Principal {
            issuer: Some("https://idp".into()),
            subject: Some("alice".into()),
            email: Some("alice@example.com".into()),
            groups: Vec::new(),
        })
    );
    assert_eq!(requester_of(Some("Basic dXNlcjpwYXNz")), None);
    assert_eq!(requester_of(None), None);
}

#[test]
fn config_errors_name_the_fix() {
    let none = ApprovalsConfig::default();
    assert!(none.validate(false).is_ok());
    assert!(
        none.validate(true)
            .unwrap_err()
            .contains("approvals.oidc is not configured")
    );
    let oidc = |issuer: &str, groups: &[&str]| ApprovalsConfig {
        oidc: Some(OidcConfig {
            issuer: issuer.into(),
            audience: "interlock".into(),
            groups_claim: "groups".into(),
            allowed_groups: groups.iter().map(|g| g.to_string()).collect(),
            allowed_emails: Vec::new(),
        }),
        ..ApprovalsConfig::default()
    };
    assert!(
        oidc("https://idp.example.com", &["sre"])
            .validate(true)
            .is_ok()
    );
    assert!(
        oidc("http://127.0.0.1:9000", &["sre"])
            .validate(true)
            .is_ok()
    );
    assert!(
        oidc("http://idp.example.com", &["sre"])
            .validate(true)
            .unwrap_err()
            .contains("must be an https URL")
    );
    assert!(
        oidc("https://idp.example.com", &[])
            .validate(true)
            .unwrap_err()
            .contains("names no approvers")
    );
}

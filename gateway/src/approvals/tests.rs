use std::time::Duration;

use base64::Engine;

use super::*;
use crate::{approvals::config::OidcConfig, identity::Workload};

const LONG: Duration = Duration::from_secs(300);

fn approvals() -> Approvals {
    Approvals::new(ApprovalsConfig::default(), None).unwrap()
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
    assert_eq!(approvals.list_pending().len(), 1);
    let bob = person("https://idp", "bob", "bob@example.com");
    approvals
        .decide_pending("h1", bob.clone(), true, "looks fine".into())
        .unwrap();
    assert!(approvals.list_pending().is_empty());
    let (_, verdict, _) = wait.verdict(&approvals).await;
    assert_eq!(verdict.outcome, HoldOutcome::Approved);
    assert_eq!(verdict.approver, Some(bob.clone()));
    assert_eq!(verdict.reason.as_deref(), Some("looks fine"));
    assert_eq!(
        approvals.decide_pending("h1", bob, false, "again".into()),
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
    assert!(approvals.list_pending().is_empty());
}

#[tokio::test]
async fn the_requester_cannot_approve_their_own_request() {
    let approvals = approvals();
    let alice = person("https://idp", "alice", "Alice@Example.com");
    let _wait = approvals.open(hold("h1", Some(alice.clone())), LONG);
    assert_eq!(
        approvals.decide_pending("h1", alice.clone(), true, "mine".into()),
        Err(DecideError::SelfApproval)
    );
    // The same person by e-mail under another subject is still the requester.
    let alias = person("https://other", "a-2", "alice@example.com");
    assert_eq!(
        approvals.decide_pending("h1", alias, true, "mine".into()),
        Err(DecideError::SelfApproval)
    );
    assert_eq!(
        approvals.list_pending().len(),
        1,
        "a refused decision leaves the hold"
    );
    let bob = person("https://idp", "bob", "bob@example.com");
    approvals
        .decide_pending("h1", bob, false, "no".into())
        .unwrap();
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
    assert!(approvals.list_pending().is_empty());
}

#[tokio::test]
async fn an_abandoned_hold_is_withdrawn() {
    let approvals = approvals();
    let wait = approvals.open(hold("h1", None), LONG);
    approvals.abandon("h1");
    assert!(approvals.list_pending().is_empty());
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

/// A decision the approvals service would write for `hold`, signed with `key`.
fn signed(key: &ed25519_dalek::SigningKey, hold: &Hold, outcome: HoldOutcome) -> SignedDecision {
    cluster::sign(
        key,
        SignedDecision {
            hold_id: hold.hold_id.clone(),
            hold_sha256: cluster::hold_digest(hold),
            outcome,
            reason: "change 4711".into(),
            approver: person("https://idp", "bob", "bob@example.com"),
            decided_at: "2026-12-08T00:00:00Z".into(),
            signature: String::new(),
        },
    )
}

#[test]
fn a_signed_decision_verifies_only_unaltered_on_its_own_hold_under_the_pinned_key() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let pinned = key.verifying_key();
    let held = hold("h1", None);
    let decision = signed(&key, &held, HoldOutcome::Approved);
    assert_eq!(cluster::verify(&pinned, "h1", &decision), Ok(()));

    let edits: [fn(&mut SignedDecision); 4] = [
        |d| d.outcome = HoldOutcome::Denied,
        |d| d.reason = "something else".into(),
        |d| d.approver.email = Some("mallory@example.com".into()),
        |d| d.hold_sha256 = "0".repeat(64),
    ];
    for edit in edits {
        let mut edited = decision.clone();
        edit(&mut edited);
        assert_eq!(
            cluster::verify(&pinned, "h1", &edited),
            Err(cluster::Rejection::BadSignature)
        );
    }
    // Copied onto another hold: the signature is fine, the hold is not its own.
    assert_eq!(
        cluster::verify(&pinned, "h2", &decision),
        Err(cluster::Rejection::OtherHold)
    );
    // Made up by whoever holds another key (a cluster admin's own).
    let forged = signed(
        &ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
        &held,
        HoldOutcome::Approved,
    );
    assert_eq!(
        cluster::verify(&pinned, "h1", &forged),
        Err(cluster::Rejection::BadSignature)
    );
    let timed_out = signed(&key, &held, HoldOutcome::TimedOut);
    assert_eq!(
        cluster::verify(&pinned, "h1", &timed_out),
        Err(cluster::Rejection::NotADecision)
    );
}

#[test]
fn a_holds_digest_survives_the_api_server_reordering_its_keys() {
    let mut held = hold("h1", None);
    held.arguments = Some(serde_json::json!({"zeta": 1, "alpha": {"y": [1, 2], "b": "x"}}));
    assert_digest_survives_reordering(&held);
    // A held API-server request carries what it would do.
    let mut kube = hold("h2", None);
    kube.kube = Some(Box::new(crate::kubernetes::request_info::parse(
        &hyper::Method::DELETE,
        &"/api/v1/namespaces/team/secrets/db-creds?dryRun=All"
            .parse()
            .unwrap(),
    )));
    assert_digest_survives_reordering(&kube);
}

fn assert_digest_survives_reordering(held: &Hold) {
    let stored: serde_json::Value = serde_json::to_value(held).unwrap();
    // The same object written back with its keys in reverse order, as another server might.
    fn reversed(value: &serde_json::Value) -> String {
        match value {
            serde_json::Value::Object(map) => {
                let fields: Vec<String> = map
                    .iter()
                    .rev()
                    .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), reversed(v)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
            other => other.to_string(),
        }
    }
    let read_back: Hold = serde_json::from_str(&reversed(&stored)).unwrap();
    assert_eq!(cluster::hold_digest(&read_back), cluster::hold_digest(held));
    let mut edited = read_back;
    edited.arguments = Some(serde_json::json!({"zeta": 2}));
    assert_ne!(cluster::hold_digest(&edited), cluster::hold_digest(held));
}

#[tokio::test]
async fn a_cluster_decision_releases_its_hold_only_for_the_request_held_and_another_person() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let approvals = approvals();
    let bob = person("https://idp", "bob", "bob@example.com");
    let wait = approvals.open(hold("h1", Some(bob.clone())), LONG);
    // Made over a different request (the spec was edited before it was decided).
    let mut other = hold("h1", Some(bob));
    other.tool = Some("trigger-everything".into());
    assert_eq!(
        approvals.decide_signed(&signed(&key, &other, HoldOutcome::Approved)),
        Err(cluster::Rejection::OtherRequest)
    );
    // bob asked, so bob's approval is refused.
    let own = signed(&key, &wait.hold, HoldOutcome::Approved);
    assert_eq!(
        approvals.decide_signed(&own),
        Err(cluster::Rejection::SelfApproval)
    );
    assert_eq!(approvals.list_pending().len(), 1);
    let mut by_alice = own.clone();
    by_alice.approver = person("https://idp", "alice", "alice@example.com");
    let by_alice = cluster::sign(&key, by_alice);
    assert_eq!(approvals.decide_signed(&by_alice), Ok(()));
    let (_, verdict, _) = wait.verdict(&approvals).await;
    assert_eq!(verdict.outcome, HoldOutcome::Approved);
    assert_eq!(verdict.approver.unwrap().subject.as_deref(), Some("alice"));
    // A decision seen again (a re-list) finds nothing pending and changes nothing.
    assert_eq!(approvals.decide_signed(&by_alice), Ok(()));
}

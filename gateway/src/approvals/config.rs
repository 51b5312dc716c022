//! `approvals:` in the gateway config: who may decide holds, how long holds wait, and where
//! new holds are announced.
use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// How long a hold waits when its rule sets no `timeout`; then it is denied.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::values::duration"
    )]
    pub default_timeout: Duration,
    /// Interval of SSE comment keep-alives on a held request, so that clients' read
    /// timeouts do not fire while a human decides.
    #[serde(
        default = "default_keepalive",
        deserialize_with = "crate::config::values::duration"
    )]
    pub keepalive: Duration,
    /// Approvers sign in with an OIDC ID token from this issuer.
    pub oidc: Option<OidcConfig>,
    /// Announces each new hold with a POST of JSON (Slack-compatible `text`).
    pub webhook: Option<WebhookConfig>,
    /// Publishes holds as `InterlockHold` resources, decided for the whole cluster by the
    /// approvals service.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Where holds are written; by default $POD_NAMESPACE (the downward API's
    /// `metadata.namespace`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The approvals service's public key (PEM): only decisions it signed release a hold.
    pub decision_key: PathBuf,
    /// A kubeconfig file; in the cluster the service account's in-cluster config is used.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The node label on this gateway's holds; by default $NODE_NAME.
    #[serde(default)]
    pub node_name: Option<String>,
}

/// The configured namespace, else the pod's own ($POD_NAMESPACE from the downward API).
pub fn own_namespace(configured: Option<&str>) -> Option<String> {
    configured
        .map(String::from)
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .filter(|n| !n.is_empty())
}

impl ClusterConfig {
    pub fn namespace(&self) -> Option<String> {
        own_namespace(self.namespace.as_deref())
    }

    pub fn node_name(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
    }
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            default_timeout: default_timeout(),
            keepalive: default_keepalive(),
            oidc: None,
            webhook: None,
            cluster: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The `aud` approvers' ID tokens must carry (the client id they were issued for).
    pub audience: String,
    /// The claim that lists an approver's groups.
    #[serde(default = "crate::tokens::oidc::default_groups_claim")]
    pub groups_claim: String,
    /// Members of any of these groups may decide holds.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// These e-mail addresses (the `email` claim) may decide holds.
    #[serde(default)]
    pub allowed_emails: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(
        default = "default_webhook_timeout",
        deserialize_with = "crate::config::values::duration"
    )]
    pub timeout: Duration,
}

impl ApprovalsConfig {
    /// Errors that say what to fix. `holds` tells whether any policy rule can hold.
    pub fn validate(&self, holds: bool) -> Result<(), String> {
        match &self.oidc {
            None if holds => {
                return Err("the policy holds requests for approval but approvals.oidc is not configured, so nobody could approve them; set approvals.oidc (issuer, audience, allowed_groups or allowed_emails) or change the rule's action".into());
            }
            None => {}
            Some(oidc) => {
                crate::tokens::oidc::validate_issuer_url("approvals.oidc.issuer", &oidc.issuer)?;
                if oidc.audience.is_empty() {
                    return Err("approvals.oidc.audience is empty; set it to the client id approvers' ID tokens are issued for".into());
                }
                if oidc.allowed_groups.is_empty() && oidc.allowed_emails.is_empty() {
                    return Err(
                        "approvals.oidc names no approvers; list allowed_groups or allowed_emails"
                            .into(),
                    );
                }
            }
        }
        if self.default_timeout.is_zero() || self.keepalive.is_zero() {
            return Err(
                "approvals.default_timeout and approvals.keepalive must be above zero".into(),
            );
        }
        Ok(())
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_keepalive() -> Duration {
    Duration::from_secs(15)
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

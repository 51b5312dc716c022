//! `interlock approvals-service`: one approval API for the whole cluster. It lists the
//! `InterlockHold`s every node gateway writes, verifies approvers exactly as a gateway's admin
//! listener does (OIDC, allowed groups or e-mails, no self-approval), and writes each
//! decision into the hold's `status`, signed with its ed25519 key. Approvers point
//! `interlock approvals --admin` at it and never need to know which node holds what.
use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, server::conn::http1};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde::Deserialize;
use serde_json::json;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tracing::{debug, info};

use crate::{
    approvals::{
        DecideError,
        api::{self, HoldIndex},
        cluster::{self, InterlockHold, SignedDecision},
        config::{OidcConfig, own_namespace},
        oidc::ApproverVerifier,
        requested_by,
    },
    identity::Principal,
    recording::record::Hold,
    vocabulary::HoldOutcome,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(deserialize_with = "crate::config::values::socket_addr")]
    pub listen: SocketAddr,
    /// Where the node gateways write holds; by default $POD_NAMESPACE.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The ed25519 key (PKCS#8 PEM) decisions are signed with; gateways pin its public key.
    pub signing_key: PathBuf,
    /// A kubeconfig file; in the cluster the service account's in-cluster config is used.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Who may decide, as a gateway's `approvals.oidc`.
    pub oidc: OidcConfig,
}

impl ServiceConfig {
    pub fn load(path: &std::path::Path) -> Result<ServiceConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }
}

/// The cluster's holds, read and decided through the API server.
pub struct ClusterIndex {
    api: Api<InterlockHold>,
    key: SigningKey,
}

impl ClusterIndex {
    /// Whether a hold carries a decision this service signed for it. Anything else in its
    /// status (written by someone with RBAC over it, but not the key) neither hides the hold
    /// from approvers nor keeps them from deciding it.
    fn decided(&self, hold: &InterlockHold) -> bool {
        let name = hold.metadata.name.as_deref().unwrap_or_default();
        hold.status
            .as_ref()
            .and_then(|s| s.decision.as_ref())
            .is_some_and(|d| cluster::verify(&self.key.verifying_key(), name, d).is_ok())
    }
}

fn unavailable(e: kube::Error) -> DecideError {
    DecideError::Unavailable(format!("the API server: {e}"))
}

impl HoldIndex for ClusterIndex {
    async fn list(&self) -> Result<Vec<Hold>, DecideError> {
        let holds = self
            .api
            .list(&ListParams::default())
            .await
            .map_err(unavailable)?;
        let mut pending: Vec<Hold> = holds
            .items
            .into_iter()
            .filter(|h| !self.decided(h))
            .map(|h| h.spec.hold)
            .collect();
        pending.sort_by_key(|h| h.created_at);
        Ok(pending)
    }

    async fn decide(
        &self,
        hold_id: &str,
        approver: Principal,
        approve: bool,
        reason: String,
    ) -> Result<Hold, DecideError> {
        let not_found = || DecideError::NotFound(hold_id.to_string());
        let object = self
            .api
            .get_opt(hold_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        if self.decided(&object) {
            return Err(not_found());
        }
        let hold = object.spec.hold;
        // What the approver was shown must be what the gateway holds.
        if hold.hold_id != hold_id || cluster::hold_digest(&hold) != object.spec.hold_sha256 {
            return Err(DecideError::Edited(hold_id.to_string()));
        }
        if requested_by(&hold, &approver) {
            return Err(DecideError::SelfApproval);
        }
        let decision = cluster::sign(
            &self.key,
            SignedDecision {
                hold_id: hold_id.to_string(),
                hold_sha256: object.spec.hold_sha256,
                outcome: match approve {
                    true => HoldOutcome::Approved,
                    false => HoldOutcome::Denied,
                },
                reason,
                approver,
                decided_at: OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .expect("now formats as RFC 3339"),
                signature: String::new(),
            },
        );
        // Made against the version read: of two approvers racing, the second is refused.
        let patch = json!({
            "metadata": { "resourceVersion": object.metadata.resource_version },
            "status": { "decision": decision },
        });
        match self
            .api
            .patch_status(hold_id, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(hold),
            Err(kube::Error::Api(status)) if [404, 409].contains(&status.code) => Err(not_found()),
            Err(e) => Err(unavailable(e)),
        }
    }
}

pub async fn serve(config: ServiceConfig) -> Result<()> {
    let namespace = own_namespace(config.namespace.as_deref())
        .context("set namespace in the config, or POD_NAMESPACE from the downward API")?;
    let key = cluster::load_signing_key(&config.signing_key).map_err(anyhow::Error::msg)?;
    let verifier = ApproverVerifier::new(config.oidc).map_err(anyhow::Error::msg)?;
    let (client, _) = crate::kubernetes::client::client(config.kubeconfig.as_deref()).await?;
    let index = Arc::new(ClusterIndex {
        api: cluster::holds_api(client, &namespace),
        key,
    });
    let verifier = Arc::new(verifier);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}; change listen in the config", config.listen))?;
    info!(listen = %config.listen, %namespace, "approvals service ready");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "accept failed");
                continue;
            }
        };
        let (index, verifier) = (index.clone(), verifier.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (index, verifier) = (index.clone(), verifier.clone());
                async move { Ok::<_, Infallible>(route(&index, &verifier, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn route(
    index: &ClusterIndex,
    verifier: &ApproverVerifier,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    if !req.uri().path().starts_with("/approvals") {
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"not found; try /approvals or /healthz\n",
        )));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    api::handle(index, Some(verifier), req).await
}

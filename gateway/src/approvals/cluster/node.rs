//! The node gateway's half: each hold it opens is written as an `InterlockHold` labelled with
//! its node, its node's holds are watched for signed decisions, and each hold is deleted once
//! it ends here. The gateway stays the enforcer: the API server only carries the decision.
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use futures_util::StreamExt;
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    HoldSpec, InterlockHold, NODE_LABEL, SignedDecision, api_resource, hold_digest, holds_api,
    load_verifying_key, verify,
};
use crate::{
    approvals::config::ClusterConfig,
    recording::record::Hold,
    telemetry::events::{ClusterDecisionRejected, ClusterHoldSyncFailed, InternalEvent},
};

pub struct NodeHolds {
    api: Api<InterlockHold>,
    node: String,
    namespace: String,
    key: VerifyingKey,
    /// Creates and deletes, applied in order by one task: a hold that ends before its
    /// create went through is still deleted after it, never left behind.
    changes: mpsc::UnboundedSender<Change>,
}

enum Change {
    Create(Box<InterlockHold>),
    Delete(String),
}

impl NodeHolds {
    /// Connects, and deletes the holds a previous run of this node's gateway left: their
    /// requests ended with it (recorded there as interrupted, or cut with its sessions).
    pub async fn start(config: &ClusterConfig) -> Result<Arc<NodeHolds>, String> {
        let key = load_verifying_key(&config.decision_key)?;
        let namespace = config.namespace().ok_or(
            "approvals.cluster needs a namespace: set approvals.cluster.namespace, or \
             POD_NAMESPACE from the downward API (fieldRef metadata.namespace)",
        )?;
        let node = config.node_name().ok_or(
            "approvals.cluster needs the node's name: set approvals.cluster.node_name, or \
             NODE_NAME from the downward API (fieldRef spec.nodeName)",
        )?;
        let (client, _) = crate::kubernetes::client::client(config.kubeconfig.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        let (changes, pending) = mpsc::unbounded_channel();
        let holds = Arc::new(NodeHolds {
            api: holds_api(client, &namespace),
            node,
            namespace,
            key,
            changes,
        });
        tokio::spawn(apply_changes(holds.api.clone(), pending));
        let left = holds.clear().await.map_err(|e| {
            format!(
                "listing this node's InterlockHolds in {}: {e}; is the CRD applied (deploy/base/crd-interlockhold.yaml), and may this service account list and delete interlockholds?",
                holds.namespace
            )
        })?;
        info!(
            node = %holds.node,
            namespace = %holds.namespace,
            interrupted = left,
            "cluster-wide approvals: holds are published as InterlockHolds"
        );
        Ok(holds)
    }

    fn selector(&self) -> String {
        format!("{NODE_LABEL}={}", self.node)
    }

    /// Deletes every hold of this node; returns how many there were.
    pub async fn clear(&self) -> Result<usize, kube::Error> {
        let left = self
            .api
            .list_metadata(&ListParams::default().labels(&self.selector()))
            .await?;
        for hold in &left.items {
            if let Some(name) = &hold.metadata.name {
                delete(&self.api, name).await;
            }
        }
        Ok(left.items.len())
    }

    /// Writes the hold in the background; the request waits for a decision either way, and
    /// the admin listener can still decide it if the API server is out of reach.
    pub fn publish(&self, hold: &Hold) {
        let mut object = InterlockHold::new(
            &hold.hold_id,
            &api_resource(),
            HoldSpec {
                hold: hold.clone(),
                hold_sha256: hold_digest(hold),
            },
        );
        object.metadata.namespace = Some(self.namespace.clone());
        object.metadata.labels = Some([(NODE_LABEL.to_string(), self.node.clone())].into());
        let _ = self.changes.send(Change::Create(Box::new(object)));
    }

    /// Deletes an ended hold in the background.
    pub fn withdraw(&self, hold_id: &str) {
        let _ = self.changes.send(Change::Delete(hold_id.to_string()));
    }

    /// Watches this node's holds and passes on each decision whose signature verifies and
    /// that names the hold it is on; the rest are logged and counted, and change nothing.
    pub async fn watch(
        self: Arc<Self>,
        decisions: mpsc::Sender<SignedDecision>,
        stop: CancellationToken,
    ) {
        let config = watcher::Config::default().labels(&self.selector());
        let events = watcher(self.api.clone(), config)
            .default_backoff()
            .applied_objects();
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                event = events.next() => event,
            };
            let hold = match event {
                Some(Ok(hold)) => hold,
                Some(Err(error)) => {
                    warn!(error = %error, "watching this node's InterlockHolds failed; retrying");
                    continue;
                }
                None => return,
            };
            let Some(decision) = hold.status.and_then(|s| s.decision) else {
                continue;
            };
            let name = hold.metadata.name.unwrap_or_default();
            match verify(&self.key, &name, &decision) {
                Ok(()) => {
                    if decisions.send(decision).await.is_err() {
                        return;
                    }
                }
                Err(rejection) => ClusterDecisionRejected {
                    hold_id: &name,
                    why: rejection.why(),
                    error: &rejection.to_string(),
                }
                .emit(),
            }
        }
    }
}

async fn apply_changes(api: Api<InterlockHold>, mut changes: mpsc::UnboundedReceiver<Change>) {
    while let Some(change) = changes.recv().await {
        match change {
            Change::Create(object) => {
                if let Err(error) = api.create(&PostParams::default(), &object).await {
                    ClusterHoldSyncFailed {
                        hold_id: object.metadata.name.as_deref().unwrap_or_default(),
                        action: "create",
                        error: &error,
                    }
                    .emit();
                }
            }
            Change::Delete(name) => delete(&api, &name).await,
        }
    }
}

async fn delete(api: &Api<InterlockHold>, name: &str) {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => ClusterHoldSyncFailed {
            hold_id: name,
            action: "delete",
            error: &error,
        }
        .emit(),
    }
}

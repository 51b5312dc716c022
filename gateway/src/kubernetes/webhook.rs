//! The mutating admission webhook (`kubernetes.webhook`). For a pod that a selection chooses,
//! it answers with a JSON Patch that:
//! - puts the `interlock await` init container first, so none of the pod's own containers
//!   runs before the pod is intercepted;
//! - points the service-account volume's `ca.crt` (the `kube-api-access-*` projected volume's
//!   `configMap` source) at the bundle ConfigMap, so the pod trusts the interception CA.
//!
//! Before it answers, it makes sure the bundle ConfigMap is in the pod's namespace and
//! current (not for a dry run). A pod no selection chooses is admitted unchanged. The webhook
//! is served over TLS with a certificate from the interception CA, which the gateway
//! publishes as the MutatingWebhookConfiguration's `caBundle` at start.
use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
    },
    runtime::reflector::{ObjectRef, Store},
};
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::config::{Selection, WebhookConfig};
use crate::interception_ca::{InterceptionCa, LeafName};

/// AdmissionReview bodies are a pod and its metadata; anything larger is refused.
const MAX_REVIEW_BYTES: usize = 3 * 1024 * 1024;
/// The init container's name, which a second pass (reinvocation) recognises.
const AWAIT_CONTAINER: &str = "interlock-await";
/// How long a review waits for the gateway's first list of namespaces after a start.
const NAMESPACES_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// The ConfigMap every namespace has, which the service-account volume reads `ca.crt` from.
const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "the webhook's listener {address}: {error}; free the port or change kubernetes.webhook.listen"
    )]
    Listen {
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error(
        "the `interlock await` image: {0}; set kubernetes.webhook.await_image, or POD_NAME and \
         POD_NAMESPACE from the downward API so the gateway can read its own"
    )]
    Image(String),
    #[error("the interception CA: {0}")]
    Ca(#[from] crate::interception_ca::CaError),
}

/// What the webhook needs to decide and to answer.
pub struct Webhook {
    client: Client,
    namespaces: Store<Namespace>,
    selections: Vec<Selection>,
    /// The await image, or why it is unknown: then selected pods are refused, saying so.
    image: Result<String, String>,
    bundle_configmap: String,
    /// The cluster CA, then the interception CA (PEM).
    bundle: String,
}

impl Webhook {
    /// Reads the await image (configured, or the gateway's own) and makes the bundle.
    pub async fn new(
        client: Client,
        config: &WebhookConfig,
        namespaces: Store<Namespace>,
        selections: Vec<Selection>,
        ca: &InterceptionCa,
        cluster_ca_pem: &str,
    ) -> Webhook {
        let image = match &config.await_image {
            Some(image) => Ok(image.clone()),
            None => own_image(&client).await.map_err(|e| {
                tracing::error!(error = %e, "the webhook cannot prepare pods: it refuses selected pods until this is fixed");
                e.to_string()
            }),
        };
        Webhook {
            client,
            namespaces,
            selections,
            image,
            bundle_configmap: config.bundle_configmap.clone(),
            bundle: ca.bundle(cluster_ca_pem),
        }
    }

    /// Answers one AdmissionReview.
    pub async fn review(
        &self,
        review: AdmissionReview<DynamicObject>,
    ) -> AdmissionReview<DynamicObject> {
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(request) => request,
            Err(e) => {
                return AdmissionResponse::invalid(format!("not an AdmissionReview request: {e}"))
                    .into_review();
            }
        };
        let response = AdmissionResponse::from(&request);
        let Some(pod) = request
            .object
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok())
        else {
            return response.into_review();
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod["metadata"]["namespace"].as_str().map(String::from))
            .unwrap_or_default();
        // Namespace labels decide selections: none is judged before the first list is in.
        let listed = tokio::time::timeout(NAMESPACES_WAIT, self.namespaces.wait_until_ready());
        if !matches!(listed.await, Ok(Ok(()))) {
            return response
                .deny(
                    "Interlock's gateway has not listed the namespaces yet; retry in a few seconds",
                )
                .into_review();
        }
        if !self.selects(&pod, &namespace) {
            return response.into_review();
        }
        let image = match &self.image {
            Ok(image) => image,
            Err(e) => {
                return response
                    .deny(format!("Interlock cannot prepare this pod: {e}"))
                    .into_review();
            }
        };
        if !request.dry_run
            && let Err(e) = self.ensure_bundle(&namespace).await
        {
            // Without the bundle the pod could not verify the API server: refuse it, saying
            // why, rather than admit a pod that cannot work.
            tracing::warn!(%namespace, error = %e, "the webhook could not write the CA bundle ConfigMap; the pod is refused");
            return response
                .deny(format!(
                    "Interlock could not write ConfigMap {namespace}/{}: {e}; check the gateway's RBAC (configmaps create, and get/update on that name)",
                    self.bundle_configmap
                ))
                .into_review();
        }
        let operations = patch(&pod, image, &self.bundle_configmap);
        if operations.is_empty() {
            return response.into_review();
        }
        match serde_json::from_value::<json_patch::Patch>(Value::Array(operations))
            .map_err(|e| e.to_string())
            .and_then(|p| response.with_patch(p).map_err(|e| e.to_string()))
        {
            Ok(patched) => patched.into_review(),
            Err(e) => AdmissionResponse::from(&request)
                .deny(format!("Interlock could not build the pod's patch: {e}"))
                .into_review(),
        }
    }

    fn selects(&self, pod: &Value, namespace: &str) -> bool {
        let labels: BTreeMap<String, String> =
            serde_json::from_value(pod["metadata"]["labels"].clone()).unwrap_or_default();
        let namespace_labels = self
            .namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.labels().clone())
            .unwrap_or_default();
        self.selections
            .iter()
            .any(|s| s.chooses(&labels, &namespace_labels))
    }

    /// Creates or updates the bundle ConfigMap in `namespace`.
    async fn ensure_bundle(&self, namespace: &str) -> Result<(), kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let data = BTreeMap::from([("ca.crt".to_string(), self.bundle.clone())]);
        match api.get_opt(&self.bundle_configmap).await? {
            Some(existing) if existing.data.as_ref() == Some(&data) => Ok(()),
            Some(mut existing) => {
                existing.data = Some(data);
                api.replace(&self.bundle_configmap, &PostParams::default(), &existing)
                    .await
                    .map(drop)
            }
            None => {
                let configmap = ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        name: Some(self.bundle_configmap.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_string(),
                            "interlock".to_string(),
                        )])),
                        ..Default::default()
                    },
                    data: Some(data),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &configmap).await {
                    // Another node's gateway made it first: the same content.
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                    other => other.map(drop),
                }
            }
        }
    }
}

/// The JSON Patch operations that prepare `pod`; none when it is prepared already (the
/// webhook may be called again after other webhooks changed the pod).
pub fn patch(pod: &Value, image: &str, bundle_configmap: &str) -> Vec<Value> {
    let mut operations = Vec::new();
    let init_containers = pod["spec"]["initContainers"].as_array();
    let awaiting = init_containers.is_some_and(|c| c.iter().any(|c| c["name"] == AWAIT_CONTAINER));
    if !awaiting {
        let container = json!({
            "name": AWAIT_CONTAINER,
            "image": image,
            "command": ["/interlock", "await"],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "capabilities": {"drop": ["ALL"]},
            },
        });
        operations.push(match init_containers {
            Some(_) => json!({"op": "add", "path": "/spec/initContainers/0", "value": container}),
            None => json!({"op": "add", "path": "/spec/initContainers", "value": [container]}),
        });
    }
    for (v, volume) in pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (s, source) in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if source["configMap"]["name"] == ROOT_CA_CONFIGMAP {
                operations.push(json!({
                    "op": "replace",
                    "path": format!("/spec/volumes/{v}/projected/sources/{s}/configMap/name"),
                    "value": bundle_configmap,
                }));
            }
        }
    }
    operations
}

/// The gateway's own image, from its pod.
async fn own_image(client: &Client) -> Result<String, WebhookError> {
    let variable = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| WebhookError::Image(format!("${name} is not set")))
    };
    let (name, namespace) = (variable("POD_NAME")?, variable("POD_NAMESPACE")?);
    let pod = Api::<Pod>::namespaced(client.clone(), &namespace)
        .get(&name)
        .await
        .map_err(|e| WebhookError::Image(format!("reading pod {namespace}/{name}: {e}")))?;
    pod.spec
        .and_then(|spec| spec.containers.into_iter().find_map(|c| c.image))
        .ok_or_else(|| WebhookError::Image(format!("pod {namespace}/{name} names no image")))
}

/// Sets every webhook's `caBundle` in the MutatingWebhookConfiguration `name` to `ca_pem`.
pub async fn publish_ca_bundle(
    client: &Client,
    name: &str,
    ca_pem: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let configuration = api.get(name).await?;
    let encoded = k8s_openapi::ByteString(ca_pem.as_bytes().to_vec());
    let operations: Vec<Value> = (0..configuration.webhooks.map_or(0, |w| w.len()))
        .map(|i| json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}))
        .collect();
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(operations)).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map(drop)
}

/// Presents the leaf for the webhook's Service name, refreshed as the CA's leaves are.
struct WebhookCertificate {
    ca: Arc<InterceptionCa>,
    name: LeafName,
}

impl std::fmt::Debug for WebhookCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookCertificate({})", self.name)
    }
}

impl ResolvesServerCert for WebhookCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.ca.leaf(&self.name).ok()
    }
}

/// Serves the webhook until `stop`: `POST /mutate` with an AdmissionReview.
pub async fn serve(
    config: &WebhookConfig,
    ca: Arc<InterceptionCa>,
    webhook: Arc<Webhook>,
    stop: CancellationToken,
) -> Result<(), WebhookError> {
    let name = LeafName::Dns(config.server_name().unwrap_or_default());
    // Minted now, so a name the CA may not certify is an error at start, not per handshake.
    ca.leaf(&name)?;
    let mut tls = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(WebhookCertificate { ca, name }));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|error| WebhookError::Listen {
                address: config.listen,
                error,
            })?;
    tracing::info!(listen = %config.listen, "admission webhook serving");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((tcp, peer)) = accepted else { continue };
            let (acceptor, webhook) = (acceptor.clone(), webhook.clone());
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |request| {
                    let webhook = webhook.clone();
                    async move { Ok::<_, Infallible>(answer(&webhook, request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

async fn answer(webhook: &Webhook, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    };
    if request.method() != Method::POST || request.uri().path() != "/mutate" {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": "the webhook answers POST /mutate"}).to_string(),
        );
    }
    let body = match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("reading the AdmissionReview: {e}")}).to_string(),
            );
        }
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("not an AdmissionReview v1: {e}")}).to_string(),
            );
        }
    };
    let answered = webhook.review(review).await;
    match serde_json::to_string(&answered) {
        Ok(json) => reply(StatusCode::OK, json),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": e.to_string()}).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(init: bool) -> Value {
        let mut pod = json!({
            "metadata": {"name": "agent", "namespace": "team", "labels": {"app": "agent"}},
            "spec": {
                "containers": [{"name": "app", "image": "app:1"}],
                "volumes": [
                    {"name": "data", "emptyDir": {}},
                    {"name": "kube-api-access-x7k2p", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                    ]}},
                ],
            },
        });
        if init {
            pod["spec"]["initContainers"] = json!([{"name": "setup", "image": "setup:1"}]);
        }
        pod
    }

    #[test]
    fn a_pod_gets_the_await_container_first_and_the_bundle_as_its_ca() {
        for init in [false, true] {
            let operations = patch(&pod(init), "interlock:1", "interlock-ca-bundle");
            let expected_first = match init {
                false => "/spec/initContainers",
                true => "/spec/initContainers/0",
            };
            assert_eq!(operations[0]["path"], expected_first);
            let container = match init {
                false => &operations[0]["value"][0],
                true => &operations[0]["value"],
            };
            assert_eq!(container["image"], "interlock:1");
            assert_eq!(container["command"], json!(["/interlock", "await"]));
            assert_eq!(
                operations[1],
                json!({"op": "replace", "path": "/spec/volumes/1/projected/sources/1/configMap/name", "value": "interlock-ca-bundle"})
            );
            assert_eq!(operations.len(), 2);
        }
    }

    #[test]
    fn a_prepared_pod_is_left_as_it_is() {
        let mut prepared = pod(false);
        prepared["spec"]["initContainers"] = json!([{"name": AWAIT_CONTAINER, "image": "i"}]);
        prepared["spec"]["volumes"][1]["projected"]["sources"][1]["configMap"]["name"] =
            json!("interlock-ca-bundle");
        assert!(patch(&prepared, "interlock:1", "interlock-ca-bundle").is_empty());
    }
}

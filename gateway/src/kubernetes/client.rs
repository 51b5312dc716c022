//! The API server's client, from a kubeconfig file or the pod's in-cluster config: for node
//! mode and for cluster-wide approvals alike.
use std::path::Path;

use kube::Client;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {error}; fix the kubeconfig setting")]
    Kubeconfig { path: String, error: String },
    #[error("no in-cluster config ({0}); outside a pod, set kubeconfig to a kubeconfig file")]
    InCluster(String),
    #[error("building the Kubernetes client: {0}")]
    Build(String),
}

/// The client, and the cluster CA it trusts (PEM), which pods trust too.
pub async fn client(kubeconfig: Option<&Path>) -> Result<(Client, String), ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |error: String| ClientError::Kubeconfig {
                path: path.display().to_string(),
                error,
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| kubeconfig_error(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| kubeconfig_error(e.to_string()))?
        }
        None => kube::Config::incluster().map_err(|e| ClientError::InCluster(e.to_string()))?,
    };
    let cluster_ca = match (&config.root_cert, &config.root_cert_file) {
        (Some(certs), _) => certs
            .iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
            .collect(),
        (None, Some(file)) => std::fs::read_to_string(file).unwrap_or_default(),
        (None, None) => String::new(),
    };
    let client = Client::try_from(config).map_err(|e| ClientError::Build(e.to_string()))?;
    Ok((client, cluster_ca))
}

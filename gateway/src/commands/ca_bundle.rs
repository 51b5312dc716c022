//! `interlock ca-bundle`: what pods must trust for the API server once the gateway
//! terminates their TLS: the cluster's own CA, then the interception CA. The deploy
//! manifests publish it where pods read their projected `ca.crt`.
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::{config::Config, interception_ca::InterceptionCa};

pub fn ca_bundle(config: &Config, cluster_ca: &Path) -> Result<String> {
    let cluster = std::fs::read_to_string(cluster_ca).with_context(|| {
        format!(
            "reading the cluster CA {}; outside a pod, pass --cluster-ca with the kubeconfig's \
             certificate-authority",
            cluster_ca.display()
        )
    })?;
    if !cluster.contains("-----BEGIN CERTIFICATE-----") {
        bail!("{} holds no PEM certificate", cluster_ca.display());
    }
    let ca = InterceptionCa::load(&config.interception_ca)?;
    Ok(ca.bundle(&cluster))
}

//! `interlock init`: the keys a cluster install needs, as files and as the Secret
//! manifests the DaemonSet mounts. Both are made here, once, by whoever holds custody of them;
//! the gateway never generates them in a cluster.
//! - the record-signing key (ed25519): it seals every session; whoever holds it can forge a
//!   sealed session. Its public key is what `interlock verify --public-key` checks against.
//! - the interception CA key: whoever holds it can mint certificates that pods trusting the
//!   bundle accept for the API server's names (and only those: the CA's name constraints).
//! - the decision-signing key (ed25519) of the approvals service: whoever holds it can
//!   approve any held request. Gateways pin its public key, a ConfigMap.
use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use crate::{interception_ca, recording::chain};

/// The Secrets the DaemonSet mounts (deploy/base/daemonset.yaml), and their one key each.
const SIGNING_SECRET: (&str, &str) = ("interlock-signing-key", "signing.key");
const CA_SECRET: (&str, &str) = ("interlock-interception-ca", "ca.key");
/// The approvals service's decision-signing key, and its public half, which every gateway
/// pins (deploy/base/approvals-service.yaml and daemonset.yaml).
const DECISION_SECRET: (&str, &str) = ("interlock-approvals-key", "decision.key");
const DECISION_CONFIGMAP: (&str, &str) = ("interlock-decision-key", "decision.pub");

/// Writes the keys and `secrets.yaml` into `out` (created, mode 0700), refusing to overwrite.
/// Returns the files written.
pub fn init(out: &Path, namespace: &str) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    fs::set_permissions(out, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let (signing, public) = chain::new_key_pem()?;
    let ca = interception_ca::new_key()?.serialize_pem();
    let (decision, decision_public) = chain::new_key_pem()?;
    let secret = |(name, key): (&str, &str), pem: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  \
             labels: {{app.kubernetes.io/part-of: interlock}}\ntype: Opaque\ndata:\n  {key}: {}\n",
            BASE64.encode(pem)
        )
    };
    let (configmap, key) = DECISION_CONFIGMAP;
    let public_configmap = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {configmap}\n  namespace: {namespace}\n  \
         labels: {{app.kubernetes.io/part-of: interlock}}\ndata:\n  {key}: |\n{}",
        decision_public
            .lines()
            .map(|line| format!("    {line}\n"))
            .collect::<String>()
    );
    let manifests = format!(
        "{}---\n{}---\n{}---\n{public_configmap}",
        secret(SIGNING_SECRET, &signing),
        secret(CA_SECRET, &ca),
        secret(DECISION_SECRET, &decision),
    );
    let files = [
        ("signing.key", signing.as_str(), 0o600),
        ("signing.pub", public.as_str(), 0o644),
        ("interception-ca.key", ca.as_str(), 0o600),
        ("decision.key", decision.as_str(), 0o600),
        ("decision.pub", decision_public.as_str(), 0o644),
        ("secrets.yaml", manifests.as_str(), 0o600),
    ];
    let mut written = Vec::new();
    for (name, text, mode) in files {
        let path = out.join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| {
                format!(
                    "creating {}; init never overwrites a key: choose an empty --out directory",
                    path.display()
                )
            })?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        written.push(path);
    }
    Ok(written)
}

/// What the operator must know about the keys just made.
pub const CUSTODY: &str = "\
These keys are the install's trust:
- signing.key seals every recorded session: whoever holds it can forge a sealed session.
  Keep signing.pub with whoever verifies records (interlock verify --public-key signing.pub).
- interception-ca.key signs the certificates pods accept for the API server's names.
- decision.key signs approval decisions (the approvals service's): whoever holds it can
  approve any held request. Gateways pin decision.pub.
Apply secrets.yaml (kubectl apply -f secrets.yaml), store the keys in your secret store,
then delete this directory. Anyone who can read Secrets in the gateway's namespace can read
them: restrict that namespace.";

//! The deploy manifests as the tests read them: rendered by `kubectl kustomize`, split into
//! objects, and the tools that check them (target/deploy-tools, `cargo xtask setup`).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;
use serde_json::Value;

use crate::apiserver::kubectl_137;

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A tool from the deploy-tools venv: kubernetes-validate, checkov, python (with jsonpatch).
pub fn deploy_tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/deploy-tools/bin")
        .join(name)
}

/// `kubectl kustomize deploy/KUSTOMIZATION`, as YAML.
pub fn render(kustomization: &str) -> String {
    let out = Command::new(kubectl_137())
        .arg("kustomize")
        .arg(deploy_dir().join(kustomization))
        .output()
        .expect("kubectl (cargo xtask setup)");
    assert!(
        out.status.success(),
        "kubectl kustomize {kustomization}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The objects of a multi-document YAML stream.
pub fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The one object of `kind` (and `name`, if given).
pub fn object<'a>(objects: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind && name.is_none_or(|n| o["metadata"]["name"].as_str() == Some(n))
        })
        .unwrap_or_else(|| panic!("no {kind} {name:?} in the rendered manifests"))
}

/// The gateway config the rendered ConfigMap holds.
pub fn gateway_config(objects: &[Value]) -> String {
    let configmap = objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("interlock-config"))
        })
        .expect("the interlock-config ConfigMap");
    configmap["data"]["interlock.yaml"]
        .as_str()
        .unwrap()
        .to_string()
}

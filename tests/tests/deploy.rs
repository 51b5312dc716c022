//! deploy/: the manifests render, validate against the Kubernetes schemas and pass checkov
//! with only the skips named in deploy/checkov-skips.yaml; the rendered config is one the
//! gateway takes; `interlock init` makes the Secrets the DaemonSet mounts.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::PermissionsExt,
    process::Command,
};

use base64::Engine as _;
use interlock_e2e::{deploy::*, interlock_bin, succeed};

const KUSTOMIZATIONS: [&str; 2] = ["base", "overlays/eks"];

#[test]
fn the_manifests_render_and_validate_against_kubernetes_1_30_to_1_33() {
    let dir = tempfile::tempdir().unwrap();
    for kustomization in KUSTOMIZATIONS {
        let rendered = dir.path().join(kustomization.replace('/', "-") + ".yaml");
        fs::write(&rendered, render(kustomization)).unwrap();
        for version in ["1.30", "1.31", "1.32", "1.33"] {
            let out = Command::new(deploy_tool("kubernetes-validate"))
                .args(["--strict", "--quiet", "-k", version])
                .arg(&rendered)
                .output()
                .expect("kubernetes-validate (cargo xtask setup)");
            assert!(
                out.status.success(),
                "{kustomization} against {version}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The checks checkov fails on `rendered`, with `skips` skipped.
fn checkov_failures(rendered: &std::path::Path, skips: &[String]) -> BTreeSet<String> {
    let mut command = Command::new(deploy_tool("checkov"));
    command
        .args([
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--quiet",
            "--skip-download",
        ])
        .arg("-f")
        .arg(rendered);
    if !skips.is_empty() {
        command.args(["--skip-check", &skips.join(",")]);
    }
    let out = command.output().expect("checkov (cargo xtask setup)");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["check_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn checkov_finds_nothing_but_the_named_skips_and_each_skip_is_needed() {
    let skips: BTreeMap<String, String> = serde_yaml_ng::from_str(
        &fs::read_to_string(deploy_dir().join("checkov-skips.yaml")).unwrap(),
    )
    .unwrap();
    for (check, reason) in &skips {
        assert!(
            reason.trim().len() > 20,
            "{check} is skipped without its reason"
        );
    }
    let skipped: Vec<String> = skips.keys().cloned().collect();
    let dir = tempfile::tempdir().unwrap();
    let mut fired = BTreeSet::new();
    for kustomization in KUSTOMIZATIONS {
        let rendered = dir.path().join(kustomization.replace('/', "-") + ".yaml");
        fs::write(&rendered, render(kustomization)).unwrap();
        let failed = checkov_failures(&rendered, &skipped);
        assert!(
            failed.is_empty(),
            "{kustomization}: checkov fails {failed:?}"
        );
        fired.extend(checkov_failures(&rendered, &[]));
    }
    // A skip for a check that no longer fires is stale: remove it.
    let stale: Vec<&String> = skips.keys().filter(|c| !fired.contains(*c)).collect();
    assert!(stale.is_empty(), "skipped but not failing: {stale:?}");
}

#[test]
fn the_rendered_config_is_one_the_gateway_takes() {
    let dir = tempfile::tempdir().unwrap();
    for kustomization in KUSTOMIZATIONS {
        let objects = objects(&render(kustomization));
        let config = dir.path().join("interlock.yaml");
        fs::write(&config, gateway_config(&objects)).unwrap();
        succeed(
            Command::new(interlock_bin())
                .arg("check-config")
                .arg(&config),
        );
        // The DaemonSet runs the gateway with the config it mounts.
        let daemonset = object(&objects, "DaemonSet", Some("interlock"));
        let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "config")
            .unwrap();
        assert_eq!(
            args,
            [
                "run",
                "--config",
                &format!("{}/interlock.yaml", mount["mountPath"].as_str().unwrap())
            ]
        );
        // Long enough for the drain: open sessions end and are recorded before SIGKILL.
        let grace = daemonset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        let config: serde_json::Value = serde_yaml_ng::from_str(&gateway_config(&objects)).unwrap();
        let drain = humantime_seconds(config["drain_timeout"].as_str().unwrap());
        assert!(
            grace > drain,
            "terminationGracePeriodSeconds {grace} <= drain_timeout {drain}"
        );
        assert!(config["fail_mode"].is_string(), "fail_mode is explicit");
    }
}

fn humantime_seconds(text: &str) -> u64 {
    text.trim_end_matches('s').parse().unwrap()
}

#[test]
fn init_makes_the_keys_and_the_secrets_the_daemonset_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("keys");
    let out = succeed(
        Command::new(interlock_bin())
            .args(["init", "--out"])
            .arg(&out_dir),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("forge a sealed session"), "{stderr}");
    for (file, mode) in [
        ("signing.key", 0o600),
        ("interception-ca.key", 0o600),
        ("secrets.yaml", 0o600),
        ("signing.pub", 0o644),
        ("decision.key", 0o600),
        ("decision.pub", 0o644),
    ] {
        let meta = fs::metadata(out_dir.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    // The Secrets are the ones the DaemonSet's volumes name, with the keys the config reads.
    let secrets = objects(&fs::read_to_string(out_dir.join("secrets.yaml")).unwrap());
    let rendered = objects(&render("overlays/eks"));
    let daemonset = object(&rendered, "DaemonSet", Some("interlock"));
    let config: serde_json::Value = serde_yaml_ng::from_str(&gateway_config(&rendered)).unwrap();
    let mounts = daemonset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    for volume in daemonset["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["secret"].is_object())
    {
        let name = volume["secret"]["secretName"].as_str().unwrap();
        let secret = secrets
            .iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("init makes no Secret {name}"));
        assert_eq!(secret["metadata"]["namespace"], "interlock");
        let mount = mounts.iter().find(|m| m["name"] == volume["name"]).unwrap();
        let (key, value) = secret["data"].as_object().unwrap().iter().next().unwrap();
        let path = format!("{}/{key}", mount["mountPath"].as_str().unwrap());
        assert!(
            [
                &config["recording"]["signing_key"],
                &config["interception_ca"]["key"]
            ]
            .contains(&&serde_json::Value::from(path.clone())),
            "the config reads no key at {path}"
        );
        let pem = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        assert!(String::from_utf8(pem).unwrap().contains("PRIVATE KEY"));
    }
    // The approvals service signs with the key in its Secret; every gateway pins the public
    // half, from the ConfigMap, at the path its config reads.
    let mounted = |workload: &serde_json::Value, source: &str, name: &str| -> String {
        let spec = &workload["spec"]["template"]["spec"];
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| {
                v[source].is_object()
                    && (v[source]["name"] == name || v[source]["secretName"] == name)
            })
            .unwrap_or_else(|| panic!("no volume of {source} {name}"));
        let mount = spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap();
        mount["mountPath"].as_str().unwrap().to_string()
    };
    let public = secrets
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "interlock-decision-key")
        .expect("init makes the decision key's ConfigMap");
    assert_eq!(
        public["data"]["decision.pub"].as_str().unwrap(),
        fs::read_to_string(out_dir.join("decision.pub")).unwrap()
    );
    assert_eq!(
        config["approvals"]["cluster"]["decision_key"],
        format!(
            "{}/decision.pub",
            mounted(daemonset, "configMap", "interlock-decision-key")
        )
    );
    let service = object(&rendered, "Deployment", Some("interlock-approvals"));
    let service_config: serde_json::Value = serde_yaml_ng::from_str(
        rendered
            .iter()
            .find_map(|o| o.pointer("/data/approvals.yaml").and_then(|v| v.as_str()))
            .expect("the approvals service's ConfigMap"),
    )
    .unwrap();
    assert!(secrets.iter().any(|o| o["kind"] == "Secret"
        && o["metadata"]["name"] == "interlock-approvals-key"
        && o["data"]["decision.key"].is_string()));
    assert_eq!(
        service_config["signing_key"],
        format!(
            "{}/decision.key",
            mounted(service, "secret", "interlock-approvals-key")
        )
    );

    // It never overwrites a key.
    let again = Command::new(interlock_bin())
        .args(["init", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
}

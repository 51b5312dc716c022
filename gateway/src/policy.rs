//! Policy: which MCP operations and API-server requests are allowed, denied or held. Part of
//! the config file (`policy:`), validated by `check-config`, and reloaded on SIGHUP or when
//! the file changes.
//!
//! Matchers are `patterns::Pattern`s: globs, or `re:` regexes.
//! Argument matchers take a dotted path into `arguments` (`path.to.key`, list items by index).
//! `method`, `tool` and `args` match MCP operations only, `kube` API-server requests only;
//! a rule with neither matches both.
use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use crate::{
    identity::{PodIdentity, Principal, Workload},
    kubernetes::{
        request_info::{Impersonation, RequestInfo},
        selector::LabelSelector,
    },
    patterns::Pattern,
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub default: Action,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    /// Wait for a human decision (see `approvals:`); denied on timeout.
    Hold,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: Match,
    pub action: Action,
    #[serde(default)]
    pub reason: Option<String>,
    /// How long a hold waits for a decision.
    #[serde(default, deserialize_with = "crate::config::values::optional_duration")]
    pub timeout: Option<Duration>,
    /// Overrides the target's masking for the calls this rule matches (and their answers).
    #[serde(default)]
    pub mask: Option<crate::masking::MaskApply>,
    /// Keep clear text in the records of the calls this rule matches.
    #[serde(default)]
    pub record_raw: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub target: Option<Pattern>,
    /// Process name (`comm`) of the workload.
    #[serde(default)]
    pub process: Option<Pattern>,
    /// cgroup path of the workload.
    #[serde(default)]
    pub cgroup: Option<Pattern>,
    /// JSON-RPC method, e.g. `tools/call`.
    #[serde(default)]
    pub method: Option<Pattern>,
    /// Tool name of a `tools/call`.
    #[serde(default)]
    pub tool: Option<Pattern>,
    /// Argument values by dotted path.
    #[serde(default)]
    pub args: BTreeMap<String, Pattern>,
    /// Node mode: the namespace of the workload's pod. A workload outside a known pod
    /// matches no Kubernetes key.
    #[serde(default)]
    pub namespace: Option<Pattern>,
    /// Node mode: the pod's service account.
    #[serde(default)]
    pub service_account: Option<Pattern>,
    /// Node mode: the pod's name.
    #[serde(default)]
    pub pod: Option<Pattern>,
    /// Node mode: the container the connecting process runs in.
    #[serde(default)]
    pub container: Option<Pattern>,
    /// Node mode: the pod's labels, as a label selector (`matchLabels`, `matchExpressions`).
    #[serde(default)]
    pub pod_labels: Option<LabelSelector>,
    /// The subject of the request's verified bearer token: an OIDC token's `sub`, or
    /// `system:serviceaccount:NS:NAME`. A request without one matches no `subject`.
    #[serde(default)]
    pub subject: Option<Pattern>,
    /// One of the verified token's groups (the OIDC groups claim; a service account's
    /// `system:serviceaccounts:NS`).
    #[serde(default)]
    pub group: Option<Pattern>,
    /// An API-server request (`kubernetes` targets).
    #[serde(default)]
    pub kube: Option<KubeMatch>,
}

/// What an API-server request does, as RBAC names it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeMatch {
    /// get, list, watch, create, update, patch, delete, deletecollection, or connect (exec,
    /// attach, port-forward).
    #[serde(default)]
    pub verb: Option<Pattern>,
    /// The resource, or `resource/subresource` (`pods/exec`).
    #[serde(default)]
    pub resource: Option<Pattern>,
    /// The API group; `""` is the core group.
    #[serde(default)]
    pub api_group: Option<Pattern>,
    /// The namespace the request acts in (a namespace's own name, for `namespaces`).
    #[serde(default)]
    pub namespace: Option<Pattern>,
    /// The object's name.
    #[serde(default)]
    pub name: Option<Pattern>,
    /// The user the request asks to impersonate (`Impersonate-User`).
    #[serde(default)]
    pub impersonate_user: Option<Pattern>,
    /// The protocol the request asks to upgrade to (`Upgrade`): `websocket`, or `SPDY/3.1`
    /// from kubectl before 1.30, whose streams Interlock relays unread.
    #[serde(default)]
    pub upgrade: Option<Pattern>,
}

/// What a policy decision is made about.
pub struct Request<'a> {
    pub target: &'a str,
    pub workload: &'a Workload,
    /// Who a verified bearer token says the caller is (`protocols::l7::identity`).
    pub caller: Option<&'a Principal>,
    pub operation: Operation<'a>,
}

pub enum Operation<'a> {
    /// One MCP JSON-RPC message with a method.
    Mcp {
        method: &'a str,
        tool: Option<&'a str>,
        arguments: Option<&'a serde_json::Value>,
    },
    /// One API-server request.
    Kube {
        info: &'a RequestInfo,
        impersonate: Option<&'a Impersonation>,
        /// The `Upgrade` header.
        upgrade: Option<&'a str>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Decision {
    pub action: Action,
    /// The rule that matched; None when the default applied.
    pub rule: Option<String>,
    pub reason: Option<String>,
    /// How long a hold waits (the rule's `timeout`).
    #[serde(skip)]
    pub timeout: Option<Duration>,
    /// The rule's masking override, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<crate::masking::MaskApply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_raw: Option<bool>,
}

impl Policy {
    /// Whether any request could be held (so approvers must be configured).
    pub fn can_hold(&self) -> bool {
        self.default == Action::Hold || self.rules.iter().any(|r| r.action == Action::Hold)
    }

    /// The first matching rule decides; otherwise the default.
    pub fn decide(&self, request: &Request) -> Decision {
        for rule in &self.rules {
            if rule.matches.matches(request) {
                return Decision {
                    action: rule.action,
                    rule: Some(rule.name.clone()),
                    reason: rule.reason.clone(),
                    timeout: rule.timeout,
                    mask: rule.mask,
                    record_raw: rule.record_raw,
                };
            }
        }
        Decision {
            action: self.default,
            rule: None,
            reason: None,
            timeout: None,
            mask: None,
            record_raw: None,
        }
    }
}

impl Match {
    fn matches(&self, r: &Request) -> bool {
        let field = |pattern: &Option<Pattern>, value: Option<&str>| match pattern {
            None => true,
            Some(p) => value.is_some_and(|v| p.is_match(v)),
        };
        field(&self.target, Some(r.target))
            && field(&self.process, Some(&r.workload.process))
            // A workload whose cgroup is gone matches as the empty path, as it always has.
            && field(&self.cgroup, Some(r.workload.cgroup.as_deref().unwrap_or("")))
            && self.matches_operation(&r.operation)
            && self.matches_pod(r.workload.kubernetes.as_deref())
            && field(&self.subject, r.caller.and_then(|c| c.subject.as_deref()))
            && self.group.as_ref().is_none_or(|p| {
                r.caller
                    .is_some_and(|c| c.groups.iter().any(|g| p.is_match(g)))
            })
    }

    fn matches_operation(&self, operation: &Operation) -> bool {
        let field = |pattern: &Option<Pattern>, value: Option<&str>| match pattern {
            None => true,
            Some(p) => value.is_some_and(|v| p.is_match(v)),
        };
        match operation {
            Operation::Mcp {
                method,
                tool,
                arguments,
            } => {
                self.kube.is_none()
                    && field(&self.method, Some(method))
                    && field(&self.tool, *tool)
                    && self.args.iter().all(|(path, pattern)| {
                        argument(*arguments, path).is_some_and(|v| pattern.is_match(&v))
                    })
            }
            Operation::Kube {
                info,
                impersonate,
                upgrade,
            } => {
                let mcp_keys =
                    self.method.is_some() || self.tool.is_some() || !self.args.is_empty();
                let Some(kube) = &self.kube else {
                    return !mcp_keys;
                };
                !mcp_keys
                    && field(&kube.verb, Some(&info.verb))
                    && field(&kube.resource, info.resource_path().as_deref())
                    && field(&kube.api_group, info.api_group.as_deref())
                    && field(&kube.namespace, info.namespace.as_deref())
                    && field(&kube.name, info.name.as_deref())
                    && field(
                        &kube.impersonate_user,
                        impersonate.and_then(|i| i.user.as_deref()),
                    )
                    && field(&kube.upgrade, *upgrade)
            }
        }
    }

    fn matches_pod(&self, pod: Option<&PodIdentity>) -> bool {
        let field = |pattern: &Option<Pattern>, value: fn(&PodIdentity) -> Option<&str>| {
            pattern
                .as_ref()
                .is_none_or(|p| pod.and_then(value).is_some_and(|v| p.is_match(v)))
        };
        field(&self.namespace, |p| Some(&p.namespace))
            && field(&self.service_account, |p| Some(&p.service_account))
            && field(&self.pod, |p| Some(&p.pod))
            && field(&self.container, |p| p.container.as_deref())
            && self
                .pod_labels
                .as_ref()
                .is_none_or(|s| pod.is_some_and(|p| s.matches(&p.labels)))
    }
}

/// The value at a dotted path, as text (strings bare, other values as JSON).
fn argument(arguments: Option<&serde_json::Value>, path: &str) -> Option<String> {
    let mut value = arguments?;
    for key in path.split('.') {
        value = match value {
            serde_json::Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            other => other.get(key)?,
        };
    }
    Some(match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    static PYTHON: std::sync::LazyLock<Workload> = std::sync::LazyLock::new(|| Workload {
        cgroup_id: 7,
        cgroup: Some("/x".into()),
        pid: 1,
        process: "python3".into(),
        cmdline: vec!["python3".into()],
        pod: None,
        kubernetes: None,
    });

    fn call<'a>(tool: &'a str, args: &'a serde_json::Value) -> Request<'a> {
        Request {
            target: "demo-mcp",
            workload: &PYTHON,
            caller: None,
            operation: Operation::Mcp {
                method: "tools/call",
                tool: Some(tool),
                arguments: Some(args),
            },
        }
    }

    #[test]
    fn kube_keys_match_api_server_requests_and_mcp_keys_do_not() {
        let p = policy(
            "rules:\n  - name: hold-namespace-deletes\n    match: { kube: { verb: delete, resource: namespaces } }\n    action: hold\n  - name: no-prod-exec\n    match: { kube: { resource: pods/exec, namespace: \"prod*\" } }\n    action: deny\n  - name: no-core-secrets-as-admin\n    match: { kube: { resource: secrets, api_group: \"\", impersonate_user: admin } }\n    action: deny\n  - name: mcp-only\n    match: { method: \"*\" }\n    action: deny\n",
        );
        let decide = |method: hyper::Method, uri: &str, impersonate: Option<&str>| {
            let info = crate::kubernetes::request_info::parse(&method, &uri.parse().unwrap());
            let impersonate = impersonate.map(|user| Impersonation {
                user: Some(user.into()),
                ..Impersonation::default()
            });
            let decision = p.decide(&Request {
                target: "kube",
                workload: &PYTHON,
                caller: None,
                operation: Operation::Kube {
                    info: &info,
                    impersonate: impersonate.as_ref(),
                    upgrade: None,
                },
            });
            (decision.action, decision.rule)
        };
        let hold = (Action::Hold, Some("hold-namespace-deletes".to_string()));
        assert_eq!(
            decide(hyper::Method::DELETE, "/api/v1/namespaces/team", None),
            hold
        );
        let deny_exec = (Action::Deny, Some("no-prod-exec".to_string()));
        let exec = "/api/v1/namespaces/prod-eu/pods/web/exec?command=sh";
        assert_eq!(decide(hyper::Method::GET, exec, None), deny_exec);
        let staging_exec = "/api/v1/namespaces/staging/pods/web/exec?command=sh";
        assert_eq!(
            decide(hyper::Method::GET, staging_exec, None),
            (Action::Allow, None)
        );
        let secret = "/api/v1/namespaces/team/secrets/db";
        let deny_admin = (Action::Deny, Some("no-core-secrets-as-admin".to_string()));
        assert_eq!(
            decide(hyper::Method::GET, secret, Some("admin")),
            deny_admin
        );
        assert_eq!(
            decide(hyper::Method::GET, secret, None),
            (Action::Allow, None)
        );
        // A kube rule never matches an MCP call.
        let args = serde_json::json!({});
        let mcp = p.decide(&call("x", &args));
        assert_eq!(mcp.rule.as_deref(), Some("mcp-only"));
    }

    #[test]
    fn first_matching_rule_wins_and_default_applies() {
        let p = policy(
            "default: allow\nrules:\n  - name: no-deletes\n    match: { target: demo-mcp, method: tools/call, tool: \"delete_*\" }\n    action: deny\n    reason: deletes are not allowed here\n  - name: risky\n    match: { tool: \"trigger-*\" }\n    action: hold\n    timeout: 30s\n",
        );
        let args = serde_json::json!({});
        let d = p.decide(&call("delete_user", &args));
        assert_eq!(d.action, Action::Deny);
        assert_eq!(d.rule.as_deref(), Some("no-deletes"));
        assert_eq!(p.decide(&call("trigger-x", &args)).action, Action::Hold);
        assert_eq!(
            p.decide(&call("echo", &args)),
            Decision {
                action: Action::Allow,
                rule: None,
                reason: None,
                timeout: None,
                mask: None,
                record_raw: None,
            }
        );
    }

    #[test]
    fn pod_keys_match_only_the_pods_node_mode_knows() {
        let p = policy(
            "rules:\n  - name: no-deletes-for-agent\n    match: { namespace: team, service_account: agent, container: app, pod: \"agent-*\", pod_labels: { matchLabels: { tier: front } }, tool: delete_file }\n    action: deny\n",
        );
        let identity = |service_account: &str| PodIdentity {
            namespace: "team".into(),
            pod: "agent-7".into(),
            uid: "u".into(),
            container: Some("app".into()),
            service_account: service_account.into(),
            node: "n".into(),
            owner: None,
            labels: [("tier".to_string(), "front".to_string())].into(),
            selections: vec![],
        };
        let args = serde_json::json!({});
        let decide = |kubernetes: Option<PodIdentity>| {
            let workload = Workload {
                kubernetes: kubernetes.map(Box::new),
                ..PYTHON.clone()
            };
            p.decide(&Request {
                workload: &workload,
                ..call("delete_file", &args)
            })
            .action
        };
        assert_eq!(decide(Some(identity("agent"))), Action::Deny);
        assert_eq!(decide(Some(identity("other"))), Action::Allow);
        assert_eq!(
            decide(None),
            Action::Allow,
            "a workload outside a pod matches no pod key"
        );
    }

    #[test]
    fn caller_keys_match_the_verified_token_only() {
        let p = policy(
            "rules:\n  - name: sre-only\n    match: { tool: delete_file, group: sre, subject: \"re:alice|bob\" }\n    action: allow\n  - name: nobody-else\n    match: { tool: delete_file }\n    action: deny\n",
        );
        let args = serde_json::json!({});
        let caller = |subject: &str, groups: &[&str]| Principal {
            issuer: Some("https://idp.example".into()),
            subject: Some(subject.into()),
            email: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let decide = |caller: Option<&Principal>| {
            p.decide(&Request {
                caller,
                ..call("delete_file", &args)
            })
            .action
        };
        assert_eq!(
            decide(Some(&caller("alice", &["dev", "sre"]))),
            Action::Allow
        );
        assert_eq!(decide(Some(&caller("alice", &["dev"]))), Action::Deny);
        assert_eq!(decide(Some(&caller("mallory", &["sre"]))), Action::Deny);
        assert_eq!(decide(None), Action::Deny, "no verified token, no caller");
    }

    #[test]
    fn argument_paths_and_regexes() {
        let p = policy(
            "rules:\n  - name: no-prod\n    match: { args: { \"target.env\": \"re:prod(-.*)?\", \"items.1\": \"b*\" } }\n    action: deny\n",
        );
        let hit = serde_json::json!({"target": {"env": "prod-eu"}, "items": ["a", "bee"]});
        let miss = serde_json::json!({"target": {"env": "staging"}, "items": ["a", "bee"]});
        assert_eq!(p.decide(&call("x", &hit)).action, Action::Deny);
        assert_eq!(p.decide(&call("x", &miss)).action, Action::Allow);
    }

    #[test]
    fn glob_escapes_regex_metacharacters() {
        let p = Pattern::new("get.sum+").unwrap();
        assert!(p.is_match("get.sum+"));
        assert!(!p.is_match("getxsum"));
        assert!(Pattern::new("re:(").is_err());
    }
}

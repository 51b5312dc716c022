//! What an API-server request is, read as kube-apiserver's own request-info resolver reads it
//! (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go): verb, API group and version,
//! resource, subresource, namespace and name, from the method, the path and the query. Records
//! and policy use it; authorization upstream stays the API server's.
//!
//! One difference, on purpose: exec, attach and port-forward (and proxy) are the verb
//! `connect`, whatever the method, because they open a stream rather than act on an object.
use std::collections::BTreeMap;

use hyper::{HeaderMap, Method, Uri};
use serde::{Deserialize, Serialize};

/// Subresources of a namespace that name no resource under it.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];
/// Subresources that open a stream to a pod or node.
const CONNECT_SUBRESOURCES: [&str; 4] = ["exec", "attach", "portforward", "proxy"];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// False for non-resource paths (`/version`, `/healthz`, `/openapi/v3`, discovery roots):
    /// then only `verb` (the method, lowercase) and `path` are set.
    pub resource_request: bool,
    pub verb: String,
    pub path: String,
    /// The API group; empty for the core group (`/api/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object's name: from the path, or a list's `fieldSelector=metadata.name=NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_selector: Option<String>,
    /// `dryRun=All`: the server persists nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// exec and attach: the container (none: the pod's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// exec: the command, one argument per `command` parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// exec and attach: a terminal was asked for (`kubectl exec -it`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// port-forward: the pod's ports, as `ports` lists them (repeated or comma-separated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl RequestInfo {
    /// `resource/subresource`, as RBAC and policy name it (`pods/exec`).
    pub fn resource_path(&self) -> Option<String> {
        let resource = self.resource.as_deref()?;
        Some(match &self.subresource {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        })
    }
}

pub fn parse(method: &Method, uri: &Uri) -> RequestInfo {
    let path = uri.path();
    let mut info = RequestInfo {
        verb: method.as_str().to_ascii_lowercase(),
        path: path.to_string(),
        ..RequestInfo::default()
    };
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let mut parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // At least a prefix, a version and a resource.
    if parts.len() < 3 || !(parts[0] == "api" || parts[0] == "apis") {
        return info;
    }
    let grouped = parts[0] == "apis";
    parts.remove(0);
    if grouped {
        if parts.len() < 3 {
            return info;
        }
        info.api_group = Some(parts.remove(0).to_string());
    } else {
        info.api_group = Some(String::new());
    }
    info.resource_request = true;
    info.api_version = Some(parts.remove(0).to_string());
    info.verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
    .to_string();
    // The deprecated `/watch/` and `/proxy/` path forms carry their verb in the path.
    if (parts[0] == "watch" || parts[0] == "proxy") && parts.len() >= 2 {
        info.verb = parts.remove(0).to_string();
    }
    if parts[0] == "namespaces" && parts.len() > 1 {
        info.namespace = Some(parts[1].to_string());
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts.drain(..2);
        }
    }
    let verb_has_no_subresource = info.verb == "proxy";
    if parts.len() >= 3 && !verb_has_no_subresource {
        info.subresource = Some(parts[2].to_string());
    }
    if parts.len() >= 2 {
        info.name = Some(parts[1].to_string());
    }
    info.resource = Some(parts[0].to_string());
    info.label_selector = param("labelSelector");
    info.field_selector = param("fieldSelector");
    info.dry_run = param("dryRun").is_some_and(|v| v == "All");
    if info.name.is_none() && info.verb == "get" {
        let watch = param("watch").is_some_and(|v| v == "true" || v == "1");
        info.verb = if watch { "watch" } else { "list" }.into();
        info.name = info
            .field_selector
            .as_deref()
            .and_then(exact_name)
            .map(String::from);
    }
    if info.name.is_none() && info.verb == "delete" {
        info.verb = "deletecollection".into();
    }
    if info
        .subresource
        .as_deref()
        .is_some_and(|s| CONNECT_SUBRESOURCES.contains(&s))
    {
        info.verb = "connect".into();
        info.container = param("container");
        info.command = query
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        info.tty = param("tty").is_some_and(|v| v == "true" || v == "1");
        info.ports = query
            .iter()
            .filter(|(k, _)| k == "ports")
            .flat_map(|(_, v)| v.split(','))
            .filter_map(|port| port.trim().parse().ok())
            .collect();
    }
    info
}

/// Whom a request asks the API server to act as (the `Impersonate-*` headers). The API server
/// decides whether the caller may; the record and policy see who was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impersonation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// `Impersonate-Extra-KEY`, by KEY.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Impersonation {
    /// None when the request impersonates nobody.
    pub fn of(headers: &HeaderMap) -> Option<Impersonation> {
        let mut found = Impersonation::default();
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match name.as_str() {
                "impersonate-user" => found.user = Some(value),
                "impersonate-uid" => found.uid = Some(value),
                "impersonate-group" => found.groups.push(value),
                other => {
                    if let Some(key) = other.strip_prefix("impersonate-extra-") {
                        found.extra.entry(key.to_string()).or_default().push(value);
                    }
                }
            }
        }
        (found != Impersonation::default()).then_some(found)
    }
}

/// The name a field selector pins exactly: `metadata.name=NAME` (or `==`), alone or among
/// other terms.
fn exact_name(selector: &str) -> Option<&str> {
    selector.split(',').find_map(|term| {
        let value = term
            .strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="))?;
        (!value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_carries_its_container_command_and_terminal() {
        let exec = info(
            Method::GET,
            "/api/v1/namespaces/team/pods/web/exec?command=sh&command=-c&command=echo%20hi&container=app&stdin=true&tty=true",
        );
        assert_eq!(exec.command, ["sh", "-c", "echo hi"]);
        assert_eq!(exec.container.as_deref(), Some("app"));
        assert!(exec.tty);
        let forward = info(
            Method::POST,
            "/api/v1/namespaces/team/pods/web/portforward?ports=8080,9090&ports=5432",
        );
        assert_eq!(forward.ports, [8080, 9090, 5432]);
        let get = info(
            Method::GET,
            "/api/v1/namespaces/team/pods/web?container=app",
        );
        assert_eq!((get.container, get.command.len()), (None, 0));
    }

    #[test]
    fn impersonation_headers_are_read_whole() {
        let mut headers = HeaderMap::new();
        assert_eq!(Impersonation::of(&headers), None);
        headers.insert("impersonate-user", "jane".parse().unwrap());
        headers.append("impersonate-group", "sre".parse().unwrap());
        headers.append("impersonate-group", "dev".parse().unwrap());
        headers.insert("impersonate-extra-scopes", "view".parse().unwrap());
        let found = Impersonation::of(&headers).unwrap();
        assert_eq!(found.user.as_deref(), Some("jane"));
        assert_eq!(found.groups, ["sre", "dev"]);
        assert_eq!(found.extra["scopes"], ["view"]);
    }

    fn info(method: Method, uri: &str) -> RequestInfo {
        parse(&method, &uri.parse().unwrap())
    }

    /// (verb, group, version, resource/subresource, namespace, name)
    fn summary(i: &RequestInfo) -> (String, String, String, String, String, String) {
        (
            i.verb.clone(),
            i.api_group.clone().unwrap_or_default(),
            i.api_version.clone().unwrap_or_default(),
            i.resource_path().unwrap_or_default(),
            i.namespace.clone().unwrap_or_default(),
            i.name.clone().unwrap_or_default(),
        )
    }

    #[test]
    fn resolves_like_kube_apiserver() {
        let cases: &[(Method, &str, [&str; 6])] = &[
            (
                Method::GET,
                "/api/v1/namespaces/team/pods/web",
                ["get", "", "v1", "pods", "team", "web"],
            ),
            (
                Method::GET,
                "/api/v1/namespaces/team/pods",
                ["list", "", "v1", "pods", "team", ""],
            ),
            (
                Method::GET,
                "/api/v1/pods?watch=true&resourceVersion=10",
                ["watch", "", "v1", "pods", "", ""],
            ),
            (
                Method::GET,
                "/api/v1/watch/namespaces/team/pods",
                ["watch", "", "v1", "pods", "team", ""],
            ),
            (
                Method::POST,
                "/apis/apps/v1/namespaces/team/deployments",
                ["create", "apps", "v1", "deployments", "team", ""],
            ),
            (
                Method::PUT,
                "/apis/apps/v1/namespaces/team/deployments/api/scale",
                ["update", "apps", "v1", "deployments/scale", "team", "api"],
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/team/pods/web/status",
                ["patch", "", "v1", "pods/status", "team", "web"],
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/prod",
                ["delete", "", "v1", "namespaces", "prod", "prod"],
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/prod/finalize",
                ["update", "", "v1", "namespaces/finalize", "prod", "prod"],
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/team/pods",
                ["deletecollection", "", "v1", "pods", "team", ""],
            ),
            (
                Method::GET,
                "/api/v1/namespaces",
                ["list", "", "v1", "namespaces", "", ""],
            ),
            (
                Method::GET,
                "/api/v1/namespaces/team/secrets?fieldSelector=metadata.name%3Ddb",
                ["list", "", "v1", "secrets", "team", "db"],
            ),
            (
                Method::GET,
                "/api/v1/namespaces/team/pods/web/exec?command=sh&stdin=true",
                ["connect", "", "v1", "pods/exec", "team", "web"],
            ),
            (
                Method::POST,
                "/api/v1/namespaces/team/pods/web/portforward",
                ["connect", "", "v1", "pods/portforward", "team", "web"],
            ),
            (
                Method::POST,
                "/api/v1/namespaces/team/serviceaccounts/agent/token",
                ["create", "", "v1", "serviceaccounts/token", "team", "agent"],
            ),
            (
                Method::GET,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
                [
                    "get",
                    "rbac.authorization.k8s.io",
                    "v1",
                    "clusterroles",
                    "",
                    "admin",
                ],
            ),
        ];
        for (method, uri, expected) in cases {
            let got = info(method.clone(), uri);
            assert!(got.resource_request, "{uri}");
            let expected = expected.map(String::from);
            assert_eq!(
                summary(&got),
                (
                    expected[0].clone(),
                    expected[1].clone(),
                    expected[2].clone(),
                    expected[3].clone(),
                    expected[4].clone(),
                    expected[5].clone()
                ),
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn selectors_and_dry_run_are_read_from_the_query() {
        let i = info(
            Method::POST,
            "/api/v1/namespaces/team/pods?dryRun=All&fieldManager=kubectl",
        );
        assert!(i.dry_run);
        let i = info(
            Method::GET,
            "/api/v1/pods?labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&fieldSelector=spec.nodeName%3Dnode-1",
        );
        assert_eq!(i.label_selector.as_deref(), Some("app=web,tier in (a,b)"));
        assert_eq!(i.field_selector.as_deref(), Some("spec.nodeName=node-1"));
        assert_eq!(
            i.name, None,
            "a field selector on another field names no object"
        );
        assert!(!i.dry_run);
    }

    #[test]
    fn non_resource_paths_keep_only_the_method_and_path() {
        for uri in [
            "/version",
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps/v1",
            "/openapi/v3",
            "/healthz",
            "/",
            "//",
        ] {
            let i = info(Method::GET, uri);
            assert!(!i.resource_request, "{uri}");
            assert_eq!(i.verb, "get");
            assert_eq!(i.resource, None, "{uri}");
        }
        let i = info(Method::OPTIONS, "/api/v1/pods");
        assert_eq!((i.resource_request, i.verb.as_str()), (true, ""));
    }
}

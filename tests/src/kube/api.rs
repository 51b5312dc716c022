//! Routing and handlers: public endpoints (version, health, the issuer's discovery and JWKS),
//! authentication, discovery, the resource verbs, TokenRequest, and the `/testserver/`
//! controls.
use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::BoxBody};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, body::Incoming, header};
use serde_json::{Value, json};

use super::{
    State, exec, portforward,
    resources::{RESOURCES, Resource, VERBS, group_version},
    selectors::{FieldSelector, LabelSelector},
    status::ApiError,
    store::From,
    table,
    tokens::{self, Binding, KeyAlgorithm},
    watch::Watch,
};

pub type Body = BoxBody<Bytes, Infallible>;

/// The largest request body accepted, as kube-apiserver's limit.
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The shortest lifetime TokenRequest grants, as kube-apiserver's.
const MIN_TOKEN_SECONDS: i64 = 600;

enum User {
    Admin,
    ServiceAccount(tokens::TokenIdentity),
}

impl User {
    fn name(&self) -> &str {
        match self {
            User::Admin => "interlock-testserver-admin",
            User::ServiceAccount(identity) => &identity.username,
        }
    }
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(body: &'static str) -> Response<Body> {
    Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed())
}

pub async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    match route(&state, request).await {
        Ok(response) => response,
        Err(error) => respond(error.code(), &error.status()),
    }
}

async fn route(
    state: &Arc<State>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    // Taken first: it resolves only if this request is answered with 101 (exec).
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let query: HashMap<String, String> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return Ok(text("ok")),
        "/version" => return Ok(respond(200, &version())),
        "/.well-known/openid-configuration" => {
            let jwks_uri = format!("{}/openid/v1/jwks", state.base_url);
            return Ok(respond(200, &state.issuer().discovery(&jwks_uri)));
        }
        "/openid/v1/jwks" => {
            let mut response = respond(200, &state.issuer().jwks());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/jwk-set+json"),
            );
            headers.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("public, max-age=3600"),
            );
            return Ok(response);
        }
        _ => {}
    }
    let user = authenticate(state, &parts.headers)?;
    state
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(json!({
            "method": parts.method.as_str(),
            "path": path,
            "query": parts.uri.query(),
            "user": user.name(),
            "version": format!("{:?}", parts.version),
            "accept": parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
        }));
    if let [
        "",
        "api",
        "v1",
        "namespaces",
        namespace,
        "pods",
        name,
        subresource,
    ] = path.split('/').collect::<Vec<_>>().as_slice()
        && ["exec", "attach", "portforward"].contains(subresource)
    {
        if !matches!(user, User::Admin) && !state.allow_connect.iter().any(|u| u == user.name()) {
            return Err(ApiError::Forbidden(format!(
                "pods \"{name}\" is forbidden: User \"{}\" cannot create resource \"pods/{subresource}\" in API group \"\" in the namespace \"{namespace}\"",
                user.name()
            )));
        }
        let pod = state.store.get(resource_of("v1", "Pod"), namespace, name)?;
        let query = parts.uri.query().unwrap_or("");
        return match *subresource {
            "portforward" => {
                let ports = form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| k == "ports")
                    .flat_map(|(_, v)| {
                        v.split(',')
                            .filter_map(|p| p.trim().parse().ok())
                            .collect::<Vec<u16>>()
                    })
                    .collect();
                portforward::upgrade(&parts.headers, on_upgrade, ports)
            }
            "attach" => {
                // Attach joins the container's own process: here, its command started afresh.
                let mut request = exec::ExecRequest::from_query(query);
                request.command = container_command(&pod);
                exec::upgrade(&parts.headers, on_upgrade, request)
            }
            _ => exec::upgrade(
                &parts.headers,
                on_upgrade,
                exec::ExecRequest::from_query(query),
            ),
        };
    }
    let needs_body = [Method::POST, Method::PUT, Method::PATCH].contains(&parts.method);
    let body = if needs_body {
        Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|_| ApiError::TooLarge)?
            .to_bytes()
    } else {
        Bytes::new()
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let call = Call {
        method: parts.method.clone(),
        query,
        table: header_str(&parts.headers, header::ACCEPT).contains("as=Table"),
        content_type: header_str(&parts.headers, header::CONTENT_TYPE).to_string(),
        body,
    };
    match segments.as_slice() {
        ["api"] => Ok(respond(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        )),
        ["apis"] => Ok(respond(200, &group_list())),
        ["api", version] => resource_list("", version),
        ["apis", group, version] => resource_list(group, version),
        ["testserver", control] => {
            if !matches!(user, User::Admin) {
                return Err(ApiError::Forbidden(
                    "the test controls take the admin token".into(),
                ));
            }
            testserver(state, control, &call)
        }
        ["api", version, rest @ ..] => resource(state, &user, "", version, rest, call),
        ["apis", group, version, rest @ ..] => resource(state, &user, group, version, rest, call),
        _ => Err(not_served()),
    }
}

fn not_served() -> ApiError {
    ApiError::NotFound {
        resource: "".into(),
        name: "the server could not find the requested resource".into(),
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-interlock-testserver",
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
    })
}

/// Bearer tokens only: the admin token, or a service-account token this server signed
/// whose pod, service account or Secret still exists, as kube-apiserver checks.
fn authenticate(state: &State, headers: &HeaderMap) -> Result<User, ApiError> {
    let Some(token) = header_str(headers, header::AUTHORIZATION).strip_prefix("Bearer ") else {
        return Err(ApiError::Unauthorized);
    };
    if token == state.admin_token {
        return Ok(User::Admin);
    }
    let identity = state.issuer().verify(token).map_err(|why| {
        tracing::info!(reason = %why, "token refused");
        ApiError::Unauthorized
    })?;
    let still_bound = |claims: &Value| -> Result<(), String> {
        let k8s = &claims["kubernetes.io"];
        if claims["iss"] == tokens::LEGACY_ISSUER {
            let namespace = claims["kubernetes.io/serviceaccount/namespace"]
                .as_str()
                .unwrap_or_default();
            let secret = claims["kubernetes.io/serviceaccount/secret.name"]
                .as_str()
                .unwrap_or_default();
            return state
                .store
                .get(resource_of("v1", "Secret"), namespace, secret)
                .map(|_| ())
                .map_err(|_| format!("its Secret {namespace}/{secret} is gone"));
        }
        let namespace = k8s["namespace"].as_str().unwrap_or_default();
        let sa = k8s["serviceaccount"]["name"].as_str().unwrap_or_default();
        let account = state
            .store
            .get(resource_of("v1", "ServiceAccount"), namespace, sa)
            .map_err(|_| format!("its service account {namespace}/{sa} is gone"))?;
        if account["metadata"]["uid"] != k8s["serviceaccount"]["uid"] {
            return Err(format!(
                "its service account {namespace}/{sa} was recreated"
            ));
        }
        if let Some(pod) = k8s.get("pod") {
            let name = pod["name"].as_str().unwrap_or_default();
            let live = state
                .store
                .get(resource_of("v1", "Pod"), namespace, name)
                .map_err(|_| format!("its pod {namespace}/{name} is gone"))?;
            if live["metadata"]["uid"] != pod["uid"] {
                return Err(format!("its pod {namespace}/{name} was recreated"));
            }
        }
        Ok(())
    };
    still_bound(&identity.claims).map_err(|why| {
        tracing::info!(user = %identity.username, reason = %why, "token refused");
        ApiError::Unauthorized
    })?;
    Ok(User::ServiceAccount(identity))
}

fn group_list() -> Value {
    let groups: Vec<Value> = Resource::group_versions()
        .into_iter()
        .filter(|(group, _)| !group.is_empty())
        .map(|(group, version)| {
            let gv = json!({"groupVersion": group_version(group, version), "version": version});
            json!({"name": group, "versions": [gv], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Result<Response<Body>, ApiError> {
    let mut resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({
                "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind, "verbs": VERBS, "shortNames": r.short_names,
            })
        })
        .collect();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version && r.status_subresource)
    {
        resources.push(json!({
            "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ["get", "patch", "update"],
        }));
    }
    if resources.is_empty() {
        return Err(not_served());
    }
    if group.is_empty() {
        resources.push(json!({
            "name": "serviceaccounts/token", "singularName": "", "namespaced": true,
            "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"],
        }));
    }
    Ok(respond(
        200,
        &json!({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": group_version(group, version), "resources": resources,
        }),
    ))
}

struct Call {
    method: Method,
    query: HashMap<String, String>,
    table: bool,
    content_type: String,
    body: Bytes,
}

impl Call {
    fn flag(&self, name: &str) -> bool {
        matches!(
            self.query.get(name).map(String::as_str),
            Some("true" | "1" | "True")
        )
    }

    fn object(&self) -> Result<Value, ApiError> {
        let media = self.content_type.split(';').next().unwrap_or("").trim();
        let parsed = match media {
            "application/yaml" => serde_yaml_ng::from_slice(&self.body).map_err(|e| e.to_string()),
            "application/json"
            | "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "" => serde_json::from_slice(&self.body).map_err(|e| e.to_string()),
            other => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json (got {other})"
                )));
            }
        };
        match parsed {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(_) => Err(ApiError::BadRequest(
                "the request body is not a JSON object".into(),
            )),
            Err(e) => Err(ApiError::BadRequest(format!(
                "the request body does not parse: {e}"
            ))),
        }
    }
}

/// Where a resource path points: `[namespaces/NS/]PLURAL[/NAME[/SUBRESOURCE]]`.
struct Target {
    resource: &'static Resource,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if Resource::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            (ns.to_string(), [&[*plural][..], tail].concat())
        }
        _ => (String::new(), rest.to_vec()),
    };
    let resource = Resource::find(group, version, rest.first()?)?;
    if resource.namespaced == namespace.is_empty() && rest.len() > 1 {
        // A namespaced object needs its namespace; a cluster-scoped one has none.
        return None;
    }
    Some(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn resource(
    state: &Arc<State>,
    user: &User,
    group: &str,
    version: &str,
    rest: &[&str],
    call: Call,
) -> Result<Response<Body>, ApiError> {
    let target = parse_target(group, version, rest).ok_or_else(not_served)?;
    let verb = match (&call.method, &target.name, target.subresource.as_deref()) {
        (&Method::GET, None, None) if call.flag("watch") => "watch",
        (&Method::GET, None, None) => "list",
        (&Method::GET, Some(_), None) => "get",
        (&Method::POST, None, None) => "create",
        (&Method::POST, Some(_), Some("token")) if target.resource.plural == "serviceaccounts" => {
            "create"
        }
        (&Method::PUT, Some(_), None | Some("status")) => "update",
        (&Method::PATCH, Some(_), None | Some("status")) => "patch",
        (&Method::GET, Some(_), Some("status")) => "get",
        (&Method::DELETE, Some(_), None) => "delete",
        (_, _, Some(_)) => return Err(not_served()),
        _ => return Err(ApiError::MethodNotAllowed),
    };
    let status = target.subresource.as_deref() == Some("status");
    if status && !target.resource.status_subresource {
        return Err(not_served());
    }
    // RBAC as a cluster grants it: service accounts read; those in allow_write also write
    // objects, and only those in allow_status_write write the status subresource.
    let writers = if status {
        &state.allow_status_write
    } else {
        &state.allow_write
    };
    if matches!(user, User::ServiceAccount(_))
        && !["get", "list", "watch"].contains(&verb)
        && !writers.iter().any(|u| u == user.name())
    {
        let scope = if target.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", target.namespace)
        };
        let plural = match status {
            true => format!("{}/status", target.resource.plural),
            false => target.resource.plural.to_string(),
        };
        return Err(ApiError::Forbidden(format!(
            "{plural} is forbidden: User \"{user}\" cannot {verb} resource \"{plural}\" in API group \"{group}\" {scope}",
            user = user.name(),
        )));
    }
    let name = target.name.as_deref().unwrap_or_default();
    let (resource, namespace) = (target.resource, target.namespace.as_str());
    match verb {
        "get" => {
            let object = state.store.get(resource, namespace, name)?;
            Ok(respond(200, &shape(resource, &call, vec![object], None)))
        }
        "list" => list(state, resource, namespace, &call),
        "watch" => watch(state, resource, namespace, &call),
        "create" if target.subresource.is_some() => token_request(state, namespace, name, &call),
        "create" => {
            let mut object = call.object()?;
            check_kind(resource, namespace, &object)?;
            if resource.status_subresource
                && let Some(fields) = object.as_object_mut()
            {
                fields.remove("status");
            }
            Ok(respond(201, &create(state, resource, namespace, object)?))
        }
        "update" => {
            let object = call.object()?;
            check_kind(resource, namespace, &object)?;
            let previous = state.store.get(resource, namespace, name)?;
            let object = split_status(resource, status, previous, object);
            Ok(respond(
                200,
                &state.store.replace(resource, namespace, name, object)?,
            ))
        }
        "patch" => {
            // A strategic merge patch is applied as a merge patch: the same for maps such as
            // labels, but a list is replaced rather than merged by its key.
            let merge = [
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ];
            let previous = state.store.get(resource, namespace, name)?;
            let mut object = previous.clone();
            if call.content_type.starts_with("application/json-patch+json") {
                let operations: json_patch::Patch =
                    serde_json::from_slice(&call.body).map_err(|e| {
                        ApiError::BadRequest(format!("a JSON Patch that does not parse: {e}"))
                    })?;
                json_patch::patch(&mut object, &operations).map_err(|e| {
                    ApiError::Invalid(format!("the JSON Patch does not apply: {e}"))
                })?;
            } else if merge.iter().any(|m| call.content_type.starts_with(m)) {
                merge_patch(&mut object, &call.object()?);
            } else {
                return Err(ApiError::UnsupportedMediaType(
                    "this server takes merge patches (application/merge-patch+json or application/strategic-merge-patch+json) and JSON Patches (application/json-patch+json)".into(),
                ));
            }
            let object = split_status(resource, status, previous, object);
            Ok(respond(
                200,
                &state.store.replace(resource, namespace, name, object)?,
            ))
        }
        _ => Ok(respond(
            200,
            &state.store.delete(resource, namespace, name)?,
        )),
    }
}

/// With a status subresource, a write to the object keeps the stored status, and a write to
/// `status` changes only the status (and the resourceVersion it is made against).
fn split_status(resource: &Resource, to_status: bool, previous: Value, written: Value) -> Value {
    if !resource.status_subresource {
        return written;
    }
    let (mut kept, from) = match to_status {
        true => (previous, written),
        false => (written, previous),
    };
    kept["status"] = from.get("status").cloned().unwrap_or(Value::Null);
    if to_status {
        kept["metadata"]["resourceVersion"] = from["metadata"]["resourceVersion"].clone();
    }
    if kept["status"].is_null()
        && let Some(fields) = kept.as_object_mut()
    {
        fields.remove("status");
    }
    kept
}

fn check_kind(resource: &Resource, namespace: &str, object: &Value) -> Result<(), ApiError> {
    if let Some(kind) = object["kind"].as_str()
        && kind != resource.kind
    {
        return Err(ApiError::BadRequest(format!(
            "the object is a {kind}, not a {}",
            resource.kind
        )));
    }
    if let Some(ns) = object["metadata"]["namespace"].as_str()
        && ns != namespace
    {
        return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    Ok(())
}

/// One object or a list, as JSON or as a Table when the client asked for one.
fn shape(
    resource: &Resource,
    call: &Call,
    mut items: Vec<Value>,
    list_metadata: Option<Value>,
) -> Value {
    if call.table {
        return table::of(resource, &items, list_metadata);
    }
    match list_metadata {
        None => items.pop().unwrap_or_default(),
        Some(metadata) => {
            // A list's items carry no kind or apiVersion of their own, as from kube-apiserver.
            for item in &mut items {
                if let Some(fields) = item.as_object_mut() {
                    fields.remove("kind");
                    fields.remove("apiVersion");
                }
            }
            json!({
                "kind": format!("{}List", resource.kind),
                "apiVersion": resource.api_version(),
                "metadata": metadata,
                "items": items,
            })
        }
    }
}

fn selectors(resource: &Resource, call: &Call) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let text = |name: &str| call.query.get(name).map(String::as_str).unwrap_or("");
    Ok((
        LabelSelector::parse(text("labelSelector"))?,
        FieldSelector::parse(text("fieldSelector"), resource)?,
    ))
}

/// A list, paged by `limit` and `continue`. A continue token names the last object sent;
/// unlike etcd's, the pages are not one snapshot.
fn list(
    state: &State,
    resource: &'static Resource,
    namespace: &str,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(resource, call)?;
    let namespace = (!namespace.is_empty()).then_some(namespace);
    let (items, resource_version) = state.store.list(resource, namespace);
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    };
    let after = match call.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|k| String::from_utf8(k).ok())
                .ok_or_else(|| ApiError::BadRequest("continue key is not valid".into()))?,
        ),
        None => None,
    };
    let mut selected: Vec<Value> = items
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .filter(|o| after.as_ref().is_none_or(|a| key(o) > *a))
        .collect();
    let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
    let limit: usize = call
        .query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    if limit > 0 && selected.len() > limit {
        let remaining = selected.split_off(limit);
        metadata["remainingItemCount"] = json!(remaining.len());
        let last = key(selected.last().unwrap_or(&Value::Null));
        metadata["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last));
    }
    Ok(respond(
        200,
        &shape(resource, call, selected, Some(metadata)),
    ))
}

fn watch(
    state: &State,
    resource: &'static Resource,
    namespace: &str,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(resource, call)?;
    let initial_events = call.flag("sendInitialEvents");
    let bookmarks = call.flag("allowWatchBookmarks");
    if initial_events && !bookmarks {
        return Err(ApiError::Invalid(
            "sendInitialEvents requires allowWatchBookmarks=true".into(),
        ));
    }
    let from =
        match call.query.get("resourceVersion").map(String::as_str) {
            _ if initial_events => From::Current,
            None | Some("" | "0") => From::Current,
            Some(version) => From::After(version.parse().map_err(|_| {
                ApiError::BadRequest(format!("invalid resource version: {version}"))
            })?),
        };
    let namespace = (!namespace.is_empty()).then(|| namespace.to_string());
    let subscription = state.store.watch(resource, namespace.as_deref(), from)?;
    let timeout = call
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800);
    let watch = Watch {
        resource,
        namespace,
        labels,
        fields,
        bookmarks,
        initial_events_end: initial_events,
        timeout: Duration::from_secs(timeout),
        table: call.table,
        bookmark_interval: state.bookmark_interval,
    };
    let mut response = Response::new(watch.stream(subscription).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Creates an object as the API server and its controllers would: the namespace must exist,
/// a new namespace gets its `default` service account, and a service-account-token Secret
/// gets its token.
fn create(
    state: &State,
    resource: &'static Resource,
    namespace: &str,
    mut object: Value,
) -> Result<Value, ApiError> {
    if resource.namespaced {
        state
            .store
            .get(resource_of("v1", "Namespace"), "", namespace)?;
    }
    if resource.kind == "Secret" && object["type"] == "kubernetes.io/service-account-token" {
        fill_legacy_token(state, namespace, &mut object)?;
    }
    let created = state.store.create(resource, namespace, object)?;
    if resource.kind == "Namespace" {
        let name = created["metadata"]["name"].as_str().unwrap_or_default();
        state.store.create(
            resource_of("v1", "ServiceAccount"),
            name,
            json!({"metadata": {"name": "default"}}),
        )?;
    }
    Ok(created)
}

/// A resource the table is known to hold.
fn resource_of(api_version: &str, kind: &str) -> &'static Resource {
    Resource::of_kind(api_version, kind).unwrap_or(&RESOURCES[0])
}

/// `create` by kind, for the seed objects and fixtures.
pub fn create_object(
    state: &State,
    api_version: &str,
    kind: &str,
    namespace: &str,
    object: Value,
) -> Result<Value, ApiError> {
    let resource = Resource::of_kind(api_version, kind).ok_or_else(|| {
        ApiError::BadRequest(format!("no resource serves {kind} in {api_version}"))
    })?;
    let namespace = if resource.namespaced { namespace } else { "" };
    create(state, resource, namespace, object)
}

fn fill_legacy_token(state: &State, namespace: &str, secret: &mut Value) -> Result<(), ApiError> {
    let sa_name = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
        .as_str()
        .ok_or_else(|| {
            ApiError::Invalid(
                "metadata.annotations[kubernetes.io/service-account.name]: Required value".into(),
            )
        })?
        .to_string();
    let account = state
        .store
        .get(resource_of("v1", "ServiceAccount"), namespace, &sa_name)?;
    let secret_name = secret["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let token = state
        .issuer()
        .sign(&tokens::legacy_claims(namespace, &secret_name, &account))
        .map_err(ApiError::Invalid)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"] =
        account["metadata"]["uid"].clone();
    secret["data"] =
        json!({"token": b64(&token), "ca.crt": b64(&state.ca_pem), "namespace": b64(namespace)});
    Ok(())
}

/// `POST serviceaccounts/NAME/token`: a bound token, as the TokenRequest API mints them.
fn token_request(
    state: &State,
    namespace: &str,
    name: &str,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    let request = call.object()?;
    let spec = &request["spec"];
    let account = state
        .store
        .get(resource_of("v1", "ServiceAccount"), namespace, name)?;
    let expiration_seconds = spec["expirationSeconds"].as_i64().unwrap_or(3600);
    if expiration_seconds < MIN_TOKEN_SECONDS {
        return Err(ApiError::Invalid(format!(
            "spec.expirationSeconds: Invalid value: {expiration_seconds}: may not specify a duration less than 10 minutes"
        )));
    }
    let pod = bound_pod(state, namespace, &spec["boundObjectRef"])?;
    let audiences = audiences_of(state, &spec["audiences"]);
    let binding = Binding {
        namespace,
        service_account: &account,
        pod: pod.as_ref(),
        audiences: audiences.clone(),
        expiration_seconds,
    };
    let (token, claims) = mint(state, None, &binding)?;
    let expires = time::OffsetDateTime::from_unix_timestamp(claims["exp"].as_i64().unwrap_or(0))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    Ok(respond(
        201,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
            "spec": {"audiences": audiences, "expirationSeconds": expiration_seconds, "boundObjectRef": spec["boundObjectRef"]},
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

/// A TokenRequest's audiences; none means the API server's own.
fn audiences_of(state: &State, list: &Value) -> Vec<String> {
    match list.as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect(),
        _ => vec![state.issuer().api_audience.clone()],
    }
}

/// A bound token and its claims, from this server's issuer unless another is named.
fn mint(
    state: &State,
    issuer_name: Option<&str>,
    binding: &Binding,
) -> Result<(String, Value), ApiError> {
    let issuer = state.issuer();
    let claims = tokens::bound_claims(issuer_name.unwrap_or(&issuer.issuer), binding);
    let token = issuer.sign(&claims).map_err(ApiError::Invalid)?;
    Ok((token, claims))
}

/// The pod a token is bound to: it must exist, and have the uid the request names.
fn bound_pod(state: &State, namespace: &str, reference: &Value) -> Result<Option<Value>, ApiError> {
    if reference.is_null() {
        return Ok(None);
    }
    if reference["kind"] != "Pod" {
        return Err(ApiError::Invalid(
            "spec.boundObjectRef.kind: this server binds tokens to Pods only".into(),
        ));
    }
    let name = reference["name"].as_str().unwrap_or_default();
    let pod = state.store.get(resource_of("v1", "Pod"), namespace, name)?;
    if let Some(uid) = reference["uid"].as_str()
        && pod["metadata"]["uid"] != uid
    {
        return Err(ApiError::Invalid(format!(
            "spec.boundObjectRef.uid: the pod {namespace}/{name} has another uid"
        )));
    }
    Ok(Some(pod))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            if let Some(map) = target.as_object_mut() {
                map.remove(key);
            }
        } else {
            merge_patch(&mut target[key], value);
        }
    }
}

/// The test-only controls.
fn testserver(state: &State, control: &str, call: &Call) -> Result<Response<Body>, ApiError> {
    match (control, &call.method) {
        ("requests", &Method::GET) => {
            let log = state
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            Ok(respond(200, &Value::Array(log)))
        }
        ("malformed-status", &Method::GET) => {
            // A Status cut off mid-object, as a proxy that died mid-answer would leave it.
            let mut response = Response::new(
                Full::new(Bytes::from_static(
                    br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"cut o"#,
                ))
                .boxed(),
            );
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            Ok(response)
        }
        ("compact", &Method::POST) => Ok(respond(
            200,
            &json!({"resourceVersion": state.store.compact().to_string()}),
        )),
        ("rotate", &Method::POST) => {
            let request = call.object()?;
            let algorithm: KeyAlgorithm = serde_json::from_value(request["algorithm"].clone())
                .map_err(|_| ApiError::BadRequest("algorithm: RS256 or ES256".into()))?;
            let retire = request["retirePrevious"].as_bool().unwrap_or(false);
            let kid = state
                .issuer
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .rotate(algorithm, retire)
                .map_err(ApiError::Invalid)?;
            Ok(respond(200, &json!({"kid": kid})))
        }
        ("token", &Method::POST) => {
            // A bound token with any lifetime and any issuer or audience, for the cases a
            // real API server never mints: expired, foreign issuer, wrong audience.
            let request = call.object()?;
            let namespace = request["namespace"].as_str().unwrap_or("default");
            let sa = request["serviceAccount"].as_str().unwrap_or("default");
            let account = state
                .store
                .get(resource_of("v1", "ServiceAccount"), namespace, sa)?;
            let pod = match request["pod"].as_str() {
                Some(name) => Some(state.store.get(resource_of("v1", "Pod"), namespace, name)?),
                None => None,
            };
            let binding = Binding {
                namespace,
                service_account: &account,
                pod: pod.as_ref(),
                audiences: audiences_of(state, &request["audiences"]),
                expiration_seconds: request["expiresIn"].as_i64().unwrap_or(3600),
            };
            let (token, claims) = mint(state, request["issuer"].as_str(), &binding)?;
            Ok(respond(200, &json!({"token": token, "claims": claims})))
        }
        _ => Err(not_served()),
    }
}

/// A 101 answer switching to `upgrade`, with the protocol's own headers (a WebSocket's accept
/// key and subprotocol, or SPDY's stream protocol).
pub fn switching_protocols(
    upgrade: &'static str,
    headers: &[(&'static str, &str)],
) -> Response<Body> {
    let mut response = Response::new(Empty::<Bytes>::new().map_err(|e| match e {}).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let answer = response.headers_mut();
    answer.insert(header::UPGRADE, header::HeaderValue::from_static(upgrade));
    answer.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    for (name, value) in headers {
        answer.insert(
            *name,
            header::HeaderValue::from_str(value).expect("an ASCII header value"),
        );
    }
    response
}

/// The first container's `command`, or a shell, as a container's entrypoint would run.
fn container_command(pod: &Value) -> Vec<String> {
    let command: Vec<String> = pod["spec"]["containers"][0]["command"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    match command.is_empty() {
        true => vec!["sh".into()],
        false => command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_resource_namespace_and_object() {
        let t = parse_target("", "v1", &["namespaces", "team", "pods", "web", "exec"]).unwrap();
        assert_eq!((t.resource.plural, t.namespace.as_str()), ("pods", "team"));
        assert_eq!(
            (t.name.as_deref(), t.subresource.as_deref()),
            (Some("web"), Some("exec"))
        );
        let t = parse_target("", "v1", &["namespaces", "team"]).unwrap();
        assert_eq!(
            (t.resource.plural, t.name.as_deref()),
            ("namespaces", Some("team"))
        );
        let t = parse_target("", "v1", &["pods"]).unwrap();
        assert_eq!((t.resource.plural, t.namespace.as_str()), ("pods", ""));
        let t = parse_target(
            "discovery.k8s.io",
            "v1",
            &["namespaces", "default", "endpointslices"],
        )
        .unwrap();
        assert_eq!(t.resource.kind, "EndpointSlice");
        assert!(
            parse_target("", "v1", &["pods", "web"]).is_none(),
            "a pod needs its namespace"
        );
        assert!(parse_target("", "v1", &["widgets"]).is_none());
    }

    #[test]
    fn merge_patches_set_and_remove_fields() {
        let mut object = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1}});
        merge_patch(
            &mut object,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        );
        assert_eq!(
            object,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"x": 1}})
        );
    }
}

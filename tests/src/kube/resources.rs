//! The resources the test server serves. Discovery, routing and the store all read this one
//! table, so a resource added here is listed, routed and watchable at once.

#[derive(Debug)]
pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Fields a field selector may name besides `metadata.name` and `metadata.namespace`, as
    /// the real API server's field-label conversion allows them.
    pub selectable_fields: &'static [&'static str],
    /// Whether `status` is a subresource: written only through `NAME/status`, and kept as
    /// it was by writes to the object itself (a CRD's `subresources.status`).
    pub status_subresource: bool,
}

pub const RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        selectable_fields: &["status.phase"],
        status_subresource: false,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        selectable_fields: &[
            "spec.nodeName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
        ],
        status_subresource: false,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        selectable_fields: &[],
        status_subresource: false,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        selectable_fields: &["type"],
        status_subresource: false,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
        selectable_fields: &[],
        status_subresource: false,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        selectable_fields: &[],
        status_subresource: false,
    },
    Resource {
        group: "admissionregistration.k8s.io",
        version: "v1",
        plural: "mutatingwebhookconfigurations",
        singular: "mutatingwebhookconfiguration",
        kind: "MutatingWebhookConfiguration",
        namespaced: false,
        short_names: &[],
        selectable_fields: &[],
        status_subresource: false,
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        selectable_fields: &["addressType"],
        status_subresource: false,
    },
    // The CRD in deploy/base/crd-interlockhold.yaml, as kube-apiserver serves it once applied.
    Resource {
        group: "interlock.dev",
        version: "v1alpha1",
        plural: "interlockholds",
        singular: "interlockhold",
        kind: "InterlockHold",
        namespaced: true,
        short_names: &["ihold"],
        selectable_fields: &[],
        status_subresource: true,
    },
];

/// The verbs every resource here supports.
pub const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

impl Resource {
    pub fn api_version(&self) -> String {
        group_version(self.group, self.version)
    }

    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The resource an object of `apiVersion` and `kind` belongs to, for fixtures.
    pub fn of_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
    }

    /// The group versions served, each with its resources, for discovery.
    pub fn group_versions() -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for r in RESOURCES {
            if !out.contains(&(r.group, r.version)) {
                out.push((r.group, r.version));
            }
        }
        out
    }
}

pub fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

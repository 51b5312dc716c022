//! Server-side printing: kubectl asks for `as=Table` and prints the columns it is given, so
//! `kubectl get` shows what the API server chose. These are the generic columns the API server
//! uses for resources without printers of their own, plus a pod's phase and node.
use serde_json::{Value, json};

use super::resources::Resource;

fn column(name: &str, kind: &str, format: &str) -> Value {
    json!({ "name": name, "type": kind, "format": format, "description": name, "priority": 0 })
}

/// A Table of `objects`, with the list's own metadata when it answers a list.
pub fn of(resource: &Resource, objects: &[Value], list_metadata: Option<Value>) -> Value {
    let pods = resource.kind == "Pod";
    let mut columns = vec![column("Name", "string", "name")];
    if pods {
        columns.push(column("Status", "string", ""));
        columns.push(column("Node", "string", ""));
    }
    columns.push(column("Created At", "date", ""));
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let metadata = &object["metadata"];
            let mut cells = vec![metadata["name"].clone()];
            if pods {
                cells.push(
                    object["status"]["phase"]
                        .as_str()
                        .unwrap_or("Pending")
                        .into(),
                );
                cells.push(
                    object["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or("<none>")
                        .into(),
                );
            }
            cells.push(metadata["creationTimestamp"].clone());
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": metadata,
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata.unwrap_or_else(|| json!({})),
        "columnDefinitions": columns,
        "rows": rows,
    })
}

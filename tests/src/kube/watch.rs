//! The watch stream: one JSON event per line, ADDED/MODIFIED/DELETED as objects enter, change
//! in or leave the selection, BOOKMARKs when asked for, and an ERROR event with a 410 Status
//! when the watch falls too far behind, as from a real API server.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::channel::{Channel, Sender};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::{
    resources::Resource,
    selectors::{FieldSelector, LabelSelector},
    status::ApiError,
    store::{Change, Event, Subscription},
    table,
};

pub struct Watch {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: the current objects, then a bookmark marking their end.
    pub initial_events_end: bool,
    pub timeout: Duration,
    pub table: bool,
    pub bookmark_interval: Duration,
}

impl Watch {
    fn selects(&self, object: &Value) -> bool {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("");
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event this watcher sees for a change, if any: a modification that moves an
    /// object into the selection is ADDED for it, and one that moves it out is DELETED.
    fn translate(&self, event: &Event) -> Option<&'static str> {
        if !std::ptr::eq(event.resource, self.resource) {
            return None;
        }
        let now = self.selects(&event.object);
        match event.change {
            Change::Added => now.then_some("ADDED"),
            Change::Deleted => now.then_some("DELETED"),
            Change::Modified => {
                let before = event.previous.as_ref().is_some_and(|p| self.selects(p));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }
    }

    fn line(&self, kind: &str, object: &Value) -> Bytes {
        let object = if self.table && kind != "BOOKMARK" && kind != "ERROR" {
            table::of(self.resource, std::slice::from_ref(object), None)
        } else {
            object.clone()
        };
        let mut line =
            serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, resource_version: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let object = json!({
            "kind": self.resource.kind,
            "apiVersion": self.resource.api_version(),
            "metadata": metadata,
        });
        self.line("BOOKMARK", &object)
    }

    /// Streams the subscription into a response body until the timeout, the client leaves,
    /// or the watch expires.
    pub fn stream(self, subscription: Subscription) -> Channel<Bytes, std::convert::Infallible> {
        let (tx, body) = Channel::new(64);
        tokio::spawn(self.run(subscription, tx));
        body
    }

    async fn run(self, mut subscription: Subscription, mut tx: Sender<Bytes>) {
        let mut last = subscription.resource_version;
        for object in subscription.initial.iter().filter(|o| self.selects(o)) {
            if tx.send_data(self.line("ADDED", object)).await.is_err() {
                return;
            }
        }
        if self.initial_events_end && tx.send_data(self.bookmark(last, true)).await.is_err() {
            return;
        }
        for event in std::mem::take(&mut subscription.backlog) {
            last = event.resource_version;
            if let Some(kind) = self.translate(&event)
                && tx.send_data(self.line(kind, &event.object)).await.is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut bookmarks = tokio::time::interval(self.bookmark_interval);
        bookmarks.tick().await;
        loop {
            let line = tokio::select! {
                _ = &mut deadline => return,
                _ = bookmarks.tick(), if self.bookmarks => self.bookmark(last, false),
                received = subscription.live.recv() => match received {
                    Ok(event) if event.resource_version <= last => continue,
                    Ok(event) => {
                        last = event.resource_version;
                        match self.translate(&event) {
                            Some(kind) => self.line(kind, &event.object),
                            None => continue,
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let expired = ApiError::Expired("the watch fell too far behind; list again".into());
                        let _ = tx.send_data(self.line("ERROR", &expired.status())).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            if tx.send_data(line).await.is_err() {
                return;
            }
        }
    }
}

//! Objects in memory, one resourceVersion counter for all of them, and the recent history of
//! changes that watches resume from. A watch older than that history gets 410 Expired, as
//! from a real API server after etcd compaction.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{resources::Resource, status::ApiError};

/// How many changes are kept for watches to resume from.
const HISTORY: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug)]
pub struct Event {
    pub resource_version: u64,
    pub resource: &'static Resource,
    pub change: Change,
    pub object: Value,
    /// The object before a modification, so a watch can tell one that entered or left its
    /// selector.
    pub previous: Option<Value>,
}

type Key = (&'static str, &'static str, String, String);

#[derive(Default)]
struct Inner {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Event>>,
    /// Watches from a version at or below this one are too old to resume.
    compacted_through: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
}

/// Where a watch starts.
pub enum From {
    /// The current objects, as synthetic ADDED events, then every change after them.
    Current,
    /// Every change after this resourceVersion.
    After(u64),
}

/// What a watch starts from: the current objects or the changes after its version, then the
/// live feed.
pub struct Subscription {
    pub initial: Vec<Value>,
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The version the initial objects or the backlog bring the watcher to.
    pub resource_version: u64,
}

fn key(resource: &'static Resource, namespace: &str, name: &str) -> Key {
    (
        resource.group,
        resource.plural,
        namespace.to_string(),
        name.to_string(),
    )
}

fn not_found(resource: &Resource, name: &str) -> ApiError {
    ApiError::NotFound {
        resource: resource.plural.into(),
        name: name.into(),
    }
}

impl Default for Store {
    fn default() -> Self {
        Store {
            inner: Mutex::default(),
            events: broadcast::channel(HISTORY).0,
        }
    }
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores a new object, filling in what the API server owns: uid, creationTimestamp,
    /// resourceVersion, and the namespace of the request.
    pub fn create(
        &self,
        resource: &'static Resource,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let name = object_name(&object)?;
        let mut inner = self.lock();
        let key = key(resource, namespace, &name);
        if inner.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                resource: resource.plural.into(),
                name,
            });
        }
        let metadata = &mut object["metadata"];
        if metadata.get("uid").is_none() {
            metadata["uid"] = json!(uuid::Uuid::new_v4().to_string());
        }
        metadata["creationTimestamp"] = json!(now_rfc3339());
        if resource.namespaced {
            metadata["namespace"] = json!(namespace);
        }
        self.commit(&mut inner, resource, key, object, Change::Added, None)
    }

    /// Replaces an existing object, keeping its uid and creationTimestamp.
    pub fn replace(
        &self,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = key(resource, namespace, name);
        let previous = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(resource, name))?;
        // A write naming a resourceVersion applies only to that version (optimistic
        // concurrency: of two racing writers, the second is refused).
        if let Some(version) = object["metadata"]["resourceVersion"].as_str()
            && !version.is_empty()
            && previous["metadata"]["resourceVersion"].as_str() != Some(version)
        {
            return Err(ApiError::Conflict(format!(
                "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource.plural, resource.group
            )));
        }
        for owned in ["uid", "creationTimestamp", "namespace"] {
            if let Some(v) = previous["metadata"].get(owned) {
                object["metadata"][owned] = v.clone();
            }
        }
        object["metadata"]["name"] = json!(name);
        self.commit(
            &mut inner,
            resource,
            key,
            object,
            Change::Modified,
            Some(previous),
        )
    }

    pub fn delete(
        &self,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = key(resource, namespace, name);
        let object = inner
            .objects
            .remove(&key)
            .ok_or_else(|| not_found(resource, name))?;
        inner.resource_version += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
        self.publish(&mut inner, resource, Change::Deleted, object.clone(), None);
        Ok(object)
    }

    pub fn get(
        &self,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(&key(resource, namespace, name))
            .cloned()
            .ok_or_else(|| not_found(resource, name))
    }

    /// The objects of one resource (in one namespace, or all), in key order, and the
    /// resourceVersion they are current at.
    pub fn list(&self, resource: &'static Resource, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        (
            Self::items(&inner, resource, namespace),
            inner.resource_version,
        )
    }

    fn items(inner: &Inner, resource: &'static Resource, namespace: Option<&str>) -> Vec<Value> {
        inner
            .objects
            .iter()
            .filter(|((group, plural, ns, _), _)| {
                *group == resource.group
                    && *plural == resource.plural
                    && namespace.is_none_or(|want| want == ns)
            })
            .map(|(_, object)| object.clone())
            .collect()
    }

    pub fn watch(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        from: From,
    ) -> Result<Subscription, ApiError> {
        let inner = self.lock();
        // Subscribing under the lock means no change falls between the start and the feed.
        let live = self.events.subscribe();
        let (initial, backlog, resource_version) = match from {
            From::Current => (
                Self::items(&inner, resource, namespace),
                Vec::new(),
                inner.resource_version,
            ),
            From::After(from) if from < inner.compacted_through => {
                return Err(ApiError::Expired(format!(
                    "too old resource version: {from} ({})",
                    inner.compacted_through
                )));
            }
            From::After(from) => (
                Vec::new(),
                inner
                    .history
                    .iter()
                    .filter(|e| e.resource_version > from)
                    .cloned()
                    .collect(),
                from,
            ),
        };
        Ok(Subscription {
            initial,
            backlog,
            live,
            resource_version,
        })
    }

    /// Forgets the history, as etcd compaction does: every version before now expires.
    pub fn compact(&self) -> u64 {
        let mut inner = self.lock();
        inner.history.clear();
        inner.compacted_through = inner.resource_version;
        inner.resource_version
    }

    fn commit(
        &self,
        inner: &mut Inner,
        resource: &'static Resource,
        key: Key,
        mut object: Value,
        change: Change,
        previous: Option<Value>,
    ) -> Result<Value, ApiError> {
        inner.resource_version += 1;
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
        inner.objects.insert(key, object.clone());
        self.publish(inner, resource, change, object.clone(), previous);
        Ok(object)
    }

    fn publish(
        &self,
        inner: &mut Inner,
        resource: &'static Resource,
        change: Change,
        object: Value,
        previous: Option<Value>,
    ) {
        let event = Arc::new(Event {
            resource_version: inner.resource_version,
            resource,
            change,
            object,
            previous,
        });
        if inner.history.len() == HISTORY
            && let Some(oldest) = inner.history.pop_front()
        {
            inner.compacted_through = oldest.resource_version;
        }
        inner.history.push_back(event.clone());
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(event);
    }
}

fn object_name(object: &Value) -> Result<String, ApiError> {
    match object["metadata"]["name"].as_str() {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(ApiError::Invalid(
            "metadata.name: Required value: name is required".into(),
        )),
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> &'static Resource {
        Resource::find("", "v1", "pods").unwrap()
    }

    #[test]
    fn a_watch_resumes_after_its_version_and_expires_after_compaction() {
        let store = Store::default();
        let a = store
            .create(pods(), "ns", json!({"metadata": {"name": "a"}}))
            .unwrap();
        let after_a: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        store
            .create(pods(), "ns", json!({"metadata": {"name": "b"}}))
            .unwrap();
        store.delete(pods(), "ns", "a").unwrap();
        let resumed = store.watch(pods(), None, From::After(after_a)).unwrap();
        let changes: Vec<_> = resumed
            .backlog
            .iter()
            .map(|e| (e.change, e.object["metadata"]["name"].clone()))
            .collect();
        assert_eq!(
            changes,
            [(Change::Added, json!("b")), (Change::Deleted, json!("a"))]
        );
        assert_eq!(a["metadata"]["namespace"], "ns");
        assert!(a["metadata"]["uid"].is_string());

        let now = store.compact();
        assert!(matches!(
            store.watch(pods(), None, From::After(after_a)),
            Err(ApiError::Expired(_))
        ));
        let current = store.watch(pods(), None, From::After(now)).unwrap();
        assert!(current.backlog.is_empty());
        assert_eq!(
            store
                .watch(pods(), Some("ns"), From::Current)
                .unwrap()
                .initial
                .len(),
            1
        );
    }

    #[test]
    fn create_refuses_a_duplicate_and_replace_keeps_the_uid() {
        let store = Store::default();
        let a = store
            .create(pods(), "ns", json!({"metadata": {"name": "a"}}))
            .unwrap();
        let dup = store.create(pods(), "ns", json!({"metadata": {"name": "a"}}));
        assert!(matches!(dup, Err(ApiError::AlreadyExists { .. })));
        let b = store
            .replace(
                pods(),
                "ns",
                "a",
                json!({"metadata": {"labels": {"x": "y"}}}),
            )
            .unwrap();
        assert_eq!(a["metadata"]["uid"], b["metadata"]["uid"]);
        assert_eq!(b["metadata"]["labels"]["x"], "y");
        assert!(matches!(
            store.get(pods(), "ns", "nope"),
            Err(ApiError::NotFound { .. })
        ));
    }
}

"""The official Kubernetes Python client against the test API server: list with label and
field selectors, a watch resumed from the list's resourceVersion with bookmarks, a Status
error, and a watch from a compacted version (410). Prints one JSON object.

usage: kube_client.py KUBECONFIG
"""
import json
import sys
import threading
import time
import ssl
import urllib.request

from kubernetes import client, config, watch

config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
out = {}

out["web_pods"] = [p.metadata.name for p in v1.list_pod_for_all_namespaces(label_selector="app=web").items]
out["node_2_pods"] = [p.metadata.name for p in v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-2").items]
try:
    v1.read_namespaced_pod("missing", "team")
except client.ApiException as e:
    out["missing"] = {"code": e.status, "status": json.loads(e.body)}

listed = v1.list_namespaced_pod("team", label_selector="app=web")
start = listed.metadata.resource_version


def churn():
    time.sleep(0.5)
    pod = {"metadata": {"name": "py-pod", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    v1.create_namespaced_pod("team", pod)
    # Leaving the selection is a DELETED event for this watch.
    v1.patch_namespaced_pod("py-pod", "team", {"metadata": {"labels": {"app": "moved"}}})
    v1.delete_namespaced_pod("py-pod", "team")


threading.Thread(target=churn).start()
events = []
for event in watch.Watch().stream(v1.list_namespaced_pod, "team", label_selector="app=web",
                                  resource_version=start, allow_watch_bookmarks=True, timeout_seconds=4):
    if event["type"] == "BOOKMARK":
        events.append(["BOOKMARK", event["raw_object"]["metadata"]["resourceVersion"]])
    else:
        events.append([event["type"], event["object"].metadata.name])
out["watch"] = events

conf = client.Configuration.get_default_copy()
compact = urllib.request.Request(f"{conf.host}/testserver/compact", method="POST",
                                 headers={"Authorization": conf.api_key["BearerToken"]})
urllib.request.urlopen(compact, context=ssl.create_default_context(cafile=conf.ssl_ca_cert)).read()
try:
    for _ in watch.Watch().stream(v1.list_namespaced_pod, "team", resource_version=start, timeout_seconds=2):
        break
    out["expired"] = None
except client.ApiException as e:
    out["expired"] = {"code": e.status, "reason": json.loads(e.body)["reason"]}
print(json.dumps(out))

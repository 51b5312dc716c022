"""exec with the official Kubernetes Python client's WebSocket stream: a command that writes
to stdout and stderr and exits 3, and one that echoes what it reads on stdin. Prints JSON.

usage: kube_exec.py KUBECONFIG NAMESPACE POD
"""
import json
import sys

from kubernetes import client, config
from kubernetes.stream import stream

config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
namespace, pod = sys.argv[2], sys.argv[3]
out = {}

run = stream(v1.connect_get_namespaced_pod_exec, pod, namespace,
             command=["sh", "-c", "echo out; echo err >&2; exit 3"],
             stdin=False, stdout=True, stderr=True, tty=False, _preload_content=False)
run.run_forever(timeout=10)
out["stdout"] = run.read_stdout()
out["stderr"] = run.read_stderr()
out["returncode"] = run.returncode
run.close()

cat = stream(v1.connect_get_namespaced_pod_exec, pod, namespace, command=["head", "-c", "6"],
             stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False)
cat.write_stdin("hello\n")
cat.run_forever(timeout=10)
out["echoed"] = cat.read_stdout()
out["cat_returncode"] = cat.returncode
cat.close()
print(json.dumps(out))

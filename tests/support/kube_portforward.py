"""port-forward with the official Kubernetes Python client (`v4.channel.k8s.io`): sends one
line to the pod's port and prints, as JSON, what came back and the port's error, if any.

usage: kube_portforward.py KUBECONFIG NAMESPACE POD PORT LINE
"""
import json
import sys

from kubernetes import client, config
from kubernetes.stream import portforward

config.load_kube_config(sys.argv[1])
namespace, pod, port, line = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
forward = portforward(client.CoreV1Api().connect_get_namespaced_pod_portforward, pod,
                      namespace, ports=str(port))
sock = forward.socket(port)
sock.setblocking(True)
sock.sendall((line + "\n").encode())
answer = b""
while not answer.endswith(b"\n"):
    chunk = sock.recv(4096)
    if not chunk:
        break
    answer += chunk
sock.close()
print(json.dumps({"answer": answer.decode(), "error": forward.error(port)}))

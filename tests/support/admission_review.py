"""Sends an AdmissionReview v1 to a webhook as the API server does (HTTPS, trusting the
webhook configuration's caBundle, asking TLS for the Service's name), then applies the JSON
Patch it answers with, using jsonpatch. Prints {"response": ..., "patched": the object}.

usage: admission_review.py HOST:PORT SERVER_NAME CA_FILE REVIEW_FILE
"""
import base64
import http.client
import json
import socket
import ssl
import sys

import jsonpatch

address, server_name, ca_file, review_file = sys.argv[1:5]
host, port = address.rsplit(":", 1)


class ServiceConnection(http.client.HTTPSConnection):
    """Dials the address, but verifies the certificate for the Service's DNS name."""

    def connect(self):
        sock = socket.create_connection((self.host, self.port), timeout=10)
        self.sock = self._context.wrap_socket(sock, server_hostname=server_name)


context = ssl.create_default_context(cafile=ca_file)
connection = ServiceConnection(host, int(port), context=context)
review = json.load(open(review_file))
connection.request("POST", "/mutate", body=json.dumps(review),
                   headers={"Content-Type": "application/json"})
answer = connection.getresponse()
body = json.loads(answer.read())
assert answer.status == 200, body
response = body["response"]
patched = review["request"]["object"]
if response.get("patch"):
    assert response["patchType"] == "JSONPatch", response
    # A Go []byte: base64 text, or (as Go's decoder also takes, and kube-rs writes) an array
    # of byte values.
    raw = response["patch"]
    raw = bytes(raw) if isinstance(raw, list) else base64.b64decode(raw)
    operations = json.loads(raw)
    patched = jsonpatch.apply_patch(patched, operations)
print(json.dumps({"kind": body["kind"], "apiVersion": body["apiVersion"],
                  "response": response, "patched": patched}))

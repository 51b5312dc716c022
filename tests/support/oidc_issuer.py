"""A small OIDC issuer for tests: discovery and JWKS on loopback, RS256 ID tokens signed with a
key made at start, and a webhook receiver.

usage: python3 oidc_issuer.py PORT
  GET  /.well-known/openid-configuration, GET /jwks   what a relying party reads
  POST /mint      JSON claims over the defaults (iss, aud=interlock, iat, exp in 5 min);
                  {"exp_in": -60} makes an expired token; answers the token as text
  POST /webhook   stores the JSON body;  GET /webhooks  lists what was stored
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

port = int(sys.argv[1])
issuer = f"http://127.0.0.1:{port}"
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "test-key", "use": "sig", "alg": "RS256"})
webhooks = []
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")

    def do_GET(self):
        if self.path == "/.well-known/openid-configuration":
            self.reply(200, {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "jwks_uri": f"{issuer}/jwks",
                "response_types_supported": ["code", "id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            })
        elif self.path == "/jwks":
            self.reply(200, {"keys": [jwk]})
        elif self.path == "/webhooks":
            with lock:
                self.reply(200, webhooks)
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.path == "/mint":
            now = int(time.time())
            claims = {"iss": issuer, "aud": "interlock", "iat": now, "exp": now + 300}
            overrides = self.body()
            exp_in = overrides.pop("exp_in", None)
            if exp_in is not None:
                claims["iat"] = now + exp_in - 300
                claims["exp"] = now + exp_in
            claims.update(overrides)
            token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "test-key"})
            self.reply(200, token, "text/plain")
        elif self.path == "/webhook":
            with lock:
                webhooks.append(self.body())
            self.reply(200, {"ok": True})
        else:
            self.reply(404, {"error": "not found"})


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

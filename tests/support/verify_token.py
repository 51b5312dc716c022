"""Verifies a service-account token the way an OIDC relying party does, independently of the
gateway: the discovery document at the API server, its jwks_uri, then PyJWT. Prints the
claims and the header as JSON, or exits 1 with the reason.

usage: verify_token.py API_SERVER_URL CA_FILE AUDIENCE TOKEN
  AUDIENCE "legacy": a legacy Secret token, whose issuer is fixed and which has no audience
"""
import json
import ssl
import sys
import urllib.request

import jwt

server, ca, audience, token = sys.argv[1:5]
context = ssl.create_default_context(cafile=ca)
with urllib.request.urlopen(f"{server}/.well-known/openid-configuration", context=context) as r:
    discovery = json.load(r)
keys = jwt.PyJWKClient(discovery["jwks_uri"], ssl_context=context)
header = jwt.get_unverified_header(token)
if audience == "legacy":
    expect = {"issuer": "kubernetes/serviceaccount", "options": {"verify_aud": False}}
else:
    expect = {"issuer": discovery["issuer"], "audience": audience, "options": {"require": ["exp", "iat", "nbf"]}}
try:
    claims = jwt.decode(token, keys.get_signing_key_from_jwt(token).key, algorithms=["RS256", "ES256"], **expect)
except jwt.PyJWTError as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(1)
print(json.dumps({"header": header, "claims": claims}))

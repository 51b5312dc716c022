//! Service-account tokens as the real API server issues them: bound tokens from the
//! TokenRequest API (`iss`, `aud`, `sub`, and the `kubernetes.io` claim naming the pod), legacy
//! tokens in Secrets, the issuer's discovery document and JWKS, and signing keys that rotate.
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::Jwk};
use rsa::{Generate, pkcs1::EncodeRsaPrivateKey};
use serde_json::{Value, json};

/// The issuer of legacy tokens, fixed by Kubernetes.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum, serde::Deserialize)]
pub enum KeyAlgorithm {
    #[value(name = "RS256")]
    RS256,
    #[value(name = "ES256")]
    ES256,
}

struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Value,
}

impl SigningKey {
    fn generate(algorithm: KeyAlgorithm) -> Result<SigningKey, String> {
        let (algorithm, encoding) = match algorithm {
            KeyAlgorithm::RS256 => {
                let key = rsa::PrivateKey::generate();
                let der = key.to_pkcs1_der().map_err(|e| format!("RSA key: {e}"))?;
                (Algorithm::RS256, EncodingKey::from_rsa_der(der.as_bytes()))
            }
            KeyAlgorithm::ES256 => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| format!("EC key: {e}"))?;
                (
                    Algorithm::ES256,
                    EncodingKey::from_ec_der(&key.serialize_der()),
                )
            }
        };
        let kid = uuid::Uuid::new_v4().simple().to_string();
        let mut jwk =
            Jwk::from_encoding_key(&encoding, algorithm).map_err(|e| format!("JWK: {e}"))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("JWK: {e}"))?;
        let jwk = serde_json::to_value(&jwk).map_err(|e| e.to_string())?;
        Ok(SigningKey {
            kid,
            algorithm,
            encoding,
            decoding,
            jwk,
        })
    }
}

/// Who a valid token says the caller is.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    pub username: String,
    pub claims: Value,
}

pub struct Issuer {
    pub issuer: String,
    /// The audience a token needs to be accepted by this API server.
    pub api_audience: String,
    /// Newest last; every key here is published and verifies.
    keys: Vec<SigningKey>,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Issuer {
    pub fn new(issuer: String, algorithm: KeyAlgorithm) -> Result<Issuer, String> {
        Ok(Issuer {
            api_audience: issuer.clone(),
            issuer,
            keys: vec![SigningKey::generate(algorithm)?],
        })
    }

    /// Adds a new signing key and signs with it from now on. The old keys stay published
    /// (tokens they signed stay valid) unless `retire_previous`.
    pub fn rotate(
        &mut self,
        algorithm: KeyAlgorithm,
        retire_previous: bool,
    ) -> Result<String, String> {
        let key = SigningKey::generate(algorithm)?;
        let kid = key.kid.clone();
        if retire_previous {
            self.keys.clear();
        }
        self.keys.push(key);
        Ok(kid)
    }

    pub fn discovery(&self, jwks_uri: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": self.keys.iter().map(|k| format!("{:?}", k.algorithm)).collect::<Vec<_>>(),
        })
    }

    pub fn jwks(&self) -> Value {
        json!({ "keys": self.keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// Signs `claims` with the newest key.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let key = self.keys.last().ok_or("no signing key")?;
        let mut header = Header::new(key.algorithm);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|e| format!("signing: {e}"))
    }

    /// Checks a bearer token's signature, issuer, audience and lifetime, as the API server's
    /// authenticator does. Whether the objects it is bound to still exist is the caller's.
    pub fn verify(&self, token: &str) -> Result<TokenIdentity, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        let key = self
            .keys
            .iter()
            .find(|k| header.kid.as_deref() == Some(k.kid.as_str()))
            .ok_or("signed by an unknown key")?;
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
            .map_err(|e| format!("not a JWT: {e}"))?
            .claims;
        let mut validation = Validation::new(key.algorithm);
        if unverified["iss"] == LEGACY_ISSUER {
            validation.set_issuer(&[LEGACY_ISSUER]);
            validation.validate_exp = false;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
        } else {
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.api_audience]);
        }
        let claims = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
            .map_err(|e| format!("invalid token: {e}"))?
            .claims;
        let username = claims["sub"].as_str().ok_or("no sub claim")?.to_string();
        Ok(TokenIdentity { username, claims })
    }
}

/// What a bound token names, from the TokenRequest and the objects it is bound to.
pub struct Binding<'a> {
    pub namespace: &'a str,
    pub service_account: &'a Value,
    pub pod: Option<&'a Value>,
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
}

/// The claims of a bound token, shaped like kube-apiserver's (pkg/serviceaccount/claims.go).
pub fn bound_claims(issuer: &str, binding: &Binding) -> Value {
    let now = unix_now();
    let sa_name = binding.service_account["metadata"]["name"]
        .as_str()
        .unwrap_or_default();
    let mut kubernetes = json!({
        "namespace": binding.namespace,
        "serviceaccount": {
            "name": sa_name,
            "uid": binding.service_account["metadata"]["uid"],
        },
    });
    if let Some(pod) = binding.pod {
        kubernetes["pod"] = json!({"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]});
        if let Some(node) = pod["spec"]["nodeName"].as_str() {
            kubernetes["node"] = json!({"name": node, "uid": uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_DNS, node.as_bytes()).to_string()});
        }
        // The API server asks clients to refresh after 80% of an extended lifetime.
        kubernetes["warnafter"] = json!(now + binding.expiration_seconds * 4 / 5);
    }
    json!({
        "iss": issuer,
        "aud": binding.audiences,
        "sub": format!("system:serviceaccount:{}:{sa_name}", binding.namespace),
        "iat": now,
        "nbf": now,
        "exp": now + binding.expiration_seconds,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": kubernetes,
    })
}

/// The claims of a legacy token kept in a `kubernetes.io/service-account-token` Secret.
pub fn legacy_claims(namespace: &str, secret_name: &str, service_account: &Value) -> Value {
    let sa_name = service_account["metadata"]["name"]
        .as_str()
        .unwrap_or_default();
    json!({
        "iss": LEGACY_ISSUER,
        "sub": format!("system:serviceaccount:{namespace}:{sa_name}"),
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": secret_name,
        "kubernetes.io/serviceaccount/service-account.name": sa_name,
        "kubernetes.io/serviceaccount/service-account.uid": service_account["metadata"]["uid"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(sa: &Value, pod: &Value, expiration_seconds: i64, audience: &str) -> Value {
        bound_claims(
            "https://issuer.test",
            &Binding {
                namespace: "team",
                service_account: sa,
                pod: Some(pod),
                audiences: vec![audience.into()],
                expiration_seconds,
            },
        )
    }

    #[test]
    fn bound_tokens_verify_until_they_expire_or_their_key_is_retired() {
        for algorithm in [KeyAlgorithm::ES256, KeyAlgorithm::RS256] {
            let mut issuer = Issuer::new("https://issuer.test".into(), algorithm).unwrap();
            let sa = json!({"metadata": {"name": "agent", "uid": "sa-uid"}});
            let pod =
                json!({"metadata": {"name": "p", "uid": "pod-uid"}, "spec": {"nodeName": "n1"}});
            let token = issuer
                .sign(&binding(&sa, &pod, 600, "https://issuer.test"))
                .unwrap();
            let who = issuer.verify(&token).unwrap();
            assert_eq!(who.username, "system:serviceaccount:team:agent");
            assert_eq!(who.claims["kubernetes.io"]["pod"]["uid"], "pod-uid");
            assert_eq!(who.claims["kubernetes.io"]["node"]["name"], "n1");

            let expired = issuer
                .sign(&binding(&sa, &pod, -120, "https://issuer.test"))
                .unwrap();
            assert!(issuer.verify(&expired).unwrap_err().contains("Expired"));
            let other_audience = issuer.sign(&binding(&sa, &pod, 600, "mcp")).unwrap();
            assert!(issuer.verify(&other_audience).is_err());

            issuer.rotate(algorithm, false).unwrap();
            assert!(
                issuer.verify(&token).is_ok(),
                "an old key stays valid until retired"
            );
            assert_eq!(issuer.jwks()["keys"].as_array().unwrap().len(), 2);
            issuer.rotate(algorithm, true).unwrap();
            assert!(issuer.verify(&token).is_err());
        }
    }

    #[test]
    fn legacy_tokens_have_no_audience_or_expiry() {
        let issuer = Issuer::new("https://issuer.test".into(), KeyAlgorithm::ES256).unwrap();
        let sa = json!({"metadata": {"name": "old", "uid": "u"}});
        let token = issuer
            .sign(&legacy_claims("team", "old-token", &sa))
            .unwrap();
        let who = issuer.verify(&token).unwrap();
        assert_eq!(who.username, "system:serviceaccount:team:old");
        assert_eq!(
            who.claims["kubernetes.io/serviceaccount/secret.name"],
            "old-token"
        );
    }
}

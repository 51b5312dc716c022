//! Tamper evidence. Each record carries `prev_hash`, the SHA-256 of the previous record's
//! exact bytes as written, so a session is a hash chain. `session_end` carries an ed25519
//! seal over its own bytes (written without the seal), which covers the whole chain.
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use ed25519_dalek::{
    Signature, Signer, SigningKey, VerifyingKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why the signing key could not be loaded or made. Not `source`s: each message already
/// says its cause, and `{:#}` would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the signing key {}: {error}; check recording.signing_key", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error(
        "{} is not an ed25519 PKCS#8 PEM private key ({error}); create one with \
         `openssl genpkey -algorithm ed25519 -out {}`", path.display(), path.display()
    )]
    NotAKey {
        path: PathBuf,
        error: ed25519_dalek::pkcs8::Error,
    },
    #[error("no OS randomness for a new signing key: {0}")]
    NoRandomness(getrandom::Error),
    #[error("encoding the new signing key: {0}")]
    Encode(ed25519_dalek::pkcs8::Error),
    #[error("encoding the new signing key's public key: {0}")]
    EncodePublic(ed25519_dalek::pkcs8::spki::Error),
    #[error("creating the signing key {}: {error}", path.display())]
    Create { path: PathBuf, error: io::Error },
}

/// Why a seal does not verify.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("unknown seal algorithm `{0}`")]
    UnknownAlgorithm(String),
    #[error("sealed with key {sealed} but verifying with key {verifying}")]
    OtherKey { sealed: String, verifying: String },
    #[error("seal signature is not base64: {0}")]
    NotBase64(base64::DecodeError),
    #[error("seal signature has the wrong length: {0}")]
    WrongLength(ed25519_dalek::SignatureError),
    #[error("seal signature does not match: {0}")]
    Mismatch(ed25519_dalek::SignatureError),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Always `ed25519`.
    pub alg: String,
    /// First 16 hex digits of the SHA-256 of the public key: which key to verify with.
    pub key_id: String,
    /// Signature over the `session_end` record's JSON bytes written without `seal`.
    pub signature: String,
}

pub struct Sealer {
    key: SigningKey,
    key_id: String,
}

impl Sealer {
    /// Loads the PKCS#8 PEM key (as `openssl genpkey -algorithm ed25519` writes it). With
    /// `create_if_missing`, a new key is generated there (mode 0600).
    pub fn load(path: &Path, create_if_missing: bool) -> Result<Sealer, KeyError> {
        if !path.exists() && create_if_missing {
            generate_key(path)?;
            tracing::warn!(
                path = %path.display(),
                "generated a new record-signing key; keep it safe and back it up, or configure \
                 recording.signing_key (in Kubernetes, a Secret)"
            );
        }
        let pem = fs::read_to_string(path).map_err(|error| KeyError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|error| KeyError::NotAKey {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(Sealer {
            key_id: key_id(&key.verifying_key()),
            key,
        })
    }

    pub fn seal(&self, unsealed_end: &[u8]) -> Seal {
        Seal {
            alg: "ed25519".into(),
            key_id: self.key_id.clone(),
            signature: BASE64.encode(self.key.sign(unsealed_end).to_bytes()),
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

pub fn key_id(key: &VerifyingKey) -> String {
    sha256_hex(key.as_bytes())[..16].to_string()
}

/// Checks a seal against the `session_end` bytes it was made over.
pub fn check_seal(key: &VerifyingKey, seal: &Seal, unsealed_end: &[u8]) -> Result<(), SealError> {
    if seal.alg != "ed25519" {
        return Err(SealError::UnknownAlgorithm(seal.alg.clone()));
    }
    if seal.key_id != key_id(key) {
        return Err(SealError::OtherKey {
            sealed: seal.key_id.clone(),
            verifying: key_id(key),
        });
    }
    let bytes = BASE64
        .decode(&seal.signature)
        .map_err(SealError::NotBase64)?;
    let signature = Signature::from_slice(&bytes).map_err(SealError::WrongLength)?;
    key.verify_strict(unsealed_end, &signature)
        .map_err(SealError::Mismatch)
}

/// A new record-signing key, PKCS#8 PEM, and its public key, SPKI PEM (for `verify
/// --public-key`).
pub fn new_key_pem() -> Result<(String, String), KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(KeyError::NoRandomness)?;
    let key = SigningKey::from_bytes(&seed);
    let private = key.to_pkcs8_pem(LineEnding::LF).map_err(KeyError::Encode)?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(KeyError::EncodePublic)?;
    Ok((private.to_string(), public))
}

fn generate_key(path: &Path) -> Result<(), KeyError> {
    let (pem, _) = new_key_pem()?;
    let create = |error| KeyError::Create {
        path: path.to_path_buf(),
        error,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(create)?;
    }
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(create)?;
    file.write_all(pem.as_bytes()).map_err(create)?;
    file.sync_all().map_err(create)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn seals_verify_and_detect_changes() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load(&dir.path().join("k.pem"), true).unwrap();
        let seal = sealer.seal(b"end record");
        check_seal(&sealer.verifying_key(), &seal, b"end record").unwrap();
        assert!(check_seal(&sealer.verifying_key(), &seal, b"end recorD").is_err());
        // The same key loads again from its file.
        let again = Sealer::load(&dir.path().join("k.pem"), false).unwrap();
        assert_eq!(again.key_id, sealer.key_id);
    }

    #[test]
    fn a_bad_key_file_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pem");
        fs::write(&path, "not a key").unwrap();
        let err = Sealer::load(&path, false).err().unwrap().to_string();
        assert!(err.contains("openssl genpkey -algorithm ed25519"), "{err}");
    }
}

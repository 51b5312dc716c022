//! Tamper evidence. Each record carries `prev_hash`, the SHA-256 of the previous record's
//! exact bytes as written, so a session is a hash chain. `session_end` carries an ed25519
//! seal over its own bytes (written without the seal), which covers the whole chain.
use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use anyhow::{Context, Result, bail};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use ed25519_dalek::{
    Signature, Signer, SigningKey, VerifyingKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    pub fn load(path: &Path, create_if_missing: bool) -> Result<Sealer> {
        if !path.exists() && create_if_missing {
            generate_key(path)?;
            tracing::warn!(
                path = %path.display(),
                "generated a new record-signing key; keep it safe and back it up, or configure \
                 recording.signing_key (in Kubernetes, a Secret)"
            );
        }
        let pem = fs::read_to_string(path).with_context(|| {
            format!(
                "reading the signing key {}; check recording.signing_key",
                path.display()
            )
        })?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            anyhow::anyhow!(
                "{} is not an ed25519 PKCS#8 PEM private key ({e}); create one with \
                 `openssl genpkey -algorithm ed25519 -out {}`",
                path.display(),
                path.display()
            )
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
pub fn check_seal(key: &VerifyingKey, seal: &Seal, unsealed_end: &[u8]) -> Result<()> {
    if seal.alg != "ed25519" {
        bail!("unknown seal algorithm `{}`", seal.alg);
    }
    if seal.key_id != key_id(key) {
        bail!(
            "sealed with key {} but verifying with key {}",
            seal.key_id,
            key_id(key)
        );
    }
    let bytes = BASE64
        .decode(&seal.signature)
        .context("seal signature is not base64")?;
    let signature = Signature::from_slice(&bytes).context("seal signature has the wrong length")?;
    key.verify_strict(unsealed_end, &signature)
        .context("seal signature does not match")?;
    Ok(())
}

fn generate_key(path: &Path) -> Result<()> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let pem = SigningKey::from_bytes(&seed)
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the new key: {e}"))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    Ok(())
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

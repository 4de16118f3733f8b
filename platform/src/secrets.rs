//! Encryption of TOTP secrets, MFA challenge tokens and mailed link tokens with AES-256-GCM.
//!
//! A sealed value reads `v1:<key id>:<nonce>:<ciphertext>` (base64url without padding), so
//! keys can rotate: new values use the active key, and any configured key opens old ones.
//! Each value is bound to a context string, such as the account id, through the
//! authenticated data, so a ciphertext copied to another account does not open.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

const VERSION: &str = "v1";

/// Returns the context that binds the sealed token of a mailed link to its account.
pub fn link_context(account_id: &uuid::Uuid) -> String {
    format!("mail-link:{account_id}")
}

/// Encryption keys, read from the environment.
#[derive(Clone, Debug, clap::Args)]
pub struct EncryptionConfig {
    /// Comma-separated `<key id>=<base64 of 32 random bytes>` pairs. Without any, two-factor
    /// authentication, email changes and password resets are unavailable. Generate a key with `openssl rand -base64 32`.
    #[arg(
        long,
        env = "ENCRYPTION_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    pub keys: SecretString,
    /// The id of the key that encrypts new values.
    #[arg(long, env = "ENCRYPTION_KEY_ID", default_value = "")]
    pub active_key_id: String,
}

/// Seals and opens secrets with the configured keys.
#[derive(Clone)]
pub struct SecretBox {
    active: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl SecretBox {
    /// Builds the box, or returns `None` when no key is configured.
    pub fn from_config(config: &EncryptionConfig) -> anyhow::Result<Option<Self>> {
        let text = config.keys.expose_secret().trim();
        if text.is_empty() {
            return Ok(None);
        }
        let mut keys = HashMap::new();
        for entry in text.split(',') {
            let (id, encoded) = entry.trim().split_once('=').ok_or_else(|| {
                anyhow!("ENCRYPTION_KEYS entries must read <key id>=<base64 key>")
            })?;
            if id.is_empty() || id.contains(':') {
                bail!("ENCRYPTION_KEYS has an empty key id or one containing ':'");
            }
            let bytes = STANDARD
                .decode(encoded.trim())
                .with_context(|| format!("key {id} in ENCRYPTION_KEYS is not valid base64"))?;
            if bytes.len() != 32 {
                bail!(
                    "key {id} in ENCRYPTION_KEYS has {} bytes; AES-256 needs 32",
                    bytes.len()
                );
            }
            keys.insert(
                id.to_owned(),
                Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
            );
        }
        let active = if config.active_key_id.is_empty() && keys.len() == 1 {
            keys.keys().next().cloned().unwrap_or_default()
        } else {
            config.active_key_id.clone()
        };
        if !keys.contains_key(&active) {
            bail!("ENCRYPTION_KEY_ID {active:?} is not one of the ids in ENCRYPTION_KEYS");
        }
        Ok(Some(Self { active, keys }))
    }

    /// Encrypts `plaintext` with the active key, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> anyhow::Result<String> {
        let cipher = self
            .keys
            .get(&self.active)
            .ok_or_else(|| anyhow!("the active encryption key is missing"))?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| anyhow!("failed to encrypt a secret"))?;
        Ok(format!(
            "{VERSION}:{}:{}:{}",
            self.active,
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(ciphertext)
        ))
    }

    /// Decrypts a value sealed for `context`. Fails on tampering, another context, or an
    /// unknown key id.
    pub fn open(&self, sealed: &str, context: &str) -> anyhow::Result<Vec<u8>> {
        let mut parts = sealed.splitn(4, ':');
        let (Some(VERSION), Some(key_id), Some(nonce), Some(ciphertext)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("sealed value has an unknown format");
        };
        let cipher = self
            .keys
            .get(key_id)
            .ok_or_else(|| anyhow!("sealed value uses key {key_id}, which is not configured"))?;
        let nonce = URL_SAFE_NO_PAD
            .decode(nonce)
            .context("sealed value has an invalid nonce")?;
        if nonce.len() != 12 {
            bail!("sealed value has a nonce of {} bytes", nonce.len());
        }
        let ciphertext = URL_SAFE_NO_PAD
            .decode(ciphertext)
            .context("sealed value has invalid ciphertext")?;
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| anyhow!("sealed value does not open with key {key_id} for this context"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_box(keys: &str, active: &str) -> SecretBox {
        SecretBox::from_config(&EncryptionConfig {
            keys: SecretString::from(keys),
            active_key_id: active.to_owned(),
        })
        .unwrap()
        .unwrap()
    }

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "HxsdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    #[test]
    fn sealed_value_opens_in_its_context_only() {
        let secrets = secret_box(&format!("a={KEY_A}"), "");
        let sealed = secrets.seal(b"totp secret", "account-1").unwrap();
        assert!(sealed.starts_with("v1:a:"));
        assert!(!sealed.contains("totp"));
        assert_eq!(secrets.open(&sealed, "account-1").unwrap(), b"totp secret");
        assert!(secrets.open(&sealed, "account-2").is_err());
    }

    #[test]
    fn rotated_key_still_opens_old_values() {
        let old = secret_box(&format!("a={KEY_A}"), "a");
        let sealed = old.seal(b"secret", "ctx").unwrap();
        let rotated = secret_box(&format!("a={KEY_A},b={KEY_B}"), "b");
        assert_eq!(rotated.open(&sealed, "ctx").unwrap(), b"secret");
        assert!(rotated.seal(b"secret", "ctx").unwrap().starts_with("v1:b:"));
    }

    #[test]
    fn tampered_value_does_not_open() {
        let secrets = secret_box(&format!("a={KEY_A}"), "a");
        let mut sealed = secrets.seal(b"secret", "ctx").unwrap();
        let last = sealed.pop().unwrap();
        sealed.push(if last == 'A' { 'B' } else { 'A' });
        assert!(secrets.open(&sealed, "ctx").is_err());
    }

    #[test]
    fn invalid_configuration_is_rejected() {
        for (keys, active) in [
            ("a=short", "a"),
            ("nokey", ""),
            (&*format!("a={KEY_A}"), "missing"),
        ] {
            let config = EncryptionConfig {
                keys: SecretString::from(keys),
                active_key_id: active.to_owned(),
            };
            assert!(SecretBox::from_config(&config).is_err(), "{keys} {active}");
        }
        let empty = EncryptionConfig {
            keys: SecretString::from(""),
            active_key_id: String::new(),
        };
        assert!(SecretBox::from_config(&empty).unwrap().is_none());
    }
}

//! Client-side encryption keys: age X25519 identities.
//!
//! age is authenticated and streaming (ChaCha20-Poly1305 over 64 KiB chunks, the last chunk
//! flagged, so truncation and reordering are detected) and its key files are a format
//! operators can create with `age-keygen` and inspect. A set records the key's public half
//! (`age1...`, the recipient) as its fingerprint: it names the key without revealing it.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use drctl_core::config::KeySource;
use drctl_core::source::Env;

use crate::error::{RepoError, Result};

/// The scheme recorded in manifests for age X25519 encryption.
pub const AGE_SCHEME: &str = "age-x25519";

/// A secret key (age X25519 identity). Its `Debug` shows only the public fingerprint.
#[derive(Clone)]
pub struct Key {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
    fingerprint: String,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Parse key text: an age identity file (comments allowed) or the bare
    /// `AGE-SECRET-KEY-1...` string. `origin` names where it came from, for messages.
    pub fn parse(text: &str, origin: &str) -> Result<Key> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| RepoError::KeyLoad {
                origin: origin.to_string(),
                detail: "it is empty; write an age identity (AGE-SECRET-KEY-1..., made by `age-keygen`) into it".into(),
            })?;
        let identity = age::x25519::Identity::from_str(line).map_err(|_| RepoError::KeyLoad {
            origin: origin.to_string(),
            detail: "it does not hold an age X25519 identity (a line AGE-SECRET-KEY-1..., made by `age-keygen`)".into(),
        })?;
        let recipient = identity.to_public();
        Ok(Key {
            fingerprint: recipient.to_string(),
            identity,
            recipient,
        })
    }

    /// Load the key a `drctl.yml` names; a relative key file is taken from `base`.
    pub fn load(source: &KeySource, base: &Path, env: Env) -> Result<Key> {
        match source {
            KeySource::KeyFile(p) => {
                let path = if p.is_absolute() {
                    p.clone()
                } else {
                    base.join(p)
                };
                let origin = format!("key file {}", path.display());
                let text = std::fs::read_to_string(&path).map_err(|e| RepoError::KeyLoad {
                    origin: origin.clone(),
                    detail: format!("{e}; create it with `age-keygen -o {}`", path.display()),
                })?;
                Key::parse(&text, &origin)
            }
            KeySource::KeyEnv(var) => {
                let origin = format!("environment variable {var}");
                match env(var) {
                    Some(v) if !v.trim().is_empty() => Key::parse(&v, &origin),
                    _ => Err(RepoError::KeyLoad {
                        origin,
                        detail: "it is unset or empty; export it with an age identity (AGE-SECRET-KEY-1...)".into(),
                    }),
                }
            }
        }
    }

    /// A new random key, as the identity text to store (`AGE-SECRET-KEY-1...`).
    pub fn generate() -> String {
        age::x25519::Identity::generate()
            .to_string()
            .expose_secret()
            .to_string()
    }

    /// The public recipient (`age1...`): names the key in manifests and messages.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn recipient(&self) -> &age::x25519::Recipient {
        &self.recipient
    }

    pub(crate) fn identity(&self) -> &age::x25519::Identity {
        &self.identity
    }
}

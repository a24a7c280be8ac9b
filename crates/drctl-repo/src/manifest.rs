//! Backup sets: ids, manifests and the object layout.
//!
//! Layout under the repository prefix:
//!
//! ```text
//! sets/<id>/objects/<NNN>-<name><.zst><.age>   the items, written first
//! sets/<id>/manifest.json                       written last: its presence makes the set complete
//! ```
//!
//! Object keys in a manifest are relative to the repository prefix, so a repository copied
//! to another bucket or prefix stays readable.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{RepoError, Result};

/// The manifest format this drctl writes; it reads this and older ones.
pub const FORMAT_VERSION: u32 = 1;

/// The folder holding every set.
pub const SETS_DIR: &str = "sets";
pub const MANIFEST_NAME: &str = "manifest.json";

/// A complete backup set's description, written last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The compose project the set was taken from.
    pub stack: String,
    pub id: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub started: Timestamp,
    pub finished: Timestamp,
    pub drctl_version: String,
    /// The key that sealed the set (its public fingerprint), or none.
    #[serde(default)]
    pub encryption: Option<EncryptionInfo>,
    pub items: Vec<ItemRecord>,
}

/// Which key sealed a set. Never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// `age-x25519`.
    pub scheme: String,
    /// The age recipient (public key) of the sealing identity, `age1...`.
    pub key_fingerprint: String,
}

/// How an object's bytes were compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

/// How an object's bytes were encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    None,
    /// age, X25519 recipient: the set's `encryption.key_fingerprint`.
    AgeX25519,
}

/// One object of a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Unique in the set, chosen by the caller (`postgres/app`, `volume/app-sessions`).
    pub name: String,
    /// `volume`, `postgres`, `redis`, `qdrant`, `spec`, ...
    pub kind: String,
    /// Where the data came from, for people (`volume drctl-lab_app-sessions`).
    pub source: String,
    /// The object key, relative to the repository prefix.
    pub key: String,
    /// Bytes read from the source.
    pub raw_size: u64,
    /// Bytes stored (after compression and encryption).
    pub stored_size: u64,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: String,
    pub compression: Compression,
    pub encryption: Encryption,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Opaque to the repository: what the verify step compares after a restore.
    #[serde(default)]
    pub fingerprint: serde_json::Value,
}

impl Manifest {
    pub fn item(&self, name: &str) -> Option<&ItemRecord> {
        self.items.iter().find(|i| i.name == name)
    }
    pub fn stored_size(&self) -> u64 {
        self.items.iter().map(|i| i.stored_size).sum()
    }
    pub fn raw_size(&self) -> u64 {
        self.items.iter().map(|i| i.raw_size).sum()
    }

    pub(crate) fn parse(set: &str, bytes: &[u8]) -> Result<Manifest> {
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let bad = |detail: String| RepoError::BadManifest {
            set: set.to_string(),
            detail,
        };
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("{e}; the manifest is damaged: choose another set")))?;
        if probe.format > FORMAT_VERSION {
            return Err(bad(format!(
                "it has format {}, this drctl reads up to {FORMAT_VERSION}; upgrade drctl",
                probe.format
            )));
        }
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("{e}; the manifest is damaged: choose another set")))?;
        if m.id != set {
            return Err(bad(format!(
                "it names set {} instead; the manifest was copied from another set",
                m.id
            )));
        }
        Ok(m)
    }
}

/// A new set id: `20261122T031500Z-a1b2c3`, sortable by time, with a random tail so that two
/// backups started in the same second do not collide.
pub fn new_set_id(at: Timestamp) -> String {
    let mut tail = [0u8; 3];
    getrandom::fill(&mut tail).expect("the OS random source works");
    format!("{}-{}", at.strftime("%Y%m%dT%H%M%SZ"), hex::encode(tail))
}

/// The time encoded in a set id (incomplete sets have nothing else).
pub fn set_id_time(id: &str) -> Option<Timestamp> {
    let stamp = id.get(..16)?;
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stamp)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// Whether a string is a well-formed set id (so that listing ignores stray keys).
pub fn is_set_id(id: &str) -> bool {
    set_id_time(id).is_some()
        && id.len() > 17
        && id.as_bytes()[16] == b'-'
        && id[17..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A file-name-safe form of an item name.
pub(crate) fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_and_parse() {
        let t: Timestamp = "2026-11-22T03:15:00Z".parse().unwrap();
        let id = new_set_id(t);
        assert!(id.starts_with("20261122T031500Z-"), "{id}");
        assert_eq!(id.len(), 23);
        assert!(is_set_id(&id));
        assert_eq!(set_id_time(&id), Some(t));
        assert!(!is_set_id("notes"));
        assert!(!is_set_id("20261122T031500Z"));
    }

    #[test]
    fn safe_names() {
        assert_eq!(safe_name("postgres/app db"), "postgres_app_db");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name(""), "_");
    }
}

//! Fingerprints: what a backup recorded about the data, compared after a restore.
//!
//! Each store has its own fingerprint type (plain serde structs, stored as
//! `serde_json::Value` in the backup manifest); [`Fingerprint`] wraps them with a `type`
//! tag. `compare(expected, actual)` returns one [`Mismatch`] per thing that differs, each
//! naming it (database and table, Redis database and value type, collection and field).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::postgres::PgFingerprint;
use crate::qdrant::QdrantFingerprint;
use crate::redis::RedisFingerprint;

/// One difference between the fingerprint recorded at backup time and the one now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// What differs, e.g. "database `app` table `public.users` rows".
    pub subject: String,
    /// At backup time ("missing" when absent).
    pub expected: String,
    /// Now ("missing" when absent).
    pub actual: String,
}

impl Mismatch {
    pub fn new(
        subject: impl Into<String>,
        expected: impl fmt::Display,
        actual: impl fmt::Display,
    ) -> Self {
        Mismatch {
            subject: subject.into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} at backup, {} now",
            self.subject, self.expected, self.actual
        )
    }
}

/// Any store's fingerprint, tagged for storage in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Fingerprint {
    Postgres(PgFingerprint),
    Redis(RedisFingerprint),
    Qdrant(QdrantFingerprint),
}

impl Fingerprint {
    /// What differs between `self` (recorded at backup time) and `actual` (now).
    pub fn compare(&self, actual: &Fingerprint) -> Vec<Mismatch> {
        match (self, actual) {
            (Fingerprint::Postgres(a), Fingerprint::Postgres(b)) => a.compare(b),
            (Fingerprint::Redis(a), Fingerprint::Redis(b)) => a.compare(b),
            (Fingerprint::Qdrant(a), Fingerprint::Qdrant(b)) => a.compare(b),
            (a, b) => vec![Mismatch::new("fingerprint type", a.kind(), b.kind())],
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Fingerprint::Postgres(_) => "postgres",
            Fingerprint::Redis(_) => "redis",
            Fingerprint::Qdrant(_) => "qdrant",
        }
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_value(v: &serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(v.clone())
    }
}

/// Compare two maps by key: missing and extra entries become mismatches named by
/// `name(key)`; entries on both sides go to `both`.
pub(crate) fn compare_maps<K: Ord + Clone, V>(
    expected: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
    name: impl Fn(&K) -> String,
    mut both: impl FnMut(&K, &V, &V),
    out: &mut Vec<Mismatch>,
) {
    for (k, e) in expected {
        match actual.get(k) {
            Some(a) => both(k, e, a),
            None => out.push(Mismatch::new(name(k), "present", "missing")),
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            out.push(Mismatch::new(name(k), "missing", "present"));
        }
    }
}

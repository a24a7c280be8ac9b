//! Qdrant: collection snapshots through its REST API (reqwest; the Rust client has no
//! upload or recover call, and its download helper neither checks the checksum nor sends
//! the API key).
//!
//! # Backup
//! [`Qdrant::snapshot_collection`]: `POST /collections/{c}/snapshots?wait=false` (large
//! collections time out with `wait=true`: qdrant#1483, #4802), then poll the snapshot list
//! until the new snapshot shows up with its checksum, stream `GET .../snapshots/{name}`
//! into the caller's writer while hashing it, compare the SHA-256 and size with the listed
//! ones, and delete the snapshot from the server (also when the download failed: it is
//! drctl's, and snapshots fill Qdrant's disk). [`Qdrant::snapshot_full`] does the same for
//! a full storage snapshot (`/snapshots`, single node).
//!
//! # Restore
//! [`Qdrant::restore_collection`]: `POST /collections/{c}/snapshots/upload?wait=true&
//! priority=snapshot&checksum=SHA`, the snapshot as multipart field `snapshot`, streamed
//! from the caller's reader (chunked, never held in memory). `priority=snapshot` makes the
//! snapshot's data win over what the node has (always passed: its documented default and
//! the code's have differed); Qdrant checks the checksum and refuses a mismatch. A snapshot
//! restores only into the same Qdrant minor version. A full storage snapshot is restored by
//! starting Qdrant with `--snapshot`, not through the API, so there is no call for it here.
//!
//! # Transport
//! Plain http only: this build carries no TLS stack (one lean reqwest, as in
//! drctl-docker); reach Qdrant on loopback or a private network. The API key, from the
//! target's `api_key_env`, goes in the `api-key` header and never into a message.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use drctl_core::config::QdrantTarget;
use drctl_docker::health::wait_for;
use drctl_docker::{Poll, Probe};
use futures_util::{Stream, StreamExt};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::fingerprint::{compare_maps, Mismatch};
use crate::util::{one_line, secret_from_env, Secret};
use crate::DbError;

/// Points read for the fingerprint's sample (the first ones by id).
const SAMPLE_POINTS: usize = 256;

/// A Qdrant server reached over its REST API.
#[derive(Debug, Clone)]
pub struct Qdrant {
    http: reqwest::Client,
    base: Url,
    api_key: Option<Secret>,
    api_key_env: Option<String>,
    collections: Vec<String>,
}

/// Options of the snapshot calls.
#[derive(Debug, Clone)]
pub struct QdrantSnapshotOptions {
    /// How long the snapshot may take to appear in the list.
    pub create_timeout: Duration,
    /// How often to look.
    pub poll_interval: Duration,
}

impl Default for QdrantSnapshotOptions {
    fn default() -> Self {
        QdrantSnapshotOptions {
            create_timeout: Duration::from_secs(3600),
            poll_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QdrantSnapshotReport {
    /// `None` for a full storage snapshot.
    pub collection: Option<String>,
    /// The snapshot's name on the server (deleted since).
    pub name: String,
    pub bytes: u64,
    /// SHA-256 of what was written (hex): pass it to [`Qdrant::restore_collection`].
    pub sha256: String,
    /// The server listed a checksum and it matched (always, unless a Qdrant too old to
    /// list checksums).
    pub server_checksum_verified: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QdrantRestoreReport {
    pub collection: String,
    pub bytes: u64,
    pub seconds: f64,
}

/// A snapshot as the list call describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SnapshotDescription {
    pub name: String,
    #[serde(default)]
    pub creation_time: Option<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub checksum: Option<String>,
}

/// Per collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QdrantFingerprint {
    pub collections: BTreeMap<String, QdrantCollectionFingerprint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdrantCollectionFingerprint {
    /// Exact count (`points/count` with `exact: true`).
    pub points: u64,
    /// Dense vectors by name (`""` for the unnamed vector of a single-vector collection).
    pub vectors: BTreeMap<String, QdrantVector>,
    /// Sparse vector names.
    #[serde(default)]
    pub sparse_vectors: BTreeSet<String>,
    /// SHA-256 over the canonical JSON (sorted keys) of the first points by id, with
    /// payloads and vectors; `sample_points` of them.
    pub sample: String,
    pub sample_points: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdrantVector {
    pub size: u64,
    /// `Cosine`, `Dot`, `Euclid`, `Manhattan`.
    pub distance: String,
}

impl QdrantFingerprint {
    /// What differs between `self` (at backup) and `actual` (now), by collection.
    pub fn compare(&self, actual: &QdrantFingerprint) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let mut inner = Vec::new();
        compare_maps(
            &self.collections,
            &actual.collections,
            |c| format!("qdrant collection `{c}`"),
            |c, e, a| inner.extend(e.compare_named(c, a)),
            &mut out,
        );
        out.extend(inner);
        out
    }
}

impl QdrantCollectionFingerprint {
    fn compare_named(&self, c: &str, a: &QdrantCollectionFingerprint) -> Vec<Mismatch> {
        let mut out = Vec::new();
        if self.points != a.points {
            out.push(Mismatch::new(
                format!("qdrant collection `{c}` points"),
                self.points,
                a.points,
            ));
        }
        let mut inner = Vec::new();
        compare_maps(
            &self.vectors,
            &a.vectors,
            |v| format!("qdrant collection `{c}` vector `{v}`"),
            |v, x, y| {
                if x.size != y.size {
                    inner.push(Mismatch::new(
                        format!("qdrant collection `{c}` vector `{v}` size"),
                        x.size,
                        y.size,
                    ));
                }
                if x.distance != y.distance {
                    inner.push(Mismatch::new(
                        format!("qdrant collection `{c}` vector `{v}` distance"),
                        &x.distance,
                        &y.distance,
                    ));
                }
            },
            &mut out,
        );
        out.extend(inner);
        if self.sparse_vectors != a.sparse_vectors {
            let show = |s: &BTreeSet<String>| format!("{s:?}");
            out.push(Mismatch::new(
                format!("qdrant collection `{c}` sparse vectors"),
                show(&self.sparse_vectors),
                show(&a.sparse_vectors),
            ));
        }
        if self.points == a.points && self.sample != a.sample {
            out.push(Mismatch::new(
                format!(
                    "qdrant collection `{c}` first {} points (ids, payloads, vectors)",
                    self.sample_points
                ),
                format!("checksum {}", &self.sample[..self.sample.len().min(12)]),
                format!("checksum {}", &a.sample[..a.sample.len().min(12)]),
            ));
        }
        out
    }
}

/// Where a snapshot lives: a collection's, or the full storage's.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    Collection(&'a str),
    Full,
}

impl Scope<'_> {
    fn segments(&self) -> Vec<&str> {
        match self {
            Scope::Collection(c) => vec!["collections", c, "snapshots"],
            Scope::Full => vec!["snapshots"],
        }
    }
    fn describe(&self) -> String {
        match self {
            Scope::Collection(c) => format!("collection `{c}`"),
            Scope::Full => "the full storage".into(),
        }
    }
}

/// Join path segments onto a base URL (each segment percent-encoded: a collection named
/// `a/b` stays one segment).
pub(crate) fn build_url(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
    let mut u = base.clone();
    if let Ok(mut p) = u.path_segments_mut() {
        p.pop_if_empty().extend(segments);
    }
    if !query.is_empty() {
        u.query_pairs_mut().extend_pairs(query);
    }
    u
}

/// Qdrant's error text from an error body (`{"status": {"error": "..."}}`), else the body.
pub(crate) fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["status"]["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| one_line(body, 300))
}

/// `result` of a Qdrant answer.
fn result_of(v: Value) -> Value {
    match v {
        Value::Object(mut m) => m.remove("result").unwrap_or(Value::Null),
        other => other,
    }
}

/// Parse `config.params` of a collection: dense vectors (named, or one unnamed) and sparse
/// vector names.
pub(crate) fn parse_vectors(
    params: &Value,
) -> Result<(BTreeMap<String, QdrantVector>, BTreeSet<String>), String> {
    let one = |v: &Value| -> Result<QdrantVector, String> {
        Ok(QdrantVector {
            size: v["size"]
                .as_u64()
                .ok_or_else(|| format!("vector config without a size: {v}"))?,
            distance: v["distance"].as_str().unwrap_or("?").to_string(),
        })
    };
    let mut dense = BTreeMap::new();
    match &params["vectors"] {
        Value::Object(m) if m.contains_key("size") => {
            dense.insert(String::new(), one(&params["vectors"])?);
        }
        Value::Object(m) => {
            for (name, v) in m {
                dense.insert(name.clone(), one(v)?);
            }
        }
        Value::Null => {}
        other => return Err(format!("unexpected vectors config {other}")),
    }
    let sparse = params["sparse_vectors"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    Ok((dense, sparse))
}

/// JSON with object keys sorted, whatever serde_json's map type is in this build.
fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical_json(&m[*k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The sample checksum of scrolled points (`id`, `payload`, `vector` of each).
pub(crate) fn sample_checksum(points: &[Value]) -> String {
    let mut sha = Sha256::new();
    for p in points {
        let mut s = String::new();
        let kept = json!({"id": p["id"], "payload": p["payload"], "vector": p["vector"]});
        canonical_json(&kept, &mut s);
        sha.update(s.as_bytes());
        sha.update(b"\n");
    }
    hex::encode(sha.finalize())
}

/// Why copying a download stopped.
#[derive(Debug)]
pub(crate) enum CopyError {
    Source(String),
    Sink(std::io::Error),
}

/// Copy a byte stream into `out` while hashing it; returns bytes and SHA-256 (hex).
pub(crate) async fn copy_hashed<S, E>(
    mut stream: S,
    out: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<(u64, String), CopyError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CopyError::Source(e.to_string()))?;
        sha.update(&chunk);
        bytes += chunk.len() as u64;
        out.write_all(&chunk).await.map_err(CopyError::Sink)?;
    }
    out.flush().await.map_err(CopyError::Sink)?;
    Ok((bytes, hex::encode(sha.finalize())))
}

/// Compare a download with what the server listed.
pub(crate) fn check_download(
    listed: &SnapshotDescription,
    bytes: u64,
    sha256: &str,
    action: &str,
) -> Result<bool, DbError> {
    if let Some(expected) = listed.checksum.as_deref() {
        if !expected.eq_ignore_ascii_case(sha256) {
            return Err(DbError::Checksum {
                action: action.to_string(),
                expected: expected.to_string(),
                actual: sha256.to_string(),
                hint: format!(
                    "the download of snapshot `{}` ({bytes} bytes) is corrupt; discard it and back up again",
                    listed.name
                ),
            });
        }
    }
    if listed.size != 0 && listed.size != bytes {
        return Err(DbError::Protocol {
            action: action.to_string(),
            reason: format!(
                "snapshot `{}` is listed with {} bytes but {bytes} were downloaded; discard it and back up again",
                listed.name, listed.size
            ),
        });
    }
    Ok(listed.checksum.is_some())
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The deepest cause of an error: "connection refused" rather than "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

impl Qdrant {
    /// A target's Qdrant. Reads the API key from `api_key_env` now, so that a missing
    /// variable fails before anything is touched.
    pub fn new(target: &QdrantTarget) -> Result<Self, DbError> {
        let key = target
            .api_key_env
            .as_deref()
            .map(|v| secret_from_env(v, "Qdrant API key"))
            .transpose()?;
        let mut q = Self::connect(&target.url, key)?;
        q.api_key_env = target.api_key_env.clone();
        q.collections = target.collections.clone();
        Ok(q)
    }

    /// A client for the Qdrant at `url` (`http://host:6333`, a path prefix is kept).
    pub fn connect(url: &str, api_key: Option<Secret>) -> Result<Self, DbError> {
        let action = format!("use Qdrant at {url}");
        let base = Url::parse(url).map_err(|e| DbError::Invalid {
            action: action.clone(),
            reason: format!("the URL is not valid ({e}); write it like http://127.0.0.1:6333"),
        })?;
        if base.scheme() != "http" {
            return Err(DbError::Invalid {
                action,
                reason: format!(
                    "only http:// is supported (this build has no TLS stack), not {}://; reach Qdrant over plain http on loopback or a private network",
                    base.scheme()
                ),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| DbError::Invalid {
                action,
                reason: root_cause(&e),
            })?;
        Ok(Qdrant {
            http,
            base,
            api_key,
            api_key_env: None,
            collections: Vec::new(),
        })
    }

    pub fn url(&self) -> &Url {
        &self.base
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.api_key {
            Some(k) => r.header("api-key", k.expose()),
            None => r,
        }
    }

    fn auth_hint(&self) -> String {
        match &self.api_key_env {
            Some(v) => format!("check the API key in environment variable `{v}`"),
            None if self.api_key.is_some() => "check the API key".into(),
            None => "Qdrant wants an API key: set `api_key_env` on the target to the variable that holds it".into(),
        }
    }

    /// Send a request; a transport failure or an error status becomes an error that says
    /// what to do.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        action: &str,
        not_found: Option<String>,
    ) -> Result<reqwest::Response, DbError> {
        let resp = req.send().await.map_err(|e| self.transport(e, action))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let url = resp.url().clone();
        let body = resp.text().await.unwrap_or_default();
        let message = error_message(&body);
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => DbError::Auth {
                action: action.to_string(),
                detail: format!("HTTP {}: {}", status.as_u16(), one_line(&message, 200)),
                hint: self.auth_hint(),
            },
            StatusCode::NOT_FOUND if not_found.is_some() => DbError::NotFound {
                action: action.to_string(),
                what: not_found.unwrap_or_default(),
                hint: format!("Qdrant says: {}", one_line(&message, 200)),
            },
            _ => DbError::Http {
                action: action.to_string(),
                status: status.as_u16(),
                url: redact(&url),
                message: one_line(&message, 500),
            },
        })
    }

    fn transport(&self, e: reqwest::Error, action: &str) -> DbError {
        if e.is_timeout() {
            return DbError::Timeout {
                action: action.to_string(),
                waited: Duration::from_secs(60),
                detail: format!("Qdrant at {} did not answer", self.base),
            };
        }
        DbError::Unavailable {
            action: action.to_string(),
            reason: format!(
                "Qdrant at {} is not reachable ({}); is it running, and is the target's url right?",
                self.base,
                root_cause(&e)
            ),
        }
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
        action: &str,
        not_found: Option<String>,
    ) -> Result<Value, DbError> {
        let url = build_url(&self.base, segments, query);
        let mut req = self.request(method, url).timeout(Duration::from_secs(120));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = self.send(req, action, not_found).await?;
        let text = resp.text().await.map_err(|e| self.transport(e, action))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| DbError::Protocol {
            action: action.to_string(),
            reason: format!(
                "Qdrant answered something that is not JSON ({e}): {}",
                one_line(&text, 200)
            ),
        })?;
        Ok(result_of(v))
    }

    /// The server's collections, by name.
    pub async fn list_collections(&self) -> Result<Vec<String>, DbError> {
        let action = format!("list the collections of Qdrant at {}", self.base);
        let r = self
            .call(Method::GET, &["collections"], &[], None, &action, None)
            .await?;
        let mut names: Vec<String> = r["collections"]
            .as_array()
            .ok_or_else(|| DbError::Protocol {
                action: action.clone(),
                reason: format!("unexpected answer {}", one_line(&r.to_string(), 200)),
            })?
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The target's collections: the listed ones (each must exist), or all.
    pub async fn selected_collections(&self) -> Result<Vec<String>, DbError> {
        let all = self.list_collections().await?;
        if self.collections.is_empty() {
            return Ok(all);
        }
        let missing: Vec<&String> = self
            .collections
            .iter()
            .filter(|c| !all.contains(c))
            .collect();
        if !missing.is_empty() {
            return Err(DbError::NotFound {
                action: format!(
                    "select the collections to back up on Qdrant at {}",
                    self.base
                ),
                what: missing
                    .iter()
                    .map(|c| format!("collection `{c}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                hint: format!(
                    "the server has {all:?}; fix the target's `collections` in drctl.yml"
                ),
            });
        }
        Ok(self.collections.clone())
    }

    async fn list_snapshots(
        &self,
        scope: Scope<'_>,
        action: &str,
    ) -> Result<Vec<SnapshotDescription>, DbError> {
        let not_found = match scope {
            Scope::Collection(c) => Some(format!("collection `{c}`")),
            Scope::Full => None,
        };
        let r = self
            .call(Method::GET, &scope.segments(), &[], None, action, not_found)
            .await?;
        serde_json::from_value(r).map_err(|e| DbError::Protocol {
            action: action.to_string(),
            reason: format!("unexpected snapshot list ({e})"),
        })
    }

    /// Snapshot a collection into `out` (see the module docs). On error the writer may
    /// hold a partial snapshot that must be discarded.
    pub async fn snapshot_collection(
        &self,
        collection: &str,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        opts: &QdrantSnapshotOptions,
    ) -> Result<QdrantSnapshotReport, DbError> {
        self.snapshot(Scope::Collection(collection), out, opts)
            .await
    }

    /// A full storage snapshot (all collections and aliases; single-node Qdrant) into
    /// `out`. Restoring it means starting Qdrant with `--snapshot`.
    pub async fn snapshot_full(
        &self,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        opts: &QdrantSnapshotOptions,
    ) -> Result<QdrantSnapshotReport, DbError> {
        self.snapshot(Scope::Full, out, opts).await
    }

    async fn snapshot(
        &self,
        scope: Scope<'_>,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        opts: &QdrantSnapshotOptions,
    ) -> Result<QdrantSnapshotReport, DbError> {
        let t0 = Instant::now();
        let action = format!("snapshot {} of Qdrant at {}", scope.describe(), self.base);
        let before: BTreeSet<String> = self
            .list_snapshots(scope, &action)
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let created = self
            .call(
                Method::POST,
                &scope.segments(),
                &[("wait", "false")],
                None,
                &action,
                None,
            )
            .await?;
        // An older server may have finished synchronously and named it.
        let named = serde_json::from_value::<SnapshotDescription>(created)
            .ok()
            .map(|d| d.name);
        let listed = self
            .await_snapshot(scope, &before, named.as_deref(), opts, &action)
            .await?;
        let downloaded = self.download(scope, &listed, out, &action).await;
        let deleted = self.delete_snapshot(scope, &listed.name, &action).await;
        let (bytes, sha256, verified) = downloaded?;
        if let Err(e) = deleted {
            tracing::warn!("{e}");
        }
        Ok(QdrantSnapshotReport {
            collection: match scope {
                Scope::Collection(c) => Some(c.to_string()),
                Scope::Full => None,
            },
            name: listed.name,
            bytes,
            sha256,
            server_checksum_verified: verified,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Poll the list until the new snapshot is there with its checksum.
    async fn await_snapshot(
        &self,
        scope: Scope<'_>,
        before: &BTreeSet<String>,
        named: Option<&str>,
        opts: &QdrantSnapshotOptions,
        action: &str,
    ) -> Result<SnapshotDescription, DbError> {
        let t0 = Instant::now();
        let mut without_checksum = 0;
        loop {
            let list = self.list_snapshots(scope, action).await?;
            let mut new: Vec<SnapshotDescription> = list
                .into_iter()
                .filter(|s| match named {
                    Some(n) => s.name == n,
                    None => !before.contains(&s.name),
                })
                .collect();
            new.sort_by(|a, b| a.creation_time.cmp(&b.creation_time));
            if let Some(s) = new.pop() {
                if s.checksum.is_some() || without_checksum >= 10 {
                    if s.checksum.is_none() {
                        tracing::warn!("{action}: Qdrant lists no checksum for `{}`; the download is not verified against one", s.name);
                    }
                    return Ok(s);
                }
                without_checksum += 1;
            }
            if t0.elapsed() > opts.create_timeout {
                return Err(DbError::Timeout {
                    action: action.to_string(),
                    waited: opts.create_timeout,
                    detail: "the snapshot has not appeared in the snapshot list".into(),
                });
            }
            tokio::time::sleep(opts.poll_interval).await;
        }
    }

    async fn download(
        &self,
        scope: Scope<'_>,
        listed: &SnapshotDescription,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        action: &str,
    ) -> Result<(u64, String, bool), DbError> {
        let mut segs = scope.segments();
        segs.push(&listed.name);
        let url = build_url(&self.base, &segs, &[]);
        let resp = self
            .send(self.request(Method::GET, url), action, None)
            .await?;
        let (bytes, sha) = copy_hashed(resp.bytes_stream(), out)
            .await
            .map_err(|e| match e {
                CopyError::Source(m) => DbError::Unavailable {
                    action: action.to_string(),
                    reason: format!("the download of snapshot `{}` broke off ({m})", listed.name),
                },
                CopyError::Sink(e) => DbError::io(format!("{action}: write the snapshot"))(e),
            })?;
        let verified = check_download(listed, bytes, &sha, action)?;
        Ok((bytes, sha, verified))
    }

    async fn delete_snapshot(
        &self,
        scope: Scope<'_>,
        name: &str,
        action: &str,
    ) -> Result<(), DbError> {
        let mut segs = scope.segments();
        segs.push(name);
        self.call(
            Method::DELETE,
            &segs,
            &[("wait", "true")],
            None,
            &format!("{action}: delete snapshot `{name}` from the server (delete it by hand)"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Recreate `collection` from a snapshot read from `input`, streamed as a multipart
    /// upload; `sha256` is the snapshot's checksum recorded at backup, which Qdrant checks.
    pub async fn restore_collection(
        &self,
        collection: &str,
        input: &mut (dyn AsyncRead + Unpin + Send),
        sha256: &str,
    ) -> Result<QdrantRestoreReport, DbError> {
        let t0 = Instant::now();
        let action = format!(
            "restore collection `{collection}` on Qdrant at {}",
            self.base
        );
        if !is_sha256(sha256) {
            return Err(DbError::Invalid {
                action,
                reason: format!("`{sha256}` is not a SHA-256 in hex; nothing was changed"),
            });
        }
        let url = build_url(
            &self.base,
            &["collections", collection, "snapshots", "upload"],
            &[
                ("wait", "true"),
                ("priority", "snapshot"),
                ("checksum", sha256),
            ],
        );
        // reqwest wants a 'static body: chunks travel through a small channel from the
        // caller's reader, which this function keeps borrowing.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
        let part = reqwest::multipart::Part::stream(body)
            .file_name(format!("{collection}.snapshot"))
            .mime_str("application/octet-stream")
            .map_err(|e| DbError::Protocol {
                action: action.clone(),
                reason: e.to_string(),
            })?;
        let form = reqwest::multipart::Form::new().part("snapshot", part);
        let req = self.request(Method::POST, url).multipart(form);
        let upload = async {
            let resp = self.send(req, &action, None).await;
            match resp {
                Ok(r) => {
                    let text = r.text().await.unwrap_or_default();
                    Ok(text)
                }
                Err(e) => Err(e),
            }
        };
        let pump = async move {
            let mut bytes = 0u64;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = match input.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let msg = e.to_string();
                        let _ = tx.send(Err(e)).await;
                        return Err(msg);
                    }
                };
                if n == 0 {
                    return Ok(bytes);
                }
                bytes += n as u64;
                if tx
                    .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    // The request ended (an error answer); its result says why.
                    return Ok(bytes);
                }
            }
        };
        let (answer, pumped) = tokio::join!(upload, pump);
        let bytes = match pumped {
            Ok(b) => b,
            Err(m) => {
                return Err(DbError::Io {
                    action: format!("{action}: read the snapshot"),
                    source: std::io::Error::other(m),
                })
            }
        };
        match answer {
            Ok(_) => Ok(QdrantRestoreReport {
                collection: collection.to_string(),
                bytes,
                seconds: t0.elapsed().as_secs_f64(),
            }),
            Err(DbError::Http { status, message, .. })
                if (400..500).contains(&status) && message.to_ascii_lowercase().contains("checksum") =>
            {
                Err(DbError::Checksum {
                    action,
                    expected: sha256.to_string(),
                    actual: "a different one".into(),
                    hint: format!(
                        "Qdrant refused the snapshot ({}); the stored snapshot is corrupt or not the one recorded; nothing was restored",
                        one_line(&message, 200)
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Wait until `/readyz` answers and the given collections exist. A wrong API key fails
    /// at once.
    pub async fn wait_ready(&self, collections: &[String], poll: Poll) -> Result<(), DbError> {
        let subject = if collections.is_empty() {
            format!("see Qdrant at {} ready", self.base)
        } else {
            format!(
                "see Qdrant at {} ready with collections {collections:?}",
                self.base
            )
        };
        Ok(wait_for(&subject, poll, || self.probe(collections)).await?)
    }

    async fn probe(&self, collections: &[String]) -> Probe {
        let url = build_url(&self.base, &["readyz"], &[]);
        let ready = self
            .request(Method::GET, url)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match ready {
            Ok(r) if r.status().is_success() => {}
            // Before /readyz existed, the root answering is the best there is.
            Ok(r) if r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) if matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Probe::Fatal(format!(
                    "authentication failed (HTTP {}); {}",
                    r.status().as_u16(),
                    self.auth_hint()
                ))
            }
            Ok(r) => {
                return Probe::waiting(format!(
                    "still answering HTTP {} on /readyz",
                    r.status().as_u16()
                ))
            }
            Err(e) => return Probe::waiting(format!("still not reachable ({})", root_cause(&e))),
        }
        if collections.is_empty() {
            return Probe::Ready;
        }
        match self.list_collections().await {
            Ok(all) => {
                let missing: Vec<&String> =
                    collections.iter().filter(|c| !all.contains(c)).collect();
                if missing.is_empty() {
                    Probe::Ready
                } else {
                    Probe::waiting(format!("collections {missing:?} still missing"))
                }
            }
            Err(e @ DbError::Auth { .. }) => Probe::Fatal(e.to_string()),
            Err(e) => Probe::waiting(format!("still failing: {e}")),
        }
    }

    /// Fingerprint the given collections.
    pub async fn fingerprint(&self, collections: &[String]) -> Result<QdrantFingerprint, DbError> {
        let mut fp = QdrantFingerprint::default();
        for c in collections {
            fp.collections
                .insert(c.clone(), self.collection_fingerprint(c).await?);
        }
        Ok(fp)
    }

    pub async fn collection_fingerprint(
        &self,
        collection: &str,
    ) -> Result<QdrantCollectionFingerprint, DbError> {
        let action = format!(
            "fingerprint collection `{collection}` on Qdrant at {}",
            self.base
        );
        let nf = || Some(format!("collection `{collection}`"));
        let info = self
            .call(
                Method::GET,
                &["collections", collection],
                &[],
                None,
                &action,
                nf(),
            )
            .await?;
        let (vectors, sparse_vectors) =
            parse_vectors(&info["config"]["params"]).map_err(|reason| DbError::Protocol {
                action: action.clone(),
                reason,
            })?;
        let count = self
            .call(
                Method::POST,
                &["collections", collection, "points", "count"],
                &[],
                Some(json!({"exact": true})),
                &action,
                nf(),
            )
            .await?;
        let points = count["count"].as_u64().ok_or_else(|| DbError::Protocol {
            action: action.clone(),
            reason: format!("unexpected count answer {count}"),
        })?;
        let scrolled = self
            .call(
                Method::POST,
                &["collections", collection, "points", "scroll"],
                &[],
                Some(json!({"limit": SAMPLE_POINTS, "with_payload": true, "with_vector": true})),
                &action,
                nf(),
            )
            .await?;
        let sample_points = scrolled["points"].as_array().cloned().unwrap_or_default();
        Ok(QdrantCollectionFingerprint {
            points,
            vectors,
            sparse_vectors,
            sample: sample_checksum(&sample_points),
            sample_points: sample_points.len() as u64,
        })
    }
}

/// A URL for messages: without user info or query (where a key could hide).
fn redact(u: &Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

/// An mpsc receiver as a `Stream` (tokio-stream's wrapper without the dependency).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let base = Url::parse("http://127.0.0.1:6333").unwrap();
        assert_eq!(
            build_url(
                &base,
                &["collections", "a b/c", "snapshots"],
                &[("wait", "false")]
            )
            .as_str(),
            "http://127.0.0.1:6333/collections/a%20b%2Fc/snapshots?wait=false"
        );
        let prefixed = Url::parse("http://host/qdrant/").unwrap();
        assert_eq!(
            build_url(
                &prefixed,
                &["collections", "AgentMemories", "snapshots", "upload"],
                &[("wait", "true"), ("priority", "snapshot"), ("checksum", "ab")]
            )
            .as_str(),
            "http://host/qdrant/collections/AgentMemories/snapshots/upload?wait=true&priority=snapshot&checksum=ab"
        );
        assert!(Qdrant::connect("https://x:6333", None)
            .unwrap_err()
            .to_string()
            .contains("only http://"));
        assert!(Qdrant::connect("not a url", None).is_err());
        assert_eq!(
            redact(&Url::parse("http://u:p@h:1/x?api-key=s").unwrap()),
            "http://h:1/x"
        );
    }

    #[test]
    fn responses_parse() {
        let list = r#"{"result":[{"name":"AgentMemories-123-2026-08-01-10-00-00.snapshot",
            "creation_time":"2026-08-01T10:00:00","size":1024,
            "checksum":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}],
            "status":"ok","time":0.001}"#;
        let v: Value = serde_json::from_str(list).unwrap();
        let snaps: Vec<SnapshotDescription> = serde_json::from_value(result_of(v)).unwrap();
        assert_eq!(snaps[0].size, 1024);
        assert!(snaps[0].checksum.as_deref().is_some_and(is_sha256));
        // wait=false: accepted, no description.
        let v: Value =
            serde_json::from_str(r#"{"result":null,"status":"accepted","time":0.0}"#).unwrap();
        assert!(serde_json::from_value::<SnapshotDescription>(result_of(v)).is_err());
        assert_eq!(
            error_message(
                r#"{"status":{"error":"Not found: Collection `x` doesn't exist!"},"time":0.0}"#
            ),
            "Not found: Collection `x` doesn't exist!"
        );
        assert_eq!(error_message("plain text"), "plain text");
    }

    #[test]
    fn vector_configs_parse() {
        let named: Value = serde_json::from_str(
            r#"{"vectors":{"fast-all-minilm-l6-v2":{"size":384,"distance":"Cosine","on_disk":false}},
               "sparse_vectors":{"bm25":{"modifier":"idf"}},"shard_number":1}"#,
        )
        .unwrap();
        let (d, s) = parse_vectors(&named).unwrap();
        assert_eq!(
            d["fast-all-minilm-l6-v2"],
            QdrantVector {
                size: 384,
                distance: "Cosine".into()
            }
        );
        assert!(s.contains("bm25"));
        let unnamed: Value =
            serde_json::from_str(r#"{"vectors":{"size":4,"distance":"Dot"}}"#).unwrap();
        let (d, s) = parse_vectors(&unnamed).unwrap();
        assert_eq!(d[""].size, 4);
        assert!(s.is_empty());
    }

    #[test]
    fn sample_checksum_ignores_key_order() {
        let a: Value = serde_json::from_str(
            r#"[{"id":1,"payload":{"a":1,"b":[1,2]},"vector":{"v":[0.5]},"shard_key":null}]"#,
        )
        .unwrap();
        let b: Value =
            serde_json::from_str(r#"[{"vector":{"v":[0.5]},"payload":{"b":[1,2],"a":1},"id":1}]"#)
                .unwrap();
        assert_eq!(
            sample_checksum(a.as_array().unwrap()),
            sample_checksum(b.as_array().unwrap())
        );
        let c: Value =
            serde_json::from_str(r#"[{"id":1,"payload":{"a":2,"b":[1,2]},"vector":{"v":[0.5]}}]"#)
                .unwrap();
        assert_ne!(
            sample_checksum(a.as_array().unwrap()),
            sample_checksum(c.as_array().unwrap())
        );
    }

    #[tokio::test]
    async fn downloads_are_hashed_and_checked() {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from_static(b"te")), Ok(Bytes::from_static(b"st"))];
        let mut sink: Vec<u8> = Vec::new();
        let (n, sha) = copy_hashed(futures_util::stream::iter(chunks), &mut sink)
            .await
            .unwrap();
        assert_eq!((n, sink.as_slice()), (4, &b"test"[..]));
        assert_eq!(
            sha,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        let listed = SnapshotDescription {
            name: "c.snapshot".into(),
            creation_time: None,
            size: 4,
            checksum: Some(sha.to_uppercase()),
        };
        assert!(check_download(&listed, n, &sha, "x").unwrap());
        let wrong = SnapshotDescription {
            checksum: Some("0".repeat(64)),
            ..listed.clone()
        };
        let e = check_download(&wrong, n, &sha, "snapshot collection `c`").unwrap_err();
        assert!(matches!(e, DbError::Checksum { .. }));
        assert!(e.to_string().contains("c.snapshot"), "{e}");
        let short = SnapshotDescription {
            size: 5,
            ..listed.clone()
        };
        assert!(check_download(&short, n, &sha, "x").is_err());
        // A stream that breaks off.
        let broken: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"te")),
            Err(std::io::Error::other("reset")),
        ];
        let mut sink: Vec<u8> = Vec::new();
        assert!(matches!(
            copy_hashed(futures_util::stream::iter(broken), &mut sink).await,
            Err(CopyError::Source(m)) if m == "reset"
        ));
    }

    #[test]
    fn fingerprint_compare_names_collections() {
        let fp = |points: u64, size: u64, sample: &str| QdrantCollectionFingerprint {
            points,
            vectors: BTreeMap::from([(
                "fast-all-minilm-l6-v2".to_string(),
                QdrantVector {
                    size,
                    distance: "Cosine".into(),
                },
            )]),
            sparse_vectors: BTreeSet::new(),
            sample: sample.into(),
            sample_points: 256,
        };
        let a = QdrantFingerprint {
            collections: BTreeMap::from([("AgentMemories".to_string(), fp(10000, 384, "s"))]),
        };
        assert!(a.compare(&a).is_empty());
        let b = QdrantFingerprint {
            collections: BTreeMap::from([("AgentMemories".to_string(), fp(9999, 768, "s"))]),
        };
        let m: Vec<String> = a.compare(&b).iter().map(|m| m.to_string()).collect();
        assert_eq!(
            m,
            vec![
                "qdrant collection `AgentMemories` points: 10000 at backup, 9999 now",
                "qdrant collection `AgentMemories` vector `fast-all-minilm-l6-v2` size: 384 at backup, 768 now",
            ]
        );
        let c = QdrantFingerprint::default();
        assert_eq!(
            a.compare(&c)[0].to_string(),
            "qdrant collection `AgentMemories`: present at backup, missing now"
        );
    }
}

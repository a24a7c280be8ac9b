//! S3 through aws-sdk-s3, built to work with MinIO, Garage and Ceph as well as AWS:
//! path-style addressing, a custom endpoint, and checksums only where an operation requires
//! them (since aws-sdk-s3 1.69 the SDK adds CRC32 headers and aws-chunked trailers by
//! default, which MinIO, Ceph and Garage reject for streaming bodies; we keep our own
//! SHA-256 of every object instead).
//!
//! No aws-config: the client is built from `drctl.yml` and the standard AWS variables
//! directly, which keeps the dependency tree to one HTTP stack and means nothing reads
//! profiles behind our back. `AWS_CA_BUNDLE` is honoured for https endpoints only (MinIO
//! with its own CA); plain-http endpoints work whatever the environment says about TLS.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkBody;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use drctl_core::source::Env;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use jiff::Timestamp;

use super::{
    check_key, Backend, ByteStream, ObjectInfo, Part, PartPlan, PartStream, PendingUpload,
};
use crate::error::{RepoError, Result};

/// S3's smallest part (all but the last).
pub const MIN_PART: usize = 5 << 20;
/// S3's largest part.
pub const MAX_PART: usize = 5 << 30;
/// S3's most parts per object.
pub const MAX_PARTS: u32 = 10_000;
/// The default part size, 8 MiB: small enough that the process-wide upload budget (8
/// parts by default) costs 64 MiB. With a size hint, objects up to about 70 GiB keep it
/// (larger ones get parts that fit 9,000 of them); without one, parts double every 2,000
/// (16 GiB at 8 MiB, then 16, 32, 64 and 128 MiB parts), so an object of unknown size can
/// reach about 484 GiB.
pub const DEFAULT_PART: usize = 8 << 20;
/// Hard cap on concurrent part uploads, whatever the producer hands over.
const MAX_INFLIGHT: usize = 16;

/// How to reach a bucket.
#[derive(Clone)]
pub struct S3Settings {
    /// `http(s)://host:port`; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub credentials: Credentials,
    /// The size of the first parts (at least 5 MiB).
    pub part_size: usize,
    pub connect_timeout: Duration,
    /// One attempt of one request (up to the response headers for downloads).
    pub attempt_timeout: Duration,
    /// Attempts per request (the SDK's standard retry with backoff).
    pub max_attempts: u32,
    /// How long to keep trying to abort a failed multipart upload (the server may be back
    /// after a blip); what is still left then is removed by prune.
    pub abort_retry_for: Duration,
    /// Extra CA certificates (PEM) for an https endpoint, from `AWS_CA_BUNDLE`.
    pub ca_bundle: Option<Vec<u8>>,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.credentials.access_key_id())
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// Settings with defaults for everything but where and who.
    pub fn new(
        endpoint: Option<String>,
        region: impl Into<String>,
        bucket: impl Into<String>,
        credentials: Credentials,
    ) -> S3Settings {
        S3Settings {
            endpoint,
            region: region.into(),
            bucket: bucket.into(),
            credentials,
            part_size: DEFAULT_PART,
            connect_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(300),
            max_attempts: 3,
            abort_retry_for: Duration::from_secs(30),
            ca_bundle: None,
        }
    }

    /// From `drctl.yml`'s repository section and the environment: endpoint (else
    /// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`), region (else `AWS_REGION` /
    /// `AWS_DEFAULT_REGION`, else us-east-1), credentials (the named file's profile
    /// `AWS_PROFILE` or `default`, else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
    /// `AWS_SESSION_TOKEN`).
    pub fn from_config(
        repo: &drctl_core::config::Repository,
        bucket: &str,
        base: &Path,
        env: Env,
    ) -> Result<S3Settings> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let endpoint = nonempty(repo.endpoint.clone())
            .or_else(|| nonempty(env("AWS_ENDPOINT_URL_S3")))
            .or_else(|| nonempty(env("AWS_ENDPOINT_URL")))
            .map(|e| e.trim().trim_end_matches('/').to_string());
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(RepoError::Config(format!(
                    "the S3 endpoint `{e}` is not an http:// or https:// URL; write it like http://127.0.0.1:9000"
                )));
            }
        }
        let region = nonempty(repo.region.clone())
            .or_else(|| nonempty(env("AWS_REGION")))
            .or_else(|| nonempty(env("AWS_DEFAULT_REGION")))
            .unwrap_or_else(|| "us-east-1".into());
        let shown = endpoint.clone().unwrap_or_else(|| "AWS S3".into());
        let credentials = match &repo.credentials_file {
            Some(file) => {
                let path = if file.is_absolute() {
                    file.clone()
                } else {
                    base.join(file)
                };
                let profile = nonempty(env("AWS_PROFILE")).unwrap_or_else(|| "default".into());
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    RepoError::MissingCredentials {
                        endpoint: shown.clone(),
                        detail: format!(
                            "failed to read the credentials file {} ({e}); fix `repository.credentials_file`",
                            path.display()
                        ),
                    }
                })?;
                parse_credentials_file(&text, &profile).ok_or_else(|| {
                    RepoError::MissingCredentials {
                        endpoint: shown.clone(),
                        detail: format!(
                            "the credentials file {} has no profile [{profile}] with aws_access_key_id and aws_secret_access_key",
                            path.display()
                        ),
                    }
                })?
            }
            None => match (
                nonempty(env("AWS_ACCESS_KEY_ID")),
                nonempty(env("AWS_SECRET_ACCESS_KEY")),
            ) {
                (Some(id), Some(secret)) => {
                    Credentials::new(id, secret, nonempty(env("AWS_SESSION_TOKEN")), None, "env")
                }
                _ => {
                    return Err(RepoError::MissingCredentials {
                        endpoint: shown,
                        detail: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set and drctl.yml names no `repository.credentials_file`".into(),
                    })
                }
            },
        };
        let ca_bundle = match (&endpoint, nonempty(env("AWS_CA_BUNDLE"))) {
            (Some(e), Some(file)) if e.starts_with("https://") => {
                Some(std::fs::read(&file).map_err(|err| {
                    RepoError::Config(format!(
                        "AWS_CA_BUNDLE names {file}, which cannot be read ({err}); fix or unset it"
                    ))
                })?)
            }
            _ => None,
        };
        let mut s = S3Settings::new(endpoint, region, bucket, credentials);
        s.ca_bundle = ca_bundle;
        Ok(s)
    }
}

/// The named profile of an AWS-style credentials file (INI: `[name]`, `key = value`).
pub fn parse_credentials_file(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_profile = name == profile || name.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials::new(id?, secret?, token, None, "file"))
}

/// A bucket.
#[derive(Clone)]
pub struct S3Backend {
    client: Client,
    bucket: String,
    endpoint: String,
    part_size: usize,
    abort_retry_for: Duration,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    pub fn new(s: S3Settings) -> Result<S3Backend> {
        if s.part_size < MIN_PART || s.part_size > MAX_PART {
            return Err(RepoError::Config(format!(
                "the S3 part size {} is outside S3's limits (5 MiB to 5 GiB)",
                s.part_size
            )));
        }
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(s.connect_timeout)
            .operation_attempt_timeout(s.attempt_timeout)
            .build();
        let mut b = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(s.region.clone()))
            .credentials_provider(s.credentials.clone())
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(s.max_attempts.max(1)));
        if let Some(e) = &s.endpoint {
            b = b.endpoint_url(e.clone());
        }
        if let Some(pem) = &s.ca_bundle {
            use aws_smithy_http_client::tls;
            let ctx = tls::TlsContext::builder()
                .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem.clone()))
                .build()
                .map_err(|e| RepoError::Config(format!("the CA bundle is not usable: {e}")))?;
            let client = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .tls_context(ctx)
                .build_https();
            b = b.http_client(client);
        }
        Ok(S3Backend {
            client: Client::from_conf(b.build()),
            endpoint: s
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", s.region)),
            bucket: s.bucket,
            part_size: s.part_size,
            abort_retry_for: s.abort_retry_for,
        })
    }

    /// The SDK client, for tests and tools that need a call the trait does not have.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Turn an SDK error into one of our kinds.
    fn classify<E>(&self, op: &str, key: Option<&str>, err: SdkError<E, HttpResponse>) -> RepoError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let endpoint = self.endpoint.clone();
        let bucket = self.bucket.clone();
        let (status, code, message) = match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                return RepoError::Unreachable {
                    endpoint,
                    detail: short_chain(&err),
                }
            }
            SdkError::ServiceError(se) => (
                Some(se.raw().status().as_u16()),
                se.err().code().map(str::to_string),
                se.err().message().map(str::to_string),
            ),
            SdkError::ResponseError(re) => (Some(re.raw().status().as_u16()), None, None),
            _ => (None, None, None),
        };
        let detail = match (&code, &message, status) {
            (Some(c), Some(m), Some(s)) => format!("{c}: {m} (HTTP {s})"),
            (Some(c), None, Some(s)) => format!("{c} (HTTP {s})"),
            (None, _, Some(s)) => format!("HTTP {s}"),
            _ => short_chain(&err),
        };
        match code.as_deref() {
            Some("NoSuchBucket") => return RepoError::MissingBucket { endpoint, bucket },
            Some(
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "InvalidToken"
                | "ExpiredToken"
                | "InvalidSignature",
            ) => {
                return RepoError::BadCredentials {
                    endpoint,
                    bucket,
                    detail,
                }
            }
            Some("NoSuchKey") => {
                return RepoError::ObjectMissing {
                    set: None,
                    key: key.unwrap_or_default().to_string(),
                }
            }
            _ => {}
        }
        if status == Some(403) {
            return RepoError::BadCredentials {
                endpoint,
                bucket,
                detail,
            };
        }
        RepoError::S3 {
            op: match key {
                Some(k) => format!("{op} `{k}` in bucket `{bucket}`"),
                None => format!("{op} in bucket `{bucket}`"),
            },
            endpoint,
            detail,
        }
    }

    async fn put_single(&self, key: &str, data: Bytes) -> Result<u64> {
        let len = data.len() as u64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(len as i64)
            .body(SdkBody::from(data))
            .send()
            .await
            .map_err(|e| self.classify("upload", Some(key), e))?;
        Ok(len)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: u32,
        part: Part,
    ) -> Result<CompletedPart> {
        let len = part.data.len() as i64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(n as i32)
            .content_length(len)
            .body(SdkBody::from(part.data.clone()))
            .send()
            .await
            .map_err(|e| self.classify(&format!("upload part {n} of"), Some(key), e))?;
        // The part's memory (and its permit) is released here, after the server has it.
        drop(part);
        Ok(CompletedPart::builder()
            .part_number(n as i32)
            .set_e_tag(out.e_tag().map(str::to_string))
            .build())
    }

    /// Upload parts as they come, several at once (the producer's permits bound how many).
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: [Part; 2],
        mut parts: PartStream<'_>,
    ) -> Result<(Vec<CompletedPart>, u64)> {
        let mut inflight = FuturesUnordered::new();
        let mut done = Vec::new();
        let mut n = 0u32;
        let mut total = 0u64;
        for p in first {
            n += 1;
            total += p.data.len() as u64;
            inflight.push(self.upload_part(key, upload_id, n, p));
        }
        let mut stream_done = false;
        loop {
            if stream_done && inflight.is_empty() {
                break;
            }
            let can_take = !stream_done && inflight.len() < MAX_INFLIGHT;
            tokio::select! {
                Some(r) = inflight.next(), if !inflight.is_empty() => done.push(r?),
                item = parts.next(), if can_take => match item {
                    None => stream_done = true,
                    Some(Err(e)) => return Err(e),
                    Some(Ok(p)) => {
                        n += 1;
                        if n > MAX_PARTS {
                            return Err(RepoError::TooLarge {
                                key: key.to_string(),
                                limit: total,
                                parts: MAX_PARTS,
                            });
                        }
                        total += p.data.len() as u64;
                        inflight.push(self.upload_part(key, upload_id, n, p));
                    }
                },
            }
        }
        done.sort_by_key(|p| p.part_number());
        Ok((done, total))
    }

    /// Abort a multipart upload, retrying for a while: after a server blip the first tries
    /// fail too. Returns why it could not.
    async fn abort_upload(&self, key: &str, upload_id: &str) -> std::result::Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.abort_retry_for;
        let mut delay = Duration::from_millis(250);
        loop {
            match self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => {
                    if let SdkError::ServiceError(se) = &e {
                        if se.err().code() == Some("NoSuchUpload") {
                            return Ok(());
                        }
                    }
                    if tokio::time::Instant::now() + delay > deadline {
                        return Err(self
                            .classify("abort the upload of", Some(key), e)
                            .to_string());
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(4));
                }
            }
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        first: [Part; 2],
        parts: PartStream<'_>,
    ) -> Result<u64> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify("start the upload of", Some(key), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| RepoError::S3 {
                op: format!("start the upload of `{key}`"),
                endpoint: self.endpoint.clone(),
                detail: "the server returned no upload id".into(),
            })?
            .to_string();
        let mut guard = AbortOnDrop {
            backend: Some(self.clone()),
            key: key.to_string(),
            upload_id: upload_id.clone(),
        };
        let result = async {
            let (done, total) = self.upload_parts(key, &upload_id, first, parts).await?;
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(done))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.classify("complete the upload of", Some(key), e))?;
            Ok(total)
        }
        .await;
        guard.backend = None;
        if result.is_err() {
            if let Err(why) = self.abort_upload(key, &upload_id).await {
                tracing::warn!(
                    key,
                    upload_id = upload_id.as_str(),
                    "could not abort the failed multipart upload ({why}); `drctl backups prune` removes it later"
                );
            }
        }
        result
    }
}

/// Aborts the multipart upload if the put future is dropped half-way (cancellation).
struct AbortOnDrop {
    backend: Option<S3Backend>,
    key: String,
    upload_id: String,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(b) = self.backend.take() {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                let key = std::mem::take(&mut self.key);
                let id = std::mem::take(&mut self.upload_id);
                h.spawn(async move {
                    let _ = b.abort_upload(&key, &id).await;
                });
            }
        }
    }
}

/// An error and its causes on one line ("dispatch failure: io error: ...: Connection
/// refused (os error 111)"), without the SDK's Debug dumps.
fn short_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

fn ts(d: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<Timestamp> {
    d.and_then(|d| Timestamp::new(d.secs(), d.subsec_nanos() as i32).ok())
}

#[async_trait]
impl Backend for S3Backend {
    fn describe(&self) -> String {
        format!("s3://{} at {}", self.bucket, self.endpoint)
    }

    fn part_plan(&self, size_hint: Option<u64>) -> PartPlan {
        const MIB: u64 = 1 << 20;
        match size_hint {
            Some(h) => {
                // Room for the hint in 9,000 parts; the last 1,000 parts double as a margin.
                let need = h.div_ceil(9_000).div_ceil(MIB) * MIB;
                PartPlan {
                    size: (self.part_size as u64).max(need).min(MAX_PART as u64) as usize,
                    grow_every: Some(9_000),
                    max_parts: Some(MAX_PARTS),
                }
            }
            None => PartPlan {
                size: self.part_size,
                grow_every: Some(2_000),
                max_parts: Some(MAX_PARTS),
            },
        }
    }

    async fn put(&self, key: &str, mut parts: PartStream<'_>) -> Result<u64> {
        check_key(key)?;
        let Some(first) = parts.next().await.transpose()? else {
            return self.put_single(key, Bytes::new()).await;
        };
        let Some(second) = parts.next().await.transpose()? else {
            // One part: a single PutObject, no multipart bookkeeping.
            return self.put_single(key, first.data.clone()).await;
        };
        self.put_multipart(key, [first, second], parts).await
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        check_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify("download", Some(key), e))?;
        let state = (out.body, key.to_string(), self.endpoint.clone());
        let stream = futures_util::stream::try_unfold(state, |(mut body, key, endpoint)| async {
            match body.try_next().await {
                Ok(Some(b)) => Ok(Some((b, (body, key, endpoint)))),
                Ok(None) => Ok(None),
                Err(e) => Err(RepoError::Unreachable {
                    detail: format!("the download of `{key}` broke off: {}", short_chain(&e)),
                    endpoint,
                }),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        check_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(self.classify("look up", Some(key), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify("list", Some(prefix), e))?;
            for o in page.contents() {
                if let Some(key) = o.key() {
                    out.push(ObjectInfo {
                        key: key.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        modified: ts(o.last_modified()),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify("delete", Some(key), e))?;
        Ok(())
    }

    async fn list_pending(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.classify("list unfinished uploads", Some(prefix), e))?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    out.push(PendingUpload {
                        key: k.to_string(),
                        upload_id: id.to_string(),
                        started: ts(u.initiated()),
                    });
                }
            }
            let next = (
                page.next_key_marker().map(str::to_string),
                page.next_upload_id_marker().map(str::to_string),
            );
            if page.is_truncated() != Some(true) || (next.0.is_none() && next.1.is_none()) {
                break;
            }
            if next == (key_marker.clone(), id_marker.clone()) {
                break;
            }
            (key_marker, id_marker) = next;
        }
        Ok(out)
    }

    async fn abort_pending(&self, pending: &PendingUpload) -> Result<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&pending.key)
            .upload_id(&pending.upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(se)) if se.err().code() == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(self.classify("abort the upload of", Some(&pending.key), e)),
        }
    }

    async fn check(&self, prefix: &str) -> Result<()> {
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.classify("list", Some(prefix), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file() {
        let text = "# comment\n[other]\naws_access_key_id = A\naws_secret_access_key = OTHERSECRET\n\n[default]\naws_access_key_id=ID\naws_secret_access_key = SECRET\naws_session_token = TOK\n";
        let c = parse_credentials_file(text, "default").unwrap();
        assert_eq!(c.access_key_id(), "ID");
        assert_eq!(c.secret_access_key(), "SECRET");
        assert_eq!(c.session_token(), Some("TOK"));
        let c = parse_credentials_file(text, "other").unwrap();
        assert_eq!(c.access_key_id(), "A");
        assert!(parse_credentials_file(text, "nope").is_none());
        // The secret never shows in Debug output.
        assert!(!format!("{c:?}").contains("OTHERSECRET"), "{c:?}");
    }

    #[test]
    fn settings_debug_hides_secret() {
        let s = S3Settings::new(
            Some("http://127.0.0.1:9".into()),
            "r",
            "b",
            Credentials::new("AKID", "VERYSECRET", None, None, "t"),
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("VERYSECRET"), "{shown}");
        let b = S3Backend::new(s).unwrap();
        assert!(!format!("{b:?}").contains("VERYSECRET"));
        // A known size picks parts that fit it in 9,000 parts.
        let tib = 1u64 << 40;
        let p = b.part_plan(Some(tib));
        assert_eq!(p.size, 117 << 20);
        assert!(p.capacity() >= tib);
        assert_eq!(b.part_plan(Some(1 << 30)).size, DEFAULT_PART);
        // The default part size holds a 70 GiB hint in 9,000 parts; past that parts grow.
        assert_eq!(b.part_plan(Some(70 << 30)).size, DEFAULT_PART);
        assert_eq!(b.part_plan(Some(71 << 30)).size, 9 << 20);
        let p = b.part_plan(None);
        assert_eq!((p.size, p.max_parts), (DEFAULT_PART, Some(MAX_PARTS)));
        assert!(p.capacity() > 480 * (1 << 30));
        for hint in [0, 1 << 20, 100 << 30, 5 << 40] {
            let p = b.part_plan(Some(hint));
            assert!(p.size >= MIN_PART && p.max_parts == Some(MAX_PARTS));
            assert!(p.capacity() >= hint, "{hint}: {p:?}");
        }
    }

    #[test]
    fn ca_bundle_only_for_https() {
        let dir = std::env::temp_dir().join(format!("drctl-ca-{}", std::process::id()));
        std::fs::write(&dir, b"-----BEGIN CERTIFICATE-----\n").unwrap();
        let ca = dir.display().to_string();
        let env = |k: &str| match k {
            "AWS_CA_BUNDLE" => Some(ca.clone()),
            "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => Some("x".into()),
            _ => None,
        };
        let repo = |endpoint: &str| drctl_core::config::Repository {
            url: "s3://b/p".into(),
            endpoint: Some(endpoint.into()),
            region: None,
            credentials_file: None,
            encryption: None,
        };
        let base = Path::new(".");
        let s = S3Settings::from_config(&repo("http://127.0.0.1:9000"), "b", base, &env).unwrap();
        assert!(s.ca_bundle.is_none());
        assert_eq!(s.region, "us-east-1");
        let s = S3Settings::from_config(&repo("https://minio:9000"), "b", base, &env).unwrap();
        assert!(s.ca_bundle.is_some());
        let missing = |k: &str| match k {
            "AWS_CA_BUNDLE" => Some("/nonexistent/ca.pem".into()),
            _ => env(k),
        };
        let e =
            S3Settings::from_config(&repo("https://minio:9000"), "b", base, &missing).unwrap_err();
        assert!(e.to_string().contains("AWS_CA_BUNDLE"), "{e}");
        let e = S3Settings::from_config(&repo("minio:9000"), "b", base, &env).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        std::fs::remove_file(&dir).unwrap();
    }
}

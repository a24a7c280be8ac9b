//! Helpers for the repository tests: the S3 server's settings (or a recorded skip), data
//! generators that stream without holding the data, hashing readers, a private Garage.
#![allow(dead_code)]

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use drctl_repo::backend::Backend;
use drctl_repo::{Key, Options, Repository, S3Backend, S3Settings};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

pub const MIB: u64 = 1 << 20;

/// Record a skipped suite where scripts/test.sh prints it at the end.
pub fn skipped(suite: &str, reason: &str) {
    eprintln!("SKIPPED {suite}: {reason}");
    let file = std::env::var("DRCTL_SKIPPED_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache_dir().join("skipped.txt"));
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
    {
        // One write call: O_APPEND keeps lines from parallel tests whole.
        let _ = f.write_all(format!("{suite}: {reason}\n").as_bytes());
    }
}

pub fn cache_dir() -> PathBuf {
    std::env::var("DRCTL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/drctl")
        })
}

fn lab() -> bool {
    std::env::var("DRCTL_LAB").as_deref() == Ok("1")
}

/// The shared S3 server of scripts/s3-server.sh.
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

/// The S3 server's settings; without them the suite fails under DRCTL_LAB=1 and is
/// skipped (and recorded) otherwise.
pub fn s3_env(suite: &str) -> Option<S3Env> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match var("DRCTL_S3_ENDPOINT") {
        Some(endpoint) => Some(S3Env {
            endpoint,
            bucket: var("DRCTL_S3_BUCKET").unwrap_or_else(|| "drctl-test".into()),
            region: var("DRCTL_S3_REGION")
                .or_else(|| var("AWS_REGION"))
                .unwrap_or_else(|| "garage".into()),
            access_key: var("AWS_ACCESS_KEY_ID")
                .expect("AWS_ACCESS_KEY_ID is set with DRCTL_S3_ENDPOINT"),
            secret_key: var("AWS_SECRET_ACCESS_KEY")
                .expect("AWS_SECRET_ACCESS_KEY is set with DRCTL_S3_ENDPOINT"),
        }),
        None => {
            let how = "start one with `bash scripts/s3-server.sh start` and `eval \"$(bash scripts/s3-server.sh env)\"`";
            if lab() {
                panic!("{suite}: DRCTL_LAB=1 but DRCTL_S3_ENDPOINT is unset; {how}");
            }
            skipped(suite, &format!("DRCTL_S3_ENDPOINT is unset ({how})"));
            None
        }
    }
}

impl S3Env {
    pub fn settings(&self) -> S3Settings {
        let mut s = S3Settings::new(
            Some(self.endpoint.clone()),
            self.region.clone(),
            self.bucket.clone(),
            aws_sdk_s3::config::Credentials::new(
                self.access_key.clone(),
                self.secret_key.clone(),
                None,
                None,
                "test",
            ),
        );
        s.part_size = 5 * MIB as usize;
        s.attempt_timeout = Duration::from_secs(60);
        s
    }
    pub fn backend(&self) -> Arc<S3Backend> {
        Arc::new(S3Backend::new(self.settings()).expect("valid settings"))
    }
}

/// A prefix no other test (or earlier run) uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("drctl-test-{}-{name}-{nanos:08x}", std::process::id())
}

/// Delete everything under `prefix` (and its unfinished uploads), and what test runs that
/// died left behind (prefixes `drctl-test-<pid>-` of processes that are gone).
pub async fn cleanup(b: &dyn Backend, prefix: &str) {
    for o in b.list(prefix).await.unwrap_or_default() {
        let _ = b.delete(&o.key).await;
    }
    for p in b.list_pending(prefix).await.unwrap_or_default() {
        let _ = b.abort_pending(&p).await;
    }
    let dead = |key: &str| {
        key.strip_prefix("drctl-test-")
            .and_then(|r| r.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    for o in b.list("drctl-test-").await.unwrap_or_default() {
        if dead(&o.key) {
            let _ = b.delete(&o.key).await;
        }
    }
    for p in b.list_pending("drctl-test-").await.unwrap_or_default() {
        if dead(&p.key) {
            let _ = b.abort_pending(&p).await;
        }
    }
}

pub fn test_opts() -> Options {
    Options {
        part_size: 5 * MIB as usize,
        ..Options::default()
    }
}

pub fn repo_on(b: Arc<dyn Backend>, prefix: &str, key: Option<Key>, opts: Options) -> Repository {
    Repository::from_backend(b, prefix, key, opts)
}

pub fn new_key() -> Key {
    Key::parse(&Key::generate(), "test").unwrap()
}

/// A marker that appears all through generated "text": it must never be found in the
/// stored bytes of an encrypted set.
pub const MARKER: &[u8] = b"DRCTL-PLAINTEXT-MARKER-7f3a";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// Incompressible.
    Random,
    /// Very compressible text carrying [`MARKER`].
    Text,
    /// 1 MiB blocks, alternately random and text.
    Mixed,
}

/// The SHA-256 and length of everything a [`Gen`] produced, once it reached its end.
pub type Digest256 = Arc<Mutex<Option<(u64, String)>>>;

/// A deterministic data source of `len` bytes that holds nothing but its position, and
/// hashes what it hands out. `hook` runs once after `at` bytes were produced.
pub struct Gen {
    len: u64,
    pos: u64,
    state: u64,
    content: Content,
    hasher: Sha256,
    pub digest: Digest256,
    hook: Option<(u64, Box<dyn FnOnce() + Send>)>,
    text: Vec<u8>,
}

impl Gen {
    pub fn new(len: u64, content: Content, seed: u64) -> Gen {
        let mut text = Vec::new();
        let mut i = 0;
        while text.len() < 4096 {
            text.extend_from_slice(MARKER);
            text.extend_from_slice(
                format!(" line {i}: the quick brown fox jumps over the lazy dog\n").as_bytes(),
            );
            i += 1;
        }
        Gen {
            len,
            pos: 0,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            content,
            hasher: Sha256::new(),
            digest: Arc::new(Mutex::new(None)),
            hook: None,
            text,
        }
    }
    pub fn with_hook(mut self, at: u64, f: impl FnOnce() + Send + 'static) -> Gen {
        self.hook = Some((at, Box::new(f)));
        self
    }
    fn random_block(&self, pos: u64) -> bool {
        match self.content {
            Content::Random => true,
            Content::Text => false,
            Content::Mixed => (pos / MIB).is_multiple_of(2),
        }
    }
}

impl AsyncRead for Gen {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let left = this.len - this.pos;
        if left == 0 {
            let mut d = this.digest.lock().unwrap();
            if d.is_none() {
                *d = Some((
                    this.len,
                    hex::encode(std::mem::take(&mut this.hasher).finalize()),
                ));
            }
            return Poll::Ready(Ok(()));
        }
        // Never cross a 1 MiB block boundary in one read.
        let to_block = MIB - this.pos % MIB;
        let n = (buf.remaining() as u64)
            .min(left)
            .min(to_block)
            .min(64 * 1024) as usize;
        let mut chunk = vec![0u8; n];
        if this.random_block(this.pos) {
            for w in chunk.chunks_mut(8) {
                // xorshift64*
                this.state ^= this.state >> 12;
                this.state ^= this.state << 25;
                this.state ^= this.state >> 27;
                let v = this.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                w.copy_from_slice(&v[..w.len()]);
            }
        } else {
            let t = this.text.len();
            let mut off = (this.pos % t as u64) as usize;
            let mut filled = 0;
            while filled < n {
                let k = (t - off).min(n - filled);
                chunk[filled..filled + k].copy_from_slice(&this.text[off..off + k]);
                filled += k;
                off = 0;
            }
        }
        this.hasher.update(&chunk);
        buf.put_slice(&chunk);
        this.pos += n as u64;
        if let Some((at, _)) = &this.hook {
            if this.pos >= *at {
                let (_, f) = this.hook.take().unwrap();
                f();
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Read a stream to its end, returning (length, SHA-256) or the error it ended with.
pub async fn hash_reader<R: AsyncRead + Unpin>(mut r: R) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let k = r.read(&mut buf).await?;
        if k == 0 {
            return Ok((n, hex::encode(h.finalize())));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

/// Does the stored object contain `needle`? (Streams; keeps an overlap between chunks.)
pub async fn object_contains(b: &dyn Backend, key: &str, needle: &[u8]) -> bool {
    use futures_util::StreamExt;
    let mut s = b.get(key).await.expect("object readable");
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.expect("download");
        tail.extend_from_slice(&chunk);
        if tail.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let keep = needle.len().saturating_sub(1).min(tail.len());
        tail.drain(..tail.len() - keep);
    }
    false
}

/// Read a whole (small) object.
pub async fn read_object(b: &dyn Backend, key: &str) -> Vec<u8> {
    drctl_repo::backend::get_bytes(b, key, 1 << 30)
        .await
        .expect("object readable")
}

/// Replace an object's content.
pub async fn write_object(b: &dyn Backend, key: &str, data: Vec<u8>) {
    drctl_repo::backend::put_bytes(b, key, data.into())
        .await
        .expect("object written");
}

// ---------------------------------------------------------------------------------------
// A private Garage server, for tests that stop it.

pub struct Garage {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub config: PathBuf,
    pub s3_port: u16,
    pub child: Option<std::process::Child>,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn garage_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DRCTL_GARAGE") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let cached = cache_dir().join("garage/bin/garage");
    if cached.is_file() {
        return Some(cached);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    })
}

impl Garage {
    /// Start a private single-node Garage with its own ports and a bucket `drctl-private`.
    pub fn start(suite: &str) -> Option<Garage> {
        let Some(bin) = garage_binary() else {
            let how =
                "build it with `bash scripts/s3-server.sh start` (cached in $DRCTL_CACHE/garage)";
            if lab() {
                panic!("{suite}: DRCTL_LAB=1 but no garage binary was found; {how}");
            }
            skipped(suite, &format!("no garage binary ({how})"));
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let s3_port = free_port();
        let rpc_port = free_port();
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).unwrap();
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{s}\"\n\n[s3_api]\napi_bind_addr = \"127.0.0.1:{s3_port}\"\ns3_region = \"garage\"\n",
                d = dir.path().display(),
                s = hex::encode(secret)
            ),
        )
        .unwrap();
        let mut g = Garage {
            dir,
            bin,
            config,
            s3_port,
            child: None,
            key_id: String::new(),
            secret: String::new(),
            bucket: "drctl-private".into(),
        };
        g.spawn();
        let node = g.cli_retry(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_string();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli_retry(&["bucket", "list"]);
        g.cli(&["key", "create", "drctl-private"]);
        g.key_id = g
            .cli(&["key", "info", "drctl-private", "--key-id"])
            .trim()
            .to_string();
        g.secret = g
            .cli(&["key", "info", "drctl-private", "--secret-key"])
            .trim()
            .to_string();
        g.cli(&["bucket", "create", "drctl-private"]);
        g.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            "drctl-private",
            "--key",
            "drctl-private",
        ]);
        g.wait_s3();
        Some(g)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn settings(&self) -> S3Settings {
        let mut s = S3Settings::new(
            Some(self.endpoint()),
            "garage",
            self.bucket.clone(),
            aws_sdk_s3::config::Credentials::new(
                self.key_id.clone(),
                self.secret.clone(),
                None,
                None,
                "test",
            ),
        );
        s.part_size = 5 * MIB as usize;
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("garage.log"))
            .unwrap();
        let child = std::process::Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("garage starts");
        self.child = Some(child);
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("garage cli runs");
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cli_retry(&self, args: &[&str]) -> String {
        for _ in 0..120 {
            let out = std::process::Command::new(&self.bin)
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .output()
                .expect("garage cli runs");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "garage {args:?} did not succeed within 30s; log: {}",
            std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
        );
    }

    fn wait_s3(&self) {
        for _ in 0..120 {
            if std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("garage's S3 port did not open");
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL: the server dies with requests in flight.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: the server freezes (connections hang) and thaws.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.cli_retry(&["bucket", "list"]);
        self.wait_s3();
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen server would not die from SIGTERM; SIGKILL works either way.
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill();
    }
}

//! The process-wide upload budget: many uploads at once, a budget of two or three parts,
//! and a store that (like S3) holds each object's first part until it sees whether a second
//! one follows. Every upload must finish (a deadlock fails the test through its timeout,
//! the runtime is shut down with a timeout too, so nothing hangs), no more parts than the
//! budget may be alive in the store at once, and the data must read back unchanged.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use drctl_repo::backend::{
    Backend, ByteStream, ObjectInfo, Part, PartPlan, PartStream, PendingUpload,
};
use drctl_repo::{ItemSpec, Options, Repository};
use futures_util::StreamExt;

/// A local folder behind S3's manners: 64 KiB parts, the first part held until the second
/// one (or the end) arrives, a little latency per part; counts the parts it holds.
#[derive(Debug)]
struct HoldingBackend {
    inner: drctl_repo::LocalBackend,
    held: AtomicUsize,
    most_held: AtomicUsize,
}

impl HoldingBackend {
    fn new(dir: &std::path::Path) -> HoldingBackend {
        HoldingBackend {
            inner: drctl_repo::LocalBackend::new(dir),
            held: AtomicUsize::new(0),
            most_held: AtomicUsize::new(0),
        }
    }

    fn take(&self) {
        let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_held.fetch_max(now, Ordering::SeqCst);
    }

    fn store(&self, part: Part, out: &mut Vec<u8>) {
        out.extend_from_slice(&part.data);
        // The part (and its permits) is gone once counted down.
        self.held.fetch_sub(1, Ordering::SeqCst);
        drop(part);
    }
}

#[async_trait]
impl Backend for HoldingBackend {
    fn describe(&self) -> String {
        format!("holding {}", self.inner.describe())
    }
    fn part_plan(&self, _size_hint: Option<u64>) -> PartPlan {
        PartPlan {
            size: 64 * 1024,
            grow_every: None,
            max_parts: None,
        }
    }
    async fn put(&self, key: &str, mut parts: PartStream<'_>) -> drctl_repo::Result<u64> {
        let mut data = Vec::new();
        if let Some(first) = parts.next().await.transpose()? {
            self.take();
            // Hold the first part until the next one (or the end) shows up.
            let second = parts.next().await.transpose()?;
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.store(first, &mut data);
            if let Some(second) = second {
                self.take();
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.store(second, &mut data);
                while let Some(p) = parts.next().await.transpose()? {
                    self.take();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    self.store(p, &mut data);
                }
            }
        }
        drctl_repo::backend::put_bytes(&self.inner, key, data.into()).await
    }
    async fn get(&self, key: &str) -> drctl_repo::Result<ByteStream> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> drctl_repo::Result<Option<u64>> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> drctl_repo::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> drctl_repo::Result<()> {
        self.inner.delete(key).await
    }
    async fn list_pending(&self, prefix: &str) -> drctl_repo::Result<Vec<PendingUpload>> {
        self.inner.list_pending(prefix).await
    }
    async fn abort_pending(&self, pending: &PendingUpload) -> drctl_repo::Result<()> {
        self.inner.abort_pending(pending).await
    }
    async fn check(&self, prefix: &str) -> drctl_repo::Result<()> {
        self.inner.check(prefix).await
    }
}

fn opts(budget: usize) -> Options {
    Options {
        upload_budget: budget,
        concurrency: 4,
        ..test_opts()
    }
}

/// `n` items of `size` bytes stored at once into one set, read back and compared; the
/// whole run must finish within `limit`.
async fn parallel_round_trip(repo: &Repository, n: usize, size: u64, limit: Duration) {
    let set = repo.begin_set("drctl-test", vec![]);
    let mut digests = Vec::new();
    let mut puts = Vec::new();
    for i in 0..n {
        // Random data: zstd keeps the size, so every object has several parts.
        let gen = Gen::new(size + i as u64 * 4099, Content::Random, i as u64);
        digests.push(gen.digest.clone());
        puts.push(set.put(
            ItemSpec::new(format!("item-{i}"), "volume", "generated"),
            gen,
        ));
    }
    let recs = tokio::time::timeout(limit, futures_util::future::join_all(puts))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{n} uploads with a budget of {} parts did not finish within {limit:?}: a deadlock",
                repo.options().upload_budget
            )
        });
    let recs: Vec<_> = recs.into_iter().map(Result::unwrap).collect();
    let m = set.finish().await.unwrap();
    for (rec, digest) in recs.iter().zip(&digests) {
        repo.check_item(&m, rec).await.unwrap();
        let out = hash_reader(repo.open_item(&m, rec).await.unwrap())
            .await
            .unwrap();
        assert_eq!(Some(out), digest.lock().unwrap().clone(), "{}", rec.name);
    }
    repo.delete_set(&m.id).await.unwrap();
}

/// Run `f` on its own runtime and shut it down with a timeout: a deadlocked encoder thread
/// must not hang the test binary.
fn run<F: std::future::Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f);
    rt.shutdown_timeout(Duration::from_secs(5));
}

#[test]
fn parallel_uploads_share_a_small_budget_without_deadlock() {
    run(async {
        for budget in [2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let b = Arc::new(HoldingBackend::new(dir.path()));
            let repo = repo_on(b.clone(), "", Some(new_key()), opts(budget));
            // Objects of one part: each must give back its second part's reserved permits,
            // or the next uploads could not start.
            for _ in 0..3 {
                parallel_round_trip(&repo, 6, 20_000, Duration::from_secs(60)).await;
            }
            // Objects of many parts (about 12 each).
            parallel_round_trip(&repo, 6, 750_000, Duration::from_secs(120)).await;
            let most = b.most_held.load(Ordering::SeqCst);
            assert!(
                most <= budget,
                "the store held {most} parts at once, the budget is {budget}"
            );
            assert_eq!(b.held.load(Ordering::SeqCst), 0);
        }
    });
}

#[test]
fn parallel_uploads_to_a_local_folder() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(drctl_repo::LocalBackend::new(dir.path()));
        let repo = repo_on(b, "", None, opts(3));
        // 1 MiB parts: about 3 each.
        parallel_round_trip(&repo, 6, 3 * MIB, Duration::from_secs(120)).await;
    });
}

#[test]
fn parallel_uploads_to_s3_share_a_small_budget() {
    let Some(env) = s3_env("drctl-repo s3 upload budget") else {
        return;
    };
    run(async {
        let prefix = unique_prefix("budget");
        let b: Arc<dyn Backend> = env.backend();
        let repo = repo_on(b.clone(), &prefix, Some(new_key()), opts(2));
        // 5 MiB parts: one part each, then three each.
        parallel_round_trip(&repo, 6, 200_000, Duration::from_secs(120)).await;
        parallel_round_trip(&repo, 6, 11 * MIB, Duration::from_secs(300)).await;
        cleanup(&*b, &prefix).await;
    });
}

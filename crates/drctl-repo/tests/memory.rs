//! Peak memory of a large stream, in a test binary of its own so that nothing else runs
//! beside it: the process's high-water mark (VmHWM) may grow by about `concurrency x part
//! size` plus codec state, never by the size of the data.

mod common;

use std::sync::Arc;

use common::*;
use drctl_repo::backend::Backend;
use drctl_repo::{ItemSpec, Options, Repository};

fn vm_hwm() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/self/status")
        * 1024
}

fn big_size() -> u64 {
    std::env::var("DRCTL_TEST_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
        * MIB
}

/// Back up and restore `size` bytes with the production defaults; returns the growth of
/// the high-water mark.
async fn peak(b: Arc<dyn Backend>, prefix: &str, what: &str) -> u64 {
    let size = big_size();
    let before = vm_hwm();
    let opts = Options {
        zstd_workers: std::env::var("DRCTL_TEST_ZSTD_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Options::default().zstd_workers),
        ..Options::default()
    };
    let repo = Repository::from_backend(b, prefix, Some(new_key()), opts);
    let mut set = repo.begin_set("drctl-test", vec![]);
    let gen = Gen::new(size, Content::Mixed, 3);
    let digest = gen.digest.clone();
    let rec = set.put(ItemSpec::new("big", "volume", "generated"), gen).await.unwrap();
    let m = set.finish().await.unwrap();
    let after_up = vm_hwm();
    let out = hash_reader(repo.open_item(&m, &rec).await.unwrap()).await.unwrap();
    assert_eq!(Some(out), digest.lock().unwrap().clone());
    let after_down = vm_hwm();
    repo.delete_set(&m.id).await.unwrap();
    eprintln!(
        "{what}: {} MiB through zstd+age: VmHWM {} MiB before, {} MiB after upload, {} MiB after download",
        size / MIB,
        before / MIB,
        after_up / MIB,
        after_down / MIB
    );
    after_down.saturating_sub(before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streams_use_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let local = peak(
        Arc::new(drctl_repo::LocalBackend::new(dir.path())),
        "",
        "local folder",
    )
    .await;
    // 4 x 1 MiB parts, channels, zstd and age state.
    assert!(local < 48 * MIB, "local peak grew by {} MiB", local / MIB);
    if let Some(env) = s3_env("drctl-repo s3 memory") {
        let prefix = unique_prefix("memory");
        let mut s = env.settings();
        s.part_size = Options::default().part_size;
        let b = Arc::new(drctl_repo::S3Backend::new(s).unwrap());
        let s3 = peak(b.clone(), &prefix, "garage S3").await;
        cleanup(&*b, &prefix).await;
        // 4 x 16 MiB parts plus the same as above; far below the 300 MiB streamed.
        assert!(s3 < 112 * MIB, "S3 peak grew by {} MiB", s3 / MIB);
    }
}

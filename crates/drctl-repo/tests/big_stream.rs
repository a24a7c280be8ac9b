//! A few hundred MiB streamed from a generator (never held whole) through the production
//! defaults (zstd 3, age, 16 MiB parts, 4 in memory), to a local folder and to S3 and back,
//! comparing the SHA-256 of what went in and came out. It is a test binary of its own so
//! that nothing runs beside it: the process's memory high-water mark (VmHWM) may grow by
//! about `concurrency x part size` plus codec state, never by the size of the data.
//! Prints the throughput (run with `--nocapture`; `--release` for real numbers).
//!
//! Knobs: DRCTL_TEST_BIG_MIB (300), DRCTL_TEST_BIG_CONTENT (mixed | random | text),
//! DRCTL_TEST_ZSTD_WORKERS.

mod common;

use std::sync::Arc;
use std::time::Instant;

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

fn knob<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Back up and restore a large stream; returns how much the high-water mark grew.
async fn big_stream(b: Arc<dyn Backend>, prefix: &str, what: &str) -> u64 {
    let size = knob::<u64>("DRCTL_TEST_BIG_MIB").unwrap_or(300) * MIB;
    let content = match std::env::var("DRCTL_TEST_BIG_CONTENT").as_deref() {
        Ok("random") => Content::Random,
        Ok("text") => Content::Text,
        _ => Content::Mixed,
    };
    let opts = Options {
        zstd_workers: knob("DRCTL_TEST_ZSTD_WORKERS").unwrap_or(Options::default().zstd_workers),
        ..Options::default()
    };
    let before = vm_hwm();
    let repo = Repository::from_backend(b, prefix, Some(new_key()), opts);
    let set = repo.begin_set("drctl-test", vec![]);
    let gen = Gen::new(size, content, 42);
    let digest = gen.digest.clone();
    let mut spec = ItemSpec::new("big", "volume", "generated");
    spec.size_hint = Some(size);
    let t = Instant::now();
    let rec = set.put(spec, gen).await.unwrap();
    let up = t.elapsed().as_secs_f64();
    let m = set.finish().await.unwrap();
    let after_up = vm_hwm();
    let t = Instant::now();
    let out = hash_reader(repo.open_item(&m, &rec).await.unwrap())
        .await
        .unwrap();
    let down = t.elapsed().as_secs_f64();
    let after_down = vm_hwm();
    assert_eq!(
        Some(out),
        digest.lock().unwrap().clone(),
        "output differs from input"
    );
    let mb = size as f64 / 1e6;
    eprintln!(
        "{what}: {} MiB {content:?} (stored {} MiB): up {up:.1}s = {:.0} MB/s, down+verify {down:.1}s = {:.0} MB/s; VmHWM {} MiB before, {} after upload, {} after download",
        size / MIB,
        rec.stored_size / MIB,
        mb / up,
        mb / down,
        before / MIB,
        after_up / MIB,
        after_down / MIB
    );
    repo.delete_set(&m.id).await.unwrap();
    after_down.saturating_sub(before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streams_round_trip_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let local = big_stream(
        Arc::new(drctl_repo::LocalBackend::new(dir.path())),
        "",
        "local folder",
    )
    .await;
    // 4 x 1 MiB parts, channels, zstd (one worker) and age state.
    assert!(local < 48 * MIB, "local peak grew by {} MiB", local / MIB);
    if let Some(env) = s3_env("drctl-repo s3 big stream") {
        let prefix = unique_prefix("big");
        let mut s = env.settings();
        s.part_size = Options::default().part_size;
        let b = Arc::new(drctl_repo::S3Backend::new(s).unwrap());
        let s3 = big_stream(b.clone(), &prefix, "garage S3").await;
        cleanup(&*b, &prefix).await;
        // 4 x 16 MiB parts plus the same as above: far below the data's size.
        assert!(s3 < 112 * MIB, "S3 peak grew by {} MiB", s3 / MIB);
    }
}

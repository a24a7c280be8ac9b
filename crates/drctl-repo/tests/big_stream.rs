//! A few hundred MiB streamed from a generator (never held whole) through the production
//! defaults (zstd 3, age, 8 MiB parts, 4 per upload and 8 per process in memory), to a
//! local folder and to S3 and back, comparing the SHA-256 of what went in and came out. It
//! is a test binary of its own so that nothing runs beside it: the process's memory
//! high-water mark (VmHWM) may grow by about `min(uploads x concurrency, upload budget) x
//! part size` plus codec state, never by the size of the data. Prints the throughput of
//! the upload, of the pre-restore check (`check_item`: download and SHA-256) and of the
//! restore stream (download, decrypt, decompress, verify); run with `--nocapture`, and
//! `--release` for real numbers.
//!
//! Knobs: DRCTL_TEST_BIG_MIB (300), DRCTL_TEST_BIG_CONTENT (mixed | random | text),
//! DRCTL_TEST_ZSTD_WORKERS, DRCTL_TEST_BIG_PARALLEL (1: streams stored at once).

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

/// Back up and restore large streams (`DRCTL_TEST_BIG_PARALLEL` of them, stored at once
/// as items of one set, as parallel safety backups do); returns how much the high-water
/// mark grew.
async fn big_stream(b: Arc<dyn Backend>, prefix: &str, what: &str) -> u64 {
    let size = knob::<u64>("DRCTL_TEST_BIG_MIB").unwrap_or(300) * MIB;
    let parallel = knob::<usize>("DRCTL_TEST_BIG_PARALLEL").unwrap_or(1).max(1);
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
    let mut digests = Vec::new();
    let mut puts = Vec::new();
    for i in 0..parallel {
        let gen = Gen::new(size, content, 42 + i as u64);
        digests.push(gen.digest.clone());
        let mut spec = ItemSpec::new(format!("big-{i}"), "volume", "generated");
        spec.size_hint = Some(size);
        puts.push(set.put(spec, gen));
    }
    let t = Instant::now();
    let recs: Vec<_> = futures_util::future::join_all(puts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let up = t.elapsed().as_secs_f64();
    let m = set.finish().await.unwrap();
    let after_up = vm_hwm();
    let t = Instant::now();
    for rec in &recs {
        repo.check_item(&m, rec).await.unwrap();
    }
    let check = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (rec, digest) in recs.iter().zip(&digests) {
        let out = hash_reader(repo.open_item(&m, rec).await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            Some(out),
            digest.lock().unwrap().clone(),
            "output differs from input"
        );
    }
    let down = t.elapsed().as_secs_f64();
    let after_down = vm_hwm();
    let mb = (size * parallel as u64) as f64 / 1e6;
    let stored: u64 = recs.iter().map(|r| r.stored_size).sum();
    eprintln!(
        "{what}: {parallel} x {} MiB {content:?} (stored {} MiB): up {up:.1}s = {:.0} MB/s, check {check:.1}s = {:.0} MB/s, down+verify {down:.1}s = {:.0} MB/s; VmHWM {} MiB before, {} after upload, {} after download",
        size / MIB,
        stored / MIB,
        mb / up,
        mb / check,
        mb / down,
        before / MIB,
        after_up / MIB,
        after_down / MIB
    );
    repo.delete_set(&m.id).await.unwrap();
    after_down.saturating_sub(before)
}

/// The most a run may grow the high-water mark: the parts the budget allows (at most
/// `concurrency` per upload, `upload_budget` in all) plus 48 MiB for the channels, zstd
/// (one worker), age and the allocator, and 24 MiB for each further upload's.
fn bound(part: usize) -> u64 {
    let o = Options::default();
    let parallel = knob::<usize>("DRCTL_TEST_BIG_PARALLEL").unwrap_or(1).max(1);
    let parts = (parallel * o.concurrency).min(o.upload_budget);
    (parts * part) as u64 + 48 * MIB + (parallel as u64 - 1) * 24 * MIB
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
    // 1 MiB parts.
    let most = bound(1 << 20);
    assert!(local < most, "local peak grew by {} MiB", local / MIB);
    if let Some(env) = s3_env("drctl-repo s3 big stream") {
        let prefix = unique_prefix("big");
        let mut s = env.settings();
        s.part_size = Options::default().part_size;
        let b = Arc::new(drctl_repo::S3Backend::new(s).unwrap());
        let s3 = big_stream(b.clone(), &prefix, "garage S3").await;
        cleanup(&*b, &prefix).await;
        // 8 MiB parts: far below the data's size.
        let most = bound(Options::default().part_size);
        assert!(s3 < most, "S3 peak grew by {} MiB", s3 / MIB);
    }
}

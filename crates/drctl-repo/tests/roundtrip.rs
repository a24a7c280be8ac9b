//! Round trips through both backends: sizes around part boundaries, every combination of
//! compression and encryption, and a few hundred MiB streamed from a generator.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use drctl_core::runbook::Selection;
use drctl_repo::backend::Backend;
use drctl_repo::{Compression, Encryption, ItemSpec, Key, Options, Repository};

struct Case {
    name: &'static str,
    size: u64,
    content: Content,
}

/// Store `cases` as one set, then read every item back and compare hashes; verify the
/// set; with encryption, make sure no plaintext reached the store.
async fn roundtrip_set(b: Arc<dyn Backend>, prefix: &str, key: Option<Key>, opts: Options, cases: &[Case]) {
    let zstd = opts.zstd_level;
    let repo = repo_on(b.clone(), prefix, key.clone(), opts);
    let mut set = repo.begin_set("drctl-test", vec!["roundtrip".into()]);
    let mut inputs = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let gen = Gen::new(c.size, c.content, i as u64 + 1);
        let digest = gen.digest.clone();
        let mut spec = ItemSpec::new(c.name, "volume", format!("generated {} bytes", c.size));
        spec.fingerprint = serde_json::json!({ "n": i });
        let rec = set.put(spec, gen).await.unwrap();
        let (n, sha) = digest.lock().unwrap().clone().expect("generator finished");
        assert_eq!(rec.raw_size, n);
        assert_eq!(rec.raw_size, c.size);
        assert_eq!(
            rec.encryption,
            if key.is_some() {
                Encryption::AgeX25519
            } else {
                Encryption::None
            }
        );
        assert_eq!(
            rec.compression,
            match zstd {
                Some(level) => Compression::Zstd { level },
                None => Compression::None,
            }
        );
        if zstd.is_none() && key.is_none() {
            assert_eq!(rec.stored_size, c.size, "stored as is");
        }
        assert_eq!(
            b.head(&repo.full_key(&rec.key)).await.unwrap(),
            Some(rec.stored_size)
        );
        inputs.push(sha);
    }
    // Not restorable before the manifest exists.
    let err = repo.select(&Selection::Latest, jiff::Timestamp::now()).await.unwrap_err();
    assert!(err.to_string().contains("no complete set"), "{err}");
    let id = set.id().to_string();
    let m = set.finish().await.unwrap();
    assert_eq!(m.id, id);
    assert_eq!(
        m.encryption.as_ref().map(|e| e.key_fingerprint.clone()),
        key.as_ref().map(|k| k.fingerprint().to_string())
    );
    let picked = repo.select(&Selection::Latest, jiff::Timestamp::now()).await.unwrap();
    assert_eq!(picked, m);
    for (item, sha) in m.items.iter().zip(&inputs) {
        let r = repo.open_item(&m, item).await.unwrap();
        let (n, out) = hash_reader(r).await.unwrap();
        assert_eq!(n, item.raw_size, "{}", item.name);
        assert_eq!(&out, sha, "{}: output differs from input", item.name);
        if key.is_some() {
            let stored = repo.full_key(&item.key);
            assert!(
                !object_contains(&*b, &stored, MARKER).await,
                "plaintext marker found in the stored bytes of {}",
                item.name
            );
        }
    }
    let report = repo.verify_set(&id).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.items.len(), cases.len());
    // The manifest never holds the secret key.
    let manifest_text = String::from_utf8(
        read_object(&*b, &repo.full_key(&format!("sets/{id}/manifest.json"))).await,
    )
    .unwrap();
    assert!(!manifest_text.contains("AGE-SECRET-KEY"));
    repo.delete_set(&id).await.unwrap();
    assert!(repo.list().await.unwrap().is_empty());
}

fn small_cases(part: u64) -> Vec<Case> {
    vec![
        Case { name: "empty", size: 0, content: Content::Random },
        Case { name: "one-byte", size: 1, content: Content::Random },
        Case { name: "exactly-one-part", size: part, content: Content::Random },
        Case { name: "one-part-plus-one", size: part + 1, content: Content::Random },
        Case { name: "many-parts", size: 3 * part + 12345, content: Content::Mixed },
        Case { name: "text", size: 3 * MIB, content: Content::Text },
    ]
}

async fn all_combinations(b: Arc<dyn Backend>, prefix: &str, part: u64) {
    for zstd in [None, Some(3)] {
        for encrypt in [false, true] {
            let opts = Options {
                zstd_level: zstd,
                ..test_opts()
            };
            let key = encrypt.then(new_key);
            let p = format!("{prefix}/z{}-e{}", zstd.is_some() as u8, encrypt as u8);
            roundtrip_set(b.clone(), &p, key, opts, &small_cases(part)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_roundtrips() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(drctl_repo::LocalBackend::new(dir.path()));
    // A local folder takes 1 MiB parts.
    all_combinations(b, "repo", MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_roundtrips() {
    let Some(env) = s3_env("drctl-repo s3 round trips") else {
        return;
    };
    let prefix = unique_prefix("roundtrip");
    let b = env.backend();
    // test_opts() use 5 MiB parts: "exactly one part" is one PutObject, +1 byte multipart.
    all_combinations(b.clone(), &prefix, 5 * MIB).await;
    cleanup(&*b, &prefix).await;
}

/// How big the large stream is (MiB); `DRCTL_TEST_BIG_MIB` overrides.
fn big_size() -> u64 {
    std::env::var("DRCTL_TEST_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
        * MIB
}

/// A large mixed stream with the production defaults (zstd 3, encrypted, 16 MiB parts),
/// streamed from a generator; prints the throughput both ways.
async fn big_stream(b: Arc<dyn Backend>, prefix: &str, what: &str) {
    let size = big_size();
    let key = new_key();
    // Knobs for measuring: DRCTL_TEST_BIG_CONTENT=random|text|mixed, DRCTL_TEST_ZSTD_WORKERS.
    let content = match std::env::var("DRCTL_TEST_BIG_CONTENT").as_deref() {
        Ok("random") => Content::Random,
        Ok("text") => Content::Text,
        _ => Content::Mixed,
    };
    let opts = Options {
        zstd_workers: std::env::var("DRCTL_TEST_ZSTD_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        ..Options::default()
    };
    let repo = Repository::from_backend(b.clone(), prefix, Some(key), opts);
    let mut set = repo.begin_set("drctl-test", vec![]);
    let gen = Gen::new(size, content, 42);
    let digest = gen.digest.clone();
    let mut spec = ItemSpec::new("big", "volume", "generated");
    spec.size_hint = Some(size);
    let t = Instant::now();
    let rec = set.put(spec, gen).await.unwrap();
    let up = t.elapsed().as_secs_f64();
    let m = set.finish().await.unwrap();
    let t = Instant::now();
    let (n, sha) = hash_reader(repo.open_item(&m, &rec).await.unwrap())
        .await
        .unwrap();
    let down = t.elapsed().as_secs_f64();
    let (n_in, sha_in) = digest.lock().unwrap().clone().unwrap();
    assert_eq!((n, &sha), (n_in, &sha_in));
    let mb = size as f64 / 1e6;
    eprintln!(
        "{what}: {} MiB {content:?} (stored {} MiB): up {:.1}s = {:.0} MB/s, down+verify {:.1}s = {:.0} MB/s",
        size / MIB,
        rec.stored_size / MIB,
        up,
        mb / up,
        down,
        mb / down
    );
    repo.delete_set(&m.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_big_stream() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(drctl_repo::LocalBackend::new(dir.path()));
    big_stream(b, "", "local folder").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_big_stream() {
    let Some(env) = s3_env("drctl-repo s3 big stream") else {
        return;
    };
    let prefix = unique_prefix("big");
    let mut s = env.settings();
    s.part_size = Options::default().part_size;
    let b = Arc::new(drctl_repo::S3Backend::new(s).unwrap());
    big_stream(b.clone(), &prefix, "garage S3").await;
    cleanup(&*b, &prefix).await;
}

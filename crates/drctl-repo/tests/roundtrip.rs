//! Round trips through both backends: sizes around part boundaries, every combination of
//! compression and encryption. (A few hundred MiB streamed from a generator: big_stream.rs.)

mod common;

use std::sync::Arc;

use common::*;
use drctl_core::runbook::Selection;
use drctl_repo::backend::Backend;
use drctl_repo::{Compression, Encryption, ItemSpec, Key, Options};

struct Case {
    name: &'static str,
    size: u64,
    content: Content,
}

/// Store `cases` as one set, then read every item back and compare hashes; verify the
/// set; with encryption, make sure no plaintext reached the store.
async fn roundtrip_set(
    b: Arc<dyn Backend>,
    prefix: &str,
    key: Option<Key>,
    opts: Options,
    cases: &[Case],
) {
    let zstd = opts.zstd_level;
    let repo = repo_on(b.clone(), prefix, key.clone(), opts);
    let set = repo.begin_set("drctl-test", vec!["roundtrip".into()]);
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
    let err = repo
        .select(&Selection::Latest, jiff::Timestamp::now())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no complete set"), "{err}");
    let id = set.id().to_string();
    let m = set.finish().await.unwrap();
    assert_eq!(m.id, id);
    assert_eq!(
        m.encryption.as_ref().map(|e| e.key_fingerprint.clone()),
        key.as_ref().map(|k| k.fingerprint().to_string())
    );
    let picked = repo
        .select(&Selection::Latest, jiff::Timestamp::now())
        .await
        .unwrap();
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
        Case {
            name: "empty",
            size: 0,
            content: Content::Random,
        },
        Case {
            name: "one-byte",
            size: 1,
            content: Content::Random,
        },
        Case {
            name: "exactly-one-part",
            size: part,
            content: Content::Random,
        },
        Case {
            name: "one-part-plus-one",
            size: part + 1,
            content: Content::Random,
        },
        Case {
            name: "many-parts",
            size: 3 * part + 12345,
            content: Content::Mixed,
        },
        Case {
            name: "text",
            size: 3 * MIB,
            content: Content::Text,
        },
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

/// Items of one set stored concurrently; names are unique; a failed name can be retried.
async fn parallel_puts(b: Arc<dyn Backend>, prefix: &str, opts: Options) {
    let repo = repo_on(b, prefix, Some(new_key()), opts);
    let set = repo.begin_set("drctl-test", vec![]);
    let gens: Vec<Gen> = (0..3)
        .map(|i| Gen::new(7 * MIB + i, Content::Random, i))
        .collect();
    let digests: Vec<_> = gens.iter().map(|g| g.digest.clone()).collect();
    let puts = gens.into_iter().enumerate().map(|(i, g)| {
        let set = &set;
        async move {
            set.put(ItemSpec::new(format!("item-{i}"), "volume", "gen"), g)
                .await
        }
    });
    let records = futures_util::future::join_all(puts).await;
    assert!(records.iter().all(|r| r.is_ok()), "{records:?}");
    let dup = set
        .put(ItemSpec::new("item-1", "volume", "gen"), &b"x"[..])
        .await;
    assert!(dup.unwrap_err().to_string().contains("already used"));
    struct Failing;
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::Error::other("disk on fire")))
        }
    }
    let e = set
        .put(ItemSpec::new("retry", "volume", "gen"), Failing)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("failed to read the data of item `retry`: disk on fire"),
        "{e}"
    );
    set.put(ItemSpec::new("retry", "volume", "gen"), &b"ok"[..])
        .await
        .unwrap();
    let m = set.finish().await.unwrap();
    let names: Vec<&str> = m.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["item-0", "item-1", "item-2", "retry"]);
    for (item, d) in m.items.iter().zip(&digests) {
        let out = hash_reader(repo.open_item(&m, item).await.unwrap())
            .await
            .unwrap();
        assert_eq!(Some(out), d.lock().unwrap().clone());
    }
    assert!(repo.verify_set(&m.id).await.unwrap().ok());
    repo.delete_set(&m.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_parallel_puts() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(drctl_repo::LocalBackend::new(dir.path()));
    parallel_puts(b, "", test_opts()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_parallel_puts_and_minimal_concurrency() {
    let Some(env) = s3_env("drctl-repo s3 parallel puts") else {
        return;
    };
    let prefix = unique_prefix("parallel");
    let b = env.backend();
    parallel_puts(b.clone(), &prefix, test_opts()).await;
    // concurrency 1 is raised to 2: S3 holds part 1 while part 2 fills (no deadlock).
    let opts = Options {
        concurrency: 1,
        ..test_opts()
    };
    let c1 = format!("{prefix}/c1");
    let run = parallel_puts(b.clone(), &c1, opts);
    tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("no deadlock with concurrency 1");
    cleanup(&*b, &prefix).await;
}

//! Damage a stored set (a flipped byte, a truncated object, a missing object, a wrong or
//! missing key) and check that `verify_set`, the pre-restore check (`check_item`) and the
//! restore stream (`open_item`) all catch it before reporting success, with a message
//! naming the set and the object.

mod common;

use std::sync::Arc;

use common::*;
use drctl_repo::backend::Backend;
use drctl_repo::{ItemSpec, Key, Manifest, Options, RepoError, Repository};

async fn make_set(repo: &Repository) -> Manifest {
    let set = repo.begin_set("drctl-test", vec![]);
    for (i, (name, size, content)) in [
        ("volume/data", 6 * MIB + 3, Content::Mixed),
        ("postgres/app", 300_000, Content::Text),
    ]
    .into_iter()
    .enumerate()
    {
        set.put(
            ItemSpec::new(name, "volume", "generated"),
            Gen::new(size, content, i as u64),
        )
        .await
        .unwrap();
    }
    set.finish().await.unwrap()
}

/// The restore path: either `open_item` refuses at once, or the reader fails before EOF.
async fn restore_error(repo: &Repository, m: &Manifest, item: usize) -> String {
    match repo.open_item(m, &m.items[item]).await {
        Err(e) => e.to_string(),
        Ok(r) => match hash_reader(r).await {
            Ok(_) => panic!("the reader reported success on a damaged object"),
            Err(e) => {
                let inner = RepoError::from_io(&e).expect("a RepoError inside");
                assert!(inner.is_damaged() || matches!(inner, RepoError::WrongKey { .. }));
                inner.to_string()
            }
        },
    }
}

/// verify_set's message for the one damaged item.
async fn verify_error(repo: &Repository, m: &Manifest, item: usize) -> String {
    let report = repo.verify_set(&m.id).await.unwrap();
    assert!(!report.ok());
    let bad: Vec<_> = report.failures().collect();
    assert_eq!(bad.len(), 1, "{report:?}");
    assert_eq!(bad[0].key, m.items[item].key);
    assert!(report.items[1 - item].ok, "the other item stays good");
    bad[0].error.clone().unwrap()
}

/// check_item's error for one item; the other items of the set still pass.
async fn check_error(repo: &Repository, m: &Manifest, item: usize) -> RepoError {
    for (i, it) in m.items.iter().enumerate() {
        if i != item {
            repo.check_item(m, it).await.unwrap();
        }
    }
    let e = repo.check_item(m, &m.items[item]).await.unwrap_err();
    names(&e.to_string(), m, item, "check_item");
    e
}

fn names(msg: &str, m: &Manifest, item: usize, what: &str) {
    assert!(msg.contains(&m.id), "{what}: no set id in: {msg}");
    assert!(
        msg.contains(&m.items[item].key),
        "{what}: no object key in: {msg}"
    );
}

async fn damage_suite(b: Arc<dyn Backend>, prefix: &str, key: Option<Key>, zstd: Option<i32>) {
    let opts = Options {
        zstd_level: zstd,
        ..test_opts()
    };
    let repo = repo_on(b.clone(), prefix, key.clone(), opts);
    let label = format!("zstd={zstd:?} key={}", key.is_some());

    // A good set passes both checks.
    let m = make_set(&repo).await;
    for item in &m.items {
        repo.check_item(&m, item).await.unwrap();
        assert_eq!(repo.verify_item(&m, item).await.unwrap(), item.raw_size);
    }
    repo.delete_set(&m.id).await.unwrap();

    // A flipped byte in the middle of the first object.
    let m = make_set(&repo).await;
    let obj = repo.full_key(&m.items[0].key);
    let mut data = read_object(&*b, &obj).await;
    let mid = data.len() / 2;
    data[mid] ^= 0x40;
    write_object(&*b, &obj, data).await;
    let v = verify_error(&repo, &m, 0).await;
    names(&v, &m, 0, &label);
    assert!(v.contains("SHA-256"), "{label}: {v}");
    let c = check_error(&repo, &m, 0).await;
    assert!(
        matches!(c, RepoError::ChecksumMismatch { .. }),
        "{label}: {c}"
    );
    let r = restore_error(&repo, &m, 0).await;
    names(&r, &m, 0, &label);
    assert!(r.contains("SHA-256"), "{label}: {r}");
    repo.delete_set(&m.id).await.unwrap();

    // A truncated object (the last 100 bytes gone).
    let m = make_set(&repo).await;
    let obj = repo.full_key(&m.items[0].key);
    let mut data = read_object(&*b, &obj).await;
    data.truncate(data.len() - 100);
    write_object(&*b, &obj, data).await;
    let v = verify_error(&repo, &m, 0).await;
    names(&v, &m, 0, &label);
    assert!(v.contains("truncated"), "{label}: {v}");
    let c = check_error(&repo, &m, 0).await;
    assert!(matches!(c, RepoError::Truncated { .. }), "{label}: {c}");
    let r = restore_error(&repo, &m, 0).await;
    names(&r, &m, 0, &label);
    assert!(r.contains("truncated"), "{label}: {r}");
    repo.delete_set(&m.id).await.unwrap();

    // A missing object (the second one).
    let m = make_set(&repo).await;
    b.delete(&repo.full_key(&m.items[1].key)).await.unwrap();
    let v = verify_error(&repo, &m, 1).await;
    names(&v, &m, 1, &label);
    assert!(v.contains("failed to find object"), "{label}: {v}");
    let c = check_error(&repo, &m, 1).await;
    assert!(matches!(c, RepoError::ObjectMissing { .. }), "{label}: {c}");
    let r = restore_error(&repo, &m, 1).await;
    names(&r, &m, 1, &label);
    repo.delete_set(&m.id).await.unwrap();

    // Bytes swapped for others of the same length that hash differently, found only at
    // the end of the stream: the reader must not report EOF.
    let m = make_set(&repo).await;
    let obj = repo.full_key(&m.items[1].key);
    let mut data = read_object(&*b, &obj).await;
    let last = data.len() - 1;
    data[last] ^= 1;
    write_object(&*b, &obj, data).await;
    let r = restore_error(&repo, &m, 1).await;
    names(&r, &m, 1, &label);
    let c = check_error(&repo, &m, 1).await;
    assert!(
        matches!(c, RepoError::ChecksumMismatch { .. }),
        "{label}: {c}"
    );
    repo.delete_set(&m.id).await.unwrap();

    // An object cut short, read through a manifest that records the cut size and hash
    // (the HEAD and the SHA-256 both match): only the codecs can tell. check_item sees it
    // when the cut is in the age header; verify_item always does.
    if key.is_some() {
        let m = make_set(&repo).await;
        let obj = repo.full_key(&m.items[0].key);
        let mut data = read_object(&*b, &obj).await;
        data.truncate(60);
        let mut forged = m.clone();
        forged.items[0].stored_size = data.len() as u64;
        forged.items[0].sha256 = sha256_hex(&data);
        write_object(&*b, &obj, data).await;
        let c = check_error(&repo, &forged, 0).await;
        assert!(matches!(c, RepoError::Corrupt { .. }), "{label}: {c}");
        assert!(c.to_string().contains("age"), "{label}: {c}");
        let v = repo
            .verify_item(&forged, &forged.items[0])
            .await
            .unwrap_err();
        assert!(matches!(v, RepoError::Corrupt { .. }), "{label}: {v}");
        repo.delete_set(&m.id).await.unwrap();
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

async fn key_suite(b: Arc<dyn Backend>, prefix: &str) {
    let key = new_key();
    let repo = repo_on(b.clone(), prefix, Some(key.clone()), test_opts());
    let m = make_set(&repo).await;

    // Another key: one clear error, before any download.
    let other = repo_on(b.clone(), prefix, Some(new_key()), test_opts());
    let e = other.verify_set(&m.id).await.unwrap_err();
    assert!(matches!(e, RepoError::WrongKey { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&m.id) && msg.contains(key.fingerprint()),
        "{msg}"
    );
    let r = restore_error(&other, &m, 0).await;
    names(&r, &m, 0, "wrong key");
    assert!(r.contains("sealed with key"), "{r}");
    let c = other.check_item(&m, &m.items[0]).await.unwrap_err();
    assert!(matches!(c, RepoError::WrongKey { .. }), "{c}");
    names(&c.to_string(), &m, 0, "check_item, wrong key");
    assert!(c.to_string().contains(key.fingerprint()), "{c}");

    // No key at all.
    let none = repo_on(b.clone(), prefix, None, test_opts());
    let e = none.verify_set(&m.id).await.unwrap_err();
    assert!(matches!(e, RepoError::MissingKey { .. }), "{e}");
    assert!(e.to_string().contains(&m.id));
    none.open_item(&m, &m.items[0]).await.unwrap_err();
    let c = none.check_item(&m, &m.items[0]).await.unwrap_err();
    assert!(matches!(c, RepoError::MissingKey { .. }), "{c}");

    // A manifest that claims another key (or none) still cannot get plaintext out of the
    // objects: age refuses, naming the object.
    let mut forged = m.clone();
    forged.encryption.as_mut().unwrap().key_fingerprint = other.key_fingerprint().unwrap().into();
    let r = restore_error(&other, &forged, 0).await;
    names(&r, &m, 0, "forged manifest");
    // check_item opens the age header itself: another key is refused there too.
    for i in 0..m.items.len() {
        let c = other
            .check_item(&forged, &forged.items[i])
            .await
            .unwrap_err();
        assert!(matches!(c, RepoError::WrongKey { .. }), "{c}");
        names(&c.to_string(), &m, i, "check_item, forged manifest");
    }
    // And the right key still opens every object.
    for item in &m.items {
        repo.check_item(&m, item).await.unwrap();
    }

    // Secrets never show in Debug output.
    let secret = Key::generate();
    let k = Key::parse(&secret, "test").unwrap();
    let r2 = repo_on(b.clone(), prefix, Some(k), test_opts());
    assert!(!format!("{r2:?}").contains(&secret));
    assert!(!format!("{r2:?}").contains("AGE-SECRET-KEY"));

    repo.delete_set(&m.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_damage_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> = Arc::new(drctl_repo::LocalBackend::new(dir.path()));
    damage_suite(b.clone(), "plain", None, None).await;
    damage_suite(b.clone(), "zstd", None, Some(3)).await;
    damage_suite(b.clone(), "age", Some(new_key()), None).await;
    damage_suite(b.clone(), "both", Some(new_key()), Some(3)).await;
    key_suite(b, "keys").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_damage_is_caught() {
    let Some(env) = s3_env("drctl-repo s3 damage") else {
        return;
    };
    let prefix = unique_prefix("damage");
    let b: Arc<dyn Backend> = env.backend();
    damage_suite(b.clone(), &format!("{prefix}/plain"), None, None).await;
    damage_suite(
        b.clone(),
        &format!("{prefix}/both"),
        Some(new_key()),
        Some(3),
    )
    .await;
    key_suite(b.clone(), &format!("{prefix}/keys")).await;
    cleanup(&*b, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_sources() {
    use drctl_core::config::KeySource;
    let dir = tempfile::tempdir().unwrap();
    let secret = Key::generate();
    let file = dir.path().join("key.txt");
    std::fs::write(
        &file,
        format!("# created: now\n# public key: x\n{secret}\n"),
    )
    .unwrap();
    let env = |_: &str| None;
    let k = Key::load(&KeySource::KeyFile("key.txt".into()), dir.path(), &env).unwrap();
    assert!(k.fingerprint().starts_with("age1"));
    let from_env = |v: &str| (v == "DRCTL_KEY").then(|| secret.clone());
    let k2 = Key::load(
        &KeySource::KeyEnv("DRCTL_KEY".into()),
        dir.path(),
        &from_env,
    )
    .unwrap();
    assert_eq!(k.fingerprint(), k2.fingerprint());
    for (src, want) in [
        (KeySource::KeyFile("missing.txt".into()), "key file"),
        (KeySource::KeyEnv("UNSET_VAR".into()), "UNSET_VAR"),
    ] {
        let e = Key::load(&src, dir.path(), &env).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    std::fs::write(&file, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
    let e = Key::load(&KeySource::KeyFile(file.clone()), dir.path(), &env).unwrap_err();
    assert!(e.to_string().contains("age X25519 identity"), "{e}");
    assert!(
        !e.to_string().contains("NOTAKEY"),
        "the key text is never echoed: {e}"
    );
    assert!(!format!("{k:?}").contains(&secret));
}

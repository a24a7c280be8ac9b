//! S3 failures: a missing bucket, bad credentials, an unreachable endpoint (one clear
//! message each), and the server dying or freezing in the middle of an upload (the backup
//! fails clearly, no manifest, no orphan multipart upload, and the next backup works).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use drctl_core::runbook::Selection;
use drctl_repo::backend::Backend;
use drctl_repo::{ItemSpec, Options, RepoError, Repository, S3Backend, S3Settings};

fn repo(s: S3Settings, prefix: &str) -> Repository {
    Repository::from_backend(
        Arc::new(S3Backend::new(s).unwrap()),
        prefix,
        None,
        test_opts(),
    )
}

/// A backup of one small item: the operations a `drctl backup` starts with.
async fn try_backup(r: &Repository) -> Result<(), RepoError> {
    r.check().await?;
    let set = r.begin_set("drctl-test", vec![]);
    set.put(ItemSpec::new("x", "volume", "test"), &b"data"[..])
        .await?;
    set.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_bad_credentials_unreachable() {
    let Some(env) = s3_env("drctl-repo s3 failures") else {
        return;
    };
    let prefix = unique_prefix("failures");

    // Missing bucket.
    let mut s = env.settings();
    s.bucket = format!("drctl-no-such-bucket-{}", std::process::id());
    let e = try_backup(&repo(s.clone(), &prefix)).await.unwrap_err();
    assert!(matches!(e, RepoError::MissingBucket { .. }), "{e}");
    assert!(e.is_unavailable());
    let msg = e.to_string();
    assert!(
        msg.contains(&s.bucket) && msg.contains(&env.endpoint),
        "{msg}"
    );
    eprintln!("missing bucket: {msg}");

    // A wrong secret, then an unknown key id.
    let mut s = env.settings();
    s.credentials = aws_sdk_s3::config::Credentials::new(
        env.access_key.clone(),
        "not-the-secret-0123456789abcdef",
        None,
        None,
        "test",
    );
    let e = try_backup(&repo(s, &prefix)).await.unwrap_err();
    assert!(matches!(e, RepoError::BadCredentials { .. }), "{e}");
    assert!(e.is_unavailable());
    let msg = e.to_string();
    assert!(
        msg.contains(&env.endpoint) && msg.contains(&env.bucket),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret") && !format!("{e:?}").contains("not-the-secret"));
    eprintln!("wrong secret: {msg}");
    let mut s = env.settings();
    s.credentials =
        aws_sdk_s3::config::Credentials::new("GK0000000000000000deadbeef", "x", None, None, "t");
    let e = try_backup(&repo(s, &prefix)).await.unwrap_err();
    assert!(matches!(e, RepoError::BadCredentials { .. }), "{e}");
    eprintln!("unknown key: {e}");

    // Nothing listens on port 9.
    let mut s = env.settings();
    s.endpoint = Some("http://127.0.0.1:9".into());
    let t = std::time::Instant::now();
    let e = try_backup(&repo(s, &prefix)).await.unwrap_err();
    assert!(matches!(e, RepoError::Unreachable { .. }), "{e}");
    assert!(e.is_unavailable());
    assert!(e.to_string().contains("http://127.0.0.1:9"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "gave up in {:?}",
        t.elapsed()
    );
    eprintln!("unreachable: {e}");

    // Missing credentials, from drctl.yml's point of view.
    let cfg = drctl_core::config::Repository {
        url: format!("s3://{}/{prefix}", env.bucket),
        endpoint: Some(env.endpoint.clone()),
        region: None,
        credentials_file: None,
        encryption: None,
    };
    let no_env = |_: &str| None;
    let e = Repository::open_with(&cfg, std::path::Path::new("."), &no_env, Options::default())
        .unwrap_err();
    assert!(matches!(e, RepoError::MissingCredentials { .. }), "{e}");
    assert!(e.is_unavailable());
    // And from a credentials file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("creds"),
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            env.access_key, env.secret_key
        ),
    )
    .unwrap();
    let cfg = drctl_core::config::Repository {
        credentials_file: Some("creds".into()),
        region: Some(env.region.clone()),
        ..cfg
    };
    let r = Repository::open_with(&cfg, dir.path(), &no_env, Options::default()).unwrap();
    assert!(!format!("{r:?}").contains(&env.secret_key));
    try_backup(&r).await.unwrap();
    let sets = r.list().await.unwrap();
    assert_eq!(sets.len(), 1);
    assert!(sets[0].complete);
    cleanup(&**r.backend(), &prefix).await;
}

/// An item large enough to be in the middle of a multipart upload when the server goes.
fn big_item() -> ItemSpec {
    ItemSpec::new("big", "volume", "generated")
}

async fn pending(b: &S3Backend) -> usize {
    // The whole bucket: nothing may be left anywhere.
    b.list_pending("").await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_upload() {
    let Some(mut g) = Garage::start("drctl-repo s3 server killed mid-upload") else {
        return;
    };
    let mut s = g.settings();
    // Give up aborting quickly: the server stays down longer than that.
    s.abort_retry_for = Duration::from_secs(1);
    s.attempt_timeout = Duration::from_secs(10);
    let b = Arc::new(S3Backend::new(s).unwrap());
    let opts = Options {
        zstd_level: None,
        incomplete_grace: Duration::ZERO,
        ..test_opts()
    };
    let repo = Repository::from_backend(b.clone(), "drctl", None, opts);

    let set = repo.begin_set("drctl-test", vec![]);
    set.put(ItemSpec::new("small", "spec", "test"), &b"spec"[..])
        .await
        .unwrap();
    let pid = g.child.as_ref().unwrap().id();
    let gen = Gen::new(200 * MIB, Content::Random, 7).with_hook(30 * MIB, move || {
        // SIGKILL with parts in flight.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let e = set.put(big_item(), gen).await.unwrap_err();
    eprintln!("server killed: {e}");
    assert!(matches!(e, RepoError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&g.endpoint()), "{e}");
    drop(set); // never finished: no manifest

    g.restart();
    // The upload could not be aborted while the server was down: it is still there...
    assert!(
        pending(&b).await >= 1,
        "expected the orphan multipart upload"
    );
    // ...the set is incomplete and never selected...
    let sets = repo.list().await.unwrap();
    assert_eq!(sets.len(), 1);
    assert!(!sets[0].complete);
    let e = repo
        .select(&Selection::Latest, jiff::Timestamp::now())
        .await
        .unwrap_err();
    assert!(matches!(e, RepoError::NoSetMatches { .. }), "{e}");
    // ...the next backup succeeds...
    let set = repo.begin_set("drctl-test", vec![]);
    set.put(big_item(), Gen::new(12 * MIB, Content::Random, 8))
        .await
        .unwrap();
    let good = set.finish().await.unwrap();
    // ...and prune removes the orphan upload and the incomplete set.
    let plan = repo
        .prune(&Default::default(), jiff::Timestamp::now(), false)
        .await
        .unwrap();
    assert_eq!(plan.aborted_uploads.len(), 1, "{plan:?}");
    assert_eq!(plan.remove.len(), 1);
    assert!(!plan.remove[0].complete);
    assert_eq!(pending(&b).await, 0);
    let sets = repo.list().await.unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].id, good.id);
    assert!(repo.verify_set(&good.id).await.unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_frozen_mid_upload_then_back() {
    let Some(g) = Garage::start("drctl-repo s3 server frozen mid-upload") else {
        return;
    };
    let mut s = g.settings();
    // Requests to a frozen server time out; the abort keeps trying until it is back.
    s.attempt_timeout = Duration::from_secs(2);
    s.max_attempts = 2;
    s.abort_retry_for = Duration::from_secs(60);
    let b = Arc::new(S3Backend::new(s).unwrap());
    let opts = Options {
        zstd_level: None,
        ..test_opts()
    };
    let repo = Repository::from_backend(b.clone(), "drctl", None, opts);
    let pid = g.child.as_ref().unwrap().id();
    let gen = Gen::new(200 * MIB, Content::Random, 9).with_hook(30 * MIB, move || {
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status();
        // Thaw it well after the part uploads have timed out (2 attempts x 2 s).
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(12));
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        });
    });
    let set = repo.begin_set("drctl-test", vec![]);
    let t = std::time::Instant::now();
    let e = set.put(big_item(), gen).await.unwrap_err();
    eprintln!("server frozen: {e} (after {:?})", t.elapsed());
    assert!(matches!(e, RepoError::Unreachable { .. }), "{e}");
    set.abandon().await.unwrap();
    // The failed upload was aborted once the server answered again: nothing is left.
    assert_eq!(pending(&b).await, 0);
    assert!(repo.list().await.unwrap().is_empty());
    // The next backup succeeds.
    let set = repo.begin_set("drctl-test", vec![]);
    set.put(big_item(), Gen::new(12 * MIB, Content::Random, 10))
        .await
        .unwrap();
    let m = set.finish().await.unwrap();
    assert!(repo.verify_set(&m.id).await.unwrap().ok());
}

//! drctl against a real S3 server (Garage, started by scripts/test.sh), through the CLI:
//! what an operator sees when the bucket is missing, the credentials are wrong, or an
//! object in the bucket was damaged.

mod common;

use std::path::Path;

use common::{
    app_exec, damaged_restore_is_refused, drctl, item_key, need_docker, run, skipped, Stack,
};

/// The S3 server scripts/test.sh started: (endpoint, bucket, region), or None (skipped).
fn s3(test: &str) -> Option<(String, String, String)> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        var("DRCTL_S3_ENDPOINT"),
        var("DRCTL_S3_BUCKET"),
        var("DRCTL_S3_REGION"),
    ) {
        (Some(e), Some(b), Some(r)) => Some((e, b, r)),
        _ => {
            assert!(
                std::env::var_os("DRCTL_LAB").is_none(),
                "DRCTL_LAB is set but no S3 server is configured (DRCTL_S3_ENDPOINT)"
            );
            skipped(test, "no S3 server configured (run scripts/test.sh)");
            None
        }
    }
}

/// A prefix no other test or user shares.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("drctl-test-{what}-{}-{nanos:x}", std::process::id())
}

fn repository(url: &str, endpoint: &str, region: &str) -> String {
    format!("repository:\n  url: {url}\n  endpoint: {endpoint}\n  region: {region}\n")
}

#[test]
fn missing_bucket_and_wrong_credentials_are_one_clear_message_each() {
    let Some((endpoint, bucket, region)) =
        s3("missing_bucket_and_wrong_credentials_are_one_clear_message_each")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, url: &str| -> String {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "version: 1\nstack: {{ project: drctl-test-s3cli }}\n{}",
                repository(url, &endpoint, &region)
            ),
        )
        .unwrap();
        p.display().to_string()
    };

    let missing = unique("nobucket");
    let out = run(drctl(&[
        "--config",
        &config("nobucket.yml", &format!("s3://{missing}/x")),
        "backups",
        "list",
    ]));
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: failed to find bucket `{missing}` at {endpoint}; create it, or fix the bucket in `repository.url`"
        )
    );

    // A wrong secret: an authentication failure that says what to check, and the secret
    // itself appears nowhere.
    let ok = config("ok.yml", &format!("s3://{bucket}/{}", unique("creds")));
    let secret = "drctl-test-not-the-secret-0123456789abcdef";
    let out =
        run(drctl(&["--config", &ok, "backups", "list"]).env("AWS_SECRET_ACCESS_KEY", secret));
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: failed to authenticate to {endpoint} for bucket `{bucket}`"
        )) && err.contains("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));

    // An access key the server does not know: the same advice.
    let out = run(drctl(&["--config", &ok, "backups", "list"])
        .env("AWS_ACCESS_KEY_ID", "GK00000000000000000000000"));
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("failed to authenticate") && out.stderr.contains("AWS_ACCESS_KEY_ID"),
        "{}",
        out.stderr
    );

    // With the right credentials the same repository answers (empty).
    let out = run(drctl(&["--config", &ok, "backups", "list"]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("no backup sets"), "{}", out.stdout);
}

/// Everything under a repository's prefix, deleted when dropped (panics included).
struct Prefix {
    config: String,
}

impl Prefix {
    /// The repository of `config` with drctl's own S3 client, in a fresh runtime (None
    /// when it cannot be opened).
    fn with_backend<T>(
        &self,
        f: impl for<'a> FnOnce(
            &'a drctl_repo::Repository,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>,
    ) -> Option<T> {
        let env = &drctl_core::source::process_env;
        let cfg = drctl_core::config::load_config(Path::new(&self.config), env).ok()?;
        let repo = drctl_repo::Repository::open(&cfg, env).ok()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        Some(rt.block_on(f(&repo)))
    }
}

impl Drop for Prefix {
    /// No panics here: a panic while a failed test unwinds would abort the test binary.
    fn drop(&mut self) {
        self.with_backend(|repo| {
            Box::pin(async move {
                let b = repo.backend();
                if let Ok(objects) = b.list(&repo.full_key("")).await {
                    for o in objects {
                        let _ = b.delete(&o.key).await;
                    }
                }
            })
        });
    }
}

/// A byte flipped in a volume's object in the bucket: `backups verify` names it, and a
/// restore refuses it before the volume's current contents are touched.
#[test]
fn damaged_object_in_the_bucket_is_caught_before_anything_is_destroyed() {
    if !need_docker("damaged_object_in_the_bucket_is_caught_before_anything_is_destroyed") {
        return;
    }
    let Some((endpoint, bucket, region)) =
        s3("damaged_object_in_the_bucket_is_caught_before_anything_is_destroyed")
    else {
        return;
    };
    let st = Stack::new("s3corrupt");
    let cfg = std::fs::read_to_string(st.config()).unwrap();
    let url = format!("s3://{bucket}/{}", unique("s3corrupt"));
    assert!(cfg.contains("repository:\n  url: repo\n"), "{cfg}");
    std::fs::write(
        st.config(),
        cfg.replace(
            "repository:\n  url: repo\n",
            &repository(&url, &endpoint, &region),
        ) + "targets:\n  sessions: { type: volume, volume: app-sessions, stop: [app] }\n",
    )
    .unwrap();
    let prefix = Prefix {
        config: st.config(),
    };
    let up = st.runbook(
        "up",
        "version: 1\nsteps:\n  - { id: up, kind: up, services: [app] }\n  - { id: app, kind: health, check: { type: docker, service: app } }\n",
    );
    let out = run(st.drctl(&["run", &up]));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    app_exec(
        &st,
        "echo precious > /data/sessions/p && head -c 3000000 /dev/urandom > /data/sessions/r",
    );
    let out = run(st.drctl(&["backup"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let set = out.stdout.split_whitespace().nth(2).unwrap().to_string();
    let key = item_key(&st, &set, "volume/sessions");
    // The damage: one byte in the middle of the stored object.
    let damaged = prefix.with_backend(|repo| {
        let key = repo.full_key(&key);
        Box::pin(async move {
            let b = repo.backend().as_ref();
            let mut bytes = drctl_repo::backend::get_bytes(b, &key, 64 << 20)
                .await
                .unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            drctl_repo::backend::put_bytes(b, &key, bytes.into())
                .await
                .unwrap();
        })
    });
    assert!(damaged.is_some(), "the repository of {} opens", st.config());

    let verify = run(st.drctl(&["backups", "verify", &set]));
    assert_eq!(verify.code, 1, "{}\n{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("FAIL  volume/sessions"),
        "{}",
        verify.stdout
    );

    damaged_restore_is_refused(&st, &set, &key);
}

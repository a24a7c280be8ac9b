//! The same backend conformance suite, run against a local folder and a real S3 server.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use drctl_repo::backend::{put_bytes, Backend, Part};
use drctl_repo::RepoError;
use futures_util::StreamExt;

/// Everything the repository relies on from a backend.
async fn conformance(b: Arc<dyn Backend>, root: &str) {
    let k = |s: &str| format!("{root}/{s}");

    // A missing object.
    assert_eq!(b.head(&k("nope")).await.unwrap(), None);
    match b.get(&k("nope")).await {
        Err(RepoError::ObjectMissing { key, .. }) => assert_eq!(key, k("nope")),
        Err(other) => panic!("expected a missing object, got {other}"),
        Ok(_) => panic!("expected a missing object, got a stream"),
    }
    assert!(b.list(&k("")).await.unwrap().is_empty());
    b.check("").await.unwrap();

    // Small objects, overwrite, listing by prefix.
    assert_eq!(
        put_bytes(&*b, &k("a/one"), Bytes::from_static(b"1"))
            .await
            .unwrap(),
        1
    );
    put_bytes(&*b, &k("a/two"), Bytes::from_static(b"two"))
        .await
        .unwrap();
    put_bytes(&*b, &k("b/three"), Bytes::from_static(b"three"))
        .await
        .unwrap();
    put_bytes(&*b, &k("a/two"), Bytes::from_static(b"TWO!"))
        .await
        .unwrap();
    assert_eq!(read_object(&*b, &k("a/two")).await, b"TWO!");
    assert_eq!(b.head(&k("a/two")).await.unwrap(), Some(4));
    let listed: Vec<(String, u64)> = b
        .list(&k("a/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    assert_eq!(listed, vec![(k("a/one"), 1), (k("a/two"), 4)]);
    assert_eq!(b.list(&k("")).await.unwrap().len(), 3);
    assert!(b.list(&k("a/o")).await.unwrap().len() == 1);

    // The empty object: no parts at all.
    let none = futures_util::stream::empty();
    assert_eq!(b.put(&k("empty"), Box::pin(none)).await.unwrap(), 0);
    assert_eq!(b.head(&k("empty")).await.unwrap(), Some(0));
    assert!(read_object(&*b, &k("empty")).await.is_empty());

    // Several parts (S3: a multipart upload; every part but the last >= 5 MiB).
    let sizes = [5 * MIB as usize, 5 * MIB as usize, 1];
    let parts: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| vec![b'a' + i as u8; *n])
        .collect();
    let expected: Vec<u8> = parts.concat();
    let stream = futures_util::stream::iter(
        parts
            .into_iter()
            .map(|p| Ok::<_, RepoError>(Part::new(Bytes::from(p)))),
    );
    assert_eq!(
        b.put(&k("multi"), Box::pin(stream)).await.unwrap(),
        expected.len() as u64
    );
    assert_eq!(
        b.head(&k("multi")).await.unwrap(),
        Some(expected.len() as u64)
    );
    let got = read_object(&*b, &k("multi")).await;
    assert!(got == expected, "multipart object differs");
    // get streams in pieces, not one buffer.
    let chunks = b.get(&k("multi")).await.unwrap().count().await;
    assert!(chunks > 1, "{chunks} chunks");

    // A write that fails half-way leaves nothing: no object, no pending upload.
    let failing = futures_util::stream::iter(vec![
        Ok(Part::new(Bytes::from(vec![1u8; 5 * MIB as usize]))),
        Ok(Part::new(Bytes::from(vec![2u8; 5 * MIB as usize]))),
        Err(RepoError::Internal("simulate a source failure".into())),
    ]);
    let err = b.put(&k("failed"), Box::pin(failing)).await.unwrap_err();
    assert!(
        err.to_string().contains("simulate a source failure"),
        "{err}"
    );
    assert_eq!(b.head(&k("failed")).await.unwrap(), None);
    assert!(b.list_pending(&k("")).await.unwrap().is_empty());
    // The same with a single part before the failure.
    let failing = futures_util::stream::iter(vec![
        Ok(Part::new(Bytes::from(vec![1u8; 1000]))),
        Err(RepoError::Internal("fail early".into())),
    ]);
    b.put(&k("failed1"), Box::pin(failing)).await.unwrap_err();
    assert_eq!(b.head(&k("failed1")).await.unwrap(), None);
    // A failure replacing an existing object leaves the old one intact.
    let failing = futures_util::stream::iter(vec![Err(RepoError::Internal("no".into()))]);
    b.put(&k("a/two"), Box::pin(failing)).await.unwrap_err();
    assert_eq!(read_object(&*b, &k("a/two")).await, b"TWO!");
    assert!(b.list_pending(&k("")).await.unwrap().is_empty());

    // Delete, twice.
    b.delete(&k("a/one")).await.unwrap();
    b.delete(&k("a/one")).await.unwrap();
    assert_eq!(b.head(&k("a/one")).await.unwrap(), None);
    for o in b.list(&k("")).await.unwrap() {
        b.delete(&o.key).await.unwrap();
    }
    assert!(b.list(&k("")).await.unwrap().is_empty());
    assert!(b.list_pending(&k("")).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_folder_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(drctl_repo::LocalBackend::new(dir.path().join("repo")));
    conformance(b.clone(), "t").await;
    // Temp files of a dead writer are listed as pending and removable.
    std::fs::create_dir_all(dir.path().join("repo/t/x")).unwrap();
    std::fs::write(dir.path().join("repo/t/x/.obj.tmp-abc"), b"partial").unwrap();
    assert!(
        b.list("t/").await.unwrap().is_empty(),
        "temp files are not objects"
    );
    let pending = b.list_pending("t/").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, "t/x/obj");
    b.abort_pending(&pending[0]).await.unwrap();
    assert!(b.list_pending("t/").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conformance() {
    let Some(env) = s3_env("drctl-repo s3 conformance") else {
        return;
    };
    let prefix = unique_prefix("conformance");
    let b = env.backend();
    conformance(b.clone(), &prefix).await;
    cleanup(&*b, &prefix).await;
}

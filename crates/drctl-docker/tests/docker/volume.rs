//! Volume snapshot and restore through the archive API, byte for byte.

use std::time::{Duration, Instant};

use drctl_docker::{RestoreOptions, SnapshotOptions, VolumeSpec};
use tokio::io::AsyncWriteExt;

use crate::common::{
    docker, in_volume_ro, name, populate, sh_in_volume, state, tree_checksum, Cleanup, BASE_IMAGE,
    IDLE, TEST_LABEL,
};
use crate::lab;

fn allocated(volume: &str, file: &str) -> String {
    in_volume_ro(
        volume,
        &[
            "stat",
            "-c",
            "%s bytes, %b blocks of %B allocated",
            &format!("/v/{file}"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_1gib_with_owners_modes_links_and_a_sparse_file() {
    let client = lab!("volume");
    let cl = Cleanup::default();
    let src = cl.create_volume(&name("vol-src"), &[]);
    let dst = cl.create_volume(&name("vol-dst"), &[]);
    // The containers that made them stay (stopped): the snapshot reads through one, and
    // the restore empties with the other's image.
    let maker = cl.container(&name("vol-maker"));
    docker(&[
        "run",
        "--name",
        &maker,
        "--label",
        TEST_LABEL,
        "-v",
        &format!("{src}:/v"),
        BASE_IMAGE,
        "sh",
        "-c",
        &populate(Some(1024)),
    ]);
    let junk = cl.container(&name("vol-junk"));
    docker(&["run", "--name", &junk, "--label", TEST_LABEL, "-v", &format!("{dst}:/data"), BASE_IMAGE, "sh", "-c",
        "echo junk > /data/junk; mkdir -p /data/.cache/x /data/-rf; echo x > /data/.cache/x/y; touch /data/..odd"]);
    let (want, listing) = tree_checksum(&src);
    eprintln!("source tree:\n{listing}");

    // Snapshot straight into the restore: nothing touches the host's disk.
    let t = Instant::now();
    let mut reader = client.snapshot_volume_reader(&src, SnapshotOptions::default());
    let restored = client
        .restore_volume(&dst, &RestoreOptions::default(), &mut reader)
        .await;
    let snap = reader.finish().await.unwrap();
    let restored = restored.unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!("snapshot: {snap:?}");
    eprintln!("restore: {restored:?}");
    eprintln!(
        "1 GiB volume: snapshot piped into restore in {secs:.1} s ({} tar bytes, {:.0} MiB/s)",
        snap.bytes,
        snap.bytes as f64 / (1 << 20) as f64 / secs
    );
    assert_eq!(
        snap.source, maker,
        "read through the stopped container that mounts it"
    );
    assert!(
        restored
            .emptied_by
            .starts_with("staged, swapped in by a container from image"),
        "{}",
        restored.emptied_by
    );
    assert_eq!(snap.bytes, restored.bytes);
    assert!(snap.file_bytes > 1 << 30);

    let (got, got_listing) = tree_checksum(&dst);
    if got != want {
        panic!("trees differ\nsource:\n{listing}\nrestored:\n{got_listing}");
    }
    let mtime = |v: &str| in_volume_ro(v, &["stat", "-c", "%y", "/v/a/secret"]);
    assert_eq!(mtime(&src), mtime(&dst));
    let (a, b) = (allocated(&src, "sparse.img"), allocated(&dst, "sparse.img"));
    eprintln!("sparse.img source: {a}; restored: {b}");
    eprintln!(
        "sparseness survived: {}",
        if a == b {
            "yes"
        } else {
            "no (same content, but the holes came back as allocated zeros)"
        }
    );
    // The temporary container used for the restore is gone; the users are as they were.
    assert_eq!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=org.drctl.volume={dst}")
        ]),
        ""
    );
    assert_eq!(state(&maker), "exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_without_users_and_users_stopped_for_the_copy() {
    let client = lab!("volume");
    let cl = Cleanup::default();
    let vol = cl.create_volume(&name("vol-lone"), &["com.docker.compose.volume=lone"]);
    sh_in_volume(&vol, &populate(None));
    let (want, _) = tree_checksum(&vol);

    // No container mounts it: a temporary never-started one is made, and removed.
    let mut tar = Vec::new();
    let snap = client
        .snapshot_volume(&vol, &SnapshotOptions::default(), &mut tar)
        .await
        .unwrap();
    assert!(
        snap.source.starts_with("drctl-temp-snapshot-"),
        "{}",
        snap.source
    );
    assert_eq!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=org.drctl.volume={vol}")
        ]),
        ""
    );
    assert_eq!(snap.bytes as usize, tar.len());
    // Entries are relative to the volume's root.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("snap.tar");
    std::fs::write(&f, &tar).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-tvf")
        .arg(&f)
        .arg("--numeric-owner")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let first = listing.lines().next().unwrap();
    assert!(
        first.starts_with("drwxr-x--- 999/999") && first.ends_with(" ./"),
        "{first}"
    );
    assert!(listing.lines().all(|l| l.contains(" ./")), "{listing}");

    // Changed, then restored: no user and no image given, so there is no shell to swap
    // staged contents in: refused before anything changes. In place, the volume is emptied
    // by recreating it (with its labels).
    sh_in_volume(
        &vol,
        "rm -rf /v/a; echo new > /v/new; chown 0:0 /v; chmod 755 /v",
    );
    let changed = tree_checksum(&vol).0;
    assert_ne!(changed, want);
    let e = client
        .restore_volume(&vol, &RestoreOptions::default(), &mut tar.as_slice())
        .await
        .unwrap_err();
    assert!(
        matches!(e, drctl_docker::DockerError::CannotStage { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("no image with a shell"), "{e}");
    assert_eq!(tree_checksum(&vol).0, changed);
    let in_place = RestoreOptions {
        staged: false,
        ..Default::default()
    };
    let r = client
        .restore_volume(&vol, &in_place, &mut tar.as_slice())
        .await
        .unwrap();
    assert_eq!(r.emptied_by, "volume recreated");
    assert_eq!(tree_checksum(&vol).0, want);
    let labels = docker(&["volume", "inspect", "-f", "{{json .Labels}}", &vol]);
    assert!(
        labels.contains("\"com.docker.compose.volume\":\"lone\"")
            && labels.contains("org.drctl.test"),
        "{labels}"
    );

    // An image with a shell but without `stat`, which the swap needs: the swap container
    // says so after the upload, nothing is swapped, the staging folder goes, and the
    // caller is told to restore in place (emptying needs only `rm`).
    let nostat = cl.build_image(
        &name("nostat"),
        &format!("FROM {BASE_IMAGE}\nRUN rm -f /usr/bin/stat /bin/stat\n"),
    );
    sh_in_volume(&vol, "echo new > /v/new");
    let changed = tree_checksum(&vol).0;
    let no_stat = RestoreOptions {
        image: Some(nostat.clone()),
        ..Default::default()
    };
    let e = client
        .restore_volume(&vol, &no_stat, &mut tar.as_slice())
        .await
        .unwrap_err();
    assert!(
        matches!(e, drctl_docker::DockerError::CannotStage { .. })
            && e.to_string().contains("has no stat"),
        "{e}"
    );
    assert_eq!(tree_checksum(&vol).0, changed, "no staging folder is left");
    let r = client
        .restore_volume(
            &vol,
            &RestoreOptions {
                staged: false,
                ..no_stat
            },
            &mut tar.as_slice(),
        )
        .await
        .unwrap();
    assert!(
        r.emptied_by.starts_with("emptied by a container"),
        "{}",
        r.emptied_by
    );
    assert_eq!(tree_checksum(&vol).0, want);

    // A running user: stopped for the snapshot and started again.
    let user = name("vol-user");
    cl.run(
        &user,
        &["-v", &format!("{vol}:/data")],
        BASE_IMAGE,
        &["sh", "-c", IDLE],
    );
    let opts = SnapshotOptions {
        stop_users: true,
        grace: Duration::from_secs(10),
        ..Default::default()
    };
    let mut again = Vec::new();
    let snap = client
        .snapshot_volume(&vol, &opts, &mut again)
        .await
        .unwrap();
    assert_eq!(snap.stopped, vec![user.clone()]);
    assert_eq!(snap.source, user);
    assert_eq!(state(&user), "running");
    assert_eq!(again.len(), tar.len());

    // Restoring under a running user is refused unless drctl may stop it.
    let keep = RestoreOptions {
        stop_users: false,
        ..Default::default()
    };
    let e = client
        .restore_volume(&vol, &keep, &mut tar.as_slice())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("are running and use it"), "{e}");
    let r = client
        .restore_volume(&vol, &RestoreOptions::default(), &mut tar.as_slice())
        .await
        .unwrap();
    assert_eq!(r.stopped, vec![user.clone()]);
    assert!(
        r.emptied_by.starts_with("staged, swapped in"),
        "{}",
        r.emptied_by
    );
    assert_eq!(state(&user), "running");
    assert_eq!(tree_checksum(&vol).0, want);

    // A stale staging folder (a restore killed mid-upload) is left out of snapshots and
    // goes at the next restore.
    sh_in_volume(
        &vol,
        "mkdir -p /v/.drctl-staging-1-dead/x && echo half > /v/.drctl-staging-1-dead/x/f",
    );
    assert_ne!(tree_checksum(&vol).0, want);
    let mut with_stale = Vec::new();
    client
        .snapshot_volume(&vol, &SnapshotOptions::default(), &mut with_stale)
        .await
        .unwrap();
    assert_eq!(with_stale.len(), tar.len());
    assert!(!with_stale
        .windows(b".drctl-staging".len())
        .any(|w| w == b".drctl-staging"));
    client
        .restore_volume(&vol, &RestoreOptions::default(), &mut tar.as_slice())
        .await
        .unwrap();
    assert_eq!(tree_checksum(&vol).0, want);

    // Not a tar: refused before anything is emptied.
    let e = client
        .restore_volume(
            &vol,
            &RestoreOptions::default(),
            &mut &b"this is not a tar archive, just text"[..],
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("not a tar archive") && e.to_string().contains("not touched"),
        "{e}"
    );
    let mut junk = vec![b'x'; 2048];
    junk[..5].copy_from_slice(b"hello");
    let e = client
        .restore_volume(&vol, &RestoreOptions::default(), &mut junk.as_slice())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a tar archive"), "{e}");
    assert_eq!(tree_checksum(&vol).0, want);
    assert_eq!(state(&user), "running");

    // A truncated archive fails loudly. Staged, the volume keeps its contents (and no
    // staging folder is left); in place, it says the volume may be partial.
    let cut = &tar[..tar.len() / 2];
    let e = client
        .restore_volume(&vol, &RestoreOptions::default(), &mut &cut[..])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("truncated") && e.to_string().contains("left as they were"),
        "{e}"
    );
    assert_eq!(state(&user), "running");
    assert_eq!(tree_checksum(&vol).0, want);
    let e = client
        .restore_volume(&vol, &in_place, &mut &cut[..])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("truncated") && e.to_string().contains("may hold part"),
        "{e}"
    );
    assert_eq!(state(&user), "running");
    assert_ne!(tree_checksum(&vol).0, want);

    // A missing volume is created from its spec, then filled.
    let fresh = cl.volume(&name("vol-fresh"));
    let spec = VolumeSpec {
        name: fresh.clone(),
        driver: "local".into(),
        labels: [("org.drctl.test".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let opts = RestoreOptions {
        create: Some(spec),
        image: Some(BASE_IMAGE.into()),
        ..Default::default()
    };
    client
        .restore_volume(&fresh, &opts, &mut tar.as_slice())
        .await
        .unwrap();
    assert_eq!(tree_checksum(&fresh).0, want);

    // Snapshot of a missing volume.
    let mut sink = tokio::io::sink();
    let e = client
        .snapshot_volume(&name("vol-none"), &SnapshotOptions::default(), &mut sink)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no such volume"), "{e}");
    // Through the reader the failure is a read error, never an archive that looks whole.
    let mut reader = client.snapshot_volume_reader(&name("vol-none"), SnapshotOptions::default());
    let read = tokio::io::copy(&mut reader, &mut sink).await.unwrap_err();
    assert!(read.to_string().contains("no such volume"), "{read}");
    let e = reader.finish().await.unwrap_err();
    assert!(e.to_string().contains("no such volume"), "{e}");
    sink.flush().await.unwrap();
}

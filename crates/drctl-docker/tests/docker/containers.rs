//! Resolving services, stop / start / restart, and the stopped-containers guard.

use std::time::{Duration, Instant};

use drctl_docker::DockerError;

use crate::common::{docker, name, state, Cleanup, BASE_IMAGE, IDLE};
use crate::lab;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_stop_start_restart() {
    let client = lab!("containers");
    let cl = Cleanup::default();
    let project = name("res");
    let labels = |svc: &str| {
        vec![
            format!("com.docker.compose.project={project}"),
            format!("com.docker.compose.service={svc}"),
        ]
    };
    let mut made = Vec::new();
    for (n, svc, oneoff) in [
        ("res-web-1", "web", false),
        ("res-web-2", "web", false),
        ("res-web-run", "web", true),
    ] {
        let cname = name(n);
        let mut extra: Vec<String> = Vec::new();
        for l in labels(svc) {
            extra.push("--label".into());
            extra.push(l);
        }
        if oneoff {
            extra.push("--label".into());
            extra.push("com.docker.compose.oneoff=True".into());
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        cl.run(&cname, &extra, BASE_IMAGE, &["sh", "-c", IDLE]);
        made.push(cname);
    }
    let found = client
        .service_containers(&project, &["web", "db"])
        .await
        .unwrap();
    let web: Vec<&str> = found["web"].iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        web,
        vec![made[0].as_str(), made[1].as_str()],
        "one-off excluded"
    );
    assert!(
        found["db"].is_empty(),
        "a service without containers is an empty list"
    );
    assert_eq!(found["web"][0].state, "running");
    assert_eq!(
        client
            .container(&made[0])
            .await
            .unwrap()
            .unwrap()
            .service
            .as_deref(),
        Some("web")
    );
    assert!(client.container(&name("no-such")).await.unwrap().is_none());

    let web = &made[..2];
    let t = Instant::now();
    let stopped = client.stop(web, Duration::from_secs(10)).await.unwrap();
    assert_eq!(stopped, web.to_vec());
    eprintln!("stopped 2 containers in {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(state(&web[0]), "exited");
    // Idempotent: nothing was running, nothing reported.
    assert!(client
        .stop(web, Duration::from_secs(10))
        .await
        .unwrap()
        .is_empty());
    client.start(web).await.unwrap();
    client.start(web).await.unwrap();
    assert_eq!(state(&web[1]), "running");
    let before = docker(&["inspect", "-f", "{{.State.StartedAt}}", &web[0]]);
    client
        .restart(&web[..1], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(state(&web[0]), "running");
    assert_ne!(
        before,
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &web[0]])
    );

    let e = client.start(&[name("no-such")]).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains(&name("no-such")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_after_the_grace_period() {
    let client = lab!("containers");
    let cl = Cleanup::default();
    let c = name("stubborn");
    // Ignores SIGTERM: only the kill after the grace period ends it.
    cl.run(
        &c,
        &[],
        BASE_IMAGE,
        &["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
    );
    let t = Instant::now();
    let stopped = client.stop(&[&c], Duration::from_secs(2)).await.unwrap();
    let took = t.elapsed();
    assert_eq!(stopped, vec![c.clone()]);
    assert_eq!(state(&c), "exited");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert_eq!(docker(&["inspect", "-f", "{{.State.ExitCode}}", &c]), "137");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_containers_come_back_on_failure_and_on_drop() {
    let client = lab!("containers");
    let cl = Cleanup::default();
    let a = name("guard-a");
    let b = name("guard-b");
    cl.run(&a, &[], BASE_IMAGE, &["sh", "-c", IDLE]);
    cl.run(&b, &[], BASE_IMAGE, &["sh", "-c", IDLE]);
    docker(&["stop", "-t", "1", &b]); // already stopped: must stay stopped

    let r: Result<(), DockerError> = client
        .with_stopped(&[&a, &b], Duration::from_secs(10), || async {
            assert_eq!(state(&a), "exited");
            Err(DockerError::Failed {
                action: "do the work".into(),
                reason: "boom".into(),
            })
        })
        .await;
    assert_eq!(r.unwrap_err().to_string(), "failed to do the work: boom");
    assert_eq!(state(&a), "running", "started again after the failure");
    assert_eq!(state(&b), "exited", "what was not running stays stopped");

    // A guard dropped without restore (a panic, a cancelled step) starts them anyway.
    let guard = client
        .stop_guarded(&[&a], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(guard.stopped(), std::slice::from_ref(&a));
    drop(guard);
    let t = Instant::now();
    while state(&a) != "running" && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state(&a), "running");

    let guard = client
        .stop_guarded(&[&a], Duration::from_secs(10))
        .await
        .unwrap();
    guard.restore().await.unwrap();
    assert_eq!(state(&a), "running");

    // With a stop ledger: a record while stopped, none once started again.
    let ledger = tempfile::tempdir().unwrap();
    let records = || std::fs::read_dir(ledger.path()).unwrap().count();
    let client = client.with_stop_ledger(ledger.path());
    let guard = client
        .stop_guarded(&[&a, &b], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        records(),
        1,
        "only the container that was running is recorded"
    );
    guard.restore().await.unwrap();
    assert_eq!(records(), 0);

    // A drctl killed with the guard armed (here: forgotten, so no cleanup runs) leaves
    // the record; while its process lives, nobody else touches it; once it is gone, the
    // next drctl starts the container.
    let guard = client
        .stop_guarded(&[&a], Duration::from_secs(10))
        .await
        .unwrap();
    std::mem::forget(guard);
    assert!(
        client.start_left_stopped(false).await.is_empty(),
        "its owner (this process) lives"
    );
    assert_eq!(state(&a), "exited");
    // As if its process had died: the record names one that has exited.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let orphan = || {
        let record = std::fs::read_dir(ledger.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let text = std::fs::read_to_string(&record).unwrap().replace(
            &format!("pid={}", std::process::id()),
            &format!("pid={dead_pid}"),
        );
        std::fs::write(&record, text).unwrap();
    };
    orphan();
    assert_eq!(client.start_left_stopped(false).await, vec![a.clone()]);
    assert_eq!(state(&a), "running");
    assert_eq!(records(), 0);

    // Stopped for a restore that a killed drctl did not finish: named but left stopped,
    // until a run succeeded (`restores`).
    let guard = client
        .stop_guarded_for_restore(&[&a], Duration::from_secs(10))
        .await
        .unwrap();
    std::mem::forget(guard);
    orphan();
    assert!(client.start_left_stopped(false).await.is_empty());
    assert_eq!(state(&a), "exited");
    assert_eq!(client.start_left_stopped(true).await, vec![a.clone()]);
    assert_eq!(state(&a), "running");
    assert_eq!(records(), 0);
}

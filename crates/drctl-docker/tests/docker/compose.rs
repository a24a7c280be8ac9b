//! Compose up / down through whichever compose CLI is installed (v1 here, v2 elsewhere).

use std::time::{Duration, Instant};

use drctl_core::compose::load_compose;
use drctl_docker::{ComposeCli, ComposeProject, Poll, UpOptions};

use crate::common::{name, state, Cleanup, BASE_IMAGE, IDLE};
use crate::lab;

fn compose_file(broken: bool) -> String {
    let idle = IDLE;
    let mut f = format!(
        r#"services:
  db:
    image: {BASE_IMAGE}
    command: ["sh", "-c", "sleep 1; touch /tmp/ready; {idle}"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      timeout: 3s
      retries: 60
    volumes:
      - data:/data
    labels:
      org.drctl.test: "1"
  web:
    image: {BASE_IMAGE}
    command: ["sh", "-c", "{idle}"]
    depends_on:
      db:
        condition: service_healthy
    scale: 2
    labels:
      org.drctl.test: "1"
"#
    );
    if broken {
        // Fails at create time in the daemon (no pull, no network).
        f.push_str(&format!(
            r#"  broken:
    image: {BASE_IMAGE}
    volumes:
      - type: bind
        source: /nonexistent/drctl-test
        target: /x
    labels:
      org.drctl.test: "1"
"#
        ));
    }
    f.push_str(
        r#"volumes:
  data:
    labels:
      org.drctl.test: "1"
networks:
  default:
    labels:
      org.drctl.test: "1"
"#,
    );
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_down_and_a_removed_service_brought_back() {
    let client = lab!("compose");
    let cli = match ComposeCli::detect().await {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    eprintln!(
        "compose: {} ({:?}, {})",
        cli.command_line(),
        cli.flavor,
        cli.version
    );
    let cl = Cleanup::default();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, compose_file(true)).unwrap();
    let project = ComposeProject {
        name: name("stack"),
        dir: dir.path().to_path_buf(),
        files: vec![file.clone()],
        ..Default::default()
    };
    let mut down: Vec<String> = cli
        .command_line()
        .split_whitespace()
        .map(String::from)
        .collect();
    down.extend([
        "-p".into(),
        project.name.clone(),
        "-f".into(),
        file.display().to_string(),
    ]);
    cl.compose_project(down);
    let model = load_compose(std::slice::from_ref(&file)).unwrap();

    // Both, listed dependents first: db is started (and healthy) before web.
    let t = Instant::now();
    client
        .compose_up(
            &cli,
            &project,
            &model,
            &["web", "db"],
            &UpOptions::default(),
        )
        .await
        .unwrap();
    eprintln!("up db + web in {:.1} s", t.elapsed().as_secs_f64());
    let found = client
        .service_containers(&project.name, &["db", "web", "broken"])
        .await
        .unwrap();
    assert_eq!(found["db"].len(), 1);
    assert_eq!(found["web"].len(), 2, "two replicas");
    assert!(found["broken"].is_empty());
    let db = found["db"][0].name.clone();
    let webs: Vec<String> = found["web"].iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        client
            .inspect(&db)
            .await
            .unwrap()
            .state
            .unwrap()
            .health
            .unwrap()
            .status
            .unwrap()
            .to_string(),
        "healthy"
    );

    // stop / start / restart on compose containers.
    assert_eq!(
        client.stop(&webs, Duration::from_secs(10)).await.unwrap(),
        webs
    );
    client.start(&webs).await.unwrap();
    client
        .restart(&[&db], Duration::from_secs(10))
        .await
        .unwrap();
    assert!(webs.iter().all(|w| state(w) == "running"));

    // The db container is removed: the service has no container, then `up` brings it back.
    crate::common::docker(&["rm", "-f", &db]);
    let found = client
        .service_containers(&project.name, &["db"])
        .await
        .unwrap();
    assert!(found["db"].is_empty());
    client
        .compose_up(&cli, &project, &model, &["db"], &UpOptions::default())
        .await
        .unwrap();
    let found = client
        .service_containers(&project.name, &["db"])
        .await
        .unwrap();
    assert_eq!(found["db"].len(), 1);
    client
        .wait_healthy(
            &found["db"][0].name,
            Poll::new(Duration::from_secs(30), Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert!(client
        .compose_volume(&project.name, "data")
        .await
        .unwrap()
        .is_some());

    // A failing compose command quotes compose's own words.
    let e = client
        .compose_up(&cli, &project, &model, &["broken"], &UpOptions::default())
        .await
        .unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        msg.starts_with("failed to start service `broken`: `"),
        "{msg}"
    );
    assert!(msg.contains("/nonexistent/drctl-test"), "{msg}");
    let e = client
        .compose_up(&cli, &project, &model, &["nope"], &UpOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no such service"), "{e}");

    // Down for one service: its containers go, the others stay.
    client
        .compose_down(&cli, &project, &model, &["web"], false)
        .await
        .unwrap();
    let found = client
        .service_containers(&project.name, &["db", "web"])
        .await
        .unwrap();
    assert!(found["web"].is_empty());
    assert_eq!(found["db"].len(), 1);
    // Removing db with its volume.
    client
        .compose_down(&cli, &project, &model, &["db", "broken"], true)
        .await
        .unwrap();
    assert!(client
        .compose_volume(&project.name, "data")
        .await
        .unwrap()
        .is_none());
    // And the whole project.
    client
        .compose_down(&cli, &project, &model, &[], true)
        .await
        .unwrap();
    assert!(client
        .project_containers(&project.name)
        .await
        .unwrap()
        .is_empty());
}

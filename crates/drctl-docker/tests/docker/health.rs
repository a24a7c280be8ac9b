//! Health gates: success, and a timeout that says what was seen last.

use std::time::{Duration, Instant};

use drctl_docker::health::{wait_http, wait_tcp};
use drctl_docker::Poll;

use crate::common::{free_port, name, Cleanup, BASE_IMAGE, IDLE};
use crate::lab;

fn poll(secs: u64) -> Poll {
    Poll::new(Duration::from_secs(secs), Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_healthcheck_gate() {
    let client = lab!("health");
    let cl = Cleanup::default();
    let ok = name("health-ok");
    cl.run(
        &ok,
        &[
            "--health-cmd",
            "test -f /tmp/ready",
            "--health-interval",
            "1s",
            "--health-retries",
            "30",
        ],
        BASE_IMAGE,
        &["sh", "-c", &format!("sleep 2; touch /tmp/ready; {IDLE}")],
    );
    let bad = name("health-bad");
    cl.run(
        &bad,
        &[
            "--health-cmd",
            "echo not-ready-yet; exit 1",
            "--health-interval",
            "1s",
            "--health-retries",
            "100",
        ],
        BASE_IMAGE,
        &["sh", "-c", IDLE],
    );
    let none = name("health-none");
    cl.run(&none, &[], BASE_IMAGE, &["sh", "-c", IDLE]);

    client.wait_healthy(&ok, poll(30)).await.unwrap();

    let t = Instant::now();
    let e = client.wait_healthy(&bad, poll(4)).await.unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(e.is_gate_timeout());
    assert!(t.elapsed() < Duration::from_secs(8));
    assert!(msg.starts_with(&format!("failed to see container `{bad}` healthy: still `starting` after 4 s; last healthcheck output: not-ready-yet (exit code 1)")), "{msg}");

    let e = client.wait_healthy(&none, poll(30)).await.unwrap_err();
    assert!(!e.is_gate_timeout());
    assert!(e.to_string().contains("has no healthcheck"), "{e}");
    // Without a healthcheck, "ready" means running.
    client.wait_ready(&none, poll(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_http_and_exec_gates() {
    let client = lab!("health");
    let cl = Cleanup::default();
    let c = name("health-http");
    let port = free_port();
    cl.run(
        &c,
        &["-p", &format!("127.0.0.1:{port}:8080")],
        BASE_IMAGE,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hi > /www/index.html && exec busybox httpd -f -p 8080 -h /www",
        ],
    );
    let addr = format!("127.0.0.1:{port}");
    wait_tcp(&addr, poll(20)).await.unwrap();
    wait_http(&format!("http://{addr}/"), Some(200), poll(20))
        .await
        .unwrap();
    wait_http(&format!("http://{addr}/"), None, poll(5))
        .await
        .unwrap();

    let e = wait_http(&format!("http://{addr}/missing"), Some(200), poll(2))
        .await
        .unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(msg.starts_with(&format!("failed to get HTTP 200 from http://{addr}/missing: still answering HTTP 404 after 2 s; last body:")), "{msg}");

    let closed = format!("127.0.0.1:{}", free_port());
    let e = wait_tcp(&closed, poll(2)).await.unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        msg.starts_with(&format!(
            "failed to connect to {closed}: still not accepting connections ("
        )),
        "{msg}"
    );
    assert!(
        msg.contains("refused") && msg.ends_with("after 2 s"),
        "{msg}"
    );

    client.wait_exec(&c, &["true"], poll(10)).await.unwrap();
    let e = client
        .wait_exec(
            &c,
            &["sh", "-c", "echo no flag >&2; test -f /tmp/flag"],
            poll(2),
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("still exiting with code 1 after 2 s; last output: no flag"),
        "{msg}"
    );
}

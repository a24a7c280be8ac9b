//! Daemon unreachable: one clear message naming DOCKER_HOST and the address tried.

use std::time::Duration;

use drctl_docker::{DockerClient, DockerError};

fn assert_clear(e: &DockerError, addr: &str) {
    let msg = e.to_string();
    assert!(e.is_unreachable(), "{msg}");
    assert!(msg.contains("DOCKER_HOST"), "{msg}");
    assert!(msg.contains(addr), "{msg}");
    assert!(
        msg.starts_with("failed to reach the Docker daemon"),
        "{msg}"
    );
}

#[tokio::test]
async fn missing_socket_names_docker_host_and_the_socket() {
    let host = "unix:///nonexistent/drctl-test.sock";
    match DockerClient::connect_to(host) {
        Err(e) => assert_clear(&e, "/nonexistent/drctl-test.sock"),
        Ok(c) => {
            let e = c.daemon_info(Duration::from_secs(5)).await.unwrap_err();
            assert_clear(&e, "/nonexistent/drctl-test.sock");
            eprintln!("{e}");
            // Any call, not only the first, says the same.
            let e = c.container("anything").await.unwrap_err();
            assert_clear(&e, "/nonexistent/drctl-test.sock");
            let e = c
                .stop(&["anything"], Duration::from_secs(1))
                .await
                .unwrap_err();
            assert_clear(&e, "/nonexistent/drctl-test.sock");
        }
    }
}

#[tokio::test]
async fn refused_tcp_port_names_the_address() {
    // Port 1 on loopback: nothing listens there.
    let c = DockerClient::connect_to("tcp://127.0.0.1:1").unwrap();
    let e = c.daemon_info(Duration::from_secs(5)).await.unwrap_err();
    assert_clear(&e, "tcp://127.0.0.1:1");
    let e = c.project_containers("x").await.unwrap_err();
    assert_clear(&e, "tcp://127.0.0.1:1");
}

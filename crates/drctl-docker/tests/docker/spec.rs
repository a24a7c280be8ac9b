//! Capture a container's spec, remove it (and its network and volume), recreate it.

use drctl_docker::ContainerSpec;

use crate::common::{docker, free_port, name, state, Cleanup, BASE_IMAGE, IDLE};
use crate::lab;

fn inspect(c: &str, fmt: &str) -> String {
    docker(&["inspect", "-f", fmt, c])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_remove_recreate() {
    let client = lab!("spec");
    let cl = Cleanup::default();
    let project = name("spec");
    let net = cl.network(&format!("{project}_default"));
    docker(&[
        "network",
        "create",
        "--label",
        "org.drctl.test=1",
        "--label",
        &format!("com.docker.compose.project={project}"),
        "--label",
        "com.docker.compose.network=default",
        &net,
    ]);
    let other = cl.network(&format!("{project}_backend"));
    docker(&["network", "create", "--label", "org.drctl.test=1", &other]);
    let vol = cl.create_volume(
        &format!("{project}_data"),
        &[
            &format!("com.docker.compose.project={project}"),
            "com.docker.compose.volume=data",
        ],
    );
    let c = name("spec-db");
    let port = free_port();
    cl.run(
        &c,
        &[
            "--label",
            &format!("com.docker.compose.project={project}"),
            "--label",
            "com.docker.compose.service=db",
            "--label",
            "com.docker.compose.config-hash=abc123",
            "--network",
            &net,
            "--network-alias",
            "db",
            "--network-alias",
            "database",
            "-v",
            &format!("{vol}:/data"),
            "--mount",
            "type=tmpfs,destination=/scratch",
            "-p",
            &format!("127.0.0.1:{port}:8080"),
            "--restart",
            "unless-stopped",
            "-e",
            "FOO=bar",
            "--health-cmd",
            "true",
            "--health-interval",
            "1s",
        ],
        BASE_IMAGE,
        &["sh", "-c", &format!("echo kept > /data/file; {IDLE}")],
    );
    docker(&["network", "connect", "--alias", "db-backend", &other, &c]);

    let what = "{{json .Config.Labels}} {{json .HostConfig.Binds}} {{json .HostConfig.Mounts}} {{json .HostConfig.PortBindings}} {{json .HostConfig.RestartPolicy}} {{json .Config.Env}} {{json .Config.Cmd}} {{json .Config.Healthcheck}}";
    let before = inspect(&c, what);
    let aliases_before = inspect(
        &c,
        &format!("{{{{json (index .NetworkSettings.Networks \"{net}\").Aliases}}}}"),
    );
    let spec = client.capture_spec(&c).await.unwrap();
    assert_eq!(spec.name, c);
    assert_eq!(spec.image, BASE_IMAGE);
    assert!(spec.volumes.iter().any(|v| v.name == vol
        && v.labels
            .get("com.docker.compose.volume")
            .map(String::as_str)
            == Some("data")));
    assert!(spec.networks.iter().any(|n| n.name == net));
    assert_eq!(
        spec.endpoints[&net].aliases,
        vec!["db".to_string(), "database".to_string()]
    );

    // Through JSON, as a backup stores it.
    let json = serde_json::to_string_pretty(&spec).unwrap();
    let spec: ContainerSpec = serde_json::from_str(&json).unwrap();

    docker(&["rm", "-f", &c]);
    docker(&["network", "rm", &net, &other]);
    docker(&["volume", "rm", &vol]);

    client.create_from_spec(&spec).await.unwrap();
    assert_eq!(state(&c), "running");
    assert_eq!(inspect(&c, what), before);
    let aliases_after = inspect(
        &c,
        &format!("{{{{json (index .NetworkSettings.Networks \"{net}\").Aliases}}}}"),
    );
    eprintln!("aliases before {aliases_before}, after {aliases_after}");
    assert!(aliases_after.contains("\"db\"") && aliases_after.contains("\"database\""));
    let backend = inspect(
        &c,
        &format!("{{{{json (index .NetworkSettings.Networks \"{other}\").Aliases}}}}"),
    );
    assert!(backend.contains("db-backend"), "{backend}");
    assert_eq!(
        docker(&["network", "inspect", "-f", "{{json .Labels}}", &net]),
        format!("{{\"com.docker.compose.network\":\"default\",\"com.docker.compose.project\":\"{project}\",\"org.drctl.test\":\"1\"}}")
    );
    assert!(
        docker(&["volume", "inspect", "-f", "{{json .Labels}}", &vol])
            .contains("\"com.docker.compose.volume\":\"data\"")
    );
    assert_eq!(
        inspect(
            &c,
            "{{(index (index .NetworkSettings.Ports \"8080/tcp\") 0).HostPort}}"
        ),
        port.to_string()
    );

    // A second recreate is refused while the container exists.
    let e = client.create_from_spec(&spec).await.unwrap_err();
    assert!(
        e.to_string().contains("a container with that name exists"),
        "{e}"
    );

    // A missing image is a clear error, never a pull.
    let mut gone = spec.clone();
    gone.name = name("spec-gone");
    gone.image = "drctl-test-no-such-image:1".into();
    gone.image_id =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
    let e = client.create_from_spec(&gone).await.unwrap_err();
    assert!(e.to_string().contains("never pulls"), "{e}");
}

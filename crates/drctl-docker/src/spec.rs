//! Container specs: what it takes to recreate a container without its compose file.
//!
//! Compose labels vanish with the container, and a backup may be restored where no compose
//! file is at hand: the backup records each container's inspect (config, host config with
//! binds, mounts, ports and restart policy, labels, networks with aliases, image) and the
//! networks and named volumes it uses, so that [`DockerClient::create_from_spec`] can build
//! the same container again, with the same compose labels, that compose then adopts.

use std::collections::BTreeMap;

use bollard::models::{
    ContainerConfig, ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig,
    NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use serde::{Deserialize, Serialize};

use crate::{DockerClient, DockerError};

/// Everything needed to create a container again. Serializable (the Docker parts in the
/// Engine API's own JSON shape) so that it can be stored with a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    /// The image as configured (e.g. `postgres:16`).
    pub image: String,
    /// The image's id at capture time, used when the tag is gone but the image is not.
    pub image_id: String,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    /// Endpoint settings per network (aliases, static addresses, links).
    pub endpoints: BTreeMap<String, EndpointSpec>,
    /// How to create the networks when they are missing (built-in ones are not listed).
    pub networks: Vec<NetworkSpec>,
    /// How to create the named volumes it mounts when they are missing.
    pub volumes: Vec<VolumeSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointSpec {
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub links: Vec<String>,
    #[serde(default)]
    pub ipam: Option<EndpointIpamConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub driver: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub driver: String,
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

const BUILTIN_NETWORKS: [&str; 3] = ["bridge", "host", "none"];

impl DockerClient {
    /// Record what it takes to recreate a container.
    pub async fn capture_spec(&self, container: &str) -> Result<ContainerSpec, DockerError> {
        let i = self.inspect(container).await?;
        let id = i.id.clone().unwrap_or_default();
        let short: String = id.chars().take(12).collect();
        let name = i
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let mut config = i.config.clone().unwrap_or_default();
        // Docker names a container's host after its id unless told otherwise.
        if config.hostname.as_deref() == Some(short.as_str()) {
            config.hostname = None;
        }
        let host_config = i.host_config.clone().unwrap_or_default();
        let mut endpoints = BTreeMap::new();
        let mut networks = Vec::new();
        let nets = i
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.clone())
            .unwrap_or_default();
        for (net, ep) in nets {
            endpoints.insert(
                net.clone(),
                EndpointSpec {
                    // The container's own id is an alias Docker adds; a new container gets its own.
                    aliases: ep
                        .aliases
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|a| *a != short && *a != id)
                        .collect(),
                    links: ep.links.unwrap_or_default(),
                    ipam: ep.ipam_config.filter(|c| {
                        c.ipv4_address.as_deref().is_some_and(|s| !s.is_empty())
                            || c.ipv6_address.as_deref().is_some_and(|s| !s.is_empty())
                    }),
                },
            );
            if BUILTIN_NETWORKS.contains(&net.as_str()) {
                continue;
            }
            let n =
                self.docker.inspect_network(&net, None).await.map_err(
                    self.api_err(format!("inspect network `{net}` of container `{name}`")),
                )?;
            networks.push(NetworkSpec {
                name: net.clone(),
                driver: n.driver,
                labels: n.labels.unwrap_or_default().into_iter().collect(),
                options: n.options.unwrap_or_default().into_iter().collect(),
                internal: n.internal.unwrap_or(false),
                attachable: n.attachable.unwrap_or(false),
            });
        }
        let mut volumes = Vec::new();
        for m in i.mounts.clone().unwrap_or_default() {
            if m.typ.as_deref() != Some("volume") {
                continue;
            }
            let Some(vname) = m.name else { continue };
            let v =
                self.docker.inspect_volume(&vname).await.map_err(
                    self.api_err(format!("inspect volume `{vname}` of container `{name}`")),
                )?;
            volumes.push(VolumeSpec {
                name: v.name,
                driver: v.driver,
                driver_opts: v.options.into_iter().collect(),
                labels: v.labels.into_iter().collect(),
            });
        }
        Ok(ContainerSpec {
            name,
            image: config.image.clone().unwrap_or_default(),
            image_id: i.image.clone().unwrap_or_default(),
            config,
            host_config,
            endpoints,
            networks,
            volumes,
        })
    }

    /// Create a container again from its spec and start it: its networks and named volumes
    /// are created first when missing (with their recorded labels, so that compose adopts
    /// them). Never pulls: the image must be on this host. Returns the new container's id.
    pub async fn create_from_spec(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let name = &spec.name;
        let action = format!("recreate container `{name}`");
        if let Some(c) = self.container(name).await? {
            return Err(DockerError::failed(
                action,
                format!(
                    "a container with that name exists (state `{}`); start it, or remove it first (docker rm {name})",
                    c.state
                ),
            ));
        }
        let image = self.local_image(spec).await?;
        for n in &spec.networks {
            self.ensure_network(n).await?;
        }
        for v in &spec.volumes {
            self.ensure_volume(v).await?;
        }
        // The create call takes one network (before API 1.44); the rest are connected
        // before the start.
        let mode = spec.host_config.network_mode.clone().unwrap_or_default();
        let first = spec
            .endpoints
            .keys()
            .find(|n| **n == mode)
            .or_else(|| spec.endpoints.keys().next())
            .cloned();
        let endpoint = |net: &str| {
            let e = spec.endpoints.get(net).cloned().unwrap_or_default();
            EndpointSettings {
                aliases: (!e.aliases.is_empty()).then_some(e.aliases),
                links: (!e.links.is_empty()).then_some(e.links),
                ipam_config: e.ipam,
                ..Default::default()
            }
        };
        let c = &spec.config;
        let body = ContainerCreateBody {
            hostname: c.hostname.clone(),
            domainname: c.domainname.clone(),
            user: c.user.clone(),
            attach_stdin: c.attach_stdin,
            attach_stdout: c.attach_stdout,
            attach_stderr: c.attach_stderr,
            exposed_ports: c.exposed_ports.clone(),
            tty: c.tty,
            open_stdin: c.open_stdin,
            stdin_once: c.stdin_once,
            env: c.env.clone(),
            cmd: c.cmd.clone(),
            healthcheck: c.healthcheck.clone(),
            args_escaped: c.args_escaped,
            image: Some(image),
            volumes: c.volumes.clone(),
            working_dir: c.working_dir.clone(),
            entrypoint: c.entrypoint.clone(),
            network_disabled: c.network_disabled,
            on_build: c.on_build.clone(),
            labels: c.labels.clone(),
            stop_signal: c.stop_signal.clone(),
            stop_timeout: c.stop_timeout,
            shell: c.shell.clone(),
            host_config: Some(spec.host_config.clone()),
            networking_config: first.as_ref().map(|n| NetworkingConfig {
                endpoints_config: Some([(n.clone(), endpoint(n))].into_iter().collect()),
            }),
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(name).build()),
                body,
            )
            .await
            .map_err(self.api_err(action.clone()))?;
        let result = async {
            for net in spec.endpoints.keys() {
                if Some(net) == first.as_ref() || BUILTIN_NETWORKS.contains(&net.as_str()) {
                    continue;
                }
                self.docker
                    .connect_network(
                        net,
                        NetworkConnectRequest {
                            container: created.id.clone(),
                            endpoint_config: Some(endpoint(net)),
                        },
                    )
                    .await
                    .map_err(
                        self.api_err(format!("connect container `{name}` to network `{net}`")),
                    )?;
            }
            self.start(&[name]).await
        }
        .await;
        if let Err(e) = result {
            // Leave no half-made container behind: a retry must be able to create it again.
            let _ = self
                .docker
                .remove_container(
                    &created.id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
            return Err(e);
        }
        tracing::info!(container = name, "recreated from its spec");
        Ok(created.id)
    }

    async fn local_image(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        for candidate in [&spec.image, &spec.image_id] {
            if candidate.is_empty() {
                continue;
            }
            if self.docker.inspect_image(candidate).await.is_ok() {
                return Ok(candidate.clone());
            }
        }
        Err(DockerError::failed(
            format!("recreate container `{}`", spec.name),
            format!(
                "image `{}` ({}) is not on this host, and drctl never pulls; load or pull it first (docker load, docker pull {})",
                spec.image, spec.image_id, spec.image
            ),
        ))
    }

    /// Create a network when it does not exist.
    pub async fn ensure_network(&self, n: &NetworkSpec) -> Result<(), DockerError> {
        match self.docker.inspect_network(&n.name, None).await {
            Ok(_) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(self.api_err(format!("inspect network `{}`", n.name))(e)),
        }
        tracing::info!(network = n.name, "creating missing network");
        self.docker
            .create_network(NetworkCreateRequest {
                name: n.name.clone(),
                driver: n.driver.clone(),
                internal: Some(n.internal),
                attachable: Some(n.attachable),
                labels: Some(n.labels.clone().into_iter().collect()),
                options: Some(n.options.clone().into_iter().collect()),
                ..Default::default()
            })
            .await
            .map_err(self.api_err(format!("create network `{}`", n.name)))?;
        Ok(())
    }

    /// Create a volume when it does not exist.
    pub async fn ensure_volume(&self, v: &VolumeSpec) -> Result<(), DockerError> {
        match self.docker.inspect_volume(&v.name).await {
            Ok(_) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(self.api_err(format!("inspect volume `{}`", v.name))(e)),
        }
        tracing::info!(volume = v.name, "creating missing volume");
        self.create_volume(v).await
    }

    pub(crate) async fn create_volume(&self, v: &VolumeSpec) -> Result<(), DockerError> {
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(v.name.clone()),
                driver: Some(v.driver.clone()).filter(|d| !d.is_empty()),
                driver_opts: Some(v.driver_opts.clone().into_iter().collect()),
                labels: Some(v.labels.clone().into_iter().collect()),
                ..Default::default()
            })
            .await
            .map_err(self.api_err(format!("create volume `{}`", v.name)))?;
        Ok(())
    }

    /// How a volume was made (driver, options, labels), to make it again.
    pub async fn volume_spec(&self, volume: &str) -> Result<VolumeSpec, DockerError> {
        let v = self
            .docker
            .inspect_volume(volume)
            .await
            .map_err(self.api_err(format!("inspect volume `{volume}`")))?;
        Ok(VolumeSpec {
            name: v.name,
            driver: v.driver,
            driver_opts: v.options.into_iter().collect(),
            labels: v.labels.into_iter().collect(),
        })
    }
}

//! bbr's `director` target: the director VM as instance `bosh/0` at `--host`, with the
//! artifact named after the host (bbr's `extractNameFromAddress`), and, unlike bbr, with
//! its host key verified. A one-instance [`HostsTarget`] underneath.

use super::hosts::{HostSpec, HostsTarget, Inventory};
use super::ssh_options::{HostKeyChoice, SshOptions};
use crate::instance::InstanceRef;
use crate::model::InstanceId;
use crate::target::Target;
use crate::transport::ssh::{self, parse_address, KeySource};
use anyhow::{bail, Context};
use async_trait::async_trait;
use std::path::Path;

/// bbr's `extractNameFromAddress`: the host of `--host`, without scheme, user or port.
pub fn deployment_name_from_address(address: &str) -> String {
    let mut a = address.trim();
    if let Some((_, rest)) = a.split_once("://") {
        a = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((_, host)) = a.rsplit_once('@') {
            a = host;
        }
    }
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    a.split(':').next().unwrap_or_default().to_string()
}

/// bbr's `director` target: the director VM as instance `bosh/0`.
pub struct DirectorTarget {
    inner: HostsTarget,
}

impl DirectorTarget {
    /// `host` is `ADDR[:PORT]` (port 22 by default); the deployment name is the host
    /// without port. `host_public_key` pins the host key; otherwise `opts` decides
    /// (`--known-hosts`, default `~/.ssh/known_hosts`, or `--insecure-skip-host-key-check`).
    pub fn new(
        host: &str,
        username: &str,
        private_key_path: &Path,
        host_public_key: Option<&str>,
        opts: &SshOptions,
    ) -> anyhow::Result<Self> {
        let name = deployment_name_from_address(host);
        if name.is_empty() {
            bail!("--host {host:?} has no host name");
        }
        Self::with_key(&name, host, username, KeySource::Path(private_key_path.to_path_buf()), host_public_key, opts)
    }

    /// [`DirectorTarget::new`] with the key given as a [`KeySource`] (the `bbr` key Ops
    /// Manager holds, in memory) and the artifact's name given (the director's address as
    /// Ops Manager knows it, even when SSH goes to a forwarded port).
    pub fn with_key(
        name: &str,
        host: &str,
        username: &str,
        key: KeySource,
        host_public_key: Option<&str>,
        opts: &SshOptions,
    ) -> anyhow::Result<Self> {
        let (h, port) = parse_address(host, 22).context("--host")?;
        if username.trim().is_empty() {
            bail!("--username is empty");
        }
        let host_key = match host_public_key {
            Some(line) => HostKeyChoice::Pinned(ssh::parse_public_key_line(line).context("--host-public-key")?),
            None => HostKeyChoice::Default,
        };
        let spec = HostSpec { id: InstanceId::new("bosh", "0"), host: h, port, username: username.to_string(), key, host_key };
        let name = name.to_string();
        Ok(DirectorTarget { inner: HostsTarget::new(Inventory { name, instances: vec![spec] }, opts) })
    }

    pub fn warnings(&self) -> Vec<String> {
        self.inner.warnings()
    }
}

#[async_trait]
impl Target for DirectorTarget {
    fn deployment_name(&self) -> &str {
        self.inner.deployment_name()
    }

    fn location(&self) -> Option<String> {
        self.inner.location()
    }

    async fn instances(&self) -> anyhow::Result<Vec<InstanceRef>> {
        self.inner.instances().await.map_err(|e| {
            if format!("{e:#}").contains("private key") {
                e.context("failed reading private key")
            } else {
                e
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_director_addresses() {
        for (addr, name) in [
            ("10.0.0.6", "10.0.0.6"),
            ("10.0.0.6:22", "10.0.0.6"),
            ("director.example.com:2222", "director.example.com"),
            ("https://10.0.0.6:25555", "10.0.0.6"),
            ("ssh://user@bosh.internal:22/x", "bosh.internal"),
            ("[fd00::6]:22", "fd00::6"),
        ] {
            assert_eq!(deployment_name_from_address(addr), name, "{addr}");
        }
    }

    #[tokio::test]
    async fn director_target_names_and_instance() {
        let t = DirectorTarget::new("10.0.0.6:2222", "jumpbox", Path::new("/nonexistent"), Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"), &SshOptions::default())
            .unwrap();
        assert_eq!(t.deployment_name(), "10.0.0.6");
        let e = t.instances().await.err().expect("missing key file");
        let e = format!("{e:#}");
        assert!(e.contains("failed reading private key") && e.contains("/nonexistent"), "{e}");
        assert!(DirectorTarget::new("10.0.0.6:x", "u", Path::new("/k"), None, &SshOptions::default()).is_err());
    }
}

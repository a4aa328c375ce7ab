//! SSH settings shared by every target that reaches instances over SSH (`hosts`,
//! `director`, `deployment`): host-key policy, timeouts, keepalives, and the gateway
//! (`--gateway` or bbr's `BOSH_ALL_PROXY`). Knows the SSH transport's configuration types;
//! knows nothing of how instances are listed.

use crate::transport::ssh::{self, parse_bosh_all_proxy, ClientKey, GatewayConfig, HostKeyPolicy, KeySource, Proxy, Secret};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::time::Duration;

/// A keepalive interval must be at least a second: russh sends them on a timer, and a
/// zero interval would mean none at all.
pub fn check_keepalive(d: Duration) -> anyhow::Result<()> {
    if d < Duration::from_secs(1) {
        bail!("the SSH keepalive interval must be at least 1s (got {})", humantime::format_duration(d));
    }
    Ok(())
}

/// SSH settings shared by every instance of a target.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// `--known-hosts`; `None` means `~/.ssh/known_hosts`.
    pub known_hosts_path: Option<PathBuf>,
    /// `--insecure-skip-host-key-check`: no host key is checked, pinned or not.
    pub insecure_skip_host_key_check: bool,
    pub connect_timeout: Duration,
    pub script_timeout: Option<Duration>,
    pub keepalive_interval: Duration,
    /// `--gateway` or `BOSH_ALL_PROXY`; see [`resolve_gateway`].
    pub gateway: Option<Proxy>,
    /// For passphrase-protected keys; [`SshOptions::from_env`] reads `LOCKSTEP_SSH_KEY_PASSPHRASE`.
    pub key_passphrase: Option<Secret>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            known_hosts_path: None,
            insecure_skip_host_key_check: false,
            connect_timeout: ssh::DEFAULT_CONNECT_TIMEOUT,
            script_timeout: None,
            keepalive_interval: ssh::DEFAULT_KEEPALIVE_INTERVAL,
            gateway: None,
            key_passphrase: None,
        }
    }
}

impl SshOptions {
    /// The defaults, with the key passphrase from `LOCKSTEP_SSH_KEY_PASSPHRASE`.
    pub fn from_env() -> Self {
        SshOptions { key_passphrase: Secret::from_env(), ..SshOptions::default() }
    }

    /// The policy for hosts without a pinned key or a known_hosts file of their own.
    pub fn default_host_key_policy(&self) -> HostKeyPolicy {
        if self.insecure_skip_host_key_check {
            HostKeyPolicy::Insecure
        } else {
            HostKeyPolicy::KnownHosts(self.known_hosts_path.clone().unwrap_or_else(ssh::default_known_hosts_path))
        }
    }

    pub(crate) fn policy_for(&self, own: &HostKeyChoice) -> HostKeyPolicy {
        if self.insecure_skip_host_key_check {
            return HostKeyPolicy::Insecure;
        }
        match own {
            HostKeyChoice::Pinned(k) => HostKeyPolicy::Pinned(k.clone()),
            HostKeyChoice::KnownHosts(p) => HostKeyPolicy::KnownHosts(p.clone()),
            HostKeyChoice::Default => self.default_host_key_policy(),
        }
    }

    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.insecure_skip_host_key_check {
            w.push(
                "--insecure-skip-host-key-check: host keys are not verified; a machine in the middle could \
                 impersonate the instances and receive the backups"
                    .to_string(),
            );
        }
        w
    }
}

/// The gateway flags as given on the command line, plus `BOSH_ALL_PROXY`.
#[derive(Debug, Default, Clone)]
pub struct GatewayFlags {
    /// `--gateway USER@HOST[:PORT]`
    pub gateway: Option<String>,
    /// `--gateway-private-key-path`
    pub private_key_path: Option<PathBuf>,
    /// `--gateway-host-public-key 'ssh-ed25519 AAAA...'`
    pub host_public_key: Option<String>,
    /// The value of `BOSH_ALL_PROXY`, used when `--gateway` is not given.
    pub bosh_all_proxy: Option<String>,
}

/// Turns the gateway flags into the proxy to use, if any. The gateway's own host key is
/// checked like the instances' (pinned with `--gateway-host-public-key`, or known_hosts),
/// unless `--insecure-skip-host-key-check`.
pub fn resolve_gateway(flags: &GatewayFlags, opts: &SshOptions) -> anyhow::Result<Option<Proxy>> {
    let policy = match (&flags.host_public_key, opts.insecure_skip_host_key_check) {
        (_, true) => HostKeyPolicy::Insecure,
        (Some(line), false) => HostKeyPolicy::pinned(line).context("--gateway-host-public-key")?,
        (None, false) => opts.default_host_key_policy(),
    };
    match (&flags.gateway, &flags.private_key_path) {
        (Some(spec), Some(key)) => {
            let key = ClientKey::load(&KeySource::Path(key.clone()), opts.key_passphrase.as_ref())
                .context("--gateway-private-key-path")?;
            Ok(Some(Proxy::from(GatewayConfig::parse(spec, key, policy)?)))
        }
        (Some(_), None) => bail!("--gateway needs --gateway-private-key-path"),
        (None, Some(_)) => bail!("--gateway-private-key-path needs --gateway USER@HOST[:PORT]"),
        (None, None) => match flags.bosh_all_proxy.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(url) => parse_bosh_all_proxy(url, opts.key_passphrase.as_ref(), policy).map(Some),
            None => Ok(None),
        },
    }
}

#[derive(Clone, Debug)]
pub(crate) enum HostKeyChoice {
    Pinned(russh::keys::PublicKey),
    KnownHosts(PathBuf),
    Default,
}
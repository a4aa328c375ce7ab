//! The targets that reach instances directly over SSH, without a BOSH director API:
//!
//! - [`DirectorTarget`], bbr's `director` mode: one instance `bosh/0` at `--host`, with the
//!   artifact named after the host (`extractNameFromAddress`), but with the host key
//!   verified (bbr never checked it).
//! - [`HostsTarget`]: any set of SSH hosts carrying BBR scripts, listed in an inventory.
//!
//! The intended command lines (the SSH flags are shared by both):
//!
//! ```text
//! lockstep director --host ADDR[:PORT] --username USER --private-key-path KEY  [SSH FLAGS] ACTION
//! lockstep hosts --inventory FILE                                               [SSH FLAGS] ACTION
//!
//! SSH FLAGS
//!   --known-hosts PATH                 known_hosts to check host keys against (default ~/.ssh/known_hosts)
//!   --host-public-key 'ssh-ed25519 AAAA...'   (director only) pin the host key instead
//!   --insecure-skip-host-key-check     do not check host keys at all (logged as a warning)
//!   --connect-timeout 30s              TCP + SSH handshake + authentication, and opening a channel
//!   --script-timeout DURATION          every remote command, transfers included (default: none)
//!   --gateway USER@HOST[:PORT] --gateway-private-key-path KEY [--gateway-host-public-key LINE]
//!                                      reach the instances through an SSH jump host
//! ENVIRONMENT
//!   LOCKSTEP_SSH_KEY_PASSPHRASE        passphrase of protected private keys (never printed)
//!   BOSH_ALL_PROXY                     ssh+socks5://USER@HOST:PORT?private-key=PATH or socks5://HOST:PORT
//!                                      (used when --gateway is not given)
//! ```
//!
//! The inventory (`--inventory FILE`; the Concourse resource embeds the same YAML inline):
//!
//! ```yaml
//! name: mini-cf                      # deployment name, names the artifact
//! instances:
//! - group: api                       # instance group
//!   index: 0
//!   address: 127.0.0.11:2200         # host[:port], port 22 by default
//!   username: vcap                   # not root: commands run through `sudo -n`
//!   private_key_path: /path/to/key   # or private_key: PEM content
//!   host_public_key: "ssh-ed25519 AAAA..."   # or known_hosts_path; default: --known-hosts
//! ```

use crate::instance::{InstanceRef, ShellInstance};
use crate::model::InstanceId;
use crate::target::Target;
use crate::transport::ssh::{
    self, parse_address, parse_bosh_all_proxy, ClientKey, GatewayConfig, HostKeyPolicy, KeySource, Proxy, Secret,
    SshConfig, SshTransport,
};
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

    fn policy_for(&self, own: &HostKeyChoice) -> HostKeyPolicy {
        if self.insecure_skip_host_key_check {
            return HostKeyPolicy::Insecure;
        }
        match own {
            HostKeyChoice::Pinned(k) => HostKeyPolicy::Pinned(k.clone()),
            HostKeyChoice::KnownHosts(p) => HostKeyPolicy::KnownHosts(p.clone()),
            HostKeyChoice::Default => self.default_host_key_policy(),
        }
    }

    fn warnings(&self) -> Vec<String> {
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

/// Parses `30s`, `5m`, `2h`, `1h30m`, `250ms`, `7d`, `2w` or a plain number of seconds:
/// the one duration syntax of every flag and configuration key.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(t).map_err(|e| anyhow!("invalid duration {s:?}: expected e.g. 30s, 5m, 2h, 1h30m, 250ms, 7d or 2w ({e})"))
}

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

#[derive(Clone, Debug)]
enum HostKeyChoice {
    Pinned(russh::keys::PublicKey),
    KnownHosts(PathBuf),
    Default,
}

/// One instance of an inventory, validated.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub id: InstanceId,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub key: KeySource,
    host_key: HostKeyChoice,
}

impl HostSpec {
    /// `user@host:port`
    pub fn describe(&self) -> String {
        if self.host.contains(':') {
            format!("{}@[{}]:{}", self.username, self.host, self.port)
        } else {
            format!("{}@{}:{}", self.username, self.host, self.port)
        }
    }
}

/// A parsed, validated inventory.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub name: String,
    pub instances: Vec<HostSpec>,
}

const TOP_KEYS: &[&str] = &["name", "instances"];
const INSTANCE_KEYS: &[&str] =
    &["group", "index", "address", "username", "private_key_path", "private_key", "host_public_key", "known_hosts_path"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    name: Option<String>,
    instances: Option<Vec<RawInstance>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawIndex {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    group: Option<String>,
    index: Option<RawIndex>,
    address: Option<String>,
    username: Option<String>,
    private_key_path: Option<PathBuf>,
    private_key: Option<String>,
    host_public_key: Option<String>,
    known_hosts_path: Option<PathBuf>,
}

/// Names that become parts of file names: deployment, group, index.
fn check_name(what: &str, v: &str) -> anyhow::Result<()> {
    if v.is_empty() {
        bail!("{what} is empty");
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) || v == "." || v == ".." {
        bail!("{what} {v:?} may only contain letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

impl Inventory {
    /// Parses and validates inventory YAML. Unknown keys, missing or duplicate instances,
    /// bad addresses and ambiguous key settings are errors that say what to fix.
    pub fn parse(yaml: &str) -> anyhow::Result<Inventory> {
        let raw: RawInventory = serde_saphyr::from_str(yaml).map_err(|e| {
            // Without the snippet: it could show an inline private key.
            let msg = e.without_snippet().to_string();
            let allowed = if msg.contains("unknown field") {
                format!(
                    " (allowed at the top: {}; in each instance: {})",
                    TOP_KEYS.join(", "),
                    INSTANCE_KEYS.join(", ")
                )
            } else {
                String::new()
            };
            anyhow!("invalid inventory: {msg}{allowed}")
        })?;
        let name = raw.name.ok_or_else(|| anyhow!("invalid inventory: missing `name` (the deployment name)"))?;
        check_name("the deployment name", &name).context("invalid inventory")?;
        let list = raw.instances.unwrap_or_default();
        if list.is_empty() {
            bail!("invalid inventory: no instances (give a list under `instances:`)");
        }
        let mut seen: HashMap<InstanceId, usize> = HashMap::new();
        let mut instances = Vec::new();
        for (i, r) in list.into_iter().enumerate() {
            let spec = Self::instance(r).with_context(|| format!("invalid inventory: instances[{i}]"))?;
            if let Some(first) = seen.insert(spec.id.clone(), i) {
                bail!("invalid inventory: instances[{i}]: {} is listed twice (also instances[{first}])", spec.id);
            }
            instances.push(spec);
        }
        Ok(Inventory { name, instances })
    }

    fn instance(r: RawInstance) -> anyhow::Result<HostSpec> {
        let group = r.group.ok_or_else(|| anyhow!("missing `group`"))?;
        check_name("group", &group)?;
        let index = match r.index.ok_or_else(|| anyhow!("{group}: missing `index`"))? {
            RawIndex::Number(n) => n.to_string(),
            RawIndex::Text(t) => t,
        };
        check_name("index", &index).with_context(|| group.clone())?;
        let id = InstanceId::new(group, index);
        let ctx = id.to_string();
        let address = r.address.ok_or_else(|| anyhow!("{ctx}: missing `address` (host[:port])"))?;
        let (host, port) = parse_address(&address, 22).with_context(|| ctx.clone())?;
        let username = r.username.filter(|u| !u.trim().is_empty()).ok_or_else(|| anyhow!("{ctx}: missing `username`"))?;
        if username.chars().any(|c| c.is_whitespace() || c == '@' || c == ':') {
            bail!("{ctx}: invalid username {username:?}");
        }
        let key = match (r.private_key_path, r.private_key) {
            (Some(p), None) => KeySource::Path(p),
            (None, Some(pem)) => KeySource::Pem(pem),
            (Some(_), Some(_)) => bail!("{ctx}: give either `private_key_path` or `private_key`, not both"),
            (None, None) => bail!("{ctx}: missing the SSH key: give `private_key_path` or `private_key` (PEM)"),
        };
        let host_key = match (r.host_public_key, r.known_hosts_path) {
            (Some(line), None) => HostKeyChoice::Pinned(
                ssh::parse_public_key_line(&line).with_context(|| format!("{ctx}: host_public_key"))?,
            ),
            (None, Some(p)) => HostKeyChoice::KnownHosts(p),
            (Some(_), Some(_)) => bail!("{ctx}: give either `host_public_key` or `known_hosts_path`, not both"),
            (None, None) => HostKeyChoice::Default,
        };
        Ok(HostSpec { id, host, port, username, key, host_key })
    }
}

/// Decrypts each distinct key once per target.
#[derive(Default)]
struct KeyCache(Mutex<HashMap<KeySource, ClientKey>>);

impl KeyCache {
    fn get(&self, source: &KeySource, passphrase: Option<&Secret>) -> anyhow::Result<ClientKey> {
        if let Some(k) = self.0.lock().map_err(|_| anyhow!("key cache poisoned"))?.get(source) {
            return Ok(k.clone());
        }
        let k = ClientKey::load(source, passphrase)?;
        self.0.lock().map_err(|_| anyhow!("key cache poisoned"))?.insert(source.clone(), k.clone());
        Ok(k)
    }
}

fn build_instances(inv: &Inventory, opts: &SshOptions, keys: &KeyCache) -> anyhow::Result<Vec<InstanceRef>> {
    let mut out: Vec<InstanceRef> = Vec::with_capacity(inv.instances.len());
    for spec in &inv.instances {
        let key = keys
            .get(&spec.key, opts.key_passphrase.as_ref())
            .with_context(|| format!("instance {} ({})", spec.id, spec.describe()))?;
        let mut cfg = SshConfig::new(spec.host.clone(), spec.port, spec.username.clone(), key, opts.policy_for(&spec.host_key));
        cfg.connect_timeout = opts.connect_timeout;
        cfg.script_timeout = opts.script_timeout;
        cfg.keepalive_interval = opts.keepalive_interval;
        cfg.proxy = opts.gateway.clone();
        out.push(Arc::new(ShellInstance::new(spec.id.clone(), Box::new(SshTransport::new(cfg)))));
    }
    Ok(out)
}

/// A deployment made of the SSH hosts listed in an inventory.
pub struct HostsTarget {
    inventory: Inventory,
    opts: SshOptions,
    keys: KeyCache,
}

impl HostsTarget {
    pub fn new(inventory: Inventory, opts: &SshOptions) -> Self {
        HostsTarget { inventory, opts: opts.clone(), keys: KeyCache::default() }
    }

    pub fn from_yaml(yaml: &str, opts: &SshOptions) -> anyhow::Result<Self> {
        Ok(HostsTarget::new(Inventory::parse(yaml)?, opts))
    }

    pub fn from_file(path: &Path, opts: &SshOptions) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("could not read the inventory {}", path.display()))?;
        let mut inv = Inventory::parse(&text).with_context(|| format!("inventory {}", path.display()))?;
        // Relative key and known_hosts paths are relative to the inventory file.
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for spec in &mut inv.instances {
            if let KeySource::Path(p) = &spec.key
                && p.is_relative()
            {
                spec.key = KeySource::Path(base.join(p));
            }
            if let HostKeyChoice::KnownHosts(p) = &spec.host_key
                && p.is_relative()
            {
                spec.host_key = HostKeyChoice::KnownHosts(base.join(p));
            }
        }
        Ok(HostsTarget::new(inv, opts))
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Warnings to log before running (host key checks disabled).
    pub fn warnings(&self) -> Vec<String> {
        self.opts.warnings()
    }
}

#[async_trait]
impl Target for HostsTarget {
    fn deployment_name(&self) -> &str {
        &self.inventory.name
    }

    fn location(&self) -> Option<String> {
        let mut hosts: Vec<String> = self.inventory.instances.iter().map(|h| ssh::host_port(&h.host, h.port)).collect();
        hosts.sort();
        Some(format!("SSH hosts {}", hosts.join(", ")))
    }

    async fn instances(&self) -> anyhow::Result<Vec<InstanceRef>> {
        build_instances(&self.inventory, &self.opts, &self.keys)
    }
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
        let (h, port) = parse_address(host, 22).context("--host")?;
        if username.trim().is_empty() {
            bail!("--username is empty");
        }
        let host_key = match host_public_key {
            Some(line) => HostKeyChoice::Pinned(ssh::parse_public_key_line(line).context("--host-public-key")?),
            None => HostKeyChoice::Default,
        };
        let name = deployment_name_from_address(host);
        if name.is_empty() {
            bail!("--host {host:?} has no host name");
        }
        let spec = HostSpec {
            id: InstanceId::new("bosh", "0"),
            host: h,
            port,
            username: username.to_string(),
            key: KeySource::Path(private_key_path.to_path_buf()),
            host_key,
        };
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

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    fn inv(body: &str) -> anyhow::Result<Inventory> {
        Inventory::parse(body)
    }

    fn err(body: &str) -> String {
        format!("{:#}", inv(body).unwrap_err())
    }

    #[test]
    fn parses_a_full_inventory() {
        let y = format!(
            "name: mini-cf\ninstances:\n- group: api\n  index: 0\n  address: 127.0.0.11:2200\n  username: vcap\n  \
             private_key_path: /k\n  host_public_key: \"{KEY}\"\n- group: db\n  index: \"abc-123\"\n  address: db.internal\n  \
             username: root\n  private_key: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n    xx\n  known_hosts_path: /kh\n"
        );
        let i = inv(&y).unwrap();
        assert_eq!(i.name, "mini-cf");
        assert_eq!(i.instances.len(), 2);
        let a = &i.instances[0];
        assert_eq!((a.id.to_string(), a.host.as_str(), a.port), ("api/0".to_string(), "127.0.0.11", 2200));
        assert!(matches!(a.host_key, HostKeyChoice::Pinned(_)));
        let d = &i.instances[1];
        assert_eq!((d.id.to_string(), d.port), ("db/abc-123".to_string(), 22));
        assert!(matches!(d.key, KeySource::Pem(_)));
        assert!(matches!(d.host_key, HostKeyChoice::KnownHosts(_)));
    }

    #[test]
    fn unknown_keys_are_named_with_the_allowed_ones() {
        let e = err("name: x\ninstances:\n- group: a\n  index: 0\n  adress: h\n");
        assert!(e.contains("adress"), "{e}");
        assert!(e.contains("private_key_path") && e.contains("known_hosts_path"), "{e}");
        let e = err("name: x\ninstance: []\n");
        assert!(e.contains("instance") && e.contains("allowed at the top: name, instances"), "{e}");
    }

    #[test]
    fn clear_errors_for_bad_inventories() {
        let base = "  username: vcap\n  private_key_path: /k\n";
        let cases: &[(String, &str)] = &[
            ("instances: []\n".into(), "missing `name`"),
            ("name: x\n".into(), "no instances"),
            ("name: x\ninstances: []\n".into(), "no instances"),
            ("name: a/b\ninstances: []\n".into(), "may only contain"),
            (format!("name: x\ninstances:\n- index: 0\n  address: h\n{base}"), "missing `group`"),
            (format!("name: x\ninstances:\n- group: a\n  address: h\n{base}"), "missing `index`"),
            (format!("name: x\ninstances:\n- group: a\n  index: 0\n{base}"), "missing `address`"),
            (format!("name: x\ninstances:\n- group: a\n  index: 0\n  address: h:99999\n{base}"), "port"),
            (format!("name: x\ninstances:\n- group: a\n  index: 0\n  address: 'h h'\n{base}"), "invalid address"),
            ("name: x\ninstances:\n- group: a\n  index: 0\n  address: h\n  private_key_path: /k\n".into(), "missing `username`"),
            ("name: x\ninstances:\n- group: a\n  index: 0\n  address: h\n  username: u\n".into(), "give `private_key_path` or `private_key`"),
            (
                "name: x\ninstances:\n- group: a\n  index: 0\n  address: h\n  username: u\n  private_key_path: /k\n  private_key: x\n".into(),
                "not both",
            ),
            (
                format!("name: x\ninstances:\n- group: a\n  index: 0\n  address: h\n{base}  host_public_key: x\n  known_hosts_path: /k\n"),
                "not both",
            ),
            (format!("name: x\ninstances:\n- group: a\n  index: 0\n  address: h\n{base}  host_public_key: nonsense\n"), "host_public_key"),
            (
                format!("name: x\ninstances:\n- group: a\n  index: 0\n  address: h\n{base}- group: a\n  index: 0\n  address: h2\n{base}"),
                "a/0 is listed twice (also instances[0])",
            ),
            ("name: x\ninstances: [: bad\n".into(), "invalid inventory"),
        ];
        for (body, want) in cases {
            let e = err(body);
            assert!(e.contains(want), "for:\n{body}\nwanted {want:?} in: {e}");
        }
    }

    #[test]
    fn inline_private_keys_stay_out_of_errors() {
        let e = err("name: x\ninstances:\n- group: a\n  index: 0\n  address: h\n  username: u\n  private_key: |\n    SECRETKEYMATERIAL\n  bogus: 1\n");
        assert!(!e.contains("SECRETKEYMATERIAL"), "{e}");
    }

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

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2w").unwrap(), Duration::from_secs(14 * 86400));
        for bad in ["", "s", "10x", "-1s", "soon"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gateway_flags() {
        let opts = SshOptions::default();
        assert!(resolve_gateway(&GatewayFlags::default(), &opts).unwrap().is_none());
        let e = resolve_gateway(&GatewayFlags { gateway: Some("jb@h".into()), ..Default::default() }, &opts).unwrap_err();
        assert!(e.to_string().contains("--gateway-private-key-path"), "{e}");
        let flags = GatewayFlags { bosh_all_proxy: Some("socks5://127.0.0.1:1080".into()), ..Default::default() };
        assert!(matches!(resolve_gateway(&flags, &opts).unwrap(), Some(Proxy::Socks5 { port: 1080, .. })));
    }

    #[tokio::test]
    async fn director_target_names_and_instance() {
        let t = DirectorTarget::new("10.0.0.6:2222", "jumpbox", Path::new("/nonexistent"), Some(KEY), &SshOptions::default())
            .unwrap();
        assert_eq!(t.deployment_name(), "10.0.0.6");
        let e = t.instances().await.err().expect("missing key file");
        let e = format!("{e:#}");
        assert!(e.contains("failed reading private key") && e.contains("/nonexistent"), "{e}");
        assert!(DirectorTarget::new("10.0.0.6:x", "u", Path::new("/k"), None, &SshOptions::default()).is_err());
    }
}

//! [`HostsTarget`]: any set of SSH hosts carrying BBR scripts, listed in an inventory, reached
//! directly over SSH without a BOSH director API. Also the base of [`super::DirectorTarget`].
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
use super::ssh_options::{HostKeyChoice, SshOptions};
use crate::transport::ssh::{
    self, parse_address, ClientKey, KeySource, Secret,
    SshConfig, SshTransport,
};
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};


/// One instance of an inventory, validated.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub id: InstanceId,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub key: KeySource,
    pub(crate) host_key: HostKeyChoice,
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

/// The keys of an inventory (docs/configuration.md lists them; a test keeps the two equal).
pub const TOP_KEYS: &[&str] = &["name", "instances", "private_key"];
/// The keys of each entry of an inventory's `instances`.
pub const INSTANCE_KEYS: &[&str] =
    &["group", "index", "address", "username", "private_key_path", "private_key", "host_public_key", "known_hosts_path"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    name: Option<String>,
    instances: Option<Vec<RawInstance>>,
    /// The SSH key of every instance that names none of its own: one secret for the whole
    /// deployment, so a pipeline passes it as one task param and the instance list holds none.
    private_key: Option<String>,
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
        for (i, mut r) in list.into_iter().enumerate() {
            if r.private_key.is_none() && r.private_key_path.is_none() {
                r.private_key.clone_from(&raw.private_key);
            }
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
            (None, None) => bail!("{ctx}: missing the SSH key: give `private_key_path` or `private_key` (PEM), or `private_key` for every instance at the inventory's top"),
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
        out.push(Arc::new(ShellInstance::new(spec.id.clone(), Box::new(SshTransport::new(cfg))).with_script_timeout(opts.script_timeout)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::ssh_options::{resolve_gateway, GatewayFlags};
    use crate::transport::ssh::Proxy;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    fn inv(body: &str) -> anyhow::Result<Inventory> {
        Inventory::parse(body)
    }

    fn err(body: &str) -> String {
        format!("{:#}", inv(body).unwrap_err())
    }

    #[test]
    fn a_top_level_private_key_serves_every_instance_without_its_own() {
        let i = inv("name: cf\nprivate_key: SHARED\ninstances:\n- {group: a, index: 0, address: h, username: u}\n\
                     - {group: b, index: 0, address: h, username: u, private_key: OWN}\n- {group: c, index: 0, address: h, username: u, private_key_path: /k}\n")
        .unwrap();
        let keys: Vec<&KeySource> = i.instances.iter().map(|s| &s.key).collect();
        assert!(matches!(keys[0], KeySource::Pem(k) if k == "SHARED"));
        assert!(matches!(keys[1], KeySource::Pem(k) if k == "OWN"));
        assert!(matches!(keys[2], KeySource::Path(_)));
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
    fn gateway_flags() {
        let opts = SshOptions::default();
        assert!(resolve_gateway(&GatewayFlags::default(), &opts).unwrap().is_none());
        let e = resolve_gateway(&GatewayFlags { gateway: Some("jb@h".into()), ..Default::default() }, &opts).unwrap_err();
        assert!(e.to_string().contains("--gateway-private-key-path"), "{e}");
        let flags = GatewayFlags { bosh_all_proxy: Some("socks5://127.0.0.1:1080".into()), ..Default::default() };
        assert!(matches!(resolve_gateway(&flags, &opts).unwrap(), Some(Proxy::Socks5 { port: 1080, .. })));
    }
}

//! One configuration vocabulary for the Concourse resource's `source:` and for the tasks
//! (`LOCKSTEP_CONFIG`, or `lockstep --config FILE`), so an operator writes it once (a YAML
//! anchor in the pipeline) and uses it for both:
//!
//! ```yaml
//! target:                         # exactly one of hosts, director, deployment, local
//!   hosts: {name: cf, instances: [{group: api, index: 0, address: 10.0.0.5, username: vcap,
//!                                   private_key: ((key)), host_public_key: "ssh-ed25519 AAAA..."}]}
//! store:                          # s3-resource's keys, or `path` for a local directory
//!   bucket: backups
//!   prefix: cf
//!   endpoint: https://minio.example.com
//!   access_key_id: ((s3_key))
//!   secret_access_key: ((s3_secret))
//!   replicas: [{bucket: backups-dr, region_name: eu-west-1, ...}]
//! compression: zstd               # zstd (default), zstd:LEVEL, gzip, gzip:LEVEL, none
//! encryption: {recipients: [age1...], identity: ((age_identity))}
//! retention: {keep_last: 7, keep_daily: 14, keep_weekly: 8, keep_monthly: 12, keep_within: 2d, min_age: 1h}
//! max_in_flight: 10
//! script_timeout: 2h
//! ssh: {all_proxy: "ssh+socks5://jumpbox@10.0.0.5:22", all_proxy_private_key: ((jumpbox_key)),
//!       all_proxy_host_public_key: "ssh-ed25519 AAAA..."}   # bbr's BOSH_ALL_PROXY
//! min_stores: 1
//! ```
//!
//! Errors name the bad key and list the allowed ones. Nothing here prints a secret: the
//! types holding them implement `Debug` by hand.

pub mod from_env;
pub mod opsman;

use crate::store::codec::{Codec, Compression, Identities};
use crate::target::{HostsTarget, Inventory, SshOptions};
use crate::model::InstanceId;
use crate::retention::Policy;
use crate::store::local::LocalStore;
use crate::store::replicas::ReplicaStore;
use crate::store::s3::S3Store;
use crate::store::url::S3Config;
use crate::store::Store;
use crate::target::{LocalTarget, Target};
use anyhow::{anyhow, bail, Context};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

const TOP_KEYS: &[&str] = &[
    "target",
    "store",
    "compression",
    "encryption",
    "retention",
    "max_in_flight",
    "script_timeout",
    "max_lock_window",
    "min_stores",
    "ssh",
    "opsman",
];
const TARGET_KINDS: &[&str] = &["hosts", "director", "deployment", "local"];
const DIRECTOR_KEYS: &[&str] = &["host", "username", "private_key", "host_public_key"];
const DEPLOYMENT_KEYS: &[&str] = &["environment", "client", "client_secret", "ca_cert", "deployment"];
const LOCAL_KEYS: &[&str] = &["name", "instances"];
const ENCRYPTION_KEYS: &[&str] = &["recipients", "identity"];
const RETENTION_KEYS: &[&str] = &["keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_within", "min_age", "grace"];
const STORE_EXTRA_KEYS: &[&str] = &["path", "replicas"];
const SSH_KEYS: &[&str] = &[
    "insecure_skip_host_key_check",
    "connect_timeout",
    "keepalive",
    "all_proxy",
    "all_proxy_private_key",
    "all_proxy_host_public_key",
];

/// Every section of the configuration vocabulary and the keys it takes, as the parsers
/// check them: docs/configuration.md documents exactly these (tests/configuration_doc.rs).
pub const SECTIONS: &[(&str, &[&str])] = &[
    ("source", TOP_KEYS),
    ("target", TARGET_KINDS),
    ("target.hosts", crate::target::hosts::TOP_KEYS),
    ("target.hosts.instances", crate::target::hosts::INSTANCE_KEYS),
    ("target.director", DIRECTOR_KEYS),
    ("target.deployment", DEPLOYMENT_KEYS),
    ("target.local", LOCAL_KEYS),
    ("store", S3Config::KEYS),
    ("store.extra", STORE_EXTRA_KEYS),
    ("store-url", S3Config::QUERY_KEYS),
    ("encryption", ENCRYPTION_KEYS),
    ("retention", RETENTION_KEYS),
    ("ssh", SSH_KEYS),
    ("opsman", opsman::OPSMAN_KEYS),
];

/// A parsed configuration. `Debug` is hand-written: it never shows keys or secrets.
#[derive(Clone)]
pub struct Config {
    pub target: Option<TargetConfig>,
    pub store: StoreConfig,
    /// `None`: the default for the store (zstd).
    pub compression: Option<Compression>,
    pub recipients: Vec<String>,
    /// age identity text (`AGE-SECRET-KEY-1...` lines) for restore and `get`.
    identity: Option<String>,
    pub retention: Option<Policy>,
    pub max_in_flight: Option<usize>,
    pub script_timeout: Option<Duration>,
    /// The lock-window ceiling of a backup (`None`: the default, 4h).
    pub max_lock_window: Option<Duration>,
    pub min_stores: Option<usize>,
    pub ssh: SshOptions,
    /// An Ops Manager whose whole platform is backed up as one (instead of a `target`).
    pub opsman: Option<opsman::OpsmanSource>,
}

#[derive(Clone)]
pub enum TargetConfig {
    /// The inventory, as JSON text (JSON is YAML, so `Inventory::parse` reads it).
    Hosts { name: String, inventory: String },
    Director { name: String, inventory: String },
    Local { name: String, instances: Vec<(InstanceId, String)> },
    /// A BOSH deployment through the director API (bbr's `deployment` mode).
    Deployment { environment: String, client: String, client_secret: String, ca_cert: Option<String>, deployment: String },
}

#[derive(Clone)]
pub enum StoreConfig {
    Local(std::path::PathBuf),
    S3(Box<S3Config>),
    Replicas(Vec<StoreConfig>),
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("deployment", &self.deployment_name())
            .field("store", &self.store.describe())
            .field("compression", &self.compression)
            .field("recipients", &self.recipients)
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("opsman", &self.opsman)
            .finish_non_exhaustive()
    }
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> anyhow::Result<()> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            bail!("{at}: unknown key `{k}`; allowed keys: {}", allowed.join(", "));
        }
    }
    Ok(())
}

fn object<'a>(v: &'a Value, at: &str) -> anyhow::Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| anyhow!("{at} must be a map"))
}

fn string(v: &Value, at: &str) -> anyhow::Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => bail!("{at} must be a string"),
    }
}

fn count(v: &Value, at: &str) -> anyhow::Result<usize> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as usize).ok_or_else(|| anyhow!("{at} must be a whole number")),
        Value::String(s) => s.parse().map_err(|_| anyhow!("{at} must be a whole number, not {s:?}")),
        _ => bail!("{at} must be a whole number"),
    }
}

fn flag(v: &Value, at: &str) -> anyhow::Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" || s == "false" => Ok(s == "true"),
        _ => bail!("{at} must be true or false"),
    }
}

/// Concourse variables arrive as text and YAML turns unquoted digits into numbers: a
/// numeric secret key or `use_path_style: "true"` must mean what the operator meant.
fn coerce_scalars(obj: &mut Map<String, Value>) {
    const FLAGS: &[&str] = &["use_path_style", "skip_ssl_verification", "enable_aws_creds_provider"];
    const NUMBERS: &[&str] = &["part_size_mib", "max_retries", "retry_timeout_seconds", "max_parts"];
    for (k, v) in obj.iter_mut() {
        let replacement = match &*v {
            Value::String(t) if FLAGS.contains(&k.as_str()) && (t == "true" || t == "false") => Some(Value::Bool(t == "true")),
            Value::String(t) if NUMBERS.contains(&k.as_str()) => t.trim().parse::<u64>().ok().map(Value::from),
            Value::Number(n) if !FLAGS.contains(&k.as_str()) && !NUMBERS.contains(&k.as_str()) => Some(Value::String(n.to_string())),
            _ => None,
        };
        if let Some(r) = replacement {
            *v = r;
        }
    }
}

/// A serde message with every `quoted` value replaced by `...`.
fn without_quoted_values(msg: &str) -> String {
    let mut out = String::new();
    for (i, part) in msg.split('`').enumerate() {
        out.push_str(if i % 2 == 1 { "..." } else { part });
    }
    out
}

fn duration(v: &Value, at: &str) -> anyhow::Result<Duration> {
    parse_duration(&string(v, at)?).with_context(|| at.to_string())
}

impl StoreConfig {
    fn parse(v: &Value, at: &str) -> anyhow::Result<StoreConfig> {
        let obj = object(v, at)?;
        let mut allowed: Vec<&str> = S3Config::KEYS.to_vec();
        allowed.extend_from_slice(STORE_EXTRA_KEYS);
        check_keys(obj, &allowed, at)?;
        let primary = match obj.get("path") {
            Some(p) => {
                if obj.keys().any(|k| S3Config::KEYS.contains(&k.as_str())) {
                    bail!("{at}: give either `path` (a local directory) or S3 keys (`bucket`, ...), not both");
                }
                StoreConfig::Local(string(p, &format!("{at}.path"))?.into())
            }
            None => {
                let mut s3 = obj.clone();
                s3.remove("replicas");
                if !s3.contains_key("bucket") {
                    bail!("{at}: needs `bucket` (an S3 store) or `path` (a local directory)");
                }
                coerce_scalars(&mut s3);
                // serde quotes the offending value (`invalid type: integer `9876...``): it
                // could be a secret, so the message keeps only what is between the quotes.
                let mut config: S3Config = serde_json::from_value(Value::Object(s3))
                    .map_err(|e| anyhow!("{at}: {}", without_quoted_values(&e.to_string())))?;
                config.fill_from_env();
                config.validate().with_context(|| at.to_string())?;
                StoreConfig::S3(Box::new(config))
            }
        };
        match obj.get("replicas") {
            None => Ok(primary),
            Some(Value::Array(list)) => {
                let mut all = vec![primary];
                for (i, r) in list.iter().enumerate() {
                    let at = format!("{at}.replicas[{i}]");
                    if object(r, &at)?.contains_key("replicas") {
                        bail!("{at}: a replica cannot have replicas of its own");
                    }
                    all.push(StoreConfig::parse(r, &at)?);
                }
                Ok(StoreConfig::Replicas(all))
            }
            Some(_) => bail!("{at}.replicas must be a list of stores"),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Local(p) => format!("file://{}", p.display()),
            StoreConfig::S3(c) => c.describe(),
            StoreConfig::Replicas(all) => all.iter().map(StoreConfig::describe).collect::<Vec<_>>().join(" + "),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, StoreConfig::Local(_))
    }

    /// Opens the store; with replicas, `min_stores` copies must succeed (default: all).
    pub fn open(&self, min_stores: Option<usize>) -> anyhow::Result<Box<dyn Store>> {
        Ok(match self {
            StoreConfig::Local(p) => Box::new(LocalStore::new(p)),
            StoreConfig::S3(c) => Box::new(S3Store::new(c)?),
            StoreConfig::Replicas(all) => {
                let stores = all.iter().map(|s| s.open(None)).collect::<anyhow::Result<Vec<_>>>()?;
                let min = min_stores.unwrap_or(stores.len());
                Box::new(ReplicaStore::new(stores, min)?)
            }
        })
    }
}

impl TargetConfig {
    fn parse(v: &Value) -> anyhow::Result<TargetConfig> {
        let obj = object(v, "target")?;
        let kinds: Vec<&String> = obj.keys().collect();
        let [kind] = kinds.as_slice() else {
            bail!("target: give exactly one of {} (found: {})", TARGET_KINDS.join(", "), if kinds.is_empty() { "none".to_string() } else { kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ") });
        };
        let body = &obj[kind.as_str()];
        match kind.as_str() {
            "hosts" => {
                let text = serde_json::to_string(body)?;
                // Validate now, so a bad inventory is reported before anything runs.
                let inv = Inventory::parse(&text).context("target.hosts")?;
                Ok(TargetConfig::Hosts { name: inv.name.clone(), inventory: text })
            }
            "director" => {
                let d = object(body, "target.director")?;
                check_keys(d, DIRECTOR_KEYS, "target.director")?;
                let get = |k: &str| -> anyhow::Result<String> {
                    string(d.get(k).ok_or_else(|| anyhow!("target.director: missing `{k}`"))?, &format!("target.director.{k}"))
                };
                let host = get("host")?;
                let name = crate::target::deployment_name_from_address(&host);
                let mut instance = serde_json::json!({
                    "group": "bosh", "index": 0, "address": host,
                    "username": get("username")?, "private_key": get("private_key")?,
                });
                if let Some(k) = d.get("host_public_key") {
                    instance["host_public_key"] = Value::String(string(k, "target.director.host_public_key")?);
                }
                let text = serde_json::to_string(&serde_json::json!({"name": name, "instances": [instance]}))?;
                Inventory::parse(&text).context("target.director")?;
                Ok(TargetConfig::Director { name, inventory: text })
            }
            "deployment" => {
                let d = object(body, "target.deployment")?;
                check_keys(d, DEPLOYMENT_KEYS, "target.deployment")?;
                let get = |k: &str| -> anyhow::Result<String> {
                    string(d.get(k).ok_or_else(|| anyhow!("target.deployment: missing `{k}`"))?, &format!("target.deployment.{k}"))
                };
                Ok(TargetConfig::Deployment {
                    environment: get("environment")?,
                    client: get("client")?,
                    client_secret: get("client_secret")?,
                    ca_cert: d.get("ca_cert").map(|v| string(v, "target.deployment.ca_cert")).transpose()?,
                    deployment: get("deployment")?,
                })
            }
            "local" => {
                let l = object(body, "target.local")?;
                check_keys(l, LOCAL_KEYS, "target.local")?;
                let name = string(l.get("name").ok_or_else(|| anyhow!("target.local: missing `name`"))?, "target.local.name")?;
                let mut instances = Vec::new();
                for (id, dir) in object(l.get("instances").unwrap_or(&Value::Null), "target.local.instances")? {
                    let spec = format!("{id}={}", string(dir, &format!("target.local.instances.{id}"))?);
                    instances.push(LocalTarget::parse_instance(&spec)?);
                }
                Ok(TargetConfig::Local { name, instances })
            }
            other => bail!("target: unknown kind `{other}`; allowed: {}", TARGET_KINDS.join(", ")),
        }
    }

    pub fn deployment_name(&self) -> &str {
        match self {
            TargetConfig::Hosts { name, .. } | TargetConfig::Director { name, .. } | TargetConfig::Local { name, .. } => name,
            TargetConfig::Deployment { deployment, .. } => deployment,
        }
    }
}

impl Config {
    /// Parses JSON or YAML text, as the tasks and `lockstep run` read it: `{from_env: NAME}`
    /// values come from this process's environment ([`from_env`]).
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse_with_env(text, &|name: &str| std::env::var(name).ok())
    }

    /// [`Config::parse`] with the environment given.
    pub fn parse_with_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => serde_saphyr::from_str(text).map_err(|e| anyhow!("the configuration is neither valid JSON nor valid YAML: {}", e.without_snippet()))?,
        };
        Config::from_plain_value(&from_env::resolve(&value, &from_env::Env::Lookup(env))?)
    }

    /// A resource's `source:`: Concourse has interpolated every ((var)) into it as a
    /// structured value, and `{from_env: ...}` is refused (its environment is not the
    /// operator's).
    pub fn from_value(v: &Value) -> anyhow::Result<Config> {
        Config::from_plain_value(&from_env::resolve(v, &from_env::Env::Refused)?)
    }

    fn from_plain_value(v: &Value) -> anyhow::Result<Config> {
        let obj = object(v, "the configuration")?;
        check_keys(obj, TOP_KEYS, "source")?;
        let target = obj.get("target").map(TargetConfig::parse).transpose()?;
        let opsman = obj.get("opsman").map(opsman::OpsmanSource::parse).transpose()?;
        if target.is_some() && opsman.is_some() {
            bail!("source: give `target` (one deployment) or `opsman` (a whole platform, as one platform backup), not both");
        }
        let store = StoreConfig::parse(obj.get("store").ok_or_else(|| anyhow!("source: missing `store` (where artifacts are kept)"))?, "store")?;
        let compression = obj
            .get("compression")
            .map(|c| string(c, "compression").and_then(|s| Compression::from_str(&s)))
            .transpose()?;
        let (mut recipients, mut identity) = (Vec::new(), None);
        if let Some(e) = obj.get("encryption") {
            let e = object(e, "encryption")?;
            check_keys(e, ENCRYPTION_KEYS, "encryption")?;
            if let Some(r) = e.get("recipients") {
                let list: Vec<String> = match r {
                    Value::Array(a) => a.iter().enumerate().map(|(i, x)| string(x, &format!("encryption.recipients[{i}]"))).collect::<anyhow::Result<_>>()?,
                    other => vec![string(other, "encryption.recipients")?],
                };
                if list.iter().any(|r| !r.starts_with("age1")) {
                    bail!("encryption.recipients: each must be an age X25519 recipient (age1...)");
                }
                recipients = crate::store::codec::parse_recipients(&list).context("encryption.recipients")?;
            }
            if let Some(i) = e.get("identity") {
                identity = Some(string(i, "encryption.identity")?);
            }
        }
        let retention = obj.get("retention").map(parse_policy).transpose()?;
        let max_in_flight = obj.get("max_in_flight").map(|v| count(v, "max_in_flight")).transpose()?;
        if max_in_flight == Some(0) {
            bail!("max_in_flight must be at least 1");
        }
        let script_timeout = obj.get("script_timeout").map(|v| duration(v, "script_timeout")).transpose()?;
        let max_lock_window = obj.get("max_lock_window").map(|v| duration(v, "max_lock_window")).transpose()?;
        let min_stores = obj.get("min_stores").map(|v| count(v, "min_stores")).transpose()?;
        let mut ssh = SshOptions::from_env();
        ssh.script_timeout = script_timeout;
        if let Some(s) = obj.get("ssh") {
            let s = object(s, "ssh")?;
            check_keys(s, SSH_KEYS, "ssh")?;
            if let Some(v) = s.get("insecure_skip_host_key_check") {
                ssh.insecure_skip_host_key_check = flag(v, "ssh.insecure_skip_host_key_check")?;
            }
            if let Some(v) = s.get("connect_timeout") {
                ssh.connect_timeout = duration(v, "ssh.connect_timeout")?;
            }
            if let Some(v) = s.get("keepalive") {
                ssh.keepalive_interval = duration(v, "ssh.keepalive")?;
                crate::target::check_keepalive(ssh.keepalive_interval).context("ssh.keepalive")?;
            }
            ssh.gateway = all_proxy(s, &ssh)?;
        }
        Ok(Config { target, store, compression, recipients, identity, retention, max_in_flight, script_timeout, max_lock_window, min_stores, ssh, opsman })
    }

    /// The deployment whose artifacts this configuration is about.
    pub fn deployment_name(&self) -> Option<&str> {
        self.target.as_ref().map(TargetConfig::deployment_name)
    }

    pub fn open_store(&self) -> anyhow::Result<Box<dyn Store>> {
        self.store.open(self.min_stores)
    }

    /// What backups write: the configured compression (zstd unless said otherwise) and
    /// encryption.
    pub fn codec(&self) -> Codec {
        Codec { compression: self.compression.unwrap_or(Compression::ZSTD), recipients: self.recipients.clone() }
    }

    pub fn identities(&self) -> anyhow::Result<Identities> {
        match &self.identity {
            None => Ok(Identities::none()),
            Some(text) => Identities::from_text(text, "encryption.identity"),
        }
    }

    /// Builds the target; for a BOSH deployment this logs in to the director.
    pub async fn open_target(&self) -> anyhow::Result<Box<dyn Target>> {
        let missing = match self.opsman {
            Some(_) => "source: `opsman` is backed up as a whole platform (the resource's put, `lockstep opsman backup`); this action needs a `target` (one deployment)",
            None => "source: missing `target` (which deployment to back up or restore)",
        };
        match self.target.as_ref().ok_or_else(|| anyhow!(missing))? {
            TargetConfig::Hosts { inventory, .. } | TargetConfig::Director { inventory, .. } => {
                Ok(Box::new(HostsTarget::from_yaml(inventory, &self.ssh)?))
            }
            TargetConfig::Local { name, instances } => Ok(Box::new(LocalTarget::new(name.clone(), instances.clone()))),
            TargetConfig::Deployment { environment, client, client_secret, ca_cert, deployment } => {
                let ca = ca_cert.as_deref().map(crate::target::bosh::read_ca_cert).transpose().context("target.deployment.ca_cert")?;
                let director = crate::target::bosh::DirectorClient::connect(environment, client, client_secret, ca.as_deref(), self.ssh.gateway.as_ref()).await?;
                Ok(Box::new(crate::target::bosh::DeploymentTarget::new(director, deployment, &self.ssh)?))
            }
        }
    }
}

/// `ssh.all_proxy`: bbr's `BOSH_ALL_PROXY` for a resource, whose environment a pipeline
/// cannot set. `socks5://HOST:PORT`, or `ssh+socks5://USER@HOST:PORT` with the jump
/// host's key in `all_proxy_private_key` and its host key in `all_proxy_host_public_key`
/// (a container has no known_hosts to check it against).
fn all_proxy(s: &Map<String, Value>, ssh: &SshOptions) -> anyhow::Result<Option<crate::transport::ssh::Proxy>> {
    use crate::transport::ssh::{parse_all_proxy, HostKeyPolicy, KeySource};
    let text = |k: &str| s.get(k).map(|v| string(v, &format!("ssh.{k}"))).transpose();
    let (url, key, host_key) = (text("all_proxy")?, text("all_proxy_private_key")?, text("all_proxy_host_public_key")?);
    let Some(url) = url else {
        if key.is_some() || host_key.is_some() {
            bail!("ssh.all_proxy_private_key and ssh.all_proxy_host_public_key need ssh.all_proxy");
        }
        return Ok(None);
    };
    let policy = match (&host_key, ssh.insecure_skip_host_key_check) {
        (_, true) => HostKeyPolicy::Insecure,
        (Some(line), false) => HostKeyPolicy::pinned(line).context("ssh.all_proxy_host_public_key")?,
        (None, false) if url.starts_with("ssh+socks5://") => bail!(
            "ssh.all_proxy: give the jump host's key as ssh.all_proxy_host_public_key (`ssh-keyscan HOST` prints it), \
             or set ssh.insecure_skip_host_key_check"
        ),
        (None, false) => ssh.default_host_key_policy(),
    };
    let key = key.map(KeySource::Pem);
    parse_all_proxy(&url, key.as_ref(), ssh.key_passphrase.as_ref(), policy).map(Some).context("ssh.all_proxy")
}

fn parse_policy(v: &Value) -> anyhow::Result<Policy> {
    let obj = object(v, "retention")?;
    check_keys(obj, RETENTION_KEYS, "retention")?;
    let mut p = Policy::default();
    let n = |k: &str| obj.get(k).map(|v| count(v, &format!("retention.{k}"))).transpose();
    let d = |k: &str| obj.get(k).map(|v| duration(v, &format!("retention.{k}"))).transpose();
    p.keep_last = n("keep_last")?;
    p.keep_daily = n("keep_daily")?;
    p.keep_weekly = n("keep_weekly")?;
    p.keep_monthly = n("keep_monthly")?;
    p.keep_within = d("keep_within")?;
    if let Some(m) = d("min_age")? {
        p.min_age = m;
    }
    if let Some(g) = d("grace")? {
        p.grace = g;
    }
    p.validate().context("retention")?;
    Ok(p)
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


#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn from_env_fills_a_task_config_and_a_source_refuses_it() {
        let pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n";
        let instances = r#"[{"group":"api","index":0,"address":"10.0.0.5","username":"vcap"}]"#;
        let env = |n: &str| match n {
            "KEY" => Some(pem.to_string()),
            "INSTANCES" => Some(instances.to_string()),
            "SECRET" => Some("s3cr3t".to_string()),
            _ => None,
        };
        let text = "target: {hosts: {name: cf, private_key: {from_env: KEY}, instances: {from_env: INSTANCES}}}\n\
                    store: {bucket: bkt, access_key_id: k, secret_access_key: {from_env: SECRET}}\n";
        let c = Config::parse_with_env(text, &env).unwrap();
        assert_eq!(c.deployment_name(), Some("cf"));
        let Some(TargetConfig::Hosts { inventory, .. }) = &c.target else { panic!("hosts target") };
        let inv = Inventory::parse(inventory).unwrap();
        assert!(matches!(&inv.instances[0].key, crate::transport::ssh::KeySource::Pem(k) if k == pem));
        let source: Value = serde_saphyr::from_str(text).unwrap();
        assert!(format!("{:#}", Config::from_value(&source).unwrap_err()).contains("not in a resource's source"));
    }

    #[test]
    fn a_full_config_parses() {
        let c = Config::parse(
            r#"{"target": {"local": {"name": "cf", "instances": {"api/0": "/tmp"}}},
                "store": {"path": "/backups"},
                "compression": "gzip:9",
                "retention": {"keep_last": 3, "keep_within": "2d", "min_age": "30m"},
                "max_in_flight": 4, "script_timeout": "2h"}"#,
        )
        .unwrap();
        assert_eq!(c.deployment_name(), Some("cf"));
        assert!(c.store.is_local());
        assert_eq!(c.codec().compression, Compression::Gzip { level: 9 });
        let r = c.retention.unwrap();
        assert_eq!((r.keep_last, r.min_age), (Some(3), Duration::from_secs(1800)));
        assert_eq!(c.script_timeout, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn numeric_secrets_and_string_flags_mean_what_they_say_and_are_never_echoed() {
        let c = Config::parse("store:\n  bucket: bkt\n  access_key_id: 123456789\n  secret_access_key: 987654321012345\n  use_path_style: \"true\"\n  max_retries: \"3\"\n").unwrap();
        let crate::config::StoreConfig::S3(s3) = &c.store else { panic!() };
        assert_eq!(s3.secret_access_key.as_deref(), Some("987654321012345"));
        assert!(s3.use_path_style);
        assert_eq!(s3.max_retries, Some(3));
        let e = format!("{:#}", Config::parse(r#"{"store": {"bucket": "bkt", "secret_access_key": [987654321012345]}}"#).unwrap_err());
        assert!(!e.contains("987654321012345"), "{e}");
    }

    #[test]
    fn keepalive_and_request_timeout_are_durations_with_defaults() {
        let c = Config::parse("store: {bucket: bkt}\n").unwrap();
        assert_eq!(c.ssh.keepalive_interval, Duration::from_secs(30));
        let crate::config::StoreConfig::S3(s3) = &c.store else { panic!() };
        assert_eq!(s3.request_timeout_duration().unwrap(), Duration::from_secs(300));
        let c = Config::parse("store: {bucket: bkt, request_timeout: 10m}\nssh: {keepalive: 5s}\n").unwrap();
        assert_eq!(c.ssh.keepalive_interval, Duration::from_secs(5));
        let crate::config::StoreConfig::S3(s3) = &c.store else { panic!() };
        assert_eq!(s3.request_timeout_duration().unwrap(), Duration::from_secs(600));
        let c = Config::parse(r#"{"store": {"bucket": "bkt", "request_timeout": 45}}"#).unwrap();
        let crate::config::StoreConfig::S3(s3) = &c.store else { panic!() };
        assert_eq!(s3.request_timeout_duration().unwrap(), Duration::from_secs(45));
        let e = err("store: {path: /x}\nssh: {keepalive: 0s}\n");
        assert!(e.contains("ssh.keepalive") && e.contains("at least 1s"), "{e}");
        let e = err("store: {bucket: bkt, request_timeout: soon}\n");
        assert!(e.contains("request_timeout") && e.contains("invalid duration"), "{e}");
        let e = err("store: {bucket: bkt, request_timeout: 500ms}\n");
        assert!(e.contains("request_timeout must be at least 1s"), "{e}");
    }

    #[test]
    fn yaml_works_too() {
        let c = Config::parse("store:\n  bucket: bkt\n  endpoint: http://127.0.0.1:9000\n  access_key_id: AKIA1234\n  secret_access_key: s3cr3t\n").unwrap();
        assert!(c.target.is_none());
        assert_eq!(c.store.describe(), "s3://bkt at http://127.0.0.1:9000");
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn wrong_keys_are_named_with_the_allowed_ones() {
        let e = err(r#"{"store": {"path": "/x"}, "retension": {}}"#);
        assert!(e.contains("unknown key `retension`") && e.contains("allowed keys: target, store"), "{e}");
        let e = err(r#"{"store": {"bucket": "b", "regoin_name": "x"}}"#);
        assert!(e.contains("store: unknown key `regoin_name`") && e.contains("region_name"), "{e}");
        let e = err(r#"{"store": {"path": "/x"}, "retention": {"keep_lats": 1}}"#);
        assert!(e.contains("retention: unknown key `keep_lats`"), "{e}");
        let e = err(r#"{"store": {"path": "/x"}, "target": {"deployment": {"environment": "x", "client": "c", "client_secret": "s", "deploymnet": "cf"}}}"#);
        assert!(e.contains("target.deployment: unknown key `deploymnet`") && e.contains("ca_cert"), "{e}");
        let e = err(r#"{"store": {"path": "/x"}, "target": {"hosts": {}, "director": {}}}"#);
        assert!(e.contains("exactly one of hosts, director, deployment, local"), "{e}");
        let e = err(r#"{"target": {"local": {"name": "x", "instances": {}}}}"#);
        assert!(e.contains("missing `store`"), "{e}");
        let e = err(r#"{"store": {"path": "/x", "bucket": "b"}}"#);
        assert!(e.contains("not both"), "{e}");
        let e = err(r#"{"store": {"path": "/x"}, "compression": "lz4"}"#);
        assert!(e.contains("not one of zstd"), "{e}");
        let e = err("[1, 2]");
        assert!(e.contains("must be a map"), "{e}");
        let e = err("{not json: [");
        assert!(e.contains("neither valid JSON nor valid YAML"), "{e}");
    }

    #[test]
    fn secrets_never_reach_errors_or_debug() {
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nsupersecretkeymaterial\n-----END OPENSSH PRIVATE KEY-----";
        let text = serde_json::json!({
            "target": {"director": {"host": "10.0.0.6", "username": "vcap", "private_key": key, "bogus": 1}},
            "store": {"path": "/x"},
        })
        .to_string();
        let e = err(&text);
        assert!(e.contains("target.director: unknown key `bogus`"), "{e}");
        assert!(!e.contains("supersecret"), "{e}");
        let c = Config::parse(&serde_json::json!({"store": {"path": "/x"}, "encryption": {"identity": "AGE-SECRET-KEY-1XYZ"}}).to_string()).unwrap();
        assert!(!format!("{c:?}").contains("AGE-SECRET"));
    }

    #[test]
    fn all_proxy_in_both_forms() {
        use crate::transport::ssh::Proxy;
        let with = |ssh: serde_json::Value| Config::parse(&serde_json::json!({"store": {"path": "/x"}, "ssh": ssh}).to_string());
        let c = with(serde_json::json!({"all_proxy": "socks5://127.0.0.1:1080"})).unwrap();
        assert!(matches!(c.ssh.gateway, Some(Proxy::Socks5 { ref host, port: 1080 }) if host == "127.0.0.1"));
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nsupersecretkeymaterial\n-----END OPENSSH PRIVATE KEY-----";
        for (ssh, want) in [
            (serde_json::json!({"all_proxy": "ssh+socks5://jb@10.0.0.5:22", "all_proxy_private_key": key}), "all_proxy_host_public_key"),
            (
                serde_json::json!({"all_proxy": "ssh+socks5://jb@10.0.0.5:22", "all_proxy_private_key": key, "all_proxy_host_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq2X8vGq7T0x0p8nVbQ0mJ2f8D3wYJYz3e2vC0Q1a2b"}),
                "ssh.all_proxy",
            ),
            (serde_json::json!({"all_proxy_private_key": key}), "need ssh.all_proxy"),
            (serde_json::json!({"all_proxy": "http://proxy:3128"}), "expected ssh+socks5://"),
        ] {
            let e = format!("{:#}", with(ssh.clone()).unwrap_err());
            assert!(e.contains(want), "{ssh}: {e}");
            assert!(!e.contains("supersecret"), "{e}");
        }
    }

    #[test]
    fn replicas_and_min_stores() {
        let c = Config::parse(r#"{"store": {"path": "/a", "replicas": [{"path": "/b"}, {"path": "/c"}]}, "min_stores": 2}"#).unwrap();
        assert_eq!(c.store.describe(), "file:///a + file:///b + file:///c");
        assert!(c.open_store().is_ok());
        let e = err(r#"{"store": {"path": "/a", "replicas": [{"path": "/b", "replicas": []}]}}"#);
        assert!(e.contains("cannot have replicas"), "{e}");
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
}

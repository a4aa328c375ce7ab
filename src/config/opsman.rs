//! `opsman:` in a configuration: an Ops Manager whose whole platform is backed up as one
//! platform backup (the Concourse resource's versions are then platform records), its keys
//! named as `om` names its flags:
//!
//! ```yaml
//! opsman:
//!   target: https://opsman.example.com
//!   client_id: ((opsman_client.id))           # or username / password
//!   client_secret: ((opsman_client.secret))
//!   ca_cert: ((opsman_ca))                    # PEM text, as Concourse passes a secret
//!   products: [cf, p-isolation-segment]       # or all (the default)
//!   host_public_key: ((director_host_key))    # the director VM's, else ssh's known_hosts
//! ```
//!
//! Passwords and secrets stay in [`Secret`]s; `Debug` is hand-written and shows none.

use super::{check_keys, duration, flag, object, string};
use crate::target::opsman::platform::Reach;
use crate::target::opsman::{opsman_url, OpsManAuth, OpsManClient, OpsManConfig};
use crate::target::SshOptions;
use crate::transport::ssh::{HostKeyPolicy, Secret};
use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

pub(super) const OPSMAN_KEYS: &[&str] = &[
    "target",
    "username",
    "password",
    "client_id",
    "client_secret",
    "ca_cert",
    "skip_ssl_validation",
    "request_timeout",
    "products",
    "director_ssh",
    "director_url",
    "host_public_key",
];

/// The longest one request to Ops Manager may take (the export is one): the CLI's default.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// An `opsman:` block, checked.
#[derive(Clone)]
pub struct OpsmanSource {
    pub target: String,
    pub auth: OpsManAuth,
    pub ca_pem: Option<Vec<u8>>,
    pub skip_ssl_validation: bool,
    pub request_timeout: Duration,
    /// The products' types to back up; empty: every product but the director.
    pub products: Vec<String>,
    /// Where to reach the director, and its VM's host key.
    pub reach: Reach,
}

impl fmt::Debug for OpsmanSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let login = match &self.auth {
            OpsManAuth::User { username, .. } => format!("user {username}"),
            OpsManAuth::Client { id, .. } => format!("client {id}"),
        };
        f.debug_struct("OpsmanSource")
            .field("target", &self.target)
            .field("login", &login)
            .field("products", &self.products)
            .field("skip_ssl_validation", &self.skip_ssl_validation)
            .finish_non_exhaustive()
    }
}

impl OpsmanSource {
    pub(super) fn parse(v: &Value) -> anyhow::Result<OpsmanSource> {
        let o = object(v, "opsman")?;
        check_keys(o, OPSMAN_KEYS, "opsman")?;
        let text = |k: &str| o.get(k).map(|v| string(v, &format!("opsman.{k}"))).transpose().map(|s| s.filter(|s| !s.trim().is_empty()));
        let target = text("target")?.ok_or_else(|| anyhow!("opsman: missing `target` (Ops Manager's URL, om's OM_TARGET)"))?;
        opsman_url(&target).context("opsman.target")?;
        let (user, pass, id, secret) = (text("username")?, text("password")?, text("client_id")?, text("client_secret")?);
        let auth = match (user, pass, id, secret) {
            (Some(username), Some(p), None, None) => OpsManAuth::User { username, password: Secret::new(p) },
            (None, None, Some(id), Some(s)) => OpsManAuth::Client { id, secret: Secret::new(s) },
            (u, p, i, s) if (u.is_some() || p.is_some()) && (i.is_some() || s.is_some()) => {
                bail!("opsman: give `username` and `password`, or `client_id` and `client_secret`, not both")
            }
            (Some(_), None, _, _) => bail!("opsman: `username` needs `password`"),
            (None, Some(_), _, _) => bail!("opsman: `password` needs `username`"),
            (_, _, Some(_), None) => bail!("opsman: `client_id` needs `client_secret`"),
            (_, _, None, Some(_)) => bail!("opsman: `client_secret` needs `client_id`"),
            _ => bail!(
                "opsman: missing credentials: give `username` and `password` (om's OM_USERNAME, OM_PASSWORD), \
                 or `client_id` and `client_secret` (OM_CLIENT_ID, OM_CLIENT_SECRET)"
            ),
        };
        let ca_pem = text("ca_cert")?.map(|c| ca_cert(&c)).transpose().context("opsman.ca_cert")?;
        let skip_ssl_validation = o.get("skip_ssl_validation").map(|v| flag(v, "opsman.skip_ssl_validation")).transpose()?.unwrap_or(false);
        let request_timeout = o.get("request_timeout").map(|v| duration(v, "opsman.request_timeout")).transpose()?.unwrap_or(REQUEST_TIMEOUT);
        let products = products(o.get("products"))?;
        let host_public_key = text("host_public_key")?;
        if let Some(line) = &host_public_key {
            HostKeyPolicy::pinned(line).context("opsman.host_public_key")?;
        }
        let reach = Reach { director_ssh: text("director_ssh")?, director_url: text("director_url")?, host_public_key };
        Ok(OpsmanSource { target, auth, ca_pem, skip_ssl_validation, request_timeout, products, reach })
    }

    /// Logs in to Ops Manager, through `ssh.all_proxy` when the configuration gives one.
    pub async fn connect(&self, ssh: &SshOptions) -> anyhow::Result<OpsManClient> {
        let cfg = OpsManConfig {
            target: self.target.clone(),
            auth: self.auth.clone(),
            ca_pem: self.ca_pem.clone(),
            skip_ssl_validation: self.skip_ssl_validation,
            proxy: ssh.gateway.clone(),
            request_timeout: self.request_timeout,
        };
        OpsManClient::connect(&cfg).await
    }
}

/// A CA certificate's PEM (or a file holding it), refused now rather than at the login
/// when it holds no certificate.
fn ca_cert(value: &str) -> anyhow::Result<Vec<u8>> {
    let pem = crate::target::bosh::read_ca_cert(value)?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        _ => bail!("not a PEM certificate (-----BEGIN CERTIFICATE----- ...)"),
    }
}

/// `products`: a list of types, one string (`cf,p-isolation-segment`), or `all` alone.
fn products(v: Option<&Value>) -> anyhow::Result<Vec<String>> {
    let list: Vec<String> = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().enumerate().map(|(i, x)| string(x, &format!("opsman.products[{i}]"))).collect::<anyhow::Result<_>>()?,
        Some(other) => string(other, "opsman.products")?.split(',').map(str::to_string).collect(),
    };
    let list: Vec<String> = list.iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
    match (list.is_empty(), list.iter().any(|p| p == "all")) {
        (true, _) => bail!("opsman.products is empty: give the products' types ([cf, p-isolation-segment]) or `all`"),
        (false, true) if list.len() > 1 => bail!("opsman.products: give `all` alone, or the products' types ([cf, p-isolation-segment])"),
        (false, true) => Ok(Vec::new()),
        (false, false) => Ok(list),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use serde_json::{json, Value};

    fn parse(opsman: Value) -> anyhow::Result<Config> {
        Config::from_value(&json!({"store": {"path": "/x"}, "opsman": opsman}))
    }

    fn err(opsman: Value) -> String {
        format!("{:#}", parse(opsman).unwrap_err())
    }

    #[test]
    fn an_opsman_block_parses_with_either_login() {
        let c = parse(json!({"target": "opsman.example.com", "client_id": "c", "client_secret": "s3cr3t-client",
                             "products": "cf, p-isolation-segment", "host_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"}))
        .unwrap();
        let o = c.opsman.as_ref().unwrap();
        assert_eq!(o.products, ["cf", "p-isolation-segment"]);
        assert!(o.reach.host_public_key.is_some() && c.target.is_none());
        assert!(!format!("{c:?}").contains("s3cr3t"), "{c:?}");
        let c = parse(json!({"target": "https://opsman", "username": "admin", "password": "hunter2-pass", "products": "all",
                             "skip_ssl_validation": "true", "request_timeout": "2h"}))
        .unwrap();
        let o = c.opsman.as_ref().unwrap();
        assert!(o.products.is_empty() && o.skip_ssl_validation);
        assert_eq!(o.request_timeout, std::time::Duration::from_secs(7200));
        assert!(format!("{o:?}").contains("user admin") && !format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn bad_opsman_blocks_name_the_key_and_never_the_secret() {
        let login = json!({"target": "https://opsman", "username": "admin", "password": "hunter2-pass"});
        let with = |k: &str, v: Value| {
            let mut o = login.clone();
            o[k] = v;
            o
        };
        for (opsman, want) in [
            (with("usrname", json!("x")), "opsman: unknown key `usrname`; allowed keys: target, username"),
            (json!({"username": "admin", "password": "p"}), "opsman: missing `target`"),
            (json!({"target": "https://opsman"}), "opsman: missing credentials: give `username` and `password`"),
            (json!({"target": "https://opsman", "username": "admin"}), "`username` needs `password`"),
            (json!({"target": "https://opsman", "password": "hunter2-pass"}), "`password` needs `username`"),
            (json!({"target": "https://opsman", "client_id": "c"}), "`client_id` needs `client_secret`"),
            (json!({"target": "https://opsman", "client_secret": "hunter2-pass"}), "`client_secret` needs `client_id`"),
            (with("client_id", json!("c")), "not both"),
            (with("target", json!("http://opsman")), "opsman.target"),
            (with("products", json!([])), "opsman.products is empty"),
            (with("products", json!(["all", "cf"])), "`all` alone"),
            (with("ca_cert", json!("-----BEGIN CERTIFICATE-----\nhunter2-pass\n-----END CERTIFICATE-----\n")), "opsman.ca_cert"),
            (with("skip_ssl_validation", json!("yes")), "opsman.skip_ssl_validation must be true or false"),
            (with("request_timeout", json!("soon")), "opsman.request_timeout"),
            (with("host_public_key", json!("not a key")), "opsman.host_public_key"),
            (json!("https://opsman"), "opsman must be a map"),
        ] {
            let e = err(opsman.clone());
            assert!(e.contains(want), "{opsman}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = format!("{:#}", Config::from_value(&json!({"store": {"path": "/x"}, "opsman": login, "target": {"local": {"name": "x", "instances": {}}}})).unwrap_err());
        assert!(e.contains("give `target` (one deployment) or `opsman`"), "{e}");
    }

    #[test]
    fn a_task_reads_the_secrets_and_the_products_from_its_environment() {
        let env = |n: &str| match n {
            "SECRET" => Some("hunter2-pass".to_string()),
            "PRODUCTS" => Some("[cf, p-isolation-segment]".to_string()),
            _ => None,
        };
        let text = "store: {path: /x}\nopsman: {target: https://opsman, client_id: c, client_secret: {from_env: SECRET}, products: {from_env: PRODUCTS}}\n";
        let c = Config::parse_with_env(text, &env).unwrap();
        let o = c.opsman.unwrap();
        assert_eq!(o.products, ["cf", "p-isolation-segment"]);
        assert!(matches!(&o.auth, crate::target::opsman::OpsManAuth::Client { secret, .. } if secret.expose() == "hunter2-pass"));
    }
}

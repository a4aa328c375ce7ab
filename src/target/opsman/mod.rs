//! Ops Manager: the API that knows a Tanzu platform's director and products. lockstep asks
//! it what `bbr-pcf-pipeline-tasks` digs out with `om curl` (`scripts/export-director-metadata`):
//! the director's address, its BBR client, CA and SSH key, and each product's deployment
//! ([`discover`]), and whether changes are being applied (a backup then would capture a
//! half-applied platform).
//!
//! Login is `om`'s: a token from `<opsman>/uaa/oauth/token`, for a user (`username` and
//! `password`, through Ops Manager's `opsman` client with an empty secret) or for a client
//! (`client_id`, `client_secret`); renewed before it expires and when the API refuses it
//! ([`crate::target::uaa`]). Every call can go through `BOSH_ALL_PROXY` or an SSH gateway, as
//! the director's do. Credentials stay in memory; no message carries one.

pub mod discover;
pub mod export;
pub mod platform;
pub mod import;

use crate::target::uaa::{error_chain, Grant, Uaa};
use crate::transport::proxy::ConnectProxy;
use crate::transport::ssh::{Proxy, Secret};
use anyhow::{anyhow, bail, Context};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// `om`'s environment variables, in the order its flags are documented.
pub const ENV_VARS: &[&str] =
    &["OM_TARGET", "OM_USERNAME", "OM_PASSWORD", "OM_CLIENT_ID", "OM_CLIENT_SECRET", "OM_SKIP_SSL_VALIDATION", "OM_DECRYPTION_PASSPHRASE"];

/// How to log in.
#[derive(Clone)]
pub enum OpsManAuth {
    /// A UAA user (`OM_USERNAME`, `OM_PASSWORD`).
    User { username: String, password: Secret },
    /// A UAA client (`OM_CLIENT_ID`, `OM_CLIENT_SECRET`).
    Client { id: String, secret: Secret },
}

/// Where Ops Manager is and how to reach it.
#[derive(Clone)]
pub struct OpsManConfig {
    /// `OM_TARGET`: `https://opsman.example.com`, or a host (https is assumed).
    pub target: String,
    pub auth: OpsManAuth,
    /// PEM of the CA that signed Ops Manager's certificate; the system's roots otherwise.
    pub ca_pem: Option<Vec<u8>>,
    /// `OM_SKIP_SSL_VALIDATION`: accept any certificate (says so in a warning).
    pub skip_ssl_validation: bool,
    /// `BOSH_ALL_PROXY` or an SSH gateway.
    pub proxy: Option<Proxy>,
    /// The longest one request may take: `om`'s default is 1800 s; an installation export
    /// of several GiB may need more.
    pub request_timeout: Duration,
}

impl OpsManConfig {
    /// `OM_TARGET` and the credentials from the environment, as `om` reads them: a client
    /// when `OM_CLIENT_ID` is set, else a user.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<OpsManConfig> {
        let val = |k: &str| get(k).filter(|v| !v.is_empty());
        let target = val("OM_TARGET").ok_or_else(|| anyhow!("no Ops Manager given: set OM_TARGET (or --target) to its URL"))?;
        let auth = match (val("OM_CLIENT_ID"), val("OM_USERNAME")) {
            (Some(id), _) => OpsManAuth::Client {
                secret: Secret::new(val("OM_CLIENT_SECRET").ok_or_else(|| anyhow!("OM_CLIENT_ID is set but OM_CLIENT_SECRET is not"))?),
                id,
            },
            (None, Some(username)) => OpsManAuth::User {
                password: Secret::new(val("OM_PASSWORD").ok_or_else(|| anyhow!("OM_USERNAME is set but OM_PASSWORD is not"))?),
                username,
            },
            (None, None) => bail!("no Ops Manager credentials: set OM_USERNAME and OM_PASSWORD, or OM_CLIENT_ID and OM_CLIENT_SECRET"),
        };
        let skip_ssl_validation = match val("OM_SKIP_SSL_VALIDATION").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => bail!("OM_SKIP_SSL_VALIDATION must be true or false, not {other:?}"),
        };
        Ok(OpsManConfig { target, auth, ca_pem: None, skip_ssl_validation, proxy: None, request_timeout: Duration::from_secs(1800) })
    }
}

/// `https://` when no scheme; the path dropped.
pub fn opsman_url(target: &str) -> anyhow::Result<Url> {
    let t = target.trim();
    if t.is_empty() {
        bail!("the Ops Manager URL (--target / OM_TARGET) is empty");
    }
    let with_scheme = if t.contains("://") { t.to_string() } else { format!("https://{t}") };
    let mut url = Url::parse(&with_scheme).map_err(|e| anyhow!("invalid Ops Manager URL {t:?}: {e}"))?;
    if url.scheme() != "https" {
        bail!("invalid Ops Manager URL {t:?}: Ops Manager is reached over https");
    }
    url.set_path("");
    Ok(url)
}

/// The HTTP client every call to Ops Manager goes through (its CA or none, the proxy or
/// gateway, the timeouts; redirects are answers, never followed), and the loopback proxy it
/// needs alive. No login: the import talks to an Ops Manager that has no users yet.
pub async fn http_client(
    ca_pem: Option<&[u8]>,
    skip_ssl_validation: bool,
    proxy: Option<&Proxy>,
    request_timeout: Duration,
) -> anyhow::Result<(reqwest::Client, Option<Arc<ConnectProxy>>)> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(30))
        .timeout(request_timeout);
    let via = match proxy {
        Some(p) => Some(Arc::new(ConnectProxy::start(p.clone(), Duration::from_secs(30)).await?)),
        None => None,
    };
    if let Some(v) = &via {
        let auth = reqwest::header::HeaderValue::from_str(&v.authorization).map_err(|e| anyhow!("proxy token: {e}"))?;
        builder = builder.proxy(reqwest::Proxy::all(&v.url).map_err(|e| anyhow!("loopback proxy {}: {e}", v.url))?.custom_http_auth(auth));
    }
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| anyhow!("invalid Ops Manager CA certificate: {e}"))?;
        if certs.is_empty() {
            bail!("invalid Ops Manager CA certificate: no certificate in it");
        }
        builder = builder.tls_certs_only(certs);
    }
    if skip_ssl_validation {
        builder = builder.danger_accept_invalid_certs(true);
    }
    let http = builder.build().map_err(|e| anyhow!("building the Ops Manager HTTP client: {}", error_chain(&e)))?;
    Ok((http, via))
}

/// A logged-in Ops Manager API client.
pub struct OpsManClient {
    base: Url,
    http: reqwest::Client,
    uaa: Uaa,
    _via: Option<Arc<ConnectProxy>>,
}

impl OpsManClient {
    /// Logs in: wrong credentials, an unreachable Ops Manager or an untrusted certificate
    /// fail here, each saying what to check.
    pub async fn connect(cfg: &OpsManConfig) -> anyhow::Result<OpsManClient> {
        let base = opsman_url(&cfg.target)?;
        let (http, via) = http_client(cfg.ca_pem.as_deref(), cfg.skip_ssl_validation, cfg.proxy.as_ref(), cfg.request_timeout).await?;
        let token_url = base.join("/uaa/oauth/token")?;
        let (grant, advice) = match &cfg.auth {
            OpsManAuth::User { username, password } => (
                Grant::Password { client: "opsman".into(), username: username.clone(), password: password.clone() },
                "the Ops Manager user and password (--username/--password, OM_USERNAME/OM_PASSWORD)",
            ),
            OpsManAuth::Client { id, secret } => (
                Grant::ClientCredentials { client: id.clone(), secret: secret.clone() },
                "the Ops Manager client (--client-id/--client-secret, OM_CLIENT_ID/OM_CLIENT_SECRET)",
            ),
        };
        let uaa = Uaa::login(&http, token_url, grant, advice).await.map_err(|e| {
            let why = via.as_ref().and_then(|v| v.last_error()).map(|w| format!(" ({w})")).unwrap_or_default();
            anyhow!("logging in to Ops Manager {base}{why}: {e:#}")
        })?;
        Ok(OpsManClient { base, http, uaa, _via: via })
    }

    pub fn url(&self) -> &Url {
        &self.base
    }

    /// Sends a request with the token; a 401 gets one retry with a renewed token (it may
    /// have expired on its way, or been revoked).
    pub async fn send(&self, method: Method, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = self.base.join(path).with_context(|| format!("Ops Manager URL for {path}"))?;
        let what = format!("{method} {path}");
        let mut renew = false;
        loop {
            let token = self.uaa.token(&self.http, renew).await?;
            let resp = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| anyhow!("Ops Manager {what}: {}", error_chain(&e)))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !renew {
                renew = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// `GET path` as JSON; `Ok(None)` for a 404 (an endpoint this Ops Manager lacks, or a
    /// credential that does not exist).
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let resp = self.send(Method::GET, path).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let hint = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    " (the user or client lacks the permission: Ops Manager's full-access or restricted-view role)"
                }
                _ => "",
            };
            bail!("Ops Manager GET {path}: {status}{hint}: {}", body.chars().take(300).collect::<String>());
        }
        resp.json().await.map(Some).with_context(|| format!("Ops Manager GET {path}: the answer is not JSON"))
    }
}

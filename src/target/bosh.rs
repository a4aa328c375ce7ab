//! bbr's `deployment` mode: a BOSH deployment reached through the director API.
//!
//! The calls, in bbr's order (`bosh/build_client.go`, `bosh/client.go`):
//!
//! 1. `GET /info` (no auth). `user_authentication.type == "uaa"`: a client-credentials
//!    token from `auth.options.url` + `/oauth/token` (client = `--username`, secret =
//!    `--password`); otherwise HTTP basic auth with them.
//! 2. `GET /deployments/:d/vms?format=full`: a task (the director redirects to
//!    `/tasks/:id`), polled until `done`, whose result (`/tasks/:id/output?type=result`) is
//!    one JSON VM info per line.
//! 3. `GET /deployments/:d`: `{"manifest": "<yaml>"}`, for the release of each job (lock
//!    dependencies name a job *and* a release).
//! 4. One temporary SSH identity per run: user `bosh_<15 hex>` and a fresh RSA-2048 key.
//!    Per instance group, in VM-list order, `POST /deployments/:d/ssh` `setup` (a task
//!    whose result is `[{status, ip, host_public_key, id, index, job}]`); each VM is then
//!    reached at `ip` (port 22 unless `ip` carries one) with its host key pinned to
//!    `host_public_key`.
//! 5. At the end, after failures and after a signal too: `ssh cleanup` per group set up,
//!    with `user_regex: ^bosh_<15 hex>` ([`Target::release`]).
//!
//! Secrets (client secret, tokens, the generated private key) are never printed:
//! [`Secret`]'s `Debug` hides them and no error message includes them.

use crate::target::SshOptions;
use crate::instance::{InstanceRef, ShellInstance};
use crate::model::InstanceId;
use crate::target::Target;
use crate::target::uaa::{error_chain, Grant, Uaa};
use crate::transport::proxy::ConnectProxy;
use crate::transport::ssh::{self, parse_address, ClientKey, HostKeyPolicy, Proxy, Secret, SshConfig, SshTransport};
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `--ca-cert`: a path, or PEM content (a value containing `BEGIN`, as bosh-cli decides).
pub fn read_ca_cert(value: &str) -> anyhow::Result<Vec<u8>> {
    let pem = if value.contains("BEGIN") {
        value.as_bytes().to_vec()
    } else {
        std::fs::read(value).with_context(|| format!("could not read the CA certificate (--ca-cert / CA_CERT) {value:?}"))?
    };
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        bail!("invalid CA certificate (--ca-cert / CA_CERT): no PEM certificate (-----BEGIN CERTIFICATE-----) in it");
    }
    Ok(pem)
}

/// The director URL as bosh-cli reads it: `https://` when no scheme, port 25555 when none.
pub fn director_url(target: &str) -> anyhow::Result<Url> {
    let t = target.trim();
    if t.is_empty() {
        bail!("invalid bosh URL - the director URL (--target / BOSH_ENVIRONMENT) is empty");
    }
    let with_scheme = if t.contains("://") { t.to_string() } else { format!("https://{t}") };
    let mut url = Url::parse(&with_scheme).map_err(|e| anyhow!("invalid bosh URL - {t:?}: {e}"))?;
    if url.scheme() != "https" {
        bail!("invalid bosh URL - {t:?}: the director is reached over https");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("invalid bosh URL - {t:?}: no host");
    }
    if url.port().is_none() && t.trim_end_matches('/').rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
        let _ = url.set_port(Some(25555));
    }
    url.set_path("");
    Ok(url)
}

#[derive(Clone)]
enum Auth {
    Basic { user: String, password: Secret },
    Bearer(Arc<Uaa>),
}

/// An authenticated director API client (cloned for each deployment of `--all-deployments`).
#[derive(Clone)]
pub struct DirectorClient {
    base: Url,
    http: reqwest::Client,
    auth: Auth,
    /// Between two polls of a task.
    pub poll_interval: Duration,
    /// The loopback proxy carrying the calls through `BOSH_ALL_PROXY`, while in use.
    _via: Option<Arc<ConnectProxy>>,
}

#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    user_authentication: Option<UserAuth>,
}

#[derive(Deserialize)]
struct UserAuth {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    options: Value,
}

#[derive(Deserialize)]
struct Task {
    id: u64,
    state: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    result: Option<String>,
}

/// One line of `/deployments/:d/vms?format=full`'s task result.
#[derive(Deserialize, Debug, Clone)]
pub struct VmInfo {
    #[serde(alias = "job")]
    pub job_name: String,
    #[serde(default)]
    pub index: Option<u64>,
    pub id: String,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub bootstrap: bool,
}

/// One host of an `ssh setup` task's result.
#[derive(Deserialize, Debug, Clone)]
pub struct SshHost {
    pub status: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub host_public_key: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub job: String,
}

impl DirectorClient {
    /// `GET /info`, then the UAA token when the director uses UAA. With `proxy`
    /// (`BOSH_ALL_PROXY`), every call goes through it, as bosh-cli's do.
    pub async fn connect(target: &str, client: &str, secret: &str, ca_pem: Option<&[u8]>, proxy: Option<&Proxy>) -> anyhow::Result<Self> {
        let base = director_url(target)?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(300));
        let via = match proxy {
            Some(p) => Some(Arc::new(ConnectProxy::start(p.clone(), Duration::from_secs(30)).await?)),
            None => None,
        };
        if let Some(v) = &via {
            let auth = reqwest::header::HeaderValue::from_str(&v.authorization).map_err(|e| anyhow!("proxy token: {e}"))?;
            let p = reqwest::Proxy::all(&v.url).map_err(|e| anyhow!("loopback proxy {}: {e}", v.url))?.custom_http_auth(auth);
            builder = builder.proxy(p);
        }
        let through = |what: String| match via.as_ref().and_then(|v| v.last_error()) {
            Some(why) => format!("{what} ({why})"),
            None => what,
        };
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| anyhow!("invalid CA certificate (--ca-cert / CA_CERT): {e}"))?;
            if certs.is_empty() {
                bail!("invalid CA certificate (--ca-cert / CA_CERT): no certificate in it");
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| match ca_pem {
            // The certificates are only parsed here.
            Some(_) => anyhow!("invalid CA certificate (--ca-cert / CA_CERT): {}", error_chain(&e)),
            None => anyhow!("building the HTTP client: {}", error_chain(&e)),
        })?;
        let info_url = base.join("/info")?;
        let resp = http
            .get(info_url.clone())
            .send()
            .await
            .map_err(|e| anyhow!("{}", through(format!("bosh director unreachable or unhealthy: GET {info_url}: {}", error_chain(&e)))))?;
        if !resp.status().is_success() {
            bail!("bosh director unreachable or unhealthy: GET {info_url}: {}", resp.status());
        }
        let info: Info = resp.json().await.map_err(|e| anyhow!("bosh director unreachable or unhealthy: GET {info_url}: {e}"))?;
        let auth = match info.user_authentication {
            Some(ua) if ua.kind == "uaa" => {
                let uaa = ua.options.get("url").and_then(Value::as_str).ok_or_else(|| {
                    anyhow!("the director uses UAA but /info gives no user_authentication.options.url")
                })?;
                let token_url = Url::parse(uaa)
                    .and_then(|u| u.join(&format!("{}/oauth/token", u.path().trim_end_matches('/'))))
                    .map_err(|e| anyhow!("the director's UAA URL {uaa:?} is invalid: {e}"))?;
                let grant = Grant::ClientCredentials { client: client.to_string(), secret: Secret::new(secret) };
                Auth::Bearer(Arc::new(Uaa::login(&http, token_url, grant, "--username/--password (BOSH_CLIENT/BOSH_CLIENT_SECRET)").await?))
            }
            _ => Auth::Basic { user: client.to_string(), password: Secret::new(secret) },
        };
        Ok(DirectorClient { base, http, auth, poll_interval: Duration::from_millis(250), _via: via })
    }

    pub fn url(&self) -> &Url {
        &self.base
    }

    /// A request to the director, credentials added by [`execute`](Self::execute).
    fn request(&self, method: Method, path_and_query: &str) -> anyhow::Result<reqwest::RequestBuilder> {
        let url = self.base.join(path_and_query).with_context(|| format!("director URL for {path_and_query}"))?;
        Ok(self.http.request(method, url))
    }

    /// Sends `rb` with the credentials. A 401 to a UAA token gets one retry with a new
    /// token (it may have expired or been revoked since we got it); the response is
    /// returned whatever its status.
    async fn execute(&self, what: &str, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let retry = rb.try_clone();
        let resp = self.with_auth(rb, false).await?.send().await.map_err(|e| anyhow!("{what}: {}", error_chain(&e)))?;
        match (&self.auth, retry) {
            (Auth::Bearer(_), Some(again)) if resp.status() == StatusCode::UNAUTHORIZED => {
                self.with_auth(again, true).await?.send().await.map_err(|e| anyhow!("{what}: {}", error_chain(&e)))
            }
            _ => Ok(resp),
        }
    }

    async fn with_auth(&self, rb: reqwest::RequestBuilder, renew: bool) -> anyhow::Result<reqwest::RequestBuilder> {
        Ok(match &self.auth {
            Auth::Basic { user, password } => rb.basic_auth(user, Some(password.expose())),
            Auth::Bearer(uaa) => rb.bearer_auth(uaa.token(&self.http, renew).await?.expose()),
        })
    }

    async fn send(&self, what: &str, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = self.execute(what, rb).await?;
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let description = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("description").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| body.chars().take(300).collect());
        match status {
            StatusCode::UNAUTHORIZED => bail!(
                "{what}: the director rejected the credentials (401 Unauthorized): check --username/--password \
                 (BOSH_CLIENT/BOSH_CLIENT_SECRET). {description}"
            ),
            _ => bail!("{what}: director answered {status}: {description}"),
        }
    }

    /// Follows a task-creating response (a redirect to `/tasks/:id`, or the task itself),
    /// polls it until it ends, and returns its result output.
    async fn task_output(&self, what: &str, resp: reqwest::Response) -> anyhow::Result<String> {
        let id = if resp.status().is_redirection() {
            let loc = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| anyhow!("{what}: the director redirected without a Location"))?;
            let path = Url::parse(loc).map(|u| u.path().to_string()).unwrap_or_else(|_| loc.to_string());
            path.trim_end_matches('/')
                .rsplit('/')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("{what}: unexpected task location {loc:?}"))?
        } else {
            let t: Task = resp.json().await.with_context(|| format!("{what}: reading the task"))?;
            t.id
        };
        loop {
            let rb = self.request(Method::GET, &format!("/tasks/{id}"))?;
            let t: Task = self
                .send(&format!("{what}: task {id}"), rb)
                .await?
                .json()
                .await
                .with_context(|| format!("{what}: reading task {id}"))?;
            match t.state.as_str() {
                "done" => break,
                "queued" | "processing" | "cancelling" => tokio::time::sleep(self.poll_interval).await,
                other => bail!(
                    "{what}: director task {id} ({}) {other}: {}",
                    t.description,
                    t.result.unwrap_or_else(|| "no result given".into())
                ),
            }
        }
        let rb = self.request(Method::GET, &format!("/tasks/{id}/output?type=result"))?;
        self.send(&format!("{what}: task {id} output"), rb).await?.text().await.with_context(|| format!("{what}: task {id} output"))
    }

    fn deployment_path(deployment: &str) -> String {
        format!("/deployments/{}", encode_path(deployment))
    }

    async fn deployment_request(&self, deployment: &str, what: &str, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = self.execute(what, rb).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            bail!("deployment '{deployment}' not found on the director {}: check --deployment (BOSH_DEPLOYMENT)", self.base);
        }
        // Re-checked by send() for the other statuses.
        if resp.status().is_success() || resp.status().is_redirection() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            bail!("{what}: the director rejected the credentials (401 Unauthorized): check --username/--password (BOSH_CLIENT/BOSH_CLIENT_SECRET)");
        }
        bail!("{what}: director answered {status}: {}", body.chars().take(300).collect::<String>())
    }

    /// `GET /deployments`: the names of every deployment, in the director's order.
    pub async fn deployments(&self) -> anyhow::Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Dep {
            name: String,
        }
        let what = "listing the deployments";
        let rb = self.request(Method::GET, "/deployments")?;
        let resp = self.send(what, rb).await?;
        if resp.status().is_redirection() {
            bail!("{what}: the director answered {} instead of the list", resp.status());
        }
        let deps: Vec<Dep> = resp.json().await.with_context(|| format!("{what}: invalid answer"))?;
        Ok(deps.into_iter().map(|d| d.name).collect())
    }

    /// `GET /deployments/:d/vms?format=full` (a task).
    pub async fn vms(&self, deployment: &str) -> anyhow::Result<Vec<VmInfo>> {
        let what = format!("listing the VMs of deployment '{deployment}'");
        let rb = self.request(Method::GET, &format!("{}/vms?format=full", Self::deployment_path(deployment)))?;
        let resp = self.deployment_request(deployment, &what, rb).await?;
        let out = self.task_output(&what, resp).await?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<VmInfo>(l).with_context(|| format!("{what}: invalid VM info {l:?}")))
            .collect()
    }

    /// `GET /deployments/:d`: the manifest YAML.
    pub async fn manifest(&self, deployment: &str) -> anyhow::Result<String> {
        let what = format!("downloading the manifest of deployment '{deployment}'");
        let rb = self.request(Method::GET, &Self::deployment_path(deployment))?;
        let resp = self.deployment_request(deployment, &what, rb).await?;
        let v: Value = resp.json().await.with_context(|| what.clone())?;
        Ok(v.get("manifest").and_then(Value::as_str).unwrap_or_default().to_string())
    }

    /// `POST /deployments/:d/ssh` (a task) with `body`; the task's result.
    async fn ssh_command(&self, deployment: &str, what: &str, body: &Value) -> anyhow::Result<String> {
        let rb = self.request(Method::POST, &format!("{}/ssh", Self::deployment_path(deployment)))?.json(body);
        let resp = self.deployment_request(deployment, what, rb).await?;
        self.task_output(what, resp).await
    }

    /// `ssh setup` for one instance group; every host must report `success`.
    pub async fn ssh_setup(&self, deployment: &str, group: &str, user: &str, public_key: &str) -> anyhow::Result<Vec<SshHost>> {
        let what = format!("setting up SSH access to instance group '{group}' of deployment '{deployment}'");
        let body = json!({
            "command": "setup",
            "deployment_name": deployment,
            "target": {"job": group, "indexes": [], "ids": []},
            "params": {"user": user, "password": "", "public_key": public_key},
        });
        let out = self.ssh_command(deployment, &what, &body).await?;
        let hosts: Vec<SshHost> =
            serde_json::from_str(out.trim()).with_context(|| format!("{what}: invalid task result"))?;
        let failed: Vec<String> = hosts
            .iter()
            .filter(|h| h.status != "success")
            .map(|h| format!("{}/{} ({}: {})", if h.job.is_empty() { group } else { &h.job }, h.id, h.ip, h.status))
            .collect();
        if !failed.is_empty() {
            bail!("{what}: the director could not set up SSH on {}", failed.join(", "));
        }
        Ok(hosts)
    }

    /// `ssh cleanup` for one instance group: removes the users matching `^<user>`.
    pub async fn ssh_cleanup(&self, deployment: &str, group: &str, user: &str) -> anyhow::Result<()> {
        let what = format!("cleaning up SSH user {user} on instance group '{group}' of deployment '{deployment}'");
        let body = json!({
            "command": "cleanup",
            "deployment_name": deployment,
            "target": {"job": group, "indexes": [], "ids": []},
            "params": {"user_regex": format!("^{user}")},
        });
        self.ssh_command(deployment, &what, &body).await.map(|_| ())
    }
}

/// A UAA client-credentials token.
fn encode_path(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The parts of a deployment manifest lockstep reads: v2 `instance_groups[].jobs[]` and v1
/// `jobs[].templates[]`, with their releases and properties.
#[derive(Deserialize, Default)]
struct Manifest {
    #[serde(default)]
    instance_groups: Vec<ManifestGroup>,
    #[serde(default)]
    jobs: Vec<ManifestGroup>,
}

#[derive(Deserialize)]
struct ManifestGroup {
    name: String,
    #[serde(default)]
    jobs: Vec<ManifestJob>,
    #[serde(default)]
    templates: Vec<ManifestJob>,
    #[serde(default)]
    properties: Value,
}

#[derive(Deserialize)]
struct ManifestJob {
    name: String,
    #[serde(default)]
    release: Option<String>,
    #[serde(default)]
    properties: Value,
}

fn parse_manifest(yaml: &str) -> anyhow::Result<Manifest> {
    if yaml.trim().is_empty() {
        return Ok(Manifest::default());
    }
    serde_saphyr::from_str(yaml).map_err(|e| anyhow!("invalid deployment manifest: {}", e.without_snippet()))
}

/// Release names from a manifest: `(group, job) -> release` (v2 `instance_groups[].jobs[]`,
/// v1 `jobs[].templates[]`).
pub fn releases_from_manifest(yaml: &str) -> anyhow::Result<HashMap<(String, String), String>> {
    let m = parse_manifest(yaml)?;
    let mut out = HashMap::new();
    for g in m.instance_groups.iter().chain(m.jobs.iter()) {
        for j in g.jobs.iter().chain(g.templates.iter()) {
            if let Some(r) = &j.release {
                out.insert((g.name.clone(), j.name.clone()), r.clone());
            }
        }
    }
    Ok(out)
}

/// The `(group, job)`s whose manifest properties set `bbr.backup_one_restore_all: true`
/// (bbr's `manifest_querier.go`): v2 `instance_groups[].jobs[].properties.bbr`, v1
/// `jobs[].properties.bbr` (then every template of that group).
pub fn backup_one_restore_all_from_manifest(yaml: &str) -> anyhow::Result<std::collections::HashSet<(String, String)>> {
    fn set(props: &Value) -> bool {
        props.pointer("/bbr/backup_one_restore_all").and_then(Value::as_bool).unwrap_or(false)
    }
    let m = parse_manifest(yaml)?;
    let mut out = std::collections::HashSet::new();
    for g in &m.instance_groups {
        for j in g.jobs.iter().filter(|j| set(&j.properties)) {
            out.insert((g.name.clone(), j.name.clone()));
        }
    }
    for g in m.jobs.iter().filter(|g| set(&g.properties)) {
        for t in &g.templates {
            out.insert((g.name.clone(), t.name.clone()));
        }
    }
    Ok(out)
}

/// The per-run SSH identity: `bosh_<15 hex>` and a fresh key pair.
pub struct SshIdentity {
    pub user: String,
    /// `ssh-rsa AAAA...`
    pub public_key: String,
    key: ClientKey,
}

impl SshIdentity {
    /// RSA-2048, as bosh-cli's `NewSSHOpts`.
    pub fn generate() -> anyhow::Result<SshIdentity> {
        use russh::keys::ssh_key::private::{KeypairData, RsaKeypair};
        let mut rng = russh::keys::key::safe_rng();
        let rsa = RsaKeypair::random(&mut rng, 2048).map_err(|e| anyhow!("generating the SSH key: {e}"))?;
        let key = russh::keys::PrivateKey::new(KeypairData::from(rsa), "lockstep")
            .map_err(|e| anyhow!("generating the SSH key: {e}"))?;
        let public_key = key.public_key().to_openssh().map_err(|e| anyhow!("encoding the SSH public key: {e}"))?;
        let public_key = public_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        // The key is fresh and random: its hash makes a random user name (bosh-cli: a UUID).
        use sha2::Digest;
        let digest = sha2::Sha256::digest(public_key.as_bytes());
        let user = format!("bosh_{}", &hex::encode(digest)[..15]);
        Ok(SshIdentity { user, public_key, key: ClientKey::from_private_key(key, "the generated BOSH SSH key") })
    }
}

/// What one run learnt from the director: the VMs to reach and the manifest's facts.
struct Session {
    instances: Vec<InstanceRef>,
    /// `(group, job)` -> release, for release-qualified lock ordering.
    releases: HashMap<(String, String), String>,
    /// `(group, job)`s with `bbr.backup_one_restore_all: true` in the manifest.
    one_restore_all: std::collections::HashSet<(String, String)>,
    /// The instances the director marks `bootstrap: true`.
    bootstrap: Vec<InstanceId>,
}

/// A BOSH deployment reached through the director.
pub struct DeploymentTarget {
    client: DirectorClient,
    deployment: String,
    opts: SshOptions,
    identity: SshIdentity,
    /// The manifest, downloaded once (release names, `--with-manifest`).
    manifest: tokio::sync::OnceCell<String>,
    /// Groups for which `ssh setup` was sent: `ssh cleanup` is owed for each.
    set_up: Mutex<Vec<String>>,
    session: tokio::sync::OnceCell<Session>,
}

impl DeploymentTarget {
    pub fn new(client: DirectorClient, deployment: &str, opts: &SshOptions) -> anyhow::Result<Self> {
        if deployment.trim().is_empty() {
            bail!("the deployment name (--deployment / BOSH_DEPLOYMENT) is empty");
        }
        Ok(DeploymentTarget {
            client,
            deployment: deployment.to_string(),
            opts: opts.clone(),
            identity: SshIdentity::generate()?,
            manifest: tokio::sync::OnceCell::new(),
            set_up: Mutex::new(Vec::new()),
            session: tokio::sync::OnceCell::new(),
        })
    }

    /// The temporary SSH user of this run (`bosh_<15 hex>`).
    pub fn ssh_user(&self) -> &str {
        &self.identity.user
    }

    /// The deployment manifest (`GET /deployments/:d`), downloaded at most once per run.
    pub async fn manifest(&self) -> anyhow::Result<&str> {
        self.manifest.get_or_try_init(|| self.client.manifest(&self.deployment)).await.map(String::as_str)
    }

    async fn open(&self) -> anyhow::Result<Session> {
        let d = &self.deployment;
        let vms = self.client.vms(d).await?;
        let manifest = self.manifest().await?;
        let releases = releases_from_manifest(manifest).with_context(|| format!("deployment '{d}'"))?;
        let one_restore_all = backup_one_restore_all_from_manifest(manifest).with_context(|| format!("deployment '{d}'"))?;
        let mut bootstrap = Vec::new();
        let mut groups: Vec<String> = Vec::new();
        for vm in &vms {
            if !groups.contains(&vm.job_name) {
                groups.push(vm.job_name.clone());
            }
        }
        let mut instances: Vec<InstanceRef> = Vec::new();
        for group in &groups {
            self.set_up.lock().map_err(|_| anyhow!("poisoned"))?.push(group.clone());
            let hosts = self.client.ssh_setup(d, group, &self.identity.user, &self.identity.public_key).await?;
            for h in hosts {
                let vm = vms.iter().find(|v| v.id == h.id);
                let index = vm
                    .and_then(|v| v.index)
                    .or(h.index)
                    .ok_or_else(|| anyhow!("vmInfo index is nil, given vmID {} of instance group '{group}'", h.id))?;
                let id = InstanceId::new(group.clone(), index.to_string());
                if vm.is_some_and(|v| v.bootstrap) {
                    bootstrap.push(id.clone());
                }
                let (host, port) = parse_address(&h.ip, 22).with_context(|| format!("instance {id}: address {:?}", h.ip))?;
                let host_key = ssh::parse_public_key_line(&h.host_public_key)
                    .with_context(|| format!("instance {id}: the host_public_key the director returned"))?;
                let mut cfg = SshConfig::new(host, port, self.identity.user.clone(), self.identity.key.clone(), HostKeyPolicy::Pinned(host_key));
                cfg.connect_timeout = self.opts.connect_timeout;
                cfg.script_timeout = self.opts.script_timeout;
                cfg.keepalive_interval = self.opts.keepalive_interval;
                cfg.proxy = self.opts.gateway.clone();
                instances.push(Arc::new(ShellInstance::new(id, Box::new(SshTransport::new(cfg))).with_script_timeout(self.opts.script_timeout)));
            }
        }
        Ok(Session { instances, releases, one_restore_all, bootstrap })
    }
}

#[async_trait]
impl Target for DeploymentTarget {
    fn deployment_name(&self) -> &str {
        &self.deployment
    }

    fn location(&self) -> Option<String> {
        Some(format!("BOSH deployment {} on {}", self.deployment, self.client.url()))
    }

    async fn instances(&self) -> anyhow::Result<Vec<InstanceRef>> {
        let s = self.session.get_or_try_init(|| self.open()).await?;
        Ok(s.instances.clone())
    }

    fn release_of(&self, group: &str, job: &str) -> Option<String> {
        self.session.get()?.releases.get(&(group.to_string(), job.to_string())).cloned()
    }

    fn backup_one_restore_all(&self, group: &str, job: &str) -> bool {
        self.session.get().is_some_and(|s| s.one_restore_all.contains(&(group.to_string(), job.to_string())))
    }

    fn is_bootstrap(&self, id: &InstanceId) -> bool {
        self.session.get().is_some_and(|s| s.bootstrap.contains(id))
    }

    /// `ssh cleanup` for every group `ssh setup` was sent for.
    async fn release(&self) -> anyhow::Result<()> {
        let groups = std::mem::take(&mut *self.set_up.lock().map_err(|_| anyhow!("poisoned"))?);
        let mut errors = Vec::new();
        for g in &groups {
            if let Err(e) = self.client.ssh_cleanup(&self.deployment, g, &self.identity.user).await {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(director_url("10.0.0.6").unwrap().as_str(), "https://10.0.0.6:25555/");
        assert_eq!(director_url("https://10.0.0.6:443").unwrap().as_str(), "https://10.0.0.6/");
        assert_eq!(director_url("https://d.example:8443/").unwrap().as_str(), "https://d.example:8443/");
        for bad in ["", "http://x", "https://", "ht tp://x y"] {
            assert!(format!("{:#}", director_url(bad).unwrap_err()).contains("invalid bosh URL"), "{bad}");
        }
    }

    #[test]
    fn ca_values() {
        let e = read_ca_cert("/nonexistent/ca.pem").unwrap_err();
        assert!(format!("{e:#}").contains("could not read the CA certificate"), "{e:#}");
        let e = read_ca_cert("-----BEGIN NONSENSE-----").unwrap_err();
        assert!(format!("{e:#}").contains("invalid CA certificate"), "{e:#}");
    }

    #[test]
    fn releases_v1_and_v2() {
        let r = releases_from_manifest(
            "name: d\ninstance_groups:\n- name: db\n  jobs:\n  - name: pg\n    release: postgres\n    properties: {a: 1}\n\
             jobs:\n- name: old\n  templates:\n  - name: t\n    release: r1\n",
        )
        .unwrap();
        assert_eq!(r.get(&("db".into(), "pg".into())).map(String::as_str), Some("postgres"));
        assert_eq!(r.get(&("old".into(), "t".into())).map(String::as_str), Some("r1"));
    }

    #[test]
    fn backup_one_restore_all_v1_and_v2() {
        let r = backup_one_restore_all_from_manifest(
            "name: d\ninstance_groups:\n- name: db\n  jobs:\n  - name: pg\n    release: postgres\n    properties: {bbr: {backup_one_restore_all: true}}\n\
             \x20 - name: other\n    release: postgres\n    properties: {bbr: {backup_one_restore_all: false}}\n\
             jobs:\n- name: old\n  properties: {bbr: {backup_one_restore_all: true}}\n  templates:\n  - name: t\n    release: r1\n",
        )
        .unwrap();
        let mut got: Vec<_> = r.into_iter().collect();
        got.sort();
        assert_eq!(got, [("db".to_string(), "pg".to_string()), ("old".to_string(), "t".to_string())]);
        assert!(backup_one_restore_all_from_manifest("").unwrap().is_empty());
    }

    #[test]
    fn identity_is_bosh_like() {
        let t = std::time::Instant::now();
        let id = SshIdentity::generate().unwrap();
        assert!(id.user.starts_with("bosh_") && id.user.len() == 20, "{}", id.user);
        assert!(id.public_key.starts_with("ssh-rsa "), "{}", id.public_key);
        eprintln!("RSA-2048 generated in {:?}", t.elapsed());
    }
}

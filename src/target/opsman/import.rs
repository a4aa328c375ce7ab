//! The installation import into a fresh Ops Manager, as `om import-installation` does it
//! (pivotal-cf/om: `commands/import_installation.go`, `api/setup_service.go`,
//! `api/installation_asset_service.go`, `formcontent/formcontent.go`):
//!
//! 1. `GET /login/ensure_availability`, unauthenticated, redirects not followed: a `302` to
//!    `/setup` is an Ops Manager never set up (the only one an import may go to); a `302` to
//!    `/auth/cloudfoundry` is one set up already; a `200` saying "Waiting for authentication
//!    system to start..." is one starting up. lockstep refuses anything but `/setup` (om
//!    prints "Ops Manager is already configured" and exits 0; an import that did not happen
//!    must not pass for one in a restore pipeline).
//! 2. `POST /api/v0/installation_asset_collection`, unauthenticated, `multipart/form-data`:
//!    the file part `installation[file]` first, then the field `passphrase` (the decryption
//!    passphrase of the Ops Manager that was exported), with a `Content-Length` (om sets one,
//!    computed before sending; Ops Manager's front end takes no chunked upload). The file is
//!    streamed from the store as it is read: nothing is staged on disk.
//! 3. `ensure_availability` again every polling interval (om's `--polling-interval`, 10 s)
//!    until it redirects to `/auth/cloudfoundry`. om tolerates three "connection refused" or
//!    "bad gateway" answers while the web server restarts; lockstep tolerates 30 in a row.

use super::opsman_url;
use crate::target::export::{ImportBody, Importer};
use crate::target::uaa::error_chain;
use crate::transport::proxy::ConnectProxy;
use crate::transport::ssh::Secret;
use anyhow::{anyhow, bail};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::{StatusCode, Url};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const AVAILABILITY_PATH: &str = "/login/ensure_availability";
pub const IMPORT_PATH: &str = "/api/v0/installation_asset_collection";
/// What Ops Manager's login page says while its UAA starts.
const STARTING: &str = "Waiting for authentication system to start...";
/// Transient failures in a row (connection refused, 502, 503) tolerated while waiting.
const TRANSIENT_IN_A_ROW: u32 = 30;

/// What `ensure_availability` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Never set up: an import may go here.
    Unstarted,
    /// Set up (or importing), its authentication system starting.
    Pending,
    /// Set up and ready.
    Complete,
}

/// One look at `ensure_availability`: an answer, or a failure that may pass (the web server
/// restarting after the import).
enum Probe {
    Status(Availability),
    Transient(String),
}

/// A fresh Ops Manager to import into.
pub struct InstallationImport {
    base: Url,
    http: reqwest::Client,
    passphrase: Secret,
    poll_interval: Duration,
    /// The longest wait for Ops Manager to be ready after the upload.
    wait_limit: Duration,
    _via: Option<Arc<ConnectProxy>>,
}

impl InstallationImport {
    /// `http` and `via` from [`super::http_client`].
    pub fn new(
        target: &str,
        (http, via): (reqwest::Client, Option<Arc<ConnectProxy>>),
        passphrase: Secret,
        poll_interval: Duration,
        wait_limit: Duration,
    ) -> anyhow::Result<InstallationImport> {
        if passphrase.expose().is_empty() {
            bail!("the decryption passphrase is required for an import (--decryption-passphrase, OM_DECRYPTION_PASSPHRASE): the one the exported Ops Manager was set up with");
        }
        Ok(InstallationImport { base: opsman_url(target)?, http, passphrase, poll_interval, wait_limit, _via: via })
    }

    async fn probe(&self) -> anyhow::Result<Probe> {
        let url = self.base.join(AVAILABILITY_PATH)?;
        let resp = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_timeout() => return Ok(Probe::Transient(error_chain(&e))),
            Err(e) => bail!("Ops Manager GET {AVAILABILITY_PATH}: {}", error_chain(&e)),
        };
        let status = resp.status();
        match status {
            StatusCode::FOUND => {
                let location = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let path = self.base.join(&location).map(|u| u.path().to_string()).map_err(|e| anyhow!("Ops Manager redirected to {location:?}: {e}"))?;
                match path.as_str() {
                    "/setup" => Ok(Probe::Status(Availability::Unstarted)),
                    "/auth/cloudfoundry" => Ok(Probe::Status(Availability::Complete)),
                    other => bail!("Ops Manager GET {AVAILABILITY_PATH}: unexpected redirect to {other} (is {} an Ops Manager?)", self.base),
                }
            }
            StatusCode::OK => {
                let body = resp.text().await.unwrap_or_default();
                if body.contains(STARTING) {
                    return Ok(Probe::Status(Availability::Pending));
                }
                bail!("Ops Manager GET {AVAILABILITY_PATH}: 200 with an unexpected body (is {} an Ops Manager?): {}", self.base, body.chars().take(200).collect::<String>())
            }
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => Ok(Probe::Transient(status.to_string())),
            _ => bail!("Ops Manager GET {AVAILABILITY_PATH}: unexpected {status}"),
        }
    }

    /// What `ensure_availability` says now; a transient failure is an error here.
    pub async fn availability(&self) -> anyhow::Result<Availability> {
        match self.probe().await? {
            Probe::Status(a) => Ok(a),
            Probe::Transient(why) => bail!("Ops Manager {} cannot be reached: {why}", self.base),
        }
    }

    /// The multipart body's parts around the file, as Go's `mime/multipart` writes them.
    fn envelope(&self, file_name: &str) -> (String, Bytes, Bytes) {
        let boundary = format!("lockstep{}", crate::unique::random_hex(16));
        let quoted = file_name.replace('\\', "\\\\").replace('"', "\\\"");
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"installation[file]\"; filename=\"{quoted}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let mut tail = format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"passphrase\"\r\n\r\n").into_bytes();
        tail.extend_from_slice(self.passphrase.expose().as_bytes());
        tail.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={boundary}"), Bytes::from(head), Bytes::from(tail))
    }
}

#[async_trait]
impl Importer for InstallationImport {
    fn location(&self) -> String {
        format!("opsman {}", self.base)
    }

    async fn check_unconfigured(&self) -> anyhow::Result<()> {
        match self.availability().await? {
            Availability::Unstarted => Ok(()),
            Availability::Complete => bail!(
                "Ops Manager {} is already configured (its setup is done: {AVAILABILITY_PATH} sends to /auth/cloudfoundry): \
                 an import would replace its installation, so nothing was sent. Import into a fresh Ops Manager VM that has not been set up",
                self.base
            ),
            Availability::Pending => bail!(
                "Ops Manager {} is not fresh: it has been set up, or an import is under way, and its authentication system is starting. \
                 Nothing was sent; check it once it is up, or import into a fresh Ops Manager VM",
                self.base
            ),
        }
    }

    async fn send(&self, file_name: &str, size: u64, body: ImportBody) -> anyhow::Result<()> {
        let (content_type, head, tail) = self.envelope(file_name);
        let length = head.len() as u64 + size + tail.len() as u64;
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
            .chain(body)
            .chain(futures::stream::once(async move { Ok(tail) }));
        let resp = self
            .http
            .post(self.base.join(IMPORT_PATH)?)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            // Set by hand: a streamed body has no length of its own, and without one it
            // would go chunked.
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| anyhow!("Ops Manager POST {IMPORT_PATH}: {}", error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        let hint = if body.to_lowercase().contains("passphrase") || status == StatusCode::UNPROCESSABLE_ENTITY {
            " (check the decryption passphrase, --decryption-passphrase or OM_DECRYPTION_PASSPHRASE: it must be the one the exported Ops Manager was set up with)"
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
            " (the web server in front of Ops Manager, or a proxy on the way, refuses uploads this large)"
        } else {
            ""
        };
        bail!("Ops Manager refused the installation: POST {IMPORT_PATH}: {status}{hint}: {}", body.chars().take(300).collect::<String>())
    }

    async fn wait_ready(&self, progress: &(dyn Fn(String) + Send + Sync)) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut transient = 0;
        let mut last = None;
        loop {
            if started.elapsed() > self.wait_limit {
                bail!("Ops Manager {} was not ready {:?} after the import (last seen: {:?}): check it in a browser", self.base, self.wait_limit, last);
            }
            tokio::time::sleep(self.poll_interval).await;
            match self.probe().await? {
                Probe::Status(Availability::Complete) => return Ok(()),
                Probe::Status(a) => {
                    transient = 0;
                    if last != Some(a) {
                        progress(match a {
                            Availability::Pending => "Ops Manager is importing the installation: its authentication system is starting".into(),
                            _ => "Ops Manager has not finished the import yet".into(),
                        });
                    }
                    last = Some(a);
                }
                Probe::Transient(why) => {
                    transient += 1;
                    if transient > TRANSIENT_IN_A_ROW {
                        bail!("Ops Manager {} did not answer after the import ({TRANSIENT_IN_A_ROW} tries in a row: {why})", self.base);
                    }
                    if transient == 1 {
                        progress(format!("waiting for Ops Manager's web server to come back ({why})"));
                    }
                }
            }
        }
    }
}

//! The installation export: `GET /api/v0/installation_asset_collection`, Ops Manager's
//! `installation.zip` (its settings, and with them the key to every credential it holds),
//! often gigabytes. It is streamed as it arrives into a writer (the store's, through the
//! compressor and encryptor): nothing is staged on disk, and memory stays at one chunk.
//!
//! Its size must be announced (`Content-Length`): the artifact stores it as a tar entry,
//! whose header comes first. A stream that ends early is an error, never a short export:
//! fewer bytes than announced, a connection cut, or a zip without its
//! end-of-central-directory record.

use super::OpsManClient;
use crate::target::export::{ExportStream, Exporter};
use crate::transport::Writer;
use anyhow::{anyhow, bail};
use async_trait::async_trait;
use reqwest::Method;
use tokio::io::AsyncWriteExt;

pub const EXPORT_PATH: &str = "/api/v0/installation_asset_collection";

/// The zip's end-of-central-directory signature, in its last 64 KiB + 22 bytes.
const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
const TAIL: usize = 65_557;

/// Ops Manager as an [`Exporter`]: artifacts named `opsman_<time>`.
pub struct InstallationExport {
    pub client: OpsManClient,
}

/// A started export.
pub struct Download {
    resp: reqwest::Response,
    size: u64,
}

/// Starts the export; refuses one whose size Ops Manager does not announce.
pub async fn start_export(c: &OpsManClient) -> anyhow::Result<Download> {
    let resp = c.send(Method::GET, EXPORT_PATH).await?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("Ops Manager GET {EXPORT_PATH}: {status}: {}", body.chars().take(300).collect::<String>());
    }
    let size = resp
        .content_length()
        .ok_or_else(|| anyhow!("Ops Manager sent the installation export without its size (no Content-Length): lockstep needs it to store the export as it streams"))?;
    Ok(Download { resp, size })
}

#[async_trait]
impl ExportStream for Download {
    fn size(&self) -> u64 {
        self.size
    }

    async fn copy_to(self: Box<Self>, out: Writer<'_>, progress: &mut (dyn FnMut(u64) + Send)) -> anyhow::Result<u64> {
        let Download { mut resp, size } = *self;
        let mut total = 0u64;
        // The last bytes seen, to find the zip's end record without holding the export.
        let mut tail: Vec<u8> = Vec::with_capacity(2 * TAIL);
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| anyhow!("the installation export stopped after {total} of {size} bytes: {}", crate::target::uaa::error_chain(&e)))?;
            let Some(chunk) = chunk else { break };
            if total + chunk.len() as u64 > size {
                bail!("the installation export is longer than the {size} bytes Ops Manager announced");
            }
            out.write_all(&chunk).await.map_err(|e| anyhow!("writing the installation export after {total} bytes: {e}"))?;
            total += chunk.len() as u64;
            tail.extend_from_slice(&chunk);
            if tail.len() > 2 * TAIL {
                tail.drain(..tail.len() - TAIL);
            }
            progress(total);
        }
        if total != size {
            bail!("the installation export ended after {total} of {size} bytes");
        }
        if !tail[tail.len().saturating_sub(TAIL)..].windows(4).any(|w| w == EOCD) {
            bail!("the installation export ({total} bytes) is not a complete zip (no end-of-central-directory record)");
        }
        Ok(total)
    }
}

#[async_trait]
impl Exporter for InstallationExport {
    fn deployment_name(&self) -> &str {
        "opsman"
    }

    fn file_name(&self) -> &str {
        "installation.zip"
    }

    fn location(&self) -> String {
        format!("opsman {}", self.client.url())
    }

    async fn start(&self) -> anyhow::Result<Box<dyn ExportStream + '_>> {
        Ok(Box::new(start_export(&self.client).await?))
    }
}

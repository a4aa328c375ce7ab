//! The installation export: `GET /api/v0/installation_asset_collection`, Ops Manager's
//! `installation.zip` (its settings, and with them the key to every credential it holds),
//! often gigabytes. It is streamed as it arrives into a writer (the store's, through the
//! compressor and encryptor): nothing is staged on disk, and memory stays at one chunk.
//!
//! A stream that ends early is an error, never a short export: a `Content-Length` that
//! was not reached, a chunked body cut without its last chunk (the HTTP client reports
//! it), or a zip without its end-of-central-directory record.

use super::OpsManClient;
use anyhow::{anyhow, bail};
use reqwest::Method;
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub const EXPORT_PATH: &str = "/api/v0/installation_asset_collection";

/// The zip's end-of-central-directory signature, in its last 64 KiB + 22 bytes.
const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
const TAIL: usize = 65_557;

/// Streams the export into `out` (flushed, not shut down); returns its size in bytes.
/// `progress` is called with the bytes so far, for the log.
pub async fn export_installation(
    c: &OpsManClient,
    out: &mut (dyn AsyncWrite + Unpin + Send),
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let mut resp = c.send(Method::GET, EXPORT_PATH).await?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("Ops Manager GET {EXPORT_PATH}: {status}: {}", body.chars().take(300).collect::<String>());
    }
    let expected = resp.content_length();
    let mut total = 0u64;
    // The last bytes seen, to find the zip's end record without holding the export.
    let mut tail: Vec<u8> = Vec::with_capacity(2 * TAIL);
    loop {
        let chunk = resp
            .chunk()
            .await
            .map_err(|e| anyhow!("the installation export stopped after {total} bytes: {}", crate::target::uaa::error_chain(&e)))?;
        let Some(chunk) = chunk else { break };
        out.write_all(&chunk).await.map_err(|e| anyhow!("writing the installation export after {total} bytes: {e}"))?;
        total += chunk.len() as u64;
        tail.extend_from_slice(&chunk);
        if tail.len() > 2 * TAIL {
            tail.drain(..tail.len() - TAIL);
        }
        progress(total);
    }
    out.flush().await?;
    if let Some(n) = expected
        && n != total
    {
        bail!("the installation export ended after {total} of {n} bytes");
    }
    if !tail[tail.len().saturating_sub(TAIL)..].windows(4).any(|w| w == EOCD) {
        bail!("the installation export ({total} bytes) is not a complete zip (no end-of-central-directory record): it was cut short");
    }
    Ok(total)
}

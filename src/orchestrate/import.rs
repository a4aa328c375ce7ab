//! `import_export`: an export artifact (`opsman_<time>`, made by [`super::export`]) sent back
//! to where exports go home to, e.g. a fresh Ops Manager, straight from the store.
//!
//! The destination is asked first, and a destination that cannot take an import (an Ops
//! Manager set up already) is refused before anything is read. Then what can be checked
//! without reading is checked (every object there with the size `lockstep.json` recorded),
//! so a truncated artifact is refused before a byte is sent. The export's tar is then read
//! once, decrypted and decompressed as it streams, and its file's bytes go on to the
//! destination as they arrive; nothing is staged on disk. The tar is checksummed on the way
//! (the file against `metadata`, the stored object against `lockstep.json`), and the last
//! chunk of the file is held back until both match: a damaged export is cut off short of its
//! end, so the destination never receives it whole, and the import fails saying the backup
//! is corrupted.

use super::Ctx;
use crate::artifact::stored::{self, compare_checksums, object_problem};
use crate::artifact::tar_hash::{file_entry, TarHasher};
use crate::store::codec::Identities;
use crate::store::Store;
use crate::target::export::{ImportBody, Importer};
use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// What was imported.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The file's name as sent (`installation.zip`).
    pub file: String,
    pub size: u64,
    /// The sha256 of the file's bytes, as `metadata` records it.
    pub sha256: String,
}

/// Imports artifact `name` from `store` into `dest`. Refuses, saying why, when `dest` is not
/// ready for an import, the artifact is not an export, or it is damaged ("Backup is
/// corrupted").
pub async fn import_export(ctx: &Ctx, store: &dyn Store, name: &str, ids: &Identities, dest: &dyn Importer) -> anyhow::Result<Imported> {
    dest.check_unconfigured().await?;
    let art = stored::open(store, name, false).await?;
    let entries = art.entries();
    let entry = match entries.as_slice() {
        [e] if e.instance.is_none() && e.name.ends_with("-export") => e.clone(),
        _ => bail!(
            "{name} is not an export artifact (one `<name>-export.tar` and nothing else, as `lockstep opsman export` makes): it holds {}",
            entries.iter().map(|e| e.file.as_str()).collect::<Vec<_>>().join(", ")
        ),
    };
    if art.codec.encrypted() && ids.is_empty() {
        bail!("artifact {name} is encrypted (age, to {}): give --identity FILE with the matching age identity", art.codec.recipients.join(", "));
    }
    let problems = stored::check_listing(store, &art).await?;
    if !problems.is_empty() {
        bail!("Backup is corrupted: {name} cannot be imported, nothing was sent:\n  {}", problems.join("\n  "));
    }
    let key = format!("{name}/{}", entry.stored);
    let (mut reader, meter) = stored::open_decoded(store, &key, &art.codec, ids).await?;
    let mut header = [0u8; 512];
    reader.read_exact(&mut header).await.with_context(|| format!("reading {key}"))?;
    let (path, size) = file_entry(&header).map_err(|e| anyhow!("Backup is corrupted: {key} does not start with a tar header: {e}"))?;
    if !entry.checksums.contains_key(&path) {
        bail!("Backup is corrupted: {key} holds {path}, which its metadata does not list");
    }
    let file = path.trim_start_matches("./").to_string();
    ctx.info(format!("Importing {file} ({size} bytes) from {}/{name} into {}", store.describe(), dest.location()));

    let sha256 = entry.checksums.get(&path).cloned().unwrap_or_default();
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let body: ImportBody = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed();
    let (location, what) = (dest.location(), file.clone());
    // Owns the sender: the body ends when this ends.
    let feed = async move {
        let fed = feed(ctx, &mut reader, header, size, &what, &tx).await;
        let (problems, last) = match fed {
            Ok((sums, last)) => {
                drop(reader);
                let (stored_size, stored_sha) = meter.totals();
                let mut p = compare_checksums(&entry.checksums, &sums);
                p.extend(object_problem(&art, &entry.stored, stored_size, &stored_sha));
                (p, last)
            }
            // The destination hung up: its answer says why (the send's error).
            Err(Fed::Gone) => return Err(None),
            Err(Fed::Unreadable(e)) => {
                let _ = tx.send(Err(std::io::Error::other("the stored export could not be read"))).await;
                return Err(Some(e.context(format!(
                    "the stored export {name} ({}) could not be read to its end (damaged, or the store failed); the import was cut off before the file's end, so {location} did not take it",
                    entry.stored
                ))));
            }
            Err(Fed::Damaged(e)) => (vec![format!("{e:#}")], None),
        };
        if !problems.is_empty() {
            // The destination must not take what it has: the body ends in an error.
            let _ = tx.send(Err(std::io::Error::other("the stored export is corrupted"))).await;
            return Err(Some(anyhow!(
                "Backup is corrupted: {} problem(s) in {name} ({}); the import was cut off before the file's end, so {location} did not take it:\n  {}",
                problems.len(),
                entry.stored,
                problems.join("\n  ")
            )));
        }
        if let Some(last) = last {
            tx.send(Ok(last)).await.map_err(|_| None)?;
        }
        Ok(())
    };
    let (fed, sent) = tokio::join!(feed, dest.send(&file, size, body));
    match (fed, sent) {
        (Err(Some(e)), _) => return Err(e),
        (_, Err(e)) => return Err(e),
        (Err(None), Ok(())) => bail!("{} answered before it had the whole of {file}", dest.location()),
        (Ok(()), Ok(())) => {}
    }
    ctx.info(format!("Sent {file} ({size} bytes, sha256 {sha256}, as its metadata records); waiting for the import to finish"));
    dest.wait_ready(&|m| ctx.info(m)).await?;
    ctx.info(format!("Imported {name} into {}", dest.location()));
    Ok(Imported { file, size, sha256 })
}

/// Why feeding the destination stopped.
enum Fed {
    /// The destination stopped taking the bytes (it answered, or its connection broke).
    Gone,
    /// The store's object could not be read or decoded to its end.
    Unreadable(anyhow::Error),
    /// The bytes read are not the tar the metadata describes.
    Damaged(anyhow::Error),
}

/// Reads the rest of the tar after `header`, sending the file's `size` bytes on `tx` as they
/// come except the last chunk, held back. Returns the tar's checksums and that chunk: the
/// caller compares the checksums before releasing it.
async fn feed(
    ctx: &Ctx,
    reader: &mut (dyn AsyncRead + Unpin + Send),
    header: [u8; 512],
    size: u64,
    file: &str,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(crate::artifact::tar_hash::Checksums, Option<Bytes>), Fed> {
    let damaged = |e: crate::artifact::tar_hash::TarHashError| Fed::Damaged(anyhow::Error::from(e).context("the export's tar"));
    let mut tar = TarHasher::new();
    tar.update(&header).map_err(damaged)?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut read, mut held): (u64, Option<Bytes>) = (0, None);
    let mut next = 10;
    loop {
        let n = reader.read(&mut buf).await.map_err(|e| {
            // Bytes that do not decrypt or decompress are damaged; anything else is the store.
            let damaged = e.kind() == std::io::ErrorKind::InvalidData;
            let e = anyhow::Error::from(e).context(format!("reading it after {read} of the file's {size} bytes"));
            if damaged { Fed::Damaged(e) } else { Fed::Unreadable(e) }
        })?;
        if n == 0 {
            break;
        }
        tar.update(&buf[..n]).map_err(damaged)?;
        let data = (size - read).min(n as u64) as usize;
        if data > 0 {
            read += data as u64;
            if let Some(prev) = held.replace(Bytes::copy_from_slice(&buf[..data])) {
                tx.send(Ok(prev)).await.map_err(|_| Fed::Gone)?;
            }
            let pct = read.saturating_mul(100).checked_div(size).unwrap_or(100);
            if pct >= next && pct < 100 {
                ctx.info(format!("{file}: {pct}% sent ({read} of {size} bytes)"));
                next = (pct / 10 + 1) * 10;
            }
        }
    }
    let sums = tar.finish().map_err(damaged)?;
    if read != size {
        return Err(Fed::Damaged(anyhow!("the export's tar ended after {read} of the file's {size} bytes")));
    }
    Ok((sums, held))
}

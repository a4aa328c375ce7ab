//! Object storage at the edge. A store holds objects under `/`-separated keys
//! (`<artifact>/<file>`); an object is written as a stream and becomes visible only when
//! committed. The store knows nothing of BBR: which objects form a complete artifact is
//! decided by [`crate::artifact`] (the `lockstep.json` commit marker).

pub mod assume_role;
pub mod codec;
pub mod local;
pub mod metered;
pub mod relay;
pub mod replicas;
pub mod s3;
pub mod s3_read;
pub mod s3_uploads;
pub mod url;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// An object being written. Bytes written are not visible under the key until
/// [`ObjectWriter::commit`]; [`ObjectWriter::abort`] (or dropping it) leaves nothing behind.
#[async_trait]
pub trait ObjectWriter: AsyncWrite + Unpin + Send {
    /// Makes the object visible; returns its size in bytes.
    async fn commit(self: Box<Self>) -> anyhow::Result<u64>;
    async fn abort(self: Box<Self>);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// Raised by [`Store::open`] for a key that does not exist, so callers can tell a missing
/// object from a failing store.
#[derive(Debug, thiserror::Error)]
#[error("{key} does not exist in {store}")]
pub struct NotFound {
    pub key: String,
    pub store: String,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// For messages: `file:///backups`, `s3://bucket/prefix`. Never includes secrets.
    fn describe(&self) -> String;
    /// Checks the store can be reached with the credentials given (bucket exists, listing
    /// allowed), so a backup fails before anything is locked rather than at the drain.
    async fn preflight(&self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Checks, creating nothing, that objects can be written under `prefix` (an artifact's
    /// name) without going through anything planted there: a local store refuses a symlink
    /// or another user's directory at the name. A backup asks before anything is locked.
    async fn check_writable(&self, prefix: &str) -> anyhow::Result<()> {
        let _ = prefix;
        Ok(())
    }
    /// Problems that did not fail the operation (a replica that lost its copy), for the
    /// commit marker and the log.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    async fn create(&self, key: &str) -> anyhow::Result<Box<dyn ObjectWriter>>;
    /// [`Store::create`], told about how many bytes will be written (the artifact
    /// directory's size, known before its drain), so a store with a limit on parts can size
    /// them, and refuse an object that cannot fit before its first byte.
    async fn create_sized(&self, key: &str, size_hint: Option<u64>) -> anyhow::Result<Box<dyn ObjectWriter>> {
        let _ = size_hint;
        self.create(key).await
    }
    /// Writes a small object only if `key` does not exist yet; `false` (nothing written)
    /// when it does. Atomic where the store can be (S3's `If-None-Match: *`, a hard link in
    /// a directory); this default checks and then writes, which two writers could race.
    async fn put_if_absent(&self, key: &str, data: &[u8]) -> anyhow::Result<bool> {
        if self.list(key).await?.iter().any(|o| o.key == key) {
            return Ok(false);
        }
        write_whole(self.create(key).await?, data).await?;
        Ok(true)
    }
    /// Opens an object for streaming; a missing key is a [`NotFound`] error.
    async fn open(&self, key: &str) -> anyhow::Result<Box<dyn AsyncRead + Unpin + Send>>;
    /// Every committed object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>>;
    /// Deletes an object; deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> anyhow::Result<()>;

    /// Aborts the multipart uploads left open under `prefix` (by a run killed before it
    /// could), except those whose key `keep` accepts (a backup in progress); returns how
    /// many it aborted. A store without multipart uploads has none.
    async fn abort_open_uploads(&self, _prefix: &str, _keep: &(dyn for<'k> Fn(&'k str) -> bool + Send + Sync)) -> anyhow::Result<usize> {
        Ok(0)
    }
}

/// Reads a whole (small) object into memory.
pub async fn read_all(store: &dyn Store, key: &str) -> anyhow::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut r = store.open(key).await?;
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Writes a whole (small) object and commits it.
pub async fn write_all(store: &dyn Store, key: &str, data: &[u8]) -> anyhow::Result<u64> {
    write_whole(store.create(key).await?, data).await
}

/// Writes `data` into `w` and commits it, or aborts it on a failure.
async fn write_whole(mut w: Box<dyn ObjectWriter>, data: &[u8]) -> anyhow::Result<u64> {
    use tokio::io::AsyncWriteExt;
    if let Err(e) = async {
        w.write_all(data).await?;
        w.shutdown().await
    }
    .await
    {
        w.abort().await;
        return Err(e.into());
    }
    w.commit().await
}

/// Rejects keys that could escape a store's root or that no store can hold.
pub fn check_key(key: &str) -> anyhow::Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        || key.contains('\0');
    if bad {
        anyhow::bail!("invalid object key {key:?}");
    }
    Ok(())
}

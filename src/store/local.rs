//! A store in a local directory. Keys map to paths, so an artifact `<name>/` is exactly
//! bbr's artifact directory: `bbr restore --artifact-path DIR/<name>` can read it.
//! Objects are written to a hidden temporary file beside their final name and renamed
//! into place on commit, so a reader never sees half an object.

use super::{check_key, NotFound, ObjectInfo, ObjectWriter, Store};
use anyhow::{bail, Context};
use async_trait::async_trait;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use tokio::fs;
use tokio::io::{AsyncRead, AsyncWrite};

pub struct LocalStore {
    root: PathBuf,
}

/// Prefix of temporary files; never listed.
const PARTIAL_PREFIX: &str = ".lockstep-partial-";

/// Creates the directories between the store's root and `dest`, private (artifacts hold a
/// platform's secrets; bbr makes them 0700 too), one component at a time so that nothing
/// below the root is followed through a symlink. A directory that is already there must be
/// a real directory owned by this user: in a directory others can write (`-a /tmp/x`), a
/// directory planted at an artifact's name would otherwise receive its files. The root
/// itself is the operator's choice and may be a symlink.
fn private_parent(root: &Path, dest: &Path) -> anyhow::Result<PathBuf> {
    let dir = dest.parent().context("key without a parent")?.to_path_buf();
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let below = dir.strip_prefix(root).context("key outside the store")?;
    let mut cur = root.to_path_buf();
    for part in below.components() {
        cur.push(part);
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&cur) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_own_dir(&cur)?,
            Err(e) => return Err(anyhow::Error::from(e).context(format!("creating {}", cur.display()))),
        }
    }
    Ok(dir)
}

/// Refuses a symlink, a non-directory, or a directory another user owns.
fn check_own_dir(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("examining {}", path.display()))?;
    if meta.file_type().is_symlink() {
        bail!("{} is a symlink: lockstep does not write artifacts through symlinks; remove it or choose another directory", path.display());
    }
    if !meta.is_dir() {
        bail!("{} is in the way: it is not a directory", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            bail!(
                "{} belongs to another user (uid {}, lockstep runs as uid {me}): refusing to write artifacts into it; remove it or choose another directory",
                path.display(),
                meta.uid()
            );
        }
    }
    Ok(())
}

/// Refuses a symlink anywhere between the store's root and `path`, the object itself
/// included: a link planted in a shared directory must not be read, nor replaced, under an
/// artifact's name.
fn refuse_symlinks(root: &Path, path: &Path) -> anyhow::Result<()> {
    let Ok(below) = path.strip_prefix(root) else { return Ok(()) };
    let mut cur = root.to_path_buf();
    for part in below.components() {
        cur.push(part);
        refuse_symlink(&cur)?;
    }
    Ok(())
}

fn refuse_symlink(path: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!("{} is a symlink: lockstep does not follow symlinks inside an artifact directory", path.display());
    }
    Ok(())
}

/// Opens a new file that nothing else has a name for: O_CREAT | O_EXCL (never over a
/// planted file or link) | O_NOFOLLOW, mode 0600.
fn create_new_file(path: &Path) -> io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    opts.open(path)
}

/// A temporary name beside `name` that cannot be guessed in advance.
fn partial_name(name: &str) -> String {
    format!("{PARTIAL_PREFIX}{name}-{}", crate::unique::random_hex(8))
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

struct LocalWriter {
    file: Option<fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
    size: u64,
    /// Set once the rename has put the object in place; until then, dropping the writer
    /// (an abort, a failed commit, or a stop request dropping the future) removes `tmp`.
    committed: bool,
}

impl AsyncWrite for LocalWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let file = this.file.as_mut().ok_or_else(|| io::Error::other("object already closed"))?;
        let poll = Pin::new(file).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.size += *n as u64;
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.file.as_mut() {
            Some(f) => Pin::new(f).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.file.as_mut() {
            Some(f) => Pin::new(f).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Not committed: leave nothing behind.
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn commit(mut self: Box<Self>) -> anyhow::Result<u64> {
        let file = self.file.take().context("object already closed")?;
        // Durable before visible: the rename must not expose a file whose data is lost
        // in a crash.
        file.sync_all().await.with_context(|| format!("syncing {}", self.tmp.display()))?;
        drop(file);
        // Synchronous, like the open in `create`: a rename left running on the blocking pool
        // after a stop request dropped this future could publish an object nobody records.
        std::fs::rename(&self.tmp, &self.dest).with_context(|| format!("renaming {} into place", self.dest.display()))?;
        self.committed = true;
        Ok(self.size)
    }

    async fn abort(self: Box<Self>) {
        // Dropping removes the temporary file.
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn check_writable(&self, prefix: &str) -> anyhow::Result<()> {
        let dir = self.path(prefix.trim_end_matches('/'))?;
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            _ => check_own_dir(&dir),
        }
    }

    async fn create(&self, key: &str) -> anyhow::Result<Box<dyn ObjectWriter>> {
        let dest = self.path(key)?;
        // Synchronous on purpose, like the open: an async mkdir or open runs on the blocking
        // pool, and if this future is dropped (a stop request) while it is in flight the
        // directory or file would appear after its owner is gone and stay behind.
        // private_parent vetted every directory on the way; the object's own name is left.
        let dir = private_parent(&self.root, &dest)?;
        refuse_symlink(&dest)?;
        let name = dest.file_name().context("key without a name")?.to_string_lossy();
        let tmp = dir.join(partial_name(&name));
        let file = create_new_file(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Box::new(LocalWriter { file: Some(fs::File::from_std(file)), tmp, dest, size: 0, committed: false }))
    }

    async fn put_if_absent(&self, key: &str, data: &[u8]) -> anyhow::Result<bool> {
        // Written whole under a name of its own, then hard-linked to the key: link(2) fails
        // if the key exists, so of two writers exactly one succeeds.
        let dest = self.path(key)?;
        let dir = private_parent(&self.root, &dest)?;
        let tmp = dir.join(partial_name("put"));
        let result = (|| {
            use std::io::Write;
            let mut f = create_new_file(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            match std::fs::hard_link(&tmp, &dest) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        result.with_context(|| format!("creating {}", dest.display()))
    }

    async fn open(&self, key: &str) -> anyhow::Result<Box<dyn AsyncRead + Unpin + Send>> {
        let path = self.path(key)?;
        refuse_symlinks(&self.root, &path)?;
        let mut opts = fs::OpenOptions::new();
        opts.read(true);
        #[cfg(unix)]
        opts.custom_flags(libc::O_NOFOLLOW);
        match opts.open(&path).await {
            Ok(f) => Ok(Box::new(tokio::io::BufReader::with_capacity(256 * 1024, f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(NotFound { key: key.to_string(), store: self.describe() }.into())
            }
            Err(e) => Err(anyhow::Error::from(e).context(format!("opening {}", path.display()))),
        }
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, key_prefix)) = stack.pop() {
            let mut entries = match fs::read_dir(&dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(anyhow::Error::from(e).context(format!("listing {}", dir.display()))),
            };
            while let Some(entry) = entries.next_entry().await? {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(PARTIAL_PREFIX) {
                    continue;
                }
                let key = format!("{key_prefix}{name}");
                let meta = entry.metadata().await?;
                if meta.is_dir() {
                    // Only descend where keys under this directory could match the prefix.
                    let sub = format!("{key}/");
                    if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                        stack.push((entry.path(), sub));
                    }
                } else if meta.is_file() && key.starts_with(prefix) {
                    out.push(ObjectInfo { key, size: meta.len() });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path).await {
            // Not there (a writer that never committed): its directories may still be
            // empty ones this store made for it.
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::Error::from(e).context(format!("deleting {}", path.display()))),
        }
        // Remove directories the delete emptied, up to the root, so a pruned artifact
        // leaves no empty directory behind.
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || fs::remove_dir(&d).await.is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }
}

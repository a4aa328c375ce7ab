//! Codecs on the artifact stream: compression (`zstd`, `gzip`, `none`) and encryption
//! (`age`, to X25519 recipients), as stream layers with bounded memory.
//!
//! ```text
//! backup:  tar stream -> compress -> encrypt -> store object   <job>.tar[.zst|.gz][.age]
//! restore: store object -> decrypt -> decompress -> tar stream
//! ```
//!
//! The stored bytes are exactly what the standard tools produce and read, so an operator
//! can restore by hand: `age -d -i key.txt web-0-nginx.tar.zst.age | zstd -d | tar -x`.
//! The codec of an artifact is recorded in its `lockstep.json`; `metadata` keeps bbr's
//! checksums of the uncompressed tar entries, so a fetched artifact is a plain bbr one.

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How tar streams are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    /// zstd at `level` (1-19; 3 is zstd's default), multithreaded.
    Zstd { level: i32 },
    /// gzip at `level` (1-9).
    Gzip { level: u32 },
}

impl Compression {
    pub const ZSTD: Compression = Compression::Zstd { level: 3 };
    pub const GZIP: Compression = Compression::Gzip { level: 6 };

    /// The name recorded in `lockstep.json`: `none`, `zstd` or `gzip`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd { .. } => "zstd",
            Compression::Gzip { .. } => "gzip",
        }
    }

    /// Suffix after `.tar`: `""`, `.zst`, `.gz`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd { .. } => ".zst",
            Compression::Gzip { .. } => ".gz",
        }
    }

    /// Reads a name recorded in `lockstep.json` (levels do not matter for decoding).
    pub fn from_name(name: &str) -> anyhow::Result<Compression> {
        match name {
            "none" | "" => Ok(Compression::None),
            "zstd" => Ok(Compression::ZSTD),
            "gzip" => Ok(Compression::GZIP),
            other => bail!("unknown compression {other:?} in lockstep.json: upgrade lockstep"),
        }
    }
}

/// `zstd`, `zstd:LEVEL`, `gzip`, `gzip:LEVEL`, `none`.
impl FromStr for Compression {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l.parse::<i64>().map_err(|_| anyhow!("compression {s:?}: level must be a number"))?)),
            None => (s, None),
        };
        match (name, level) {
            ("none", None) => Ok(Compression::None),
            ("zstd", None) => Ok(Compression::ZSTD),
            ("zstd", Some(l)) if (1..=19).contains(&l) => Ok(Compression::Zstd { level: l as i32 }),
            ("gzip", None) => Ok(Compression::GZIP),
            ("gzip", Some(l)) if (1..=9).contains(&l) => Ok(Compression::Gzip { level: l as u32 }),
            ("zstd", Some(_)) => bail!("compression {s:?}: zstd levels are 1 to 19"),
            ("gzip", Some(_)) => bail!("compression {s:?}: gzip levels are 1 to 9"),
            _ => bail!("compression {s:?} is not one of zstd, zstd:LEVEL, gzip, gzip:LEVEL, none"),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => write!(f, "none"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
            Compression::Gzip { level } => write!(f, "gzip:{level}"),
        }
    }
}

/// What happens to each tar stream on its way into the store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Codec {
    pub compression: Compression,
    /// age X25519 recipients (`age1...`); empty: not encrypted.
    pub recipients: Vec<String>,
}

/// How an artifact was encrypted, as `lockstep.json` records it. Recipients are public
/// keys: they tell an operator which identity opens the artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// Always `age`.
    pub scheme: String,
    pub recipients: Vec<String>,
}

impl Codec {
    pub fn plain() -> Codec {
        Codec::default()
    }

    pub fn encrypted(&self) -> bool {
        !self.recipients.is_empty()
    }

    pub fn is_plain(&self) -> bool {
        self.compression == Compression::None && !self.encrypted()
    }

    /// `.zst.age`: what follows `.tar` in a stored object's name.
    pub fn suffix(&self) -> String {
        format!("{}{}", self.compression.suffix(), if self.encrypted() { ".age" } else { "" })
    }

    /// The stored name of a file named `name` in bbr's layout (`web-0-nginx.tar`).
    pub fn stored_name(&self, name: &str) -> String {
        format!("{name}{}", self.suffix())
    }

    pub fn encryption_info(&self) -> Option<EncryptionInfo> {
        self.encrypted().then(|| EncryptionInfo { scheme: "age".into(), recipients: self.recipients.clone() })
    }

    /// The codec `lockstep.json` records.
    pub fn from_recorded(compression: &str, encryption: Option<&EncryptionInfo>) -> anyhow::Result<Codec> {
        let recipients = match encryption {
            None => Vec::new(),
            Some(e) if e.scheme == "age" => e.recipients.clone(),
            Some(e) => bail!("unknown encryption scheme {:?} in lockstep.json: upgrade lockstep", e.scheme),
        };
        if encryption.is_some() && recipients.is_empty() {
            bail!("lockstep.json says the artifact is encrypted but names no recipient");
        }
        Ok(Codec { compression: Compression::from_name(compression)?, recipients })
    }
}

/// Reads `--encrypt-to` values: an `age1...` recipient, or a file of them (one per line,
/// `#` comments), as `age -R` takes. Returns the recipients, checked.
pub fn parse_recipients(specs: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for spec in specs {
        let spec = spec.trim();
        let lines: Vec<String> = if spec.starts_with("age1") {
            vec![spec.to_string()]
        } else {
            let text = std::fs::read_to_string(spec).with_context(|| {
                format!("--encrypt-to {spec:?} is neither an age recipient (age1...) nor a readable file of recipients")
            })?;
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
        };
        if lines.is_empty() {
            bail!("--encrypt-to {spec:?}: the file names no recipient");
        }
        for r in lines {
            if r.starts_with("AGE-SECRET-KEY-") {
                bail!("--encrypt-to {spec:?} holds a secret key, not a recipient: give its public key (age-keygen -y)");
            }
            age::x25519::Recipient::from_str(&r)
                .map_err(|e| anyhow!("--encrypt-to {spec:?}: {r:?} is not an age X25519 recipient (age1...): {e}"))?;
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// age identities (X25519 secret keys) for decryption. `Debug` never shows them.
#[derive(Clone, Default)]
pub struct Identities(Arc<Vec<age::x25519::Identity>>);

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({} redacted)", self.0.len())
    }
}

impl Identities {
    pub fn none() -> Identities {
        Identities::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses identity files as `age-keygen` writes them (`AGE-SECRET-KEY-1...` lines,
    /// `#` comments). Errors never quote the file's content.
    pub fn from_files(paths: &[std::path::PathBuf]) -> anyhow::Result<Identities> {
        let mut ids = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading the identity file {}", path.display()))?;
            ids.extend(parse_identities(&text, &path.display().to_string())?);
        }
        Ok(Identities(Arc::new(ids)))
    }

    /// Parses identities given as text (the Concourse resource's `encryption.identity`);
    /// `source` names where they came from in errors, which never quote the text.
    pub fn from_text(text: &str, source: &str) -> anyhow::Result<Identities> {
        Ok(Identities(Arc::new(parse_identities(text, source)?)))
    }

    pub fn from_identities(ids: Vec<age::x25519::Identity>) -> Identities {
        Identities(Arc::new(ids))
    }

    /// The recipients these identities decrypt for.
    pub fn recipients(&self) -> Vec<String> {
        self.0.iter().map(|i| i.to_public().to_string()).collect()
    }
}

fn parse_identities(text: &str, source: &str) -> anyhow::Result<Vec<age::x25519::Identity>> {
    let mut ids = Vec::new();
    for (n, line) in text.lines().map(str::trim).enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let id = age::x25519::Identity::from_str(line).map_err(|_| {
            anyhow!(
                "{source} line {}: not an age X25519 identity (AGE-SECRET-KEY-1...); passphrase, SSH and plugin identities are not supported",
                n + 1
            )
        })?;
        ids.push(id);
    }
    if ids.is_empty() {
        bail!("{source} holds no age identity (AGE-SECRET-KEY-1...)");
    }
    Ok(ids)
}

fn age_error(e: age::DecryptError, recipients: &[String]) -> io::Error {
    let msg = match e {
        age::DecryptError::NoMatchingKeys => format!(
            "wrong age identity: none of the identities given can decrypt this object; it was encrypted to {}",
            if recipients.is_empty() { "other recipients".to_string() } else { recipients.join(", ") }
        ),
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            "not an age-encrypted object (its header is damaged or missing)".to_string()
        }
        other => format!("age decryption failed: {other}"),
    };
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Encrypts a small in-memory object (the manifest) to `recipients`.
pub fn encrypt_bytes(data: &[u8], recipients: &[String]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = age_writer(&mut out, recipients)?;
    w.write_all(data)?;
    w.finish()?;
    Ok(out)
}

/// Decrypts a small in-memory object.
pub fn decrypt_bytes(data: &[u8], ids: &Identities) -> anyhow::Result<Vec<u8>> {
    let d = age::Decryptor::new_buffered(data).map_err(|e| age_error(e, &[]))?;
    let mut r = d.decrypt(ids.0.iter().map(|i| i as &dyn age::Identity)).map_err(|e| age_error(e, &[]))?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

fn age_writer<W: Write>(w: W, recipients: &[String]) -> anyhow::Result<age::stream::StreamWriter<W>> {
    let parsed: Vec<age::x25519::Recipient> = recipients
        .iter()
        .map(|r| age::x25519::Recipient::from_str(r).map_err(|e| anyhow!("{r:?} is not an age recipient: {e}")))
        .collect::<anyhow::Result<_>>()?;
    let enc = age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| anyhow!("age: {e}"))?;
    Ok(enc.wrap_output(w)?)
}

// ---- encoding: a chain of synchronous stages writing into a spool ----

/// Where the last stage writes; the async layer moves its bytes on.
#[derive(Clone, Default)]
struct Spool(Arc<Mutex<Vec<u8>>>);

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

trait Stage: Write + Send {
    /// Ends the stream of this stage and of every stage after it.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

impl Stage for Spool {
    fn finish(self: Box<Self>) -> io::Result<()> {
        Ok(())
    }
}

macro_rules! stage {
    ($name:ident, $inner:ty) => {
        struct $name($inner);
        impl Write for $name {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.0.flush()
            }
        }
    };
}
stage!(ZstdStage, zstd::stream::write::Encoder<'static, Box<dyn Stage>>);
stage!(GzStage, flate2::write::GzEncoder<Box<dyn Stage>>);
stage!(AgeStage, age::stream::StreamWriter<Box<dyn Stage>>);

impl Stage for ZstdStage {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.finish()
    }
}
impl Stage for GzStage {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.finish()
    }
}
impl Stage for AgeStage {
    fn finish(self: Box<Self>) -> io::Result<()> {
        // Without finish() the last chunk and its MAC are never written.
        self.0.finish()?.finish()
    }
}

/// Largest input compressed per write call: bounds the spool.
const MAX_INPUT: usize = 1024 * 1024;

/// Worker threads for each of `at_once` zstd streams: the cores shared among them, at most
/// 8. One means zstd's own single-threaded mode.
fn zstd_workers(at_once: usize) -> u32 {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / at_once.max(1)).clamp(1, 8) as u32
}

/// An [`AsyncWrite`] that encodes what is written through it into `inner`.
pub struct Encoder<W> {
    inner: W,
    stage: Option<Box<dyn Stage>>,
    spool: Spool,
    pending: Vec<u8>,
    pos: usize,
    passthrough: bool,
    /// Bytes accepted (before encoding).
    bytes_in: u64,
}

impl<W: AsyncWrite + Unpin> Encoder<W> {
    /// An encoder that may use every core.
    pub fn new(inner: W, codec: &Codec) -> anyhow::Result<Self> {
        Self::sharing(inner, codec, 1)
    }

    /// One of `at_once` encoders running together (a backup's parallel drains): zstd's
    /// worker threads are the cores shared among them. Parallel streams already keep the
    /// cores busy; more threads would only add zstd's per-worker buffers (about 20 MiB per
    /// stream with two workers: three streams' worth was half of a backup's peak RSS).
    pub fn sharing(inner: W, codec: &Codec, at_once: usize) -> anyhow::Result<Self> {
        let spool = Spool::default();
        let mut stage: Box<dyn Stage> = Box::new(spool.clone());
        if codec.encrypted() {
            stage = Box::new(AgeStage(age_writer(stage, &codec.recipients)?));
        }
        match codec.compression {
            Compression::None => {}
            Compression::Zstd { level } => {
                let mut z = zstd::stream::write::Encoder::new(stage, level).context("starting zstd")?;
                z.include_checksum(true).context("zstd checksum")?;
                let workers = zstd_workers(at_once);
                if workers > 1 {
                    z.multithread(workers).context("starting zstd worker threads")?;
                    // Jobs of 2 MiB instead of 4 windows (8 MiB at level 3): each worker's
                    // buffers stay small, so parallel streams stay within the memory bound.
                    z.set_parameter(zstd::stream::raw::CParameter::JobSize(2 * 1024 * 1024)).context("zstd job size")?;
                }
                stage = Box::new(ZstdStage(z));
            }
            Compression::Gzip { level } => {
                stage = Box::new(GzStage(flate2::write::GzEncoder::new(stage, flate2::Compression::new(level))));
            }
        }
        let passthrough = codec.is_plain();
        Ok(Encoder {
            inner,
            stage: if passthrough { None } else { Some(stage) },
            spool,
            pending: Vec::new(),
            pos: 0,
            passthrough,
            bytes_in: 0,
        })
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    fn poll_drain(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.pos == self.pending.len() {
                self.pending.clear();
                self.pos = 0;
                let mut spooled = self.spool.0.lock().unwrap();
                if spooled.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                std::mem::swap(&mut *spooled, &mut self.pending);
                continue;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Encoder<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.passthrough {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
            this.bytes_in += n as u64;
            return Poll::Ready(Ok(n));
        }
        ready!(this.poll_drain(cx))?;
        let stage = this.stage.as_mut().ok_or_else(|| io::Error::other("write after shutdown"))?;
        let chunk = &buf[..buf.len().min(MAX_INPUT)];
        stage.write_all(chunk)?;
        this.bytes_in += chunk.len() as u64;
        // Start moving the output on; what cannot be written now waits for the next call.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(chunk.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(stage) = this.stage.take() {
            stage.finish()?;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

// ---- decoding: synchronous decoders on a blocking thread ----

pub type BoxReader = Box<dyn AsyncRead + Unpin + Send>;

/// A reader of the decoded stream; errors of the decoding thread surface on read.
struct Decoded {
    rx: tokio::io::DuplexStream,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl AsyncRead for Decoded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.rx).poll_read(cx, buf))?;
        if buf.filled().len() > before || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // End of the decoded stream: was it complete?
        match self.task.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(task) => {
                let r = ready!(Pin::new(task).poll(cx));
                self.task = None;
                match r {
                    Ok(Ok(())) => Poll::Ready(Ok(())),
                    Ok(Err(e)) => Poll::Ready(Err(e)),
                    Err(join) => Poll::Ready(Err(io::Error::other(format!("decoding thread failed: {join}")))),
                }
            }
        }
    }
}


/// Wraps a stored object's reader so it yields the plain tar stream. An encrypted codec
/// needs identities; a wrong identity, a damaged object or a truncated one is a read error
/// that says so.
pub fn decoder(reader: BoxReader, codec: &Codec, ids: &Identities) -> anyhow::Result<BoxReader> {
    if codec.is_plain() {
        return Ok(reader);
    }
    if codec.encrypted() && ids.is_empty() {
        bail!(
            "the artifact is encrypted (age, to {}): give --identity FILE with the matching age identity",
            codec.recipients.join(", ")
        );
    }
    let (tx, rx) = tokio::io::duplex(1024 * 1024);
    let input = tokio_util::io::SyncIoBridge::new(reader);
    let mut output = tokio_util::io::SyncIoBridge::new(tx);
    let codec = codec.clone();
    let ids = ids.clone();
    let task = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut src: Box<dyn Read> = Box::new(io::BufReader::with_capacity(256 * 1024, input));
        if codec.encrypted() {
            let d = age::Decryptor::new_buffered(io::BufReader::new(src)).map_err(|e| age_error(e, &codec.recipients))?;
            let r = d.decrypt(ids.0.iter().map(|i| i as &dyn age::Identity)).map_err(|e| age_error(e, &codec.recipients))?;
            src = Box::new(r);
        }
        src = match codec.compression {
            Compression::None => src,
            Compression::Zstd { .. } => Box::new(zstd::stream::read::Decoder::new(src).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
            })?),
            Compression::Gzip { .. } => Box::new(flate2::read::MultiGzDecoder::new(src)),
        };
        let what = codec.compression.name();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let msg = e.to_string();
                    // Decoders report damage tersely: say what it means.
                    let explained = if msg.contains("age") || msg.contains("wrong age identity") {
                        msg
                    } else if codec.encrypted() && (msg.contains("decrypt") || msg.contains("MAC") || msg.contains("chunk")) {
                        format!("the encrypted object is damaged or truncated (age: {msg})")
                    } else {
                        format!("the {what}-compressed object is damaged or truncated ({msg})")
                    };
                    return Err(io::Error::new(e.kind(), explained));
                }
            };
            output.write_all(&buf[..n])?;
        }
        output.flush()?;
        output.shutdown()?;
        Ok(())
    });
    Ok(Box::new(Decoded { rx, task: Some(task) }))
}

/// Counts bytes written through it and reports the running total (progress on the
/// uncompressed stream, which is what the instance's size estimate measures).
pub struct Counting<W> {
    inner: W,
    bytes: u64,
    progress: Option<crate::store::metered::Progress>,
}

impl<W> Counting<W> {
    pub fn new(inner: W, progress: Option<crate::store::metered::Progress>) -> Self {
        Counting { inner, bytes: 0, progress }
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.bytes += n as u64;
        if let Some(p) = this.progress.as_mut() {
            p(this.bytes);
        }
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn data() -> Vec<u8> {
        // Compressible but not trivially: a repeating text with a counter.
        (0..200_000u32).flat_map(|i| format!("line {i} of the tar stream {}\n", i % 97).into_bytes()).collect()
    }

    async fn encode(codec: &Codec, input: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new(), codec).unwrap();
        // Odd-sized writes exercise the spool.
        for chunk in input.chunks(100_003) {
            e.write_all(chunk).await.unwrap();
        }
        e.shutdown().await.unwrap();
        assert_eq!(e.bytes_in(), input.len() as u64);
        e.into_inner()
    }

    async fn decode(codec: &Codec, stored: Vec<u8>, ids: &Identities) -> io::Result<Vec<u8>> {
        let mut r = decoder(Box::new(std::io::Cursor::new(stored)), codec, ids).map_err(io::Error::other)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    }

    fn keypair() -> (Identities, String) {
        let id = age::x25519::Identity::generate();
        let r = id.to_public().to_string();
        (Identities::from_identities(vec![id]), r)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_codec_round_trips_and_names_its_files() {
        let input = data();
        let (ids, recipient) = keypair();
        for compression in [Compression::None, Compression::ZSTD, Compression::GZIP, Compression::Zstd { level: 1 }] {
            for encrypted in [false, true] {
                let codec = Codec { compression, recipients: if encrypted { vec![recipient.clone()] } else { vec![] } };
                let stored = encode(&codec, &input).await;
                if compression != Compression::None {
                    assert!(stored.len() < input.len() / 3, "{codec:?} compressed {} to {}", input.len(), stored.len());
                }
                if encrypted {
                    assert!(stored.starts_with(b"age-encryption.org/v1"));
                }
                assert_eq!(decode(&codec, stored, &ids).await.unwrap(), input, "{codec:?}");
            }
        }
        let codec = Codec { compression: Compression::ZSTD, recipients: vec![recipient] };
        assert_eq!(codec.stored_name("web-0-nginx.tar"), "web-0-nginx.tar.zst.age");
        assert_eq!(Codec::plain().stored_name("a.tar"), "a.tar");
        assert_eq!(Codec { compression: Compression::GZIP, recipients: vec![] }.suffix(), ".gz");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn empty_streams_round_trip() {
        let (ids, recipient) = keypair();
        let codec = Codec { compression: Compression::ZSTD, recipients: vec![recipient] };
        let stored = encode(&codec, b"").await;
        assert!(!stored.is_empty());
        assert_eq!(decode(&codec, stored, &ids).await.unwrap(), b"");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damage_and_wrong_keys_are_clear_errors() {
        let input = data();
        let (ids, recipient) = keypair();
        let (wrong, _) = keypair();
        let enc = Codec { compression: Compression::ZSTD, recipients: vec![recipient.clone()] };
        let stored = encode(&enc, &input).await;

        let e = decode(&enc, stored.clone(), &wrong).await.unwrap_err().to_string();
        assert!(e.contains("wrong age identity") && e.contains(&recipient), "{e}");
        let e = decoder(Box::new(std::io::Cursor::new(stored.clone())), &enc, &Identities::none()).err().unwrap().to_string();
        assert!(e.contains("--identity"), "{e}");

        let mut flipped = stored.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        let e = decode(&enc, flipped, &ids).await.unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        let e = decode(&enc, stored[..stored.len() - 100].to_vec(), &ids).await.unwrap_err().to_string();
        assert!(e.contains("damaged or truncated") || e.contains("age"), "{e}");

        // zstd alone: the frame checksum catches a flipped bit, a cut stream is an error.
        let z = Codec { compression: Compression::ZSTD, recipients: vec![] };
        let stored = encode(&z, &input).await;
        let mut flipped = stored.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x01;
        assert!(decode(&z, flipped, &ids).await.is_err());
        let e = decode(&z, stored[..stored.len() / 2].to_vec(), &ids).await.unwrap_err().to_string();
        assert!(e.contains("zstd-compressed object is damaged or truncated"), "{e}");
        let g = Codec { compression: Compression::GZIP, recipients: vec![] };
        let stored = encode(&g, &input).await;
        assert!(decode(&g, stored[..stored.len() / 2].to_vec(), &ids).await.is_err());
    }

    #[test]
    fn parallel_streams_share_the_cores_for_zstd_workers() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert_eq!(zstd_workers(1), cores.clamp(1, 8) as u32);
        assert_eq!(zstd_workers(0), zstd_workers(1), "no stream count: as for one");
        assert_eq!(zstd_workers(cores + 1), 1, "more streams than cores: single-threaded zstd");
        assert_eq!(zstd_workers(2), (cores / 2).clamp(1, 8) as u32);
    }

    #[test]
    fn parses_options_recipients_and_identities() {
        assert_eq!("zstd".parse::<Compression>().unwrap(), Compression::ZSTD);
        assert_eq!("zstd:19".parse::<Compression>().unwrap(), Compression::Zstd { level: 19 });
        assert_eq!("gzip:1".parse::<Compression>().unwrap(), Compression::Gzip { level: 1 });
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        assert!("zstd:25".parse::<Compression>().is_err());
        assert!("lz4".parse::<Compression>().unwrap_err().to_string().contains("zstd, zstd:LEVEL"));

        let dir = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        let secret = {
            use age::secrecy::ExposeSecret;
            id.to_string().expose_secret().to_string()
        };
        let public = id.to_public().to_string();
        let key = dir.path().join("key.txt");
        std::fs::write(&key, format!("# created: now\n# public key: {public}\n{secret}\n")).unwrap();
        let ids = Identities::from_files(std::slice::from_ref(&key)).unwrap();
        assert_eq!(ids.recipients(), vec![public.clone()]);
        assert!(!format!("{ids:?}").contains("AGE-SECRET"));

        let rfile = dir.path().join("recipients.txt");
        std::fs::write(&rfile, format!("# ops team\n{public}\n\n")).unwrap();
        assert_eq!(parse_recipients(&[rfile.to_string_lossy().into()]).unwrap(), vec![public.clone()]);
        assert_eq!(parse_recipients(&[public.clone(), public.clone()]).unwrap().len(), 1);
        let e = parse_recipients(&[key.to_string_lossy().into()]).unwrap_err().to_string();
        assert!(e.contains("secret key") && !e.contains(&secret[20..]), "{e}");
        assert!(parse_recipients(&["age1nope".into()]).is_err());
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
        let e = Identities::from_files(&[bad]).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("NOTAKEY"), "{e}");

        let sealed = encrypt_bytes(b"manifest: secrets", &[public]).unwrap();
        assert_eq!(decrypt_bytes(&sealed, &ids).unwrap(), b"manifest: secrets");
    }
}

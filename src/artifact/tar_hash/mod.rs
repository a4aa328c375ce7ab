//! On-the-fly checksums of tar streams, in the form bbr's `metadata` records.
//!
//! An artifact leaves an instance as the stdout of `tar -C DIR -c .` and is
//! checksummed while its bytes pass through, never read a second time. The
//! result maps every path that `find . -type f` would list on the instance
//! (e.g. `./redis-server/dump.rdb`) to the lowercase hex sha256 of its content,
//! so it can be compared with the checksum the instance computes itself.
//!
//! The parser is an incremental state machine ([`TarHasher`]) that accepts the
//! stream in chunks of any size. Memory stays bounded: file content is hashed
//! as it passes and never buffered; only one 512-byte header block and the
//! payload of extended headers (GNU long names, PAX records, capped at
//! [`MAX_EXTENDED_HEADER`]) are held, plus the resulting map.
//!
//! It is deliberately strict: anything it cannot hash exactly the way
//! `find -type f` + sha256 would (sparse files, unknown entry types carrying
//! data, unsafe paths, truncation, bad header checksums) is an error rather
//! than a silently wrong checksum. A truncated artifact must never verify.

mod error;
mod header;
mod stream;
#[cfg(test)]
mod tests;

pub use error::TarHashError;
pub use stream::{hash_tar, HashingReader, HashingWriter};
use header::*;

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

/// Path inside the archive (always starting with `./`) -> lowercase hex sha256.
pub type Checksums = BTreeMap<String, String>;

/// Largest payload accepted for a GNU long name/link or PAX extended header.
/// Real ones are a few hundred bytes; the cap keeps a corrupt or hostile
/// stream from making us buffer an arbitrary amount.
pub const MAX_EXTENDED_HEADER: u64 = 1024 * 1024;

/// Where the bytes of the current entry's data go.
enum Sink {
    /// A regular file: content hashed (unless the hasher only checks structure), recorded
    /// under `key` once complete.
    File { key: String, hasher: Option<Sha256> },
    /// Data nobody needs (directory payloads, PAX globals, hard-link payloads).
    Skip,
    /// Extended-header payload, buffered (bounded) and parsed once complete.
    Collect { kind: MetaKind, buf: Vec<u8> },
}

impl Sink {
    fn feed(&mut self, data: &[u8]) {
        match self {
            Sink::File { hasher: Some(hasher), .. } => hasher.update(data),
            Sink::File { hasher: None, .. } | Sink::Skip => {}
            Sink::Collect { buf, .. } => buf.extend_from_slice(data),
        }
    }
}

#[derive(Clone, Copy)]
enum MetaKind {
    /// GNU 'L': name of the next entry.
    LongName,
    /// GNU 'K': link name of the next entry.
    LongLink,
    /// PAX 'x': records for the next entry.
    Pax,
}

enum State {
    /// Collecting the next 512-byte header block.
    Header,
    /// Inside an entry's data: `remaining` bytes of data, then `padding`.
    Data {
        remaining: u64,
        padding: u64,
        sink: Sink,
    },
    /// Inside the zero padding that rounds data up to a block.
    Padding { remaining: u64 },
    /// Two zero blocks seen; whatever follows (record padding) is ignored.
    End,
    /// An error occurred; it is reported again on every later call.
    Failed(TarHashError),
}

/// Attributes announced by extended headers for the next real entry.
#[derive(Default)]
struct Pending {
    /// Header offset of the first pending extended header (for errors).
    offset: Option<u64>,
    gnu_long_name: Option<String>,
    gnu_long_link: Option<String>,
    pax_path: Option<String>,
    pax_linkpath: Option<String>,
    pax_size: Option<u64>,
    /// A `GNU.sparse.*` PAX record was seen: the data is a sparse map, not
    /// the file content, so it cannot be hashed as-is.
    pax_sparse: bool,
}

/// The checksum key and size of the regular file the first header of an archive describes:
/// what a one-entry tar (an export, `artifact::tar_write`) holds, known before its data
/// arrives. Anything else there (another entry type, a bad checksum) is an error.
pub fn file_entry(h: &[u8; BLOCK]) -> Result<(String, u64), TarHashError> {
    verify_checksum(h, 0)?;
    if !matches!(h[TYPEFLAG], b'0' | 0) {
        return Err(TarHashError::InvalidHeader { offset: 0, reason: format!("not a regular file (type {:?})", h[TYPEFLAG] as char) });
    }
    let size = parse_numeric(&h[SIZE]).map_err(|reason| TarHashError::InvalidHeader { offset: 0, reason: format!("size field: {reason}") })?;
    Ok((normalize(&header_name(h), 0)?, size))
}

/// Incremental tar parser that computes [`Checksums`] as bytes pass.
///
/// Feed the stream with [`update`](Self::update) in chunks of any size
/// (including one byte at a time), then call [`finish`](Self::finish), which
/// fails unless a complete archive (ending in its end-of-archive marker) was
/// seen.
pub struct TarHasher {
    state: State,
    header: [u8; BLOCK],
    header_fill: usize,
    /// Bytes consumed so far (including ignored bytes after the end marker).
    offset: u64,
    /// Offset of a zero block that may be the first half of the end marker.
    zero_block_at: Option<u64>,
    pending: Pending,
    /// Header offset and name of the current entry, for error messages.
    entry_offset: u64,
    entry_name: String,
    checksums: Checksums,
    /// Keys of symlinks, devices and FIFOs. A hard link to one of those is not
    /// a regular file either, so it must not be an error nor get a checksum.
    non_regular: BTreeSet<String>,
    /// Whether file contents are hashed ([`TarHasher::structure_only`] does not).
    hash_contents: bool,
}

impl Default for TarHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl TarHasher {
    pub fn new() -> Self {
        TarHasher {
            state: State::Header,
            header: [0; BLOCK],
            header_fill: 0,
            offset: 0,
            zero_block_at: None,
            pending: Pending::default(),
            entry_offset: 0,
            entry_name: String::new(),
            checksums: Checksums::new(),
            non_regular: BTreeSet::new(),
            hash_contents: true,
        }
    }

    /// Checks the stream as [`new`](Self::new) does (headers, names, completeness)
    /// without hashing file contents: [`finish`](Self::finish) lists every file with an
    /// empty checksum. For a stream whose every byte another hash already covers, where a
    /// per-file SHA-256 pass would only cost CPU.
    pub fn structure_only() -> Self {
        TarHasher { hash_contents: false, ..Self::new() }
    }

    /// Total number of bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.offset
    }

    /// Feeds the next bytes of the stream. After an error the hasher is
    /// poisoned: every later call returns the same error again.
    pub fn update(&mut self, data: &[u8]) -> Result<(), TarHashError> {
        if let State::Failed(e) = &self.state {
            return Err(e.duplicate());
        }
        self.consume(data).map_err(|e| {
            let ret = e.duplicate();
            self.state = State::Failed(e);
            ret
        })
    }

    /// The checksums of all regular files (and hard links to them), provided
    /// the stream was a complete archive.
    pub fn finish(self) -> Result<Checksums, TarHashError> {
        let offset = self.offset;
        match self.state {
            State::Failed(e) => Err(e),
            State::End => Ok(self.checksums),
            _ if offset == 0 => Err(TarHashError::Empty),
            State::Header if self.header_fill > 0 => Err(TarHashError::TruncatedHeader {
                offset,
                header_offset: offset - self.header_fill as u64,
            }),
            // Also covers a stream ending after only one of the two zero
            // blocks: cutting a stream at a block boundary must never verify.
            State::Header => Err(TarHashError::MissingEndMarker { offset }),
            State::Data {
                remaining, padding, ..
            } => Err(TarHashError::TruncatedData {
                offset,
                header_offset: self.entry_offset,
                name: self.entry_name,
                missing: remaining + padding,
            }),
            State::Padding { remaining } => Err(TarHashError::TruncatedData {
                offset,
                header_offset: self.entry_offset,
                name: self.entry_name,
                missing: remaining,
            }),
        }
    }

    /// The error that poisoned this hasher, if any.
    pub fn failure(&self) -> Option<TarHashError> {
        match &self.state {
            State::Failed(e) => Some(e.duplicate()),
            _ => None,
        }
    }

    fn consume(&mut self, mut data: &[u8]) -> Result<(), TarHashError> {
        while !data.is_empty() {
            // Take as much of `data` as the current state wants...
            let n = match &mut self.state {
                State::Header => {
                    let n = (BLOCK - self.header_fill).min(data.len());
                    self.header[self.header_fill..self.header_fill + n].copy_from_slice(&data[..n]);
                    self.header_fill += n;
                    n
                }
                State::Data {
                    remaining, sink, ..
                } => {
                    let n = usize::try_from(*remaining).map_or(data.len(), |r| r.min(data.len()));
                    sink.feed(&data[..n]);
                    *remaining -= n as u64;
                    n
                }
                State::Padding { remaining } => {
                    // Padding content is not checked: tar readers ignore it.
                    let n = usize::try_from(*remaining).map_or(data.len(), |r| r.min(data.len()));
                    *remaining -= n as u64;
                    n
                }
                State::End => data.len(),
                State::Failed(_) => unreachable!("update() does not consume after a failure"),
            };
            self.offset += n as u64;
            data = &data[n..];
            // ...then move on if that completed a header, data or padding.
            self.advance()?;
        }
        Ok(())
    }

    /// Performs every state transition that needs no more input.
    fn advance(&mut self) -> Result<(), TarHashError> {
        loop {
            match &self.state {
                State::Header if self.header_fill == BLOCK => {
                    self.header_fill = 0;
                    self.process_header()?;
                }
                State::Data { remaining: 0, .. } => {
                    let State::Data { padding, sink, .. } =
                        std::mem::replace(&mut self.state, State::Header)
                    else {
                        unreachable!()
                    };
                    self.finish_sink(sink)?;
                    if padding > 0 {
                        self.state = State::Padding { remaining: padding };
                    }
                }
                State::Padding { remaining: 0 } => self.state = State::Header,
                _ => return Ok(()),
            }
        }
    }

    /// Interprets the complete header block in `self.header` and sets up the
    /// state for the entry's data.
    fn process_header(&mut self) -> Result<(), TarHashError> {
        let offset = self.offset - BLOCK as u64;
        let h = &self.header;

        if h.iter().all(|&b| b == 0) {
            if self.zero_block_at.is_none() {
                self.zero_block_at = Some(offset);
                return Ok(());
            }
            if let Some(meta) = self.pending.offset {
                return Err(TarHashError::InvalidHeader {
                    offset: meta,
                    reason: "extended header is not followed by an entry before the end-of-archive marker".into(),
                });
            }
            self.state = State::End;
            return Ok(());
        }
        if let Some(zero) = self.zero_block_at {
            // GNU tar would stop at a lone zero block and drop the rest; for
            // us that is a damaged stream, not an archive to trust.
            return Err(TarHashError::InvalidHeader {
                offset: zero,
                reason: format!("lone zero block followed by a header at byte {offset}"),
            });
        }
        verify_checksum(h, offset)?;

        let typeflag = h[TYPEFLAG];
        let header_size = || {
            parse_numeric(&h[SIZE]).map_err(|reason| TarHashError::InvalidHeader {
                offset,
                reason: format!("size field: {reason}"),
            })
        };

        // Extended headers describe the next entry; buffer (bounded) their data.
        let meta = match typeflag {
            b'L' => Some(MetaKind::LongName),
            b'K' => Some(MetaKind::LongLink),
            b'x' => Some(MetaKind::Pax),
            _ => None,
        };
        if let Some(kind) = meta {
            let size = header_size()?;
            if size > MAX_EXTENDED_HEADER {
                return Err(TarHashError::ExtendedHeaderTooLarge {
                    offset,
                    size,
                    limit: MAX_EXTENDED_HEADER,
                });
            }
            self.pending.offset.get_or_insert(offset);
            self.entry_offset = offset;
            self.entry_name = match kind {
                MetaKind::LongName => "<GNU long name>",
                MetaKind::LongLink => "<GNU long link name>",
                MetaKind::Pax => "<PAX extended header>",
            }
            .into();
            let buf = Vec::with_capacity(size as usize);
            self.begin_data(size, Sink::Collect { kind, buf });
            return Ok(());
        }
        if typeflag == b'g' {
            // PAX global header: its records (comments, defaults for mtime,
            // uname, ...) never change names or sizes in archives tar writes.
            let size = header_size()?;
            self.entry_offset = offset;
            self.entry_name = "<PAX global header>".into();
            self.begin_data(size, Sink::Skip);
            return Ok(());
        }

        // A real entry: it consumes whatever the extended headers announced.
        let pending = std::mem::take(&mut self.pending);
        let raw_name = pending
            .pax_path
            .or(pending.gnu_long_name)
            .unwrap_or_else(|| header_name(h));
        let size = match pending.pax_size {
            Some(size) => size,
            None => header_size()?,
        };
        self.entry_offset = offset;
        self.entry_name = raw_name.clone();

        let unsupported = |description| TarHashError::UnsupportedEntryType {
            offset,
            name: raw_name.clone(),
            typeflag: typeflag as char,
            description,
        };
        if pending.pax_sparse {
            return Err(unsupported("GNU sparse file in PAX format"));
        }

        let sink = match typeflag {
            // Regular files. A trailing slash is the old (pre-POSIX)
            // convention for a directory, which GNU tar honours too.
            b'0' | b'\0' | b'7' if !raw_name.ends_with('/') => {
                let key = normalize(&raw_name, offset)?;
                if key == "." {
                    return Err(TarHashError::InvalidHeader {
                        offset,
                        reason: "regular file entry with an empty name".into(),
                    });
                }
                Sink::File {
                    key,
                    hasher: self.hash_contents.then(Sha256::new),
                }
            }
            // Directories (incl. GNU incremental dumpdirs): not listed by
            // `find -type f`, but their names must still be safe.
            b'0' | b'\0' | b'7' | b'5' | b'D' => {
                normalize(&raw_name, offset)?;
                Sink::Skip
            }
            // Hard link: `find -type f` lists it like any other file, with
            // the content of its target, which tar archived earlier.
            b'1' => {
                let key = normalize(&raw_name, offset)?;
                let raw_target = pending
                    .pax_linkpath
                    .or(pending.gnu_long_link)
                    .unwrap_or_else(|| lossy(cstr(&h[LINKNAME])));
                let target = normalize(&raw_target, offset)?;
                if let Some(sum) = self.checksums.get(&target).cloned() {
                    self.non_regular.remove(&key);
                    self.checksums.insert(key, sum);
                } else if self.non_regular.contains(&target) {
                    self.checksums.remove(&key);
                    self.non_regular.insert(key);
                } else {
                    return Err(TarHashError::HardLinkTargetMissing {
                        offset,
                        name: raw_name,
                        target: raw_target,
                    });
                }
                // Some writers repeat the content; it is the target's anyway.
                Sink::Skip
            }
            // Symlinks, char/block devices, FIFOs: skipped by `find -type f`.
            // (Symlink targets may legitimately be absolute or contain "..";
            // only the entry's own name must be safe.)
            b'2' | b'3' | b'4' | b'6' => {
                let key = normalize(&raw_name, offset)?;
                self.checksums.remove(&key);
                self.non_regular.insert(key);
                Sink::Skip
            }
            // GNU volume label: not a file at all, and its name is no path.
            b'V' => Sink::Skip,
            b'S' => return Err(unsupported("GNU sparse file")),
            b'M' => return Err(unsupported("GNU multi-volume continuation")),
            // Unknown types without data cannot hide content; with data we
            // cannot know what `find -type f` would have seen.
            _ if size == 0 => Sink::Skip,
            _ => return Err(unsupported("unknown entry type carrying data")),
        };
        self.begin_data(size, sink);
        Ok(())
    }

    fn begin_data(&mut self, size: u64, sink: Sink) {
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        // Even an empty entry goes through `Data`: `advance` completes it
        // (and records an empty file's checksum) at once.
        self.state = State::Data {
            remaining: size,
            padding,
            sink,
        };
    }

    /// Called when an entry's data is complete.
    fn finish_sink(&mut self, sink: Sink) -> Result<(), TarHashError> {
        match sink {
            Sink::File { key, hasher } => {
                // Later entries with the same name replace earlier ones, as
                // they would on extraction.
                self.non_regular.remove(&key);
                self.checksums.insert(key, hasher.map(|h| hex::encode(h.finalize())).unwrap_or_default());
            }
            Sink::Skip => {}
            Sink::Collect {
                kind: MetaKind::LongName,
                buf,
            } => self.pending.gnu_long_name = Some(lossy(cstr(&buf))),
            Sink::Collect {
                kind: MetaKind::LongLink,
                buf,
            } => self.pending.gnu_long_link = Some(lossy(cstr(&buf))),
            Sink::Collect {
                kind: MetaKind::Pax,
                buf,
            } => parse_pax(&buf, self.entry_offset, &mut self.pending)?,
        }
        Ok(())
    }
}

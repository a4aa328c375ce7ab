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

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Path inside the archive (always starting with `./`) -> lowercase hex sha256.
pub type Checksums = BTreeMap<String, String>;

/// Largest payload accepted for a GNU long name/link or PAX extended header.
/// Real ones are a few hundred bytes; the cap keeps a corrupt or hostile
/// stream from making us buffer an arbitrary amount.
pub const MAX_EXTENDED_HEADER: u64 = 1024 * 1024;

/// Tar block size: headers are one block, entry data is padded to a multiple.
const BLOCK: usize = 512;

// Byte ranges of the ustar header fields we use.
const NAME: std::ops::Range<usize> = 0..100;
const SIZE: std::ops::Range<usize> = 124..136;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MAGIC: std::ops::Range<usize> = 257..263;
const PREFIX: std::ops::Range<usize> = 345..500;

/// Everything that can go wrong while checksumming a tar stream. Offsets are
/// byte offsets from the start of the stream; "header at byte N" is the start
/// of the 512-byte header block of the entry concerned.
#[derive(Debug, thiserror::Error)]
pub enum TarHashError {
    #[error("empty archive: the stream ended before any byte was received")]
    Empty,

    #[error(
        "truncated archive: stream ended at byte {offset} inside the header block starting at byte {header_offset}"
    )]
    TruncatedHeader { offset: u64, header_offset: u64 },

    #[error(
        "truncated archive: stream ended at byte {offset} inside entry {name:?} (header at byte {header_offset}), {missing} more byte(s) of data/padding expected"
    )]
    TruncatedData {
        offset: u64,
        header_offset: u64,
        name: String,
        missing: u64,
    },

    #[error(
        "truncated archive: stream ended at byte {offset} before the end-of-archive marker (two zero blocks)"
    )]
    MissingEndMarker { offset: u64 },

    #[error(
        "bad header checksum in the header block at byte {offset}: the checksum field says {stored}, the header sums to {computed}"
    )]
    BadChecksum {
        offset: u64,
        stored: u64,
        computed: u64,
    },

    #[error("invalid tar header at byte {offset}: {reason}")]
    InvalidHeader { offset: u64, reason: String },

    #[error("unsafe path {name:?} in the entry with header at byte {offset}: {reason}")]
    UnsafePath {
        offset: u64,
        name: String,
        reason: &'static str,
    },

    #[error(
        "unsupported entry type {typeflag:?} ({description}) for entry {name:?} with header at byte {offset}"
    )]
    UnsupportedEntryType {
        offset: u64,
        name: String,
        typeflag: char,
        description: &'static str,
    },

    #[error(
        "extended header at byte {offset} carries {size} bytes, more than the limit of {limit} bytes"
    )]
    ExtendedHeaderTooLarge { offset: u64, size: u64, limit: u64 },

    #[error("invalid PAX extended header at byte {offset}: {reason}")]
    InvalidPax { offset: u64, reason: String },

    #[error(
        "hard link {name:?} (header at byte {offset}) points to {target:?}, which does not appear earlier in the archive"
    )]
    HardLinkTargetMissing {
        offset: u64,
        name: String,
        target: String,
    },

    #[error("I/O error while reading the archive: {0}")]
    Io(#[from] io::Error),
}

impl TarHashError {
    /// A copy of this error, so a failed hasher can keep reporting it.
    /// (`io::Error` is not `Clone`, hence no derive; `Io` is rebuilt from its
    /// kind and message. The hasher itself never produces `Io`.)
    fn duplicate(&self) -> Self {
        use TarHashError::*;
        match self {
            Empty => Empty,
            TruncatedHeader {
                offset,
                header_offset,
            } => TruncatedHeader {
                offset: *offset,
                header_offset: *header_offset,
            },
            TruncatedData {
                offset,
                header_offset,
                name,
                missing,
            } => TruncatedData {
                offset: *offset,
                header_offset: *header_offset,
                name: name.clone(),
                missing: *missing,
            },
            MissingEndMarker { offset } => MissingEndMarker { offset: *offset },
            BadChecksum {
                offset,
                stored,
                computed,
            } => BadChecksum {
                offset: *offset,
                stored: *stored,
                computed: *computed,
            },
            InvalidHeader { offset, reason } => InvalidHeader {
                offset: *offset,
                reason: reason.clone(),
            },
            UnsafePath {
                offset,
                name,
                reason,
            } => UnsafePath {
                offset: *offset,
                name: name.clone(),
                reason,
            },
            UnsupportedEntryType {
                offset,
                name,
                typeflag,
                description,
            } => UnsupportedEntryType {
                offset: *offset,
                name: name.clone(),
                typeflag: *typeflag,
                description,
            },
            ExtendedHeaderTooLarge {
                offset,
                size,
                limit,
            } => ExtendedHeaderTooLarge {
                offset: *offset,
                size: *size,
                limit: *limit,
            },
            InvalidPax { offset, reason } => InvalidPax {
                offset: *offset,
                reason: reason.clone(),
            },
            HardLinkTargetMissing {
                offset,
                name,
                target,
            } => HardLinkTargetMissing {
                offset: *offset,
                name: name.clone(),
                target: target.clone(),
            },
            Io(e) => Io(io::Error::new(e.kind(), e.to_string())),
        }
    }

    /// The error as an `io::Error` of kind `InvalidData`, for the async
    /// adaptors. The original error stays reachable via `get_ref`/`into_inner`.
    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// Where the bytes of the current entry's data go.
enum Sink {
    /// A regular file: content hashed, recorded under `key` once complete.
    File { key: String, hasher: Sha256 },
    /// Data nobody needs (directory payloads, PAX globals, hard-link payloads).
    Skip,
    /// Extended-header payload, buffered (bounded) and parsed once complete.
    Collect { kind: MetaKind, buf: Vec<u8> },
}

impl Sink {
    fn feed(&mut self, data: &[u8]) {
        match self {
            Sink::File { hasher, .. } => hasher.update(data),
            Sink::Skip => {}
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
        }
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
    fn failure(&self) -> Option<TarHashError> {
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
                    hasher: Sha256::new(),
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
                self.checksums.insert(key, hex::encode(hasher.finalize()));
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

/// Checks the header checksum: the sum of all header bytes with the checksum
/// field counted as spaces. Some old tars summed signed chars; accept both.
fn verify_checksum(h: &[u8; BLOCK], offset: u64) -> Result<(), TarHashError> {
    let stored = parse_octal(&h[CHKSUM]).map_err(|reason| TarHashError::InvalidHeader {
        offset,
        reason: format!("checksum field: {reason}"),
    })?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if CHKSUM.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored) == Ok(signed) {
        Ok(())
    } else {
        Err(TarHashError::BadChecksum {
            offset,
            stored,
            computed: unsigned,
        })
    }
}

/// Parses a numeric header field: octal ASCII, or GNU base-256 when the high
/// bit of the first byte is set (used for sizes of 8 GiB and more).
fn parse_numeric(field: &[u8]) -> Result<u64, String> {
    let Some(&first) = field.first() else {
        return Ok(0);
    };
    if first & 0x80 == 0 {
        return parse_octal(field);
    }
    // Base-256 is two's complement big-endian with the top bit as marker;
    // the next bit is then the sign bit.
    if first & 0x40 != 0 {
        return Err("negative base-256 value".into());
    }
    let mut value = u128::from(first & 0x3f);
    for &b in &field[1..] {
        // At most 12 bytes, i.e. 94 value bits: fits in u128.
        value = (value << 8) | u128::from(b);
    }
    u64::try_from(value).map_err(|_| "base-256 value does not fit in 64 bits".to_string())
}

/// Parses octal ASCII, tolerating leading spaces and trailing NUL/space
/// padding. An all-blank field is 0.
fn parse_octal(field: &[u8]) -> Result<u64, String> {
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let digits = &field[start..];
    let end = digits
        .iter()
        .position(|b| !(b'0'..=b'7').contains(b))
        .unwrap_or(digits.len());
    if digits[end..].iter().any(|&b| b != 0 && b != b' ') {
        return Err(format!(
            "not an octal number: {:?}",
            String::from_utf8_lossy(field)
        ));
    }
    digits[..end].iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| "octal value too large".to_string())
    })
}

/// The bytes of a NUL-terminated field (the whole field if it has no NUL).
fn cstr(field: &[u8]) -> &[u8] {
    field
        .iter()
        .position(|&b| b == 0)
        .map_or(field, |end| &field[..end])
}

/// Names are bytes in tar but `String` in [`Checksums`] (and in bbr's YAML
/// metadata). Non-UTF-8 bytes become U+FFFD rather than failing the backup.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The entry name from the header itself: `prefix/name` in POSIX ustar
/// headers. GNU headers ("ustar  \0" magic) use the prefix area for other
/// fields, and v7 headers have none, so only the POSIX magic counts.
fn header_name(h: &[u8; BLOCK]) -> String {
    let name = cstr(&h[NAME]);
    if &h[MAGIC] == b"ustar\0" {
        let prefix = cstr(&h[PREFIX]);
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(name);
            return lossy(&full);
        }
    }
    lossy(name)
}

/// Turns an archive name into a checksum key as `find .` prints it: "./"
/// followed by the components, without empty or "." components and without
/// a trailing slash ("a//b/" -> "./a/b"; the root itself is "."). Absolute
/// names and ".." components would escape the restore directory: rejected.
fn normalize(raw: &str, offset: u64) -> Result<String, TarHashError> {
    let unsafe_path = |reason| TarHashError::UnsafePath {
        offset,
        name: raw.to_string(),
        reason,
    };
    if raw.is_empty() {
        return Err(TarHashError::InvalidHeader {
            offset,
            reason: "entry with an empty name".into(),
        });
    }
    if raw.starts_with('/') {
        return Err(unsafe_path("absolute paths are not allowed"));
    }
    let mut key = String::from(".");
    for component in raw.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(unsafe_path("\"..\" components are not allowed")),
            c => {
                key.push('/');
                key.push_str(c);
            }
        }
    }
    Ok(key)
}

/// Parses PAX records (`"<len> <key>=<value>\n"`, `len` counting the whole
/// record) into `pending`. Only `path`, `linkpath` and `size` matter for
/// checksums; `GNU.sparse.*` marks a sparse file we must refuse.
fn parse_pax(mut data: &[u8], offset: u64, pending: &mut Pending) -> Result<(), TarHashError> {
    let invalid = |reason: String| TarHashError::InvalidPax { offset, reason };
    while !data.is_empty() {
        // Tolerate NUL padding after the last record, as other readers do.
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| invalid("record without a length".into()))?;
        let len = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| invalid("record length is not a decimal number".into()))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(invalid(format!(
                "record length {len} does not match the record"
            )));
        }
        let record = &data[space + 1..len - 1];
        data = &data[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| invalid("record without '='".into()))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        // An empty value deletes the attribute (POSIX), i.e. the header
        // field applies again.
        let text = || (!value.is_empty()).then(|| lossy(value));
        match key {
            b"path" => pending.pax_path = text(),
            b"linkpath" => pending.pax_linkpath = text(),
            b"size" => {
                pending.pax_size = if value.is_empty() {
                    None
                } else {
                    let size = std::str::from_utf8(value)
                        .ok()
                        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| invalid(format!("bad size {:?}", lossy(value))))?;
                    Some(size)
                }
            }
            k if k.starts_with(b"GNU.sparse.") => pending.pax_sparse = true,
            _ => {}
        }
    }
    Ok(())
}

/// [`AsyncWrite`] adaptor: every byte written is checksummed and passed on to
/// `inner` unchanged and in order.
///
/// Bytes are hashed only once `inner` has accepted them, so a short write
/// from `inner` cannot get bytes hashed twice when the caller retries.
/// A parse error fails that `poll_write` (and every later one, without
/// writing further) with an `io::Error` of kind `InvalidData` wrapping the
/// [`TarHashError`]; the bytes of that call have already reached `inner`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: TarHasher,
}

impl<W: AsyncWrite + Unpin> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: TarHasher::new(),
        }
    }

    /// The inner writer and the hasher; call `finish()` on the latter.
    pub fn into_parts(self) -> (W, TarHasher) {
        (self.inner, self.hasher)
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The hasher so far, e.g. for progress via `bytes_seen()`.
    pub fn hasher(&self) -> &TarHasher {
        &self.hasher
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HashingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.hasher.failure() {
            return Poll::Ready(Err(e.into_io()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.hasher
            .update(&buf[..n.min(buf.len())])
            .map_err(TarHashError::into_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// [`AsyncRead`] adaptor for the restore path (store -> instance): every byte
/// read through it is checksummed. A parse error fails that `poll_read` (the
/// bytes it read are not delivered) and every later one with an `io::Error`
/// of kind `InvalidData` wrapping the [`TarHashError`].
/// Reaching EOF does not check completeness: call `finish()` on the hasher
/// from [`into_parts`](Self::into_parts).
pub struct HashingReader<R> {
    inner: R,
    hasher: TarHasher,
}

impl<R: AsyncRead + Unpin> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: TarHasher::new(),
        }
    }

    /// The inner reader and the hasher; call `finish()` on the latter.
    pub fn into_parts(self) -> (R, TarHasher) {
        (self.inner, self.hasher)
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The hasher so far, e.g. for progress via `bytes_seen()`.
    pub fn hasher(&self) -> &TarHasher {
        &self.hasher
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.hasher.failure() {
            return Poll::Ready(Err(e.into_io()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Err(e) = this.hasher.update(&buf.filled()[before..]) {
            // Un-fill what this call read: a failed read must not deliver
            // bytes (tokio's `read_to_end` even asserts that it does not).
            buf.set_filled(before);
            return Poll::Ready(Err(e.into_io()));
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads a whole tar stream and returns its checksums.
pub async fn hash_tar<R: AsyncRead + Unpin>(mut reader: R) -> Result<Checksums, TarHashError> {
    let mut hasher = TarHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n])?;
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;
    use std::process::Command;
    use tokio::io::AsyncWriteExt;

    fn sha_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// Hashes `data` fed in one piece.
    fn hash_bytes(data: &[u8]) -> Result<Checksums, TarHashError> {
        let mut h = TarHasher::new();
        h.update(data)?;
        h.finish()
    }

    /// Hashes `data` fed in pieces split at the given (sorted) offsets.
    fn hash_split(data: &[u8], splits: &[usize]) -> Result<Checksums, TarHashError> {
        let mut h = TarHasher::new();
        let mut start = 0;
        for &s in splits.iter().chain(std::iter::once(&data.len())) {
            let s = s.clamp(start, data.len());
            h.update(&data[start..s])?;
            start = s;
        }
        assert_eq!(h.bytes_seen(), data.len() as u64);
        h.finish()
    }

    fn hash_chunked(data: &[u8], chunk: usize) -> Result<Checksums, TarHashError> {
        let mut h = TarHasher::new();
        for piece in data.chunks(chunk) {
            h.update(piece)?;
        }
        h.finish()
    }

    /// Offset just past the end-of-archive marker: any prefix shorter than
    /// this is a truncated archive.
    fn end_of_archive(data: &[u8]) -> usize {
        // The end marker always completes on a block boundary.
        let mut h = TarHasher::new();
        for (i, block) in data.chunks(BLOCK).enumerate() {
            h.update(block).unwrap();
            if matches!(h.state, State::End) {
                return (i + 1) * BLOCK;
            }
        }
        panic!("no end-of-archive marker");
    }

    /// What `find DIR -type f` + sha256 would report, keyed "./...".
    fn expected_from_dir(root: &Path) -> Checksums {
        fn walk(root: &Path, dir: &Path, out: &mut Checksums) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    walk(root, &path, out);
                } else if meta.is_file() {
                    let rel = path.strip_prefix(root).unwrap().to_str().unwrap();
                    out.insert(format!("./{rel}"), sha_hex(&std::fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = Checksums::new();
        walk(root, root, &mut out);
        out
    }

    /// Deterministic pseudo-random bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Two nested 60-char directories and a 40-char file: >100 chars in total
    /// (needs GNU 'L', PAX or the ustar prefix) yet splittable for ustar.
    fn long_path() -> String {
        format!(
            "{}/{}/{}.txt",
            "d".repeat(60),
            "e".repeat(60),
            "f".repeat(40)
        )
    }

    fn populate(dir: &Path, ustar_compatible: bool, big: bool) {
        use std::os::unix::fs::PermissionsExt;
        let w = |rel: &str, data: &[u8]| {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        w("redis-server/dump.rdb", b"REDIS0009 some data");
        w("with space.txt", b"spaces in the name\n");
        w("new\nline.txt", b"a newline in the name");
        w("empty", b"");
        w("sub/dir/empty too", b"");
        if big {
            w("big.bin", &noise(1536 * 1024 + 77, 42));
        }
        w("exact512", &noise(512, 7));
        w("private.sh", b"#!/bin/sh\necho secret\n");
        std::fs::set_permissions(
            dir.join("private.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        w(&long_path(), b"deep down");
        if !ustar_compatible {
            w(&"g".repeat(200), b"one very long component");
        }
        std::fs::create_dir_all(dir.join("emptydir")).unwrap();
        std::os::unix::fs::symlink("with space.txt", dir.join("symlink")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("abs-symlink")).unwrap();
        std::fs::hard_link(dir.join("private.sh"), dir.join("sub/hardlink")).unwrap();
    }

    fn tar_command(dir: &Path, format: &str) -> Vec<u8> {
        let out = Command::new("tar")
            .arg(format!("--format={format}"))
            .arg("-C")
            .arg(dir)
            .args(["-c", "."])
            .output()
            .expect("run tar");
        assert!(
            out.status.success(),
            "tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A GNU header for `path` (written raw: the tar crate refuses unsafe
    /// names, which is exactly what some tests need).
    fn raw_header(path: &[u8], typeflag: u8, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::new(typeflag));
        h.as_mut_bytes()[..path.len()].copy_from_slice(path);
        h.set_cksum();
        h
    }

    /// Archive from raw (header, data) pairs, padded, with end marker.
    fn raw_archive(entries: &[(tar::Header, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, data) in entries {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn builder_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn real_tar_command_all_formats() {
        for format in ["gnu", "pax", "posix", "ustar", "oldgnu"] {
            let dir = tempfile::tempdir().unwrap();
            populate(dir.path(), format == "ustar", true);
            let archive = tar_command(dir.path(), format);
            let expected = expected_from_dir(dir.path());
            assert!(expected.contains_key("./sub/hardlink"));
            assert!(expected.contains_key("./empty"));
            assert!(expected.contains_key(&format!("./{}", long_path())));
            assert!(expected.contains_key("./new\nline.txt"));
            assert!(!expected.contains_key("./symlink"));
            assert_eq!(hash_bytes(&archive).unwrap(), expected, "format {format}");
            // Record padding: tar writes whole 10240-byte records.
            assert_eq!(archive.len() % 10240, 0);
            assert_eq!(hash_chunked(&archive, 4093).unwrap(), expected);
        }
    }

    #[test]
    fn real_tar_uses_hard_link_and_long_name_entries() {
        // Make sure the interesting entry types really occur in the stream,
        // so the test above exercises them.
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), false, true);
        for (format, wanted) in [("gnu", b'L'), ("pax", b'x')] {
            let archive = tar_command(dir.path(), format);
            let mut ar = tar::Archive::new(&archive[..]);
            let typeflags: Vec<u8> = ar
                .entries()
                .unwrap()
                .raw(true)
                .map(|e| e.unwrap().header().entry_type().as_byte())
                .collect();
            for t in [b'0', b'1', b'2', b'5', wanted] {
                assert!(typeflags.contains(&t), "{format}: no {:?} entry", t as char);
            }
        }
    }

    #[test]
    fn tar_crate_archive_of_directory() {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), false, true);
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(".", dir.path()).unwrap();
        let archive = b.into_inner().unwrap();
        assert_eq!(hash_bytes(&archive).unwrap(), expected_from_dir(dir.path()));
    }

    #[test]
    fn names_are_normalized() {
        let archive = builder_archive(&[("a/b", b"1"), ("./c", b"2"), ("d//e/./f", b"3")]);
        let got = hash_bytes(&archive).unwrap();
        let keys: Vec<_> = got.keys().cloned().collect();
        assert_eq!(keys, ["./a/b", "./c", "./d/e/f"]);
        assert_eq!(got["./a/b"], sha_hex(b"1"));
    }

    #[test]
    fn ustar_prefix_is_joined() {
        let mut h = tar::Header::new_ustar();
        h.set_path(long_path()).unwrap();
        assert_ne!(h.as_ustar().unwrap().prefix, [0; 155]);
        h.set_size(4);
        h.set_cksum();
        let archive = raw_archive(&[(h, b"data")]);
        let got = hash_bytes(&archive).unwrap();
        assert_eq!(got[&format!("./{}", long_path())], sha_hex(b"data"));
    }

    /// A PAX record "<len> key=value\n" with its self-inclusive length.
    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}").len() + body.len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    #[test]
    fn pax_path_size_and_global_headers() {
        let long = format!("pax/{}", "p".repeat(150));
        let global = pax_record("path", "global/path/is/ignored");
        let mut local = pax_record("path", &long);
        local.extend(pax_record("size", "5"));
        local.extend(pax_record("mtime", "1700000000.5"));
        let mut linkpath = pax_record("linkpath", &long);
        linkpath.extend(pax_record("path", "hard"));
        let archive = raw_archive(&[
            (
                raw_header(b"GlobalHead", b'g', global.len() as u64),
                &global,
            ),
            (
                raw_header(b"PaxHeaders/a", b'x', local.len() as u64),
                &local,
            ),
            // Header says size 0: the PAX size record overrides it.
            (raw_header(b"short", b'0', 0), b"hello"),
            (
                raw_header(b"PaxHeaders/b", b'x', linkpath.len() as u64),
                &linkpath,
            ),
            (raw_header(b"ignored", b'1', 0), b""),
        ]);
        let got = hash_bytes(&archive).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[&format!("./{long}")], sha_hex(b"hello"));
        assert_eq!(got["./hard"], sha_hex(b"hello"));
    }

    #[test]
    fn hard_links() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        b.append_data(&mut h, "./dir/target", &b"abc"[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Link);
        l.set_size(0);
        b.append_link(&mut l, "other/link", "dir/target").unwrap();
        // A long link target goes through a GNU 'K' entry.
        let long = format!("{}/t", "k".repeat(120));
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        b.append_data(&mut h, &long, &b"xy"[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Link);
        b.append_link(&mut l, "link2", &long).unwrap();
        // A hard link to a symlink is not a regular file: no entry.
        let mut s = tar::Header::new_gnu();
        s.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut s, "sym", "dir/target").unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Link);
        b.append_link(&mut l, "link-to-sym", "./sym").unwrap();
        let archive = b.into_inner().unwrap();

        let got = hash_bytes(&archive).unwrap();
        assert_eq!(got["./dir/target"], sha_hex(b"abc"));
        assert_eq!(got["./other/link"], sha_hex(b"abc"));
        assert_eq!(got["./link2"], sha_hex(b"xy"));
        assert_eq!(got.len(), 4, "{got:?}");

        // Target never seen: error.
        let mut b = tar::Builder::new(Vec::new());
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Link);
        b.append_link(&mut l, "link", "missing").unwrap();
        let err = hash_bytes(&b.into_inner().unwrap()).unwrap_err();
        assert!(
            matches!(err, TarHashError::HardLinkTargetMissing { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("\"missing\""), "{err}");
    }

    #[test]
    fn base256_size() {
        let mut archive = builder_archive(&[("f", &noise(1000, 3))]);
        let mut h = tar::Header::from_byte_slice(&archive[..BLOCK]).clone();
        let field = &mut h.as_mut_bytes()[SIZE];
        field.fill(0);
        field[0] = 0x80;
        field[10..].copy_from_slice(&1000u16.to_be_bytes());
        h.set_cksum();
        archive[..BLOCK].copy_from_slice(h.as_bytes());
        assert_eq!(
            hash_bytes(&archive).unwrap()["./f"],
            sha_hex(&noise(1000, 3))
        );

        assert_eq!(parse_numeric(b"00000001750\0"), Ok(1000));
        assert_eq!(parse_numeric(b"   1750 \0\0\0\0"), Ok(1000));
        assert_eq!(parse_numeric(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Ok(0));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(9u64 << 32).to_be_bytes());
        assert_eq!(parse_numeric(&big), Ok(9u64 << 32));
        assert!(parse_numeric(&[0xff; 12]).is_err()); // negative
        let mut huge = [0u8; 12];
        huge[0] = 0x80;
        huge[3] = 1; // 2^64
        assert!(parse_numeric(&huge).is_err());
        assert!(parse_numeric(b"0000001x50\0\0").is_err());
    }

    #[test]
    fn signed_checksum_variant_is_accepted() {
        let name = "caf\u{e9}/\u{fc}ber".as_bytes();
        let mut h = raw_header(name, b'0', 3);
        let bytes = h.as_mut_bytes();
        bytes[CHKSUM].fill(b' ');
        let signed: i64 = bytes.iter().map(|&b| i64::from(b as i8)).sum();
        let field = format!("{signed:06o}\0 ");
        bytes[CHKSUM].copy_from_slice(field.as_bytes());
        let archive = raw_archive(&[(h, b"abc")]);
        let got = hash_bytes(&archive).unwrap();
        assert_eq!(got["./caf\u{e9}/\u{fc}ber"], sha_hex(b"abc"));
    }

    #[test]
    fn truncation_is_always_an_error() {
        // Without the big file, so checking every block boundary stays quick.
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), false, false);
        let archive = tar_command(dir.path(), "gnu");
        let end = end_of_archive(&archive);
        assert!(end < archive.len(), "tar pads to a record");
        // Every block boundary before the end marker is complete...
        for cut in (0..end).step_by(BLOCK) {
            let err = hash_bytes(&archive[..cut]).unwrap_err();
            if cut == 0 {
                assert!(matches!(err, TarHashError::Empty));
            } else {
                assert!(
                    matches!(
                        err,
                        TarHashError::MissingEndMarker { .. } | TarHashError::TruncatedData { .. }
                    ),
                    "cut {cut}: {err}"
                );
            }
        }
        // ...and so is any other offset before it.
        let mut x = 12345usize;
        for _ in 0..500 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let cut = (x >> 16) % end;
            let err = hash_chunked(&archive[..cut], 1000).unwrap_err();
            assert!(
                !matches!(err, TarHashError::BadChecksum { .. }),
                "cut {cut}: {err}"
            );
        }
        // Everything from the end marker on, record padding included, is fine.
        let expected = expected_from_dir(dir.path());
        for cut in [end, end + 1, end + 512, archive.len()] {
            assert_eq!(hash_bytes(&archive[..cut]).unwrap(), expected);
        }
        // Just one of the two zero blocks is not an end marker.
        let err = hash_bytes(&archive[..end - BLOCK]).unwrap_err();
        assert!(
            matches!(err, TarHashError::MissingEndMarker { .. }),
            "{err}"
        );
    }

    #[test]
    fn truncation_inside_a_big_file() {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), false, true);
        let archive = tar_command(dir.path(), "gnu");
        let end = end_of_archive(&archive);
        let mut x = 99usize;
        for _ in 0..40 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let cut = (x >> 16) % end;
            assert!(hash_chunked(&archive[..cut], 65536).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn truncation_messages_say_where() {
        let archive = builder_archive(&[("some/file", &[7u8; 1000])]);
        let err = hash_bytes(&archive[..700]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("byte 700") && msg.contains("some/file"),
            "{msg}"
        );
        assert!(msg.contains("836 more"), "{msg}"); // 812 data + 24 padding
        let msg = hash_bytes(&archive[..1512]).unwrap_err().to_string();
        assert!(msg.contains("24 more"), "{msg}"); // padding only
        let msg = hash_bytes(&archive[..1600]).unwrap_err().to_string();
        assert!(msg.contains("header block starting at byte 1536"), "{msg}");
    }

    #[test]
    fn empty_stream_is_an_error() {
        let err = hash_bytes(b"").unwrap_err();
        assert!(matches!(err, TarHashError::Empty));
        assert!(err.to_string().contains("empty archive"));
        assert!(matches!(
            TarHasher::new().finish(),
            Err(TarHashError::Empty)
        ));
        // A valid archive without entries is not empty.
        assert_eq!(hash_bytes(&[0; 10240]).unwrap(), Checksums::new());
    }

    #[test]
    fn corrupt_header_byte_is_an_error() {
        let archive = builder_archive(&[("first", b"one"), ("second", b"two")]);
        let second_header = 1024;
        for i in (0..BLOCK).filter(|i| !CHKSUM.contains(i)) {
            let mut bad = archive.clone();
            bad[second_header + i] ^= 0x20;
            let err = hash_bytes(&bad).unwrap_err();
            assert!(
                matches!(err, TarHashError::BadChecksum { offset: 1024, .. }),
                "byte {i}: {err}"
            );
            assert!(err.to_string().contains("at byte 1024"), "{err}");
        }
        for c in [b'x', b'9'] {
            let mut bad = archive.clone();
            bad[second_header + CHKSUM.start + 2] = c;
            assert!(hash_bytes(&bad).is_err());
        }
        // Corrupting the end marker is caught too.
        let mut bad = archive.clone();
        bad[archive.len() - 700] = 1;
        assert!(hash_bytes(&bad).is_err());
    }

    #[test]
    fn corrupt_content_changes_hash() {
        let archive = builder_archive(&[("f", b"hello world")]);
        let good = hash_bytes(&archive).unwrap();
        let mut bad = archive.clone();
        bad[BLOCK + 3] ^= 1;
        let got = hash_bytes(&bad).unwrap();
        assert_ne!(got["./f"], good["./f"]);
        assert_eq!(got["./f"], sha_hex(b"helmo world"));
    }

    #[test]
    fn unsafe_names_are_rejected() {
        for name in [
            &b"/etc/passwd"[..],
            b"../escape",
            b"a/../../b",
            b"./a/..",
            b"a/..",
        ] {
            for typeflag in [b'0', b'5', b'2'] {
                let archive = raw_archive(&[(raw_header(name, typeflag, 0), b"")]);
                let err = hash_bytes(&archive).unwrap_err();
                assert!(matches!(err, TarHashError::UnsafePath { .. }), "{err}");
                assert!(err.to_string().contains("unsafe path"), "{err}");
            }
        }
        // Via a GNU long name too.
        let long = format!("{}/../../x", "a".repeat(120));
        let archive = raw_archive(&[
            (
                raw_header(b"././@LongLink", b'L', long.len() as u64),
                long.as_bytes(),
            ),
            (raw_header(b"x", b'0', 0), b""),
        ]);
        assert!(matches!(
            hash_bytes(&archive),
            Err(TarHashError::UnsafePath { .. })
        ));
        // And as a hard link target.
        let mut l = raw_header(b"link", b'1', 0);
        l.set_link_name_literal("../../etc/shadow").unwrap();
        l.set_cksum();
        assert!(matches!(
            hash_bytes(&raw_archive(&[(l, b"")])),
            Err(TarHashError::UnsafePath { .. })
        ));
        // A symlink *target* outside the tree is fine (it is not followed).
        let mut s = raw_header(b"sym", b'2', 0);
        s.set_link_name_literal("/etc/passwd").unwrap();
        s.set_cksum();
        assert_eq!(hash_bytes(&raw_archive(&[(s, b"")])).unwrap().len(), 0);
    }

    #[test]
    fn unsupported_entry_types() {
        let sparse = raw_archive(&[(raw_header(b"sparse", b'S', 512), &[1; 512])]);
        let err = hash_bytes(&sparse).unwrap_err();
        assert!(matches!(
            err,
            TarHashError::UnsupportedEntryType { typeflag: 'S', .. }
        ));
        assert!(err.to_string().contains("sparse"), "{err}");

        let unknown = raw_archive(&[(raw_header(b"odd", b'Q', 10), &[1; 10])]);
        let err = hash_bytes(&unknown).unwrap_err();
        assert!(
            err.to_string().contains("unsupported entry type 'Q'"),
            "{err}"
        );
        assert!(err.to_string().contains("\"odd\""), "{err}");

        // Unknown but without data: nothing to hash, nothing to hide.
        let empty_unknown = raw_archive(&[(raw_header(b"odd", b'Q', 0), b"")]);
        assert_eq!(hash_bytes(&empty_unknown).unwrap().len(), 0);

        // PAX-format sparse files look like regular files: refuse them too.
        let rec = b"22 GNU.sparse.major=1\n";
        let pax_sparse = raw_archive(&[
            (raw_header(b"PaxHeaders/x", b'x', rec.len() as u64), rec),
            (raw_header(b"GNUSparseFile.0/x", b'0', 3), b"abc"),
        ]);
        let err = hash_bytes(&pax_sparse).unwrap_err();
        assert!(
            matches!(err, TarHashError::UnsupportedEntryType { .. }),
            "{err}"
        );
    }

    #[test]
    fn real_tar_sparse_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("holes")).unwrap();
        f.set_len(4 * 1024 * 1024).unwrap();
        for format in ["gnu", "pax"] {
            let out = Command::new("tar")
                .arg(format!("--format={format}"))
                .args(["--sparse", "-C"])
                .arg(dir.path())
                .args(["-c", "."])
                .output()
                .unwrap();
            assert!(out.status.success());
            let err = hash_bytes(&out.stdout).unwrap_err();
            assert!(
                matches!(err, TarHashError::UnsupportedEntryType { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn extended_header_size_is_capped() {
        let h = raw_header(b"././@LongLink", b'L', MAX_EXTENDED_HEADER + 1);
        let mut h2 = raw_header(b"PaxHeaders/x", b'x', 1 << 40);
        h2.set_cksum();
        for h in [h, h2] {
            let mut t = TarHasher::new();
            let err = t.update(h.as_bytes()).unwrap_err();
            assert!(
                matches!(err, TarHashError::ExtendedHeaderTooLarge { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_pax_records() {
        for rec in [&b"x"[..], b"99 path=a\n", b"7 path\n", b"5 a=b "] {
            let archive = raw_archive(&[
                (raw_header(b"PaxHeaders/x", b'x', rec.len() as u64), rec),
                (raw_header(b"x", b'0', 0), b""),
            ]);
            let err = hash_bytes(&archive).unwrap_err();
            assert!(matches!(err, TarHashError::InvalidPax { .. }), "{err}");
        }
        // Extended header with no entry after it.
        let rec = b"10 path=a\n";
        let archive = raw_archive(&[(raw_header(b"PaxHeaders/x", b'x', 10), rec)]);
        assert!(hash_bytes(&archive).is_err());
    }

    #[test]
    fn lone_zero_block_then_header_is_an_error() {
        let one = builder_archive(&[("a", b"1")]);
        let mut archive = one[..1024].to_vec();
        archive.extend_from_slice(&[0; BLOCK]);
        archive.extend_from_slice(&builder_archive(&[("b", b"2")]));
        assert!(hash_bytes(&archive).is_err());
    }

    #[test]
    fn errors_are_sticky() {
        let mut t = TarHasher::new();
        let mut junk = [b'j'; BLOCK];
        junk[CHKSUM].copy_from_slice(b"0000000\0");
        let first = t.update(&junk).unwrap_err();
        let again = t.update(&[0; 1024]).unwrap_err();
        assert_eq!(first.to_string(), again.to_string());
        assert_eq!(t.finish().unwrap_err().to_string(), first.to_string());
    }

    #[test]
    fn duplicate_names_last_one_wins() {
        let archive = builder_archive(&[("f", b"old"), ("./f", b"new")]);
        assert_eq!(hash_bytes(&archive).unwrap()["./f"], sha_hex(b"new"));
    }

    /// Accepts at most `max` bytes per call and is Pending every other call.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
        ready: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Returns at most `max` bytes per read and is Pending every other call.
    struct Dribble {
        data: Vec<u8>,
        pos: usize,
        max: usize,
        ready: bool,
    }

    impl AsyncRead for Dribble {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf
                .remaining()
                .min(self.max)
                .min(self.data.len() - self.pos);
            buf.put_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    fn sample_archive() -> (Vec<u8>, Checksums) {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), false, true);
        (
            tar_command(dir.path(), "gnu"),
            expected_from_dir(dir.path()),
        )
    }

    #[tokio::test]
    async fn hashing_writer_passes_bytes_through() {
        let (archive, expected) = sample_archive();
        let mut w = HashingWriter::new(Vec::new());
        for piece in archive.chunks(3000) {
            w.write_all(piece).await.unwrap();
        }
        w.shutdown().await.unwrap();
        assert_eq!(w.hasher().bytes_seen(), archive.len() as u64);
        let (out, hasher) = w.into_parts();
        assert_eq!(out, archive);
        assert_eq!(hasher.finish().unwrap(), expected);

        // Short and pending writes from the inner writer.
        let mut w = HashingWriter::new(Trickle {
            out: Vec::new(),
            max: 777,
            ready: false,
        });
        w.write_all(&archive).await.unwrap();
        let (inner, hasher) = w.into_parts();
        assert_eq!(inner.out, archive);
        assert_eq!(hasher.finish().unwrap(), expected);
    }

    #[tokio::test]
    async fn hashing_writer_reports_parse_errors() {
        let mut archive = builder_archive(&[("a", b"1"), ("b", b"2")]);
        archive[1024 + 3] ^= 1; // second header
        let mut w = HashingWriter::new(Vec::new());
        let err = w.write_all(&archive).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err
            .get_ref()
            .unwrap()
            .downcast_ref::<TarHashError>()
            .unwrap();
        assert!(matches!(
            inner,
            TarHashError::BadChecksum { offset: 1024, .. }
        ));
        // Poisoned: nothing more reaches the inner writer.
        let written = w.get_ref().len();
        assert!(w.write_all(b"more").await.is_err());
        assert_eq!(w.get_ref().len(), written);
    }

    #[tokio::test]
    async fn hashing_reader_passes_bytes_through() {
        let (archive, expected) = sample_archive();
        let mut r = HashingReader::new(Dribble {
            data: archive.clone(),
            pos: 0,
            max: 1111,
            ready: false,
        });
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, archive);
        let (_, hasher) = r.into_parts();
        assert_eq!(hasher.finish().unwrap(), expected);

        let mut r = HashingReader::new(&archive[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, archive);
        assert_eq!(r.into_parts().1.finish().unwrap(), expected);
    }

    #[tokio::test]
    async fn hashing_reader_reports_parse_errors() {
        let mut archive = builder_archive(&[("a", b"1")]);
        archive[5] ^= 1;
        let mut r = HashingReader::new(&archive[..]);
        let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("bad header checksum"), "{err}");
        assert!(r.read(&mut [0; 10]).await.is_err());
    }

    #[tokio::test]
    async fn hash_tar_reads_whole_stream() {
        let (archive, expected) = sample_archive();
        assert_eq!(hash_tar(&archive[..]).await.unwrap(), expected);
        let err = hash_tar(&archive[..archive.len() / 2]).await.unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        struct Failing;
        impl AsyncRead for Failing {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::Error::other("disk on fire")))
            }
        }
        let err = hash_tar(Failing).await.unwrap_err();
        assert!(matches!(err, TarHashError::Io(_)));
        assert!(err.to_string().contains("disk on fire"));
    }

    /// Random file sets: (name, content) with distinct, safe names; some
    /// longer than 100 bytes so GNU long-name entries occur.
    fn file_sets() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
        let segment = "[a-zA-Z0-9 _-][a-zA-Z0-9 ._\n-]{0,40}";
        let name = prop::collection::vec(segment, 1..5).prop_map(|s| s.join("/"));
        let content = prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..1500),
            1 => Just(Vec::new()),
            1 => (1usize..5).prop_map(|k| noise(k * 512, k as u64)),
        ];
        prop::collection::btree_map(name, content, 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_chunking_gives_the_same_checksums(
            files in file_sets(),
            splits in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
            chunk in 1usize..2000,
            ustar in any::<bool>(),
        ) {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in &files {
                let mut h = if ustar { tar::Header::new_ustar() } else { tar::Header::new_gnu() };
                h.set_size(data.len() as u64);
                h.set_mode(0o600);
                b.append_data(&mut h, name, &data[..]).unwrap();
            }
            let archive = b.into_inner().unwrap();
            let expected: Checksums = files
                .iter()
                .map(|(n, d)| (format!("./{n}"), sha_hex(d)))
                .collect();

            let whole = hash_bytes(&archive).unwrap();
            prop_assert_eq!(&whole, &expected);
            let mut points: Vec<usize> = splits.iter().map(|i| i.index(archive.len() + 1)).collect();
            points.sort_unstable();
            prop_assert_eq!(&hash_split(&archive, &points).unwrap(), &expected);
            prop_assert_eq!(&hash_chunked(&archive, chunk).unwrap(), &expected);
            prop_assert_eq!(&hash_chunked(&archive, 1).unwrap(), &expected);

            // Any prefix short of the end marker fails, whatever the chunking.
            let end = end_of_archive(&archive);
            for p in &points {
                if *p < end {
                    prop_assert!(hash_chunked(&archive[..*p], chunk).is_err());
                }
            }
        }
    }
}

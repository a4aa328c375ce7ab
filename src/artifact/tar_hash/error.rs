//! What can go wrong while checksumming a tar stream, with the byte offset where it did.

use std::io;


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
    pub(super) fn duplicate(&self) -> Self {
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
    pub(super) fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

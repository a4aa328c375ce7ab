//! The tar header block: field offsets, numeric fields (octal and GNU base-256), the
//! header checksum, entry names as `find .` prints them, and PAX records.


use super::*;

/// Tar block size: headers are one block, entry data is padded to a multiple.
pub(super) const BLOCK: usize = 512;

// Byte ranges of the ustar header fields we use.
pub(super) const NAME: std::ops::Range<usize> = 0..100;
pub(super) const SIZE: std::ops::Range<usize> = 124..136;
pub(super) const CHKSUM: std::ops::Range<usize> = 148..156;
pub(super) const TYPEFLAG: usize = 156;
pub(super) const LINKNAME: std::ops::Range<usize> = 157..257;
pub(super) const MAGIC: std::ops::Range<usize> = 257..263;
pub(super) const PREFIX: std::ops::Range<usize> = 345..500;

/// Checks the header checksum: the sum of all header bytes with the checksum
/// field counted as spaces. Some old tars summed signed chars; accept both.
pub(super) fn verify_checksum(h: &[u8; BLOCK], offset: u64) -> Result<(), TarHashError> {
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
pub(super) fn parse_numeric(field: &[u8]) -> Result<u64, String> {
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
pub(super) fn parse_octal(field: &[u8]) -> Result<u64, String> {
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
pub(super) fn cstr(field: &[u8]) -> &[u8] {
    field
        .iter()
        .position(|&b| b == 0)
        .map_or(field, |end| &field[..end])
}

/// Names are bytes in tar but `String` in [`Checksums`] (and in bbr's YAML
/// metadata). Non-UTF-8 bytes become U+FFFD rather than failing the backup.
pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The entry name from the header itself: `prefix/name` in POSIX ustar
/// headers. GNU headers ("ustar  \0" magic) use the prefix area for other
/// fields, and v7 headers have none, so only the POSIX magic counts.
pub(super) fn header_name(h: &[u8; BLOCK]) -> String {
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
pub(super) fn normalize(raw: &str, offset: u64) -> Result<String, TarHashError> {
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
pub(super) fn parse_pax(mut data: &[u8], offset: u64, pending: &mut Pending) -> Result<(), TarHashError> {
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

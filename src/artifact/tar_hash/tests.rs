//! Tests of the tar hasher against GNU tar, the `tar` crate and hand-made headers.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use super::*;
use super::header::*;
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

/// The structure-only hasher lists the same files (with empty checksums) and refuses the
/// same truncated or damaged streams: a restore that relies on it still finds bytes that
/// are no valid tar.
#[test]
fn structure_only_lists_the_same_files_and_refuses_the_same_streams() {
    let structure = |data: &[u8]| {
        let mut h = TarHasher::structure_only();
        h.update(data)?;
        h.finish()
    };
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), false, true);
    let archive = tar_command(dir.path(), "gnu");
    let full = hash_bytes(&archive).unwrap();
    let names = structure(&archive).unwrap();
    assert_eq!(names.keys().collect::<Vec<_>>(), full.keys().collect::<Vec<_>>());
    assert!(names.values().all(|v| v.is_empty()), "{names:?}");
    let end = end_of_archive(&archive);
    for cut in [1, 511, 512, 513, end / 2, end - 512, end - 1] {
        assert!(structure(&archive[..cut]).is_err(), "a stream cut at {cut} passed");
    }
    let mut bad = archive.clone();
    bad[148] ^= 0x01; // the first header's checksum field
    assert!(structure(&bad).is_err());
}

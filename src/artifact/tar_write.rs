//! Writing a one-file tar around a stream whose size is known first: the header, then the
//! stream's bytes, then [`trailer`]. For exports stored as BBR custom artifacts, so that
//! `metadata` checksums, `verify`, `fetch` and a hand restore (`tar -x`) work on them as on
//! any other artifact.

/// A ustar header for a regular file `name` (mode 0600: the exports hold secrets) of `size`
/// bytes. Sizes past the octal field's 8 GiB use GNU's base-256 form, which GNU tar and
/// lockstep's reader take.
pub fn file_header(name: &str, size: u64, mtime: u64) -> anyhow::Result<[u8; 512]> {
    let mut h = [0u8; 512];
    if name.is_empty() || name.len() > 100 {
        anyhow::bail!("tar entry name {name:?} must be 1 to 100 bytes");
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{v:0w$o}\0", w = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], 0o600);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size < 1 << 33 {
        octal(&mut h[124..136], size);
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum counts its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// What follows `size` bytes of file data: padding to a 512-byte block and the two zero
/// blocks that end an archive.
pub fn trailer(size: u64) -> Vec<u8> {
    let pad = (512 - (size % 512) as usize) % 512;
    vec![0u8; pad + 1024]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::tar_hash::TarHasher;
    use sha2::{Digest, Sha256};

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut t = file_header(name, data.len() as u64, 1_700_000_000).unwrap().to_vec();
        t.extend_from_slice(data);
        t.extend(trailer(data.len() as u64));
        t
    }

    #[test]
    fn the_tar_reads_back_with_its_checksum() {
        for len in [0usize, 1, 511, 512, 513, 100_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut h = TarHasher::new();
            h.update(&tar_of("./installation.zip", &data)).unwrap();
            let sums = h.finish().unwrap();
            assert_eq!(sums.get("./installation.zip").map(String::as_str), Some(hex(&Sha256::digest(&data)).as_str()), "{len}");
        }
    }

    #[test]
    fn system_tar_extracts_it() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("a.tar"), tar_of("./installation.zip", b"zip bytes")).unwrap();
        let out = std::process::Command::new("tar").arg("-C").arg(dir.path()).arg("-xf").arg(dir.path().join("a.tar")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(dir.path().join("installation.zip")).unwrap(), b"zip bytes");
    }

    #[test]
    fn large_sizes_use_base_256() {
        let h = file_header("x", 10 << 30, 0).unwrap();
        assert_eq!(h[124], 0x80);
        assert_eq!(u64::from_be_bytes(h[128..136].try_into().unwrap()), 10 << 30);
    }

    #[test]
    fn the_header_reads_back_before_the_data() {
        use crate::artifact::tar_hash::file_entry;
        for size in [0, 1, 8 << 30, 20 << 30] {
            let h = file_header("./installation.zip", size, 1_700_000_000).unwrap();
            assert_eq!(file_entry(&h).unwrap(), ("./installation.zip".to_string(), size));
        }
        let mut h = file_header("./installation.zip", 5, 0).unwrap();
        h[130] ^= 1;
        assert!(file_entry(&h).unwrap_err().to_string().contains("checksum"));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

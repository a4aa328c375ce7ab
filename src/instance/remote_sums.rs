//! The instance's own checksums of an artifact directory: the command that computes them
//! and the parser of its output.
//!
//! bbr runs `sha256sum` on the instance. GNU coreutils' `sha256sum` (up to 9.x, as on
//! the stemcells) does not use the CPU's SHA instructions: about 250 MB/s, against 1.4 GB/s
//! for `openssl dgst` on the same machine. It reads the whole artifact a second time while
//! the drain runs, so on a fast network it is what bounds the drain. We therefore use
//! `openssl` when the instance has it, and `sha256sum` otherwise. The digests are the same
//! sha256; only the output format differs.
//!
//! `openssl dgst -r` prints `<hex> *<name>` lines, and how it prints a name holding a
//! newline or a backslash depends on its version (1.1 not at all, 3.0 only newlines). So
//! files with those characters anywhere in their path go through `sha256sum -z`, whose
//! NUL-terminated records need no escaping. The output is:
//!
//! ```text
//! openssl\n <openssl lines> \0 <sha256sum -z records>      when openssl is there
//! sha256sum\n <sha256sum -z records>                          when it is not
//! ```

use crate::artifact::tar_hash::Checksums;
use anyhow::{anyhow, bail, Context};

/// What `openssl dgst -sha256 -r` prints for empty input. An openssl whose output differs
/// (another format, a FIPS build without sha256) is not used: `sha256sum` is.
const OPENSSL_SELF_TEST: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 *stdin";

/// The shell command that prints the checksums of every regular file under `dir`
/// (already quoted), with names relative to it (`./a/b`).
pub fn checksum_command(quoted_dir: &str) -> String {
    // `find -path` patterns: a newline anywhere in the path, or a backslash.
    let odd = "\\( -path '*\n*' -o -path '*\\\\*' \\)";
    format!(
        "cd {quoted_dir} || exit 1\n\
         if command -v openssl >/dev/null 2>&1 && \
            [ \"$(printf '' | openssl dgst -sha256 -r 2>/dev/null)\" = '{OPENSSL_SELF_TEST}' ]; then\n\
         echo openssl\n\
         find . -type f ! {odd} -exec openssl dgst -sha256 -r {{}} + || exit 1\n\
         printf '\\0'\n\
         find . -type f {odd} -exec sha256sum -z {{}} +\n\
         else\n\
         echo sha256sum\n\
         find . -type f -exec sha256sum -z {{}} +\n\
         fi"
    )
}

/// Parses what [`checksum_command`] printed.
pub fn parse_checksum_output(out: &[u8]) -> anyhow::Result<Checksums> {
    if let Some(rest) = out.strip_prefix(b"sha256sum\n") {
        return parse_sha256sum_z(rest);
    }
    let Some(rest) = out.strip_prefix(b"openssl\n") else {
        bail!("unexpected checksum output (no header): {:?}", String::from_utf8_lossy(&out[..out.len().min(80)]));
    };
    let end = rest.iter().position(|&b| b == 0).ok_or_else(|| anyhow!("checksum output ends early (no separator)"))?;
    let mut sums = parse_openssl_lines(&rest[..end])?;
    for (name, hash) in parse_sha256sum_z(&rest[end + 1..])? {
        if sums.insert(name.clone(), hash).is_some() {
            bail!("checksum output lists {name:?} twice");
        }
    }
    Ok(sums)
}

/// Parses `openssl dgst -sha256 -r` lines: `<64 hex> *<name>`.
fn parse_openssl_lines(text: &[u8]) -> anyhow::Result<Checksums> {
    let text = std::str::from_utf8(text).context("non-UTF-8 file name in checksum output")?;
    let mut sums = Checksums::new();
    // Not `lines()`: it would eat a `\r` that ends a file name.
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let (hash, name) = line.split_once(" *").ok_or_else(|| anyhow!("unexpected checksum line {line:?}"))?;
        let name = sums_entry(hash, name, line)?;
        sums.insert(name, hash.to_ascii_lowercase());
    }
    Ok(sums)
}

/// Parses `sha256sum -z` output: records `<64 hex>  <path>\0`. With `-z` file names are
/// not escaped, so spaces and newlines in names survive.
pub fn parse_sha256sum_z(out: &[u8]) -> anyhow::Result<Checksums> {
    let mut sums = Checksums::new();
    for record in out.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let text = std::str::from_utf8(record).context("non-UTF-8 file name in checksum output")?;
        let (hash, name) = text.split_once("  ").ok_or_else(|| anyhow!("unexpected checksum line {text:?}"))?;
        let name = sums_entry(hash, name, text)?;
        sums.insert(name, hash.to_ascii_lowercase());
    }
    Ok(sums)
}

/// Checks one record's digest and name.
fn sums_entry(hash: &str, name: &str, record: &str) -> anyhow::Result<String> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || !name.starts_with("./") {
        bail!("unexpected checksum line {record:?}");
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256sum_z_output_with_odd_names() {
        let h = "a".repeat(64);
        let out = format!("{h}  ./a b\0{h}  ./new\nline\0");
        let sums = parse_sha256sum_z(out.as_bytes()).unwrap();
        assert_eq!(sums.len(), 2);
        assert_eq!(sums["./new\nline"], h);
        assert!(parse_sha256sum_z(b"zz  ./x\0").is_err());
    }

    #[test]
    fn openssl_section_then_sha256sum_section() {
        let (a, b) = ("a".repeat(64), "B".repeat(64));
        let out = format!("openssl\n{a} *./cr\r\n{a} *./sp ace\n{a} *./*star\n\0{b}  ./new\nline\0{b}  ./back\\slash\0");
        let sums = parse_checksum_output(out.as_bytes()).unwrap();
        assert_eq!(sums.len(), 5);
        assert_eq!(sums["./cr\r"], a);
        assert_eq!(sums["./sp ace"], a);
        assert_eq!(sums["./*star"], a);
        assert_eq!(sums["./back\\slash"], "b".repeat(64));
        let empty = parse_checksum_output(b"openssl\n\0").unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn malformed_output_is_refused() {
        let a = "a".repeat(64);
        for bad in [
            String::new(),
            format!("{a}  ./x\0"),                   // no header
            format!("openssl\n{a} *./x\n"),          // no separator
            format!("openssl\n{a}  ./x\n\0"),        // sha256sum format in the openssl part
            format!("openssl\n{a} *./x\n\0{a}  ./x\0"), // the same file twice
            "openssl\nzz *./x\n\0".to_string(),
        ] {
            assert!(parse_checksum_output(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    enum Openssl {
        Real,
        Missing,
        /// An `openssl` that prints another format (as `dgst` without `-r` does).
        Odd,
    }

    /// Runs the real command with `sh`, `find`, `sha256sum` and some `openssl` over files
    /// whose names need care, and checks every digest against our own.
    fn run_on_odd_names(openssl: Openssl) -> (String, Checksums) {
        use sha2::{Digest, Sha256};
        let dir = tempfile::TempDir::new().unwrap();
        let data = dir.path().join("artifact dir");
        let names = ["plain", "sp ace", "new\nline", "back\\slash", "*star", "cr\r", "quote'\"", "tab\t"];
        std::fs::create_dir_all(data.join("sub\ndir")).unwrap();
        let mut want = Checksums::new();
        for (i, name) in names.iter().enumerate() {
            for rel in [name.to_string(), format!("sub\ndir/{name}")] {
                let body = format!("{i} {rel}").repeat(i * 100);
                std::fs::write(data.join(&rel), &body).unwrap();
                want.insert(format!("./{rel}"), hex::encode(Sha256::digest(body.as_bytes())));
            }
        }
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tools: &[&str] = if matches!(openssl, Openssl::Real) { &["find", "sha256sum", "openssl"] } else { &["find", "sha256sum"] };
        if let Openssl::Odd = openssl {
            let fake = bin.join("openssl");
            std::fs::write(&fake, format!("#!/bin/sh\necho 'SHA2-256(stdin)= {}'\n", &OPENSSL_SELF_TEST[..64])).unwrap();
            std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        for tool in tools {
            let path = ["/usr/bin", "/bin"].iter().map(|d| std::path::Path::new(d).join(tool)).find(|p| p.exists());
            std::os::unix::fs::symlink(path.unwrap_or_else(|| panic!("{tool} is not installed (ci/setup)")), bin.join(tool)).unwrap();
        }
        let cmd = checksum_command(&crate::transport::quote::quote(data.to_str().unwrap()));
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(&cmd).env_clear().env("PATH", &bin).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let header = String::from_utf8_lossy(&out.stdout[..out.stdout.iter().position(|&b| b == b'\n').unwrap()]).to_string();
        let sums = parse_checksum_output(&out.stdout).unwrap();
        assert_eq!(sums, want);
        (header, sums)
    }

    #[test]
    fn the_command_with_and_without_openssl_agrees_with_our_sha256() {
        assert_eq!(run_on_odd_names(Openssl::Real).0, "openssl");
        assert_eq!(run_on_odd_names(Openssl::Missing).0, "sha256sum");
        assert_eq!(run_on_odd_names(Openssl::Odd).0, "sha256sum", "an openssl that fails the self-test is not used");
    }

    #[test]
    fn a_missing_directory_fails() {
        let cmd = checksum_command("/nonexistent/lockstep");
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(&cmd).output().unwrap();
        assert!(!out.status.success());
    }
}

//! Benchmark: what each hash of the artifact format costs. A backup hashes every plain byte
//! once per file (SHA-256 of each tar member, for bbr's `metadata`) and every stored byte
//! once more (SHA-256 of each stored object, for `lockstep.json`, so an object can be
//! checked by hand with `sha256sum`). With compression the second hash reads fewer bytes;
//! without (bbr's layout) it reads the same bytes again. This measures both on the same
//! tar (made by the system's `tar` from half random, half text data), interleaved
//! (per-file, per-object, ...; at least 5 pairs), and prints throughput and what the second
//! hash adds per GiB, to weigh it against the drain's own time per GiB.
//!
//! ```text
//! cargo bench --bench hashing                  256 MiB (LOCKSTEP_BENCH_MIB), 5 pairs
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it): 4 MiB, 1 pair.

use lockstep::artifact::tar_hash::TarHasher;
use sha2::{Digest, Sha256};
use std::time::Instant;

fn tar_of(dir: &std::path::Path, mib: usize) -> Vec<u8> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let random: Vec<u8> = (0..mib * 512 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(data.join("blob.bin"), random).unwrap();
    std::fs::write(data.join("dump.sql"), "INSERT INTO apps VALUES ('dora', 'ab');\n".repeat(mib * 512 * 1024 / 40)).unwrap();
    let out = std::process::Command::new("tar").arg("-C").arg(&data).args(["-c", "."]).output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Seconds to feed `tar` through `f` in 256 KiB reads, as the drain's buffers are.
fn time(tar: &[u8], mut f: impl FnMut(&[u8])) -> f64 {
    let start = Instant::now();
    for chunk in tar.chunks(256 * 1024) {
        f(chunk);
    }
    start.elapsed().as_secs_f64()
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let mib: usize = if bench { std::env::var("LOCKSTEP_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256) } else { 4 };
    let pairs: usize = if bench { std::env::var("LOCKSTEP_BENCH_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1) } else { 1 };
    let tmp = tempfile::TempDir::new().unwrap();
    let tar = tar_of(tmp.path(), mib);
    let gib = tar.len() as f64 / (1u64 << 30) as f64;
    println!("hashing: a {mib} MiB tar, {pairs} interleaved pair(s)");
    let (mut per_file, mut per_object) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        let mut h = TarHasher::new();
        per_file.push(time(&tar, |c| h.update(c).unwrap()) / gib);
        assert!(h.finish().is_ok());
        let mut s = Sha256::new();
        per_object.push(time(&tar, |c| s.update(c)) / gib);
        std::hint::black_box(s.finalize());
    }
    for (what, v) in [("per-file SHA-256 (metadata)", &per_file), ("per-object SHA-256 (lockstep.json)", &per_object)] {
        let (lo, med, hi) = stats(v);
        println!("  {what:<36} s/GiB min {lo:.3} median {med:.3} max {hi:.3}  ({:.2} GiB/s at the median)", 1.0 / med);
    }
}

//! Benchmark: back up the same deployment into S3, lockstep against the staged backup an
//! operator would script, in interleaved pairs, and print the spread and the ratios.
//!
//! ```text
//! cargo bench --bench s3_backup                      1 GiB, 5 pairs
//! LOCKSTEP_BENCH_MIB=256 LOCKSTEP_BENCH_PAIRS=9 cargo bench --bench s3_backup
//! LOCKSTEP_BENCH_CODECS=zstd,none,zstd:1,zstd+age cargo bench --bench s3_backup
//! LOCKSTEP_BENCH_SOURCE=local cargo bench --bench s3_backup   local instances, no SSH
//! ```
//!
//! The instances are the sshd test fleet (`tests/support/fleet.rs`: real sshd in mount
//! namespaces, `vcap` with passwordless sudo) when it can start here (root,
//! openssh-server), else local directories. The store is a real `s3s-fs` on loopback. The
//! deployment is the demo's (api: cloud_controller, blobstore: blobstore, db: postgres, with
//! their real BBR scripts; cloud_controller is locked before the other two), its data filled
//! to the size asked (5 / 70 / 25 %), half compressible text, half incompressible bytes.
//!
//! - **baseline** (B), what an operator writes around `ssh` and the AWS CLI:
//!   1. the BBR scripts over `ssh`, one connection per script, as bbr orders them:
//!      `pre-backup-lock` level by level, every `backup` at once (with
//!      `BBR_ARTIFACT_DIRECTORY=/var/vcap/store/bbr-backup/<job>/`), `post-backup-unlock`
//!      levels reversed;
//!   2. per job, the three instances in parallel:
//!      `ssh vm 'sudo tar -C /var/vcap/store/bbr-backup/<job> -c .' > <group>-0-<job>.tar`;
//!      then `ssh vm 'sudo sh -c "cd DIR && find . -type f -print0 | xargs -0 sha256sum"'`
//!      (every file on the instance); then the sha256 of every member of the local tar
//!      with GNU tar streaming each member into `sha256sum`
//!      (`tar -xf F --to-command='... sha256sum ...'`: what an operator would reach for to
//!      hash members without extracting them to disk a second time); the two lists of
//!      digests compared; then `ssh vm 'sudo rm -rf /var/vcap/store/bbr-backup'`;
//!   3. a `metadata` file, then `aws s3 cp --recursive DIR s3://bench/baseline/<name>/`
//!      (`ci/.venv/bin/aws`, its defaults: multipart above 8 MiB, 10 requests at once).
//!      No `tar -cf` of the artifact directory: the objects are the job tars, as bbr's.
//!
//!   `ssh` is OpenSSH's client with `-c aes256-gcm@openssh.com`: the cipher lockstep
//!   negotiates with OpenSSH's sshd (lockstep's preference list starts with it, in
//!   `src/transport/ssh/connect.rs`, and sshd offers it by default). OpenSSH's client
//!   would pick `chacha20-poly1305@openssh.com` by default. The run prints the cipher
//!   `ssh -v` reports, to show it took.
//! - **lockstep** (A): the library's backup (discover, lock, backup scripts, unlock, drain
//!   with on-the-fly checksums, cleanup, commit) straight into the bucket, with the first
//!   codec of `LOCKSTEP_BENCH_CODECS` (default `zstd,none`: the default `zstd`, level 3, is
//!   A; every further codec also runs once per pair, after B, for the record).
//!
//! Runs go A B [C ...] A B [C ...]: one warm-up round that is not counted, then
//! `LOCKSTEP_BENCH_PAIRS` rounds (default 5). Before each timed run, `sync` (outside the
//! timing), so no run pays for the previous one's dirty pages. After each run, its
//! objects are deleted from the server's disk (outside the timing). Printed: every pair's
//! times, ratio and load average; per side min / median / max; the pairwise ratios B/A
//! (above 1: lockstep faster) min / median / max; the load average before and after;
//! lockstep's peak RSS (`VmHWM`, reset before each lockstep run; in brackets the largest
//! `VmRSS` at that reset, what the process held before the run) and bytes staged on local
//! disk (baseline: its staging directory; lockstep: the `write_bytes` of its own threads
//! in `/proc/self/task/*/io`). Timings are printed, never asserted.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a 16 MiB smoke run
//! over local instances, one pair, so the benchmark keeps working.

#[path = "../tests/s3_support/mod.rs"]
mod s3_support;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "common/mod.rs"]
mod common;

use common::*;

use lockstep::events::NoEvents;
use lockstep::frontend::demo::create_deployment;
use lockstep::orchestrate::backup::{backup, BackupOptions};
use lockstep::orchestrate::Ctx;
use lockstep::store::codec::{Codec, Compression};
use lockstep::store::s3::S3Store;
use s3_support::{find_bin, S3sFs};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

/// The demo's backup lock levels (cloud_controller is locked before the other two).
const BACKUP_LEVELS: [&[usize]; 2] = [&[0], &[1, 2]];

/// Bytes this process's own threads caused to be written to disk. `/proc/self/io` also
/// counts reaped children (the instances' scripts in local mode); the per-thread counters
/// do not. The runtime keeps its threads alive, so none of their counts is lost on exit.
fn own_write_bytes() -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        total += proc_field(&t.path().join("io").to_string_lossy(), "write_bytes:");
    }
    total
}

struct Row {
    secs: f64,
    stored: u64,
    staged: u64,
    rss: Option<u64>,
    /// RSS when the peak was reset, just before the run.
    rss_before: Option<u64>,
    phases: String,
}

/// The digests in `sha256sum`-style lines (`HASH  NAME`, or `\HASH  NAME` for an escaped
/// name), sorted: names with a newline do not survive every tool's output, digests do.
fn digests(out: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| {
            let h = l.trim_start_matches('\\').get(..64)?;
            h.bytes().all(|b| b.is_ascii_hexdigit()).then(|| h.to_string())
        })
        .collect();
    v.sort();
    v
}

/// Runs `script` of every job in `jobs` on its instance at once (one `ssh` each).
fn scripts(source: &Source, jobs: &[usize], script: &str) {
    std::thread::scope(|s| {
        for &i in jobs {
            s.spawn(move || {
                let (_, job, _) = JOBS[i];
                let r = source.root(i);
                let dir = format!("{r}/var/vcap/store/bbr-backup/{job}");
                let cmd = match script {
                    "backup" => format!("mkdir -p {dir} && BBR_ARTIFACT_DIRECTORY={dir}/ {r}/var/vcap/jobs/{job}/bin/bbr/backup"),
                    _ => format!("{r}/var/vcap/jobs/{job}/bin/bbr/{script}"),
                };
                run(source.remote(i, &cmd), &format!("{script} of {job}"));
            });
        }
    });
}

/// The operator's staged backup (see the module comment), timed end to end.
fn baseline(source: &Source, server: &S3sFs, stage: &Path, n: usize) -> Row {
    let _ = std::fs::remove_dir_all(stage);
    let name = format!("cf_baseline_{n}");
    let art = stage.join(&name);
    std::fs::create_dir_all(&art).unwrap();
    sync();
    let start = Instant::now();
    for level in BACKUP_LEVELS {
        scripts(source, level, "pre-backup-lock");
    }
    scripts(source, &[0, 1, 2], "backup");
    for level in BACKUP_LEVELS.iter().rev() {
        scripts(source, level, "post-backup-unlock");
    }
    let t_scripts = start.elapsed().as_secs_f64();
    let sums: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = JOBS
            .iter()
            .enumerate()
            .map(|(i, (group, job, _))| {
                let art = &art;
                s.spawn(move || {
                    let r = source.root(i);
                    let dir = format!("{r}/var/vcap/store/bbr-backup/{job}");
                    // Drain to a local file.
                    let file = art.join(format!("{group}-0-{job}.tar"));
                    let mut c = source.remote(i, &format!("tar -C {dir} -c ."));
                    c.stdout(std::fs::File::create(&file).unwrap());
                    run(c, "drain");
                    // Every file on the instance.
                    let remote = output(source.remote(i, &format!("cd {dir} && find . -type f -print0 | xargs -0 sha256sum")), "remote sha256sum");
                    // Every member of the local tar.
                    let mut c = Command::new("tar");
                    c.arg("-xf").arg(&file).arg("--to-command=printf '%s  %s\\n' \"$(sha256sum | cut -d' ' -f1)\" \"$TAR_FILENAME\"");
                    let local = output(c, "local sha256sum of the tar members");
                    let (remote, local) = (digests(&remote), digests(&local));
                    assert!(!remote.is_empty() && remote == local, "{job}: the drained tar differs from the instance's files");
                    run(source.remote(i, &format!("rm -rf {r}/var/vcap/store/bbr-backup")), "cleanup");
                    format!("{group}/0 {job}: {} files\n{}\n", remote.len(), remote.join("\n"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let t_drain = start.elapsed().as_secs_f64();
    std::fs::write(art.join("metadata"), sums.concat()).unwrap();
    let staged = dir_bytes(stage);
    let mut aws = server.aws().expect("aws CLI");
    aws.args(["s3", "cp", "--recursive", "--only-show-errors"]).arg(&art).arg(format!("s3://bench/baseline/{name}/"));
    run(aws, "aws s3 cp --recursive");
    let secs = start.elapsed().as_secs_f64();
    let stored = dir_bytes(&server.object_path("bench", &format!("baseline/{name}")));
    let _ = std::fs::remove_dir_all(stage);
    let _ = std::fs::remove_dir_all(server.object_path("bench", &format!("baseline/{name}")));
    let phases = format!(
        "scripts {t_scripts:.2}s, drain + checksums + cleanup {:.2}s, aws s3 cp {:.2}s",
        t_drain - t_scripts,
        secs - t_drain
    );
    Row { secs, stored, staged, rss: None, rss_before: None, phases }
}

fn lockstep_run(rt: &tokio::runtime::Runtime, source: &Source, server: &S3sFs, codec: &Codec) -> Row {
    let mut config = server.config("bench", "lockstep");
    config.part_size_mib = None;
    config.max_retries = None;
    config.retry_timeout_seconds = None;
    let store = S3Store::new(&config).unwrap();
    let target = source.target();
    // Artifacts are named to the second: never two in the same second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    sync();
    // Reset the peak RSS to what the process holds now, and note the disk writes so far.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = proc_field("/proc/self/status", "VmRSS:") * 1024;
    let written_before = own_write_bytes();
    let start = Instant::now();
    let out = rt.block_on(async {
        let ctx = Ctx::new(Arc::new(NoEvents));
        backup(&ctx, target.as_ref(), &store, &BackupOptions { codec: codec.clone(), ..Default::default() }).await
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(out.failures.is_empty(), "lockstep backup: {}", out.failures.render());
    let staged = own_write_bytes().saturating_sub(written_before);
    let rss = proc_field("/proc/self/status", "VmHWM:") * 1024;
    let stored = out.marker.map(|m| m.total_size()).unwrap_or(0);
    if let Some(name) = &out.artifact {
        let _ = std::fs::remove_dir_all(server.object_path("bench", &format!("lockstep/{name}")));
    }
    let phases = out.timings.phases.iter().map(|(k, v)| format!("{k} {:.2}s", v.as_secs_f64())).collect::<Vec<_>>().join(", ");
    Row { secs, stored, staged, rss: Some(rss), rss_before: Some(rss_before), phases }
}


/// `zstd`, `zstd:1`, `none`, `gzip`, and any of them with `+age`.
fn parse_codec(spec: &str) -> Codec {
    let (comp, age) = match spec.strip_suffix("+age") {
        Some(c) => (c, true),
        None => (spec, false),
    };
    let compression: Compression = comp.parse().unwrap_or_else(|e| panic!("LOCKSTEP_BENCH_CODECS: {e}"));
    let recipients = if age { vec![age::x25519::Identity::generate().to_public().to_string()] } else { vec![] };
    Codec { compression, recipients }
}

fn main() {
    lockstep::tune_allocator();
    let bench = std::env::args().any(|a| a == "--bench");
    let env_num = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (mib, pairs) = if bench { (env_num("LOCKSTEP_BENCH_MIB", 1024), env_num("LOCKSTEP_BENCH_PAIRS", 5).max(1) as usize) } else { (16, 1) };
    let codec_specs: Vec<String> = std::env::var("LOCKSTEP_BENCH_CODECS")
        .unwrap_or_else(|_| "zstd,none".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    assert!(!codec_specs.is_empty(), "LOCKSTEP_BENCH_CODECS names no codec");
    let codecs: Vec<Codec> = codec_specs.iter().map(|s| parse_codec(s)).collect();
    let bytes = mib * MIB;
    let Some(server) = S3sFs::start() else { return };
    server.bucket("bench");
    if find_bin("aws").is_none() {
        s3_support::missing("the AWS CLI (ci/.venv/bin/aws)");
        return;
    }
    let tmp = tempfile::TempDir::new().unwrap();
    let want_local = !bench || std::env::var("LOCKSTEP_BENCH_SOURCE").as_deref() == Ok("local");
    let fleet = if want_local { None } else { support::fleet::Fleet::start("s3_backup bench", 3) };
    let demo = create_deployment(&tmp.path().join("demo"), true).unwrap();
    let source = match fleet {
        Some(fleet) => {
            for (i, (_, root)) in demo.iter().enumerate() {
                fleet.vms[i].install_tree(Path::new(root));
            }
            Source::Fleet { fleet }
        }
        None => Source::Local { roots: demo.iter().map(|(_, r)| r.clone()).collect() },
    };
    for (i, (_, job, share)) in JOBS.iter().enumerate() {
        write_data(&source.host_path(i, &format!("/var/vcap/store/{job}/bench.bin")), bytes * share / 100);
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "lockstep S3 backup benchmark{}: {mib} MiB from {} into s3s-fs on loopback; {pairs} interleaved round(s) \
         (lockstep {} = A, baseline = B{}) after a warm-up round; {cores} cores",
        if bench { "" } else { " (smoke run)" },
        source.describe(),
        codec_specs[0],
        codec_specs[1..].iter().map(|c| format!(", lockstep {c}")).collect::<String>(),
    );
    if let Some(c) = source.openssh_cipher() {
        println!("baseline ssh: -c {CIPHER}; ssh -v reports server->client cipher: {c}");
    }
    let load_before = loadavg();
    println!("load average before: {load_before}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(24 * 3600))
        .build()
        .unwrap();
    let stage = tmp.path().join("stage");
    // Warm-up round: page cache, sudo, sshd's first forks, the AWS CLI's imports.
    for c in &codecs {
        let _ = lockstep_run(&rt, &source, &server, c);
    }
    let _ = baseline(&source, &server, &stage, 0);

    // runs[0]: lockstep A, runs[1]: baseline, runs[2..]: further codecs.
    let mut runs: Vec<Vec<Row>> = (0..codecs.len() + 1).map(|_| Vec::new()).collect();
    for p in 0..pairs {
        let a = lockstep_run(&rt, &source, &server, &codecs[0]);
        let b = baseline(&source, &server, &stage, p + 1);
        let mut line = format!("  pair {}: lockstep {} {:6.2}s | baseline {:6.2}s | B/A {:.2}", p + 1, codec_specs[0], a.secs, b.secs, b.secs / a.secs);
        for (k, c) in codecs.iter().enumerate().skip(1) {
            let r = lockstep_run(&rt, &source, &server, c);
            line.push_str(&format!(" | lockstep {} {:6.2}s", codec_specs[k], r.secs));
            runs[k + 1].push(r);
        }
        println!("{line} | load {}", loadavg());
        runs[0].push(a);
        runs[1].push(b);
    }
    let load_after = loadavg();

    let mut names = vec![format!("lockstep {} (A)", codec_specs[0]), "baseline (B)".to_string()];
    names.extend(codec_specs[1..].iter().map(|c| format!("lockstep {c}")));
    println!(
        "\n{:<22} {:>28} {:>7} {:>10} {:>10} {:>22}",
        "run", "wall min / median / max", "MiB/s", "stored", "staged", "peak RSS max (at start)"
    );
    for (name, rs) in names.iter().zip(&runs) {
        let s = stats(&rs.iter().map(|r| r.secs).collect::<Vec<_>>());
        let rss = rs.iter().filter_map(|r| r.rss).max();
        let before = rs.iter().filter_map(|r| r.rss_before).max();
        println!(
            "{:<22} {:>28} {:>7.0} {:>10} {:>10} {:>22}",
            name,
            fmt3(s, "s"),
            mib as f64 / s.1,
            human(rs.iter().map(|r| r.stored).max().unwrap_or(0)),
            human(rs.iter().map(|r| r.staged).max().unwrap_or(0)),
            rss.map(|r| format!("{} ({})", human(r), human(before.unwrap_or(0)))).unwrap_or_else(|| "-".into())
        );
    }
    for (name, rs) in names.iter().zip(&runs) {
        if let Some(r) = rs.last().filter(|r| !r.phases.is_empty()) {
            println!("  {name}, last run's phases: {}", r.phases);
        }
    }
    let ratios: Vec<f64> = runs[0].iter().zip(&runs[1]).map(|(a, b)| b.secs / a.secs).collect();
    let (rmin, rmed, rmax) = stats(&ratios);
    let peak = runs[0].iter().chain(runs[2..].iter().flatten()).filter_map(|r| r.rss).max().unwrap_or(0);
    let peak_a = runs[0].iter().filter_map(|r| r.rss).max().unwrap_or(0);
    let staged = runs[0].iter().map(|r| r.staged).max().unwrap_or(0);
    println!("\npairwise ratio baseline/lockstep {} (>1: lockstep faster) min / median / max: {}", codec_specs[0], fmt3((rmin, rmed, rmax), "x"));
    println!("load average before: {load_before}; after: {load_after}");
    println!(
        "lockstep {}: peak RSS (3 streams) max over its runs {}; staged on local disk max {}; peak RSS of all lockstep runs {}",
        codec_specs[0],
        human(peak_a),
        human(staged),
        human(peak)
    );
    println!(
        "{}targets: >= 2.5x faster than the staged baseline (median pairwise ratio {rmed:.2}, min {rmin:.2}) [{}]; \
         peak RSS <= 128 MiB for 3 streams ({}) [{}]; nothing staged on local disk [{}]",
        if bench { "" } else { "(smoke run, tiny data: not a measurement) " },
        if rmed >= 2.5 { if rmin >= 2.5 { "met" } else { "met at the median, not in every pair" } } else { "NOT met" },
        human(peak_a),
        if peak_a <= 128 * MIB { "met" } else { "NOT met" },
        if staged < MIB { "met" } else { "NOT met" }
    );
}

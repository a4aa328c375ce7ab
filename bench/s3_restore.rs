//! Benchmark: restore the same backup from S3 onto the instances, lockstep against what an
//! operator would script without any verification, in interleaved pairs, and print the
//! spread and the ratios.
//!
//! ```text
//! cargo bench --bench s3_restore                     1 GiB, 5 pairs
//! LOCKSTEP_BENCH_MIB=256 LOCKSTEP_BENCH_PAIRS=9 cargo bench --bench s3_restore
//! LOCKSTEP_BENCH_CODECS=zstd cargo bench --bench s3_restore   A and B only
//! LOCKSTEP_BENCH_SOURCE=local cargo bench --bench s3_restore  local instances, no SSH
//! ```
//!
//! The instances, the store and the deployment are those of `bench/s3_backup.rs`: the sshd
//! test fleet (or local directories), `s3s-fs` on loopback, the demo's three jobs with
//! their real BBR scripts (`restore`: `rm -rf` the data directory, then `cp -a` the artifact
//! directory into it), 5 / 70 / 25 % of the data, half text, half incompressible bytes.
//!
//! Set-up (not timed): lockstep backs the deployment up twice into the bucket, once with
//! its default `zstd` (level 3) and once with `--compression none` (plain `.tar` objects,
//! bbr's layout), and the data of every job is recorded (every path's type, mode and
//! sha256).
//!
//! - **lockstep** (A): the library's `restore_with` of the `zstd` artifact onto the same
//!   three instances: check the objects, discover, claim, stream every object (read as
//!   parallel byte ranges) into its staging directory while decompressing it, hashing it
//!   against `lockstep.json` and checking its tar structure, the instance re-hashing every
//!   file it extracted against `metadata`; then `pre-restore-lock`, `restore`,
//!   `post-restore-unlock` one instance at a time, cleanup.
//! - **baseline** (B), the restore that verifies nothing, from the `none` artifact (an
//!   operator's `tar -x` needs no codec; its downloads are bigger by what zstd saves):
//!   1. `aws s3 cp --recursive s3://bench/lockstep/<none artifact>/ DIR/`
//!      (`ci/.venv/bin/aws`, its defaults);
//!   2. per job, the three instances in parallel:
//!      `ssh vm 'sudo sh -c "mkdir -p D && tar -C D -x"' < DIR/<group>-0-<job>.tar` with
//!      `D=/var/vcap/store/bbr-backup/<job>` (OpenSSH, `-c aes256-gcm@openssh.com`: the
//!      cipher lockstep negotiates; see `bench/s3_backup.rs`);
//!   3. the same BBR scripts lockstep runs, over `ssh`, one connection per script, in
//!      bbr's order: `pre-restore-lock` one instance at a time, `restore` one at a time
//!      (`BBR_ARTIFACT_DIRECTORY=D/`), `post-restore-unlock` reversed, then
//!      `ssh vm 'sudo rm -rf /var/vcap/store/bbr-backup'`. Without them the data would
//!      sit in the staging directory, not be restored, and lockstep's time would include
//!      work the baseline skips. Steps 1-2 ("transfer") and 3 ("scripts") are timed apart.
//! - further codecs of `LOCKSTEP_BENCH_CODECS` (default `zstd,none`: A is the first; the
//!   rest run once per pair after B): lockstep restoring an artifact made with that codec;
//!   `none` restores the very objects B reads.
//!
//! Before each timed run (not timed): every job's data directory is emptied, so each run
//! restores everything and its result can be checked; then `sync`. After each run (not
//! timed): the restored data is compared with the recording (panics on a difference).
//! Runs go A B [C ...]: one warm-up round not counted, then `LOCKSTEP_BENCH_PAIRS` rounds
//! (default 5). Printed: every pair's times, ratio and load average; per side min /
//! median / max (total, and transfer: lockstep's time outside its lock, restore, unlock and
//! cleanup phases); the pairwise ratios B/A (above 1: lockstep faster) min / median / max,
//! end to end and transfer only; the load average before and after; lockstep's peak RSS
//! (`VmHWM`, reset before each lockstep run; in brackets the largest `VmRSS` at that
//! reset). Timings are printed, never asserted.
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

use age::secrecy::ExposeSecret;
use lockstep::events::NoEvents;
use lockstep::frontend::demo::{create_deployment, snapshot};
use lockstep::orchestrate::backup::{backup, BackupOptions};
use lockstep::orchestrate::restore::{restore_with, RestoreOptions};
use lockstep::orchestrate::Ctx;
use lockstep::store::codec::{Codec, Compression, Identities};
use lockstep::store::s3::S3Store;
use s3_support::{find_bin, S3sFs};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;


struct Row {
    secs: f64,
    /// The part of `secs` that moved the bytes (see the module comment).
    transfer: f64,
    rss: Option<u64>,
    /// RSS when the peak was reset, just before the run.
    rss_before: Option<u64>,
    phases: String,
}

/// Every job's data directory, as [`snapshot`] lists it.
type Recording = Vec<Vec<(String, String)>>;

fn record(source: &Source) -> Recording {
    JOBS.iter().enumerate().map(|(i, (_, job, _))| snapshot(&source.host_path(i, &format!("/var/vcap/store/{job}"))).unwrap()).collect()
}

/// Empties every job's data directory (the restore must bring everything back), then syncs.
fn wipe(source: &Source) {
    for (i, (_, job, _)) in JOBS.iter().enumerate() {
        let dir = source.host_path(i, &format!("/var/vcap/store/{job}"));
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
    }
    sync();
}

fn check(source: &Source, want: &Recording, what: &str) {
    let got = record(source);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: the data of {} differs after the restore", JOBS[i].1);
    }
}

/// Runs `script` of job `i` on its instance (one `ssh`).
fn script(source: &Source, i: usize, script: &str) {
    let (_, job, _) = JOBS[i];
    let r = source.root(i);
    let bin = format!("{r}/var/vcap/jobs/{job}/bin/bbr/{script}");
    let cmd = if script == "restore" { format!("BBR_ARTIFACT_DIRECTORY={r}/var/vcap/store/bbr-backup/{job}/ {bin}") } else { bin };
    run(source.remote(i, &cmd), &format!("{script} of {job}"));
}

/// The restore that verifies nothing (see the module comment), from artifact `name`.
fn baseline(source: &Source, server: &S3sFs, stage: &Path, name: &str) -> Row {
    let _ = std::fs::remove_dir_all(stage);
    let dir = stage.join(name);
    wipe(source);
    let start = Instant::now();
    let mut aws = server.aws().expect("aws CLI");
    aws.args(["s3", "cp", "--recursive", "--only-show-errors"]).arg(format!("s3://bench/lockstep/{name}/")).arg(&dir);
    run(aws, "aws s3 cp --recursive");
    let download = start.elapsed().as_secs_f64();
    std::thread::scope(|s| {
        for (i, (group, job, _)) in JOBS.iter().enumerate() {
            let dir = &dir;
            s.spawn(move || {
                let d = format!("{}/var/vcap/store/bbr-backup/{job}", source.root(i));
                let mut c = source.remote(i, &format!("mkdir -p {d} && tar -C {d} -x"));
                c.stdin(std::fs::File::open(dir.join(format!("{group}-0-{job}.tar"))).expect("the downloaded tar"));
                run(c, "ssh tar -x");
            });
        }
    });
    let transfer = start.elapsed().as_secs_f64();
    let t_download = download;
    for i in 0..JOBS.len() {
        script(source, i, "pre-restore-lock");
    }
    let t_lock = start.elapsed().as_secs_f64();
    for i in 0..JOBS.len() {
        script(source, i, "restore");
    }
    let t_restore = start.elapsed().as_secs_f64();
    for i in (0..JOBS.len()).rev() {
        script(source, i, "post-restore-unlock");
    }
    let t_unlock = start.elapsed().as_secs_f64();
    std::thread::scope(|s| {
        for i in 0..JOBS.len() {
            s.spawn(move || run(source.remote(i, &format!("rm -rf {}/var/vcap/store/bbr-backup", source.root(i))), "cleanup"));
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(stage);
    let phases = format!(
        "download {t_download:.2}s, ssh tar -x {:.2}s, lock {:.2}s, restore {:.2}s, unlock {:.2}s, cleanup {:.2}s",
        transfer - t_download,
        t_lock - transfer,
        t_restore - t_lock,
        t_unlock - t_restore,
        secs - t_unlock
    );
    Row { secs, transfer, rss: None, rss_before: None, phases }
}

fn store(server: &S3sFs) -> S3Store {
    let mut config = server.config("bench", "lockstep");
    config.part_size_mib = None;
    config.max_retries = None;
    config.retry_timeout_seconds = None;
    S3Store::new(&config).unwrap()
}

fn lockstep_backup(rt: &tokio::runtime::Runtime, source: &Source, server: &S3sFs, codec: &Codec) -> String {
    let store = store(server);
    let target = source.target();
    // Artifacts are named to the second: never two in the same second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = rt.block_on(async {
        let ctx = Ctx::new(Arc::new(NoEvents));
        backup(&ctx, target.as_ref(), &store, &BackupOptions { codec: codec.clone(), ..Default::default() }).await
    });
    assert!(out.failures.is_empty(), "lockstep backup: {}", out.failures.render());
    out.artifact.expect("a committed artifact")
}

fn lockstep_restore(rt: &tokio::runtime::Runtime, source: &Source, server: &S3sFs, name: &str, ids: &Identities) -> Row {
    let store = store(server);
    let target = source.target();
    wipe(source);
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = proc_field("/proc/self/status", "VmRSS:") * 1024;
    let start = Instant::now();
    let out = rt.block_on(async {
        let ctx = Ctx::new(Arc::new(NoEvents));
        restore_with(&ctx, target.as_ref(), &store, name, &RestoreOptions { identities: ids.clone(), ..Default::default() }).await
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(out.failures.is_empty(), "lockstep restore: {}", out.failures.render());
    let rss = proc_field("/proc/self/status", "VmHWM:") * 1024;
    let scripts: f64 = ["lock", "restore", "unlock", "cleanup"].iter().filter_map(|p| out.timings.phases.get(p)).map(|d| d.as_secs_f64()).sum();
    let phases = out.timings.phases.iter().map(|(k, v)| format!("{k} {:.2}s", v.as_secs_f64())).collect::<Vec<_>>().join(", ");
    Row { secs, transfer: secs - scripts, rss: Some(rss), rss_before: Some(rss_before), phases }
}


/// `zstd`, `zstd:1`, `none`, `gzip`, and any of them with `+age` (an identity made here).
fn parse_codec(spec: &str) -> (Codec, Identities) {
    let (comp, age) = match spec.strip_suffix("+age") {
        Some(c) => (c, true),
        None => (spec, false),
    };
    let compression: Compression = comp.parse().unwrap_or_else(|e| panic!("LOCKSTEP_BENCH_CODECS: {e}"));
    if age {
        let id = age::x25519::Identity::generate();
        let recipients = vec![id.to_public().to_string()];
        let ids = Identities::from_text(id.to_string().expose_secret(), "the benchmark's identity").unwrap();
        (Codec { compression, recipients }, ids)
    } else {
        (Codec { compression, recipients: vec![] }, Identities::default())
    }
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
    let codecs: Vec<(Codec, Identities)> = codec_specs.iter().map(|s| parse_codec(s)).collect();
    let bytes = mib * MIB;
    let Some(server) = S3sFs::start() else { return };
    server.bucket("bench");
    if find_bin("aws").is_none() {
        s3_support::missing("the AWS CLI (ci/.venv/bin/aws)");
        return;
    }
    let tmp = tempfile::TempDir::new().unwrap();
    let want_local = !bench || std::env::var("LOCKSTEP_BENCH_SOURCE").as_deref() == Ok("local");
    let fleet = if want_local { None } else { support::fleet::Fleet::start("s3_restore bench", 3) };
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
    let want = record(&source);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(24 * 3600))
        .build()
        .unwrap();
    // The artifacts: one per codec asked, and a `none` one for the baseline.
    let artifacts: Vec<String> = codecs.iter().map(|(c, _)| lockstep_backup(&rt, &source, &server, c)).collect();
    let plain = match codecs.iter().position(|(c, _)| c.compression == Compression::None && c.recipients.is_empty()) {
        Some(k) => artifacts[k].clone(),
        None => lockstep_backup(&rt, &source, &server, &Codec::plain()),
    };
    let stored = |name: &str| dir_bytes(&server.object_path("bench", &format!("lockstep/{name}")));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "lockstep S3 restore benchmark{}: {mib} MiB onto {} from s3s-fs on loopback; {pairs} interleaved round(s) \
         (lockstep {} = A, baseline from the `none` artifact = B{}) after a warm-up round; {cores} cores",
        if bench { "" } else { " (smoke run)" },
        source.describe(),
        codec_specs[0],
        codec_specs[1..].iter().map(|c| format!(", lockstep {c}")).collect::<String>(),
    );
    for (spec, name) in codec_specs.iter().zip(&artifacts) {
        println!("artifact {spec}: {name}, {} stored", human(stored(name)));
    }
    println!("artifact for the baseline (none): {plain}, {} stored", human(stored(&plain)));
    if let Some(c) = source.openssh_cipher() {
        println!("baseline ssh: -c {CIPHER}; ssh -v reports server->client cipher: {c}");
    }
    let load_before = loadavg();
    println!("load average before: {load_before}");

    let stage = tmp.path().join("stage");
    let lockstep_run = |k: usize| {
        let r = lockstep_restore(&rt, &source, &server, &artifacts[k], &codecs[k].1);
        check(&source, &want, &format!("lockstep {}", codec_specs[k]));
        r
    };
    let baseline_run = || {
        let r = baseline(&source, &server, &stage, &plain);
        check(&source, &want, "baseline");
        r
    };
    // Warm-up round: page cache, sudo, sshd's first forks, the AWS CLI's imports.
    for k in 0..codecs.len() {
        let _ = lockstep_run(k);
    }
    let _ = baseline_run();

    // runs[0]: lockstep A, runs[1]: baseline, runs[2..]: further codecs.
    let mut runs: Vec<Vec<Row>> = (0..codecs.len() + 1).map(|_| Vec::new()).collect();
    for p in 0..pairs {
        let a = lockstep_run(0);
        let b = baseline_run();
        let mut line = format!(
            "  pair {}: lockstep {} {:6.2}s (transfer {:5.2}s) | baseline {:6.2}s (transfer {:5.2}s) | B/A {:.2}, transfer {:.2}",
            p + 1,
            codec_specs[0],
            a.secs,
            a.transfer,
            b.secs,
            b.transfer,
            b.secs / a.secs,
            b.transfer / a.transfer
        );
        for k in 1..codecs.len() {
            let r = lockstep_run(k);
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
    println!("\n{:<22} {:>28} {:>7} {:>30} {:>22}", "run", "wall min / median / max", "MiB/s", "transfer min / median / max", "peak RSS max (at start)");
    for (name, rs) in names.iter().zip(&runs) {
        let s = stats(&rs.iter().map(|r| r.secs).collect::<Vec<_>>());
        let t = stats(&rs.iter().map(|r| r.transfer).collect::<Vec<_>>());
        let rss = rs.iter().filter_map(|r| r.rss).max();
        let before = rs.iter().filter_map(|r| r.rss_before).max();
        let rss = rss.map(|r| format!("{} ({})", human(r), human(before.unwrap_or(0)))).unwrap_or_else(|| "-".into());
        println!("{:<22} {:>28} {:>7.0} {:>30} {:>22}", name, fmt3(s, "s"), mib as f64 / s.1, fmt3(t, "s"), rss);
    }
    for (name, rs) in names.iter().zip(&runs) {
        if let Some(r) = rs.last() {
            println!("  {name}, last run's phases: {}", r.phases);
        }
    }
    let ratios: Vec<f64> = runs[0].iter().zip(&runs[1]).map(|(a, b)| b.secs / a.secs).collect();
    let transfer: Vec<f64> = runs[0].iter().zip(&runs[1]).map(|(a, b)| b.transfer / a.transfer).collect();
    let (rmin, rmed, _) = stats(&ratios);
    let peak = runs[0].iter().filter_map(|r| r.rss).max().unwrap_or(0);
    println!("\npairwise ratio baseline/lockstep {} (>1: lockstep faster) min / median / max:", codec_specs[0]);
    println!("  end to end (both run the restore scripts): {}", fmt3(stats(&ratios), "x"));
    println!("  transfer only (B: download + ssh tar -x; A: all but lock, restore, unlock, cleanup): {}", fmt3(stats(&transfer), "x"));
    println!("load average before: {load_before}; after: {load_after}");
    println!("lockstep {}: peak RSS max over its runs {}", codec_specs[0], human(peak));
    println!(
        "{}target: >= 1.5x faster than the baseline that verifies nothing, end to end (median pairwise ratio {rmed:.2}, min {rmin:.2}) [{}]",
        if bench { "" } else { "(smoke run, tiny data: not a measurement) " },
        if rmed >= 1.5 { if rmin >= 1.5 { "met" } else { "met at the median, not in every pair" } } else { "NOT met" }
    );
}

//! Benchmark: back up the same data from the instances into S3, lockstep against a
//! bbr-style staged baseline measured in the same run, and print the ratios.
//!
//! ```text
//! cargo bench --bench s3_backup                      1 GiB (LOCKSTEP_BENCH_MIB to change)
//! LOCKSTEP_BENCH_SOURCE=local cargo bench --bench s3_backup   local instances, no SSH
//! ```
//!
//! The instances are the sshd test fleet (`tests/support/fleet.rs`: real sshd, `vcap` with
//! sudo) when it can start here (root, openssh-server), else local directories. The store
//! is a real `s3s-fs` on loopback. The deployment is the demo's (api, blobstore, db), its
//! data filled to the size asked, half compressible text, half incompressible bytes.
//!
//! - **baseline** (what an operator does with bbr): on each instance the backup script
//!   copies the data to `/var/vcap/store/bbr-backup`; `ssh ... sudo tar -c` drains it to a
//!   local file (the jobs in parallel); `sha256sum` of the files on the instance and of the
//!   drained file locally; `tar -cf` of the artifact directory; `aws s3 cp` to the bucket.
//! - **lockstep**: the library's backup (lock, backup scripts, unlock, drain) straight into
//!   the bucket, with `--compression none`, the default `zstd`, and `zstd` + age.
//!
//! Printed per run: wall time, ratio to the baseline, bytes stored, bytes staged on local
//! disk (baseline: its staging directory; lockstep: the `write_bytes` of its own threads in
//! `/proc/self/task/*/io`), peak RSS (lockstep: `VmHWM`, reset before each run). Timings are
//! printed, never asserted.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a 16 MiB smoke run
//! over local instances, so the benchmark keeps working.

#[path = "../tests/s3_support/mod.rs"]
mod s3_support;
#[path = "../tests/support/mod.rs"]
mod support;

use lockstep::store::codec::{Codec, Compression};
use lockstep::frontend::demo::create_deployment;
use lockstep::events::NoEvents;
use lockstep::orchestrate::backup::{backup, BackupOptions};
use lockstep::orchestrate::Ctx;
use lockstep::store::s3::S3Store;
use lockstep::target::{LocalTarget, Target};
use s3_support::{find_bin, S3sFs};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

const MIB: u64 = 1024 * 1024;
/// (instance group, job, share of the data in percent)
const JOBS: [(&str, &str, u64); 3] = [("api", "cloud_controller", 5), ("blobstore", "blobstore", 70), ("db", "postgres", 25)];

/// How to run a command on instance `i` and where its `/` is.
enum Source {
    Local { roots: Vec<String> },
    Fleet { fleet: support::fleet::Fleet },
}

impl Source {
    fn describe(&self) -> &'static str {
        match self {
            Source::Local { .. } => "3 local instances",
            Source::Fleet { .. } => "3 SSH VMs (sshd fleet, vcap + sudo)",
        }
    }

    /// Prefix of `/var/vcap` paths in commands.
    fn root(&self, i: usize) -> String {
        match self {
            Source::Local { roots } => roots[i].clone(),
            Source::Fleet { .. } => String::new(),
        }
    }

    /// Where `/var/vcap/...` of instance `i` is on this machine (to write the data).
    fn host_path(&self, i: usize, vm_path: &str) -> PathBuf {
        match self {
            Source::Local { roots } => Path::new(&roots[i]).join(vm_path.trim_start_matches('/')),
            Source::Fleet { fleet } => fleet.vms[i].host_path(vm_path),
        }
    }

    /// `sh -c CMD` on the instance, as root (`ssh vcap@vm sudo -n sh -c` on the fleet).
    fn remote(&self, i: usize, cmd: &str) -> Command {
        match self {
            Source::Local { .. } => {
                let mut c = Command::new("sh");
                c.args(["-c", cmd]);
                c
            }
            Source::Fleet { fleet } => {
                let vm = &fleet.vms[i];
                let key = fleet.key(support::fleet::KeyKind::Ed25519);
                let mut c = Command::new("ssh");
                c.args(["-o", "BatchMode=yes", "-o"])
                    .arg(format!("UserKnownHostsFile={}", fleet.known_hosts().display()))
                    .arg("-i")
                    .arg(&key.private)
                    .args(["-p", &vm.port.to_string(), &format!("vcap@{}", vm.ip)])
                    .arg(format!("sudo -n sh -c {}", shell_quote(cmd)));
                c
            }
        }
    }

    fn target(&self) -> Box<dyn Target> {
        match self {
            Source::Local { roots } => Box::new(LocalTarget::new(
                "cf",
                JOBS.iter().zip(roots).map(|((g, _, _), r)| (lockstep::model::InstanceId::new(*g, "0"), r.clone())).collect(),
            )),
            Source::Fleet { fleet } => {
                let inv = fleet.inventory("cf", &[("api", 0, 0), ("blobstore", 0, 1), ("db", 0, 2)], "vcap");
                Box::new(lockstep::target::HostsTarget::from_yaml(&inv, &lockstep::target::SshOptions::from_env()).unwrap())
            }
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Fills `path` with `bytes`: the first half a compressible text, the second half
/// incompressible (xorshift) bytes.
fn write_data(path: &Path, bytes: u64) {
    let mut f = std::io::BufWriter::with_capacity(MIB as usize, std::fs::File::create(path).unwrap());
    let text = s3_support::pattern(MIB as usize, 1);
    let mut written = 0;
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut block = vec![0u8; MIB as usize];
    while written < bytes {
        let n = (bytes - written).min(MIB);
        if written < bytes / 2 {
            f.write_all(&text[..n as usize]).unwrap();
        } else {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            f.write_all(&block[..n as usize]).unwrap();
        }
        written += n;
    }
    f.flush().unwrap();
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for p in s3_support::walk(dir) {
        total += std::fs::metadata(dir.join(p)).map(|m| m.len()).unwrap_or(0);
    }
    total
}

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

fn proc_field(file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

struct Row {
    phases: String,
    name: String,
    secs: f64,
    stored: u64,
    staged: u64,
    rss: Option<u64>,
}

/// The bbr-style staged backup, timed end to end.
fn baseline(source: &Source, server: &S3sFs, stage: &Path) -> Row {
    let _ = std::fs::remove_dir_all(stage);
    let art = stage.join("cf_baseline");
    std::fs::create_dir_all(&art).unwrap();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (i, (group, job, _)) in JOBS.iter().enumerate() {
            let art = &art;
            s.spawn(move || {
                let r = source.root(i);
                let staging = format!("{r}/var/vcap/store/bbr-backup/{job}");
                // The backup script.
                run(source.remote(i, &format!("mkdir -p {staging} && cp -a {r}/var/vcap/store/{job}/. {staging}/")), "backup script");
                // Drain to a local file.
                let file = art.join(format!("{group}-0-{job}.tar"));
                let mut c = source.remote(i, &format!("tar -C {staging} -c ."));
                c.stdout(std::fs::File::create(&file).unwrap());
                run(c, "drain");
                // Checksums on the instance and locally.
                let mut c = source.remote(i, &format!("cd {staging} && find . -type f -print0 | xargs -0 sha256sum"));
                c.stdout(Stdio::null());
                run(c, "remote sha256sum");
                let mut c = Command::new("sha256sum");
                c.arg(&file).stdout(Stdio::null());
                run(c, "local sha256sum");
                run(source.remote(i, &format!("rm -rf {r}/var/vcap/store/bbr-backup")), "cleanup");
            });
        }
    });
    std::fs::write(art.join("metadata"), "instances: []\n").unwrap();
    let bundle = stage.join("cf_baseline.tar");
    let mut c = Command::new("tar");
    c.arg("-C").arg(stage).arg("-cf").arg(&bundle).arg("cf_baseline");
    run(c, "tar of the artifact directory");
    let staged = dir_bytes(stage);
    let stored = std::fs::metadata(&bundle).unwrap().len();
    let mut aws = server.aws().expect("aws CLI");
    aws.args(["s3", "cp", "--only-show-errors"]).arg(&bundle).arg("s3://bench/baseline/cf_baseline.tar");
    run(aws, "aws s3 cp");
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(stage);
    Row { name: "baseline: ssh tar > file, sha256sum x2, tar, aws s3 cp".into(), secs, stored, staged, rss: None, phases: String::new() }
}

fn lockstep_run(rt: &tokio::runtime::Runtime, source: &Source, server: &S3sFs, name: &str, codec: Codec) -> Row {
    let mut config = server.config("bench", "lockstep");
    config.part_size_mib = None;
    config.max_retries = None;
    config.retry_timeout_seconds = None;
    let store = S3Store::new(&config).unwrap();
    let target = source.target();
    // Artifacts are named to the second: never two in the same second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Reset the peak RSS to what the process holds now, and note the disk writes so far.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let written_before = own_write_bytes();
    let start = Instant::now();
    let out = rt.block_on(async {
        let ctx = Ctx::new(Arc::new(NoEvents));
        backup(&ctx, target.as_ref(), &store, &BackupOptions { codec, ..Default::default() }).await
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(out.failures.is_empty(), "{name}: {}", out.failures.render());
    let staged = own_write_bytes().saturating_sub(written_before);
    let rss = proc_field("/proc/self/status", "VmHWM:") * 1024;
    let stored = out.marker.map(|m| m.total_size()).unwrap_or(0);
    let phases = out.timings.phases.iter().map(|(k, v)| format!("{k} {:.2}s", v.as_secs_f64())).collect::<Vec<_>>().join(", ");
    Row { name: name.into(), secs, stored, staged, rss: Some(rss), phases }
}

fn human(n: u64) -> String {
    lockstep::frontend::report::human_bytes(n)
}

fn main() {
    // As the lockstep binary does: large buffers (multipart parts) come from mmap and go
    // back to the system when freed, so RSS measures what is held, not what malloc kept.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let mib: u64 = if bench { std::env::var("LOCKSTEP_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024) } else { 16 };
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
    eprintln!("lockstep S3 backup benchmark: {mib} MiB from {} into s3s-fs on loopback{}", source.describe(), if bench { "" } else { " (smoke run)" });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(24 * 3600))
        .build()
        .unwrap();
    let id = age::x25519::Identity::generate();
    let age_codec = Codec { compression: Compression::ZSTD, recipients: vec![id.to_public().to_string()] };
    // Warm the page cache the same way for everyone.
    let _ = lockstep_run(&rt, &source, &server, "warm-up", Codec::plain());
    let base = baseline(&source, &server, &tmp.path().join("stage"));
    let rows = vec![
        lockstep_run(&rt, &source, &server, "lockstep --compression none", Codec::plain()),
        lockstep_run(&rt, &source, &server, "lockstep (zstd, the default)", Codec { compression: Compression::ZSTD, recipients: vec![] }),
        lockstep_run(&rt, &source, &server, "lockstep zstd + age", age_codec),
        lockstep_run(&rt, &source, &server, "lockstep --compression zstd:1", Codec { compression: Compression::Zstd { level: 1 }, recipients: vec![] }),
    ];
    // Baseline again after, so drift in the machine's load shows.
    let base2 = baseline(&source, &server, &tmp.path().join("stage"));
    let base_secs = (base.secs + base2.secs) / 2.0;

    println!("\n{:<56} {:>8} {:>9} {:>13} {:>10} {:>12} {:>9}", "run", "time", "MiB/s", "vs baseline", "stored", "staged", "peak RSS");
    for r in [&base, &base2].into_iter().chain(rows.iter()) {
        println!(
            "{:<56} {:>7.2}s {:>9.0} {:>12.2}x {:>10} {:>12} {:>9}",
            r.name,
            r.secs,
            mib as f64 / r.secs,
            base_secs / r.secs,
            human(r.stored),
            human(r.staged),
            r.rss.map(human).unwrap_or_else(|| "-".into())
        );
    }
    for r in &rows {
        println!("  {}: {}", r.name, r.phases);
    }
    let default = &rows[1];
    let speedup = base_secs / default.secs;
    let peak = rows.iter().filter_map(|r| r.rss).max().unwrap_or(0);
    let staged = rows.iter().map(|r| r.staged).max().unwrap_or(0);
    println!(
        "\nlockstep (zstd) vs the staged baseline (mean of two runs, {base_secs:.2}s): {speedup:.2}x faster; \
         staged on local disk: {}; peak RSS of the lockstep runs: {}",
        human(staged),
        human(peak)
    );
    println!(
        "targets: >= 2.5x faster [{}], 0 bytes staged [{}], peak RSS < 256 MiB [{}]",
        if speedup >= 2.5 { "met" } else { "NOT met" },
        if staged < MIB { "met" } else { "NOT met" },
        if peak < 256 * MIB { "met" } else { "NOT met" }
    );
}

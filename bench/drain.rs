//! Benchmark: the drain alone. lockstep's SSH transport streaming `tar -C DIR -c .` off an
//! instance into the backup's checksumming writers, against what an operator would run:
//! OpenSSH's client, with the cipher lockstep negotiates, into `/dev/null`.
//!
//! ```text
//! cargo bench --bench drain                          1 GiB per stream, 5 pairs per case
//! LOCKSTEP_BENCH_MIB=256 LOCKSTEP_BENCH_PAIRS=9 LOCKSTEP_BENCH_STREAMS=1 cargo bench --bench drain
//! LOCKSTEP_BENCH_TRANSPORT=1 cargo bench --bench drain    also the transport alone (C)
//! ```
//!
//! The instances are the sshd test fleet (`tests/support/fleet.rs`: real sshd in mount
//! namespaces, `vcap` with passwordless sudo). Every VM holds the same file in
//! `/var/vcap/store/bbr-backup/bench/` (hard links: the page cache holds one copy), written
//! as the S3 benchmarks write theirs: half compressible text, half incompressible bytes.
//!
//! - **openssh** (A): `ssh -c <cipher> -i KEY -o UserKnownHostsFile=... vcap@VM
//!   'sudo tar -C DIR -c .' > /dev/null`, with the cipher lockstep negotiated with these
//!   sshd (asked of lockstep's connection, `SshTransport::cipher`, and checked in
//!   `ssh -v`'s output). It checksums nothing.
//! - **lockstep** (B): per stream a new `SshTransport` (connect, authenticate, as a backup
//!   does), then `orchestrate::backup::drain_stream` (the backup's drain: the instance's
//!   `stream_artifact` on a task of its own) into `HashingWriter<Relay<Counting<Encoder<
//!   MeteredWriter<sink>>>>>`: `drain_one`'s writers with `--compression none` (sha256 of
//!   every file for bbr's `metadata`, sha256 of the whole stored stream for `lockstep.json`),
//!   minus the store object. Every run checks the file's checksum.
//! - **openssh+sha** (A2): A piped through `tee >(openssl dgst -sha256) | openssl dgst
//!   -sha256`: OpenSSH plus the two SHA-256 passes lockstep's format needs, by OpenSSL (with
//!   the CPU's SHA instructions). The same work as B: their ratio is what lockstep costs
//!   beyond the hashes.
//! - **serial** (C, with `LOCKSTEP_BENCH_TRANSPORT=1`): B's writers without the relay, all
//!   in the drain's task: what the relay (`store/relay.rs`) buys.
//! - **transport** (D, with `LOCKSTEP_BENCH_TRANSPORT=1`): the same stream into a sink,
//!   nothing checksummed: what the transport costs, next to OpenSSH.
//!
//! Cases: 1 stream (one VM), and 3 streams at once (three VMs), `LOCKSTEP_BENCH_STREAMS`
//! to choose. Runs alternate A B A2 [C D] A B A2 [C D] ...: one warm-up round that is not counted,
//! then `LOCKSTEP_BENCH_PAIRS` rounds (default 5). Before each run, the previous run's
//! processes on the instances must be gone (an orphaned sshd can outlive its client by a
//! second). Printed per case: every round's times, ratios and load average; per side the
//! wall time min / median / max and the throughput at the median; CPU seconds per GiB of
//! the client (lockstep runs in this process: `getrusage(RUSAGE_SELF)` deltas; OpenSSH's
//! `ssh`: `RUSAGE_CHILDREN` deltas, the clients reaped in that run), its context switches
//! (voluntary + involuntary) and minor page faults per GiB, and the instances' CPU per GiB
//! (sshd, sudo, tar: a cgroup holds the VMs' sshd, when one can be made); the pairwise
//! ratios A/B (above 1: lockstep faster) min / median / max; the load average before and
//! after. Timings are printed, never asserted.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does an 8 MiB smoke run,
//! one round per case, or prints a skip notice when the fleet cannot start here.

#[path = "../tests/s3_support/mod.rs"]
mod s3_support;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "common/mod.rs"]
mod common;

use common::{fmt3, loadavg, stats, write_data, MIB};
use lockstep::artifact::tar_hash::{Checksums, HashingWriter};
use lockstep::instance::{InstanceRef, ShellInstance, ARTIFACT_ROOT};
use lockstep::model::InstanceId;
use lockstep::orchestrate::backup::drain_stream;
use lockstep::store::codec::{Codec, Counting, Encoder};
use lockstep::store::metered::MeteredWriter;
use lockstep::store::relay::Relay;
use lockstep::transport::ssh::{SshConfig, SshTransport};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fleet::{Fleet, KeyKind};

const ARTIFACT: &str = "bench";
const FILE: &str = "data.bin";

#[derive(Clone, Copy, Default)]
struct Usage {
    cpu: f64,
    switches: u64,
    faults: u64,
}

fn rusage(who: libc::c_int) -> Usage {
    // SAFETY: getrusage only writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        cpu: secs(ru.ru_utime) + secs(ru.ru_stime),
        switches: (ru.ru_nvcsw + ru.ru_nivcsw) as u64,
        faults: ru.ru_minflt as u64,
    }
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, o: Usage) -> Usage {
        Usage {
            cpu: self.cpu - o.cpu,
            switches: self.switches.saturating_sub(o.switches),
            faults: self.faults.saturating_sub(o.faults),
        }
    }
}

struct Run {
    secs: f64,
    usage: Usage,
    /// CPU seconds of the instances' side (sshd, sudo, tar), when it can be measured.
    server: Option<f64>,
}

impl Run {
    fn line(&self) -> String {
        let srv = self.server.map(|s| format!(" inst {s:5.2}s")).unwrap_or_default();
        format!("{:6.2}s cpu {:5.2}s cs {:6}{srv}", self.secs, self.usage.cpu, self.usage.switches)
    }
}

/// A cgroup holding the VMs' listening sshd, so every process they start (an sshd per
/// connection, sudo, tar; also an sshd orphaned before it exits) counts towards
/// [`ServerCpu::secs`]: the instances' CPU, what a drain costs a production VM. `None`
/// where no cgroup can be made (cgroup v1 `cpuacct`, or v2).
struct ServerCpu {
    dir: PathBuf,
    v1: bool,
}

impl ServerCpu {
    fn new(pids: &[u32]) -> Option<ServerCpu> {
        let name = format!("lockstep-drain-bench-{}", std::process::id());
        for (base, v1) in [("/sys/fs/cgroup/cpuacct", true), ("/sys/fs/cgroup/unified", false), ("/sys/fs/cgroup", false)] {
            let dir = Path::new(base).join(&name);
            if !Path::new(base).join("cgroup.procs").is_file() || std::fs::create_dir(&dir).is_err() {
                continue;
            }
            let group = ServerCpu { dir, v1 };
            if pids.iter().all(|p| std::fs::write(group.dir.join("cgroup.procs"), p.to_string()).is_ok()) && group.secs().is_some() {
                return Some(group);
            }
        }
        None
    }

    fn secs(&self) -> Option<f64> {
        if self.v1 {
            let ns: f64 = std::fs::read_to_string(self.dir.join("cpuacct.usage")).ok()?.trim().parse().ok()?;
            Some(ns / 1e9)
        } else {
            let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
            let us: f64 = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
            Some(us / 1e6)
        }
    }
}

impl Drop for ServerCpu {
    fn drop(&mut self) {
        // The processes back into the parent group, then ours removed.
        let parent = self.dir.parent().unwrap().join("cgroup.procs");
        for pid in std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default().lines() {
            let _ = std::fs::write(&parent, pid);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Waits (at most 10 s) until no process is left in the mount namespaces of the VMs in
/// `vms` but their listening sshd: the unprivileged sshd of a connection is orphaned when
/// its monitor exits and can outlive its client by a second, taking CPU from the next run.
fn wait_quiet(fleet: &Fleet, vms: &[usize]) {
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let listeners: Vec<u32> = vms.iter().map(|&i| fleet.vms[i].pid()).collect();
    let spaces: Vec<_> = listeners.iter().filter_map(|&p| ns(p)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let busy = std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { return false };
            !listeners.contains(&pid) && ns(pid).is_some_and(|n| spaces.contains(&n))
        });
        if !busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The artifact directory on every VM.
fn artifact_dir() -> String {
    format!("{ARTIFACT_ROOT}/{ARTIFACT}")
}

/// `ssh -c CIPHER` to VM `i` as vcap, with the fleet's key and known hosts.
fn ssh(fleet: &Fleet, i: usize, cipher: &str) -> Command {
    let vm = &fleet.vms[i];
    let key = fleet.key(KeyKind::Ed25519);
    let mut c = Command::new("ssh");
    c.args(["-c", cipher, "-i"])
        .arg(&key.private)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", fleet.known_hosts().display()))
        .args(["-o", "BatchMode=yes", "-p", &vm.port.to_string(), &format!("vcap@{}", vm.ip)])
        .stdin(Stdio::null());
    c
}

/// What every run needs.
struct Bench {
    fleet: Fleet,
    rt: tokio::runtime::Runtime,
    configs: Vec<SshConfig>,
    cipher: String,
    expected: Checksums,
    bytes: u64,
    server: Option<ServerCpu>,
}

impl Bench {
    /// Times `f` on `vms` once the previous run's processes are gone; `who` says whose
    /// rusage counts (this process, or the children it reaped).
    fn measure(&self, vms: &[usize], who: libc::c_int, f: impl FnOnce()) -> Run {
        wait_quiet(&self.fleet, vms);
        let server = self.server.as_ref().and_then(ServerCpu::secs);
        let before = rusage(who);
        let start = Instant::now();
        f();
        let secs = start.elapsed().as_secs_f64();
        let usage = rusage(who) - before;
        wait_quiet(&self.fleet, vms);
        let server = server.zip(self.server.as_ref().and_then(ServerCpu::secs)).map(|(a, b)| b - a);
        Run { secs, usage, server }
    }

    /// A: `ssh ... 'sudo tar -C DIR -c .' > /dev/null` on every VM of `vms` at once.
    fn openssh(&self, vms: &[usize]) -> Run {
        self.measure(vms, libc::RUSAGE_CHILDREN, || {
            let children: Vec<_> = vms
                .iter()
                .map(|&i| {
                    let mut c = ssh(&self.fleet, i, &self.cipher);
                    c.arg(format!("sudo tar -C {} -c .", artifact_dir())).stdout(Stdio::null());
                    c.spawn().expect("starting ssh")
                })
                .collect();
            for mut c in children {
                let st = c.wait().unwrap();
                assert!(st.success(), "ssh tar failed: {st}");
            }
        })
    }

    /// A2: A with the format's two SHA-256 passes done by OpenSSL (SHA-NI, as lockstep's):
    /// `ssh ... | tee >(openssl dgst -sha256) | openssl dgst -sha256`, the same work as
    /// lockstep's drain, so the ratio shows what lockstep costs beyond the hashes.
    fn openssh_hashed(&self, vms: &[usize]) -> Run {
        self.measure(vms, libc::RUSAGE_CHILDREN, || {
            let children: Vec<_> = vms
                .iter()
                .map(|&i| {
                    let c = ssh(&self.fleet, i, &self.cipher);
                    let mut words: Vec<String> =
                        std::iter::once(c.get_program()).chain(c.get_args()).map(|a| shell_quote(&a.to_string_lossy())).collect();
                    words.push(shell_quote(&format!("sudo tar -C {} -c .", artifact_dir())));
                    // `wait $!` reaps the process substitution too, so its CPU is counted.
                    let script = format!(
                        "set -o pipefail; {} | tee >(openssl dgst -sha256 >/dev/null) | openssl dgst -sha256 >/dev/null; s=$?; wait $!; exit $s",
                        words.join(" ")
                    );
                    Command::new("bash").args(["-c", &script]).stdin(Stdio::null()).spawn().expect("starting bash")
                })
                .collect();
            for mut c in children {
                let st = c.wait().unwrap();
                assert!(st.success(), "ssh tar | openssl failed: {st}");
            }
        })
    }

    /// B, C or D: lockstep's drain of every VM of `vms` at once, as the backup runs them:
    /// each drain future in this task, each stream on a task of its own.
    fn lockstep(&self, vms: &[usize], how: Writers) -> Run {
        self.measure(vms, libc::RUSAGE_SELF, || {
            let drains = vms.iter().map(|&i| self.drain(i, how));
            self.rt.block_on(futures::future::join_all(drains));
        })
    }

    async fn drain(&self, i: usize, how: Writers) {
        let transport = SshTransport::new(self.configs[i].clone());
        let inst: InstanceRef = Arc::new(ShellInstance::new(InstanceId::new("bench", i.to_string()), Box::new(transport)));
        let encoder = || Encoder::new(MeteredWriter::new(tokio::io::sink()), &Codec::plain()).unwrap();
        let (hasher, counting) = match how {
            Writers::None => {
                let (_, streamed) = drain_stream(&inst, ARTIFACT, tokio::io::sink()).await.unwrap();
                streamed.expect("lockstep drain");
                return;
            }
            Writers::Relayed => {
                let sink = HashingWriter::new(Relay::spawn(Counting::new(encoder(), None)));
                let (sink, streamed) = drain_stream(&inst, ARTIFACT, sink).await.unwrap();
                streamed.expect("lockstep drain");
                let (relay, hasher) = sink.into_parts();
                let (counting, relayed) = relay.finish().await;
                relayed.expect("the relay's writer");
                (hasher, counting)
            }
            Writers::Serial => {
                let sink = HashingWriter::new(Counting::new(encoder(), None));
                let (sink, streamed) = drain_stream(&inst, ARTIFACT, sink).await.unwrap();
                streamed.expect("lockstep drain");
                let (counting, hasher) = sink.into_parts();
                (hasher, counting)
            }
        };
        assert_eq!(hasher.finish().expect("a complete tar stream"), self.expected, "checksums of the drained stream");
        assert!(counting.bytes() > self.bytes, "the stream holds the data");
    }
}

/// What the drained stream goes through.
#[derive(Clone, Copy)]
enum Writers {
    /// The backup's: per-file hashes, then a relay to compression and the stored hash.
    Relayed,
    /// The same writers in the drain's task, no relay.
    Serial,
    /// Nothing: the transport alone.
    None,
}

/// `'word'` for bash.
fn shell_quote(w: &str) -> String {
    format!("'{}'", w.replace('\'', "'\\''"))
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return hex::encode(sha.finalize());
        }
        sha.update(&buf[..n]);
    }
}

fn describe_machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let ssh = Command::new("ssh").arg("-V").output().map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_default();
    format!("{cores} cores, {cpu}; {ssh}; load average {}", loadavg())
}

fn main() {
    lockstep::tune_allocator();
    let bench = std::env::args().any(|a| a == "--bench");
    let env_num = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (mib, pairs) = if bench { (env_num("LOCKSTEP_BENCH_MIB", 1024), env_num("LOCKSTEP_BENCH_PAIRS", 5).max(1) as usize) } else { (8, 1) };
    let transport_too = std::env::var("LOCKSTEP_BENCH_TRANSPORT").as_deref() == Ok("1");
    let cases: Vec<usize> = std::env::var("LOCKSTEP_BENCH_STREAMS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).filter(|&n| n > 0).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 3]);
    let vms = cases.iter().copied().max().unwrap();
    let Some(fleet) = Fleet::start("drain bench", vms) else { return };

    // The data, once, hard-linked into every VM's artifact directory.
    let bytes = mib * MIB;
    let first = fleet.vms[0].host_path(&artifact_dir());
    std::fs::create_dir_all(&first).unwrap();
    write_data(&first.join(FILE), bytes);
    let expected = Checksums::from([(format!("./{FILE}"), sha256_file(&first.join(FILE)))]);
    for vm in &fleet.vms[1..] {
        let dir = vm.host_path(&artifact_dir());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::hard_link(first.join(FILE), dir.join(FILE)).unwrap();
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let configs: Vec<SshConfig> = (0..vms).map(|i| fleet.ssh_config(i, "vcap")).collect();
    // The cipher lockstep negotiates with these sshd, and what OpenSSH then says it uses.
    let cipher = rt.block_on(SshTransport::new(configs[0].clone()).cipher()).expect("connecting to the fleet");
    let out = ssh(&fleet, 0, &cipher).arg("-v").arg("true").output().unwrap();
    assert!(out.status.success(), "ssh -c {cipher}: {}", String::from_utf8_lossy(&out.stderr));
    let openssh_kex = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.split_once("kex: server->client cipher: ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| "(not in ssh -v output)".into());
    let server = ServerCpu::new(&fleet.vms.iter().map(|v| v.pid()).collect::<Vec<_>>());
    let b = Bench { fleet, rt, configs, cipher, expected, bytes, server };

    println!(
        "lockstep drain benchmark{}: {mib} MiB per stream (half text, half random bytes) from the sshd fleet, \
         {pairs} interleaved rounds per case after a warm-up round",
        if bench { "" } else { " (smoke run)" }
    );
    println!("machine: {}", describe_machine());
    println!("cipher lockstep negotiates: {}; `ssh -c {0} -v`: server->client cipher: {openssh_kex}", b.cipher);
    if b.server.is_none() {
        println!("(no cgroup could be made: the instances' CPU is not measured)");
    }

    let names: &[&str] =
        if transport_too { &["openssh", "lockstep", "openssh+sha", "serial", "transport"] } else { &["openssh", "lockstep", "openssh+sha"] };
    for &n in &cases {
        let set: Vec<usize> = (0..n).collect();
        let gib = (n as u64 * bytes) as f64 / (1024.0 * MIB as f64);
        let total_mib = (n as u64 * mib) as f64;
        println!("\ncase: {n} stream(s) at once, {total_mib:.0} MiB in all; load average before: {}", loadavg());
        // One round: A B [C D], in that order every time.
        let round = || {
            let mut runs = vec![b.openssh(&set), b.lockstep(&set, Writers::Relayed), b.openssh_hashed(&set)];
            if transport_too {
                runs.push(b.lockstep(&set, Writers::Serial));
                runs.push(b.lockstep(&set, Writers::None));
            }
            runs
        };
        // Warm-up: page cache, sudo, sshd's first fork.
        round();
        let mut results: Vec<Vec<Run>> = names.iter().map(|_| Vec::new()).collect();
        for p in 0..pairs {
            let runs = round();
            let mut line = format!("  round {}: openssh {}", p + 1, runs[0].line());
            for (name, r) in names.iter().zip(&runs).skip(1) {
                line.push_str(&format!(" | {name} {} ratio {:.2}", r.line(), runs[0].secs / r.secs));
            }
            println!("{line} | load {}", loadavg());
            for (all, r) in results.iter_mut().zip(runs) {
                all.push(r);
            }
        }
        println!(
            "  {:<10} {:>27} {:>6} {:>22} {:>8} {:>8} {:>9}",
            "per GiB:", "wall min / median / max", "MiB/s", "CPU s min / med / max", "ctx sw", "faults", "inst CPU"
        );
        for (name, runs) in names.iter().zip(&results) {
            let of = |f: &dyn Fn(&Run) -> f64| stats(&runs.iter().map(f).collect::<Vec<_>>());
            let secs = of(&|r| r.secs);
            let server = runs.iter().map(|r| r.server).collect::<Option<Vec<f64>>>();
            println!(
                "  {name:<10} {:>27} {:>6.0} {:>22} {:>8.0} {:>8.0} {:>9}",
                fmt3(secs, "s"),
                total_mib / secs.1,
                fmt3(of(&|r| r.usage.cpu / gib), ""),
                of(&|r| r.usage.switches as f64 / gib).1,
                of(&|r| r.usage.faults as f64 / gib).1,
                server.map(|v| format!("{:.2}s", stats(&v).1 / gib)).unwrap_or_else(|| "-".into())
            );
        }
        for (name, runs) in names.iter().zip(&results).skip(1).filter(|(n, _)| !n.starts_with("openssh")) {
            let ratios: Vec<f64> = results[0].iter().zip(runs).map(|(a, b)| a.secs / b.secs).collect();
            println!("  ratio openssh/{name} (above 1: lockstep faster) min / median / max: {}", fmt3(stats(&ratios), ""));
        }
        let same_work: Vec<f64> = results[2].iter().zip(&results[1]).map(|(a, b)| a.secs / b.secs).collect();
        println!(
            "  ratio openssh+sha/lockstep (the same two SHA-256 passes; above 1: lockstep faster) min / median / max: {}",
            fmt3(stats(&same_work), "")
        );
        println!("  (CPU, context switches and faults: medians, per GiB, of the client; inst CPU: of the instances)");
        println!("  load average after: {}", loadavg());
    }
}

//! What the S3 benchmarks share (`#[path = "common/mod.rs"] mod common;`): the demo
//! deployment's jobs and data, the instances they run on (local directories or the sshd
//! fleet, reached by lockstep and by OpenSSH with lockstep's cipher), and the statistics
//! they print. Each bench declares `support` and `s3_support` at its root, as the tests do.
#![allow(dead_code)]

use crate::s3_support;
use crate::support;
use lockstep::target::{LocalTarget, Target};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const MIB: u64 = 1024 * 1024;
/// (instance group, job, share of the data in percent)
pub const JOBS: [(&str, &str, u64); 3] = [("api", "cloud_controller", 5), ("blobstore", "blobstore", 70), ("db", "postgres", 25)];
/// The cipher lockstep negotiates with OpenSSH's sshd: first in its preference list.
pub const CIPHER: &str = "aes256-gcm@openssh.com";

/// How to run a command on instance `i` and where its `/` is.
pub enum Source {
    Local { roots: Vec<String> },
    Fleet { fleet: support::fleet::Fleet },
}

impl Source {
    pub fn describe(&self) -> &'static str {
        match self {
            Source::Local { .. } => "3 local instances",
            Source::Fleet { .. } => "3 SSH VMs (sshd fleet, vcap + sudo)",
        }
    }

    /// Prefix of `/var/vcap` paths in commands.
    pub fn root(&self, i: usize) -> String {
        match self {
            Source::Local { roots } => roots[i].clone(),
            Source::Fleet { .. } => String::new(),
        }
    }

    /// Where `/var/vcap/...` of instance `i` is on this machine (to write the data).
    pub fn host_path(&self, i: usize, vm_path: &str) -> PathBuf {
        match self {
            Source::Local { roots } => Path::new(&roots[i]).join(vm_path.trim_start_matches('/')),
            Source::Fleet { fleet } => fleet.vms[i].host_path(vm_path),
        }
    }

    /// `ssh` to instance `i` with the fleet's key and known hosts, and lockstep's cipher.
    pub fn ssh(fleet: &support::fleet::Fleet, i: usize) -> Command {
        let vm = &fleet.vms[i];
        let key = fleet.key(support::fleet::KeyKind::Ed25519);
        let mut c = Command::new("ssh");
        c.args(["-c", CIPHER, "-o", "BatchMode=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", fleet.known_hosts().display()))
            .arg("-i")
            .arg(&key.private)
            .args(["-p", &vm.port.to_string(), &format!("vcap@{}", vm.ip)]);
        c
    }

    /// `sh -c CMD` on the instance, as root (`ssh vcap@vm 'sudo -n sh -c CMD'` on the fleet).
    pub fn remote(&self, i: usize, cmd: &str) -> Command {
        let mut c = match self {
            Source::Local { .. } => {
                let mut c = Command::new("sh");
                c.args(["-c", cmd]);
                c
            }
            Source::Fleet { fleet } => {
                let mut c = Source::ssh(fleet, i);
                c.arg(format!("sudo -n sh -c {}", shell_quote(cmd)));
                c
            }
        };
        c.stdin(Stdio::null());
        c
    }

    pub fn target(&self) -> Box<dyn Target> {
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

    /// What `ssh -v -c CIPHER` says the server->client cipher is (fleet only).
    pub fn openssh_cipher(&self) -> Option<String> {
        let Source::Fleet { fleet } = self else { return None };
        let out = Source::ssh(fleet, 0).arg("-v").arg("true").stdin(Stdio::null()).output().ok()?;
        Some(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .find_map(|l| l.split_once("kex: server->client cipher: ").map(|(_, r)| r.to_string()))
                .unwrap_or_else(|| format!("(not in ssh -v output; exit {})", out.status)),
        )
    }
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn output(mut c: Command, what: &str) -> Vec<u8> {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

pub fn run(c: Command, what: &str) {
    output(c, what);
}

/// Fills `path` with `bytes`: the first half a compressible text, the second half
/// incompressible (xorshift) bytes.
pub fn write_data(path: &Path, bytes: u64) {
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

pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for p in s3_support::walk(dir) {
        total += std::fs::metadata(dir.join(p)).map(|m| m.len()).unwrap_or(0);
    }
    total
}


pub fn proc_field(file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

pub fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

pub fn human(n: u64) -> String {
    lockstep::frontend::report::human_bytes(n)
}

pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    (s[0], median, s[n - 1])
}

pub fn fmt3((lo, med, hi): (f64, f64, f64), unit: &str) -> String {
    format!("{lo:.2}{unit} / {med:.2}{unit} / {hi:.2}{unit}")
}

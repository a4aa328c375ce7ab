//! A fleet of fake VMs for the tests: each "VM" is a real OpenSSH `sshd` in its own mount
//! namespace, so every instance has its own `/var/vcap` at the real path:
//!
//! ```text
//! unshare --mount --propagation private sh -c \
//!   'mount --bind ROOT/var/vcap /var/vcap && exec /usr/sbin/sshd -D -e -f CONFIG -o ListenAddress=IP:PORT'
//! ```
//!
//! Each VM listens on its own loopback address (`127.B.C.D`, B from the test process id so
//! parallel test binaries do not collide, C.D from a counter) on a port found free by
//! binding, has its own ed25519 host key, and accepts the fleet's client keys for `root`
//! and for `vcap` (a non-root user with passwordless sudo, as on a stemcell). sshd logs to
//! `ROOT/sshd.log` (`-e`, `LogLevel VERBOSE`), which tests read to count logins.
//!
//! Needs root, `sshd`, `unshare`, `ssh-keygen` and the `vcap` user: `ci/setup` installs
//! them. Without them [`Fleet::start`] prints a skip notice and returns `None`, unless
//! `LOCKSTEP_REQUIRE_SERVERS=1` (set by `ci/test`), where it panics instead.

use lockstep::transport::ssh::{ClientKey, HostKeyPolicy, KeySource, Secret, SshConfig, SshTransport};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const SSHD: &str = "/usr/sbin/sshd";

/// Client key types the fleet can generate (lazily, on first use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Ed25519,
    Rsa,
    /// RSA in the old PEM (PKCS#1) form, as BOSH generates them.
    RsaPem,
    Ecdsa,
    /// ed25519 protected by [`PASSPHRASE`].
    Ed25519Passphrase,
    /// A valid key that is *not* in authorized_keys.
    Unauthorized,
}

pub const PASSPHRASE: &str = "correct horse battery staple";

#[derive(Debug, Clone)]
pub struct KeyFiles {
    pub private: PathBuf,
    pub passphrase: Option<String>,
}

impl KeyFiles {
    pub fn load(&self) -> ClientKey {
        ClientKey::load(&KeySource::Path(self.private.clone()), self.passphrase.clone().map(Secret::new).as_ref()).unwrap()
    }
}

pub struct Fleet {
    pub vms: Vec<Vm>,
    keys: Mutex<HashMap<KeyKind, KeyFiles>>,
    authorized_keys: PathBuf,
    known_hosts: PathBuf,
    dir: TempDir,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_ip() -> String {
    let b = 1 + std::process::id() % 250;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("127.{b}.{}.{}", (n / 250) % 250, 2 + n % 250)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn in_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Why the fleet cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("the tests are not running as root (sshd and mount namespaces need it)".into());
    }
    if !Path::new(SSHD).is_file() {
        return Some(format!("{SSHD} is missing (openssh-server)"));
    }
    for cmd in ["unshare", "ssh-keygen", "sudo", "ssh"] {
        if !in_path(cmd) {
            return Some(format!("`{cmd}` is not installed"));
        }
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if !passwd.lines().any(|l| l.starts_with("vcap:")) {
        return Some("the user vcap does not exist".into());
    }
    if !Path::new("/etc/sudoers.d/lockstep-vcap").is_file() {
        return Some("vcap has no passwordless sudo (/etc/sudoers.d/lockstep-vcap)".into());
    }
    None
}

/// `None` (after a skip notice) when the fleet cannot run here and servers are optional.
pub fn available(test: &str) -> bool {
    match unavailable() {
        None => true,
        Some(why) => {
            if std::env::var("LOCKSTEP_REQUIRE_SERVERS").as_deref() == Ok("1") {
                panic!("{test}: the sshd test fleet cannot start: {why}. Run ci/setup (as root) first.");
            }
            eprintln!("SKIP {test}: the sshd test fleet cannot start: {why}. Run ci/setup (as root) to enable it.");
            false
        }
    }
}

impl Fleet {
    /// Starts `n` VMs, each ready to accept connections. `None` when the fleet cannot run
    /// here and `LOCKSTEP_REQUIRE_SERVERS` is not `1`.
    pub fn start(test: &str, n: usize) -> Option<Fleet> {
        if !available(test) {
            return None;
        }
        for d in ["/var/vcap", "/run/sshd"] {
            std::fs::create_dir_all(d).unwrap();
        }
        let dir = TempDir::with_prefix("lockstep-fleet-").unwrap();
        // vcap must be able to read authorized_keys: sshd reads it as the user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let authorized_keys = dir.path().join("authorized_keys");
        std::fs::write(&authorized_keys, "").unwrap();
        std::fs::set_permissions(&authorized_keys, std::fs::Permissions::from_mode(0o644)).unwrap();
        let fleet_known_hosts = dir.path().join("known_hosts");
        let mut vms = Vec::new();
        for i in 0..n {
            vms.push(Vm::start(dir.path(), i, &authorized_keys));
        }
        let known: String = vms.iter().map(|v| format!("{} {}\n", v.known_hosts_name(), v.host_key_line)).collect();
        std::fs::write(&fleet_known_hosts, known).unwrap();
        let fleet = Fleet { vms, keys: Mutex::new(HashMap::new()), authorized_keys, known_hosts: fleet_known_hosts, dir };
        fleet.key(KeyKind::Ed25519);
        Some(fleet)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A known_hosts file with every VM's host key (`[ip]:port ssh-ed25519 AAAA...`).
    pub fn known_hosts(&self) -> PathBuf {
        self.known_hosts.clone()
    }

    /// A client key of this kind, generated on first use and (except
    /// [`KeyKind::Unauthorized`]) authorized for root and vcap on every VM.
    pub fn key(&self, kind: KeyKind) -> KeyFiles {
        let mut keys = self.keys.lock().unwrap();
        if let Some(k) = keys.get(&kind) {
            return k.clone();
        }
        let kd = self.dir.path().join("keys");
        std::fs::create_dir_all(&kd).unwrap();
        let path = kd.join(format!("{kind:?}").to_lowercase());
        let (args, passphrase): (&[&str], Option<&str>) = match kind {
            KeyKind::Ed25519 | KeyKind::Unauthorized => (&["-t", "ed25519"], None),
            KeyKind::Rsa => (&["-t", "rsa", "-b", "2048"], None),
            KeyKind::RsaPem => (&["-t", "rsa", "-b", "2048", "-m", "PEM"], None),
            KeyKind::Ecdsa => (&["-t", "ecdsa", "-b", "256"], None),
            KeyKind::Ed25519Passphrase => (&["-t", "ed25519"], Some(PASSPHRASE)),
        };
        run(Command::new("ssh-keygen")
            .args(["-q", "-C", "lockstep-test", "-N", passphrase.unwrap_or("")])
            .args(args)
            .arg("-f")
            .arg(&path));
        if kind != KeyKind::Unauthorized {
            let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
            let mut all = std::fs::read_to_string(&self.authorized_keys).unwrap();
            all.push_str(&public);
            std::fs::write(&self.authorized_keys, all).unwrap();
        }
        let files = KeyFiles { private: path, passphrase: passphrase.map(str::to_string) };
        keys.insert(kind, files.clone());
        files
    }

    /// The config to reach VM `i` as `user` with the default key, checking its host key
    /// against the fleet's known_hosts.
    pub fn ssh_config(&self, i: usize, user: &str) -> SshConfig {
        let vm = &self.vms[i];
        SshConfig::new(
            vm.ip.clone(),
            vm.port,
            user,
            self.key(KeyKind::Ed25519).load(),
            HostKeyPolicy::KnownHosts(self.known_hosts()),
        )
    }

    pub fn transport(&self, i: usize, user: &str) -> SshTransport {
        SshTransport::new(self.ssh_config(i, user))
    }

    /// An inventory for `lockstep hosts`: one instance per `(group, index, vm)`, as `user`
    /// with the default key, host keys pinned (`host_public_key`).
    pub fn inventory(&self, name: &str, instances: &[(&str, u32, usize)], user: &str) -> String {
        let key = self.key(KeyKind::Ed25519);
        let mut y = format!("name: {name}\ninstances:\n");
        for (group, index, vm) in instances {
            let vm = &self.vms[*vm];
            y.push_str(&format!(
                "- group: {group}\n  index: {index}\n  address: {}\n  username: {user}\n  private_key_path: {}\n  host_public_key: \"{}\"\n",
                vm.address(),
                key.private.display(),
                vm.host_key_line
            ));
        }
        y
    }

    /// An OpenSSH SOCKS5 tunnel (`ssh -N -D`) through VM `i`, for `BOSH_ALL_PROXY=socks5://`.
    pub fn socks_tunnel(&self, i: usize) -> Tunnel {
        let vm = &self.vms[i];
        let ip = next_ip();
        let port = free_port(&ip);
        let key = self.key(KeyKind::Ed25519);
        let log = std::fs::File::create(self.dir.path().join(format!("tunnel-{port}.log"))).unwrap();
        let child = Command::new("ssh")
            .args(["-N", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ExitOnForwardFailure=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(&key.private)
            .arg("-p")
            .arg(vm.port.to_string())
            .arg("-D")
            .arg(format!("{ip}:{port}"))
            .arg(format!("root@{}", vm.ip))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut t = Tunnel { ip, port, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect((t.ip.as_str(), t.port)).is_ok() {
                break;
            }
            if let Some(st) = t.child.try_wait().unwrap() {
                panic!("ssh -D exited early ({st})");
            }
            assert!(Instant::now() < deadline, "the SOCKS tunnel did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
        t
    }
}

pub struct Tunnel {
    pub ip: String,
    pub port: u16,
    child: Child,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

pub struct Vm {
    pub ip: String,
    pub port: u16,
    /// Stands in for `/` for the files under `/var/vcap` (bind-mounted there).
    pub root: PathBuf,
    /// `ssh-ed25519 AAAA...`
    pub host_key_line: String,
    /// `SHA256:...`
    pub host_key_fingerprint: String,
    pub host_key_path: PathBuf,
    log: PathBuf,
    child: Mutex<Child>,
}

/// A host name only the VMs resolve (to 127.0.0.1, in their own `/etc/hosts`): what
/// reaches it from this machine went through a VM, as through a jumpbox.
pub const FLEET_ONLY_HOST: &str = "director.fleet.test";

impl Vm {
    fn start(fleet_dir: &Path, i: usize, authorized_keys: &Path) -> Vm {
        let root = fleet_dir.join(format!("vm{i}"));
        let vcap = root.join("var/vcap");
        for d in ["jobs", "store", "data", "sys/log"] {
            std::fs::create_dir_all(vcap.join(d)).unwrap();
        }
        // Each VM has its own home directories (bind-mounted in its namespace), so the
        // dotfiles of this machine's users (a root .bashrc running pyenv, say) stay out.
        for (home, mode) in [("home-root", 0o700), ("home-vcap", 0o755)] {
            std::fs::create_dir_all(root.join(home)).unwrap();
            std::fs::set_permissions(root.join(home), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let hosts = root.join("hosts");
        let mut known = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        known.push_str(&format!("\n127.0.0.1 {FLEET_ONLY_HOST}\n"));
        std::fs::write(&hosts, known).unwrap();
        let host_key = root.join("ssh_host_ed25519_key");
        run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", &format!("vm{i}"), "-f"]).arg(&host_key));
        let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let host_key_line = public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let out = Command::new("ssh-keygen").arg("-lf").arg(host_key.with_extension("pub")).output().unwrap();
        let host_key_fingerprint = String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap().to_string();
        let config = root.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "HostKey {}\nAuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nUsePAM no\nPidFile none\nStrictModes no\nPermitRootLogin prohibit-password\n\
                 LogLevel VERBOSE\nAllowTcpForwarding yes\nMaxStartups 200\n",
                host_key.display(),
                authorized_keys.display()
            ),
        )
        .unwrap();
        let log = root.join("sshd.log");
        let ip = next_ip();
        for attempt in 0.. {
            let port = free_port(&ip);
            let logf = std::fs::File::create(&log).unwrap();
            let script = format!(
                "mount --bind '{vcap}' /var/vcap && mount --bind '{r}/home-root' /root && \
                 if [ -d /home/vcap ]; then mount --bind '{r}/home-vcap' /home/vcap; fi && \
                 mount --bind '{r}/hosts' /etc/hosts && \
                 exec {SSHD} -D -e -f '{config}' -o ListenAddress={ip}:{port}",
                vcap = vcap.display(),
                r = root.display(),
                config = config.display()
            );
            let mut child = Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logf)
                .spawn()
                .expect("starting unshare/sshd");
            match wait_ready(&mut child, &ip, port) {
                Ok(()) => {
                    return Vm {
                        ip,
                        port,
                        root,
                        host_key_line,
                        host_key_fingerprint,
                        host_key_path: host_key,
                        log,
                        child: Mutex::new(child),
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(attempt < 3, "sshd for vm{i} on {ip}:{port} did not start: {why}\n{log_text}");
                }
            }
        }
        unreachable!()
    }

    /// `ip:port`
    pub fn address(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// `[ip]:port`, as in known_hosts.
    pub fn known_hosts_name(&self) -> String {
        format!("[{}]:{}", self.ip, self.port)
    }

    /// The host path of a path on the VM under `/var/vcap`.
    pub fn host_path(&self, vm_path: &str) -> PathBuf {
        assert!(vm_path.starts_with("/var/vcap"), "only /var/vcap is the VM's own: {vm_path}");
        self.root.join(vm_path.trim_start_matches('/'))
    }

    /// Writes `/var/vcap/jobs/<job>/bin/bbr/<script>` (mode 0755) with `body` as is.
    pub fn install_script(&self, job: &str, script: &str, body: &str) {
        let dir = self.host_path(&format!("/var/vcap/jobs/{job}/bin/bbr"));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(script);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Copies a tree laid out as `SRC/var/vcap/...` onto the VM.
    pub fn install_tree(&self, src_root: &Path) {
        run(Command::new("cp").arg("-a").arg(src_root.join("var/vcap/.")).arg(self.root.join("var/vcap/")));
    }

    pub fn read(&self, vm_path: &str) -> Vec<u8> {
        std::fs::read(self.host_path(vm_path)).unwrap_or_else(|e| panic!("reading {vm_path}: {e}"))
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Successful logins so far (one per SSH connection).
    pub fn accepted_logins(&self) -> usize {
        self.log().lines().filter(|l| l.contains("Accepted publickey")).count()
    }

    /// The listening sshd's process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    fn signal_tree(&self, sig: &str) {
        signal(&tree(self.pid()), sig);
    }

    /// Kills the sshd processes serving connections, not the listener: every open
    /// connection drops, new ones are accepted.
    pub fn drop_connections(&self) {
        let pids = tree(self.pid());
        signal(&pids[1..], "KILL");
    }

    /// `kill -STOP` sshd and every process it started: the VM hangs (TCP still accepts).
    pub fn freeze(&self) {
        self.signal_tree("STOP");
    }

    pub fn thaw(&self) {
        self.signal_tree("CONT");
    }

    /// `kill -KILL` sshd and every process it started: the VM is gone.
    pub fn kill(&self) {
        self.signal_tree("KILL");
        let _ = self.child.lock().unwrap().wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill").arg("-s").arg(sig).args(pids.iter().map(u32::to_string)).stderr(Stdio::null()).status();
}

/// `kill -KILL` a process and all its descendants (usable from an event sink).
pub fn kill_tree(pid: u32) {
    signal(&tree(pid), "KILL");
}

/// `pid` and all its descendants, parents first.
fn tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
            // pid (comm) state ppid ...: comm may hold spaces and parentheses.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// Waits until sshd answers on `ip:port` with an SSH banner.
fn wait_ready(child: &mut Child, ip: &str, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("sshd exited: {st}"));
        }
        if let Ok(s) = TcpStream::connect((ip, port)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut line = String::new();
            if BufReader::new(s.take(256)).read_line(&mut line).is_ok() && line.starts_with("SSH-2.0-") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("no SSH banner within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

//! Real S3-compatible servers for the tests, on loopback, started per test and stopped by
//! PID when dropped:
//!
//! - [`S3sFs`]: `s3s-fs` 0.14.1, which checks SigV4 signatures and stores objects as plain
//!   files under its root (so a test can damage a stored object, or check that an aborted
//!   upload left no part behind). Starts in about 50 ms.
//! - [`Moto`]: moto's server 5.2.5 with TLS, its certificate signed by a CA made for the
//!   test (custom CA bundle, `skip_ssl_verification`). Starts in about 4 s.
//!
//! - [`fault_proxy::FaultProxy`]: an HTTP proxy in front of either that answers chosen
//!   requests with a fault (a 500, a dropped connection).
//!
//! `ci/setup` installs both. When one is missing the test prints a skip notice and
//! returns, unless `LOCKSTEP_REQUIRE_SERVERS=1` (set by `ci/test`): then it fails.
#![allow(dead_code)]

pub mod fault_proxy;

use lockstep::store::url::S3Config;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const ACCESS_KEY: &str = "lockstep-test-access-key";
pub const REGION: &str = "us-east-1";

pub fn require_servers() -> bool {
    std::env::var("LOCKSTEP_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

/// Prints a skip notice, or fails under `LOCKSTEP_REQUIRE_SERVERS=1`.
pub fn missing(what: &str) {
    let msg = format!("{what} is not installed: run ci/setup");
    if require_servers() {
        panic!("{msg} (LOCKSTEP_REQUIRE_SERVERS=1: tests that need it fail instead of skipping)");
    }
    eprintln!("SKIP: {msg}");
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A program from PATH, `~/.cargo/bin` or `ci/.venv/bin`.
pub fn find_bin(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo"))) {
        dirs.push(home.join("bin"));
    }
    dirs.insert(0, repo_root().join("ci/.venv/bin"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within {timeout:?}");
}

/// Kills the server with the test's own thread (a test that panics before dropping the
/// guard still leaves no server behind).
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub fn random_secret() -> String {
    let mut b = [0u8; 16];
    getrandom(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").unwrap().read_exact(buf).unwrap();
}

/// An `s3s-fs` server on 127.0.0.1 with a fresh root directory.
pub struct S3sFs {
    child: Option<Child>,
    pub port: u16,
    pub root: TempDir,
    pub secret: String,
}

impl S3sFs {
    pub fn start() -> Option<S3sFs> {
        S3sFs::start_with_secret(&random_secret())
    }

    /// With a secret key of the test's choosing (quotes, backslashes: what breaks JSON).
    pub fn start_with_secret(secret: &str) -> Option<S3sFs> {
        let Some(bin) = find_bin("s3s-fs") else {
            missing("s3s-fs (cargo install s3s-fs@0.14.1 --features binary)");
            return None;
        };
        let root = TempDir::new().unwrap();
        let port = free_port();
        let secret = secret.to_string();
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ACCESS_KEY, "--secret-key", &secret])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting s3s-fs");
        wait_listening(port, &mut child, "s3s-fs", Duration::from_secs(10));
        Some(S3sFs { child: Some(child), port, root, secret })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (s3s-fs: a directory under its root).
    pub fn bucket(&self, name: &str) -> &Self {
        std::fs::create_dir_all(self.root.path().join(name)).unwrap();
        self
    }

    /// Where s3s-fs keeps an object.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    /// Every file under the server's root (objects, and any part files left behind).
    pub fn files(&self) -> Vec<String> {
        walk(self.root.path())
    }

    pub fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: Some(self.endpoint()),
            region_name: Some(REGION.into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(self.secret.clone()),
            use_path_style: true,
            // Small parts so multipart paths run on small data; quick give-up when stopped.
            part_size_mib: Some(5),
            max_retries: Some(2),
            retry_timeout_seconds: Some(5),
            ..Default::default()
        }
    }

    /// A `--store` URL for the CLI; credentials go in [`S3sFs::env`].
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint=http://127.0.0.1:{}&use_path_style=true&region_name={REGION}&max_retries=2&retry_timeout_seconds=5",
            self.port
        )
    }

    /// The standard AWS variables for this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_DEFAULT_REGION", REGION.to_string()),
            ("AWS_REGION", REGION.to_string()),
        ]
    }

    /// Stops the server now (as a crash or network loss would look to a client).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and root (after [`S3sFs::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let bin = find_bin("s3s-fs").unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--access-key", ACCESS_KEY, "--secret-key", &self.secret])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting s3s-fs");
        wait_listening(self.port, &mut child, "s3s-fs", Duration::from_secs(10));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// An AWS CLI command against this server.
    pub fn aws(&self) -> Option<Command> {
        let Some(aws) = find_bin("aws") else {
            missing("the AWS CLI (ci/.venv/bin/aws)");
            return None;
        };
        let mut cmd = Command::new(aws);
        cmd.args(["--endpoint-url", &self.endpoint()]).envs(self.env());
        Some(cmd)
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// moto's server with TLS on 127.0.0.1, its certificate signed by a test CA.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    pub dir: TempDir,
    tls: bool,
}

impl Moto {
    /// moto over plain HTTP (every AWS service it has, STS included, on one port).
    pub fn start() -> Option<Moto> {
        let Some(bin) = find_bin("moto_server") else {
            missing("moto_server 5.2.5 (ci/.venv)");
            return None;
        };
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting moto_server");
        wait_listening(port, &mut child, "moto_server", Duration::from_secs(60));
        Some(Moto { child: Some(child), port, dir, tls: false })
    }

    pub fn start_tls() -> Option<Moto> {
        let Some(bin) = find_bin("moto_server") else {
            missing("moto_server 5.2.5 (ci/.venv)");
            return None;
        };
        let Some(openssl) = find_bin("openssl") else {
            missing("openssl");
            return None;
        };
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| {
            let out = Command::new(&openssl).args(args).current_dir(d).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=lockstep test CA"]);
        run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
        std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n").unwrap();
        run(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"]);
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string(), "-c"])
            .arg(d.join("server.pem"))
            .arg("-k")
            .arg(d.join("server.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting moto_server");
        wait_listening(port, &mut child, "moto_server", Duration::from_secs(60));
        Some(Moto { child: Some(child), port, dir, tls: true })
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }

    pub fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: Some(self.endpoint()),
            region_name: Some(REGION.into()),
            // moto accepts any credentials.
            access_key_id: Some("moto-key".into()),
            secret_access_key: Some("moto-secret".into()),
            use_path_style: true,
            part_size_mib: Some(5),
            max_retries: Some(1),
            retry_timeout_seconds: Some(5),
            ..Default::default()
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deterministic, moderately compressible bytes (a repeated text with a counter).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = seed;
    while out.len() < len {
        out.extend_from_slice(format!("{i:08x} lockstep test data {} ", i.wrapping_mul(2654435761) >> 7).as_bytes());
        i = i.wrapping_add(1);
    }
    out.truncate(len);
    out
}

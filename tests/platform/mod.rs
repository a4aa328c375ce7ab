//! Test support for the sample platform (`examples/sample-platform`): a private PostgreSQL
//! cluster (`ci/postgres`), platforms of three instances installed with the platform's own
//! installer, its API process, its integrity checker, and the logs the measurements come from.
//! Every process started here is stopped by its PID, on `Drop` too.
#![allow(dead_code)]

use anyhow::{anyhow, bail, Context};
use lockstep::model::InstanceId;
use lockstep::target::LocalTarget;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sample_dir() -> PathBuf {
    repo().join("examples/sample-platform")
}

/// `LOCKSTEP_REQUIRE_SERVERS=1` (ci/test sets it): a test that cannot start its servers fails
/// instead of skipping.
pub fn servers_required() -> bool {
    std::env::var("LOCKSTEP_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

/// Runs a command to completion; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Python that runs the platform's API and checker: `$LOCKSTEP_PYTHON`, else the venv
/// `ci/setup` makes; it must import psycopg.
pub fn python() -> anyhow::Result<PathBuf> {
    let python = match std::env::var_os("LOCKSTEP_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo().join("ci/.venv/bin/python"),
    };
    run(Command::new(&python).args(["-c", "import psycopg"]))
        .with_context(|| format!("{} cannot import psycopg (run ci/setup)", python.display()))?;
    Ok(python)
}

/// A PostgreSQL cluster of our own on 127.0.0.1, started by `ci/postgres`; stopped on drop.
pub struct Postgres {
    dir: PathBuf,
    pub host: String,
    pub port: String,
    pub user: String,
    pub password: String,
}

impl Postgres {
    pub fn start(dir: &Path) -> anyhow::Result<Postgres> {
        let out = run(Command::new(repo().join("ci/postgres")).arg("start").arg(dir))?;
        let get = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("ci/postgres start printed no {key}: {out}"))
        };
        Ok(Postgres { dir: dir.to_path_buf(), host: get("PGHOST")?, port: get("PGPORT")?, user: get("PGUSER")?, password: get("PGPASSWORD")? })
    }

    /// `KEY=VALUE` settings for a job's config/env (without PGDATABASE).
    pub fn conn(&self) -> Vec<String> {
        vec![
            format!("PGHOST={}", self.host),
            format!("PGPORT={}", self.port),
            format!("PGUSER={}", self.user),
            format!("PGPASSWORD={}", self.password),
        ]
    }

    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        run(Command::new("psql")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql])
            .env("PGHOST", &self.host)
            .env("PGPORT", &self.port)
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // ci/postgres stops the server by the PID in its postmaster.pid.
        if let Err(e) = run(Command::new(repo().join("ci/postgres")).arg("stop").arg(&self.dir)) {
            eprintln!("stopping PostgreSQL in {}: {e:#}", self.dir.display());
        }
    }
}

/// One instance of a platform: its id, its root (a directory standing in for `/`) and its
/// /var/vcap as this machine sees it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: InstanceId,
    pub root: PathBuf,
    pub vcap: PathBuf,
}

/// A sample platform: api/0 (cloud_controller), blobstore/0 (blobstore), uaa/0 (uaa), and its
/// two databases `<name>_cc` and `<name>_uaa`.
pub struct Platform {
    pub name: String,
    pub instances: Vec<Instance>,
    pub cc_db: String,
    pub uaa_db: String,
    conn: Vec<String>,
    /// The roots were made for this platform (removed by `destroy`), rather than lent
    /// (a VM of the sshd fleet, whose /var/vcap is only emptied).
    owns_roots: bool,
}

pub const JOBS: [(&str, &str); 3] = [("api", "cloud_controller"), ("blobstore", "blobstore"), ("uaa", "uaa")];

impl Platform {
    /// Creates the databases and installs the jobs into `base/<group>-0/var/vcap`.
    pub fn create(pg: &Postgres, base: &Path, name: &str) -> anyhow::Result<Platform> {
        let roots = JOBS.iter().map(|(group, _)| base.join(format!("{group}-0"))).collect();
        Self::create_at(pg, roots, name, true)
    }

    /// Creates the databases and installs the jobs into `roots[k]/var/vcap` for api, blobstore
    /// and uaa; `owns_roots: false` for roots lent by the fleet (their /var/vcap must be empty).
    pub fn create_at(pg: &Postgres, roots: Vec<PathBuf>, name: &str, owns_roots: bool) -> anyhow::Result<Platform> {
        let instances = JOBS
            .iter()
            .zip(roots)
            .map(|((group, _), root)| Instance { id: InstanceId::new(*group, "0"), vcap: root.join("var/vcap"), root })
            .collect();
        let p = Platform {
            name: name.to_string(),
            instances,
            cc_db: format!("{name}_cc"),
            uaa_db: format!("{name}_uaa"),
            conn: pg.conn(),
            owns_roots,
        };
        for db in [&p.cc_db, &p.uaa_db] {
            pg.psql("postgres", &format!("CREATE DATABASE \"{db}\""))?;
        }
        p.install("cloud_controller", &[])?;
        p.install("blobstore", &[])?;
        p.install("uaa", &[])?;
        Ok(p)
    }

    pub fn vcap(&self, group: &str) -> &Path {
        &self.instances.iter().find(|i| i.id.group == group).expect("known group").vcap
    }

    /// (Re)installs a job with its configuration plus `extra` settings.
    pub fn install(&self, job: &str, extra: &[String]) -> anyhow::Result<()> {
        let mut config: Vec<String> = Vec::new();
        let group = match job {
            "cloud_controller" => {
                config.extend(self.conn.iter().cloned());
                config.push(format!("PGDATABASE={}", self.cc_db));
                config.push(format!("UAA_PGDATABASE={}", self.uaa_db));
                config.push(format!("BLOBSTORE_DIR={}", self.vcap("blobstore").join("store/blobstore").display()));
                config.push(format!("UAA_LOCK_FILE={}", self.vcap("uaa").join("data/uaa/locked").display()));
                config.push(format!("BLOBSTORE_LOCK_FILE={}", self.vcap("blobstore").join("data/blobstore/locked").display()));
                "api"
            }
            "uaa" => {
                config.extend(self.conn.iter().cloned());
                config.push(format!("PGDATABASE={}", self.uaa_db));
                "uaa"
            }
            "blobstore" => "blobstore",
            other => bail!("unknown job {other}"),
        };
        config.extend(extra.iter().cloned());
        run(Command::new(sample_dir().join("install")).arg(self.vcap(group)).arg(job).args(&config))?;
        Ok(())
    }

    /// The platform as lockstep's local transport sees it: each root stands in for `/`.
    pub fn local_target(&self) -> LocalTarget {
        LocalTarget::new("cf", self.instances.iter().map(|i| (i.id.clone(), i.root.to_string_lossy().into_owned())).collect())
    }

    /// Waits (polling the databases, at most 60 s) until the API has built up at least
    /// `apps` apps and `users` users, so a backup catches a platform in its steady state.
    pub fn wait_for_data(&self, pg: &Postgres, apps: u64, users: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let have_apps: u64 = pg.psql(&self.cc_db, "SELECT count(*) FROM apps")?.trim().parse()?;
            let have_users: u64 = pg.psql(&self.uaa_db, "SELECT count(*) FROM users")?.trim().parse()?;
            if have_apps >= apps && have_users >= users {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("after 60 s the API has made {have_apps} apps and {have_users} users (waiting for {apps} and {users})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn start_api(&self, python: &Path, args: &[String]) -> anyhow::Result<Api> {
        Api::start(python, self.vcap("api"), args)
    }

    /// Runs the integrity checker; the violations it printed.
    pub fn check(&self, python: &Path) -> anyhow::Result<Vec<Violation>> {
        let out = Command::new(python)
            .arg(sample_dir().join("check.py"))
            .arg(self.vcap("api"))
            .stdin(Stdio::null())
            .output()
            .context("running check.py")?;
        match out.status.code() {
            Some(0) | Some(1) => {}
            _ => bail!("check.py could not check ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(kind, detail)| Violation { kind: kind.to_string(), detail: detail.to_string() })
            .collect())
    }

    /// Drops the databases and removes the instance roots.
    pub fn destroy(self, pg: &Postgres) -> anyhow::Result<()> {
        for db in [&self.cc_db, &self.uaa_db] {
            pg.psql("postgres", &format!("DROP DATABASE IF EXISTS \"{db}\""))?;
        }
        for i in &self.instances {
            if self.owns_roots {
                std::fs::remove_dir_all(&i.root).with_context(|| format!("removing {}", i.root.display()))?;
            } else {
                empty_dir(&i.vcap)?;
            }
        }
        Ok(())
    }
}

/// Removes everything inside `dir`, keeping `dir` itself (a VM's bind-mounted /var/vcap).
pub fn empty_dir(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        }
        .with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: String,
    pub detail: String,
}

/// The platform's API process (`api.py`), stopped by PID on drop.
pub struct Api {
    child: Child,
    pub log: LogTail,
    stdout: PathBuf,
}

impl Api {
    fn start(python: &Path, vcap: &Path, args: &[String]) -> anyhow::Result<Api> {
        let logs = vcap.join("sys/log/cloud_controller");
        std::fs::create_dir_all(&logs)?;
        let stdout = logs.join("api.stdout");
        let out = std::fs::File::create(&stdout)?;
        let mut log = LogTail::at_end(logs.join("api.log"));
        let child = Command::new(python)
            .arg(sample_dir().join("api.py"))
            .arg(vcap)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting api.py")?;
        let mut api = Api { child, log: LogTail::new(PathBuf::new()), stdout };
        // Ready once it logs "ready"; fail at once if it exits first.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if log.lines()?.iter().any(|l| l.event == "ready") {
                break;
            }
            if let Some(status) = api.child.try_wait()? {
                bail!("api.py exited ({status}) before it was ready: {}", api.output());
            }
            if Instant::now() > deadline {
                bail!("api.py not ready after 30 s: {}", api.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        api.log = log;
        Ok(api)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed (tracebacks).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Fails if the API has exited (it must run through every backup).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the API exited ({status}): {}", self.output());
        }
    }

    /// SIGTERM, then waits; SIGKILL after 10 s. Returns its exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A line of api.log: `<epoch> <event> k=v ...`.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub at: f64,
    pub event: String,
    pub fields: Vec<(String, String)>,
}

impl LogLine {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub fn num(&self, key: &str) -> f64 {
        self.field(key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no number {key} in {self:?}"))
    }
}

/// Reads the lines appended to a log since the last call.
pub struct LogTail {
    path: PathBuf,
    offset: u64,
}

impl LogTail {
    pub fn new(path: PathBuf) -> LogTail {
        LogTail { path, offset: 0 }
    }

    /// Starts at the current end of the file.
    pub fn at_end(path: PathBuf) -> LogTail {
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        LogTail { path, offset }
    }

    pub fn raw_lines(&mut self) -> anyhow::Result<Vec<String>> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        // Only whole lines; a partial last line is read next time.
        let whole = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        self.offset += whole as u64;
        Ok(text[..whole].lines().map(str::to_string).collect())
    }

    pub fn lines(&mut self) -> anyhow::Result<Vec<LogLine>> {
        self.raw_lines()?
            .into_iter()
            .map(|l| {
                let mut words = l.split_whitespace();
                let at = words.next().and_then(|w| w.parse().ok()).ok_or_else(|| anyhow!("bad log line {l:?}"))?;
                let event = words.next().ok_or_else(|| anyhow!("bad log line {l:?}"))?.to_string();
                let fields = words.filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
                Ok(LogLine { at, event, fields })
            })
            .collect()
    }
}

/// One run of a BBR script as the script timed itself (lib/bbr.sh writes
/// `<start> <end> <script> exit=<status>` to sys/log/<job>/bbr.log).
#[derive(Debug, Clone)]
pub struct ScriptRun {
    pub job: String,
    pub script: String,
    pub seconds: f64,
    pub ok: bool,
}

pub fn script_runs(tail: &mut LogTail, job: &str) -> anyhow::Result<Vec<ScriptRun>> {
    tail.raw_lines()?
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let [start, end, script, exit] = w.as_slice() else { bail!("bad bbr.log line {l:?}") };
            let (start, end): (f64, f64) = (start.parse()?, end.parse()?);
            Ok(ScriptRun { job: job.to_string(), script: script.to_string(), seconds: end - start, ok: *exit == "exit=0" })
        })
        .collect()
}

//! The sample pipelines run step by step as Concourse runs them, on this machine: task steps
//! run their task file's `run.path` script (found where the image has it, inside a fake
//! `registry-image` get of the image whose `rootfs/opt/lockstep/tasks` is the repository's
//! `tasks/`) with busybox sh, in a fresh working directory holding the task's inputs and
//! outputs, with the task file's params overridden by the step's as environment variables;
//! resource steps run the resource's `check`, `in` and `out` binaries with the request on
//! stdin and the directory as `$1`. Hooks run as Concourse runs them, and `passed:` versions
//! flow from job to job.
//!
//! The configuration each pipeline writes (the lockstep resource's source, the tasks'
//! LOCKSTEP_CONFIG and DRILL_CONFIG) is replaced, wherever it is used, by one for a local target (directories made by `lockstep::frontend::demo::create_deployment`)
//! and a local-directory store, so no server is needed. The same runner can drive the
//! pipelines against the sshd fleet and an S3 server by giving it those configurations.

mod pipeline_support;

use lockstep::frontend::demo::{create_deployment, snapshot};
use lockstep::model::InstanceId;
use pipeline_support::{interpolated_pipeline, read, repo, vars_path, yaml};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn resource_bin(kind: &str) -> PathBuf {
    match kind {
        "check" => PathBuf::from(env!("CARGO_BIN_EXE_check")),
        "in" => PathBuf::from(env!("CARGO_BIN_EXE_in")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_out")),
    }
}

/// The directory holding `lockstep`, first on the tasks' PATH (as /usr/local/bin in the image).
fn lockstep_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_lockstep")).parent().unwrap().to_path_buf()
}

/// How task scripts run: busybox sh, as in the image, else the system's sh.
fn task_shell() -> Vec<String> {
    match Command::new("busybox").args(["sh", "-c", "true"]).output() {
        Ok(o) if o.status.success() => vec!["busybox".into(), "sh".into()],
        _ => vec!["sh".into()],
    }
}

/// Concourse's coercion of task params into environment variables: strings as they are,
/// null as empty, anything else as JSON.
fn env_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn replace_values(v: &mut Value, from: &Value, to: &Value) {
    if v == from {
        *v = to.clone();
        return;
    }
    match v {
        Value::Array(a) => a.iter_mut().for_each(|x| replace_values(x, from, to)),
        Value::Object(m) => m.values_mut().for_each(|x| replace_values(x, from, to)),
        _ => {}
    }
}

/// Sets `param` in every task step that passes it (hooks included); returns how many.
fn set_task_param(v: &mut Value, param: &str, to: &Value) -> usize {
    let mut n = 0;
    match v {
        Value::Object(m) => {
            if m.contains_key("task") {
                if let Some(p) = m.get_mut("params").and_then(Value::as_object_mut).filter(|p| p.contains_key(param)) {
                    p.insert(param.to_string(), to.clone());
                    n += 1;
                }
            }
            m.values_mut().for_each(|x| n += set_task_param(x, param, to));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| n += set_task_param(x, param, to)),
        _ => {}
    }
    n
}

/// One pipeline, run job by job.
struct Runner {
    pipeline: Value,
    work: PathBuf,
    /// Versions each resource had in the last successful build of each job: what `passed:`
    /// lets through.
    passed: BTreeMap<(String, String), Value>,
    /// One line per step: `job/step ok` or `job/step FAILED`.
    journal: Vec<String>,
    /// stderr of every step, for failure messages.
    log: String,
}

impl Runner {
    /// `name`'s pipeline with its example vars, each configuration in `configs` replaced by
    /// a local one: `lockstep_config` is the lockstep resource's source and every task's
    /// LOCKSTEP_CONFIG, `drill_config` every task's DRILL_CONFIG.
    fn new(name: &str, work: &Path, configs: &[(&str, Value)], extra: &[(&str, Value)]) -> Runner {
        let mut pipeline = interpolated_pipeline(name);
        let vars = yaml(&read(&vars_path(name)));
        for (role, local) in configs {
            let param = match *role {
                "lockstep_config" => {
                    for r in pipeline["resources"].as_array_mut().unwrap().iter_mut().filter(|r| r["type"] == "lockstep") {
                        r["source"] = local.clone();
                    }
                    "LOCKSTEP_CONFIG"
                }
                "drill_config" => "DRILL_CONFIG",
                other => panic!("no configuration role {other}"),
            };
            assert!(set_task_param(&mut pipeline, param, local) > 0, "pipelines/{name}.yml: no task takes {param}");
        }
        for (var, value) in extra {
            let example = vars[*var].clone();
            assert!(!example.is_null(), "no var {var}");
            replace_values(&mut pipeline, &example, value);
        }
        Runner { pipeline, work: work.to_path_buf(), passed: BTreeMap::new(), journal: Vec::new(), log: String::new() }
    }

    fn resource(&self, name: &str) -> Value {
        self.pipeline["resources"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no resource {name}")).clone()
    }

    /// Runs a job's plan and its hooks; returns whether the build succeeded. A job whose
    /// `passed:` inputs have no version yet does not run (returns None).
    fn run_job(&mut self, job: &str) -> Option<bool> {
        let j = self.pipeline["jobs"].as_array().unwrap().iter().find(|x| x["name"] == job).unwrap().clone();
        let build = Build { job: job.to_string(), dir: self.work.join(format!("build-{}-{job}", next_id())), versions: BTreeMap::new() };
        fs::create_dir_all(&build.dir).unwrap();
        let mut build = build;
        let mut ok = true;
        for step in j["plan"].as_array().unwrap() {
            match self.step(step, &mut build) {
                Some(true) => {}
                Some(false) => {
                    ok = false;
                    break;
                }
                None => return None,
            }
        }
        if ok {
            for (resource, version) in build.versions {
                self.passed.insert((job.to_string(), resource), version);
            }
        }
        Some(ok)
    }

    /// Runs a step with its hooks: Some(succeeded), or None when an input has no version.
    fn step(&mut self, step: &Value, build: &mut Build) -> Option<bool> {
        let ok = if let Some(steps) = step.get("in_parallel") {
            let steps = steps.as_array().or_else(|| steps["steps"].as_array()).unwrap().clone();
            let mut all = true;
            for s in &steps {
                all &= self.step(s, build)?;
            }
            all
        } else if let Some(steps) = step.get("do").and_then(Value::as_array) {
            let mut all = true;
            for s in steps.clone() {
                if !self.step(&s, build)? {
                    all = false;
                    break;
                }
            }
            all
        } else if let Some(name) = step.get("get").and_then(Value::as_str) {
            self.get(step, name, build)?
        } else if let Some(name) = step.get("put").and_then(Value::as_str) {
            self.put(step, name, build)
        } else if let Some(name) = step.get("task").and_then(Value::as_str) {
            self.task(step, name, build)
        } else {
            panic!("step kind not supported by this runner: {step}")
        };
        let hook = if ok { "on_success" } else { "on_failure" };
        if let Some(h) = step.get(hook) {
            self.step(h, build)?;
        }
        if let Some(h) = step.get("ensure") {
            self.step(h, build)?;
        }
        Some(ok)
    }

    fn record(&mut self, build: &Build, what: &str, ok: bool, stderr: &str) {
        self.journal.push(format!("{}/{what} {}", build.job, if ok { "ok" } else { "FAILED" }));
        self.log.push_str(&format!("---- {}/{what}\n{stderr}\n", build.job));
    }

    /// Runs a resource executable; returns its stdout JSON, or None on failure.
    fn resource_exec(&mut self, kind: &str, dir: Option<&Path>, request: &Value, build: &Build, what: &str) -> Option<Value> {
        let mut cmd = Command::new(resource_bin(kind));
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        if kind != "check" {
            cmd.envs([
                ("BUILD_TEAM_NAME", "main"),
                ("BUILD_PIPELINE_NAME", "smoke"),
                ("BUILD_JOB_NAME", build.job.as_str()),
                ("BUILD_NAME", "1"),
                ("ATC_EXTERNAL_URL", "https://ci.example.com"),
            ]);
        }
        if let Some(d) = dir {
            cmd.arg(d);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        self.record(build, what, out.status.success(), &stderr);
        if !out.status.success() {
            assert!(out.stdout.is_empty(), "{kind} failed but wrote to stdout");
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{kind}: stdout is not one JSON value: {e}")))
    }

    fn get(&mut self, step: &Value, name: &str, build: &mut Build) -> Option<bool> {
        let resource_name = step.get("resource").and_then(Value::as_str).unwrap_or(name).to_string();
        let resource = self.resource(&resource_name);
        let dest = build.dir.join(name);
        match resource["type"].as_str().unwrap() {
            "time" => {
                fs::create_dir_all(&dest).unwrap();
                Some(true)
            }
            "registry-image" => {
                // The image as a registry-image get leaves it: rootfs/ and metadata.json. Only
                // what the pipelines read from it is here: the task files and scripts.
                fs::create_dir_all(dest.join("rootfs/opt/lockstep")).unwrap();
                std::os::unix::fs::symlink(repo().join("tasks"), dest.join("rootfs/opt/lockstep/tasks")).unwrap();
                fs::write(dest.join("metadata.json"), "{\"env\": [\"PATH=/usr/local/bin:/bin\"]}").unwrap();
                Some(true)
            }
            "lockstep" => {
                let source = resource["source"].clone();
                let version = match (step.get("passed").and_then(Value::as_array), resource.get("version")) {
                    (Some(jobs), _) => {
                        let job = jobs[0].as_str().unwrap().to_string();
                        self.passed.get(&(job, resource_name.clone()))?.clone()
                    }
                    (None, Some(pinned)) => pinned.clone(),
                    (None, None) => {
                        let versions = self.resource_exec("check", None, &json!({"source": source}), build, &format!("check {resource_name}"))?;
                        versions.as_array()?.last()?.clone()
                    }
                };
                let params = step.get("params").cloned().unwrap_or(json!({}));
                let req = json!({"source": source, "version": version, "params": params});
                let out = self.resource_exec("in", Some(&dest), &req, build, &format!("get {name}"));
                match out {
                    Some(out) => {
                        assert_eq!(out["version"], version, "in must return the version it fetched");
                        build.versions.insert(resource_name, version);
                        Some(true)
                    }
                    None => Some(false),
                }
            }
            other => panic!("resource type {other} not supported by this runner"),
        }
    }

    fn put(&mut self, step: &Value, name: &str, build: &mut Build) -> bool {
        let resource_name = step.get("resource").and_then(Value::as_str).unwrap_or(name).to_string();
        let source = self.resource(&resource_name)["source"].clone();
        // `$1` holds the build's artifacts; `inputs:` (or detect) limit which. All are given
        // here, which is what `inputs: all` would do.
        let params = step.get("params").cloned().unwrap_or(json!({}));
        let req = json!({"source": source, "params": params});
        let dir = build.dir.clone();
        let Some(out) = self.resource_exec("out", Some(&dir), &req, build, &format!("put {name}")) else { return false };
        let version = out["version"].clone();
        assert!(version["artifact"].is_string(), "out returned {out}");
        build.versions.insert(resource_name.clone(), version.clone());
        if step.get("no_get") == Some(&Value::Bool(true)) {
            return true;
        }
        let get_params = step.get("get_params").cloned().unwrap_or(json!({}));
        let req = json!({"source": source, "version": version, "params": get_params});
        self.resource_exec("in", Some(&build.dir.join(name)), &req, build, &format!("get {name} (after put)")).is_some()
    }

    fn task(&mut self, step: &Value, name: &str, build: &mut Build) -> bool {
        let file = step["file"].as_str().expect("task steps here use task files");
        let cfg = yaml(&read(&build.dir.join(file)));
        let dir = self.work.join(format!("task-{}-{name}", next_id()));
        fs::create_dir_all(&dir).unwrap();
        let mapping = |key: &str, n: &str| -> String {
            step.get(key).and_then(|m| m.get(n)).and_then(Value::as_str).unwrap_or(n).to_string()
        };
        for input in cfg["inputs"].as_array().into_iter().flatten() {
            let n = input["name"].as_str().unwrap();
            let artifact = build.dir.join(mapping("input_mapping", n));
            if artifact.is_dir() {
                std::os::unix::fs::symlink(&artifact, dir.join(n)).unwrap();
            } else {
                assert_eq!(input["optional"], true, "task {name}: required input {n} is missing");
            }
        }
        let mut outputs = Vec::new();
        for output in cfg["outputs"].as_array().into_iter().flatten() {
            let n = output["name"].as_str().unwrap();
            fs::create_dir_all(dir.join(n)).unwrap();
            outputs.push((n.to_string(), mapping("output_mapping", n)));
        }
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for params in [&cfg["params"], &step["params"]] {
            for (k, v) in params.as_object().into_iter().flatten() {
                env.insert(k.clone(), env_value(v));
            }
        }
        // run.path is a path inside the image: the step's `image:` artifact's rootfs.
        let image = build.dir.join(step["image"].as_str().expect("tasks run in the pinned image")).join("rootfs");
        let path = cfg["run"]["path"].as_str().unwrap();
        let script = image.join(path.trim_start_matches('/'));
        assert!(script.is_file(), "task {name}: run.path {path} is not in the image");
        let shell = task_shell();
        let system_path = std::env::var("PATH").unwrap_or_default();
        let out = Command::new(&shell[0])
            .args(&shell[1..])
            .arg(&script)
            .args(cfg["run"]["args"].as_array().into_iter().flatten().map(|a| a.as_str().unwrap().to_string()))
            .current_dir(&dir)
            .env_clear()
            .env("PATH", format!("{}:{system_path}", lockstep_dir().display()))
            .env("HOME", &dir)
            .envs(&env)
            .output()
            .unwrap();
        let stderr = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        self.record(build, &format!("task {name}"), out.status.success(), &stderr);
        for (n, as_name) in outputs {
            let to = build.dir.join(as_name);
            let _ = fs::remove_dir_all(&to);
            fs::rename(dir.join(n), to).unwrap();
        }
        out.status.success()
    }
}

/// Build and task directories are unique across runners sharing a work directory.
fn next_id() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

struct Build {
    job: String,
    dir: PathBuf,
    versions: BTreeMap<String, Value>,
}

/// A local deployment's configuration: its instances as `target.local`, the store a
/// directory.
fn local_config(name: &str, instances: &[(InstanceId, String)], store: &Path) -> Value {
    let mut map = Map::new();
    for (id, root) in instances {
        map.insert(id.to_string(), Value::String(root.clone()));
    }
    json!({
        "target": {"local": {"name": name, "instances": map}},
        "store": {"path": store.to_str().unwrap()},
        "retention": {"keep_last": 1, "min_age": "0s", "grace": "0s"},
    })
}

fn data_of(instances: &[(InstanceId, String)]) -> Vec<(String, Vec<(String, String)>)> {
    instances.iter().map(|(id, root)| (id.to_string(), snapshot(&Path::new(root).join("var/vcap/store")).unwrap())).collect()
}

/// Committed artifacts in a local store (those with the commit marker), oldest first.
fn committed(store: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(store)
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.path().join("lockstep.json").is_file()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

struct Site {
    _dir: TempDir,
    work: PathBuf,
    store: PathBuf,
    deployment: Vec<(InstanceId, String)>,
    drill: Vec<(InstanceId, String)>,
}

impl Site {
    fn new() -> Site {
        let dir = TempDir::new().unwrap();
        let base = dir.path().to_path_buf();
        let deployment = create_deployment(&base.join("cf"), true).unwrap();
        let drill = create_deployment(&base.join("cf-drill"), false).unwrap();
        let store = base.join("store");
        fs::create_dir_all(&store).unwrap();
        let work = base.join("builds");
        fs::create_dir_all(&work).unwrap();
        Site { _dir: dir, work, store, deployment, drill }
    }

    fn config(&self) -> Value {
        local_config("cf", &self.deployment, &self.store)
    }

    fn drill_config(&self) -> Value {
        local_config("cf-drill", &self.drill, &self.store)
    }

    /// The backup pipeline with this site's configurations, and a smoke check that compares
    /// the drill's restored database dump with the real one.
    fn backup_pipeline(&self, smoke_check: &str) -> Runner {
        Runner::new(
            "backup",
            &self.work,
            &[("lockstep_config", self.config()), ("drill_config", self.drill_config())],
            &[("drill_smoke_check", Value::String(smoke_check.to_string()))],
        )
    }

    fn dump(&self, set: &[(InstanceId, String)]) -> PathBuf {
        Path::new(&set.iter().find(|(id, _)| id.to_string() == "db/0").unwrap().1).join("var/vcap/store/postgres/dump.sql")
    }

    fn smoke_check(&self) -> String {
        format!("cmp '{}' '{}'", self.dump(&self.deployment).display(), self.dump(&self.drill).display())
    }
}

/// No step's working directory ever held a whole artifact: only records and versions.
fn assert_no_artifact_on_workers(site: &Site) {
    let mut stack = vec![site.work.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                assert!(!name.contains(".tar"), "a worker held an artifact: {}", e.path().display());
            }
        }
    }
}

fn assert_ran(r: &Runner, expected: &[&str]) {
    assert_eq!(r.journal, expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "log:\n{}", r.log);
}

#[test]
fn the_backup_pipeline_backs_up_drills_and_prunes() {
    let site = Site::new();
    let mut r = site.backup_pipeline(&site.smoke_check());
    let before = data_of(&site.deployment);

    assert_eq!(r.run_job("backup"), Some(true), "{}", r.log);
    let first = committed(&site.store);
    assert_eq!(first.len(), 1, "{}", r.log);
    assert!(first[0].starts_with("cf_"), "{first:?}");
    assert_eq!(r.run_job("restore-drill"), Some(true), "{}", r.log);
    // The drill restored the backup, byte for byte, into the scratch deployment.
    let drilled: Vec<_> = data_of(&site.drill).into_iter().map(|(_, d)| d).collect();
    assert_eq!(drilled, before.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>());
    assert!(r.log.contains("Drill: the smoke check passed."), "{}", r.log);
    assert!(r.log.contains("from DRILL_CONFIG's store into the scratch deployment (streamed"), "{}", r.log);
    assert_no_artifact_on_workers(&site);
    assert_eq!(r.run_job("prune"), Some(true), "{}", r.log);
    assert_eq!(committed(&site.store), first, "one backup: nothing to prune");
    assert_ran(
        &r,
        &[
            "backup/task pre-backup-check ok",
            "backup/put backup ok",
            "backup/get backup (after put) ok",
            "restore-drill/get backup ok",
            "restore-drill/task restore-drill ok",
            "prune/get backup ok",
            "prune/put prune ok",
        ],
    );

    // A day later: new data, a second backup, its drill, and the first backup pruned
    // (retention keep_last: 1).
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(site.dump(&site.deployment), "INSERT INTO apps VALUES ('new', 'cd');\n").unwrap();
    for job in ["backup", "restore-drill", "prune"] {
        assert_eq!(r.run_job(job), Some(true), "{job}: {}", r.log);
    }
    let second = committed(&site.store);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first, "the older backup is pruned, the newer kept");
    assert_eq!(fs::read(site.dump(&site.drill)).unwrap(), fs::read(site.dump(&site.deployment)).unwrap());
}

#[test]
fn a_failed_backup_runs_backup_cleanup_and_goes_no_further() {
    let site = Site::new();
    let mut r = site.backup_pipeline(&site.smoke_check());
    // The blobstore's lock fails: lockstep unlocks what it locked and exits 5 (1|4).
    let lock = Path::new(&site.deployment[1].1).join("var/vcap/jobs/blobstore/bin/bbr/pre-backup-lock");
    fs::write(&lock, "#!/bin/sh\necho 'cannot lock the blobstore' >&2\nexit 1\n").unwrap();
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o755)).unwrap();

    assert_eq!(r.run_job("backup"), Some(false));
    assert_ran(&r, &["backup/task pre-backup-check ok", "backup/put backup FAILED", "backup/task backup-cleanup ok"]);
    assert!(r.log.contains("cannot lock the blobstore"), "{}", r.log);
    assert!(committed(&site.store).is_empty());
    for (_, root) in &site.deployment {
        let data = Path::new(root).join("var/vcap/data");
        let locked: Vec<_> = walk(&data).into_iter().filter(|p| p.ends_with("locked")).collect();
        assert!(locked.is_empty(), "still locked: {locked:?}");
        assert!(!Path::new(root).join("var/vcap/store/bbr-backup").exists(), "staging directory left on {root}");
    }
    // Nothing passed the backup job: the drill and prune have no version to run with.
    assert_eq!(r.run_job("restore-drill"), None);
    assert_eq!(r.run_job("prune"), None);
}

/// The smoke check sees only what it needs: the artifact and the scratch deployment's name
/// and instances, never the configurations that hold the SSH keys, store keys and identity.
#[test]
fn the_smoke_check_gets_the_drill_target_and_no_secret() {
    let site = Site::new();
    let seen = site.work.join("smoke-env");
    let mut r = site.backup_pipeline(&format!("env > '{}'", seen.display()));
    assert_eq!(r.run_job("backup"), Some(true), "{}", r.log);
    assert_eq!(r.run_job("restore-drill"), Some(true), "{}", r.log);
    let env = std::fs::read_to_string(&seen).unwrap();
    let names: Vec<&str> = env.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    for secret in ["DRILL_CONFIG", "LOCKSTEP_CONFIG"] {
        assert!(!names.contains(&secret), "{secret} reached the smoke check:\n{env}");
    }
    assert!(!env.contains(&site.drill_config().to_string()) && !env.contains("\"store\""), "{env}");
    let artifact = committed(&site.store).pop().unwrap();
    assert!(env.lines().any(|l| l == format!("ARTIFACT={artifact}")), "{env}");
    let target = env.lines().find_map(|l| l.strip_prefix("DRILL_TARGET=")).expect("DRILL_TARGET");
    let target: Value = serde_json::from_str(target).unwrap();
    assert_eq!(target["deployment"], "cf-drill", "{target}");
    let ids: Vec<&str> = target["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"db/0"), "{target}");
}

#[test]
fn a_failed_smoke_check_fails_the_drill_and_prunes_nothing() {
    let site = Site::new();
    let mut r = site.backup_pipeline(&site.smoke_check());
    assert_eq!(r.run_job("backup"), Some(true), "{}", r.log);
    let first = committed(&site.store);

    // The next backup's drill finds the restored deployment unhealthy.
    std::thread::sleep(Duration::from_millis(1100));
    let mut r2 = site.backup_pipeline("echo 'the API does not answer' >&2; exit 3");
    r2.passed = r.passed.clone();
    assert_eq!(r2.run_job("backup"), Some(true), "{}", r2.log);
    assert_eq!(r2.run_job("restore-drill"), Some(false));
    assert!(r2.log.contains("Drill: the smoke check failed (exit 3)"), "{}", r2.log);
    assert!(r2.log.contains("the API does not answer"), "{}", r2.log);
    // Prune only follows a passed drill: the older, good backup is still there.
    assert_eq!(r2.run_job("prune"), None);
    assert_eq!(committed(&site.store).len(), 2);
    assert!(committed(&site.store).contains(&first[0]));
}

#[test]
fn the_restore_pipeline_restores_the_pinned_version() {
    let site = Site::new();
    let mut backups = site.backup_pipeline(&site.smoke_check());
    assert_eq!(backups.run_job("backup"), Some(true), "{}", backups.log);
    let pinned = committed(&site.store).remove(0);
    let backed_up = data_of(&site.deployment);
    // A newer backup of different data: the restore must take the pinned one, not the newest.
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(site.dump(&site.deployment), "later\n").unwrap();
    assert_eq!(backups.run_job("backup"), Some(true), "{}", backups.log);
    fs::write(site.dump(&site.deployment), "lost\n").unwrap();

    let mut r = Runner::new("restore", &site.work, &[("lockstep_config", site.config())], &[("artifact", Value::String(pinned.clone()))]);
    assert_eq!(r.resource("backup")["version"], json!({"artifact": pinned}));
    assert_eq!(r.run_job("restore"), Some(true), "{}", r.log);
    assert_ran(&r, &["restore/get backup ok", "restore/put restore ok"]);
    assert_eq!(data_of(&site.deployment), backed_up, "the deployment holds the pinned backup's data again");
    assert!(r.log.contains("streamed (the get fetched only its records)"), "{}", r.log);
    assert_no_artifact_on_workers(&site);
}

#[test]
fn a_failed_restore_runs_restore_cleanup() {
    let site = Site::new();
    let mut backups = site.backup_pipeline(&site.smoke_check());
    assert_eq!(backups.run_job("backup"), Some(true), "{}", backups.log);
    let pinned = committed(&site.store).remove(0);
    let restore = Path::new(&site.deployment[2].1).join("var/vcap/jobs/postgres/bin/bbr/restore");
    fs::write(&restore, "#!/bin/sh\necho 'psql: connection refused' >&2\nexit 1\n").unwrap();

    let mut r = Runner::new("restore", &site.work, &[("lockstep_config", site.config())], &[("artifact", Value::String(pinned))]);
    assert_eq!(r.run_job("restore"), Some(false));
    assert_ran(&r, &["restore/get backup ok", "restore/put restore FAILED", "restore/task restore-cleanup ok"]);
    assert!(r.log.contains("psql: connection refused"), "{}", r.log);
    for (_, root) in &site.deployment {
        let locked: Vec<_> = walk(&Path::new(root).join("var/vcap/data")).into_iter().filter(|p| p.ends_with("locked")).collect();
        assert!(locked.is_empty(), "still locked: {locked:?}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// Concourse aborts a task by sending SIGTERM to its process: the task script, not lockstep.
/// The script passes it on and waits, so lockstep still unlocks every job it locked.
#[test]
fn an_aborted_backup_task_still_unlocks() {
    let site = Site::new();
    // The blobstore's backup hangs; the API's lock is held meanwhile.
    let backup = Path::new(&site.deployment[1].1).join("var/vcap/jobs/blobstore/bin/bbr/backup");
    fs::write(&backup, "#!/bin/sh\nsleep 60\n").unwrap();
    let api_lock = Path::new(&site.deployment[0].1).join("var/vcap/data/cloud_controller/locked");

    let shell = task_shell();
    let dir = site.work.join("abort");
    fs::create_dir_all(dir.join("artifacts")).unwrap();
    let mut child = Command::new(&shell[0])
        .args(&shell[1..])
        .arg(repo().join("tasks/backup.sh"))
        .current_dir(&dir)
        .env_clear()
        .env("PATH", format!("{}:{}", lockstep_dir().display(), std::env::var("PATH").unwrap_or_default()))
        .env("LOCKSTEP_CONFIG", site.config().to_string())
        .env("UNSAFE_LOCK_FREE", "false")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !api_lock.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "the lock never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the task did not finish after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Checked as soon as the task has exited: a lockstep left running would unlock later.
    assert!(!api_lock.exists(), "the API is still locked after the task exited");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "an aborted backup must fail: {stderr}");
    assert!(committed(&site.store).is_empty());
    assert!(stderr.contains("backup-cleanup"), "the operator is told what to run: {stderr}");
}

/// A DRILL_CONFIG copied from the real configuration would restore yesterday's state onto
/// production. The drill refuses before any instance is touched, and says what to fix.
#[test]
fn a_drill_pointed_at_the_real_deployment_is_refused() {
    let site = Site::new();
    let mut r = Runner::new(
        "backup",
        &site.work,
        &[("lockstep_config", site.config()), ("drill_config", site.config())],
        &[("drill_smoke_check", Value::String("true".into()))],
    );
    assert_eq!(r.run_job("backup"), Some(true), "{}", r.log);
    let before = fs::read(site.dump(&site.deployment)).unwrap();
    assert_eq!(r.run_job("restore-drill"), Some(false), "{}", r.log);
    assert!(r.log.contains("refusing the restore drill: its target is where"), "{}", r.log);
    assert!(r.log.contains("point DRILL_CONFIG's target at one"), "{}", r.log);
    assert!(!r.log.contains("pre-restore-lock"), "a restore script ran:\n{}", r.log);
    assert_eq!(fs::read(site.dump(&site.deployment)).unwrap(), before);
    // Nothing was uploaded to the real instances.
    for (_, root) in &site.deployment {
        assert!(!Path::new(root).join("var/vcap/store/bbr-backup").exists(), "{root}");
    }
    assert_eq!(r.run_job("prune"), None, "prune follows only a passed drill");
}

//! A pipeline run step by step as Concourse runs it, on this machine: task steps run their
//! task file's `run.path` script (found where the image has it, inside a fake
//! `registry-image` get of the image whose `rootfs/opt/lockstep/tasks` is the repository's
//! `tasks/`) with busybox sh, in a fresh working directory holding the task's inputs and
//! outputs, with the task file's params overridden by the step's as environment variables;
//! resource steps run the resource's `check`, `in` and `out` binaries with the request on
//! stdin and the directory as `$1`. Hooks run as Concourse runs them, and `passed:` versions
//! flow from job to job. With credential-manager vars (`creds`), each step is interpolated
//! at build time as Concourse does it ([`super::concourse`]).

use super::{concourse, interpolated_pipeline, read, repo, vars_path, yaml};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn resource_bin(kind: &str) -> PathBuf {
    match kind {
        "check" => PathBuf::from(env!("CARGO_BIN_EXE_check")),
        "in" => PathBuf::from(env!("CARGO_BIN_EXE_in")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_out")),
    }
}

/// The directory holding `lockstep`, first on the tasks' PATH (as /usr/local/bin in the image).
pub fn lockstep_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_lockstep")).parent().unwrap().to_path_buf()
}

/// How task scripts run: busybox sh, as in the image, else the system's sh.
pub fn task_shell() -> Vec<String> {
    match Command::new("busybox").args(["sh", "-c", "true"]).output() {
        Ok(o) if o.status.success() => vec!["busybox".into(), "sh".into()],
        _ => vec!["sh".into()],
    }
}

pub fn replace_values(v: &mut Value, from: &Value, to: &Value) {
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
pub fn set_task_param(v: &mut Value, param: &str, to: &Value) -> usize {
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
pub struct Runner {
    pipeline: Value,
    work: PathBuf,
    /// Versions each resource had in the last successful build of each job: what `passed:`
    /// lets through.
    pub passed: BTreeMap<(String, String), Value>,
    /// One line per step: `job/step ok` or `job/step FAILED`.
    pub journal: Vec<String>,
    /// stderr of every step, for failure messages.
    pub log: String,
    /// The credential manager's vars, interpolated into each step when it runs.
    creds: Value,
    /// The local vars of each across substep run, in order.
    pub across_runs: Vec<Value>,
}

impl Runner {
    /// `name`'s pipeline with its example vars, each configuration in `configs` replaced by
    /// a local one: `lockstep_config` is the lockstep resource's source and every task's
    /// LOCKSTEP_CONFIG, `drill_config` every task's DRILL_CONFIG.
    pub fn new(name: &str, work: &Path, configs: &[(&str, Value)], extra: &[(&str, Value)]) -> Runner {
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
        Runner::from_pipeline(pipeline, work, json!({}))
    }

    /// A pipeline as ATC stored it (see [`super::concourse::set_pipeline`]), with the
    /// credential manager's vars.
    pub fn from_pipeline(pipeline: Value, work: &Path, creds: Value) -> Runner {
        Runner { pipeline, work: work.to_path_buf(), passed: BTreeMap::new(), journal: Vec::new(), log: String::new(), creds, across_runs: Vec::new() }
    }

    /// A value of the stored pipeline interpolated with the credential manager's vars, as
    /// Concourse does for a resource's source and a step's params when they are used. A
    /// failure is the step's failure, with Concourse's message.
    fn at_build_time(&mut self, build: &Build, what: &str, v: &Value) -> Option<Value> {
        match concourse::interpolate(v, &self.creds, true) {
            Ok(x) => Some(x),
            Err(e) => {
                self.record(build, what, false, &e);
                None
            }
        }
    }

    pub fn resource(&self, name: &str) -> Value {
        self.pipeline["resources"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no resource {name}")).clone()
    }

    /// Runs a job's plan and its hooks; returns whether the build succeeded. A job whose
    /// `passed:` inputs have no version yet does not run (returns None).
    pub fn run_job(&mut self, job: &str) -> Option<bool> {
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
        // `across` wraps the core step and sits inside the hooks (atc's StepPrecedence: ensure,
        // on_error, on_abort, on_failure, on_success, then across): so it comes first here,
        // and the hooks below run once, after every substep.
        let ok = if let Some(vars) = step.get("across").and_then(Value::as_array) {
            self.across(step, &vars.clone(), build)?
        } else if let Some(steps) = step.get("in_parallel") {
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

    /// `atc/exec/across_step.go`: each var's `values` evaluated when the step runs (a list,
    /// or a ((var)) that is one), one substep per combination (the cartesian product, the
    /// last var varying fastest) built from the step without `across`, `fail_fast` and the
    /// hooks, with the local vars interpolated into it. Concourse runs up to each var's
    /// `max_in_flight` substeps at once; here they run one after the other, which changes
    /// when they run, not what each does (each has its own container and scope). With
    /// `fail_fast`, the first failure stops the rest (Concourse cancels them).
    fn across(&mut self, step: &Value, vars: &[Value], build: &mut Build) -> Option<bool> {
        let mut lists: Vec<(String, Vec<Value>)> = Vec::new();
        for v in vars {
            let name = v["var"].as_str().expect("across var").to_string();
            let values = self.at_build_time(build, "across", &v.get("values").cloned().unwrap_or(json!([])))?;
            let Some(list) = values.as_array() else {
                self.record(build, &format!("across {name}"), false, &format!("values of {name} is not a list: {values}"));
                return Some(false);
            };
            lists.push((name, list.clone()));
        }
        let mut combos: Vec<serde_json::Map<String, Value>> = vec![serde_json::Map::new()];
        for (name, list) in &lists {
            combos = combos.into_iter().flat_map(|c| list.iter().map(move |v| {
                let mut c = c.clone();
                c.insert(name.clone(), v.clone());
                c
            })).collect();
        }
        let mut template = step.as_object().unwrap().clone();
        for k in ["across", "fail_fast", "on_success", "on_failure", "on_abort", "on_error", "ensure"] {
            template.remove(k);
        }
        let template = Value::Object(template);
        let fail_fast = step.get("fail_fast") == Some(&Value::Bool(true));
        let mut all = true;
        for locals in combos {
            let sub = match concourse::interpolate_locals(&template, &Value::Object(locals.clone())) {
                Ok(s) => s,
                Err(e) => {
                    self.record(build, "across", false, &e);
                    return Some(false);
                }
            };
            self.across_runs.push(Value::Object(locals));
            if !self.step(&sub, build)? {
                all = false;
                if fail_fast {
                    break;
                }
            }
        }
        Some(all)
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
                let source = self.at_build_time(build, &format!("get {name}"), &resource["source"])?;
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
                let params = self.at_build_time(build, &format!("get {name}"), &step.get("params").cloned().unwrap_or(json!({})))?;
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
        let raw_source = self.resource(&resource_name)["source"].clone();
        let Some(source) = self.at_build_time(build, &format!("put {name}"), &raw_source) else { return false };
        // `$1` holds the build's artifacts; `inputs:` (or detect) limit which. All are given
        // here, which is what `inputs: all` would do.
        let Some(params) = self.at_build_time(build, &format!("put {name}"), &step.get("params").cloned().unwrap_or(json!({}))) else { return false };
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
        let env = match concourse::task_env(&cfg, step.get("params"), &self.creds) {
            Ok(env) => env,
            Err(e) => {
                self.record(build, &format!("task {name}"), false, &e);
                return false;
            }
        };
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
pub fn next_id() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub struct Build {
    job: String,
    dir: PathBuf,
    versions: BTreeMap<String, Value>,
}

//! A validator for Concourse pipelines and task files, for `lockstep validate-pipeline`
//! and for our own tests (`fly` cannot run here). It makes the checks
//! `fly validate-pipeline` makes (atc's `configvalidate` and step validator) and adds
//! what a pasted pipeline most often gets wrong: task files that do not exist or do not
//! declare the inputs and params the pipeline passes (or that the pipeline leaves a required
//! param unset), a task's `file:` or `image:` in an artifact the job never fetches, and
//! `((vars))` missing from the example vars file.
//!
//! lockstep's pipelines load lockstep's task files from the image itself: a `registry-image`
//! get of the image (`lockstep-image`) unpacks it under `rootfs/`, and the image carries the
//! repository's `tasks/` at `/opt/lockstep/tasks/` (Dockerfile), so
//! `file: lockstep-image/rootfs/opt/lockstep/tasks/backup.yml` is read from
//! `<repo_root>/tasks/backup.yml`, or from the copies compiled into this module
//! ([`LOCKSTEP_TASKS`]) when the repository is not at hand.

mod lockstep_resource;
mod task_config;

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What was found: errors fail validation, warnings do not (as `fly` without `--strict`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Report {
    fn error(&mut self, msg: impl Into<String>) {
        self.errors.push(msg.into());
    }
    fn warn(&mut self, msg: impl Into<String>) {
        self.warnings.push(msg.into());
    }
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Where task files and vars come from.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// The repository the pipeline's task files live in. A task `file: repo/tasks/x.yml`
    /// is read from `<repo_root>/tasks/x.yml` (the first segment names the input).
    pub repo_root: Option<PathBuf>,
    /// Vars (as `fly -l FILE` loads them): every `((var))` must be defined here.
    pub vars: Option<Value>,
}

const COMMON_STEP_KEYS: &[&str] = &["timeout", "attempts", "tags", "on_success", "on_failure", "on_abort", "on_error", "ensure", "across"];
const GET_KEYS: &[&str] = &["get", "resource", "passed", "params", "trigger", "version"];
const PUT_KEYS: &[&str] = &["put", "resource", "inputs", "params", "get_params", "no_get"];
const TASK_KEYS: &[&str] =
    &["task", "file", "config", "image", "privileged", "vars", "params", "input_mapping", "output_mapping", "container_limits", "hermetic"];
const SET_PIPELINE_KEYS: &[&str] = &["set_pipeline", "file", "vars", "var_files", "instance_vars", "team"];
const LOAD_VAR_KEYS: &[&str] = &["load_var", "file", "format", "reveal"];
const JOB_KEYS: &[&str] = &[
    "name", "plan", "serial", "serial_groups", "max_in_flight", "build_log_retention", "build_logs_to_retain", "public",
    "disable_manual_trigger", "interruptible", "old_name", "on_success", "on_failure", "on_abort", "on_error", "ensure", "tags",
];
const RESOURCE_KEYS: &[&str] =
    &["name", "type", "source", "check_every", "check_timeout", "icon", "public", "tags", "version", "webhook_token", "expose_build_created_by", "old_name"];
const RESOURCE_TYPE_KEYS: &[&str] = &["name", "type", "source", "privileged", "params", "check_every", "tags", "defaults"];
const TOP_KEYS: &[&str] = &["resources", "resource_types", "jobs", "groups", "var_sources", "display", "user_data"];
const TASK_CONFIG_KEYS: &[&str] =
    &["platform", "image_resource", "rootfs_uri", "inputs", "outputs", "caches", "params", "run", "container_limits"];

/// Where lockstep's image carries the repository's `tasks/` (Dockerfile), as a path inside
/// a `registry-image` get of the image.
pub const IMAGE_TASKS_PREFIX: &str = "rootfs/opt/lockstep/";

/// lockstep's task files as this build knows them (`tasks/<name>`), for pipelines that load
/// them from the image when the repository is not at hand.
pub const LOCKSTEP_TASKS: &[(&str, &str)] = &[
    ("tasks/backup.yml", include_str!("../../tasks/backup.yml")),
    ("tasks/backup-cleanup.yml", include_str!("../../tasks/backup-cleanup.yml")),
    ("tasks/pre-backup-check.yml", include_str!("../../tasks/pre-backup-check.yml")),
    ("tasks/prune.yml", include_str!("../../tasks/prune.yml")),
    ("tasks/restore.yml", include_str!("../../tasks/restore.yml")),
    ("tasks/restore-cleanup.yml", include_str!("../../tasks/restore-cleanup.yml")),
    ("tasks/restore-drill.yml", include_str!("../../tasks/restore-drill.yml")),
    ("tasks/verify.yml", include_str!("../../tasks/verify.yml")),
    ("tasks/opsman-guard.yml", include_str!("../../tasks/opsman-guard.yml")),
    ("tasks/opsman-import.yml", include_str!("../../tasks/opsman-import.yml")),
    ("tasks/platform-backup.yml", include_str!("../../tasks/platform-backup.yml")),
    ("tasks/platform-verify.yml", include_str!("../../tasks/platform-verify.yml")),
];

/// Parses Go's duration syntax (`1h30m`, `24h`, `500ms`).
pub fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    Some(std::time::Duration::from_secs_f64(total))
}

fn unknown_keys(obj: &Map<String, Value>, allowed: &[&[&str]]) -> Vec<String> {
    obj.keys().filter(|k| !allowed.iter().any(|set| set.contains(&k.as_str()))).cloned().collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Concourse identifiers: start with a lowercase letter, then lowercase letters, digits,
/// `-`, `_` or `.` (atc warns otherwise; `((vars))` are allowed).
fn valid_identifier(s: &str) -> bool {
    if s.contains("((") {
        return true;
    }
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_lowercase())
        && chars.all(|c| c.is_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Every `((var))` in a text: the name before any `.field`, without a `source:` prefix.
/// Local vars `((.:x))` are skipped: they are set by the pipeline itself.
pub fn vars_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("((") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("))") else { break };
        let inner = after[..end].trim();
        rest = &after[end + 2..];
        if inner.starts_with(".:") || inner.is_empty() {
            continue;
        }
        let path = inner.rsplit_once(':').map(|(_, p)| p).unwrap_or(inner);
        let name = path.split('.').next().unwrap_or(path).trim_matches('"');
        out.insert(name.to_string());
    }
    out
}

/// Every `((var))` in the strings (keys and values) of a parsed document. Comments are not
/// interpolated by Concourse, so a `((var))` mentioned in a comment is not a var.
pub fn vars_in_value(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) => out.extend(vars_in(s)),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => {
                for (k, x) in m {
                    out.extend(vars_in(k));
                    walk(x, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut out);
    out
}

/// What a job's steps do, collected in one walk.
#[derive(Default)]
struct JobFacts {
    /// Resources this job gets or puts.
    resources: BTreeSet<String>,
    /// Artifact names available to tasks: get/put names and task outputs.
    artifacts: BTreeSet<String>,
    get_names: BTreeMap<String, usize>,
    /// (step description, resource, passed jobs)
    passed: Vec<(String, String, Vec<String>)>,
    /// Task steps with a `file:` to check once every artifact is known.
    task_files: Vec<Value>,
    /// (step description, artifact) that a task step's `image:` or `file:` needs.
    needed: Vec<(String, String)>,
}

struct Checker<'a> {
    opts: &'a Options,
    report: Report,
    resources: BTreeSet<String>,
    used_resources: BTreeSet<String>,
    /// Resources of the type `lockstep`: their get and put params are checked with the
    /// keys the resource's binaries accept.
    lockstep_resources: BTreeSet<String>,
}

/// A value Concourse fills in later (`((var))`): its type cannot be checked here.
pub(crate) fn is_var(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.trim_start().starts_with("((") && s.trim_end().ends_with("))"))
}

/// Concourse rejects a non-boolean here when the pipeline is set.
fn check_bool(report: &mut Report, obj: &Map<String, Value>, key: &str, here: &str) {
    if let Some(v) = obj.get(key) {
        if !v.is_boolean() && !is_var(v) {
            report.error(format!("{here}: {key} must be true or false, not {v}"));
        }
    }
}

impl Checker<'_> {
    fn step(&mut self, step: &Value, at: &str, facts: &mut JobFacts) {
        let Some(obj) = step.as_object() else {
            self.report.error(format!("{at}: a step must be a map"));
            return;
        };
        let kinds: Vec<&str> =
            ["get", "put", "task", "set_pipeline", "load_var", "in_parallel", "do", "try"].into_iter().filter(|k| obj.contains_key(*k)).collect();
        let kind = match kinds.as_slice() {
            [k] => *k,
            [] => {
                self.report.error(format!("{at}: no step type (get, put, task, set_pipeline, load_var, in_parallel, do, try) in {:?}", obj.keys().collect::<Vec<_>>()));
                return;
            }
            many => {
                self.report.error(format!("{at}: more than one step type: {}", many.join(", ")));
                return;
            }
        };
        let own: &[&str] = match kind {
            "get" => GET_KEYS,
            "put" => PUT_KEYS,
            "task" => TASK_KEYS,
            "set_pipeline" => SET_PIPELINE_KEYS,
            "load_var" => LOAD_VAR_KEYS,
            "in_parallel" => &["in_parallel"],
            "do" => &["do"],
            _ => &["try"],
        };
        // `fail_fast` belongs to the across step (atc's AcrossStep), beside `across`.
        let across_keys: &[&str] = if obj.contains_key("across") { &["fail_fast"] } else { &[] };
        let unknown = unknown_keys(obj, &[own, COMMON_STEP_KEYS, across_keys]);
        if !unknown.is_empty() {
            self.report.error(format!("{at}: unknown fields {unknown:?}"));
        }
        let name = obj.get(kind).and_then(Value::as_str).unwrap_or("").to_string();
        let here = format!("{at} ({kind} {name})");
        if let Some(t) = obj.get("timeout") {
            match t.as_str() {
                Some(s) if s.contains("((") || parse_go_duration(s).is_some() => {}
                _ => self.report.error(format!("{here}: timeout {t} is not a duration (e.g. 30m, 1h)")),
            }
        }
        if let Some(a) = obj.get("attempts") {
            if a.as_i64().is_none_or(|n| n <= 0) {
                self.report.error(format!("{here}: attempts must be a number above 0"));
            }
        }
        if let Some(across) = obj.get("across") {
            match across.as_array() {
                Some(items) if !items.is_empty() => {
                    // atc's AcrossVarConfig, unmarshalled strictly: var, values (a list, or
                    // a ((var)) that is one when the step runs), max_in_flight (> 0 or "all").
                    for item in items {
                        if item.get("var").and_then(Value::as_str).is_none() {
                            self.report.error(format!("{here}: across needs a var"));
                        }
                        if let Some(m) = item.as_object() {
                            let unknown = unknown_keys(m, &[&["var", "values", "max_in_flight"]]);
                            if !unknown.is_empty() {
                                self.report.error(format!("{here}: across: unknown fields {unknown:?}"));
                            }
                        }
                        match item.get("values") {
                            None | Some(Value::Array(_)) => {}
                            Some(Value::String(v)) if v.trim().starts_with("((") && v.trim().ends_with("))") => {}
                            Some(v) => self.report.error(format!("{here}: across values must be a list or one ((var)), not {v}")),
                        }
                        match item.get("max_in_flight") {
                            Some(m) if m.as_i64().is_some_and(|n| n <= 0) => self.report.error(format!("{here}: across max_in_flight must be above 0")),
                            Some(Value::String(s)) if s != "all" && !s.contains("((") => {
                                self.report.error(format!("{here}: across max_in_flight must be a number or \"all\", not {s:?}"))
                            }
                            _ => {}
                        }
                    }
                }
                _ => self.report.error(format!("{here}: across needs a list of vars")),
            }
        }
        match kind {
            "get" | "put" => {
                let resource = str_of(step, "resource").unwrap_or(&name).to_string();
                if !self.resources.contains(&resource) {
                    self.report.error(format!("{here}: unknown resource '{resource}'"));
                }
                check_bool(&mut self.report, obj, if kind == "get" { "trigger" } else { "no_get" }, &here);
                if self.lockstep_resources.contains(&resource) {
                    self.report.errors.extend(lockstep_resource::params_errors(kind, obj, &here));
                }
                self.used_resources.insert(resource.clone());
                facts.resources.insert(resource.clone());
                facts.artifacts.insert(name.clone());
                if kind == "get" {
                    *facts.get_names.entry(name.clone()).or_default() += 1;
                    if let Some(p) = obj.get("passed") {
                        let jobs = p.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default();
                        facts.passed.push((here.clone(), resource, jobs));
                    }
                }
            }
            "task" => {
                if let Some(image) = str_of(step, "image") {
                    facts.needed.push((format!("{here}: image"), image.to_string()));
                }
                if let Some(file) = str_of(step, "file").filter(|f| !f.contains("(("))
                    && let Some((input, _)) = file.split_once('/')
                {
                    facts.needed.push((format!("{here}: file {file}"), input.to_string()));
                }
                match (obj.get("file"), obj.get("config")) {
                    (Some(_), Some(_)) => self.report.error(format!("{here}: give either file or config, not both")),
                    (None, None) => self.report.error(format!("{here}: needs a file or a config")),
                    (None, Some(cfg)) => {
                        if let Some(e) = missing_image(step, cfg, &here, "its config") {
                            self.report.error(e);
                        }
                        let r = check_task_config(cfg, &here);
                        for o in task_outputs(cfg, step) {
                            facts.artifacts.insert(o);
                        }
                        self.report.errors.extend(r.errors);
                        self.report.warnings.extend(r.warnings);
                    }
                    (Some(_), None) => facts.task_files.push(step.clone()),
                }
            }
            "set_pipeline" | "load_var" => {
                if obj.get("file").is_none() {
                    self.report.error(format!("{here}: needs a file"));
                }
                // The file (and set_pipeline's var_files) are read from an artifact of the job.
                let files = obj.get("file").into_iter().chain(obj.get("var_files").and_then(Value::as_array).into_iter().flatten());
                for f in files.filter_map(Value::as_str).filter(|f| !f.contains("((")) {
                    if let Some((input, _)) = f.split_once('/') {
                        facts.needed.push((format!("{here}: file {f}"), input.to_string()));
                    }
                }
            }
            "in_parallel" => {
                let steps = match obj.get("in_parallel") {
                    Some(Value::Array(a)) => a.clone(),
                    Some(Value::Object(o)) => {
                        let unknown = unknown_keys(o, &[&["steps", "limit", "fail_fast"]]);
                        if !unknown.is_empty() {
                            self.report.error(format!("{here}: unknown fields {unknown:?}"));
                        }
                        o.get("steps").and_then(Value::as_array).cloned().unwrap_or_default()
                    }
                    _ => {
                        self.report.error(format!("{here}: in_parallel needs a list of steps"));
                        vec![]
                    }
                };
                for (i, s) in steps.iter().enumerate() {
                    self.step(s, &format!("{at}.in_parallel[{i}]"), facts);
                }
            }
            "do" => {
                for (i, s) in obj.get("do").and_then(Value::as_array).into_iter().flatten().enumerate() {
                    self.step(s, &format!("{at}.do[{i}]"), facts);
                }
            }
            "try" => {
                if let Some(s) = obj.get("try") {
                    self.step(s, &format!("{at}.try"), facts);
                }
            }
            _ => {}
        }
        for hook in ["on_success", "on_failure", "on_abort", "on_error", "ensure"] {
            if let Some(s) = obj.get(hook) {
                self.step(s, &format!("{at}.{hook}"), facts);
            }
        }
    }

    /// Reads a task file a step names and checks it against what the step passes.
    /// Reads the task file a step names (None, with the error reported, when it cannot be).
    fn read_task_file(&mut self, step: &Value, job: &str) -> Option<Value> {
        let name = str_of(step, "task").unwrap_or("");
        let file = str_of(step, "file").unwrap_or("");
        let here = format!("job {job}, task {name}");
        let root = self.opts.repo_root.as_ref()?;
        if file.contains("((") {
            return None;
        }
        let Some((_, rel)) = file.split_once('/') else {
            self.report.error(format!("{here}: file {file:?} must start with the input that holds it (e.g. lockstep/tasks/backup.yml)"));
            return None;
        };
        // Inside lockstep's image (a registry-image get unpacks it under rootfs/), the
        // repository's files are under /opt/lockstep/.
        let (rel, in_image) = match rel.strip_prefix(IMAGE_TASKS_PREFIX) {
            Some(r) => (r, true),
            None => (rel, false),
        };
        let path = root.join(rel);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => match LOCKSTEP_TASKS.iter().find(|(name, _)| in_image && *name == rel) {
                Some((_, text)) => text.to_string(),
                None => {
                    self.report.error(format!("{here}: task file {file} ({}) cannot be read: {e}", path.display()));
                    return None;
                }
            },
        };
        match serde_saphyr::from_str(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.report.error(format!("{here}: task file {file} is not valid YAML: {e}"));
                None
            }
        }
    }

    /// Checks a task file's content against what the step passes and the job provides.
    fn task_file(&mut self, step: &Value, cfg: &Value, job: &str, facts: &JobFacts) {
        let name = str_of(step, "task").unwrap_or("");
        let file = str_of(step, "file").unwrap_or("");
        let here = format!("job {job}, task {name}");
        let r = check_task_config(cfg, &format!("task file {file}"));
        self.report.errors.extend(r.errors);
        self.report.warnings.extend(r.warnings);
        if let Some(e) = missing_image(step, cfg, &here, file) {
            self.report.error(e);
        }
        // Every param the pipeline passes must be one the task declares.
        let declared: BTreeSet<String> = cfg.get("params").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        let passed: BTreeSet<String> = step.get("params").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        for k in passed.iter().filter(|k| !declared.contains(*k)) {
            self.report.error(format!("{here}: passes param {k} that {file} does not declare (declared: {})", join(&declared)));
        }
        // A param declared without a value (`NAME:`) is one the task needs to be given.
        for (k, v) in cfg.get("params").and_then(Value::as_object).into_iter().flatten() {
            if v.is_null() && !passed.contains(k) {
                self.report.error(format!("{here}: {file} requires param {k} (declared without a default), which the step does not set"));
            }
        }
        if let Some(params) = step.get("params").and_then(Value::as_object) {
            let (errors, warnings) = task_config::problems(params, &here, self.opts.vars.as_ref());
            self.report.errors.extend(errors);
            self.report.warnings.extend(warnings);
        }
        // Every required input must be provided by a get, a put or an earlier task.
        let mapping: BTreeMap<String, String> = step
            .get("input_mapping")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        let inputs: BTreeSet<String> =
            cfg.get("inputs").and_then(Value::as_array).into_iter().flatten().filter_map(|i| str_of(i, "name").map(str::to_string)).collect();
        for k in mapping.keys().filter(|k| !inputs.contains(*k)) {
            self.report.error(format!("{here}: input_mapping names '{k}', which {file} does not take as an input (inputs: {})", join(&inputs)));
        }
        for input in cfg.get("inputs").and_then(Value::as_array).into_iter().flatten() {
            let Some(iname) = str_of(input, "name") else { continue };
            if input.get("optional").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            let source = mapping.get(iname).cloned().unwrap_or_else(|| iname.to_string());
            if !facts.artifacts.contains(&source) {
                self.report.error(format!("{here}: {file} needs input '{iname}' but no get, put or task output in the job provides '{source}'"));
            }
        }
        let outputs: BTreeSet<String> =
            cfg.get("outputs").and_then(Value::as_array).into_iter().flatten().filter_map(|o| str_of(o, "name").map(str::to_string)).collect();
        for k in step.get("output_mapping").and_then(Value::as_object).into_iter().flat_map(|m| m.keys()) {
            if !outputs.contains(k) {
                self.report.error(format!("{here}: output_mapping names '{k}', which {file} does not output"));
            }
        }
    }
}

fn join(set: &BTreeSet<String>) -> String {
    if set.is_empty() { "none".into() } else { set.iter().cloned().collect::<Vec<_>>().join(", ") }
}

/// The artifact names a task step makes available (outputs, after output_mapping).
fn task_outputs(cfg: &Value, step: &Value) -> Vec<String> {
    let mapping = step.get("output_mapping").and_then(Value::as_object);
    cfg.get("outputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| str_of(o, "name"))
        .map(|n| mapping.and_then(|m| m.get(n)).and_then(Value::as_str).unwrap_or(n).to_string())
        .collect()
}

/// A task runs in the step's `image:`, else its config's `image_resource` (or
/// `rootfs_uri`); with neither, Concourse fails the build when the step starts.
fn missing_image(step: &Value, cfg: &Value, here: &str, config: &str) -> Option<String> {
    let named = step.get("image").is_some() || cfg.get("image_resource").is_some() || cfg.get("rootfs_uri").is_some();
    (!named).then(|| format!("{here}: no image: {config} names none and the step gives no `image:`"))
}

/// Checks a task config (a task file's content, or a step's `config:`).
pub fn check_task_config(cfg: &Value, at: &str) -> Report {
    let mut r = Report::default();
    let Some(obj) = cfg.as_object() else {
        r.error(format!("{at}: a task config must be a map"));
        return r;
    };
    let unknown = unknown_keys(obj, &[TASK_CONFIG_KEYS]);
    if !unknown.is_empty() {
        r.error(format!("{at}: unknown fields {unknown:?}"));
    }
    if str_of(cfg, "platform").is_none() {
        r.error(format!("{at}: missing platform (e.g. platform: linux)"));
    }
    if let Some(img) = obj.get("image_resource") {
        if str_of(img, "type").is_none() {
            r.error(format!("{at}: image_resource needs a type (registry-image)"));
        }
    }
    match obj.get("run") {
        Some(run) if str_of(run, "path").is_some() => {
            if let Some(o) = run.as_object() {
                let unknown = unknown_keys(o, &[&["path", "args", "dir", "user"]]);
                if !unknown.is_empty() {
                    r.error(format!("{at}: run has unknown fields {unknown:?}"));
                }
            }
        }
        _ => r.error(format!("{at}: missing run.path")),
    }
    for list in ["inputs", "outputs"] {
        let mut seen = BTreeSet::new();
        for item in obj.get(list).and_then(Value::as_array).into_iter().flatten() {
            match str_of(item, "name") {
                Some(n) if !seen.insert(n.to_string()) => r.error(format!("{at}: {list} lists '{n}' twice")),
                Some(_) => {}
                None => r.error(format!("{at}: every entry of {list} needs a name")),
            }
            if let Some(o) = item.as_object() {
                let unknown = unknown_keys(o, &[&["name", "path", "optional"]]);
                if !unknown.is_empty() {
                    r.error(format!("{at}: {list} entry has unknown fields {unknown:?}"));
                }
            }
        }
    }
    if let Some(p) = obj.get("params") {
        if !p.is_object() {
            r.error(format!("{at}: params must be a map"));
        }
    }
    r
}

/// Validates a pipeline's YAML text.
pub fn check_pipeline(text: &str, opts: &Options) -> Report {
    let mut report = Report::default();
    let pipeline: Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            report.error(format!("not valid YAML: {e}"));
            return report;
        }
    };
    let Some(top) = pipeline.as_object() else {
        report.error("a pipeline must be a map with resources, jobs, ...");
        return report;
    };
    for k in top.keys().filter(|k| !TOP_KEYS.contains(&k.as_str())) {
        // Real Concourse accepts extra top-level keys (YAML anchors live there).
        report.warn(format!("top-level key '{k}' is not a pipeline field (fine for YAML anchors)"));
    }
    let list = |key: &str| top.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    let (resources, resource_types, jobs, groups) = (list("resources"), list("resource_types"), list("jobs"), list("groups"));

    // Names: present, well-formed, unique per kind.
    let mut names_by_kind: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (kind, items, allowed) in [
        ("resource", &resources, RESOURCE_KEYS),
        ("resource_type", &resource_types, RESOURCE_TYPE_KEYS),
        ("job", &jobs, JOB_KEYS),
        ("group", &groups, &["name", "jobs", "resources"][..]),
    ] {
        let seen = names_by_kind.entry(kind).or_default();
        for (i, item) in items.iter().enumerate() {
            let Some(name) = str_of(item, "name") else {
                report.error(format!("{kind}s[{i}] has no name"));
                continue;
            };
            if !valid_identifier(name) {
                report.warn(format!("{kind} '{name}': names should be lowercase letters, digits, '-', '_' or '.'"));
            }
            if !seen.insert(name.to_string()) {
                report.error(format!("{kind} '{name}' appears more than once"));
            }
            if matches!(kind, "resource" | "resource_type") && str_of(item, "type").is_none() {
                report.error(format!("{kind} '{name}' has no type"));
            }
            if let Some(o) = item.as_object() {
                let unknown = unknown_keys(o, &[allowed]);
                if !unknown.is_empty() {
                    report.error(format!("{kind} '{name}': unknown fields {unknown:?}"));
                }
            }
            if let Some(every) = str_of(item, "check_every") {
                if every != "never" && !every.contains("((") && parse_go_duration(every).is_none() {
                    report.error(format!("{kind} '{name}': check_every {every:?} is not a duration or 'never'"));
                }
            }
        }
    }
    let resource_names = names_by_kind["resource"].clone();
    let job_names = names_by_kind["job"].clone();
    let type_names = names_by_kind["resource_type"].clone();
    for r in &resources {
        if let (Some(name), Some(t)) = (str_of(r, "name"), str_of(r, "type")) {
            let core = ["git", "time", "registry-image", "s3", "semver", "docker-image", "pool", "github-release", "cf", "bosh-io-release", "bosh-io-stemcell", "mock"];
            if !type_names.contains(t) && !core.contains(&t) {
                report.error(format!("resource '{name}' has type '{t}', which is neither declared in resource_types nor a core type"));
            }
        }
    }

    let lockstep_resources: BTreeSet<String> =
        resources.iter().filter(|r| str_of(r, "type") == Some("lockstep")).filter_map(|r| str_of(r, "name").map(str::to_string)).collect();
    for r in resources.iter().filter(|r| str_of(r, "type") == Some("lockstep")) {
        if let Some(source) = r.get("source") {
            report.errors.extend(lockstep_resource::source_errors(str_of(r, "name").unwrap_or("?"), source, opts.vars.as_ref()));
        }
    }
    let mut checker = Checker { opts, report, resources: resource_names.clone(), used_resources: BTreeSet::new(), lockstep_resources };
    let mut all_facts: BTreeMap<String, JobFacts> = BTreeMap::new();
    for job in &jobs {
        let Some(name) = str_of(job, "name") else { continue };
        if let Some(o) = job.as_object() {
            for key in ["serial", "public", "interruptible", "disable_manual_trigger"] {
                check_bool(&mut checker.report, o, key, &format!("job '{name}'"));
            }
        }
        let mut facts = JobFacts::default();
        match job.get("plan").and_then(Value::as_array) {
            Some(plan) => {
                for (i, step) in plan.iter().enumerate() {
                    checker.step(step, &format!("job {name} plan[{i}]"), &mut facts);
                }
            }
            None => checker.report.error(format!("job '{name}' has no plan")),
        }
        for hook in ["on_success", "on_failure", "on_abort", "on_error", "ensure"] {
            if let Some(s) = job.get(hook) {
                checker.step(s, &format!("job {name} {hook}"), &mut facts);
            }
        }
        for (get, n) in &facts.get_names {
            if *n > 1 {
                checker.report.error(format!("job '{name}' gets '{get}' more than once"));
            }
        }
        if let Some(m) = job.get("max_in_flight") {
            if m.as_i64().is_some_and(|n| n <= 0) {
                checker.report.error(format!("job '{name}': max_in_flight must be above 0"));
            }
        }
        all_facts.insert(name.to_string(), facts);
    }
    // Task files are read once: their outputs are artifacts of the job too.
    let mut task_configs: BTreeMap<String, Vec<(Value, Value)>> = BTreeMap::new();
    for (job, facts) in all_facts.iter_mut() {
        for step in &facts.task_files {
            if let Some(cfg) = checker.read_task_file(step, job) {
                task_configs.entry(job.clone()).or_default().push((step.clone(), cfg));
            }
        }
        for (step, cfg) in task_configs.get(job).into_iter().flatten() {
            facts.artifacts.extend(task_outputs(cfg, step));
        }
    }
    for (job, facts) in &all_facts {
        for (here, artifact) in &facts.needed {
            if !facts.artifacts.contains(artifact) {
                checker.report.error(format!("{here} is in '{artifact}', which no get, put or task output in job '{job}' provides"));
            }
        }
        for (step, cfg) in task_configs.get(job).into_iter().flatten() {
            checker.task_file(step, cfg, job, facts);
        }
        for (here, resource, passed) in &facts.passed {
            for p in passed {
                match all_facts.get(p) {
                    None => checker.report.error(format!("{here}: passed names unknown job '{p}'")),
                    Some(f) if !f.resources.contains(resource) => {
                        checker.report.error(format!("{here}: job '{p}' does not interact with resource '{resource}'"))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let mut report = checker.report;
    for r in resource_names.difference(&checker.used_resources) {
        report.error(format!("resource '{r}' is not used"));
    }
    if !groups.is_empty() {
        let mut grouped = BTreeSet::new();
        for g in &groups {
            let gname = str_of(g, "name").unwrap_or("?");
            for j in g.get("jobs").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !j.contains('*') && !job_names.contains(j) {
                    report.error(format!("group '{gname}' has unknown job '{j}'"));
                }
                grouped.insert(j.to_string());
            }
            for r in g.get("resources").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !resource_names.contains(r) {
                    report.error(format!("group '{gname}' has unknown resource '{r}'"));
                }
            }
        }
        for j in job_names.iter().filter(|j| !grouped.contains(*j)) {
            report.error(format!("job '{j}' belongs to no group"));
        }
    }
    if let Some(vars) = &opts.vars {
        let defined: BTreeSet<String> = vars.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        let used = vars_in_value(&pipeline);
        for v in used.difference(&defined) {
            report.error(format!("(({v})) is used but not defined in the vars file"));
        }
        for v in defined.difference(&used) {
            report.warn(format!("var '{v}' in the vars file is not used by the pipeline"));
        }
    }
    // A hook given by one anchor (on_failure, on_error, on_abort) is checked once per use:
    // say each finding once.
    let mut seen = BTreeSet::new();
    report.errors.retain(|e| seen.insert(e.clone()));
    report.warnings.retain(|w| seen.insert(w.clone()));
    report
}

/// Validates a pipeline file; task files are looked up under `repo_root` (default: the
/// directory above the pipeline's directory, where `tasks/` lives beside `pipelines/`).
pub fn check_pipeline_file(path: &Path, vars_file: Option<&Path>, repo_root: Option<&Path>) -> anyhow::Result<Report> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let vars = match vars_file {
        Some(v) => {
            let t = std::fs::read_to_string(v).with_context(|| format!("reading {}", v.display()))?;
            Some(serde_saphyr::from_str::<Value>(&t).with_context(|| format!("{} is not valid YAML", v.display()))?)
        }
        None => None,
    };
    let root = match repo_root {
        Some(r) => r.to_path_buf(),
        None => std::path::absolute(path)?.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default(),
    };
    Ok(check_pipeline(&text, &Options { repo_root: Some(root), vars }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Report {
        check_pipeline(yaml, &Options::default())
    }

    const GOOD: &str = r#"
resource_types:
- name: lockstep
  type: registry-image
  source: {repository: lockstep}
resources:
- name: nightly
  type: time
  source: {interval: 24h}
- name: backups
  type: lockstep
  source: {store: {bucket: ((bucket))}}
jobs:
- name: backup
  serial: true
  plan:
  - get: nightly
    trigger: true
  - put: backups
    params: {action: backup}
    get_params: {skip_download: true}
- name: drill
  plan:
  - get: backups
    passed: [backup]
    trigger: true
  - task: smoke
    timeout: 1h30m
    config:
      platform: linux
      image_resource: {type: registry-image, source: {repository: busybox}}
      inputs: [{name: backups}]
      run: {path: sh, args: [-c, "true"]}
"#;

    #[test]
    fn a_good_pipeline_passes() {
        let r = check(GOOD);
        assert!(r.is_ok(), "{:?}", r.errors);
    }

    #[test]
    fn the_checks_fly_makes() {
        let cases: &[(&str, &str, &str)] = &[
            ("trigger: true", "triger: true", "unknown fields [\"triger\"]"),
            ("passed: [backup]", "passed: [nope]", "passed names unknown job 'nope'"),
            ("- get: nightly\n    trigger: true", "- get: nightly\n    trigger: true\n  - get: nightly", "gets 'nightly' more than once"),
            ("put: backups", "put: backupz", "unknown resource 'backupz'"),
            ("timeout: 1h30m", "timeout: soon", "is not a duration"),
            ("- name: drill", "- name: backup", "job 'backup' appears more than once"),
            ("  - task: smoke\n", "  - task: smoke\n    file: x/y.yml\n", "either file or config"),
            ("type: time", "type: tyme", "neither declared in resource_types nor a core type"),
        ];
        for (from, to, expect) in cases {
            assert!(GOOD.contains(from), "{from}");
            let r = check(&GOOD.replacen(from, to, 1));
            assert!(r.errors.iter().any(|e| e.contains(expect)), "{to}: {:?}", r.errors);
        }
    }

    #[test]
    fn unused_resources_and_interaction() {
        let y = GOOD.replace("resources:\n", "resources:\n- name: spare\n  type: git\n  source: {}\n");
        assert!(check(&y).errors.iter().any(|e| e == "resource 'spare' is not used"));
        let y = GOOD
            .replace("resources:\n", "resources:\n- name: spare\n  type: git\n  source: {}\n")
            .replace("  - get: backups\n    passed: [backup]", "  - get: spare\n    passed: [backup]\n  - get: backups\n    passed: [backup]");
        let r = check(&y);
        assert!(r.errors.iter().any(|e| e.contains("job 'backup' does not interact with resource 'spare'")), "{:?}", r.errors);
    }

    #[test]
    fn groups_must_cover_jobs() {
        let y = format!("{GOOD}groups:\n- name: main\n  jobs: [backup, ghost]\n");
        let r = check(&y);
        assert!(r.errors.iter().any(|e| e.contains("unknown job 'ghost'")));
        assert!(r.errors.iter().any(|e| e.contains("job 'drill' belongs to no group")));
    }

    #[test]
    fn vars_must_be_defined() {
        let vars: Value = serde_saphyr::from_str("other: 1\n").unwrap();
        let r = check_pipeline(GOOD, &Options { vars: Some(vars), repo_root: None });
        assert!(r.errors.iter().any(|e| e.contains("((bucket)) is used but not defined")), "{:?}", r.errors);
        assert_eq!(vars_in("a ((x.y)) b ((vault:p/q.r)) ((.:local)) ((z))"), ["p/q", "x", "z"].iter().map(|s| s.to_string()).collect());
    }

    #[test]
    fn task_configs() {
        let cfg: Value = serde_saphyr::from_str("platform: linux\nrun: {}\ninputs: [{name: a}, {name: a}]\nextra: 1\n").unwrap();
        let r = check_task_config(&cfg, "t");
        assert!(r.errors.iter().any(|e| e.contains("missing run.path")));
        assert!(r.errors.iter().any(|e| e.contains("lists 'a' twice")));
        assert!(r.errors.iter().any(|e| e.contains("unknown fields [\"extra\"]")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_go_duration("24h").unwrap().as_secs(), 86400);
        assert_eq!(parse_go_duration("500ms").unwrap().as_millis(), 500);
        assert!(parse_go_duration("1d").is_none());
        assert!(parse_go_duration("h").is_none());
        assert!(parse_go_duration("").is_none());
    }

    #[test]
    fn task_files_must_declare_what_the_pipeline_passes() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::create_dir(dir.path().join("tasks")).unwrap();
        std::fs::write(
            dir.path().join("tasks/backup.yml"),
            "platform: linux\nimage_resource: {type: registry-image, source: {repository: x}}\ninputs: [{name: lockstep}, {name: config}]\noutputs: [{name: out}]\nparams: {DEPLOYMENT: }\nrun: {path: lockstep/tasks/backup.sh}\n",
        )
        .unwrap();
        let pipeline = r#"
resources:
- name: lockstep
  type: git
  source: {uri: x}
jobs:
- name: backup
  plan:
  - get: lockstep
  - task: backup
    file: lockstep/tasks/backup.yml
    params: {DEPLOYMENT: cf, DEPLOYMNET: typo}
    output_mapping: {result: x}
  - task: missing
    file: lockstep/tasks/nope.yml
"#;
        let r = check_pipeline(pipeline, &Options { repo_root: Some(dir.path().to_path_buf()), vars: None });
        let all = r.errors.join("\n");
        assert!(all.contains("passes param DEPLOYMNET that lockstep/tasks/backup.yml does not declare"), "{all}");
        assert!(all.contains("needs input 'config' but no get, put or task output in the job provides 'config'"), "{all}");
        assert!(all.contains("output_mapping names 'result'"), "{all}");
        assert!(all.contains("task file lockstep/tasks/nope.yml"), "{all}");
        assert!(!all.contains("needs input 'lockstep'"), "{all}");

        // A file task's output is an artifact for the steps after it.
        let consumer = "platform: linux\nimage_resource: {type: registry-image, source: {repository: x}}\ninputs: [{name: out}]\nrun: {path: x}\n";
        std::fs::write(dir.path().join("tasks/consume.yml"), consumer).unwrap();
        let pipeline = r#"
resources:
- name: lockstep
  type: git
  source: {uri: x}
jobs:
- name: backup
  plan:
  - get: lockstep
  - task: backup
    file: lockstep/tasks/backup.yml
    params: {DEPLOYMENT: cf}
    input_mapping: {config: lockstep}
    output_mapping: {out: result}
  - task: consume
    file: lockstep/tasks/consume.yml
    input_mapping: {out: result}
  - load_var: x
    file: result/value
"#;
        let r = check_pipeline(pipeline, &Options { repo_root: Some(dir.path().to_path_buf()), vars: None });
        assert!(r.is_ok(), "{:?}", r.errors);
        let r = check_pipeline(&pipeline.replace("file: result/value", "file: reslut/value"), &Options { repo_root: Some(dir.path().to_path_buf()), vars: None });
        assert!(r.errors.iter().any(|e| e.contains("file reslut/value is in 'reslut'")), "{:?}", r.errors);
    }

    #[test]
    fn across_steps_are_checked_as_atc_reads_them() {
        let good = r#"
resources:
- name: nightly
  type: time
  source: {interval: 24h}
jobs:
- name: j
  plan:
  - get: nightly
  - across:
    - var: d
      values: [a, b]
      max_in_flight: all
    fail_fast: true
    task: t
    config:
      platform: linux
      image_resource: {type: registry-image, source: {repository: x}}
      run: {path: echo, args: ["((.:d))"]}
"#;
        assert!(check(good).is_ok(), "{:?}", check(good).errors);
        for (from, to, expect) in [
            ("    fail_fast: true\n", "", ""),
            ("      max_in_flight: all", "      max_in_flight: 3", ""),
            ("      values: [a, b]", "      values: ((list))", ""),
            ("      max_in_flight: all", "      max_in_flight: some", "max_in_flight must be a number or \"all\""),
            ("      max_in_flight: all", "      max_in_flight: 0", "max_in_flight must be above 0"),
            ("      max_in_flight: all", "      max_inflight: 2", "across: unknown fields [\"max_inflight\"]"),
            ("      values: [a, b]", "      values: 5", "values must be a list or one ((var))"),
            ("  - across:\n    - var: d\n", "  - across:\n    - values: [c]\n    - var: d\n", "across needs a var"),
        ] {
            let r = check(&good.replace(from, to));
            match expect {
                "" => assert!(r.is_ok(), "{to}: {:?}", r.errors),
                e => assert!(r.errors.iter().any(|x| x.contains(e)), "{to}: {:?}", r.errors),
            }
        }
        // fail_fast belongs to the across step only.
        let r = check(&good.replace("  - across:\n    - var: d\n      values: [a, b]\n      max_in_flight: all\n    fail_fast: true\n", "  - fail_fast: true\n"));
        assert!(r.errors.iter().any(|x| x.contains("unknown fields [\"fail_fast\"]")), "{:?}", r.errors);
    }

    #[test]
    fn vars_in_comments_are_not_vars_and_unused_vars_are_warned() {
        let y = GOOD.replace("resources:\n", "# use ((commented)) here\nresources:\n");
        let vars: Value = serde_saphyr::from_str("bucket: backups\nstale: 1\n").unwrap();
        let r = check_pipeline(&y, &Options { vars: Some(vars), repo_root: None });
        assert!(r.is_ok(), "{:?}", r.errors);
        assert_eq!(r.warnings, vec!["var 'stale' in the vars file is not used by the pipeline".to_string()]);
    }

    #[test]
    fn task_files_from_lockstep_image_and_what_steps_must_give() {
        let pipeline = r#"
resources:
- name: img
  type: registry-image
  source: {repository: x}
- name: backups
  type: s3
  source: {bucket: b}
jobs:
- name: drill
  plan:
  - get: backups
  - get: img
  - task: drill
    image: img
    file: img/rootfs/opt/lockstep/tasks/restore-drill.yml
    input_mapping: {artifact: backups, smoke: nope}
  - task: verify
    image: other
    file: elsewhere/tasks/verify.yml
    params: {LOCKSTEP_CONFIG: {}}
"#;
        // No repository at hand: lockstep's own task files are built in.
        let empty = tempfile::TempDir::new().unwrap();
        let r = check_pipeline(pipeline, &Options { repo_root: Some(empty.path().to_path_buf()), vars: None });
        let all = r.errors.join("\n");
        assert!(all.contains("requires param DRILL_CONFIG (declared without a default), which the step does not set"), "{all}");
        assert!(!all.contains("input_mapping names"), "{all}");
        assert!(all.contains("(task verify): image is in 'other', which no get, put or task output in job 'drill' provides"), "{all}");
        assert!(all.contains("(task verify): file elsewhere/tasks/verify.yml is in 'elsewhere'"), "{all}");
        // Outside the image prefix, nothing is built in: the file must exist.
        assert!(all.contains("task file elsewhere/tasks/verify.yml"), "{all}");
        assert!(!all.contains("task drill): image"), "{all}");
        let y = pipeline.replace("smoke: nope", "smoek: nope");
        let r = check_pipeline(&y, &Options { repo_root: Some(empty.path().to_path_buf()), vars: None });
        assert!(r.errors.iter().any(|e| e.contains("input_mapping names 'smoek', which img/rootfs/opt/lockstep/tasks/restore-drill.yml does not take")), "{:?}", r.errors);
    }
}

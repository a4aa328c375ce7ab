//! The pipelines and task files operators paste into Concourse: every pipeline validates
//! with its example vars (as `fly validate-pipeline` would, plus lockstep's own checks), every
//! task file is valid, documented and consistent with its script and the image, the
//! configuration a pipeline writes once is a valid lockstep configuration wherever it is
//! used, and the validator catches what a broken copy gets wrong.

mod pipeline_support;

use lockstep::config::{from_env, Config};
use lockstep::frontend::pipeline_check::{check_pipeline_file, check_task_config, Report, LOCKSTEP_TASKS};
use pipeline_support::{interpolate, pipeline_path, read, repo, vars_path, yaml};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

const PIPELINES: &[&str] = &["backup", "director-backup", "restore", "platform-backup", "platform-restore"];
/// The tasks that take lockstep's configuration (LOCKSTEP_CONFIG).
const TASKS: &[&str] =
    &["backup", "backup-cleanup", "pre-backup-check", "prune", "restore", "restore-cleanup", "restore-drill", "verify"];
/// The tasks that talk to Ops Manager and take a store URL (`lockstep opsman`, `verify`).
const OPSMAN_TASKS: &[&str] = &["opsman-guard", "opsman-import", "platform-backup", "platform-verify"];
/// Params of the Ops Manager tasks that lockstep reads from the environment itself (om's and
/// the AWS CLI's variables): `opsman_env` in common.sh unsets the empty ones.
const ENV_READ_PARAMS: &[&str] =
    &["OM_USERNAME", "OM_PASSWORD", "OM_CLIENT_ID", "OM_CLIENT_SECRET", "OM_SKIP_SSL_VALIDATION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];
/// Secrets among the Ops Manager tasks' params: each one ((var)) in a pipeline.
const OPSMAN_SECRETS: &[&str] = &["OM_PASSWORD", "OM_CLIENT_SECRET", "OM_DECRYPTION_PASSPHRASE", "AWS_SECRET_ACCESS_KEY", "LOCKSTEP_AGE_IDENTITY"];

fn all_tasks() -> BTreeSet<String> {
    TASKS.iter().chain(OPSMAN_TASKS).map(|t| t.to_string()).collect()
}
/// Where the image carries the task scripts (Dockerfile: COPY tasks/ /opt/lockstep/tasks/).
const IMAGE_TASKS: &str = "/opt/lockstep/tasks/";

fn files_in(dir: &str, suffix: &str) -> BTreeSet<String> {
    fs::read_dir(repo().join(dir))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(suffix).map(str::to_string))
        .collect()
}

/// Errors and warnings: the samples pass `--strict`, so neither may be there.
fn problems(r: &Report) -> Vec<String> {
    let mut out = r.errors.clone();
    out.extend(r.warnings.iter().cloned());
    out
}

#[test]
fn the_expected_pipelines_and_tasks_exist() {
    let pipelines = files_in("pipelines", ".yml");
    let expected: BTreeSet<String> =
        PIPELINES.iter().flat_map(|p| [p.to_string(), format!("{p}-vars.example")]).collect();
    assert_eq!(pipelines, expected, "pipelines/: each pipeline with its vars example, nothing else");
    assert_eq!(files_in("tasks", ".yml"), all_tasks());
    let mut scripts = files_in("tasks", ".sh");
    assert!(scripts.remove("common"), "tasks/common.sh holds what the scripts share");
    assert_eq!(scripts, all_tasks(), "one script per task");
}

#[test]
fn every_pipeline_validates_with_its_example_vars() {
    for name in PIPELINES {
        let r = check_pipeline_file(&pipeline_path(name), Some(&vars_path(name)), Some(&repo())).unwrap();
        assert!(problems(&r).is_empty(), "pipelines/{name}.yml: {:#?}", problems(&r));
    }
}

#[test]
fn pipelines_validate_without_the_repository_from_the_task_files_built_in() {
    // An operator's pipeline lives elsewhere: the task files it loads from the image are
    // checked against the copies compiled into lockstep.
    let empty = tempfile::TempDir::new().unwrap();
    for name in PIPELINES {
        let r = check_pipeline_file(&pipeline_path(name), Some(&vars_path(name)), Some(empty.path())).unwrap();
        assert!(problems(&r).is_empty(), "pipelines/{name}.yml: {:#?}", problems(&r));
    }
    let tasks: BTreeSet<String> = LOCKSTEP_TASKS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(tasks, all_tasks().iter().map(|t| format!("tasks/{t}.yml")).collect(), "LOCKSTEP_TASKS lists every task file");
    for (n, text) in LOCKSTEP_TASKS {
        assert_eq!(*text, read(&repo().join(n)), "{n}");
    }
}

/// The `params:` block of a task file: each name with whether a comment line documents it.
fn documented_params(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut in_params = false;
    let mut prev_comment = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_params = line == "params:";
            prev_comment = false;
            continue;
        }
        if !in_params {
            continue;
        }
        let t = line.trim_start();
        if t.starts_with('#') {
            prev_comment = true;
        } else if let Some((name, _)) = t.split_once(':') {
            if line.len() - t.len() == 2 {
                out.push((name.to_string(), prev_comment));
            }
            prev_comment = false;
        }
    }
    out
}

#[test]
fn every_task_file_is_valid_documented_and_matches_its_script() {
    let common = read(&repo().join("tasks/common.sh"));
    for task in &all_tasks() {
        let takes_config = TASKS.contains(&task.as_str());
        let file = format!("tasks/{task}.yml");
        let text = read(&repo().join(&file));
        let cfg = yaml(&text);
        let r = check_task_config(&cfg, &file);
        assert!(r.errors.is_empty() && r.warnings.is_empty(), "{file}: {r:?}");
        assert_eq!(cfg["platform"], "linux", "{file}");

        // No default image: nothing publishes one, and a name someone else could claim would
        // run their image with every secret. The step (or fly execute --image) gives it.
        assert!(cfg.get("image_resource").is_none() && cfg.get("rootfs_uri").is_none(), "{file}: a default image");
        assert!(text.contains("--image"), "{file}: say how to give the image");

        // It runs its own script, from the image.
        let path = cfg["run"]["path"].as_str().unwrap();
        assert_eq!(path, format!("{IMAGE_TASKS}{task}.sh"), "{file}");
        let script_path = repo().join(format!("tasks/{task}.sh"));
        let script = read(&script_path);
        assert!(script.starts_with("#!/bin/sh\n"), "{task}.sh: POSIX sh (the image has busybox only)");
        assert!(script.contains("\nset -eu\n"), "{task}.sh: set -eu");
        assert!(script.contains(". \"$(dirname \"$0\")/common.sh\""), "{task}.sh sources common.sh beside it");
        for line in script.lines().chain(common.lines()).map(str::trim).filter(|l| !l.starts_with('#')) {
            let traced = line.strip_prefix("set -").is_some_and(|opts| opts.split_whitespace().next().is_some_and(|o| o.contains('x')));
            assert!(!traced, "{task}.sh: never trace the shell ({line}): params hold secrets");
        }
        let mode = fs::metadata(&script_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{task}.sh must be executable: run.path names it");

        // Every param is documented by a comment right above it, and used by the script.
        let params = documented_params(&text);
        let declared: BTreeSet<String> = cfg["params"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(params.iter().map(|(n, _)| n.clone()).collect::<BTreeSet<_>>(), declared, "{file}: params block");
        for (name, documented) in &params {
            assert!(documented, "{file}: param {name} has no comment above it");
            if from_env::TASK_PARAMS.contains(&name.as_str()) {
                // Read by lockstep, where the configuration names it as {from_env: NAME}.
                assert_eq!(cfg["params"][name.as_str()], "", "{file}: {name} is optional, empty by default");
                continue;
            }
            if !takes_config && ENV_READ_PARAMS.contains(&name.as_str()) {
                assert!(common.contains(&format!(" {name}")) && script.contains("opsman_env"), "{file}: {name} is read by lockstep: opsman_env must unset it when empty");
                continue;
            }
            let used = format!("{script}{common}");
            assert!(used.contains(&format!("${{{name}")) || used.contains(&format!("${name}")), "{file}: {name} is never read");
        }
        for name in from_env::TASK_PARAMS.iter().filter(|_| takes_config) {
            assert!(declared.contains(*name), "{file}: declare {name} (empty) for the configuration to name");
        }
        assert!(declared.contains("LOCKSTEP_DEBUG"), "{file}: every task takes LOCKSTEP_DEBUG");
        // Required params (declared without a value) are exactly those the script requires.
        let required: BTreeSet<String> =
            cfg["params"].as_object().unwrap().iter().filter(|(_, v)| v.is_null()).map(|(k, _)| k.clone()).collect();
        let required_by_script: BTreeSet<String> = script
            .lines()
            .filter_map(|l| l.trim().strip_prefix("require "))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .collect();
        assert_eq!(required, required_by_script, "{file}: params declared without a default vs `require` in {task}.sh");

        // Inputs the script reads are declared, and optional (ARTIFACT can replace them).
        for input in cfg["inputs"].as_array().into_iter().flatten() {
            let n = input["name"].as_str().unwrap();
            assert!(script.contains(n), "{file}: input {n} is never read by {task}.sh");
        }
        // Manual use is documented with the right file name.
        assert!(text.contains(&format!("execute -c tasks/{task}.yml")), "{file}: document `fly execute -c tasks/{task}.yml`");
    }
}

#[test]
fn task_scripts_are_posix_sh() {
    let scripts: Vec<PathBuf> = files_in("tasks", ".sh").iter().map(|s| repo().join(format!("tasks/{s}.sh"))).collect();
    let require = std::env::var("LOCKSTEP_REQUIRE_SERVERS").is_ok_and(|v| v == "1");
    let mut checked = 0;
    for shell in [&["busybox", "sh"][..], &["dash"][..]] {
        if Command::new(shell[0]).args(&shell[1..]).args(["-c", "true"]).output().is_err() {
            eprintln!("skip: {} is not installed", shell.join(" "));
            continue;
        }
        for s in &scripts {
            let out = Command::new(shell[0]).args(&shell[1..]).arg("-n").arg(s).output().unwrap();
            assert!(out.status.success(), "{} -n {}: {}", shell.join(" "), s.display(), String::from_utf8_lossy(&out.stderr));
        }
        checked += 1;
    }
    match Command::new("shellcheck").args(["-s", "sh", "-x", "-P", "SCRIPTDIR"]).args(&scripts).output() {
        Ok(out) => {
            assert!(out.status.success(), "shellcheck:\n{}", String::from_utf8_lossy(&out.stdout));
            checked += 1;
        }
        Err(_) if require => panic!("shellcheck is missing (ci/setup installs it)"),
        Err(_) => eprintln!("skip: shellcheck not installed; run ci/setup"),
    }
    assert!(checked > 0 || !require, "no POSIX shell (busybox, dash) to check the scripts with");
}

/// Every task step (with hooks and nested steps) of a job.
fn task_steps<'a>(step: &'a Value, out: &mut Vec<&'a Value>) {
    if step.get("task").is_some() {
        out.push(step);
    }
    for key in ["in_parallel", "do"] {
        for s in step.get(key).and_then(Value::as_array).into_iter().flatten() {
            task_steps(s, out);
        }
    }
    for key in ["try", "on_success", "on_failure", "on_abort", "on_error", "ensure"] {
        if let Some(s) = step.get(key) {
            task_steps(s, out);
        }
    }
}

fn all_steps(job: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    fn walk<'a>(s: &'a Value, out: &mut Vec<&'a Value>) {
        out.push(s);
        for key in ["in_parallel", "do"] {
            for x in s.get(key).and_then(Value::as_array).into_iter().flatten() {
                walk(x, out);
            }
        }
        for key in ["try", "on_success", "on_failure", "on_abort", "on_error", "ensure"] {
            if let Some(x) = s.get(key) {
                walk(x, out);
            }
        }
    }
    for s in job["plan"].as_array().unwrap() {
        walk(s, &mut out);
    }
    out
}

/// The keys under which a lockstep configuration holds secrets.
const SECRET_KEYS: &[&str] = &["private_key", "access_key_id", "secret_access_key", "session_token", "identity"];

/// Every string in `v` with its dotted path (`[]` for list elements).
fn leaves(v: &Value, at: &str) -> Vec<(String, String)> {
    match v {
        Value::String(s) => vec![(at.to_string(), s.clone())],
        Value::Object(m) => m.iter().flat_map(|(k, x)| leaves(x, &format!("{at}.{k}"))).collect(),
        Value::Array(a) => a.iter().flat_map(|x| leaves(x, &format!("{at}[]"))).collect(),
        _ => Vec::new(),
    }
}

fn secrets_are_vars(v: &Value, at: &str) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if SECRET_KEYS.contains(&k.as_str()) {
                    let s = x.as_str().unwrap_or_default();
                    assert!(s.starts_with("((") && s.ends_with("))"), "{at}.{k}: a secret must be a ((var)), not {x}");
                }
                secrets_are_vars(x, &format!("{at}.{k}"));
            }
        }
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| secrets_are_vars(x, &format!("{at}[{i}]"))),
        _ => {}
    }
}

#[test]
fn the_configuration_is_written_once_valid_everywhere_and_secrets_are_vars() {
    for name in PIPELINES {
        let raw = yaml(&read(&pipeline_path(name)));
        let vars = yaml(&read(&vars_path(name)));
        let p = interpolate(&raw, &vars);
        let here = format!("pipelines/{name}.yml");

        // The resource type and the task image are the same image.
        let image_source = &raw["resource_types"][0]["source"];
        assert_eq!(raw["resource_types"][0]["name"], "lockstep", "{here}");
        assert_eq!(raw["resource_types"][0]["type"], "registry-image", "{here}");
        let image_resource = raw["resources"].as_array().unwrap().iter().find(|r| r["name"] == "lockstep-image").unwrap();
        assert_eq!(&image_resource["source"], image_source, "{here}: lockstep-image and the resource type differ");

        // One lockstep resource; none in platform-restore, whose restores are tasks. The
        // platform store's resource has no target: its versions are the whole store.
        let lockstep_resources: Vec<&Value> =
            p["resources"].as_array().unwrap().iter().filter(|r| r["type"] == "lockstep").collect();
        assert_eq!(lockstep_resources.len(), usize::from(*name != "platform-restore"), "{here}");
        let resource = lockstep_resources.first().copied().cloned().unwrap_or(serde_json::json!({"name": "", "source": null}));
        let resource_name = resource["name"].as_str().unwrap();
        let source = &resource["source"];
        if let Some(raw_resource) = raw["resources"].as_array().unwrap().iter().find(|r| r["type"] == "lockstep") {
            secrets_are_vars(&raw_resource["source"], &here);
        }
        let config = (!source.is_null()).then(|| Config::from_value(source).unwrap_or_else(|e| panic!("{here}: the resource's source: {e:#}")));
        // In the task steps as written, every secret param is exactly one ((var)), which
        // Concourse passes whole, and no configuration holds a ((var)) for a secret or a
        // list (which a credential manager would paste into its JSON as text).
        for job in raw["jobs"].as_array().unwrap() {
            let mut tasks = Vec::new();
            for s in job["plan"].as_array().unwrap() {
                task_steps(s, &mut tasks);
            }
            for t in tasks {
                let params = t["params"].as_object().unwrap();
                for (k, v) in params {
                    if from_env::TASK_PARAMS.contains(&k.as_str()) {
                        let text = v.as_str().unwrap_or_default();
                        assert!(text.starts_with("((") && text.ends_with("))") && text.matches("((").count() == 1, "{here}: task {}: {k} is {v}, not one ((var))", t["task"]);
                    } else if OPSMAN_SECRETS.contains(&k.as_str()) {
                        let text = v.as_str().unwrap_or_default();
                        assert!(text.starts_with("((") && text.ends_with("))") && text.matches("((").count() == 1, "{here}: task {}: {k} is {v}, not one ((var))", t["task"]);
                    } else if k.ends_with("_CONFIG") {
                        for (at, x) in leaves(v, k) {
                            let last = at.rsplit(['.', '[']).next().unwrap();
                            if x.contains("((") {
                                assert!(!SECRET_KEYS.contains(&last) && !from_env::takes_structure(&at[k.len() + 1..]), "{here}: task {}: {at} is {x}", t["task"]);
                            }
                        }
                    }
                }
            }
        }
        let deployment = config.as_ref().and_then(|c| c.deployment_name()).map(str::to_string);

        let mut drill_targets = Vec::new();
        for job in p["jobs"].as_array().unwrap() {
            let jname = job["name"].as_str().unwrap();
            let mut tasks = Vec::new();
            for s in job["plan"].as_array().unwrap() {
                task_steps(s, &mut tasks);
            }
            for t in tasks {
                let tname = t["task"].as_str().unwrap();
                let params = t["params"].as_object().unwrap();
                // The task's configuration, resolved from the step's params as the task
                // resolves it, says what the resource's source says.
                let env = |n: &str| params.get(n).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
                let resolve = |c: &Value| from_env::resolve(c, &from_env::Env::Lookup(&env)).unwrap_or_else(|e| panic!("{here}: job {jname}, task {tname}: {e:#}"));
                if let Some(c) = params.get("LOCKSTEP_CONFIG") {
                    let mut resolved = resolve(c);
                    Config::from_value(&resolved).unwrap_or_else(|e| panic!("{here}: job {jname}, task {tname}: LOCKSTEP_CONFIG: {e:#}"));
                    if source.is_object() && source.get("target").is_none() {
                        // A store-only resource: the task adds its target (a service instance).
                        resolved.as_object_mut().unwrap().remove("target");
                    }
                    if !source.is_null() {
                        assert_eq!(&resolved, source, "{here}: job {jname}, task {tname}: LOCKSTEP_CONFIG is not the resource's source");
                    }
                    assert!(from_env::references(c).len() >= 3, "{here}: job {jname}, task {tname}: the secrets come from params");
                }
                if let Some(c) = params.get("DRILL_CONFIG") {
                    let drill = Config::from_value(&resolve(c)).unwrap_or_else(|e| panic!("{here}: DRILL_CONFIG: {e:#}"));
                    drill_targets.push(drill.deployment_name().unwrap().to_string());
                }

                assert_eq!(t["image"], "lockstep-image", "{here}: job {jname}, task {tname} runs in the pinned image");
            }
            // The resource's steps use the resource's interface.
            for s in all_steps(job) {
                let resource_of = |k: &str| s.get(k).map(|n| s.get("resource").unwrap_or(n).as_str().unwrap().to_string());
                if resource_of("put").as_deref() == Some(resource_name) {
                    let params = s["params"].as_object().unwrap();
                    for k in params.keys() {
                        assert!(["action", "artifact", "unsafe_lock_free", "dry_run"].contains(&k.as_str()), "{here}: put param {k}");
                    }
                    let action = params["action"].as_str().unwrap();
                    assert!(["backup", "restore", "prune"].contains(&action), "{here}: action {action}");
                    if action == "restore" {
                        let input = params["artifact"].as_str().unwrap();
                        assert_eq!(s["inputs"], serde_json::json!([input]), "{here}: the restore put streams in its artifact");
                    }
                    if action == "backup" {
                        assert_eq!(s["get_params"], serde_json::json!({"skip_download": true}), "{here}");
                        for hook in ["on_failure", "on_error", "on_abort"] {
                            assert_eq!(s[hook]["task"], "backup-cleanup", "{here}: backup put {hook}");
                        }
                    } else {
                        assert_eq!(s["no_get"], true, "{here}: a {action} put needs no implicit get");
                    }
                    if action == "restore" {
                        for hook in ["on_failure", "on_error", "on_abort"] {
                            assert_eq!(s[hook]["task"], "restore-cleanup", "{here}: restore put {hook}");
                        }
                    }
                }
                if resource_of("get").as_deref() == Some(resource_name) {
                    for k in s.get("params").and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k) {
                        assert!(["skip_download", "verify_only"].contains(&k.as_str()), "{here}: get param {k}");
                    }
                }
            }
            assert_eq!(job["serial"], true, "{here}: job {jname} is serial");
        }
        for d in &drill_targets {
            assert_ne!(Some(d), deployment.as_ref(), "{here}: the drill would restore over the deployment it backs up");
        }
        if *name == "backup" {
            assert_eq!(drill_targets.len(), 1, "{here}: one restore drill");
        }
        if p["jobs"].as_array().unwrap().iter().any(|j| all_steps(j).iter().any(|s| s["params"]["action"] == "prune")) {
            assert!(config.as_ref().is_some_and(|c| c.retention.is_some()), "{here}: prune needs a retention policy");
        }
    }
}

#[test]
fn docs_and_comments_name_files_that_exist() {
    let mut texts: Vec<(String, String)> = Vec::new();
    for f in ["docs/operator-guide.md", "README.md"] {
        texts.push((f.to_string(), read(&repo().join(f))));
    }
    for dir in ["pipelines", "tasks"] {
        for e in fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            texts.push((p.display().to_string(), read(&p)));
        }
    }
    let mut seen = 0;
    for (f, text) in &texts {
        for prefix in ["tasks/", "pipelines/", "docs/"] {
            for (i, _) in text.match_indices(prefix) {
                if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '/' || c == '.' || c == '-' || c == '_') {
                    continue; // part of a longer path (/opt/lockstep/tasks/...)
                }
                let path: String = text[i..].chars().take_while(|c| c.is_alphanumeric() || matches!(c, '/' | '.' | '-' | '_')).collect();
                let path = path.trim_end_matches('.');
                if path.ends_with(".yml") || path.ends_with(".sh") || path.ends_with(".md") {
                    assert!(repo().join(path).exists(), "{f} names {path}, which does not exist");
                    seen += 1;
                }
            }
        }
    }
    assert!(seen > 20, "only {seen} references found");
}

// ---- the validator catches what a broken copy of a pipeline gets wrong ----

/// Validates `pipelines/<name>.yml` with `from` replaced by `to` (and the vars edited by
/// `edit_vars`) in a scratch copy; returns the report.
fn broken(name: &str, from: &str, to: &str, edit_vars: impl Fn(&mut serde_json::Map<String, Value>)) -> Report {
    let text = read(&pipeline_path(name));
    assert!(text.contains(from), "pipelines/{name}.yml no longer contains {from:?}: update this test");
    let dir = tempfile::TempDir::new().unwrap();
    let p = dir.path().join("pipeline.yml");
    fs::write(&p, text.replacen(from, to, 1)).unwrap();
    let mut vars = yaml(&read(&vars_path(name)));
    edit_vars(vars.as_object_mut().unwrap());
    let v = dir.path().join("vars.yml");
    fs::write(&v, serde_json::to_string(&vars).unwrap()).unwrap();
    check_pipeline_file(&p, Some(&v), Some(&repo())).unwrap()
}

fn assert_caught(r: &Report, expect: &str) {
    assert!(r.errors.iter().any(|e| e.contains(expect)), "expected an error containing {expect:?}, got {:#?}", r.errors);
}

#[test]
fn a_typo_in_a_step_key_is_caught() {
    let r = broken("backup", "      passed: [backup]\n      trigger: true\n", "      passed: [backup]\n      triger: true\n", |_| {});
    assert_caught(&r, "unknown fields [\"triger\"]");
    let r = broken("restore", "    no_get: true\n", "    noget: true\n", |_| {});
    assert_caught(&r, "unknown fields [\"noget\"]");
}

#[test]
fn a_missing_var_is_caught() {
    let r = broken("backup", "", "", |v| {
        v.remove("backup_interval");
    });
    assert_caught(&r, "((backup_interval)) is used but not defined in the vars file");
    let r = broken("director-backup", "", "", |v| {
        v.remove("jumpbox_ssh");
    });
    assert_caught(&r, "((jumpbox_ssh)) is used but not defined");
    // And the other way round: a var nobody uses is worth a warning.
    let r = broken("restore", "", "", |v| {
        v.insert("stale".into(), Value::Bool(true));
    });
    assert!(r.warnings.iter().any(|w| w == "var 'stale' in the vars file is not used by the pipeline"), "{:?}", r.warnings);
}

#[test]
fn a_task_param_the_task_does_not_declare_is_caught() {
    let r = broken(
        "backup",
        "      SMOKE_CHECK: ((drill_smoke_check))\n",
        "      SMOKE_CHECK: ((drill_smoke_check))\n      SMOKE_CHEK: \"true\"\n",
        |_| {},
    );
    assert_caught(&r, "passes param SMOKE_CHEK that lockstep-image/rootfs/opt/lockstep/tasks/restore-drill.yml does not declare");
}

#[test]
fn a_required_task_param_left_unset_is_caught() {
    let r = broken("director-backup", "    params: &task_params\n      LOCKSTEP_CONFIG:\n", "    params: &task_params\n      LOCKSTEP_CONFI:\n", |_| {});
    assert_caught(&r, "requires param LOCKSTEP_CONFIG (declared without a default), which the step does not set");
}

#[test]
fn a_task_configuration_that_breaks_with_a_credential_manager_is_caught() {
    // A from_env name the step does not set.
    let r = broken("director-backup", "      LOCKSTEP_AGE_IDENTITY: ((age_identity))\n", "", |_| {});
    assert_caught(&r, "job backup, task pre-backup-check: LOCKSTEP_CONFIG.encryption.identity is {from_env: LOCKSTEP_AGE_IDENTITY}, which the step's params do not set");
    // A secret, or a list, pasted into the map: fine with -l, broken with CredHub; warned,
    // so --strict fails.
    let r = broken(
        "restore",
        "              instances: {from_env: LOCKSTEP_INSTANCES}\n",
        "              instances: ((instances))\n",
        |_| {},
    );
    assert!(r.warnings.iter().any(|w| w.contains("LOCKSTEP_CONFIG.target.hosts.instances is a ((var)) inside a map param")), "{:#?}", r.warnings);
    let r = broken(
        "director-backup",
        "            private_key: {from_env: LOCKSTEP_SSH_PRIVATE_KEY}\n",
        "            private_key: ((jumpbox_ssh.private_key))\n",
        |_| {},
    );
    assert!(r.warnings.iter().any(|w| w.contains("LOCKSTEP_CONFIG.target.director.private_key is a secret ((var))")), "{:#?}", r.warnings);
    // With the vars, the configuration is parsed as the task parses it.
    let r = broken("backup", "        compression: zstd\n", "        compression: zstdd\n", |_| {});
    assert_caught(&r, "job backup, task pre-backup-check: LOCKSTEP_CONFIG: ");
    assert!(r.errors.iter().any(|e| e.contains("zstdd")), "{:#?}", r.errors);
}

#[test]
fn a_task_file_or_image_the_job_never_fetches_is_caught() {
    // The drill job without its get of the image: neither the task file nor the image exist.
    let r = broken("backup", "    - get: lockstep-image\n      timeout: 15m\n      tags: ((worker_tags))\n      passed: [backup]\n", "", |_| {});
    assert_caught(&r, "task restore-drill): image is in 'lockstep-image', which no get, put or task output in job 'restore-drill' provides");
    assert_caught(&r, "tasks/restore-drill.yml is in 'lockstep-image'");
    // A task step without `image:`: the task files name none (no default image).
    let r = broken("backup", "  - task: restore-drill\n    timeout: 12h\n    tags: ((worker_tags))\n    image: lockstep-image\n", "  - task: restore-drill\n    timeout: 12h\n    tags: ((worker_tags))\n", |_| {});
    assert_caught(&r, "job restore-drill, task restore-drill: no image: lockstep-image/rootfs/opt/lockstep/tasks/restore-drill.yml names none and the step gives no `image:`");
    // A misspelt task file.
    let r = broken("backup", "tasks/restore-drill.yml", "tasks/restore-dril.yml", |_| {});
    assert_caught(&r, "task file lockstep-image/rootfs/opt/lockstep/tasks/restore-dril.yml");
    // An input mapped under a name the task does not take, so its real input is missing.
    let r = broken("backup", "      artifact: backup\n", "      artifcat: backup\n", |_| {});
    assert_caught(&r, "input_mapping names 'artifcat', which lockstep-image/rootfs/opt/lockstep/tasks/restore-drill.yml does not take");
}

#[test]
fn broken_job_wiring_is_caught() {
    let r = broken("backup", "    passed: [restore-drill]\n", "    passed: [restore-dril]\n", |_| {});
    assert_caught(&r, "passed names unknown job 'restore-dril'");
    let r = broken("director-backup", "    tags: ((worker_tags))\n    resource: director-backup\n", "    tags: ((worker_tags))\n    resource: director-backups\n", |_| {});
    assert_caught(&r, "unknown resource 'director-backups'");
    let r = broken("backup", "- name: prune\n", "- name: restore-drill\n", |_| {});
    assert_caught(&r, "job 'restore-drill' appears more than once");
}

/// A hung step must not hold a job (and, in a backup, the platform's lock) forever: every
/// get, put and task step of the samples, hooks included, has a `timeout:` Concourse
/// accepts (it aborts the step as an operator would: SIGTERM, then SIGKILL 10 s later), and
/// the `tags:` var that sends it to workers that can reach the deployment.
#[test]
fn every_step_of_the_samples_has_a_timeout_and_the_tags_var() {
    for name in PIPELINES {
        let p = yaml(&read(&pipeline_path(name)));
        for job in p["jobs"].as_array().unwrap() {
            for step in all_steps(job) {
                let Some(kind) = ["get", "put", "task"].into_iter().find(|k| step.get(*k).is_some()) else { continue };
                let t = step.get("timeout").and_then(Value::as_str);
                let at = format!("pipelines/{name}.yml job {} {kind} {}", job["name"], step[kind]);
                let t = t.unwrap_or_else(|| panic!("{at}: no timeout"));
                assert!(lockstep::config::parse_duration(t).is_ok_and(|d| d.as_secs() > 0), "{at}: timeout {t:?}");
                // Workers need network reach to the deployment: every step takes the tags var.
                assert_eq!(step.get("tags").and_then(Value::as_str), Some("((worker_tags))"), "{at}: tags");
            }
        }
    }
}

/// lockstep's own mistakes fail validation, not the first run after them: a typo in a
/// lockstep resource's params key or action, a restore without its artifact, and a
/// non-boolean where Concourse wants one (it refuses it at set-pipeline).
#[test]
fn lockstep_params_typos_and_wrong_types_are_caught() {
    let r = broken("backup", "      action: prune\n", "      acton: prune\n", |_| {});
    assert_caught(&r, "params: unknown key `acton` for a lockstep resource; allowed: action, artifact, unsafe_lock_free, dry_run");
    let r = broken("backup", "      action: prune\n", "      action: prnue\n", |_| {});
    assert_caught(&r, "params.action must be backup, restore or prune, not \"prnue\"");
    let r = broken("backup", "    get_params:\n      skip_download: true\n", "    get_params:\n      skip_dowload: true\n", |_| {});
    assert_caught(&r, "get_params: unknown key `skip_dowload` for a lockstep resource; allowed: skip_download, verify");
    let r = broken("restore", "      action: restore\n      artifact: backup\n", "      action: restore\n", |_| {});
    assert_caught(&r, "action: restore needs artifact");
    let r = broken("backup", "      trigger: true\n", "      trigger: yes-please\n", |_| {});
    assert_caught(&r, "trigger must be true or false, not \"yes-please\"");
    let r = broken("backup", "  serial: true\n", "  serial: sure\n", |_| {});
    assert_caught(&r, "job 'backup': serial must be true or false, not \"sure\"");
    // The resource's source, through the configuration parser the binaries use: with the
    // vars, the whole of it (a nested typo, a wrong value); without, its top-level keys.
    let r = broken("backup", "  compression: zstd\n", "  compresion: zstd\n", |_| {});
    assert_caught(&r, "resource 'backup': source: unknown key `compresion`");
    let r = broken("backup", "  compression: zstd\n", "  compression: lz4\n", |_| {});
    assert_caught(&r, "resource 'backup': ");
    assert_caught(&r, "lz4");
    let r = broken("backup", "  region_name: ((backup_region))\n", "  regoin_name: ((backup_region))\n", |_| {});
    assert_caught(&r, "resource 'backup': store: unknown key `regoin_name`");
    let dir = tempfile::TempDir::new().unwrap();
    let p = dir.path().join("pipeline.yml");
    fs::write(&p, read(&pipeline_path("backup")).replacen("  compression: zstd\n", "  compresion: zstd\n", 1)).unwrap();
    let r = check_pipeline_file(&p, None, Some(&repo())).unwrap();
    assert_caught(&r, "resource 'backup': source: unknown key `compresion`; allowed keys: target, store, compression");
}

/// `--strict`, as fly's: warnings fail too. A top-level key that is no pipeline field (a YAML
/// anchor key) is a warning, accepted without it and refused with it.
#[test]
fn strict_fails_on_warnings_as_fly_does() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("p.yml");
    std::fs::write(
        &file,
        "anchors: &t {interval: 1h}\nresources:\n- name: t\n  type: time\n  source: *t\njobs:\n- name: j\n  plan:\n  - get: t\n    trigger: true\n",
    )
    .unwrap();
    let run = |strict: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"));
        c.arg("validate-pipeline").arg(&file);
        if strict {
            c.arg("--strict");
        }
        let o = c.output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, err) = run(false);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("top-level key 'anchors' is not a pipeline field"), "{err}");
    let (code, err) = run(true);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("1 warning(s), which --strict treats as errors"), "{err}");
}

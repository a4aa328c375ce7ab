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
//! LOCKSTEP_CONFIG and DRILL_CONFIG) is replaced, wherever it is used, by one for a local
//! target (directories made by `lockstep::frontend::demo::create_deployment`) and a
//! local-directory store, so no server is needed. `tests/pipeline_credentials.rs` runs the
//! same samples unchanged against the sshd fleet and an S3 server, with their vars from
//! `fly set-pipeline -l` and from a credential manager.
//!
//! The platform pipelines run against the Ops Manager double (`support::opsman`): the
//! service-instance job's `across` step (one backup per deployment, each a local one named
//! after the across var), and the restore pipeline's import into a fresh Ops Manager and
//! its gate. Their director and product steps need a director and its VMs, and the whole
//! platform backup (`lockstep opsman backup`) is run in `tests/platform_backup.rs`; here
//! those steps are validated only (`tests/pipelines.rs`).

mod pipeline_support;
mod support;

use lockstep::frontend::demo::{create_deployment, snapshot};
use lockstep::model::InstanceId;
use pipeline_support::runner::{lockstep_dir, replace_values, set_task_param, task_shell, Runner};
use pipeline_support::{interpolated_pipeline, read, repo, vars_path, yaml};
use support::opsman::{OpsMan, Spec};
use serde_json::{json, Map, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;


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

// ---- the platform pipelines ----

/// The example vars' value of `var`, replaced everywhere in `p` by `to`.
fn set_var(p: &mut Value, name: &str, var: &str, to: Value) {
    let example = yaml(&read(&vars_path(name)))[var].clone();
    assert!(!example.is_null(), "no var {var} in {name}'s example vars");
    replace_values(p, &example, &to);
}

/// Adds (or replaces) `param` in the task steps named `task`.
fn task_param(v: &mut Value, task: &str, param: &str, to: Value) {
    match v {
        Value::Object(m) => {
            if m.get("task").and_then(Value::as_str) == Some(task) {
                m["params"].as_object_mut().unwrap().insert(param.to_string(), to.clone());
            }
            m.values_mut().for_each(|x| task_param(x, task, param, to.clone()));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| task_param(x, task, param, to.clone())),
        _ => {}
    }
}

/// An Ops Manager double whose client and admin are the example vars'.
fn example_opsman() -> (Spec, OpsMan) {
    let mut spec = Spec::platform("-----BEGIN RSA PRIVATE KEY-----\nbbr\n-----END RSA PRIVATE KEY-----\n");
    spec.client = ("lockstep-backups".into(), "change-me".into());
    spec.user = ("admin".into(), "change-me".into());
    spec.passphrase = "change-me".into();
    let om = OpsMan::start(spec.clone());
    (spec, om)
}

fn service_instances_pipeline(site: &Site, om: &OpsMan) -> Runner {
    // Every service instance is a local deployment named after the across var.
    let config = local_config("((.:deployment))", &site.deployment, &site.store);
    Runner::new(
        "platform-backup",
        &site.work,
        &[("lockstep_config", config)],
        &[
            ("opsman_url", json!(om.url)),
            ("opsman_ca_cert", json!(om.ca_pem)),
            ("service_instance_deployments", json!(["service-instance_6f1b0c1e", "service-instance_0d9e8f7a"])),
        ],
    )
}

#[test]
fn the_platform_backups_service_instances_run_across_their_deployments() {
    let site = Site::new();
    let (_, om) = example_opsman();
    let mut r = service_instances_pipeline(&site, &om);
    assert_eq!(r.run_job("service-instances"), Some(true), "{}", r.log);
    assert_ran(&r, &["service-instances/task opsman-guard ok", "service-instances/task backup ok", "service-instances/task backup ok"]);
    assert_eq!(r.across_runs, vec![json!({"deployment": "service-instance_6f1b0c1e"}), json!({"deployment": "service-instance_0d9e8f7a"})]);
    let names = committed(&site.store);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("service-instance_6f1b0c1e_")) && names.iter().any(|n| n.starts_with("service-instance_0d9e8f7a_")), "{names:?}");
    assert!(r.log.contains("Ops Manager is not applying changes."), "{}", r.log);
}

#[test]
fn the_service_instances_wait_while_ops_manager_applies_changes() {
    let site = Site::new();
    let (_, om) = example_opsman();
    om.edit(|s| s.installations.insert(0, (9, "running".into(), "bob".into())));
    let mut r = service_instances_pipeline(&site, &om);
    assert_eq!(r.run_job("service-instances"), Some(false));
    assert_ran(&r, &["service-instances/task opsman-guard FAILED"]);
    assert!(r.log.contains("Ops Manager is applying changes"), "{}", r.log);
    assert!(r.across_runs.is_empty() && committed(&site.store).is_empty());
}

#[test]
fn the_platform_restore_pipeline_imports_into_a_fresh_ops_manager_then_gates() {
    let site = Site::new();
    let (spec, old) = example_opsman();
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["opsman", "export", "-a", site.store.to_str().unwrap(), "--ca-cert", &old.ca_pem])
        .env("OM_TARGET", &old.url)
        .env("OM_USERNAME", &spec.user.0)
        .env("OM_PASSWORD", &spec.user.1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let artifact = committed(&site.store).pop().unwrap();

    let fresh = OpsMan::start(Spec::unconfigured(&spec));
    let mut p = interpolated_pipeline("platform-restore");
    set_var(&mut p, "platform-restore", "opsman_url", json!(fresh.url));
    set_var(&mut p, "platform-restore", "opsman_ca_cert", json!(fresh.ca_pem));
    set_var(&mut p, "platform-restore", "opsman_artifact", json!(artifact));
    let store = json!(format!("file://{}", site.store.display()));
    assert_eq!(set_task_param(&mut p, "STORE", &store), 1);
    // The export above is not encrypted; wait for Ops Manager briefly.
    assert!(set_task_param(&mut p, "LOCKSTEP_AGE_IDENTITY", &json!("")) > 0);
    task_param(&mut p, "opsman-import", "POLLING_INTERVAL", json!("50ms"));
    let mut r = Runner::from_pipeline(p, &site.work, json!({}));

    // The gate before the import: a fresh Ops Manager has no users, so it fails.
    assert_eq!(r.run_job("director-changes-applied"), Some(false));
    assert_eq!(r.run_job("import"), Some(true), "{}", r.log);
    assert_eq!(fresh.imports().len(), 1);
    assert_eq!(fresh.imports()[0].sha256, old.served()[0], "the imported installation is the exported one");
    assert!(!r.log.contains("change-me"), "a secret in the log:\n{}", r.log);
    assert_eq!(r.run_job("director-changes-applied"), Some(true), "{}", r.log);
    assert_ran(&r, &["director-changes-applied/task opsman-guard FAILED", "import/task opsman-import ok", "director-changes-applied/task opsman-guard ok"]);
}

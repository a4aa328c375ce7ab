//! `pipelines/platform-backup.yml`'s `platform` and `prune` jobs run step by step as
//! Concourse runs them (`pipeline_support::runner`), against the Ops Manager double, the
//! director double and the sshd fleet: the guard, `lockstep opsman backup` through
//! `tasks/platform-backup.sh` (the platform record's name handed to the next task), the
//! verify of every member, and a prune that keeps the newest platform backup whole. The
//! store is a local directory (`file://`), read back with the filesystem.

mod pipeline_support;
mod support;

use age::secrecy::ExposeSecret;
use pipeline_support::runner::{replace_values, set_task_param, Runner};
use pipeline_support::{interpolated_pipeline, read, vars_path, yaml};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::Command;
use support::director::{user_exists, AuthMode, DeploymentSpec, Director, VmSpec};
use support::fleet::{Fleet, KeyKind, Vm};
use support::opsman::{OpsMan, Spec};

const CF: &str = "cf-9f8e7d6c5b4a";

/// The `bbr` user Ops Manager's key logs in as on the director VM, removed afterwards when
/// this test made it.
struct Bbr(bool);

impl Bbr {
    fn ensure() -> Bbr {
        if user_exists("bbr") {
            return Bbr(false);
        }
        assert!(Command::new("useradd").args(["-M", "-s", "/bin/sh", "-p", "*", "bbr"]).status().unwrap().success());
        fs::write("/etc/sudoers.d/lockstep-pipeline-bbr", "bbr ALL=(ALL) NOPASSWD: ALL\n").unwrap();
        fs::set_permissions("/etc/sudoers.d/lockstep-pipeline-bbr", std::os::unix::fs::PermissionsExt::from_mode(0o440)).unwrap();
        Bbr(true)
    }
}

impl Drop for Bbr {
    fn drop(&mut self) {
        if self.0 {
            let _ = fs::remove_file("/etc/sudoers.d/lockstep-pipeline-bbr");
            let _ = Command::new("userdel").args(["-f", "bbr"]).status();
        }
    }
}

/// A job with every BBR script that copies `data` in and out.
fn bbr_job(vm: &Vm, name: &str, data: &str) {
    let store = format!("/var/vcap/store/{name}");
    fs::create_dir_all(vm.host_path(&store)).unwrap();
    fs::write(vm.host_path(&format!("{store}/data")), data).unwrap();
    for (script, body) in [
        ("pre-backup-lock", "true".to_string()),
        ("post-backup-unlock", "true".to_string()),
        ("backup", format!("cp -a {store}/data \"$BBR_ARTIFACT_DIRECTORY\"")),
        ("restore", format!("cp -a \"$BBR_ARTIFACT_DIRECTORY/data\" {store}/data")),
    ] {
        vm.install_script(name, script, &format!("#!/bin/sh\n{body}\n"));
    }
}

fn platform_dirs(store: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(store).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(prefix)).collect();
    v.sort();
    v
}

#[test]
fn the_platform_job_backs_up_verifies_and_the_prune_keeps_a_platform_whole() {
    let Some(fleet) = Fleet::start("pipeline_platform", 2) else { return };
    let _bbr = Bbr::ensure();
    bbr_job(&fleet.vms[0], "director", "director database\n");
    bbr_job(&fleet.vms[1], "cloud_controller", "ccdb\n");
    let api = VmSpec {
        group: "api".into(),
        index: 0,
        id: "a1-api".into(),
        address: fleet.vms[1].address(),
        host_key_line: fleet.vms[1].host_key_line.clone(),
        bootstrap: true,
    };
    let manifest = format!("name: {CF}\ninstance_groups:\n- name: api\n  instances: 1\n  jobs:\n  - name: cloud_controller\n    release: capi\n");
    let mut spec = Spec::platform(&fs::read_to_string(fleet.key(KeyKind::RsaPem).private).unwrap());
    spec.products.retain(|(kind, _)| kind == "p-bosh" || kind == "cf");
    // The example vars' Ops Manager client.
    spec.client = ("lockstep-backups".into(), "change-me".into());
    let (client, secret) = spec.bbr_client.clone().unwrap();
    let director = Director::start(AuthMode::Uaa { client, secret }, vec![DeploymentSpec { name: CF.into(), manifest, vms: vec![api] }], fleet.dir().join("authorized_keys"));
    spec.cas = vec![(director.ca_pem.clone(), true)];
    spec.export_size = 2 << 20;
    let om = OpsMan::start(spec);

    let tmp = tempfile::TempDir::new().unwrap();
    let store = tmp.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let work = tmp.path().join("builds");
    fs::create_dir_all(&work).unwrap();
    let identity = age::x25519::Identity::generate();

    let mut p = interpolated_pipeline("platform-backup");
    let vars = yaml(&read(&vars_path("platform-backup")));
    for (var, to) in [("opsman_url", json!(om.url)), ("opsman_ca_cert", json!(om.ca_pem)), ("age_recipient", json!(identity.to_public().to_string()))] {
        replace_values(&mut p, &vars[var], &to);
    }
    for (param, to) in [
        ("STORE", json!(format!("file://{}", store.display()))),
        ("LOCKSTEP_AGE_IDENTITY", json!(identity.to_string().expose_secret())),
        ("DIRECTOR_SSH", json!(fleet.vms[0].address())),
        ("DIRECTOR_URL", json!(director.url)),
        ("DIRECTOR_HOST_PUBLIC_KEY", json!(fleet.vms[0].host_key_line)),
    ] {
        if set_task_param(&mut p, param, &to) == 0 {
            // Params the pipeline leaves at the task's default: given here as a step would.
            for s in p["jobs"][0]["plan"].as_array_mut().unwrap().iter_mut().filter(|s| s["task"] == "platform-backup") {
                s["params"][param] = to.clone();
            }
        }
    }
    // The resource prunes the same store, keeping one platform backup.
    for r in p["resources"].as_array_mut().unwrap().iter_mut().filter(|r| r["type"] == "lockstep") {
        r["source"] = json!({"store": {"path": store.to_str().unwrap()}, "retention": {"keep_last": 1, "min_age": "0s", "grace": "0s"}});
    }
    let mut r = Runner::from_pipeline(p, &work, json!({}));

    assert_eq!(r.run_job("platform"), Some(true), "{}", r.log);
    assert_eq!(
        r.journal,
        ["platform/task opsman-guard ok", "platform/task platform-backup ok", "platform/task platform-verify ok"].map(String::from).to_vec(),
        "{}",
        r.log
    );
    let first = platform_dirs(&store, "platform_");
    assert_eq!(first.len(), 1, "{}", r.log);
    assert!(r.log.contains(&format!("Platform record: {}", first[0])), "{}", r.log);
    let members: Value = serde_json::from_slice(&fs::read(store.join(&first[0]).join("platform.json")).unwrap()).unwrap();
    let names: Vec<String> = members["members"].as_array().unwrap().iter().map(|m| m["artifact"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), 3, "the export, the director and cf: {names:?}");
    for n in &names {
        assert!(store.join(n).join("lockstep.json").is_file(), "{n} is not committed");
    }
    assert!(!r.log.contains("change-me") && !r.log.contains("AGE-SECRET-KEY"), "a secret in the log:\n{}", r.log);

    // A second platform backup, then the prune: the older platform and its members go, the
    // newer one stays whole.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(r.run_job("platform"), Some(true), "{}", r.log);
    assert_eq!(r.run_job("prune"), Some(true), "{}", r.log);
    let kept = platform_dirs(&store, "platform_");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_ne!(kept, first);
    let record: Value = serde_json::from_slice(&fs::read(store.join(&kept[0]).join("platform.json")).unwrap()).unwrap();
    for m in record["members"].as_array().unwrap() {
        let n = m["artifact"].as_str().unwrap();
        assert!(store.join(n).join("lockstep.json").is_file(), "the kept platform lost its member {n}");
    }
    for n in &names {
        assert!(!store.join(n).exists(), "{n}, a member of the pruned platform, is still there");
    }
}

//! One run at a time (issue: two backups of one deployment at once destroyed each other).
//! Over the sshd fleet, through the `lockstep hosts` command as an operator runs it: a
//! second backup, a restore or a pre-backup-check while a backup holds the instances is
//! refused before any script that changes anything runs, told whose run holds them; the
//! survivor's artifact verifies; a killed run's claim is released by `backup-cleanup`.
//! What ran is read from a calls log each instance's scripts append to.

mod support;

use assert_cmd::Command;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use support::fleet::{Fleet, Vm};
use tempfile::TempDir;

const CALLS: &str = "/var/vcap/calls.log";
const RELEASE: &str = "/var/vcap/release-backup";

/// Every BBR script of job `store`, each appending its name to the calls log; the backup
/// script waits for the release file, so a test can hold a run mid-backup.
fn install(vm: &Vm) {
    for s in ["pre-backup-lock", "post-backup-unlock", "pre-restore-lock", "restore", "post-restore-unlock"] {
        vm.install_script("store", s, &format!("#!/bin/sh\necho {s} >> {CALLS}\n"));
    }
    vm.install_script(
        "store",
        "backup",
        &format!(
            "#!/bin/sh\necho backup >> {CALLS}\necho data > \"$BBR_ARTIFACT_DIRECTORY/data\"\n\
             while [ ! -e {RELEASE} ]; do sleep 0.1; done\n"
        ),
    );
}

fn calls(vm: &Vm) -> Vec<String> {
    fs::read_to_string(vm.host_path(CALLS)).unwrap_or_default().lines().map(str::to_string).collect()
}

fn clear_calls(fleet: &Fleet) {
    for vm in &fleet.vms {
        let _ = fs::remove_file(vm.host_path(CALLS));
    }
}

fn release(fleet: &Fleet, on: bool) {
    for vm in &fleet.vms {
        if on {
            fs::write(vm.host_path(RELEASE), "").unwrap();
        } else {
            let _ = fs::remove_file(vm.host_path(RELEASE));
        }
    }
}

struct Setup {
    fleet: Fleet,
    tmp: TempDir,
    inventory: PathBuf,
    store: PathBuf,
}

fn setup(test: &str) -> Option<Setup> {
    let fleet = Fleet::start(test, 2)?;
    for vm in &fleet.vms {
        install(vm);
    }
    let tmp = TempDir::new().unwrap();
    let inventory = tmp.path().join("inventory.yml");
    fs::write(&inventory, fleet.inventory("shop", &[("db", 0, 0), ("db", 1, 1)], "vcap")).unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    Some(Setup { fleet, tmp, inventory, store })
}

impl Setup {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::cargo_bin("lockstep").unwrap();
        c.current_dir(self.tmp.path()).arg("hosts").arg("--inventory").arg(&self.inventory).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let o = self.cmd(args).output().unwrap();
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    }

    fn spawn_backup(&self) -> Child {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("lockstep"))
            .current_dir(self.tmp.path())
            .arg("hosts")
            .arg("--inventory")
            .arg(&self.inventory)
            .args(["backup", "-a"])
            .arg(&self.store)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn wait_for_backup_scripts(&self) {
        let start = Instant::now();
        while !self.fleet.vms.iter().all(|vm| calls(vm).contains(&"backup".to_string())) {
            assert!(start.elapsed() < Duration::from_secs(30), "the backup scripts never started");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn artifacts(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.store).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
        v.sort();
        v
    }

    fn staging_exists(&self) -> Vec<bool> {
        self.fleet.vms.iter().map(|vm| vm.host_path("/var/vcap/store/bbr-backup").exists()).collect()
    }
}

fn finish(child: Child) -> (i32, String) {
    let o = child.wait_with_output().unwrap();
    (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn verify(store: &Path, artifact: &Path) {
    let _ = store;
    let o = Command::cargo_bin("lockstep").unwrap().args(["verify", "-a"]).arg(artifact).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_second_backup_a_restore_and_a_check_are_refused_while_a_backup_holds_the_instances() {
    let Some(s) = setup("a_second_backup_a_restore_and_a_check_are_refused_while_a_backup_holds_the_instances") else { return };
    // An artifact to try restoring.
    release(&s.fleet, true);
    let (code, out, err) = s.run(&["backup", "-a", s.store.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let earlier = s.artifacts().pop().unwrap();
    release(&s.fleet, false);
    clear_calls(&s.fleet);

    let holder = s.spawn_backup();
    let holder_pid = holder.id();
    s.wait_for_backup_scripts();

    let (code, out, err) = s.run(&["backup", "-a", s.store.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("another lockstep run (backup") && err.contains(&format!("pid {holder_pid}")), "names the holder: {err}");
    assert!(err.contains("if it is gone, run backup-cleanup"), "{err}");
    let (code, out, err) = s.run(&["restore", "-a", earlier.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("another lockstep run (backup") && err.contains(&format!("pid {holder_pid}")), "{err}");
    let (code, out, err) = s.run(&["pre-backup-check"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("another lockstep run (backup"), "{err}");
    // The refused runs left the holder's staging alone.
    assert_eq!(s.staging_exists(), [true, true]);

    release(&s.fleet, true);
    let (code, log) = finish(holder);
    assert_eq!(code, 0, "{log}");
    for vm in &s.fleet.vms {
        assert_eq!(calls(vm), ["pre-backup-lock", "backup", "post-backup-unlock"], "only the holder's scripts ran, once each");
    }
    assert_eq!(s.staging_exists(), [false, false], "the holder released its claim");
    let survivor = s.artifacts().into_iter().find(|a| a != &earlier).expect("the holder's artifact");
    verify(&s.store, &survivor);

    // Released: the next backup proceeds.
    let (code, out, err) = s.run(&["backup", "-a", s.store.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn two_backups_started_together_one_proceeds_and_the_other_is_refused() {
    let Some(s) = setup("two_backups_started_together_one_proceeds_and_the_other_is_refused") else { return };
    release(&s.fleet, false);
    let (a, b) = (s.spawn_backup(), s.spawn_backup());
    // The refused one exits on its own; the other waits in its backup script.
    s.wait_for_backup_scripts();
    std::thread::sleep(Duration::from_millis(500));
    release(&s.fleet, true);
    let results = [finish(a), finish(b)];
    let codes: Vec<i32> = results.iter().map(|r| r.0).collect();
    assert!(codes.contains(&0) && codes.contains(&1), "exactly one proceeds: {results:?}");
    let loser = &results.iter().find(|r| r.0 == 1).unwrap().1;
    assert!(loser.contains("already exists on instance") || loser.contains("another lockstep run"), "{loser}");
    for vm in &s.fleet.vms {
        assert_eq!(calls(vm), ["pre-backup-lock", "backup", "post-backup-unlock"], "every script ran exactly once");
    }
    let artifacts = s.artifacts();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    verify(&s.store, &artifacts[0]);
    assert_eq!(s.staging_exists(), [false, false]);
}

#[test]
fn a_killed_runs_claim_is_reported_and_released_by_backup_cleanup() {
    let Some(s) = setup("a_killed_runs_claim_is_reported_and_released_by_backup_cleanup") else { return };
    release(&s.fleet, false);
    let mut killed = s.spawn_backup();
    s.wait_for_backup_scripts();
    let pid = killed.id();
    killed.kill().unwrap();
    killed.wait().unwrap();
    // The backup scripts of the killed run are still waiting; let them end.
    release(&s.fleet, true);

    let (code, out, err) = s.run(&["backup", "-a", s.store.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    let (code, out, err) = s.run(&["backup-cleanup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Staging directory held by lockstep run backup") && out.contains(&format!("pid {pid}")), "{out}");
    assert!(out.contains("db/0, db/1"), "{out}");
    assert_eq!(s.staging_exists(), [false, false]);
    for vm in &s.fleet.vms {
        assert_eq!(calls(vm).last().map(String::as_str), Some("post-backup-unlock"), "cleanup unlocked");
    }
    clear_calls(&s.fleet);
    let (code, out, err) = s.run(&["backup", "-a", s.store.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // The killed run's lease in the store is still fresh, but its run no longer holds the
    // instances: taken over, and said so.
    assert!(out.contains("WARNING: taking over the lease of a backup that no longer holds the instances") && out.contains(&format!("pid {pid}")), "{out}");
    assert_eq!(s.artifacts().len(), 1, "the killed run committed nothing");
}

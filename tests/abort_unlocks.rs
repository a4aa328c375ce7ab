//! An abort while the platform is locked, as Concourse sends it (SIGTERM, then SIGKILL),
//! through the real `lockstep` binary over a real sshd: every owed unlock must finish on
//! its instance although lockstep is killed a moment after the SIGTERM, and a later
//! `backup-cleanup` must find what those unlocks did, report it (a failure as bit 8), and
//! leave nothing behind. The instances' own calls logs say what ran and when it ended.
//!
//! SIGKILL comes 1 s after SIGTERM here, harsher than Concourse's 10 s: two unlock levels of
//! 4 s each, run level by level, would need 8 s.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::fleet::Fleet;
use support::owed_jobs::{calls, count, install, wait_for};
use tempfile::TempDir;

/// One at a time: each kills lockstep runs and looks at the processes they leave.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn lockstep(dir: &Path, inventory: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("lockstep"));
    c.current_dir(dir).arg("hosts").arg("--inventory").arg(inventory).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Starts `lockstep hosts backup` of `api` and `db` and returns once both backup scripts run.
fn backing_up(fleet: &Fleet, db_fails_once: bool) -> (TempDir, std::path::PathBuf, std::process::Child) {
    let [api, db] = [&fleet.vms[0], &fleet.vms[1]];
    install(api, "api", false, 4);
    install(db, "db", db_fails_once, 4);
    let tmp = TempDir::new().unwrap();
    let inventory = tmp.path().join("inventory.yml");
    fs::write(&inventory, fleet.inventory("cf", &[("api", 0, 0), ("db", 0, 1)], "vcap")).unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let child = lockstep(tmp.path(), &inventory, &["backup", "-a", store.to_str().unwrap()]).spawn().unwrap();
    wait_for("both backup scripts running", Duration::from_secs(60), || {
        count(api, "api backup start") == 1 && count(db, "db backup start") == 1
    });
    (tmp, inventory, child)
}

/// The id of the run that holds the instance's staging directory (its run record).
fn holding_run(vm: &support::fleet::Vm) -> String {
    let record = fs::read_to_string(vm.host_path("/var/vcap/store/bbr-backup/.lockstep-run")).unwrap();
    let v: serde_json::Value = serde_json::from_str(record.trim()).unwrap();
    v["run"].as_str().unwrap().to_string()
}

/// Processes on this machine (the fleet's VMs share it) carrying `LOCKSTEP_RUN=<run>`.
fn run_processes(run: &str) -> Vec<u32> {
    let want = format!("LOCKSTEP_RUN={run}");
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let env = fs::read(e.path().join("environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// A lost worker: lockstep killed outright (no SIGTERM) while the backup scripts run. They
/// keep running on the instances; `backup-cleanup` must stop them before it unlocks.
#[test]
fn cleanup_after_a_sigkill_stops_the_scripts_the_run_left_running_before_it_unlocks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = Fleet::start("cleanup_after_a_sigkill_stops_the_scripts", 2) else { return };
    let [api, db] = [&fleet.vms[0], &fleet.vms[1]];
    let (tmp, inventory, mut child) = backing_up(&fleet, false);
    let run = holding_run(api);
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!run_processes(&run).is_empty(), "the killed run's backup scripts should still run (nothing stopped them)");
    assert_eq!(count(api, "api post-backup-unlock start") + count(db, "db post-backup-unlock start"), 0);

    let o = lockstep(tmp.path(), &inventory, &["backup-cleanup"]).output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("process(es) that run") && out.contains("scripts left running on api/0"), "{out}");
    assert!(out.contains("scripts left running on db/0"), "{out}");
    assert!(run_processes(&run).is_empty(), "still running: {:?}", run_processes(&run));
    // Stopped, never finished; then unlocked once each, by the cleanup.
    for (vm, job) in [(api, "api"), (db, "db")] {
        assert_eq!(count(vm, &format!("{job} backup end")), 0, "{:?}", calls(vm));
        assert_eq!(count(vm, &format!("{job} post-backup-unlock end")), 1, "{:?}", calls(vm));
        assert!(!vm.host_path("/var/vcap/store/bbr-backup").exists());
    }
}

#[test]
fn sigterm_while_locked_unlocks_every_level_though_sigkill_follows_and_cleanup_reports_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = Fleet::start("sigterm_while_locked_unlocks_every_level", 2) else { return };
    let [api, db] = [&fleet.vms[0], &fleet.vms[1]];
    let (tmp, inventory, child) = backing_up(&fleet, true);
    let run = holding_run(api);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_secs(1));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let o = child.wait_with_output().unwrap();
    let log = text(&o);

    // Both levels' unlocks ran to their end on the instances, lockstep being long dead.
    wait_for("every unlock finished", Duration::from_secs(20), || {
        count(api, "api post-backup-unlock end") == 1 && count(db, "db post-backup-unlock end") == 1
    });
    assert_eq!(count(api, "api post-backup-unlock start"), 1, "{:?}\n{log}", calls(api));
    assert_eq!(count(db, "db post-backup-unlock start"), 1, "{:?}\n{log}", calls(db));
    assert!(log.contains("stop requested: starting all 2 owed post-backup-unlock script(s) now"), "{log}");
    // db's failed; only the instance knows. A cleanup must find it and say so.
    assert!(db.host_path("/var/vcap/data/failed-once").exists());

    let o = lockstep(tmp.path(), &inventory, &["backup-cleanup"]).output().unwrap();
    let out = text(&o);
    let code = o.status.code().unwrap();
    assert_eq!(code & 8, 8, "the stopped run's failed unlock is an unlock failure (bit 8): exit {code}\n{out}");
    assert!(out.contains("post-backup-unlock for job db on db/0, started by stopped run"), "{out}");
    assert!(out.contains("db unlock failed - exit code 3"), "{out}");
    assert!(out.contains("post-backup-unlock for job api on api/0, started by stopped run") && out.contains("finished (exit code 0)"), "{out}");
    // The cleanup then ran every unlock itself, as bbr's does (db's succeeds this time),
    // and left nothing: no staging directory, no kept unlock results.
    assert_eq!(count(api, "api post-backup-unlock end"), 2, "{:?}", calls(api));
    assert_eq!(count(db, "db post-backup-unlock end"), 2, "{:?}", calls(db));
    for vm in [api, db] {
        assert!(!vm.host_path("/var/vcap/store/bbr-backup").exists(), "staging left\n{out}");
        let owed = vm.host_path("/var/vcap/data/lockstep/owed");
        let left: Vec<_> = fs::read_dir(&owed).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "unlock results left on the instance: {left:?}\n{out}");
    }
    assert!(run_processes(&run).is_empty(), "the stopped run's scripts still run: {:?}", run_processes(&run));
    // A second cleanup finds nothing left by a stopped run.
    let o = lockstep(tmp.path(), &inventory, &["backup-cleanup"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("started by a stopped run"), "{}", text(&o));
}

/// The mount namespace a process lives in (each test VM has its own, as each real VM).
fn mount_ns(pid: u32) -> Option<std::path::PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// One instance's cleanup stops that instance's scripts only. The test VMs share one kernel
/// (and /proc), as containers on a host do: a cleanup that stopped every process carrying
/// the run's id would reach into the other VM, and which VM then reported the stop would
/// depend on which cleanup ran first.
#[test]
fn stopping_a_run_on_one_instance_leaves_the_other_instances_scripts_alone() {
    use lockstep::instance::{Instance, ShellInstance};
    use lockstep::model::InstanceId;
    use lockstep::transport::ssh::SshTransport;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = Fleet::start("stopping_a_run_on_one_instance", 2) else { return };
    let [api, db] = [&fleet.vms[0], &fleet.vms[1]];
    let (_tmp, _inventory, mut child) = backing_up(&fleet, false);
    let run = holding_run(api);
    child.kill().unwrap();
    child.wait().unwrap();
    let (api_ns, db_ns) = (mount_ns(api.pid()).unwrap(), mount_ns(db.pid()).unwrap());
    assert_ne!(api_ns, db_ns, "the test VMs must be namespaces of their own");
    let in_ns = |ns: &std::path::PathBuf| run_processes(&run).into_iter().filter(|&p| mount_ns(p).as_ref() == Some(ns)).count();
    assert!(in_ns(&api_ns) > 0 && in_ns(&db_ns) > 0, "both VMs' backup scripts should still run");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let instance = |i: usize, name: &str| {
        ShellInstance::new(InstanceId::new(name, "0"), Box::new(SshTransport::new(fleet.ssh_config(i, "vcap"))))
    };
    let stopped = rt.block_on(instance(0, "api").stop_run(lockstep::orchestrate::RUN_ENV, &run)).unwrap();
    assert!(stopped > 0, "api's scripts were not found");
    assert_eq!(in_ns(&api_ns), 0, "api's scripts still run");
    assert!(in_ns(&db_ns) > 0, "stopping the run on api stopped db's scripts too");
    let stopped = rt.block_on(instance(1, "db").stop_run(lockstep::orchestrate::RUN_ENV, &run)).unwrap();
    assert!(stopped > 0, "db's scripts were not found");
    assert!(run_processes(&run).is_empty(), "still running: {:?}", run_processes(&run));
}

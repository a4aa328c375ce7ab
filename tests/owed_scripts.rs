//! The detached runner for owed scripts (`Instance::run_owed`) on a local instance, with
//! real shells and processes: a script started twice for one run runs once; a start
//! without waiting is collected later with its output and exit code; a script killed
//! without writing its status, or whose kept directory a cleanup removed, ends the wait
//! with an error instead of hanging it.

use lockstep::instance::{Instance, ShellInstance, OWED_ROOT};
use lockstep::model::{InstanceId, ScriptKind};
use lockstep::transport::local::LocalTransport;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const KIND: ScriptKind = ScriptKind::PostBackupUnlock;

/// A local instance with job `api` whose unlock counts its runs, prints, sleeps `secs` and
/// exits `code`.
fn instance(root: &Path, secs: u32, code: i32) -> ShellInstance {
    let bbr = root.join("var/vcap/jobs/api/bin/bbr");
    std::fs::create_dir_all(&bbr).unwrap();
    let body = format!(
        "#!/bin/sh\necho run >> '{}/runs'\necho \"unlocked $MARK\"\necho 'to stderr' >&2\nsleep {secs}\nexit {code}\n",
        root.display()
    );
    std::fs::write(bbr.join(KIND.file_name()), body).unwrap();
    std::fs::set_permissions(bbr.join(KIND.file_name()), std::fs::Permissions::from_mode(0o755)).unwrap();
    ShellInstance::new(InstanceId::new("api", "0"), Box::new(LocalTransport::new(root.to_string_lossy().into_owned())))
}

fn runs(root: &Path) -> usize {
    std::fs::read_to_string(root.join("runs")).unwrap_or_default().lines().count()
}

fn kept(root: &Path, run: &str) -> PathBuf {
    root.join(OWED_ROOT.trim_start_matches('/')).join(run).join(format!("api.{KIND}"))
}

fn env() -> Vec<(String, String)> {
    vec![("MARK".into(), "m1".into())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_once_per_run_and_collected_with_its_output_and_code() {
    let tmp = TempDir::new().unwrap();
    let inst = instance(tmp.path(), 1, 0);
    // Two attempts at once (a retry racing the first): one run of the script, both see it.
    let mark = env();
    let (a, b) = tokio::join!(inst.run_owed("r1", "api", KIND, &mark, true), inst.run_owed("r1", "api", KIND, &mark, true));
    assert_eq!(a.unwrap(), b"unlocked m1\n");
    assert_eq!(b.unwrap(), b"unlocked m1\n");
    assert_eq!(runs(tmp.path()), 1);
    // Its results stay until forgotten; a new run runs it again.
    assert!(kept(tmp.path(), "r1").join("status").exists());
    inst.forget_owed("r1").await.unwrap();
    assert!(!kept(tmp.path(), "r1").exists());
    inst.run_owed("r2", "api", KIND, &env(), true).await.unwrap();
    assert_eq!(runs(tmp.path()), 2);

    // A failing one: started without waiting, collected later, its code and stderr kept.
    let tmp = TempDir::new().unwrap();
    let inst = instance(tmp.path(), 1, 3);
    let started = Instant::now();
    inst.run_owed("r3", "api", KIND, &env(), false).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(900), "a start must not wait for the script");
    assert_eq!(inst.owed_left().await.unwrap(), vec![("r3".to_string(), "api".to_string(), KIND)]);
    let e = format!("{:#}", inst.run_owed("r3", "api", KIND, &[], true).await.unwrap_err());
    assert!(e.contains("to stderr - exit code 3"), "{e}");
    assert_eq!(runs(tmp.path()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_never_hangs_on_a_script_killed_without_a_status_or_on_removed_results() {
    let tmp = TempDir::new().unwrap();
    let inst = instance(tmp.path(), 30, 0);
    inst.run_owed("r1", "api", KIND, &env(), false).await.unwrap();
    while runs(tmp.path()) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The script and its shell are killed outright (an instance's OOM killer, a reboot):
    // its own process group, as setsid made it (it has started, so setsid has run).
    let pid: i32 = std::fs::read_to_string(kept(tmp.path(), "r1").join("pid")).unwrap().trim().parse().unwrap();
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let t = Instant::now();
    let e = format!("{:#}", inst.run_owed("r1", "api", KIND, &[], true).await.unwrap_err());
    assert!(e.contains("the script stopped without an exit status"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A waiter left by a killed lockstep, whose kept directory a cleanup then removes.
    let inst2 = instance(tmp.path(), 30, 0);
    inst2.run_owed("r2", "api", KIND, &env(), false).await.unwrap();
    let pid: i32 = std::fs::read_to_string(kept(tmp.path(), "r2").join("pid")).unwrap().trim().parse().unwrap();
    let waiter = tokio::spawn(async move { inst2.run_owed("r2", "api", KIND, &[], true).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    inst.forget_owed("r2").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("the waiter still waits").unwrap();
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("what this script kept is gone"), "{e}");
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

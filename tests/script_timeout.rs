//! A BBR script that hangs is stopped at its limit (`script_timeout`, default
//! [`DEFAULT_SCRIPT_TIMEOUT`]) and the run is told why; its processes do not live on.

use lockstep::instance::{Instance, ShellInstance, DEFAULT_SCRIPT_TIMEOUT};
use lockstep::model::{InstanceId, ScriptKind};
use lockstep::transport::local::LocalTransport;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A local instance whose `api` job's restore script records its process id and hangs.
fn hanging_restore(root: &Path) -> ShellInstance {
    let bbr = root.join("var/vcap/jobs/api/bin/bbr");
    std::fs::create_dir_all(&bbr).unwrap();
    let script = bbr.join(ScriptKind::Restore.file_name());
    std::fs::write(&script, format!("#!/bin/sh\necho $$ > '{}/pid'\nexec sleep 60\n", root.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    ShellInstance::new(InstanceId::new("api", "0"), Box::new(LocalTransport::new(root.to_string_lossy().into_owned())))
}

fn alive(pid: &str) -> bool {
    // Gone, or a zombie waiting to be reaped: either way it runs no more.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.split_whitespace().nth(2).is_some_and(|st| st == "Z"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_script_is_stopped_at_its_limit_and_says_so() {
    let tmp = TempDir::new().unwrap();
    let inst = hanging_restore(tmp.path()).with_script_timeout(Some(Duration::from_secs(1)));
    let start = Instant::now();
    let err = inst.run_script("api", ScriptKind::Restore, &[]).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    let msg = format!("{err:#}");
    assert!(msg.contains("running restore for job api on api/0"), "{msg}");
    assert!(msg.contains("longer than 1s (script_timeout)") && msg.contains("raise script_timeout"), "{msg}");
    let pid = std::fs::read_to_string(tmp.path().join("pid")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid.trim()) {
        assert!(Instant::now() < deadline, "the hung script {pid} still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_setting_a_script_has_a_day() {
    assert_eq!(DEFAULT_SCRIPT_TIMEOUT, Duration::from_secs(24 * 3600));
    // A script that ends in time is not affected by the default.
    let tmp = TempDir::new().unwrap();
    let bbr = tmp.path().join("var/vcap/jobs/api/bin/bbr");
    std::fs::create_dir_all(&bbr).unwrap();
    let script = bbr.join(ScriptKind::Restore.file_name());
    std::fs::write(&script, "#!/bin/sh\necho restored\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inst = ShellInstance::new(InstanceId::new("api", "0"), Box::new(LocalTransport::new(tmp.path().to_string_lossy().into_owned())));
    assert_eq!(inst.with_script_timeout(None).run_script("api", ScriptKind::Restore, &[]).await.unwrap(), b"restored\n");
}

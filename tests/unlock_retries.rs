//! A network hang while the platform is locked, over a real sshd with a stalling TCP
//! forwarder in front of it (`tests/support/stall_proxy.rs`): the lock script's connection
//! goes silent, keepalives notice, and the owed unlock is tried again on a new connection
//! until the network is back. Before, the one unlock attempt failed and the instance stayed
//! locked (exit 12). The instance's own calls log, not lockstep's report, says what ran.

mod support;

use lockstep::events::{Event, Recorder};
use lockstep::orchestrate::backup::{backup, BackupOptions};
use lockstep::orchestrate::{Ctx, FailureKind};
use lockstep::store::local::LocalStore;
use lockstep::target::{HostsTarget, SshOptions};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::fleet::{Fleet, Vm};
use support::stall_proxy::StallProxy;
use tempfile::TempDir;

const CALLS: &str = "/var/vcap/data/bbr-events.log";

/// One job whose scripts append `<ns> <script>` to the calls log; the lock then sleeps
/// `lock_secs`, and the unlock exits `unlock_exit`.
fn install_job(vm: &Vm, lock_secs: u32, unlock_exit: u32) {
    let head = format!("#!/bin/sh\nmkdir -p /var/vcap/data\necho \"$(date +%s%N) $(basename \"$0\")\" >> {CALLS}\n");
    vm.install_script("api", "metadata", "#!/bin/sh\necho ---\n");
    vm.install_script("api", "pre-backup-lock", &format!("{head}sleep {lock_secs}\n"));
    vm.install_script("api", "backup", &format!("{head}echo data > \"$BBR_ARTIFACT_DIRECTORY/d\"\n"));
    vm.install_script("api", "post-backup-unlock", &format!("{head}exit {unlock_exit}\n"));
}

/// `(nanoseconds since the epoch, script)` for every script that ran on the instance.
fn calls(vm: &Vm) -> Vec<(u128, String)> {
    let text = std::fs::read_to_string(vm.host_path(CALLS)).unwrap_or_default();
    text.lines()
        .map(|l| {
            let (at, script) = l.split_once(' ').unwrap();
            (at.parse().unwrap(), script.to_string())
        })
        .collect()
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// A target reaching VM 0 through `proxy`, its host key pinned; keepalives every second
/// and a 2 s connect timeout, so a dead network shows in seconds.
fn target_through(fleet: &Fleet, proxy: &StallProxy) -> HostsTarget {
    let inventory = fleet.inventory("cf", &[("api", 0, 0)], "vcap").replace(&fleet.vms[0].address(), &proxy.address());
    let opts = SshOptions {
        known_hosts_path: Some(fleet.known_hosts()),
        keepalive_interval: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        ..SshOptions::default()
    };
    HostsTarget::from_yaml(&inventory, &opts).unwrap()
}

/// Stalls the proxy as soon as the lock script has logged its start; resumes after
/// `stall` (never, if `None`). Returns when it stalled (ns since the epoch) and when it resumed.
fn stall_during_lock(vm: &Vm, proxy: Arc<StallProxy>, stall: Option<Duration>) -> std::thread::JoinHandle<(u128, Option<u128>)> {
    let calls_file = vm.host_path(CALLS);
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&calls_file).unwrap_or_default().contains("pre-backup-lock") {
            assert!(Instant::now() < deadline, "the lock script never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy.stall();
        let stalled = now_ns();
        let resumed = stall.map(|d| {
            std::thread::sleep(d);
            proxy.resume();
            now_ns()
        });
        (stalled, resumed)
    })
}

fn warnings(rec: &Recorder) -> Vec<String> {
    rec.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Warning(w) => Some(w),
            _ => None,
        })
        .collect()
}

/// A one-VM fleet with the job installed, reached through a stall proxy; a store directory.
struct Setup {
    fleet: Fleet,
    proxy: Arc<StallProxy>,
    target: HostsTarget,
    store_dir: TempDir,
}

fn setup(test: &str, lock_secs: u32, unlock_exit: u32) -> Option<Setup> {
    let fleet = Fleet::start(test, 1)?;
    install_job(&fleet.vms[0], lock_secs, unlock_exit);
    let proxy = Arc::new(StallProxy::start(&fleet.vms[0].address()));
    let target = target_through(&fleet, &proxy);
    Some(Setup { fleet, proxy, target, store_dir: TempDir::new().unwrap() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_is_tried_again_until_the_network_is_back() {
    let Some(Setup { fleet, proxy, target, store_dir }) = setup("an_unlock_is_tried_again_until_the_network_is_back", 3, 0) else { return };
    let vm = &fleet.vms[0];
    let rec = Arc::new(Recorder::default());
    let ctx = Ctx::new(rec.clone());
    let staller = stall_during_lock(vm, proxy.clone(), Some(Duration::from_secs(8)));
    let out = backup(&ctx, &target, &LocalStore::new(store_dir.path()), &BackupOptions::default()).await;
    let (stalled, resumed) = staller.join().unwrap();
    let resumed = resumed.unwrap();

    // The lock's answer was lost (bit 4); the unlock got through once the network was back.
    assert!(out.failures.has(FailureKind::Lock), "{}", out.failures.render());
    assert!(!out.failures.has(FailureKind::Unlock), "the unlock was given up:\n{}", out.failures.render());
    assert_eq!(out.failures.exit_code() & 8, 0);
    let ran = calls(vm);
    let scripts: Vec<&str> = ran.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(scripts, ["pre-backup-lock", "post-backup-unlock"], "{ran:?}");
    assert!(ran[1].0 > resumed, "the unlock ran before the network was back: {ran:?}, stalled {stalled}, resumed {resumed}");
    // It was tried while the network was down, said so, and each try dialled anew.
    let w = warnings(&rec);
    assert!(w.iter().any(|w| w.contains("post-backup-unlock for job api") && w.contains("trying again")), "{w:#?}");
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 3, "one connection for the lock, then one per unlock attempt");
    // Nothing was committed, and the staging directory did not stay behind.
    assert!(out.artifact.is_none());
    assert!(!vm.host_path("/var/vcap/store/bbr-backup").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_that_never_gets_through_is_given_up_after_five_attempts_and_says_so() {
    let Some(Setup { fleet, proxy, target, store_dir }) = setup("an_unlock_that_never_gets_through", 3, 0) else { return };
    let vm = &fleet.vms[0];
    let rec = Arc::new(Recorder::default());
    let ctx = Ctx::new(rec.clone());
    let staller = stall_during_lock(vm, proxy.clone(), None);
    let start = Instant::now();
    let out = backup(&ctx, &target, &LocalStore::new(store_dir.path()), &BackupOptions::default()).await;
    let took = start.elapsed();
    staller.join().unwrap();

    assert!(out.failures.has(FailureKind::Unlock), "{}", out.failures.render());
    let report = out.failures.render();
    assert!(report.contains("no answer after 5 attempt(s): api on api/0 may still be locked"), "{report}");
    assert!(report.contains("run backup-cleanup"), "{report}");
    assert_eq!(warnings(&rec).iter().filter(|w| w.contains("trying again")).count(), 4, "{:#?}", warnings(&rec));
    // The lock ran; no unlock reached the instance; one dial per attempt reached the proxy.
    let scripts: Vec<String> = calls(vm).into_iter().map(|(_, s)| s).collect();
    assert_eq!(scripts, ["pre-backup-lock"]);
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 6, "accepted {}", proxy.accepted.load(Ordering::SeqCst));
    // Bounded: keepalives (about 4 s), 5 connect timeouts of 2 s, waits of 1+2+4+8 s, and the
    // cleanup's connect timeout.
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_that_answered_with_a_failure_is_not_run_again() {
    let Some(Setup { fleet, proxy: _proxy, target, store_dir }) = setup("an_unlock_that_answered_with_a_failure", 0, 3) else { return };
    let vm = &fleet.vms[0];
    let rec = Arc::new(Recorder::default());
    let out = backup(&Ctx::new(rec.clone()), &target, &LocalStore::new(store_dir.path()), &BackupOptions::default()).await;

    assert!(out.failures.has(FailureKind::Unlock), "{}", out.failures.render());
    assert!(out.failures.render().contains("exit code 3"), "{}", out.failures.render());
    let scripts: Vec<String> = calls(vm).into_iter().map(|(_, s)| s).collect();
    assert_eq!(scripts, ["pre-backup-lock", "backup", "post-backup-unlock"]);
    assert!(warnings(&rec).iter().all(|w| !w.contains("trying again")), "{:#?}", warnings(&rec));
}

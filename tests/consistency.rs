//! The sample platform's consistency test (examples/sample-platform, docs/sample-platform.md).
//!
//! A platform of three instances (api/0 cloud_controller, blobstore/0 blobstore, uaa/0 uaa)
//! with two real PostgreSQL databases and a blobstore of files, while its API pushes and deletes
//! apps and creates and deletes users without pause:
//!
//! - locked: 20 backups under load, each restored onto a fresh platform (fresh instance roots,
//!   fresh databases) and checked: no violation at all. For every backup the API's own downtime
//!   (from its log) and lockstep's lock window must agree within 100 ms plus two script
//!   spawns (median over the backups), and lockstep's overhead on top of the lock and unlock
//!   scripts' own run time (each script times itself) must stay under as much per lock level.
//!   A spawn's cost is measured in the same run: on a loaded 2-core machine it grows from a
//!   few ms to 150 ms, and a window cannot be measured tighter than one spawn at each end.
//! - lock-free (`unsafe_lock_free`, with a 1 s delay inside the blobstore backup): the restored
//!   platform has the inconsistencies bbr documents (apps whose droplet is missing, users
//!   without credentials), and the artifact says `lock_free: true`.
//!
//! Both run over the sshd test fleet (tests/support/fleet.rs: each instance a real sshd in its
//! own mount namespace with its own /var/vcap, reached by `lockstep::target::HostsTarget` as
//! `vcap` through sudo); the locked run also runs (5 backups) over local directories standing
//! in for `/` (lockstep's local transport). Needs PostgreSQL and the Python venv (`ci/setup`),
//! and root for the fleet; skips without them unless LOCKSTEP_REQUIRE_SERVERS=1.
//!
//! To watch the locked test catch a broken platform: `LOCKSTEP_SAMPLE_API_ARGS=--broken-lock`
//! starts the API with a lock protocol that acknowledges but keeps writing;
//! `LOCKSTEP_SAMPLE_NO_LOCK_ORDER=1` drops cloud_controller's lock ordering, so the stores lock
//! while API operations are still in flight.

mod platform;
mod support;

use lockstep::artifact::marker::CommitMarker;
use lockstep::events::{Event, Recorder};
use lockstep::target::{HostsTarget, SshOptions};
use lockstep::model::ScriptKind;
use lockstep::orchestrate::backup::{backup, BackupOptions};
use lockstep::orchestrate::restore::restore;
use lockstep::orchestrate::Ctx;
use lockstep::store::local::LocalStore;
use lockstep::target::Target;
use platform::{empty_dir, script_runs, servers_required, LogTail, Platform, Postgres, Violation};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use support::fleet::Fleet;
use tempfile::TempDir;

/// Locked backups over the sshd fleet (the real transport), and over local directories.
const LOCKED_BACKUPS: usize = 20;
const LOCAL_BACKUPS: usize = 5;
/// Agreement of the API's downtime with lockstep's lock window; lockstep's overhead per level.
const TOLERANCE_SECONDS: f64 = 0.100;
const LOCK_LEVELS: f64 = 2.0; // [cloud_controller], [blobstore, uaa]

/// The tests share the CPU; run them one at a time so the timings measure lockstep.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fields drop in order: the server stops before its directory is removed.
struct Env {
    pg: Postgres,
    python: PathBuf,
    tmp: TempDir,
}

fn setup() -> Option<Env> {
    let attempt = || -> anyhow::Result<Env> {
        let python = platform::python()?;
        let tmp = TempDir::new()?;
        // The server runs as the postgres OS user when we are root: it must reach its directory.
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let pg = Postgres::start(&tmp.path().join("postgres"))?;
        Ok(Env { pg, python, tmp })
    };
    match attempt() {
        Ok(env) => Some(env),
        Err(e) if servers_required() => panic!("LOCKSTEP_REQUIRE_SERVERS=1 but the sample platform cannot run: {e:#}"),
        Err(e) => {
            eprintln!("SKIPPED: the sample platform cannot run here ({e:#}); run ci/setup, or set LOCKSTEP_REQUIRE_SERVERS=1 to fail");
            None
        }
    }
}

/// Extra arguments for the API (`LOCKSTEP_SAMPLE_API_ARGS`), e.g. `--broken-lock`.
fn api_args(mut args: Vec<String>) -> Vec<String> {
    if let Ok(extra) = std::env::var("LOCKSTEP_SAMPLE_API_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    args
}

fn ctx() -> (Ctx, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    (Ctx::new(rec.clone()), rec)
}

/// Where a platform's instances are: directories on this machine (lockstep's local
/// transport), or VMs of the sshd test fleet (SSH as `vcap`, commands through sudo).
enum Hosts {
    Local,
    /// VMs 0-2 carry the source platform, VMs 3-5 each fresh platform in turn.
    Fleet(Fleet),
}

impl Hosts {
    fn fleet(test: &str) -> Option<Hosts> {
        Fleet::start(test, 6).map(Hosts::Fleet)
    }

    fn platform(&self, env: &Env, name: &str, fresh: bool) -> Platform {
        match self {
            Hosts::Local => Platform::create(&env.pg, &env.tmp.path().join(name), name),
            Hosts::Fleet(fleet) => {
                let vms = if fresh { &fleet.vms[3..6] } else { &fleet.vms[0..3] };
                for vm in vms {
                    empty_dir(&vm.root.join("var/vcap")).unwrap();
                }
                Platform::create_at(&env.pg, vms.iter().map(|vm| vm.root.clone()).collect(), name, false)
            }
        }
        .unwrap_or_else(|e| panic!("creating platform {name}: {e:#}"))
    }

    fn target(&self, p: &Platform) -> Box<dyn Target> {
        match self {
            Hosts::Local => Box::new(p.local_target()),
            Hosts::Fleet(fleet) => {
                let at: Vec<(&str, u32, usize)> = p
                    .instances
                    .iter()
                    .map(|i| {
                        let vm = fleet.vms.iter().position(|vm| vm.root == i.root).expect("a fleet VM");
                        (i.id.group.as_str(), 0, vm)
                    })
                    .collect();
                let inventory = fleet.inventory("cf", &at, "vcap");
                Box::new(HostsTarget::from_yaml(&inventory, &SshOptions::default()).expect("the fleet's inventory"))
            }
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Hosts::Local => "local directories",
            Hosts::Fleet(_) => "sshd fleet, as vcap through sudo",
        }
    }
}

/// Restores `name` onto a fresh platform, checks it, destroys it; the violations found.
async fn restore_and_check(env: &Env, hosts: &Hosts, store: &LocalStore, name: &str, tag: &str) -> Vec<Violation> {
    let fresh = hosts.platform(env, tag, true);
    let (ctx, _) = ctx();
    let r = restore(&ctx, hosts.target(&fresh).as_ref(), store, name, false).await;
    assert!(r.failures.is_empty(), "restoring {name} onto {tag} failed:\n{}", r.failures.render());
    let violations = fresh.check(&env.python).expect("running the integrity checker");
    fresh.destroy(&env.pg).expect("removing the fresh platform");
    violations
}

/// Per-job tails of the scripts' own timing logs (bbr.log).
struct ScriptLogs(Vec<(String, LogTail)>);

impl ScriptLogs {
    fn new(p: &Platform) -> ScriptLogs {
        ScriptLogs(
            platform::JOBS
                .iter()
                .map(|(group, job)| (job.to_string(), LogTail::at_end(p.vcap(group).join("sys/log").join(job).join("bbr.log"))))
                .collect(),
        )
    }

    /// Seconds each script took by its own clock, since the last call: (job, script) -> s.
    fn read(&mut self) -> BTreeMap<(String, String), f64> {
        let mut out = BTreeMap::new();
        for (job, tail) in &mut self.0 {
            for run in script_runs(tail, job).expect("reading bbr.log") {
                assert!(run.ok, "{} of {} failed", run.script, run.job);
                let prev = out.insert((run.job.clone(), run.script.clone()), run.seconds);
                assert!(prev.is_none(), "{} of {} ran twice in one backup", run.script, run.job);
            }
        }
        out
    }
}

/// What one locked backup measured.
#[derive(Debug)]
struct Figures {
    api_downtime: f64,
    lock_window: f64,
    lock_overhead_per_level: f64,
    unlock_overhead_per_level: f64,
    /// Mean over the lock and unlock scripts of (lockstep's elapsed - the script's own time).
    per_script_spawn: f64,
    in_flight: u32,
    drained: f64,
    ops_before: i64,
}

fn ms(s: f64) -> String {
    format!("{:.1}", s * 1000.0)
}

fn stats(v: &[f64]) -> String {
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!("mean {} ms, max {} ms", ms(mean), ms(max))
}

/// The order lockstep ran the lock and unlock scripts in: cloud_controller's lock must finish
/// before the stores' locks start, and its unlock start after theirs finished.
fn assert_lock_order(events: &[Event]) {
    let pos = |job: &str, kind: ScriptKind, started: bool| {
        events
            .iter()
            .position(|e| match e {
                Event::ScriptStarted { job: j, kind: k, .. } => started && j == job && *k == kind,
                Event::ScriptFinished { job: j, kind: k, .. } => !started && j == job && *k == kind,
                _ => false,
            })
            .unwrap_or_else(|| panic!("no {kind} event for {job}"))
    };
    for store in ["blobstore", "uaa"] {
        assert!(pos("cloud_controller", ScriptKind::PreBackupLock, false) < pos(store, ScriptKind::PreBackupLock, true));
        assert!(pos(store, ScriptKind::PostBackupUnlock, false) < pos("cloud_controller", ScriptKind::PostBackupUnlock, true));
    }
}

/// The locked run: `backups` backups under load, each restored and checked, with the figures.
async fn locked_backups(env: &Env, hosts: &Hosts, backups: usize) {
    let src = hosts.platform(env, "src", false);
    if std::env::var_os("LOCKSTEP_SAMPLE_NO_LOCK_ORDER").is_some() {
        // Deliberately wrong: cloud_controller no longer locks before the stores.
        let meta = src.vcap("api").join("jobs/cloud_controller/bin/bbr/metadata");
        std::fs::write(&meta, "#!/bin/sh\necho '{}'\n").unwrap();
    }
    let mut api = src.start_api(&env.python, &api_args(vec!["--seed".into(), "locked".into()])).unwrap();
    src.wait_for_data(&env.pg, 100, 20).unwrap();
    let mut scripts = ScriptLogs::new(&src);
    let store_dir = env.tmp.path().join("backups");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store = LocalStore::new(&store_dir);
    let started = Instant::now();

    let mut figures = Vec::new();
    let mut last_ops: Option<i64> = None;
    for i in 0..backups {
        api.assert_running();
        let (ctx, rec) = ctx();
        let t0 = Instant::now();
        let out = backup(&ctx, hosts.target(&src).as_ref(), &store, &BackupOptions::default()).await;
        let backup_took = t0.elapsed().as_secs_f64();
        assert!(out.failures.is_empty(), "backup {i} failed:\n{}", out.failures.render());
        let name = out.artifact.clone().expect("an artifact");
        let marker = out.marker.as_ref().expect("a commit marker");
        assert!(!marker.lock_free);
        let lock_window = marker.lock_window_seconds.expect("a lock window");

        // The API's own account: exactly one downtime during this backup.
        let log = api.log.lines().unwrap();
        let down: Vec<_> = log.iter().filter(|l| l.event == "unavailable").collect();
        let up: Vec<_> = log.iter().filter(|l| l.event == "available").collect();
        assert_eq!((down.len(), up.len()), (1, 1), "backup {i}: the API should have paused once: {log:#?}");
        let ops_at_lock = down[0].num("ops") as i64;
        let ops_before = last_ops.map(|prev| ops_at_lock - prev).unwrap_or(ops_at_lock);
        last_ops = Some(up[0].num("ops") as i64);

        // The scripts' own run times, and lockstep's.
        let own = scripts.read();
        let own_of = |job: &str, script: &str| *own.get(&(job.to_string(), script.to_string())).unwrap_or_else(|| panic!("no {script} of {job} in bbr.log"));
        let level_sum = |script: &str| own_of("cloud_controller", script) + own_of("blobstore", script).max(own_of("uaa", script));
        let phase = |p: &str| out.timings.phases.get(p).expect("phase timed").as_secs_f64();
        let events = rec.events();
        let spawn: Vec<f64> = events
            .iter()
            .filter_map(|e| match e {
                Event::ScriptFinished { job, kind, elapsed, .. } if matches!(kind, ScriptKind::PreBackupLock | ScriptKind::PostBackupUnlock) => {
                    Some(elapsed.as_secs_f64() - own_of(job, &kind.to_string()))
                }
                _ => None,
            })
            .collect();

        let f = Figures {
            api_downtime: up[0].num("downtime"),
            lock_window,
            lock_overhead_per_level: (phase("lock") - level_sum("pre-backup-lock")) / LOCK_LEVELS,
            unlock_overhead_per_level: (phase("unlock") - level_sum("post-backup-unlock")) / LOCK_LEVELS,
            per_script_spawn: spawn.iter().sum::<f64>() / spawn.len() as f64,
            in_flight: down[0].num("in_flight") as u32,
            drained: down[0].num("drained"),
            ops_before,
        };

        let t1 = Instant::now();
        let violations = restore_and_check(env, hosts, &store, &name, &format!("fresh{i}")).await;
        let restore_took = t1.elapsed().as_secs_f64();
        eprintln!(
            "backup {i:2}: {name}  API down {} ms, lock window {} ms (+{} ms), overhead/level lock {} ms unlock {} ms, \
             {} op(s) in flight at lock (drained in {} ms), {} ops since the last backup; backup {:.2}s, \
             fresh platform + restore + check {:.2}s: {} violation(s)",
            ms(f.api_downtime),
            ms(f.lock_window),
            ms(f.lock_window - f.api_downtime),
            ms(f.lock_overhead_per_level),
            ms(f.unlock_overhead_per_level),
            f.in_flight,
            ms(f.drained),
            f.ops_before,
            backup_took,
            restore_took,
            violations.len()
        );
        for v in &violations {
            eprintln!("    {}: {}", v.kind, v.detail);
        }
        assert!(violations.is_empty(), "backup {i} ({name}) restored inconsistent: {violations:#?}");
        let problems: Vec<_> = log.iter().filter(|l| l.event == "error" || l.event == "failed").collect();
        assert!(problems.is_empty(), "backup {i}: API operations failed (a store locked under them?): {problems:#?}");
        assert_lock_order(&events);
        figures.push(f);
    }
    api.assert_running();
    let status = api.stop().unwrap();
    assert!(status.success(), "the API failed: {}", api.output());

    let col = |f: fn(&Figures) -> f64| figures.iter().map(f).collect::<Vec<_>>();
    eprintln!("== {backups} locked backups under load ({}) in {:.1}s, 0 violations ==", hosts.describe(), started.elapsed().as_secs_f64());
    eprintln!("API downtime (its own log):          {}", stats(&col(|f| f.api_downtime)));
    eprintln!("lockstep lock window:                {}", stats(&col(|f| f.lock_window)));
    eprintln!("lock window - API downtime:          {}", stats(&col(|f| f.lock_window - f.api_downtime)));
    eprintln!("overhead per lock level, lock:       {}", stats(&col(|f| f.lock_overhead_per_level)));
    eprintln!("overhead per lock level, unlock:     {}", stats(&col(|f| f.unlock_overhead_per_level)));
    eprintln!("per script, lockstep - script's own: {}", stats(&col(|f| f.per_script_spawn)));
    eprintln!(
        "backups with API operations in flight at lock: {} of {backups}; API ops between backups: min {}",
        figures.iter().filter(|f| f.in_flight > 0).count(),
        figures.iter().skip(1).map(|f| f.ops_before).min().unwrap_or(0)
    );

    // The bounds apply to the median over all backups: a systematic overhead fails the test,
    // while one backup delayed by the scheduler of a busy 2-core machine does not. Every
    // backup must still be within 10x the bound, which catches a window measured wrongly.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Starting the first lock script and seeing the last unlock end each cost a script spawn
    // (an SSH exec round trip), which the scheduler of a loaded machine stretches: the bound
    // is 100 ms on top of two spawns as this run measured them (a systematic extra step, or a
    // window measured from the wrong point, still exceeds it).
    let spawn = median(col(|f| f.per_script_spawn));
    let bound = TOLERANCE_SECONDS + 2.0 * spawn.max(0.0);
    let gap = median(col(|f| (f.lock_window - f.api_downtime).abs()));
    let lock = median(col(|f| f.lock_overhead_per_level));
    let unlock = median(col(|f| f.unlock_overhead_per_level));
    assert!(spawn < 10.0 * TOLERANCE_SECONDS, "a script spawn costs lockstep {} ms (median)", ms(spawn));
    let within = format!("bound {} ms: 100 + 2 x {} ms per spawn", ms(bound), ms(spawn));
    assert!(gap < bound, "median |lock window - API downtime| is {} ms ({within})", ms(gap));
    assert!(lock < bound, "median lock overhead is {} ms per level ({within})", ms(lock));
    assert!(unlock < bound, "median unlock overhead is {} ms per level ({within})", ms(unlock));
    for (i, f) in figures.iter().enumerate() {
        let gap = f.lock_window - f.api_downtime;
        assert!(gap.abs() < 10.0 * bound, "backup {i}: lock window {} ms vs API downtime {} ms", ms(f.lock_window), ms(f.api_downtime));
        assert!(f.lock_overhead_per_level < 10.0 * bound, "backup {i}: lock overhead {} ms per level", ms(f.lock_overhead_per_level));
        assert!(f.unlock_overhead_per_level < 10.0 * bound, "backup {i}: unlock overhead {} ms per level", ms(f.unlock_overhead_per_level));
        if i > 0 {
            assert!(f.ops_before >= 10, "backup {i}: the API did only {} operations since the last backup: not under load", f.ops_before);
        }
    }
}

/// The lock-free run: until both documented inconsistencies are found (at most 6 backups).
async fn lock_free_backups(env: &Env, hosts: &Hosts) {
    let src = hosts.platform(env, "src", false);
    // The deliberate gap: the databases are dumped at once, the droplets linked 1 s later,
    // while the API deletes and pushes apps. A slow password hash keeps users half-created
    // (user row, no credentials yet) most of the time.
    src.install("blobstore", &["BACKUP_DELAY_SECONDS=1".to_string()]).unwrap();
    let args = api_args(vec!["--seed".into(), "lock-free".into(), "--hash-seconds".into(), "0.2".into()]);
    let mut api = src.start_api(&env.python, &args).unwrap();
    src.wait_for_data(&env.pg, 100, 10).unwrap();
    let store_dir = env.tmp.path().join("backups");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store = LocalStore::new(&store_dir);

    let wanted: BTreeSet<&str> = ["app-without-droplet", "user-without-credentials"].into();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut attempts = 0;
    while attempts < 6 && !wanted.iter().all(|k| seen.contains_key(*k)) {
        attempts += 1;
        api.assert_running();
        let (ctx, rec) = ctx();
        let opts = BackupOptions { unsafe_lock_free: true, ..Default::default() };
        let out = backup(&ctx, hosts.target(&src).as_ref(), &store, &opts).await;
        assert!(out.failures.is_empty(), "lock-free backup failed:\n{}", out.failures.render());
        let name = out.artifact.clone().expect("an artifact");

        // Flagged: in lockstep's output, in the outcome and in lockstep.json as stored.
        let warned = rec.events().iter().any(|e| matches!(e, Event::Warning(w) if w.contains("unsafe-lock-free")));
        assert!(warned, "lockstep did not warn about --unsafe-lock-free");
        let marker = out.marker.as_ref().expect("a commit marker");
        assert!(marker.lock_free && marker.lock_window_seconds.is_none());
        let stored = CommitMarker::from_json(&std::fs::read(store_dir.join(&name).join("lockstep.json")).unwrap()).unwrap();
        assert!(stored.lock_free, "lockstep.json does not say lock_free: true");
        // Nothing was locked: the API never paused.
        let log = api.log.lines().unwrap();
        assert!(log.iter().all(|l| l.event != "unavailable"), "the API paused during a lock-free backup: {log:#?}");

        let violations = restore_and_check(env, hosts, &store, &name, &format!("fresh{attempts}")).await;
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &violations {
            *kinds.entry(v.kind.as_str()).or_default() += 1;
            *seen.entry(v.kind.clone()).or_default() += 1;
        }
        eprintln!("lock-free backup {attempts}: {name}: {} violation(s) {kinds:?}", violations.len());
        for v in violations.iter().take(4) {
            eprintln!("    {}: {}", v.kind, v.detail);
        }
        assert!(!violations.is_empty(), "a lock-free backup with a 1 s gap under load restored consistent");
    }
    api.assert_running();
    assert!(api.stop().unwrap().success(), "the API failed: {}", api.output());
    eprintln!("== lock-free ({}): {attempts} backup(s); violations by kind: {seen:?} ==", hosts.describe());
    for k in &wanted {
        assert!(seen.contains_key(*k), "no {k} found in {attempts} lock-free backups: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_backups_under_load_restore_consistently_over_ssh() {
    let _serial = SERIAL.lock().await;
    let Some(env) = setup() else { return };
    let Some(hosts) = Hosts::fleet("locked_backups_under_load_restore_consistently_over_ssh") else { return };
    locked_backups(&env, &hosts, LOCKED_BACKUPS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_free_backups_catch_the_platform_inconsistent_over_ssh() {
    let _serial = SERIAL.lock().await;
    let Some(env) = setup() else { return };
    let Some(hosts) = Hosts::fleet("lock_free_backups_catch_the_platform_inconsistent_over_ssh") else { return };
    lock_free_backups(&env, &hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_backups_under_load_restore_consistently_locally() {
    let _serial = SERIAL.lock().await;
    let Some(env) = setup() else { return };
    locked_backups(&env, &Hosts::Local, LOCAL_BACKUPS).await;
}

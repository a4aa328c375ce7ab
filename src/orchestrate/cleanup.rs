//! `backup-cleanup` and `restore-cleanup`: after an interrupted run, report what the
//! unlocks it started detached did (waiting for those still running), unlock every job
//! (unlock scripts are expected to be idempotent) and remove the staging directory.

use super::levels::{record, unlock_in_reverse, Within};
use super::discover::discover;
use super::discover::Deployment;
use super::run_lock::RunRecord;
use super::{bounded, remove_staging, timed_script, Ctx, FailureKind, Failures, Timings, RUN_ENV};
use crate::instance::{InstanceRef, OWED_ROOT};
use anyhow::anyhow;
use std::time::Duration;
use crate::events::Phase;
use crate::model::{Direction, ScriptKind};
use crate::instance::StagingHolder;
use crate::target::Target;
use std::collections::BTreeMap;

/// Says whose staging directories this cleanup is about to remove: a lockstep run's (its
/// record), or one of unknown origin (bbr's, or a run that died before writing a record).
/// Returns each instance held by a lockstep run, with the run's id.
async fn report_holders(ctx: &Ctx, dep: &Deployment) -> Vec<(InstanceRef, String)> {
    let mut by_holder: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut runs = Vec::new();
    // `holders` answers in the deployment's order.
    for ((id, h), d) in super::run_lock::holders(ctx, dep).await.into_iter().zip(&dep.instances) {
        let who = match h {
            Ok(StagingHolder::Nobody) => continue,
            Ok(StagingHolder::Unknown) => "no run record (left by bbr, or by a run that stopped before writing one)".to_string(),
            Ok(StagingHolder::Run(text)) => {
                if let Ok(r) = serde_json::from_str::<RunRecord>(text.trim()) {
                    runs.push((d.instance.clone(), r.run));
                }
                format!("lockstep run {}", super::run_lock::describe_holder(&text))
            }
            Err(e) => format!("unknown ({e:#})"),
        };
        by_holder.entry(who).or_default().push(id);
    }
    for (who, ids) in by_holder {
        ctx.info(format!("Staging directory held by {who} on {}: releasing it", ids.join(", ")));
    }
    runs
}

/// Stops what the holding runs' lock, backup and restore scripts left running (a run killed
/// before it could stop them), so that the unlocks below do not release the platform under
/// a backup script still copying, and says how many there were.
async fn stop_left_scripts(ctx: &Ctx, runs: Vec<(InstanceRef, String)>) {
    let stopped = bounded(ctx.max_in_flight, runs, |(inst, run)| async move {
        let r = inst.stop_run(RUN_ENV, &run).await;
        (inst, run, r)
    })
    .await;
    for (inst, run, r) in stopped {
        match r {
            Ok(0) => {}
            Ok(n) => ctx.warn(format!("stopped {n} process(es) that run {run}'s scripts left running on {}", inst.id())),
            Err(e) => ctx.warn(format!("could not stop what run {run} left running on {}: {e:#}", inst.id())),
        }
    }
}

/// How long a cleanup waits for an unlock that a stopped run started and that is still
/// running: the platform guide's slowest unlock (Cloud Controller) takes about 3 minutes.
pub const LEFT_UNLOCK_WAIT: Duration = Duration::from_secs(15 * 60);

/// Waits (bounded) for every owed script a stopped run started and left on the instances
/// (a stop request starts every unlock detached; SIGKILL may come before lockstep saw them
/// end), and reports each: its failure as an unlock failure (bit 8), its success as a line.
/// Collecting one removes what it kept on the instance.
async fn collect_left_unlocks(ctx: &Ctx, dep: &Deployment, failures: &mut Failures) {
    let found = bounded(ctx.max_in_flight, &dep.instances, |d| async move { (d.instance.clone(), d.instance.owed_left().await) }).await;
    let mut left = Vec::new();
    for (inst, r) in found {
        match r {
            Ok(scripts) => left.extend(scripts.into_iter().map(|s| (inst.clone(), s))),
            Err(e) => ctx.warn(format!("could not look for unlocks left by a stopped run on {}: {e:#}", inst.id())),
        }
    }
    if left.is_empty() {
        return;
    }
    ctx.info(format!("{} unlock script(s) started by a stopped run: waiting for them (at most {})", left.len(), humantime::format_duration(LEFT_UNLOCK_WAIT)));
    let mut runs: Vec<(InstanceRef, String)> = left.iter().map(|(inst, (run, _, _))| (inst.clone(), run.clone())).collect();
    // One removal per instance and run, whatever order the instances listed them in.
    runs.sort_by(|a, b| (a.0.id(), &a.1).cmp(&(b.0.id(), &b.1)));
    runs.dedup_by(|a, b| a.0.id() == b.0.id() && a.1 == b.1);
    let results = bounded(ctx.max_in_flight, left, |(inst, (run, job, kind))| async move {
        let what = format!("{kind} for job {job} on {}, started by stopped run {run}", inst.id());
        let wait = timed_script(ctx, &inst, &job, kind, inst.run_owed(&run, &job, kind, &[], true));
        match tokio::time::timeout(LEFT_UNLOCK_WAIT, wait).await {
            Ok(Ok(_)) => Ok(what),
            Ok(Err(e)) => Err(anyhow!("{what}: {e:#}")),
            Err(_) => Err(anyhow!(
                "{what}: still running after {}; left running (it may yet unlock), its output is in {OWED_ROOT}/{run} on the instance",
                humantime::format_duration(LEFT_UNLOCK_WAIT)
            )),
        }
    })
    .await;
    for r in results {
        match r {
            Ok(what) => ctx.info(format!("{what}: finished (exit code 0)")),
            Err(e) => failures.push(FailureKind::Unlock, e),
        }
    }
    // Reported: what the instances kept can go (one still running keeps writing into a
    // directory that is gone, which is harmless).
    for (inst, run) in runs {
        if let Err(e) = inst.forget_owed(&run).await {
            ctx.warn(format!("could not remove the kept unlock results of run {run} on {}: {e:#}", inst.id()));
        }
    }
}

pub async fn cleanup(ctx: &Ctx, target: &dyn Target, dir: Direction) -> (Failures, Timings) {
    let mut timings = Timings::default();
    let mut failures = Failures::default();
    let dep = match timings.phase(ctx, Phase::Discover, discover(ctx, target)).await {
        Ok(d) => d,
        Err(e) => {
            failures.push(FailureKind::General, e);
            return (failures, timings);
        }
    };
    let levels = match dep.lock_levels(dir) {
        Ok(l) => l,
        Err(e) => {
            failures.push(FailureKind::General, e.into());
            return (failures, timings);
        }
    };
    let runs = report_holders(ctx, &dep).await;
    stop_left_scripts(ctx, runs).await;
    let (kind, env, within) = match dir {
        Direction::Backup => (
            ScriptKind::PostBackupUnlock,
            vec![("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL".to_string(), "false".to_string())],
            Within::Parallel,
        ),
        // bbr runs restore unlocks one at a time.
        Direction::Restore => (ScriptKind::PostRestoreUnlock, Vec::new(), Within::Serial),
    };
    collect_left_unlocks(ctx, &dep, &mut failures).await;
    let errors = timings.phase(ctx, Phase::Unlock, unlock_in_reverse(ctx, &super::run_lock::random_id(), &dep, &levels, kind, &env, within)).await;
    record(&mut failures, FailureKind::Unlock, errors);
    // Every instance with a backup or restore script may hold a staging directory.
    let instances: Vec<_> = dep
        .instances
        .iter()
        .filter(|d| d.jobs.iter().any(|j| j.backupable() || j.restorable()))
        .map(|d| d.instance.clone())
        .collect();
    // bbr reports a failed cleanup here as a plain error (exit 1), not bit 16.
    remove_staging(ctx, &mut timings, instances, FailureKind::General, &mut failures).await;
    if failures.is_empty() {
        ctx.info(format!("'{}' cleaned up", dep.name));
    }
    (failures, timings)
}

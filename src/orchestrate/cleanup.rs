//! `backup-cleanup` and `restore-cleanup`: after an interrupted run, unlock every job
//! (unlock scripts are expected to be idempotent) and remove the staging directory.

use super::levels::{record, unlock_in_reverse, Within};
use super::discover::discover;
use super::{remove_staging, Ctx, FailureKind, Failures, Timings};
use crate::events::Phase;
use crate::model::{Direction, ScriptKind};
use crate::instance::StagingHolder;
use crate::target::Target;
use std::collections::BTreeMap;

/// Says whose staging directories this cleanup is about to remove: a lockstep run's (its
/// record), or one of unknown origin (bbr's, or a run that died before writing a record).
async fn report_holders(ctx: &Ctx, dep: &super::discover::Deployment) {
    let mut by_holder: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, h) in super::run_lock::holders(ctx, dep).await {
        let who = match h {
            Ok(StagingHolder::Nobody) => continue,
            Ok(StagingHolder::Unknown) => "no run record (left by bbr, or by a run that stopped before writing one)".to_string(),
            Ok(StagingHolder::Run(text)) => format!("lockstep run {}", super::run_lock::describe_holder(&text)),
            Err(e) => format!("unknown ({e:#})"),
        };
        by_holder.entry(who).or_default().push(id);
    }
    for (who, ids) in by_holder {
        ctx.info(format!("Staging directory held by {who} on {}: releasing it", ids.join(", ")));
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
    report_holders(ctx, &dep).await;
    let (kind, env, within) = match dir {
        Direction::Backup => (
            ScriptKind::PostBackupUnlock,
            vec![("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL".to_string(), "false".to_string())],
            Within::Parallel,
        ),
        // bbr runs restore unlocks one at a time.
        Direction::Restore => (ScriptKind::PostRestoreUnlock, Vec::new(), Within::Serial),
    };
    let errors = timings.phase(ctx, Phase::Unlock, unlock_in_reverse(ctx, &dep, &levels, kind, &env, within)).await;
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

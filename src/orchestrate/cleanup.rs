//! `backup-cleanup` and `restore-cleanup`: after an interrupted run, unlock every job
//! (unlock scripts are expected to be idempotent) and remove the staging directory.

use super::backup::run_on_jobs;
use super::discover::discover;
use super::{remove_staging, Ctx, FailureKind, Failures, Timings};
use crate::events::Phase;
use crate::model::{Direction, ScriptKind};
use crate::target::Target;

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
    let fails = &mut failures;
    timings
        .phase(ctx, Phase::Unlock, async {
            for level in levels.iter().rev() {
                let errors = match dir {
                    Direction::Backup => {
                        let env = vec![("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL".to_string(), "false".to_string())];
                        run_on_jobs(ctx, &dep, level, ScriptKind::PostBackupUnlock, &env, false).await
                    }
                    // bbr runs restore unlocks one at a time.
                    Direction::Restore => {
                        let mut errs = Vec::new();
                        for &at in level {
                            errs.extend(run_on_jobs(ctx, &dep, &[at], ScriptKind::PostRestoreUnlock, &[], false).await);
                        }
                        errs
                    }
                };
                for e in errors {
                    fails.push(FailureKind::Unlock, e);
                }
            }
        })
        .await;
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

//! `pre-backup-check`: discovery and the backup checks, nothing locked, nothing written.

use super::backup::backupable_checks;
use super::discover::discover;
use super::{Ctx, FailureKind, Failures, Timings};
use crate::events::Phase;
use crate::target::Target;

pub async fn pre_backup_check(ctx: &Ctx, target: &dyn Target) -> (Failures, Timings) {
    let mut timings = Timings::default();
    let mut failures = Failures::default();
    match timings.phase(ctx, Phase::Discover, discover(ctx, target)).await {
        Ok(dep) => failures.extend(timings.phase(ctx, Phase::Check, backupable_checks(ctx, &dep)).await),
        Err(e) => failures.push(FailureKind::General, e),
    }
    (failures, timings)
}

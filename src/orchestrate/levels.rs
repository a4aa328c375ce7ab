//! Running a script kind over the lock levels: locks level by level in order, unlocks the
//! attempted levels in reverse. Shared by backup, restore and the cleanup commands, which
//! differ only in the script, the environment and whether jobs within a level run in
//! parallel (backup) or one at a time (bbr's restore).

use super::discover::{Deployment, JobAt};
use super::{bounded, cancellable, script, Cancelled, Ctx, FailureKind, Failures};
use crate::instance::{InstanceRef, Unanswered};
use crate::model::ScriptKind;
use anyhow::anyhow;
use std::time::Duration;

/// How often a script that cannot be cancelled (an unlock, which the platform is owed) is
/// tried when its instance does not answer, and the waits between tries: 1, 2, 4 and 8 s,
/// about 15 s plus the connect timeouts, enough to ride out a network blip or an sshd
/// restart without holding a run that has lost its instance for long.
pub(crate) const OWED_ATTEMPTS: u32 = 5;
const OWED_FIRST_WAIT: Duration = Duration::from_secs(1);

/// Runs an owed script, trying it again (with doubling waits) while its instance does not
/// answer and no stop was requested: a stop leaves seconds before the kill, no time to wait.
/// Unlock scripts are idempotent by the BBR contract, so running one again after an
/// attempt whose outcome is unknown is safe. A script that answered with a failure is not
/// tried again.
async fn owed(ctx: &Ctx, inst: &InstanceRef, job: &str, kind: ScriptKind, env: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
    let mut wait = OWED_FIRST_WAIT;
    for attempt in 1.. {
        let e = match script(ctx, inst, job, kind, env).await {
            Err(e) if e.is::<Unanswered>() => e,
            done => return done,
        };
        if attempt >= OWED_ATTEMPTS || ctx.cancelled() {
            let cleanup = if kind == ScriptKind::PostRestoreUnlock { "restore-cleanup" } else { "backup-cleanup" };
            return Err(e.context(format!(
                "no answer after {attempt} attempt(s): {job} on {} may still be locked; once the instance answers, run {cleanup}",
                inst.id()
            )));
        }
        ctx.warn(format!(
            "{kind} for job {job} on {}: no answer ({e:#}); trying again in {}s (attempt {} of {OWED_ATTEMPTS})",
            inst.id(),
            wait.as_secs(),
            attempt + 1
        ));
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    unreachable!("the loop returns")
}

/// Within a level: all jobs at once (bounded by `max_in_flight`), or one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Within {
    Parallel,
    Serial,
}

/// Runs `kind` on every job of `jobs` that has it. Errors read as bbr's
/// (`Error attempting to run <kind> for job <job> on <instance>: ...`); a stop request
/// cancels the runs only when `can_cancel`; the others are owed and tried again while
/// their instance does not answer ([`owed`]).
pub(crate) async fn run_on_jobs(
    ctx: &Ctx,
    dep: &Deployment,
    jobs: &[JobAt],
    kind: ScriptKind,
    env: &[(String, String)],
    can_cancel: bool,
) -> Vec<anyhow::Error> {
    let with_script: Vec<JobAt> = jobs.iter().copied().filter(|&at| dep.job(at).1.has(kind)).collect();
    let results = bounded(ctx.max_in_flight, with_script, |at| async move {
        let (inst, job) = dep.job(at);
        let r = if can_cancel {
            cancellable(ctx, script(ctx, inst, &job.name, kind, env)).await
        } else {
            owed(ctx, inst, &job.name, kind, env).await
        };
        r.map_err(|e| {
            if e.is::<Cancelled>() {
                e
            } else {
                anyhow!("Error attempting to run {kind} for job {} on {}: {e:#}", job.name, inst.id())
            }
        })
    })
    .await;
    results.into_iter().filter_map(Result::err).collect()
}

async fn run_level(ctx: &Ctx, dep: &Deployment, level: &[JobAt], kind: ScriptKind, env: &[(String, String)], within: Within, can_cancel: bool) -> Vec<anyhow::Error> {
    match within {
        Within::Parallel => run_on_jobs(ctx, dep, level, kind, env, can_cancel).await,
        Within::Serial => {
            let mut errors = Vec::new();
            for at in level {
                errors.extend(run_on_jobs(ctx, dep, std::slice::from_ref(at), kind, env, can_cancel).await);
            }
            errors
        }
    }
}

/// Locks level by level. A failed level does not stop the next (bbr), a stop request does.
/// Returns how many levels were attempted (each is owed its unlock) and the errors.
pub(crate) async fn lock_in_order(ctx: &Ctx, dep: &Deployment, levels: &[Vec<JobAt>], kind: ScriptKind, within: Within) -> (usize, Vec<anyhow::Error>) {
    let mut attempted = 0;
    let mut errors = Vec::new();
    for level in levels {
        if ctx.cancelled() {
            break;
        }
        attempted += 1;
        errors.extend(run_level(ctx, dep, level, kind, &[], within, true).await);
    }
    (attempted, errors)
}

/// Unlocks the given levels in reverse order, always: a stop request does not skip it.
pub(crate) async fn unlock_in_reverse(ctx: &Ctx, dep: &Deployment, levels: &[Vec<JobAt>], kind: ScriptKind, env: &[(String, String)], within: Within) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    for level in levels.iter().rev() {
        errors.extend(run_level(ctx, dep, level, kind, env, within, false).await);
    }
    errors
}

/// Records errors as `kind`, except a stop request, which is recorded as such.
pub(crate) fn record(failures: &mut Failures, kind: FailureKind, errors: Vec<anyhow::Error>) {
    for e in errors {
        let k = if e.is::<Cancelled>() { FailureKind::Cancelled } else { kind };
        failures.push(k, e);
    }
}

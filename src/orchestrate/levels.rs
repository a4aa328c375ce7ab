//! Running a script kind over the lock levels: locks level by level in order, unlocks the
//! attempted levels in reverse. Shared by backup, restore and the cleanup commands, which
//! differ only in the script, the environment and whether jobs within a level run in
//! parallel (backup) or one at a time (bbr's restore).
//!
//! Unlocks are owed to the platform: they run detached on their instance
//! ([`crate::instance::Instance::run_owed`]), so a killed lockstep or a dropped connection
//! does not stop one midway, and a stop request (Concourse's SIGTERM, with SIGKILL 10 s
//! later) starts every owed unlock at once instead of level by level: the platform is
//! unlocked even if lockstep does not live to see it. The order across levels is lost in
//! that case; an unlocked platform matters more.

use super::discover::{Deployment, JobAt};
use super::{bounded, cancellable, caught, run_env, script, timed_script, Cancelled, Ctx, FailureKind, Failures};
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
async fn owed(ctx: &Ctx, run: &str, inst: &InstanceRef, job: &str, kind: ScriptKind, env: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
    let mut wait = OWED_FIRST_WAIT;
    for attempt in 1.. {
        // A second attempt finds the script started by the first (if it got that far) and
        // waits for its end instead of running it again.
        // Past owed_wait the wait ends (dropping it stops only the waiting command); the
        // script itself goes on, detached, and a cleanup collects it.
        let waited = async {
            match tokio::time::timeout(ctx.owed_wait, caught(inst.run_owed(run, job, kind, env, true))).await {
                Ok(r) => r,
                Err(_) => Err(anyhow!(
                    "still running after {}: left running on the instance, which may still be locked; run {} to collect it",
                    humantime::format_duration(ctx.owed_wait),
                    cleanup_command(kind)
                )),
            }
        };
        let e = match timed_script(ctx, inst, job, kind, waited).await {
            Err(e) if e.is::<Unanswered>() => e,
            done => return done,
        };
        if attempt >= OWED_ATTEMPTS || ctx.cancelled() {
            return Err(e.context(format!(
                "no answer after {attempt} attempt(s): {job} on {} may still be locked; once the instance answers, run {}",
                inst.id(),
                cleanup_command(kind)
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

/// The command that finishes what a run of `kind` left.
fn cleanup_command(kind: ScriptKind) -> &'static str {
    if kind == ScriptKind::PostRestoreUnlock { "restore-cleanup" } else { "backup-cleanup" }
}

/// How the scripts of a phase run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode<'a> {
    /// Locks, backups, restores: a stop request cancels them.
    Cancellable,
    /// Unlocks, under this run's id: never cancelled, run detached, tried again while
    /// their instance does not answer ([`owed`]).
    Owed(&'a str),
}

/// Within a level: all jobs at once (bounded by `max_in_flight`), or one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Within {
    Parallel,
    Serial,
}

fn with_script(dep: &Deployment, jobs: &[JobAt], kind: ScriptKind) -> Vec<JobAt> {
    jobs.iter().copied().filter(|&at| dep.job(at).1.has(kind)).collect()
}

/// Runs `kind` on every job of `jobs` that has it. Errors read as bbr's
/// (`Error attempting to run <kind> for job <job> on <instance>: ...`).
pub(crate) async fn run_on_jobs(
    ctx: &Ctx,
    dep: &Deployment,
    jobs: &[JobAt],
    kind: ScriptKind,
    env: &[(String, String)],
    mode: Mode<'_>,
) -> Vec<anyhow::Error> {
    let results = bounded(ctx.max_in_flight, with_script(dep, jobs, kind), |at| async move {
        let (inst, job) = dep.job(at);
        let r = match mode {
            Mode::Cancellable => cancellable(ctx, script(ctx, inst, &job.name, kind, env)).await,
            Mode::Owed(run) => owed(ctx, run, inst, &job.name, kind, env).await,
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

async fn run_level(ctx: &Ctx, dep: &Deployment, level: &[JobAt], kind: ScriptKind, env: &[(String, String)], within: Within, mode: Mode<'_>) -> Vec<anyhow::Error> {
    match within {
        Within::Parallel => run_on_jobs(ctx, dep, level, kind, env, mode).await,
        Within::Serial => {
            let mut errors = Vec::new();
            for at in level {
                errors.extend(run_on_jobs(ctx, dep, std::slice::from_ref(at), kind, env, mode).await);
            }
            errors
        }
    }
}

/// Locks level by level. A failed level does not stop the next (bbr), a stop request does.
/// Returns how many levels were attempted (each is owed its unlock) and the errors.
pub(crate) async fn lock_in_order(ctx: &Ctx, run: &str, dep: &Deployment, levels: &[Vec<JobAt>], kind: ScriptKind, within: Within) -> (usize, Vec<anyhow::Error>) {
    let mut attempted = 0;
    let mut errors = Vec::new();
    let env = [run_env(run)];
    for level in levels {
        if ctx.cancelled() {
            break;
        }
        attempted += 1;
        errors.extend(run_level(ctx, dep, level, kind, &env, within, Mode::Cancellable).await);
    }
    (attempted, errors)
}

/// Unlocks the given levels in reverse order, always, as run `run`: a stop request does
/// not skip it. A stop request before or during it starts every owed unlock at once
/// (detached, so each finishes on its instance whatever becomes of lockstep); the levels
/// then collect their results in order as before.
pub(crate) async fn unlock_in_reverse(
    ctx: &Ctx,
    run: &str,
    dep: &Deployment,
    levels: &[Vec<JobAt>],
    kind: ScriptKind,
    env: &[(String, String)],
    within: Within,
) -> Vec<anyhow::Error> {
    let finished = tokio_util::sync::CancellationToken::new();
    let start_all = async {
        tokio::select! {
            _ = ctx.cancel.cancelled() => start_owed(ctx, run, dep, levels, kind, env).await,
            _ = finished.cancelled() => {}
        }
    };
    let in_order = async {
        let mut errors = Vec::new();
        for level in levels.iter().rev() {
            errors.extend(run_level(ctx, dep, level, kind, env, within, Mode::Owed(run)).await);
        }
        finished.cancel();
        errors
    };
    let ((), errors) = tokio::join!(start_all, in_order);
    forget_owed(ctx, run, dep, levels.iter().flat_map(|l| with_script(dep, l, kind))).await;
    errors
}

/// Removes the results `run` kept on each instance of `jobs`, now that they were received.
/// A failure leaves them for a later cleanup to report again, which is harmless.
pub(crate) async fn forget_owed(ctx: &Ctx, run: &str, dep: &Deployment, jobs: impl IntoIterator<Item = JobAt>) {
    let mut instances: Vec<&InstanceRef> = jobs.into_iter().map(|at| dep.job(at).0).collect();
    instances.sort_by(|a, b| a.id().cmp(b.id()));
    instances.dedup_by(|a, b| a.id() == b.id());
    for (inst, r) in bounded(ctx.max_in_flight, instances, |inst| async move { (inst, inst.forget_owed(run).await) }).await {
        if let Err(e) = r {
            ctx.debug(format!("could not remove the kept unlock results of run {run} on {}: {e:#}", inst.id()));
        }
    }
}

/// Starts every owed script of `levels` that is not started yet, all at once, without
/// waiting for any. A start that fails is left to the in-order run, which tries again.
async fn start_owed(ctx: &Ctx, run: &str, dep: &Deployment, levels: &[Vec<JobAt>], kind: ScriptKind, env: &[(String, String)]) {
    let all: Vec<JobAt> = levels.iter().flat_map(|l| with_script(dep, l, kind)).collect();
    ctx.warn(format!("stop requested: starting all {} owed {kind} script(s) now, on their instances, whatever happens to this process", all.len()));
    let started = futures::future::join_all(all.into_iter().map(|at| async move {
        let (inst, job) = dep.job(at);
        inst.run_owed(run, &job.name, kind, env, false).await.map_err(|e| anyhow!("starting {kind} for job {} on {}: {e:#}", job.name, inst.id()))
    }))
    .await;
    for e in started.into_iter().filter_map(Result::err) {
        ctx.warn(format!("{e}"));
    }
}

/// Records errors as `kind`, except a stop request, which is recorded as such.
pub(crate) fn record(failures: &mut Failures, kind: FailureKind, errors: Vec<anyhow::Error>) {
    for e in errors {
        let k = if e.is::<Cancelled>() { FailureKind::Cancelled } else { kind };
        failures.push(k, e);
    }
}

//! The orchestration: bbr's workflows as straight-line async functions over the
//! [`Target`](crate::target::Target), [`Instance`](crate::instance::Instance) and
//! [`Store`](crate::store::Store) traits. Nothing here knows SSH or S3.
//!
//! Every function collects failures instead of stopping at the first, because the
//! workflow must go on to unlock and clean up; the exit code is computed from all of them.

pub mod backup;
pub mod cleanup;
pub mod discover;
pub mod export;
pub mod import;
pub mod failure;
pub mod levels;
pub mod lock_window;
pub mod platform;
pub mod precheck;
pub mod restore;
pub mod run_lock;

pub use failure::{Failure, FailureKind, Failures};

use crate::events::{Event, EventSink, Phase};
use crate::instance::InstanceRef;
use crate::model::ScriptKind;
use anyhow::Context as _;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The version given to metadata scripts as `BBR_VERSION`: the bbr release whose
/// contract we implement, since scripts compare it against bbr's versions.
pub const BBR_COMPAT_VERSION: &str = "1.9.81";

/// What every workflow needs besides its inputs.
pub struct Ctx {
    pub events: Arc<dyn EventSink>,
    /// Cancelled on SIGINT/SIGTERM: no new work starts; owed unlocks and cleanup run.
    pub cancel: CancellationToken,
    /// Parallel operations per phase (bbr: 10, fixed).
    pub max_in_flight: usize,
    pub bbr_version: String,
    /// Set when several deployments run at once (`--all-deployments`): the name put
    /// before this run's report lines (its events are labelled by the sink).
    pub label: Option<String>,
    /// How long a run waits for one owed script (an unlock) to end; past it the script is
    /// left running on its instance and reported as an unlock failure.
    pub owed_wait: Duration,
}

/// [`Ctx::owed_wait`]'s default: the platform guide's slowest unlock (Cloud Controller)
/// takes about 3 minutes; an hour is a hang.
pub const DEFAULT_OWED_WAIT: Duration = Duration::from_secs(3600);

impl Ctx {
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        Ctx {
            events,
            cancel: CancellationToken::new(),
            max_in_flight: 10,
            bbr_version: BBR_COMPAT_VERSION.into(),
            label: None,
            owed_wait: DEFAULT_OWED_WAIT,
        }
    }
    pub fn info(&self, msg: impl Into<String>) {
        self.events.emit(Event::Info(msg.into()));
    }
    pub fn warn(&self, msg: impl Into<String>) {
        self.events.emit(Event::Warning(msg.into()));
    }
    pub fn debug(&self, msg: impl Into<String>) {
        self.events.emit(Event::Debug(msg.into()));
    }
    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// The error a cancelled operation returns.
#[derive(Debug, thiserror::Error)]
#[error("stopped: a signal asked lockstep to stop")]
pub struct Cancelled;

/// Runs `fut` unless or until a stop is requested. Dropping the future stops the command
/// it runs (transports kill or close what they started). A panic inside it is an error
/// ([`caught`]).
pub async fn cancellable<T>(ctx: &Ctx, fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    if ctx.cancelled() {
        return Err(Cancelled.into());
    }
    tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => Err(Cancelled.into()),
        r = caught(fut) => r,
    }
}

/// Runs `fut`, turning a panic inside it (a bug here, or in a dependency given input it did
/// not expect) into an error: a run must go on to unlock and clean up whatever one
/// operation did. The panic hook has already printed where it happened.
pub async fn caught<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use futures::FutureExt as _;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(payload) => Err(anyhow::anyhow!("internal error: {} (a bug in lockstep: please report it)", crate::panic_message(payload.as_ref()))),
    }
}

/// Runs `f` over `items`, at most `limit` at a time; results keep the input order.
pub async fn bounded<T, R, F, Fut>(limit: usize, items: impl IntoIterator<Item = T>, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R>,
{
    futures::stream::iter(items.into_iter().map(f)).buffered(limit.max(1)).collect().await
}

/// Runs one BBR script, reporting start and end. Errors read as bbr's:
/// `<stderr> - exit code <n>`.
pub async fn script(
    ctx: &Ctx,
    instance: &InstanceRef,
    job: &str,
    kind: ScriptKind,
    env: &[(String, String)],
) -> anyhow::Result<Vec<u8>> {
    timed_script(ctx, instance, job, kind, instance.run_script(job, kind, env)).await
}

/// Reports the start and end of `run`, one script's run on `instance`.
pub(crate) async fn timed_script(
    ctx: &Ctx,
    instance: &InstanceRef,
    job: &str,
    kind: ScriptKind,
    run: impl Future<Output = anyhow::Result<Vec<u8>>>,
) -> anyhow::Result<Vec<u8>> {
    let id = instance.id().clone();
    ctx.events.emit(Event::ScriptStarted { instance: id.clone(), job: job.to_string(), kind });
    let start = Instant::now();
    let result = run.await;
    ctx.events.emit(Event::ScriptFinished {
        instance: id,
        job: job.to_string(),
        kind,
        elapsed: start.elapsed(),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
    });
    result
}

/// Per-phase wall-clock times of one run.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub phases: BTreeMap<&'static str, Duration>,
    /// From the first lock script starting to the last unlock script ending.
    pub lock_window: Option<Duration>,
}

impl Timings {
    /// Times `fut` as `phase`, emitting start and end events. A phase that runs twice
    /// (unlock after success, or after failure) adds up.
    pub async fn phase<T>(&mut self, ctx: &Ctx, phase: Phase, fut: impl Future<Output = T>) -> T {
        ctx.events.emit(Event::PhaseStarted(phase));
        let start = Instant::now();
        let out = fut.await;
        let elapsed = start.elapsed();
        *self.phases.entry(phase.name()).or_default() += elapsed;
        ctx.events.emit(Event::PhaseFinished { phase, elapsed });
        out
    }
}

/// `rm -rf /var/vcap/store/bbr-backup` on each instance, in parallel, as the timed cleanup
/// phase; each failure is recorded as `kind` (bbr: bit 16 after a backup or restore, a
/// plain error in the cleanup commands).
pub async fn remove_staging(
    ctx: &Ctx,
    timings: &mut Timings,
    instances: Vec<InstanceRef>,
    kind: FailureKind,
    failures: &mut Failures,
) {
    let results = timings
        .phase(ctx, Phase::Cleanup, bounded(ctx.max_in_flight, instances, |inst| async move {
            caught(inst.remove_artifact_root()).await.with_context(|| format!("cleanup on {}", inst.id()))
        }))
        .await;
    for e in results.into_iter().filter_map(Result::err) {
        failures.push(kind, e);
    }
}

/// The environment variable every lock, backup and restore script of a run carries (with
/// the run's id): a cleanup after a killed run finds what is left of them by it and stops
/// them ([`crate::instance::Instance::stop_run`]). Unlocks do not carry it: they are owed.
pub const RUN_ENV: &str = "LOCKSTEP_RUN";

pub fn run_env(run: &str) -> (String, String) {
    (RUN_ENV.to_string(), run.to_string())
}

/// Environment for scripts that read or write an artifact directory.
pub fn artifact_env(dir: &str) -> Vec<(String, String)> {
    vec![("BBR_ARTIFACT_DIRECTORY".into(), dir.to_string()), ("ARTIFACT_DIRECTORY".into(), dir.to_string())]
}

//! The ceiling on a backup's lock window (`max_lock_window`): the platform's API is down
//! from the first lock to the last unlock, and a hung lock or backup script would keep it
//! down until someone noticed. When the ceiling passes, the scripts still running are
//! stopped (as a stop request stops them), every level is unlocked as always, and the
//! backup fails naming the scripts that held the lock.

use super::{Ctx, FailureKind, Failures};
use crate::events::{Event, EventSink};
use crate::model::{InstanceId, ScriptKind};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Long enough for a large database dump inside the lock; finite, so a hang ends.
pub const DEFAULT_MAX_LOCK_WINDOW: Duration = Duration::from_secs(4 * 3600);

type Running = Arc<Mutex<BTreeSet<(InstanceId, String, ScriptKind)>>>;

/// The locked phases' view of a run: `ctx` has a stop token of its own, cancelled by the
/// run's (a signal) and by the ceiling, and its events track which scripts are running.
pub struct LockWindow {
    pub ctx: Ctx,
    limit: Duration,
    /// The scripts that were running when the ceiling passed, once it has.
    held_by: Arc<Mutex<Option<Vec<String>>>>,
    timer: JoinHandle<()>,
}

impl LockWindow {
    pub fn open(ctx: &Ctx, limit: Duration) -> LockWindow {
        let running: Running = Arc::default();
        let held_by = Arc::new(Mutex::new(None));
        let cancel = ctx.cancel.child_token();
        let locked = Ctx {
            events: Arc::new(Tracking { inner: ctx.events.clone(), running: running.clone() }),
            cancel: cancel.clone(),
            max_in_flight: ctx.max_in_flight,
            bbr_version: ctx.bbr_version.clone(),
            label: ctx.label.clone(),
            owed_wait: ctx.owed_wait,
        };
        let held = held_by.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let scripts = running.lock().unwrap().iter().map(|(i, j, k)| format!("{k} for job {j} on {i}")).collect();
            *held.lock().unwrap() = Some(scripts);
            cancel.cancel();
        });
        LockWindow { ctx: locked, limit, held_by, timer }
    }

    /// Ends the window. If the ceiling passed, the failures it caused (recorded as stop
    /// requests) become one failure that says what held the lock; a real stop request is
    /// left as it is.
    pub fn close(self, run: &Ctx, failures: &mut Failures) {
        self.timer.abort();
        let Some(scripts) = self.held_by.lock().unwrap().take() else { return };
        if !run.cancelled() {
            failures.0.retain(|f| f.kind != FailureKind::Cancelled);
        }
        let what = if scripts.is_empty() { "between scripts".to_string() } else { format!("while {} still ran", scripts.join(", ")) };
        failures.push(
            FailureKind::General,
            anyhow::anyhow!(
                "the lock window passed max_lock_window ({}) {what}: stopped it, unlocked everything, and failed the backup; \
                 find why the script hangs, or raise max_lock_window",
                humantime::format_duration(self.limit)
            ),
        );
    }
}

/// Passes events on, keeping the set of scripts started and not yet finished.
struct Tracking {
    inner: Arc<dyn EventSink>,
    running: Running,
}

impl EventSink for Tracking {
    fn emit(&self, event: Event) {
        match &event {
            Event::ScriptStarted { instance, job, kind } => {
                self.running.lock().unwrap().insert((instance.clone(), job.clone(), *kind));
            }
            Event::ScriptFinished { instance, job, kind, .. } => {
                self.running.lock().unwrap().remove(&(instance.clone(), job.clone(), *kind));
            }
            _ => {}
        }
        self.inner.emit(event);
    }
}

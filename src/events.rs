//! Typed events emitted by the orchestration. The orchestration never prints: reporters
//! (see [`crate::frontend::report`]) turn events into log lines, progress or JSON.

use crate::model::{InstanceId, ScriptKind};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Verify,
    Discover,
    Check,
    Lock,
    Backup,
    Unlock,
    Drain,
    Upload,
    Restore,
    Cleanup,
    Commit,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Verify => "verify",
            Phase::Discover => "discover",
            Phase::Check => "check",
            Phase::Lock => "lock",
            Phase::Backup => "backup",
            Phase::Unlock => "unlock",
            Phase::Drain => "drain",
            Phase::Upload => "upload",
            Phase::Restore => "restore",
            Phase::Cleanup => "cleanup",
            Phase::Commit => "commit",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Info(String),
    Warning(String),
    /// Only shown with `--debug`.
    Debug(String),
    PhaseStarted(Phase),
    PhaseFinished { phase: Phase, elapsed: Duration },
    ScriptStarted { instance: InstanceId, job: String, kind: ScriptKind },
    ScriptFinished { instance: InstanceId, job: String, kind: ScriptKind, elapsed: Duration, error: Option<String> },
    /// An artifact started streaming; `size` is the instance's estimate.
    TransferStarted { instance: InstanceId, job: String, size: u64 },
    TransferProgress { instance: InstanceId, job: String, bytes: u64, size: u64 },
    TransferFinished { instance: InstanceId, job: String, bytes: u64, elapsed: Duration },
    /// A stop was requested (SIGTERM/SIGINT); owed unlocks and cleanup still run.
    Cancelling,
    /// An event of one of several runs going on at once (`--all-deployments`), named.
    Labelled { label: String, event: Box<Event> },
}

pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// Names every event of one run before passing it on, so that the lines of deployments
/// backed up at the same time can be told apart.
pub struct Labelled {
    pub inner: std::sync::Arc<dyn EventSink>,
    pub label: String,
}

impl EventSink for Labelled {
    fn emit(&self, event: Event) {
        self.inner.emit(Event::Labelled { label: self.label.clone(), event: Box::new(event) });
    }
}

/// Passes every event to each of several sinks (the log, and a deployment's log file).
pub struct Tee(pub Vec<std::sync::Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&self, event: Event) {
        for sink in &self.0 {
            sink.emit(event.clone());
        }
    }
}

/// Discards events.
pub struct NoEvents;
impl EventSink for NoEvents {
    fn emit(&self, _: Event) {}
}

/// Keeps every event (tests use it to check order).
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<Event>>);
impl EventSink for Recorder {
    fn emit(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}
impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

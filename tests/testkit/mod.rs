//! A fault-injecting [`Instance`] for tests: wraps a real instance, records every
//! operation in a shared journal, and fails (or requests a stop) on cue. The orchestration
//! cannot tell it from a real instance, which is the point: every failure path of bbr's
//! workflows can be exercised against real scripts on real directories. It lives with the
//! tests, not in the library: nothing a user runs needs it.
#![allow(dead_code)]

use lockstep::artifact::tar_hash::Checksums;
use lockstep::instance::{FoundScript, Instance, InstanceRef, StagingHolder};
use lockstep::model::{InstanceId, ScriptKind};
use lockstep::transport::{Reader, Writer};
use anyhow::anyhow;
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// An operation on an instance, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    FindScripts,
    Script { job: String, kind: ScriptKind, env: Vec<(String, String)> },
    /// An owed script started without waiting for it (a stop request's start of every unlock).
    OwedStart { job: String, kind: ScriptKind },
    OwedLeft,
    RootExists,
    /// A run claiming the staging directory (the record's text).
    Claim(String),
    CreateDir(String),
    Size(String),
    Stream(String),
    Checksum(String),
    Receive(String),
    RemoveDir(String),
    RemoveRoot,
}

/// Which operations a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Script { job: Option<String>, kind: ScriptKind },
    RootExists,
    Claim,
    Stream,
    Checksum,
    Receive,
    RemoveRoot,
    RemoveDir,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Fail the operation without running it.
    Fail(String),
    /// Run it, then fail (the script ran, but reports failure).
    FailAfter(String),
    /// Request a stop (as SIGTERM does) just before the operation, then let it run.
    Cancel(CancellationToken),
    /// Stream: deliver the first N bytes, then fail as a dropped connection would.
    Truncate(usize),
    /// Checksum: report one file's hash wrong.
    CorruptChecksum,
    /// Report that `/var/vcap/store/bbr-backup` exists.
    ReportExists,
    /// Panic (a bug, here or in a dependency) instead of running the operation.
    Panic(String),
    /// Hang this long (a script that does not return), then run it.
    Hang(std::time::Duration),
}

#[derive(Debug, Clone)]
pub struct Fault {
    /// `None`: every instance.
    pub instance: Option<InstanceId>,
    pub on: Match,
    pub action: Action,
}

/// Faults and the journal, shared by every wrapped instance of one test.
#[derive(Default)]
pub struct Faults {
    faults: Mutex<Vec<Fault>>,
    journal: Mutex<Vec<(InstanceId, Op)>>,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn add(&self, instance: Option<InstanceId>, on: Match, action: Action) {
        self.faults.lock().unwrap().push(Fault { instance, on, action });
    }
    pub fn journal(&self) -> Vec<(InstanceId, Op)> {
        self.journal.lock().unwrap().clone()
    }
    /// The scripts that ran, as `(instance, job, kind)`, in order of starting.
    pub fn scripts(&self) -> Vec<(String, String, ScriptKind)> {
        self.journal()
            .into_iter()
            .filter_map(|(id, op)| match op {
                Op::Script { job, kind, .. } => Some((id.to_string(), job, kind)),
                _ => None,
            })
            .collect()
    }
    /// The environment a script ran with (the last run of it).
    pub fn env_of(&self, job: &str, kind: ScriptKind) -> Option<Vec<(String, String)>> {
        self.journal().into_iter().rev().find_map(|(_, op)| match op {
            Op::Script { job: j, kind: k, env } if j == job && k == kind => Some(env),
            _ => None,
        })
    }
    pub fn count(&self, pred: impl Fn(&Op) -> bool) -> usize {
        self.journal().iter().filter(|(_, op)| pred(op)).count()
    }

    fn record(&self, id: &InstanceId, op: Op) {
        self.journal.lock().unwrap().push((id.clone(), op));
    }

    fn find(&self, id: &InstanceId, op: &Op) -> Option<Action> {
        let faults = self.faults.lock().unwrap();
        faults
            .iter()
            .find(|f| {
                f.instance.as_ref().is_none_or(|i| i == id)
                    && match (&f.on, op) {
                        (Match::Script { job, kind }, Op::Script { job: j, kind: k, .. }) => {
                            kind == k && job.as_ref().is_none_or(|x| x == j)
                        }
                        (Match::RootExists, Op::RootExists)
                        | (Match::Claim, Op::Claim(_))
                        | (Match::Stream, Op::Stream(_))
                        | (Match::Checksum, Op::Checksum(_))
                        | (Match::Receive, Op::Receive(_))
                        | (Match::RemoveRoot, Op::RemoveRoot)
                        | (Match::RemoveDir, Op::RemoveDir(_)) => true,
                        _ => false,
                    }
            })
            .map(|f| f.action.clone())
    }
}

pub struct FaultyInstance {
    inner: InstanceRef,
    faults: Arc<Faults>,
}

impl FaultyInstance {
    pub fn wrap(inner: InstanceRef, faults: Arc<Faults>) -> InstanceRef {
        Arc::new(FaultyInstance { inner, faults })
    }

    /// Records `op`; returns the action to take, having already applied `Cancel`.
    fn enter(&self, op: Op) -> Option<Action> {
        let id = self.inner.id();
        self.faults.record(id, op.clone());
        let action = self.faults.find(id, &op);
        if let Some(Action::Cancel(token)) = &action {
            token.cancel();
            return None;
        }
        action
    }
}

fn fail<T>(msg: &str) -> anyhow::Result<T> {
    Err(anyhow!("{msg}"))
}

#[async_trait]
impl Instance for FaultyInstance {
    fn id(&self) -> &InstanceId {
        self.inner.id()
    }
    fn address(&self) -> String {
        format!("faulty:{}", self.inner.address())
    }
    async fn find_scripts(&self) -> anyhow::Result<Vec<FoundScript>> {
        self.faults.record(self.inner.id(), Op::FindScripts);
        self.inner.find_scripts().await
    }
    async fn run_script(&self, job: &str, kind: ScriptKind, env: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
        match self.enter(Op::Script { job: job.into(), kind, env: env.to_vec() }) {
            Some(Action::Fail(m)) => fail(&m),
            Some(Action::Panic(m)) => panic!("{m}"),
            Some(Action::Hang(d)) => {
                tokio::time::sleep(d).await;
                self.inner.run_script(job, kind, env).await
            }
            Some(Action::FailAfter(m)) => {
                self.inner.run_script(job, kind, env).await?;
                fail(&m)
            }
            _ => self.inner.run_script(job, kind, env).await,
        }
    }
    /// Recorded (and faulted) as the script it runs when waited for; a start alone as
    /// [`Op::OwedStart`].
    async fn run_owed(&self, run: &str, job: &str, kind: ScriptKind, env: &[(String, String)], wait: bool) -> anyhow::Result<Vec<u8>> {
        if !wait {
            self.enter(Op::OwedStart { job: job.into(), kind });
            return self.inner.run_owed(run, job, kind, env, false).await;
        }
        match self.enter(Op::Script { job: job.into(), kind, env: env.to_vec() }) {
            Some(Action::Fail(m)) => fail(&m),
            Some(Action::Panic(m)) => panic!("{m}"),
            Some(Action::Hang(d)) => {
                tokio::time::sleep(d).await;
                self.inner.run_owed(run, job, kind, env, true).await
            }
            Some(Action::FailAfter(m)) => {
                self.inner.run_owed(run, job, kind, env, true).await?;
                fail(&m)
            }
            _ => self.inner.run_owed(run, job, kind, env, true).await,
        }
    }
    async fn stop_run(&self, env: &str, run: &str) -> anyhow::Result<usize> {
        self.inner.stop_run(env, run).await
    }
    async fn forget_owed(&self, run: &str) -> anyhow::Result<()> {
        self.inner.forget_owed(run).await
    }
    async fn owed_left(&self) -> anyhow::Result<Vec<(String, String, ScriptKind)>> {
        self.enter(Op::OwedLeft);
        self.inner.owed_left().await
    }
    fn artifact_dir(&self, artifact: &str) -> String {
        self.inner.artifact_dir(artifact)
    }
    async fn staging_holder(&self) -> anyhow::Result<StagingHolder> {
        match self.enter(Op::RootExists) {
            Some(Action::Fail(m)) => fail(&m),
            Some(Action::ReportExists) => Ok(StagingHolder::Unknown),
            _ => self.inner.staging_holder().await,
        }
    }
    async fn claim_staging(&self, record: &str) -> anyhow::Result<StagingHolder> {
        match self.enter(Op::Claim(record.into())) {
            Some(Action::Fail(m)) => fail(&m),
            Some(Action::ReportExists) => Ok(StagingHolder::Unknown),
            _ => self.inner.claim_staging(record).await,
        }
    }
    async fn create_artifact_dir(&self, artifact: &str) -> anyhow::Result<()> {
        self.enter(Op::CreateDir(artifact.into()));
        self.inner.create_artifact_dir(artifact).await
    }
    async fn artifact_size(&self, artifact: &str) -> anyhow::Result<u64> {
        self.enter(Op::Size(artifact.into()));
        self.inner.artifact_size(artifact).await
    }
    async fn stream_artifact(&self, artifact: &str, out: Writer<'_>) -> anyhow::Result<()> {
        match self.enter(Op::Stream(artifact.into())) {
            Some(Action::Fail(m)) => fail(&m),
            Some(Action::Panic(m)) => panic!("{m}"),
            Some(Action::Truncate(n)) => {
                let mut all = Vec::new();
                self.inner.stream_artifact(artifact, &mut all).await?;
                out.write_all(&all[..n.min(all.len())]).await?;
                fail("connection dropped mid-stream")
            }
            _ => self.inner.stream_artifact(artifact, out).await,
        }
    }
    async fn checksum_artifact(&self, artifact: &str) -> anyhow::Result<Checksums> {
        match self.enter(Op::Checksum(artifact.into())) {
            Some(Action::Fail(m)) => fail(&m),
            Some(Action::CorruptChecksum) => {
                let mut sums = self.inner.checksum_artifact(artifact).await?;
                if let Some(v) = sums.values_mut().next() {
                    *v = "0".repeat(64);
                }
                Ok(sums)
            }
            _ => self.inner.checksum_artifact(artifact).await,
        }
    }
    async fn receive_artifact(&self, artifact: &str, input: Reader<'_>) -> anyhow::Result<()> {
        match self.enter(Op::Receive(artifact.into())) {
            Some(Action::Fail(m)) => fail(&m),
            _ => self.inner.receive_artifact(artifact, input).await,
        }
    }
    async fn remove_artifact_dir(&self, artifact: &str) -> anyhow::Result<()> {
        match self.enter(Op::RemoveDir(artifact.into())) {
            Some(Action::Fail(m)) => fail(&m),
            _ => self.inner.remove_artifact_dir(artifact).await,
        }
    }
    async fn remove_artifact_root(&self) -> anyhow::Result<()> {
        match self.enter(Op::RemoveRoot) {
            Some(Action::Fail(m)) => fail(&m),
            _ => self.inner.remove_artifact_root().await,
        }
    }
}

//! The BBR operations on one instance: the [`Instance`] trait the orchestration talks to,
//! and [`ShellInstance`], its implementation as quoted shell commands over any
//! [`crate::transport::Transport`] (with the instance-side checksums of [`remote_sums`]).
//! Knows the BBR paths and scripts on an instance; knows nothing of lock order, stores or
//! which transport carries the commands. Tests wrap a real instance and fail any operation
//! on cue, which is why the orchestration sees only the trait.

pub mod remote_sums;
mod shell;

pub use shell::{ShellInstance, DEFAULT_SCRIPT_TIMEOUT};

use crate::artifact::tar_hash::Checksums;
use crate::model::{InstanceId, ScriptKind};
use crate::transport::{Reader, Writer};
use async_trait::async_trait;
use std::sync::Arc;

/// Where BBR jobs live and where their artifacts are staged, relative to the instance root.
pub const JOBS_DIR: &str = "/var/vcap/jobs";
pub const ARTIFACT_ROOT: &str = "/var/vcap/store/bbr-backup";
/// Where owed scripts (unlocks) run detached keep their output and exit status, one
/// directory per run and script: `<run>/<job>.<script>/{pid,stdout,stderr,status}`. On the
/// ephemeral disk, outside the staging directory, so a cleanup that removed the staging
/// directory still finds what a killed run's unlocks did.
pub const OWED_ROOT: &str = "/var/vcap/data/lockstep/owed";
/// The run record a lockstep run writes into the staging directory it claimed
/// (see [`crate::orchestrate::run_lock`]).
pub const RUN_RECORD_FILE: &str = ".lockstep-run";

/// Who holds an instance's staging directory ([`ARTIFACT_ROOT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagingHolder {
    /// It does not exist (or, from [`Instance::claim_staging`], it did not: now it is ours).
    Nobody,
    /// It exists without a run record: bbr's, or a run's that died before writing one.
    Unknown,
    /// It holds a lockstep run's record (its text, as written).
    Run(String),
}

/// Marks the error of a script whose outcome is unknown: the instance could not be
/// reached, or the connection dropped before the exit status came back. The script may
/// not have run, may have finished, or may still run; an idempotent script (an unlock) is
/// worth trying again. A script that answered with a failure, or that ran past its time
/// limit, is not marked. Found with `error.is::<Unanswered>()` anywhere in the chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unanswered(pub String);

/// A BBR script found on an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundScript {
    pub job: String,
    pub kind: ScriptKind,
}

#[async_trait]
pub trait Instance: Send + Sync {
    fn id(&self) -> &InstanceId;
    /// Where the instance is, for messages (`vcap@10.0.0.5:22`).
    fn address(&self) -> String;

    /// Every `/var/vcap/jobs/<job>/bin/bbr/<script>` with one of the seven names.
    async fn find_scripts(&self) -> anyhow::Result<Vec<FoundScript>>;
    /// Runs a script with extra environment variables; returns its stdout.
    async fn run_script(&self, job: &str, kind: ScriptKind, env: &[(String, String)]) -> anyhow::Result<Vec<u8>>;
    /// Runs an owed script (an unlock) detached from the connection, so that it finishes on
    /// the instance even if lockstep is killed or the connection drops; its output and
    /// exit status stay in [`OWED_ROOT`]`/<run>`. Started once per run and script: a second
    /// call finds it started. With `wait`, waits for its end and returns as
    /// [`Instance::run_script`] does; without, returns once it started.
    async fn run_owed(&self, run: &str, job: &str, kind: ScriptKind, env: &[(String, String)], wait: bool) -> anyhow::Result<Vec<u8>>;
    /// Stops (SIGTERM, then SIGKILL after 2 s) every process on the instance whose
    /// environment has `<env>=<run>`: what a killed run's lock, backup and restore scripts
    /// left running. Returns how many there were.
    async fn stop_run(&self, env: &str, run: &str) -> anyhow::Result<usize>;
    /// Removes what [`Instance::run_owed`] kept for `run`, once its results were received.
    async fn forget_owed(&self, run: &str) -> anyhow::Result<()>;
    /// Owed scripts started on this instance whose end nobody collected (a killed run's):
    /// `(run, job, kind)`.
    async fn owed_left(&self) -> anyhow::Result<Vec<(String, String, ScriptKind)>>;
    /// The value of `BBR_ARTIFACT_DIRECTORY` for an artifact (with a trailing slash).
    fn artifact_dir(&self, artifact: &str) -> String;
    /// Who holds `/var/vcap/store/bbr-backup`, if anyone.
    async fn staging_holder(&self) -> anyhow::Result<StagingHolder>;
    /// Creates `/var/vcap/store/bbr-backup` atomically (`mkdir`, never `-p`) with `record`
    /// in it. `Nobody` when this call created it; otherwise who holds it (nothing changed).
    async fn claim_staging(&self, record: &str) -> anyhow::Result<StagingHolder>;
    async fn create_artifact_dir(&self, artifact: &str) -> anyhow::Result<()>;
    /// Creates the artifact directory, then runs the job's backup script. Inside the lock
    /// window every round trip is API downtime: an instance over SSH does both in one
    /// command.
    async fn run_backup_script(&self, job: &str, artifact: &str, env: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
        self.create_artifact_dir(artifact).await?;
        self.run_script(job, ScriptKind::Backup, env).await
    }
    /// Size in bytes of an artifact directory (for progress; approximate).
    async fn artifact_size(&self, artifact: &str) -> anyhow::Result<u64>;
    /// Streams `tar -c .` of the artifact directory into `out`.
    async fn stream_artifact(&self, artifact: &str, out: Writer<'_>) -> anyhow::Result<()>;
    /// sha256 of every regular file of the artifact directory, computed on the instance.
    async fn checksum_artifact(&self, artifact: &str) -> anyhow::Result<Checksums>;
    /// Creates the artifact directory and extracts the tar read from `input` into it.
    async fn receive_artifact(&self, artifact: &str, input: Reader<'_>) -> anyhow::Result<()>;
    /// [`Instance::receive_artifact`], then [`Instance::checksum_artifact`]: what a restore
    /// does per job. An instance may do both in one command (one round trip less).
    async fn receive_and_checksum(&self, artifact: &str, input: Reader<'_>) -> anyhow::Result<Checksums> {
        self.receive_artifact(artifact, input).await?;
        self.checksum_artifact(artifact).await
    }
    /// `rm -rf /var/vcap/store/bbr-backup/<artifact>`, once it is safe elsewhere.
    async fn remove_artifact_dir(&self, artifact: &str) -> anyhow::Result<()>;
    /// `rm -rf /var/vcap/store/bbr-backup`.
    async fn remove_artifact_root(&self) -> anyhow::Result<()>;
}

pub type InstanceRef = Arc<dyn Instance>;

/// Splits `/var/vcap/jobs/<job>/bin/bbr/<name>` into a script, if it is one.
pub fn parse_script_path(path: &str) -> Option<FoundScript> {
    let rest = path.strip_prefix(JOBS_DIR)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [job, "bin", "bbr", name] if !job.is_empty() => {
            Some(FoundScript { job: job.to_string(), kind: ScriptKind::from_file_name(name)? })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]

    fn script_paths() {
        let s = parse_script_path("/var/vcap/jobs/redis/bin/bbr/pre-backup-lock").unwrap();
        assert_eq!(s, FoundScript { job: "redis".into(), kind: ScriptKind::PreBackupLock });
        assert!(parse_script_path("/var/vcap/jobs/redis/bin/bbr/helper.sh").is_none());
        assert!(parse_script_path("/var/vcap/jobs/redis/bin/bbr/sub/backup").is_none());
        assert!(parse_script_path("/var/vcap/jobs/redis/bin/backup").is_none());
    }
}

//! The vocabulary of a deployment: instances, jobs, the seven BBR scripts and the
//! metadata a job's `metadata` script prints. Nothing here knows how an instance is
//! reached or where artifacts are stored.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// `<group>/<index>`, as BOSH and bbr name an instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId {
    pub group: String,
    pub index: String,
}

impl InstanceId {
    pub fn new(group: impl Into<String>, index: impl Into<String>) -> Self {
        InstanceId { group: group.into(), index: index.into() }
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.index)
    }
}

/// The seven script names bbr recognises under `/var/vcap/jobs/<job>/bin/bbr/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScriptKind {
    Metadata,
    PreBackupLock,
    Backup,
    PostBackupUnlock,
    PreRestoreLock,
    Restore,
    PostRestoreUnlock,
}

impl ScriptKind {
    pub const ALL: [ScriptKind; 7] = [
        ScriptKind::Metadata,
        ScriptKind::PreBackupLock,
        ScriptKind::Backup,
        ScriptKind::PostBackupUnlock,
        ScriptKind::PreRestoreLock,
        ScriptKind::Restore,
        ScriptKind::PostRestoreUnlock,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            ScriptKind::Metadata => "metadata",
            ScriptKind::PreBackupLock => "pre-backup-lock",
            ScriptKind::Backup => "backup",
            ScriptKind::PostBackupUnlock => "post-backup-unlock",
            ScriptKind::PreRestoreLock => "pre-restore-lock",
            ScriptKind::Restore => "restore",
            ScriptKind::PostRestoreUnlock => "post-restore-unlock",
        }
    }

    pub fn from_file_name(name: &str) -> Option<ScriptKind> {
        ScriptKind::ALL.into_iter().find(|k| k.file_name() == name)
    }
}

impl fmt::Display for ScriptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// One entry of `backup_should_be_locked_before` / `restore_should_be_locked_before`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockBefore {
    pub job_name: String,
    pub release: String,
}

/// What a job's `metadata` script declares, after validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobMetadata {
    pub backup_should_be_locked_before: Vec<LockBefore>,
    pub restore_should_be_locked_before: Vec<LockBefore>,
    pub skip_bbr_scripts: bool,
    /// bbr >= 1.5 ignores `backup_name` (with a warning) and refuses to restore when a
    /// restorable job declares `restore_name`; we keep the facts to do the same.
    pub discontinued_backup_name: bool,
    pub discontinued_restore_name: bool,
}

/// A job on an instance that ships at least one BBR script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    /// The BOSH release the job comes from, when the target knows it (deployment mode).
    /// Targets without a manifest leave it `None`; lock dependencies then match on the
    /// job name alone, as bbr does in director mode.
    pub release: Option<String>,
    pub scripts: BTreeSet<ScriptKind>,
    pub metadata: JobMetadata,
}

impl Job {
    pub fn has(&self, kind: ScriptKind) -> bool {
        self.scripts.contains(&kind)
    }
    pub fn backupable(&self) -> bool {
        self.has(ScriptKind::Backup)
    }
    pub fn restorable(&self) -> bool {
        self.has(ScriptKind::Restore)
    }
    /// Name of the artifact this job writes and of its directory under
    /// `/var/vcap/store/bbr-backup/`. bbr always uses the job name since v1.5.
    pub fn artifact_name(&self) -> &str {
        &self.name
    }
}

/// Which ordering constraints apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Backup,
    Restore,
}

impl Direction {
    pub fn constraints(self, m: &JobMetadata) -> &[LockBefore] {
        match self {
            Direction::Backup => &m.backup_should_be_locked_before,
            Direction::Restore => &m.restore_should_be_locked_before,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Backup => "backup",
            Direction::Restore => "restore",
        })
    }
}

/// Name of an artifact's per-job tar file: `<group>-<index>-<job>.tar`.
pub fn artifact_file_name(id: &InstanceId, job: &str) -> String {
    format!("{}-{}-{}.tar", id.group, id.index, job)
}

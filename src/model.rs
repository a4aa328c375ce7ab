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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    /// The BOSH release the job comes from, when the target knows it (deployment mode).
    /// Targets without a manifest leave it `None`; lock dependencies then match on the
    /// job name alone, as bbr does in director mode.
    pub release: Option<String>,
    pub scripts: BTreeSet<ScriptKind>,
    pub metadata: JobMetadata,
    /// The manifest property `bbr.backup_one_restore_all` (deployment mode): the job's
    /// backup on the bootstrap instance becomes one custom artifact, and every instance of
    /// the job restores from it.
    pub backup_one_restore_all: bool,
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
    /// Name of a job's own artifact and of its directory under `/var/vcap/store/bbr-backup/`.
    /// bbr always uses the job name since v1.5 (`backup_name` is ignored).
    pub fn artifact_name(&self) -> &str {
        &self.name
    }
    /// bbr's custom artifact for a `backup_one_restore_all` job:
    /// `<job>-<release>-backup-one-restore-all`.
    pub fn one_restore_all_name(&self) -> Option<String> {
        self.backup_one_restore_all.then(|| one_restore_all_name(&self.name, self.release.as_deref().unwrap_or("")))
    }
    /// Does the custom artifact `name` belong to this job? Exactly its
    /// [`one_restore_all_name`](Self::one_restore_all_name) when the release is known;
    /// without a manifest (hosts or local targets restoring a bbr artifact), any
    /// `<job>-<release>-backup-one-restore-all`.
    pub fn takes_custom_artifact(&self, name: &str) -> bool {
        match &self.release {
            Some(release) => name == one_restore_all_name(&self.name, release),
            None => name
                .strip_prefix(&format!("{}-", self.name))
                .and_then(|rest| rest.strip_suffix(ONE_RESTORE_ALL_SUFFIX))
                .is_some_and(|release| !release.contains('/')),
        }
    }
}

const ONE_RESTORE_ALL_SUFFIX: &str = "-backup-one-restore-all";

fn one_restore_all_name(job: &str, release: &str) -> String {
    format!("{job}-{release}{ONE_RESTORE_ALL_SUFFIX}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_artifacts_of_backup_one_restore_all_jobs() {
        let flagged = Job { name: "pg".into(), release: Some("postgres".into()), backup_one_restore_all: true, ..Default::default() };
        assert_eq!(flagged.one_restore_all_name().as_deref(), Some("pg-postgres-backup-one-restore-all"));
        assert!(flagged.takes_custom_artifact("pg-postgres-backup-one-restore-all"));
        assert!(!flagged.takes_custom_artifact("pg-other-backup-one-restore-all"), "the release must match when known");
        let plain = Job { name: "pg".into(), ..Default::default() };
        assert_eq!(plain.one_restore_all_name(), None);
        // Without a manifest, any release.
        assert!(plain.takes_custom_artifact("pg-postgres-backup-one-restore-all"));
        assert!(!plain.takes_custom_artifact("pg-postgres"));
        assert!(!plain.takes_custom_artifact("pgbouncer-x-backup-one-restore-all"));
        assert!(!plain.takes_custom_artifact("pg-backup-one-restore-all"), "no release part at all");
    }
}

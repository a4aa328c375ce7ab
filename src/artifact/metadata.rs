//! bbr's `metadata` file. Field names, nesting and the `index` as a string are bbr's, so
//! either tool can restore what the other wrote.

use super::tar_hash::Checksums;
use anyhow::Context;
use serde::{Deserialize, Deserializer, Serialize};

pub const METADATA_FILE: &str = "metadata";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMetadata {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceArtifacts>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_artifacts: Vec<ArtifactChecksums>,
    #[serde(default)]
    pub backup_activity: BackupActivity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceArtifacts {
    /// The instance group.
    pub name: String,
    /// bbr writes a string; hand-written files use a number. Accept both.
    #[serde(deserialize_with = "string_or_number")]
    pub index: String,
    #[serde(default)]
    pub artifacts: Vec<ArtifactChecksums>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactChecksums {
    pub name: String,
    #[serde(default)]
    pub checksums: Checksums,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupActivity {
    #[serde(default)]
    pub start_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub finish_time: String,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(u64),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    })
}

impl BackupMetadata {
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        serde_saphyr::to_string(self).context("serialising metadata")
    }

    pub fn from_yaml(text: &str) -> anyhow::Result<Self> {
        serde_saphyr::from_str(text).context("the artifact's metadata file is not valid bbr metadata")
    }

    /// The checksums recorded for one job's artifact on one instance.
    pub fn checksums_for(&self, group: &str, index: &str, job: &str) -> Option<&Checksums> {
        self.instances
            .iter()
            .find(|i| i.name == group && i.index == index)?
            .artifacts
            .iter()
            .find(|a| a.name == job)
            .map(|a| &a.checksums)
    }

    /// Adds (or replaces) one artifact's checksums, keeping instances sorted so the file is
    /// deterministic (bbr's order followed drain completion).
    pub fn add(&mut self, group: &str, index: &str, job: &str, checksums: Checksums) {
        let pos = match self.instances.iter().position(|i| i.name == group && i.index == index) {
            Some(p) => p,
            None => {
                self.instances.push(InstanceArtifacts {
                    name: group.to_string(),
                    index: index.to_string(),
                    artifacts: Vec::new(),
                });
                self.instances.len() - 1
            }
        };
        let inst = &mut self.instances[pos];
        inst.artifacts.retain(|a| a.name != job);
        inst.artifacts.push(ArtifactChecksums { name: job.to_string(), checksums });
        inst.artifacts.sort_by(|a, b| a.name.cmp(&b.name));
        self.instances.sort_by(|a, b| (&a.name, &a.index).cmp(&(&b.name, &b.index)));
    }

    /// Records a custom artifact (bbr's `backup_one_restore_all`).
    pub fn add_custom(&mut self, name: &str, checksums: Checksums) {
        self.custom_artifacts.retain(|a| a.name != name);
        self.custom_artifacts.push(ArtifactChecksums { name: name.to_string(), checksums });
        self.custom_artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BBR_FIXTURE: &str = r#"instances:
- name: redis
  index: "0"
  artifacts:
  - name: redis-server
    checksums:
      ./redis-server/dump.rdb: 3f1b0000000000000000000000000000000000000000000000000000000000aa
- name: other
  index: 1
  artifacts:
  - name: x
    checksums: {}
custom_artifacts:
- name: redis-backup-one-restore-all
  checksums:
    ./bootstrap-backupdump: 9a2c000000000000000000000000000000000000000000000000000000000000
backup_activity:
  start_time: 2024/01/02 03:04:05 PST
  finish_time: 2024/01/02 03:10:11 PST
"#;

    #[test]
    fn reads_bbr_metadata() {
        let m = BackupMetadata::from_yaml(BBR_FIXTURE).unwrap();
        assert_eq!(m.instances.len(), 2);
        assert_eq!(m.instances[1].index, "1");
        assert_eq!(
            m.checksums_for("redis", "0", "redis-server").unwrap()["./redis-server/dump.rdb"],
            "3f1b0000000000000000000000000000000000000000000000000000000000aa"
        );
        assert_eq!(m.custom_artifacts[0].name, "redis-backup-one-restore-all");
        assert_eq!(m.backup_activity.finish_time, "2024/01/02 03:10:11 PST");
    }

    #[test]
    fn writes_what_it_reads_with_index_as_string() {
        let mut m = BackupMetadata::default();
        m.backup_activity.start_time = "2024/01/02 03:04:05 UTC".into();
        let mut sums = Checksums::new();
        sums.insert("./a b\nc".into(), "ab".repeat(32));
        m.add("web", "0", "nginx", sums);
        m.add("db", "0", "pg", Checksums::new());
        let yaml = m.to_yaml().unwrap();
        assert!(yaml.contains("index: \"0\"") || yaml.contains("index: '0'"), "{yaml}");
        assert!(!yaml.contains("finish_time"), "{yaml}");
        let back = BackupMetadata::from_yaml(&yaml).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.instances[0].name, "db");
    }

    #[test]
    fn malformed_metadata_is_a_clear_error() {
        let err = BackupMetadata::from_yaml("instances: [").unwrap_err();
        assert!(format!("{err:#}").contains("not valid bbr metadata"));
        let err = BackupMetadata::from_yaml("instances:\n- index: \"0\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("name"), "{err:#}");
    }
}

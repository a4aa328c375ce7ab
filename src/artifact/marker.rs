//! `lockstep.json`, the commit marker. It is written last: its presence says every other
//! object of the artifact is complete, and it records what a person or a later restore
//! needs to trust the artifact (per-object sha256, sizes, timings, lock window).

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MARKER_FILE: &str = "lockstep.json";
/// Bumped when a reader of an older version could misread a newer artifact. Version 2
/// added codecs (compressed or encrypted objects); a plain artifact is still written as
/// version 1, which every lockstep reads.
pub const FORMAT_VERSION: u32 = 2;
/// The version written for an artifact whose objects are plain tars.
pub const PLAIN_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitMarker {
    pub format_version: u32,
    pub tool_version: String,
    pub deployment: String,
    pub artifact: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    /// Taken with `--unsafe-lock-free`: the jobs were not locked, the artifact may be
    /// inconsistent.
    pub lock_free: bool,
    /// Every stored object other than this marker, by file name.
    pub objects: BTreeMap<String, StoredObject>,
    /// Seconds spent per phase (`discover`, `lock`, `backup`, `unlock`, `drain`, `cleanup`).
    pub phases: BTreeMap<String, f64>,
    /// Seconds from the first lock script starting to the last unlock script ending: how
    /// long the platform's API was unavailable. `None` for a lock-free backup.
    pub lock_window_seconds: Option<f64>,
    /// Non-fatal problems seen while taking the backup (an unlock that failed after the
    /// data was safe, a cleanup failure).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Where the deployment was ([`crate::target::Target::location`]): a restore drill
    /// refuses to restore onto the same place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_from: Option<String>,
    /// Who took it: Concourse build variables and the like, when known.
    #[serde(default)]
    pub origin: BTreeMap<String, String>,
    /// Compression of the stored tars: `none`, `zstd` or `gzip` (`.tar`, `.tar.zst`,
    /// `.tar.gz`). `metadata` always holds the checksums of the uncompressed tar entries.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Whether the stored tars (and the manifest) are encrypted (`.age`).
    #[serde(default)]
    pub encrypted: bool,
    /// How: the scheme and the recipients' public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::store::codec::EncryptionInfo>,
}

fn default_compression() -> String {
    "none".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// Bytes as stored.
    pub size: u64,
    /// sha256 of the bytes as stored.
    pub sha256: String,
}

impl CommitMarker {
    /// The marker of a plain artifact with nothing recorded yet: the caller fills in the
    /// times, objects and the rest (and [`set_codec`](Self::set_codec)).
    pub fn new(deployment: &str, artifact: &str) -> Self {
        CommitMarker {
            format_version: PLAIN_FORMAT_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            deployment: deployment.to_string(),
            artifact: artifact.to_string(),
            started_at: String::new(),
            finished_at: String::new(),
            lock_free: false,
            objects: BTreeMap::new(),
            phases: BTreeMap::new(),
            lock_window_seconds: None,
            warnings: Vec::new(),
            origin: BTreeMap::new(),
            taken_from: None,
            compression: default_compression(),
            encrypted: false,
            encryption: None,
        }
    }

    pub fn to_json(&self) -> anyhow::Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).context("serialising lockstep.json")?;
        v.push(b'\n');
        Ok(v)
    }

    pub fn from_json(data: &[u8]) -> anyhow::Result<Self> {
        let m: CommitMarker = serde_json::from_slice(data).context("lockstep.json is malformed")?;
        if m.format_version > FORMAT_VERSION {
            bail!(
                "lockstep.json has format version {}, this lockstep reads up to {}: upgrade lockstep",
                m.format_version,
                FORMAT_VERSION
            );
        }
        Ok(m)
    }

    pub fn total_size(&self) -> u64 {
        self.objects.values().map(|o| o.size).sum()
    }

    /// The codec of the stored tars.
    pub fn codec(&self) -> anyhow::Result<crate::store::codec::Codec> {
        if self.encrypted && self.encryption.is_none() {
            bail!("lockstep.json says the artifact is encrypted but not how");
        }
        crate::store::codec::Codec::from_recorded(&self.compression, self.encryption.as_ref())
    }

    /// Records `codec`, and the format version a reader needs for it.
    pub fn set_codec(&mut self, codec: &crate::store::codec::Codec) {
        self.compression = codec.compression.name().to_string();
        self.encrypted = codec.encrypted();
        self.encryption = codec.encryption_info();
        self.format_version = if codec.is_plain() { PLAIN_FORMAT_VERSION } else { FORMAT_VERSION };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CommitMarker {
        CommitMarker {
            format_version: FORMAT_VERSION,
            tool_version: "0.1.0".into(),
            started_at: "2024-01-02T03:04:05Z".into(),
            finished_at: "2024-01-02T03:05:05Z".into(),
            objects: [("web-0-nginx.tar".to_string(), StoredObject { size: 10240, sha256: "ab".repeat(32) })]
                .into_iter()
                .collect(),
            phases: [("lock".to_string(), 0.5)].into_iter().collect(),
            lock_window_seconds: Some(1.25),
            ..CommitMarker::new("cf", "cf_20240102T030405Z")
        }
    }

    #[test]
    fn records_the_codec_and_reads_markers_without_one() {
        let mut m = sample();
        let codec = crate::store::codec::Codec { compression: crate::store::codec::Compression::ZSTD, recipients: vec!["age1abc".into()] };
        m.set_codec(&codec);
        assert_eq!(m.format_version, FORMAT_VERSION);
        let back = CommitMarker::from_json(&m.to_json().unwrap()).unwrap();
        assert_eq!(back.codec().unwrap(), codec);
        assert!(String::from_utf8(m.to_json().unwrap()).unwrap().contains("\"compression\": \"zstd\""));
        m.set_codec(&crate::store::codec::Codec::plain());
        assert_eq!(m.format_version, PLAIN_FORMAT_VERSION);
        // Written before codecs existed: plain.
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json().unwrap()).unwrap();
        for k in ["compression", "encrypted", "encryption"] {
            v.as_object_mut().unwrap().remove(k);
        }
        let old = CommitMarker::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(old.codec().unwrap().is_plain());
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(CommitMarker::from_json(&m.to_json().unwrap()).unwrap(), m);
        assert_eq!(m.total_size(), 10240);
    }

    #[test]
    fn rejects_newer_formats_and_garbage() {
        let mut m = sample();
        m.format_version = FORMAT_VERSION + 1;
        let err = CommitMarker::from_json(&m.to_json().unwrap()).unwrap_err();
        assert!(err.to_string().contains("upgrade lockstep"), "{err}");
        assert!(CommitMarker::from_json(b"{\"format_version\": 1").is_err());
        assert!(CommitMarker::from_json(b"{}").is_err());
    }
}

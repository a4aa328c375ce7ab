//! The artifact format: bbr's layout and `metadata` file, plus lockstep's commit marker.
//!
//! ```text
//! <deployment>_<YYYYMMDDTHHMMSSZ>/
//!     <group>-<index>-<job>.tar    one per backed-up job (bbr's layout, uncompressed)
//!     metadata                     bbr's YAML: per-file sha256 of every tar entry
//!     lockstep.json                written last: the commit marker
//! ```
//! A platform backup adds one record, `platform_<time>/platform.json`, tying its member
//! artifacts together ([`platform`]).
//!
//! An artifact without `lockstep.json` does not exist for list, prune or restore from a
//! store; a directory with `metadata` but no marker is accepted for restore only when it
//! is named directly (an artifact made by `bbr`).

pub mod lease;
pub mod marker;
pub mod metadata;
pub mod platform;
pub mod stored;
pub mod tar_hash;
pub mod tar_write;

pub use marker::{CommitMarker, MARKER_FILE};
pub use metadata::{BackupMetadata, METADATA_FILE};

use chrono::{DateTime, NaiveDateTime, Utc};

/// A whole object's sha256 as the format records it (`lockstep.json`, platform records):
/// lowercase hex, as `sha256sum` prints it, so an operator can check an object by hand.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

/// `cf_20240102T030405Z` for deployment `cf` at that UTC time (bbr's naming).
pub fn artifact_name(deployment: &str, at: DateTime<Utc>) -> String {
    format!("{deployment}_{}", at.format("%Y%m%dT%H%M%SZ"))
}

/// Splits an artifact name into deployment and time; `None` if it is not one.
pub fn parse_artifact_name(name: &str) -> Option<(&str, DateTime<Utc>)> {
    let (deployment, stamp) = name.rsplit_once('_')?;
    let t = NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    if deployment.is_empty() || stamp.len() != 16 {
        return None;
    }
    Some((deployment, t.and_utc()))
}

/// bbr's time layout for `backup_activity` (Go's `2006/01/02 15:04:05 MST`). bbr writes
/// the local zone; we always write UTC so the times agree with the artifact name.
pub fn bbr_time(at: DateTime<Utc>) -> String {
    at.format("%Y/%m/%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_round_trip() {
        let t = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        let name = artifact_name("my_cf", t);
        assert_eq!(name, "my_cf_20240102T030405Z");
        assert_eq!(parse_artifact_name(&name), Some(("my_cf", t)));
        assert_eq!(parse_artifact_name("cf_2024"), None);
        assert_eq!(parse_artifact_name("_20240102T030405Z"), None);
        assert_eq!(bbr_time(t), "2024/01/02 03:04:05 UTC");
    }
}

//! The platform record: one small object that ties the artifacts of one platform backup
//! (Ops Manager's export, the director, the products' deployments) together.
//!
//! ```text
//! platform_<YYYYMMDDTHHMMSSZ>/
//!     platform.json      the record, written last, once every member is committed
//! ```
//!
//! Each member is an ordinary committed artifact; the record names it and holds the sha256
//! of its `lockstep.json` as it was when the record was written, so a member removed,
//! replaced or left uncommitted afterwards is seen. The record is one object written with
//! the store's commit semantics (an S3 PUT, a local rename; never over another record): it
//! exists whole or not at all, so a platform backup that failed half-way leaves its good
//! members as ordinary artifacts and no record, and is never mistaken for a complete one.

use super::marker::{CommitMarker, MARKER_FILE};
use super::{artifact_name, parse_artifact_name, sha256_hex};
use crate::store::{self, NotFound, Store};
use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The record's file in its directory.
pub const PLATFORM_FILE: &str = "platform.json";
/// The "deployment" of platform records: they are named `platform_<time>`, and retention
/// keeps them by the same rules as any deployment's artifacts.
pub const PLATFORM_DEPLOYMENT: &str = "platform";
/// Bumped when an older reader could misread a newer record.
pub const PLATFORM_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformRecord {
    pub format_version: u32,
    pub tool_version: String,
    /// `platform_<time>`: the record's own name, its id.
    pub platform: String,
    /// RFC 3339, UTC: when the platform backup started and when its last member committed.
    pub started_at: String,
    pub finished_at: String,
    /// Where the platform is described (Ops Manager's URL), without secrets.
    pub source: String,
    /// In the order they were taken: the export, the director, the products.
    pub members: Vec<Member>,
    /// Who took it (Concourse build variables and the like).
    #[serde(default)]
    pub origin: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `opsman-export`, `director` or `product`.
    pub role: String,
    /// The product's type (`cf`, `p-isolation-segment`) for a product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The member's deployment (`opsman`, the director's address, `cf-<guid>`).
    pub deployment: String,
    /// The committed artifact (`<deployment>_<time>`).
    pub artifact: String,
    /// sha256 of its `lockstep.json` as stored when the record was written.
    pub marker_sha256: String,
}

/// What became of a member since the record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberState {
    /// Committed, and its `lockstep.json` is the one the record names.
    Committed,
    /// Nothing of it is in the store (pruned or deleted).
    Missing,
    /// Objects of it are there, but no `lockstep.json`.
    Uncommitted,
    /// Its `lockstep.json` is not the one the record names (replaced or damaged).
    Changed(String),
}

impl MemberState {
    pub fn is_committed(&self) -> bool {
        *self == MemberState::Committed
    }
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberState::Committed => f.write_str("committed"),
            MemberState::Missing => f.write_str("MISSING"),
            MemberState::Uncommitted => write!(f, "NOT COMMITTED (no {MARKER_FILE})"),
            MemberState::Changed(why) => write!(f, "CHANGED ({why})"),
        }
    }
}

impl PlatformRecord {
    /// A record named after `started`, with no member yet.
    pub fn new(source: &str, started: DateTime<Utc>) -> Self {
        PlatformRecord {
            format_version: PLATFORM_FORMAT_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            platform: artifact_name(PLATFORM_DEPLOYMENT, started),
            started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            finished_at: String::new(),
            source: source.to_string(),
            members: Vec::new(),
            origin: BTreeMap::new(),
        }
    }

    pub fn to_json(&self) -> anyhow::Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).context("serialising platform.json")?;
        v.push(b'\n');
        Ok(v)
    }

    pub fn from_json(data: &[u8]) -> anyhow::Result<Self> {
        let r: PlatformRecord = serde_json::from_slice(data).context("platform.json is malformed")?;
        if r.format_version > PLATFORM_FORMAT_VERSION {
            bail!("platform.json has format version {}, this lockstep reads up to {PLATFORM_FORMAT_VERSION}: upgrade lockstep", r.format_version);
        }
        Ok(r)
    }
}

/// Is `name` a platform record's name (`platform_<time>`)?
pub fn is_platform_name(name: &str) -> bool {
    parse_artifact_name(name).is_some_and(|(d, _)| d == PLATFORM_DEPLOYMENT)
}

/// The sha256 of artifact `name`'s `lockstep.json` as stored; an error when it has none
/// or it does not parse.
pub async fn marker_digest(store: &dyn Store, name: &str) -> anyhow::Result<String> {
    let data = store::read_all(store, &format!("{name}/{MARKER_FILE}")).await.with_context(|| format!("{name} is not committed"))?;
    CommitMarker::from_json(&data).with_context(|| format!("artifact {name}"))?;
    Ok(sha256_hex(&data))
}

/// Writes the record: after this the platform backup exists. Refuses to replace a record
/// of the same name (another run in the same second).
pub async fn commit(store: &dyn Store, record: &PlatformRecord) -> anyhow::Result<()> {
    let key = format!("{}/{PLATFORM_FILE}", record.platform);
    if !store.put_if_absent(&key, &record.to_json()?).await.with_context(|| format!("writing {key}"))? {
        bail!("{key} already exists in {}: another platform backup started in the same second", store.describe());
    }
    Ok(())
}

/// Reads record `name`.
pub async fn read(store: &dyn Store, name: &str) -> anyhow::Result<PlatformRecord> {
    let key = format!("{name}/{PLATFORM_FILE}");
    match store::read_all(store, &key).await {
        Ok(data) => PlatformRecord::from_json(&data).with_context(|| format!("platform record {name}")),
        Err(e) if e.downcast_ref::<NotFound>().is_some() => Err(anyhow!("no platform record {name} in {}", store.describe())),
        Err(e) => Err(e.context(format!("reading {key}"))),
    }
}

/// The platform records in a store, oldest first.
pub async fn list(store: &dyn Store) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<(DateTime<Utc>, String)> = store
        .list("")
        .await?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.strip_suffix(&format!("/{PLATFORM_FILE}"))?.to_string();
            let (d, at) = parse_artifact_name(&name)?;
            (d == PLATFORM_DEPLOYMENT).then_some((at, name))
        })
        .collect();
    names.sort();
    Ok(names.into_iter().map(|(_, n)| n).collect())
}

/// What became of each member of `record`, in its order.
pub async fn member_states(store: &dyn Store, record: &PlatformRecord) -> anyhow::Result<Vec<(Member, MemberState)>> {
    let mut out = Vec::new();
    for m in &record.members {
        let keys = store.list(&format!("{}/", m.artifact)).await?;
        let state = if keys.is_empty() {
            MemberState::Missing
        } else if !keys.iter().any(|o| o.key == format!("{}/{MARKER_FILE}", m.artifact)) {
            MemberState::Uncommitted
        } else {
            match marker_digest(store, &m.artifact).await {
                Ok(d) if d == m.marker_sha256 => MemberState::Committed,
                Ok(d) => MemberState::Changed(format!("its {MARKER_FILE} has sha256 {d}, the record names {}", m.marker_sha256)),
                Err(e) => MemberState::Changed(format!("{e:#}")),
            }
        };
        out.push((m.clone(), state));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;
    use chrono::TimeZone;

    #[tokio::test]
    async fn a_record_round_trips_and_sees_what_became_of_its_members() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = LocalStore::new(dir.path());
        let at = Utc.with_ymd_and_hms(2026, 12, 7, 1, 2, 3).unwrap();
        let marker = |n: &str| CommitMarker::new("cf", n).to_json().unwrap();
        for n in ["cf_20261207T010300Z", "cf_20261207T010400Z"] {
            store::write_all(&store, &format!("{n}/{MARKER_FILE}"), &marker(n)).await.unwrap();
        }
        let mut r = PlatformRecord::new("https://opsman.example.com/", at);
        assert_eq!(r.platform, "platform_20261207T010203Z");
        for n in ["cf_20261207T010300Z", "cf_20261207T010400Z", "cf_20261207T010500Z"] {
            let sha = marker_digest(&store, n).await.unwrap_or_else(|_| "00".repeat(32));
            r.members.push(Member { role: "product".into(), product: Some("cf".into()), deployment: "cf".into(), artifact: n.into(), marker_sha256: sha });
        }
        commit(&store, &r).await.unwrap();
        assert!(format!("{:#}", commit(&store, &r).await.unwrap_err()).contains("already exists"));
        assert_eq!(list(&store).await.unwrap(), vec![r.platform.clone()]);
        assert_eq!(read(&store, &r.platform).await.unwrap(), r);
        // The second member is replaced by another of the same name; the third never came.
        store::write_all(&store, "cf_20261207T010400Z/lockstep.json", &CommitMarker::new("cf", "other").to_json().unwrap()).await.unwrap();
        let states: Vec<MemberState> = member_states(&store, &r).await.unwrap().into_iter().map(|(_, s)| s).collect();
        assert_eq!(states[0], MemberState::Committed);
        assert!(matches!(states[1], MemberState::Changed(_)), "{states:?}");
        assert_eq!(states[2], MemberState::Missing);
        assert!(is_platform_name(&r.platform) && !is_platform_name("cf_20261207T010300Z"));
        let mut newer = r.clone();
        newer.format_version = PLATFORM_FORMAT_VERSION + 1;
        assert!(PlatformRecord::from_json(&newer.to_json().unwrap()).is_err());
    }
}

//! A backup in progress, as the store sees it.
//!
//! A backup writes its objects for minutes or hours before its commit marker makes it an
//! artifact; until then its objects look like a leftover, and `prune --grace 0s` (or any
//! backup running longer than the grace) would delete them under it. So a backup holds a
//! lease: `.lockstep/leases/<deployment>.json`, created only if absent (S3's
//! `If-None-Match: *`, a hard link locally), naming its artifact, run and host, and renewed
//! every [`HEARTBEAT`]. While a lease is live a second backup of the deployment into the
//! store is refused and prune leaves the leased artifact alone. A lease not renewed for
//! [`STALE_AFTER`] belongs to a run that is gone: it is said to be stale, and taken over.

use crate::store::{self, Store};
use anyhow::{anyhow, Context};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const LEASE_DIR: &str = ".lockstep/leases";
/// How often a backup renews its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A lease not renewed for this long is stale (ten missed heartbeats: a store that was
/// slow to answer for a while does not free a lease whose run is alive).
pub const STALE_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub deployment: String,
    /// The artifact the backup is writing (`<deployment>_<time>`).
    pub artifact: String,
    pub run: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started: String,
    /// RFC 3339, UTC: when the lease was last renewed.
    pub heartbeat: String,
    /// Where the backup is taken from (the target's location), when the target says.
    #[serde(default)]
    pub location: Option<String>,
}

pub fn key(deployment: &str) -> String {
    format!("{LEASE_DIR}/{deployment}.json")
}

pub fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Lease {
    fn heartbeat_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.heartbeat).ok().map(|t| t.with_timezone(&Utc))
    }

    /// Renewed within [`STALE_AFTER`] (a heartbeat that does not parse counts as live:
    /// nothing is deleted on a guess).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.heartbeat_at().is_none_or(|at| now.signed_duration_since(at).to_std().map_or(true, |age| age < STALE_AFTER))
    }

    pub fn describe(&self, now: DateTime<Utc>) -> String {
        let age = self.heartbeat_at().and_then(|at| now.signed_duration_since(at).to_std().ok()).unwrap_or_default();
        format!(
            "run {} from {}, pid {}, writing {}, started {}, last heartbeat {} ago",
            self.run,
            self.host,
            self.pid,
            self.artifact,
            self.started,
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        )
    }

    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("plain fields serialize")
    }
}

/// Every lease in `store`; a lease that does not parse is returned as its key and why.
pub async fn all(store: &dyn Store) -> anyhow::Result<Vec<Result<Lease, String>>> {
    let mut out = Vec::new();
    for obj in store.list(&format!("{LEASE_DIR}/")).await? {
        let parsed = match store::read_all(store, &obj.key).await {
            Ok(bytes) => serde_json::from_slice::<Lease>(&bytes).map_err(|e| format!("{} is not a lease: {e}", obj.key)),
            // Released between the listing and the read.
            Err(e) if e.is::<store::NotFound>() => continue,
            Err(e) => Err(format!("{}: {e:#}", obj.key)),
        };
        out.push(parsed);
    }
    Ok(out)
}

/// Takes the deployment's lease for `lease.artifact`. Refused, naming the holder, while
/// another backup's lease is live; a stale one is taken over, and `on_stale` is told.
///
/// The caller already holds every instance of `lease.location` (the run lock): a live
/// backup of the same location would hold them too, so a live lease of the same location
/// belongs to a run that is gone (killed, its claims released by backup-cleanup) and is
/// taken over as well. A live lease of another location (the same deployment name backed
/// up from elsewhere into this store) is a real conflict.
pub async fn acquire(store: &dyn Store, lease: &Lease, on_stale: impl Fn(String)) -> anyhow::Result<()> {
    let key = key(&lease.deployment);
    for _ in 0..3 {
        if store.put_if_absent(&key, &lease.to_json()).await.with_context(|| format!("creating the lease {key} in {}", store.describe()))? {
            return Ok(());
        }
        let now = Utc::now();
        let held = match store::read_all(store, &key).await {
            Ok(bytes) => serde_json::from_slice::<Lease>(&bytes).ok(),
            // Released meanwhile: try again.
            Err(e) if e.is::<store::NotFound>() => continue,
            Err(e) => return Err(e.context(format!("reading the lease {key}"))),
        };
        match held {
            Some(h) if h.is_live(now) && h.location.is_some() && h.location == lease.location => on_stale(format!(
                "taking over the lease of a backup that no longer holds the instances it was taking ({}): it is gone",
                h.describe(now)
            )),
            Some(h) if h.is_live(now) => {
                return Err(anyhow!(
                    "another backup of {} into {} is in progress ({}); wait for it, or if it is gone, delete {key} from the store \
                     (a lease is stale {} after its last heartbeat)",
                    lease.deployment,
                    store.describe(),
                    h.describe(now),
                    humantime::format_duration(STALE_AFTER)
                ));
            }
            Some(h) => on_stale(format!("taking over the stale lease of a backup that is gone ({})", h.describe(now))),
            None => on_stale(format!("replacing {key}, which is not a lease lockstep can read")),
        }
        store.delete(&key).await.with_context(|| format!("removing the stale lease {key}"))?;
    }
    Err(anyhow!("could not take the lease {key} in {}: it keeps changing hands", store.describe()))
}

/// Renews `lease` every [`HEARTBEAT`], forever: run it beside the backup and drop it when
/// the backup is done. A renewal that fails is retried at the next beat.
pub async fn keep_alive(store: &dyn Store, mut lease: Lease) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        lease.heartbeat = stamp(Utc::now());
        let _ = store::write_all(store, &key(&lease.deployment), &lease.to_json()).await;
    }
}

/// Gives the lease up (only if it is still this run's).
pub async fn release(store: &dyn Store, lease: &Lease) -> anyhow::Result<()> {
    let key = key(&lease.deployment);
    match store::read_all(store, &key).await {
        Ok(bytes) => match serde_json::from_slice::<Lease>(&bytes) {
            Ok(h) if h.run == lease.run => store.delete(&key).await,
            _ => Ok(()),
        },
        Err(e) if e.is::<store::NotFound>() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    fn lease(run: &str, heartbeat: DateTime<Utc>) -> Lease {
        Lease {
            deployment: "cf".into(),
            artifact: "cf_20261202T000000Z".into(),
            run: run.into(),
            host: "worker".into(),
            pid: 7,
            started: stamp(heartbeat),
            heartbeat: stamp(heartbeat),
            location: Some("here".into()),
        }
    }

    #[tokio::test]
    async fn a_live_lease_refuses_a_second_backup_and_a_stale_one_is_taken_over() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = LocalStore::new(dir.path());
        let first = lease("first", Utc::now());
        acquire(&store, &first, |_| panic!("not stale")).await.unwrap();
        let elsewhere = Lease { location: Some("elsewhere".into()), ..lease("second", Utc::now()) };
        let e = acquire(&store, &elsewhere, |_| panic!("not stale")).await.unwrap_err().to_string();
        assert!(e.contains("another backup of cf") && e.contains("run first from worker, pid 7"), "{e}");
        // The second run's release leaves the first run's lease alone.
        release(&store, &lease("second", Utc::now())).await.unwrap();
        assert_eq!(all(&store).await.unwrap(), [Ok(first.clone())]);
        release(&store, &first).await.unwrap();
        assert!(all(&store).await.unwrap().is_empty());

        let old = Utc::now() - chrono::Duration::seconds(STALE_AFTER.as_secs() as i64 + 1);
        acquire(&store, &lease("dead", old), |_| {}).await.unwrap();
        let said = std::sync::Mutex::new(Vec::new());
        acquire(&store, &lease("third", Utc::now()), |m| said.lock().unwrap().push(m)).await.unwrap();
        let said = said.into_inner().unwrap();
        assert!(said.len() == 1 && said[0].contains("stale lease") && said[0].contains("run dead"), "{said:?}");
        assert_eq!(all(&store).await.unwrap()[0].as_ref().unwrap().run, "third");

        // A live lease of the same location: its run no longer holds the instances.
        let said = std::sync::Mutex::new(Vec::new());
        acquire(&store, &lease("fourth", Utc::now()), |m| said.lock().unwrap().push(m)).await.unwrap();
        assert!(said.lock().unwrap()[0].contains("no longer holds the instances") && said.lock().unwrap()[0].contains("run third"));
        assert_eq!(all(&store).await.unwrap()[0].as_ref().unwrap().run, "fourth");
    }

    #[test]
    fn liveness_follows_the_heartbeat() {
        let now = Utc::now();
        assert!(lease("a", now).is_live(now));
        assert!(lease("a", now - chrono::Duration::seconds(60)).is_live(now));
        assert!(!lease("a", now - chrono::Duration::seconds(301)).is_live(now));
        // A clock ahead of ours is not stale.
        assert!(lease("a", now + chrono::Duration::seconds(60)).is_live(now));
    }
}

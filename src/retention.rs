//! Retention: a policy becomes a printable plan (every artifact, kept by which rule or
//! deleted), and the plan is then executed.
//!
//! Rules, applied per deployment to committed artifacts by the time in their names (UTC):
//! `keep_last N` (the N newest), `keep_within D` (newer than now - D), `keep_daily N`,
//! `keep_weekly N`, `keep_monthly N` (the newest artifact of each of the N most recent
//! days / ISO weeks / months that have one). Whatever no rule keeps is deleted, except:
//! the newest committed artifact of a deployment is always kept, and nothing younger than
//! `min_age` is deleted (a clock or an operator mistake must not empty the store).
//!
//! Deleting removes the commit marker first, so an artifact interrupted half-way through
//! its deletion is already invisible (it is then an uncommitted leftover). Leftovers,
//! artifact directories with neither marker nor `metadata` (a crashed or killed backup),
//! are swept once older than the grace period. A directory with `metadata` but no marker
//! looks like an artifact made by `bbr` and is never touched.
//!
//! Platform records (`platform_<time>/platform.json`, [`crate::artifact::platform`]) are
//! kept or deleted by the same rules, as the deployment `platform`; every member of a
//! platform record that is kept is kept with it ("member of platform_<time>"), whatever the
//! rules say of the member alone, so a kept platform backup is always whole. A record that
//! cannot be read is left alone and named in the plan.

use crate::artifact::platform::{self, PLATFORM_DEPLOYMENT, PLATFORM_FILE};
use crate::artifact::{parse_artifact_name, MARKER_FILE, METADATA_FILE};
use crate::store::Store;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<usize>,
    pub keep_within: Option<Duration>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    /// Nothing younger is deleted (default one hour).
    pub min_age: Duration,
    /// Uncommitted leftovers younger than this may be backups in progress (default 24h).
    pub grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            keep_last: None,
            keep_within: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            min_age: Duration::from_secs(3600),
            grace: Duration::from_secs(24 * 3600),
        }
    }
}

impl Policy {
    pub fn has_rules(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_within.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
    }

    /// Refuses a policy without a keep rule: it would delete all but the newest artifact.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.has_rules() {
            anyhow::bail!(
                "the retention policy has no keep rule: give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --keep-within"
            );
        }
        Ok(())
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.keep_last {
            parts.push(format!("keep-last {n}"));
        }
        if let Some(d) = self.keep_within {
            parts.push(format!("keep-within {}", humantime::format_duration(d)));
        }
        if let Some(n) = self.keep_daily {
            parts.push(format!("keep-daily {n}"));
        }
        if let Some(n) = self.keep_weekly {
            parts.push(format!("keep-weekly {n}"));
        }
        if let Some(n) = self.keep_monthly {
            parts.push(format!("keep-monthly {n}"));
        }
        parts.push(format!("min-age {}", humantime::format_duration(self.min_age)));
        write!(f, "{}", parts.join(", "))
    }
}

/// A committed artifact as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub deployment: String,
    pub at: DateTime<Utc>,
}

impl Candidate {
    pub fn from_name(name: &str) -> Option<Candidate> {
        let (deployment, at) = parse_artifact_name(name)?;
        Some(Candidate { name: name.to_string(), deployment: deployment.to_string(), at })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub artifact: Candidate,
    /// Why it is kept; empty: it is deleted.
    pub kept_by: Vec<String>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.kept_by.is_empty()
    }
}

/// An artifact directory without a commit marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncommitted {
    pub name: String,
    pub keys: Vec<String>,
    /// Swept when true; `reason` says why or why not.
    pub sweep: bool,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub store: String,
    pub policy: Policy,
    pub now: DateTime<Utc>,
    /// Oldest first.
    pub decisions: Vec<Decision>,
    pub uncommitted: Vec<Uncommitted>,
    /// The deployment the plan is limited to, if any.
    pub deployment: Option<String>,
}

fn bucketed(sorted_newest_first: &[&Candidate], n: usize, key: impl Fn(&DateTime<Utc>) -> String, rule: &str, out: &mut BTreeMap<String, Vec<String>>) {
    let mut last: Option<String> = None;
    let mut count = 0;
    for c in sorted_newest_first {
        if count >= n {
            break;
        }
        let k = key(&c.at);
        if last.as_ref() != Some(&k) {
            out.entry(c.name.clone()).or_default().push(format!("{rule} {k}"));
            last = Some(k);
            count += 1;
        }
    }
}

/// Decides, for every committed artifact, whether it is kept and by which rules.
/// Pure: `now` is given, so plans can be tested over generated histories.
pub fn decide(policy: &Policy, artifacts: &[Candidate], now: DateTime<Utc>) -> Vec<Decision> {
    let mut by_dep: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for a in artifacts {
        by_dep.entry(a.deployment.as_str()).or_default().push(a);
    }
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let chrono_d = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    for list in by_dep.values_mut() {
        list.sort_by(|a, b| b.at.cmp(&a.at).then(b.name.cmp(&a.name)));
        if let Some(newest) = list.first() {
            reasons.entry(newest.name.clone()).or_default().push("newest".into());
        }
        if let Some(n) = policy.keep_last {
            for (i, c) in list.iter().take(n).enumerate() {
                reasons.entry(c.name.clone()).or_default().push(format!("last {}", i + 1));
            }
        }
        if let Some(d) = policy.keep_within {
            let cutoff = now.checked_sub_signed(chrono_d(d)).unwrap_or(DateTime::<Utc>::MIN_UTC);
            for c in list.iter().filter(|c| c.at >= cutoff) {
                reasons.entry(c.name.clone()).or_default().push(format!("within {}", humantime::format_duration(d)));
            }
        }
        if let Some(n) = policy.keep_daily {
            bucketed(list, n, |t| t.format("%Y-%m-%d").to_string(), "daily", &mut reasons);
        }
        if let Some(n) = policy.keep_weekly {
            bucketed(list, n, |t| t.format("%G-W%V").to_string(), "weekly", &mut reasons);
        }
        if let Some(n) = policy.keep_monthly {
            bucketed(list, n, |t| t.format("%Y-%m").to_string(), "monthly", &mut reasons);
        }
        let young = now.checked_sub_signed(chrono_d(policy.min_age)).unwrap_or(DateTime::<Utc>::MIN_UTC);
        for c in list.iter().filter(|c| c.at > young) {
            reasons.entry(c.name.clone()).or_default().push(format!("younger than min-age {}", humantime::format_duration(policy.min_age)));
        }
    }
    let mut out: Vec<Decision> = artifacts
        .iter()
        .map(|a| Decision { artifact: a.clone(), kept_by: reasons.get(&a.name).cloned().unwrap_or_default() })
        .collect();
    out.sort_by(|a, b| a.artifact.at.cmp(&b.artifact.at).then(a.artifact.name.cmp(&b.artifact.name)));
    out
}

/// Reads the store and plans. `deployment` limits the plan to one deployment's artifacts.
pub async fn plan(store: &dyn Store, policy: &Policy, deployment: Option<&str>, now: DateTime<Utc>) -> anyhow::Result<Plan> {
    policy.validate()?;
    let mut dirs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for obj in store.list("").await? {
        if let Some((dir, _)) = obj.key.split_once('/') {
            dirs.entry(dir.to_string()).or_default().push(obj.key.clone());
        }
    }
    let mut committed = Vec::new();
    let mut uncommitted = Vec::new();
    // Every platform record, whatever `deployment` is: their members are protected.
    let mut records: Vec<(Candidate, Vec<String>)> = Vec::new();
    let grace = chrono::Duration::from_std(policy.grace).unwrap_or(chrono::Duration::MAX);
    // A backup in progress holds a live lease naming its artifact: whatever the grace
    // period, its objects are not leftovers.
    // A stale lease (its run is gone) protects nothing: the grace period decides.
    let in_progress: BTreeMap<String, String> = crate::artifact::lease::all(store)
        .await?
        .into_iter()
        .flatten()
        .filter(|l| l.is_live(now))
        .map(|l| (l.artifact.clone(), format!("a backup in progress holds its lease ({})", l.describe(now))))
        .collect();
    for (dir, keys) in dirs {
        let Some(c) = Candidate::from_name(&dir) else { continue };
        if c.deployment == PLATFORM_DEPLOYMENT && keys.iter().any(|k| k == &format!("{dir}/{PLATFORM_FILE}")) {
            records.push((c, keys));
            continue;
        }
        if deployment.is_some_and(|d| d != c.deployment) {
            continue;
        }
        let has = |f: &str| keys.iter().any(|k| k == &format!("{dir}/{f}"));
        if has(MARKER_FILE) {
            committed.push(c);
        } else if let Some(why) = in_progress.get(&dir) {
            uncommitted.push(Uncommitted { name: dir, keys, sweep: false, reason: why.clone() });
        } else if has(METADATA_FILE) {
            uncommitted.push(Uncommitted {
                name: dir,
                keys,
                sweep: false,
                reason: format!("has metadata but no {MARKER_FILE}: looks like an artifact made by bbr; left alone"),
            });
        } else if c.at + grace < now {
            uncommitted.push(Uncommitted {
                name: dir,
                reason: format!(
                    "uncommitted leftover of {} object(s), older than the {} grace period",
                    keys.len(),
                    humantime::format_duration(policy.grace)
                ),
                keys,
                sweep: true,
            });
        } else {
            uncommitted.push(Uncommitted {
                name: dir,
                keys,
                sweep: false,
                reason: format!("uncommitted, younger than the {} grace period: may be a backup in progress", humantime::format_duration(policy.grace)),
            });
        }
    }
    let in_scope = deployment.is_none_or(|d| d == PLATFORM_DEPLOYMENT);
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for (c, keys) in records {
        match platform::read(store, &c.name).await {
            Ok(r) => {
                members.push((c.name.clone(), r.members.into_iter().map(|m| m.artifact).collect()));
                if in_scope {
                    committed.push(c);
                }
            }
            // Named whatever the plan's deployment: its members lose their protection.
            Err(e) => uncommitted.push(Uncommitted {
                name: c.name,
                keys,
                sweep: false,
                reason: format!("a platform record that cannot be read ({e:#}): left alone, and its members are not protected"),
            }),
        }
    }
    let mut decisions = decide(policy, &committed, now);
    keep_members(&mut decisions, &members);
    Ok(Plan {
        store: store.describe(),
        policy: policy.clone(),
        now,
        decisions,
        uncommitted,
        deployment: deployment.map(str::to_string),
    })
}

/// Keeps every member of every platform record that is kept (or not in the plan at all:
/// another deployment's plan does not delete records), with the record's name as the reason.
pub fn keep_members(decisions: &mut [Decision], records: &[(String, Vec<String>)]) {
    let deleted: std::collections::BTreeSet<String> = decisions.iter().filter(|d| !d.keep()).map(|d| d.artifact.name.clone()).collect();
    for (record, artifacts) in records.iter().filter(|(r, _)| !deleted.contains(r)) {
        for d in decisions.iter_mut().filter(|d| artifacts.contains(&d.artifact.name)) {
            d.kept_by.push(format!("member of {record}"));
        }
    }
}

impl Plan {
    pub fn to_delete(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.keep())
    }
    pub fn to_sweep(&self) -> impl Iterator<Item = &Uncommitted> {
        self.uncommitted.iter().filter(|u| u.sweep)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Retention plan for {} ({}):", self.store, self.policy)?;
        if self.decisions.is_empty() && self.uncommitted.is_empty() {
            writeln!(f, "  no artifacts")?;
        }
        for d in &self.decisions {
            if d.keep() {
                writeln!(f, "  keep    {}  ({})", d.artifact.name, d.kept_by.join(", "))?;
            } else {
                writeln!(f, "  delete  {}  (no rule keeps it)", d.artifact.name)?;
            }
        }
        for u in &self.uncommitted {
            writeln!(f, "  {}  {}  ({})", if u.sweep { "sweep " } else { "ignore" }, u.name, u.reason)?;
        }
        let kept = self.decisions.iter().filter(|d| d.keep()).count();
        write!(f, "{kept} kept, {} to delete, {} leftover(s) to sweep", self.to_delete().count(), self.to_sweep().count())
    }
}

/// What executing a plan did.
#[derive(Debug, Default)]
pub struct Pruned {
    pub deleted: Vec<String>,
    pub swept: Vec<String>,
    /// Multipart uploads left open by killed runs, aborted.
    pub aborted_uploads: usize,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

impl Pruned {
    /// The closing line of a prune.
    pub fn summary(&self) -> String {
        format!(
            "Deleted {} artifact(s), swept {} leftover(s), aborted {} open upload(s)",
            self.deleted.len(),
            self.swept.len(),
            self.aborted_uploads
        )
    }
}

/// Deletes what the plan says: each artifact's marker first (it disappears from every
/// listing at once), then its other objects; then the leftovers. Goes on after an error
/// and reports every one.
pub async fn execute(store: &dyn Store, plan: &Plan) -> Pruned {
    let mut out = Pruned::default();
    // Platform records before artifacts: a record is never left naming a deleted member.
    let (records, artifacts): (Vec<&Decision>, Vec<&Decision>) = plan.to_delete().partition(|d| d.artifact.deployment == PLATFORM_DEPLOYMENT);
    for d in records.into_iter().chain(artifacts) {
        let name = &d.artifact.name;
        let r = async {
            store.delete(&format!("{name}/{MARKER_FILE}")).await?;
            for obj in store.list(&format!("{name}/")).await? {
                store.delete(&obj.key).await?;
            }
            anyhow::Ok(())
        }
        .await;
        match r {
            Ok(()) => out.deleted.push(name.clone()),
            Err(e) => out.errors.push(format!("deleting {name}: {e:#}")),
        }
    }
    for u in plan.to_sweep() {
        let r = async {
            for k in &u.keys {
                store.delete(k).await?;
            }
            anyhow::Ok(())
        }
        .await;
        match r {
            Ok(()) => out.swept.push(u.name.clone()),
            Err(e) => out.errors.push(format!("sweeping {}: {e:#}", u.name)),
        }
    }
    match abort_open_uploads(store, plan.deployment.as_deref(), plan.now).await {
        Ok(n) => out.aborted_uploads = n,
        Err(e) if e.is::<crate::store::s3_uploads::NotOffered>() => out.warnings.push(format!("{e:#}")),
        Err(e) => out.errors.push(format!("aborting multipart uploads left open: {e:#}")),
    }
    out
}


/// Aborts the multipart uploads that killed runs left open in the store (their parts are
/// billed, and fill a small server's disk): those under `deployment`'s artifacts (every
/// deployment's without one), except a backup in progress's (its lease is live). Returns
/// how many were aborted.
pub async fn abort_open_uploads(store: &dyn Store, deployment: Option<&str>, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let live: std::collections::BTreeSet<String> =
        crate::artifact::lease::all(store).await?.into_iter().flatten().filter(|l| l.is_live(now)).map(|l| l.artifact).collect();
    let prefix = deployment.map(|d| format!("{d}_")).unwrap_or_default();
    let keep = |key: &str| {
        let Some((dir, _)) = key.split_once('/') else { return true };
        let ours = Candidate::from_name(dir).is_some_and(|c| deployment.is_none_or(|d| d == c.deployment));
        !ours || live.contains(dir)
    };
    store.abort_open_uploads(&prefix, &keep).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn c(name: &str) -> Candidate {
        Candidate::from_name(name).unwrap()
    }

    #[test]
    fn keeps_by_rule_and_says_why() {
        let now = Utc.with_ymd_and_hms(2024, 3, 10, 12, 0, 0).unwrap();
        let arts: Vec<Candidate> = [
            "cf_20240310T110000Z", // younger than min-age 1h? no: exactly 1h old
            "cf_20240310T030000Z",
            "cf_20240309T030000Z",
            "cf_20240309T010000Z",
            "cf_20240301T030000Z",
            "cf_20240201T030000Z",
            "other_20230101T000000Z",
        ]
        .iter()
        .map(|n| c(n))
        .collect();
        let p = Policy { keep_daily: Some(2), keep_monthly: Some(2), ..Policy::default() };
        let d = decide(&p, &arts, now);
        let kept: BTreeMap<&str, &Vec<String>> = d.iter().filter(|d| d.keep()).map(|d| (d.artifact.name.as_str(), &d.kept_by)).collect();
        assert_eq!(
            kept.keys().copied().collect::<Vec<_>>(),
            vec!["cf_20240201T030000Z", "cf_20240309T030000Z", "cf_20240310T110000Z", "other_20230101T000000Z"]
        );
        assert_eq!(kept["cf_20240310T110000Z"], &vec!["newest".to_string(), "daily 2024-03-10".into(), "monthly 2024-03".into()]);
        assert_eq!(kept["cf_20240201T030000Z"], &vec!["monthly 2024-02".to_string()]);
        // Rules apply per deployment: `other` has its own newest, day and month.
        assert_eq!(kept["other_20230101T000000Z"], &vec!["newest".to_string(), "daily 2023-01-01".into(), "monthly 2023-01".into()]);
        let deleted: Vec<&str> = d.iter().filter(|d| !d.keep()).map(|d| d.artifact.name.as_str()).collect();
        assert_eq!(deleted, vec!["cf_20240301T030000Z", "cf_20240309T010000Z", "cf_20240310T030000Z"]);
    }

    #[test]
    fn a_kept_platform_record_keeps_its_members_and_a_deleted_one_does_not() {
        let now = Utc.with_ymd_and_hms(2024, 3, 10, 12, 0, 0).unwrap();
        let arts: Vec<Candidate> =
            ["cf_20240301T000000Z", "cf_20240302T000000Z", "cf_20240309T000000Z", "platform_20240301T000000Z", "platform_20240302T000000Z"]
                .iter()
                .map(|n| c(n))
                .collect();
        let mut d = decide(&Policy { keep_last: Some(1), ..Policy::default() }, &arts, now);
        let records = vec![
            ("platform_20240301T000000Z".to_string(), vec!["cf_20240301T000000Z".to_string()]),
            ("platform_20240302T000000Z".to_string(), vec!["cf_20240302T000000Z".to_string()]),
            // Not in the plan (another deployment's prune): protects its members.
            ("platform_20240101T000000Z".to_string(), vec!["cf_20240309T000000Z".to_string()]),
        ];
        keep_members(&mut d, &records);
        let kept: BTreeMap<&str, &Vec<String>> = d.iter().filter(|d| d.keep()).map(|d| (d.artifact.name.as_str(), &d.kept_by)).collect();
        assert_eq!(kept["cf_20240302T000000Z"], &vec!["member of platform_20240302T000000Z".to_string()]);
        assert!(kept["cf_20240309T000000Z"].contains(&"member of platform_20240101T000000Z".to_string()));
        let deleted: Vec<&str> = d.iter().filter(|d| !d.keep()).map(|d| d.artifact.name.as_str()).collect();
        assert_eq!(deleted, vec!["cf_20240301T000000Z", "platform_20240301T000000Z"]);
    }

    #[test]
    fn min_age_and_keep_within_protect_recent_artifacts() {
        let now = Utc.with_ymd_and_hms(2024, 3, 10, 12, 0, 0).unwrap();
        let arts: Vec<Candidate> = ["cf_20240310T115900Z", "cf_20240310T115000Z", "cf_20240309T120000Z", "cf_20240301T000000Z"].iter().map(|n| c(n)).collect();
        let p = Policy { keep_last: Some(1), keep_within: Some(Duration::from_secs(2 * 86400)), ..Policy::default() };
        let d = decide(&p, &arts, now);
        let deleted: Vec<&str> = d.iter().filter(|d| !d.keep()).map(|d| d.artifact.name.as_str()).collect();
        assert_eq!(deleted, vec!["cf_20240301T000000Z"]);
        assert!(d[2].kept_by.iter().any(|r| r.starts_with("younger than min-age")), "{:?}", d[2]);
        assert!(Policy::default().validate().is_err());
    }
}
